//! A stateful emulator of the WAHA routes rosterd uses (`shared/providers/waha.md`): the
//! `X-Api-Key` check, the session endpoint and the session gate (422 when not `WORKING`), the
//! v2 and legacy participant listings and the write results in each engine's shape (GOWS,
//! NOWEB, WEBJS, chosen in the state), `@lid` members whose phone the server may or may not
//! know, per-member result codes, WhatsApp's `rate-overlimit` after a configurable burst of
//! adds, the 1024-member cap, injected faults, and a request log for tests.
//!
//! Choices where the reference is silent or unconfirmed (and so the emulator decides):
//! - removing or demoting the superadmin is a per-member 403 on GOWS/NOWEB, a silent no-op on
//!   WEBJS; removing or promoting a non-member is a per-member 404;
//! - a phone added while the server knows a lid for it is listed under that lid, as WhatsApp
//!   does for accounts that hide their number;
//! - `rate-overlimit` counts added members in a fixed window and refuses add calls once it is
//!   full; the refused call changes nothing. GOWS and NOWEB fail the call with a 500 envelope,
//!   WEBJS answers 200 with a per-member `429` for each id;
//! - an id WhatsApp cannot read fails the whole write call with `bad-request` on every engine
//!   (waha.md §6.8 names NOWEB/GOWS; WEBJS is unconfirmed);
//! - the session gate answers at once instead of waiting ~15 s first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::extract::{ConnectInfo, Query, Request, State as AxState};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::cometchat::LoggedRequest;
use super::{Conn, Fault, FaultKind, Faults};
use crate::provider::waha::parse_member;

/// The most members a WhatsApp group holds.
pub const MAX_MEMBERS: usize = 1024;

/// The engine whose response shapes the emulator speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum Engine {
    #[default]
    Gows,
    Noweb,
    Webjs,
}

impl Engine {
    fn as_str(self) -> &'static str {
        match self {
            Engine::Gows => "GOWS",
            Engine::Noweb => "NOWEB",
            Engine::Webjs => "WEBJS",
        }
    }
}

/// A member's role in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WaRole {
    Superadmin,
    Admin,
    Participant,
}

impl WaRole {
    fn as_str(self) -> &'static str {
        match self {
            WaRole::Superadmin => "superadmin",
            WaRole::Admin => "admin",
            WaRole::Participant => "participant",
        }
    }
    fn is_admin(self) -> bool {
        !matches!(self, WaRole::Participant)
    }
}

/// The linked account of the session.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Me {
    /// Its phone number (any spelling `provider::waha::parse_member` accepts).
    pub phone: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lid: Option<String>,
}

/// What the server knows about one `@lid`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lid {
    /// The phone behind it, if the server learnt it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pn: Option<String>,
    /// Whether listings show the phone (`false`: only the lids API knows it).
    #[serde(default = "yes")]
    pub listed: bool,
}

fn yes() -> bool {
    true
}

/// WhatsApp's throttle: once `adds` members were added within a window of `per`, further add
/// calls in that window draw `rate-overlimit`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overlimit {
    pub adds: u32,
    #[serde(with = "humantime_serde")]
    pub per: Duration,
}

/// One group: its name and its members (`<digits>@c.us` or `<digits>@lid`) with their roles.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub members: BTreeMap<String, WaRole>,
}

/// Everything the emulator knows: one WAHA server with one session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// The key `X-Api-Key` must carry.
    #[serde(default)]
    pub api_key: String,
    #[serde(default = "default_session")]
    pub session: String,
    /// `WORKING`, `STARTING`, `SCAN_QR_CODE`, `STOPPED`, `FAILED`, ...
    #[serde(default = "default_status")]
    pub status: String,
    #[serde(default)]
    pub engine: Engine,
    /// Whether the server has `participants/v2` (2025.11+).
    #[serde(default = "yes")]
    pub v2: bool,
    /// Whether the server has the lids API (2025.5+).
    #[serde(default = "yes")]
    pub lids_api: bool,
    #[serde(default)]
    pub me: Me,
    #[serde(default)]
    pub lids: BTreeMap<String, Lid>,
    /// Phones that are not on WhatsApp (add: 404).
    #[serde(default)]
    pub not_on_whatsapp: BTreeSet<String>,
    /// Phones whose privacy settings forbid adding them (add: 403).
    #[serde(default)]
    pub private: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlimit: Option<Overlimit>,
    #[serde(default)]
    pub groups: BTreeMap<String, Group>,
    /// Repeat the rejected credential in the error message of a 401/403, as many services,
    /// gateways and proxies do: what the redactor must catch.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub echo_credentials: bool,
}

fn default_session() -> String {
    "default".into()
}

fn default_status() -> String {
    "WORKING".into()
}

impl Default for State {
    fn default() -> Self {
        State {
            api_key: String::new(),
            session: default_session(),
            status: default_status(),
            engine: Engine::default(),
            v2: true,
            lids_api: true,
            me: Me::default(),
            lids: BTreeMap::new(),
            not_on_whatsapp: BTreeSet::new(),
            private: BTreeSet::new(),
            overlimit: None,
            groups: BTreeMap::new(),
            echo_credentials: false,
        }
    }
}

/// `+49 170 1` -> `491701@c.us`; ids that do not parse are kept as written.
fn norm(raw: &str) -> String {
    parse_member(raw).map_or_else(|_| raw.trim().to_string(), |m| m.0)
}

impl State {
    /// Every phone and lid in the JID form the server uses (`<digits>@c.us`, `<digits>@lid`).
    pub fn normalized(self) -> State {
        let set = |s: BTreeSet<String>| s.iter().map(|p| norm(p)).collect();
        State {
            me: Me {
                phone: norm(&self.me.phone),
                lid: self.me.lid.as_deref().map(norm),
            },
            lids: self
                .lids
                .into_iter()
                .map(|(l, e)| {
                    (
                        norm(&l),
                        Lid {
                            pn: e.pn.as_deref().map(norm),
                            listed: e.listed,
                        },
                    )
                })
                .collect(),
            not_on_whatsapp: set(self.not_on_whatsapp),
            private: set(self.private),
            groups: self
                .groups
                .into_iter()
                .map(|(id, g)| {
                    let members = g.members.into_iter().map(|(m, r)| (norm(&m), r)).collect();
                    (
                        id.trim().to_string(),
                        Group {
                            name: g.name,
                            members,
                        },
                    )
                })
                .collect(),
            ..self
        }
    }

    /// The lid the server lists a phone under, if it knows one.
    fn lid_of(&self, phone: &str) -> Option<&str> {
        self.lids
            .iter()
            .find(|(_, e)| e.pn.as_deref() == Some(phone))
            .map(|(l, _)| l.as_str())
    }

    /// The member key of an id in a group: the id itself, or the lid of a phone (and the phone
    /// of a lid) on engines that resolve ids; WEBJS looks up exact keys only (waha.md §6.4).
    fn member_key(&self, group: &Group, id: &str) -> Option<String> {
        if group.members.contains_key(id) {
            return Some(id.to_string());
        }
        if self.engine == Engine::Webjs {
            return None;
        }
        if let Some(l) = self.lid_of(id)
            && group.members.contains_key(l)
        {
            return Some(l.to_string());
        }
        let pn = self.lids.get(id)?.pn.as_ref()?;
        group.members.contains_key(pn).then(|| pn.clone())
    }

    fn is_me(&self, key: &str) -> bool {
        key == self.me.phone || Some(key) == self.me.lid.as_deref()
    }
}

struct Window {
    index: u64,
    adds: u32,
}

struct Inner {
    state: Mutex<State>,
    log: Mutex<Vec<LoggedRequest>>,
    faults: Faults,
    window: Mutex<Window>,
    /// Write requests being handled right now, and the most ever at once: one linked account
    /// must never see two writes overlap.
    writes_in_flight: AtomicUsize,
    max_writes_in_flight: AtomicUsize,
}

/// Counts one write request in flight for as long as it is handled.
struct InFlight<'a>(&'a Inner);

impl<'a> InFlight<'a> {
    fn enter(inner: &'a Inner) -> Self {
        let now = inner.writes_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        inner.max_writes_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(inner)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.writes_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A handle on one WAHA emulator; clones share the same state.
#[derive(Clone)]
pub struct WahaEmulator {
    inner: Arc<Inner>,
}

impl WahaEmulator {
    pub fn new(state: State) -> Self {
        WahaEmulator {
            inner: Arc::new(Inner {
                state: Mutex::new(state.normalized()),
                log: Mutex::new(Vec::new()),
                faults: Faults::default(),
                writes_in_flight: AtomicUsize::new(0),
                max_writes_in_flight: AtomicUsize::new(0),
                window: Mutex::new(Window { index: 0, adds: 0 }),
            }),
        }
    }

    /// The routes, to be served with `ConnectInfo<Conn>`.
    pub fn router(&self) -> Router {
        Router::new().fallback(handle).with_state(self.clone())
    }

    /// A copy of the current state.
    pub fn state(&self) -> State {
        lock(&self.inner.state).clone()
    }

    /// Change the state in place (tests switch engines, statuses or drift this way).
    pub fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut s = lock(&self.inner.state);
        let r = f(&mut s);
        *s = s.clone().normalized();
        r
    }

    /// One group as it stands.
    pub fn group(&self, id: &str) -> Option<Group> {
        lock(&self.inner.state).groups.get(id).cloned()
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        lock(&self.inner.log).clone()
    }

    /// The most write requests that were ever being handled at the same time.
    pub fn max_writes_in_flight(&self) -> usize {
        self.inner.max_writes_in_flight.load(Ordering::SeqCst)
    }

    /// The write calls the server carried out or refused on their merits (not throttled or
    /// hit by a fault).
    pub fn writes(&self) -> Vec<LoggedRequest> {
        self.requests()
            .into_iter()
            .filter(LoggedRequest::is_write)
            .collect()
    }

    pub fn clear_log(&self) {
        lock(&self.inner.log).clear();
    }

    pub fn inject(&self, fault: Fault) {
        self.inner.faults.inject(fault);
    }

    pub fn clear_faults(&self) {
        self.inner.faults.clear();
    }

    /// Count `n` adds against WhatsApp's window; `false` when the window is already full.
    fn admit_adds(&self, limit: Option<Overlimit>, n: usize) -> bool {
        let Some(limit) = limit else { return true };
        let per = (limit.per.as_millis() as u64).max(1);
        let index = unix_ms() / per;
        let mut w = lock(&self.inner.window);
        if w.index != index {
            *w = Window { index, adds: 0 };
        }
        // A call is refused once the window is full, not when it would overfill it: a batch
        // larger than the burst must still get through once the window turns over.
        if w.adds >= limit.adds {
            return false;
        }
        w.adds += n as u32;
        true
    }

    fn log(&self, entry: LoggedRequest) {
        lock(&self.inner.log).push(entry);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking test thread must not wedge every later request.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_ms() -> u64 {
    super::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct Answer {
    status: StatusCode,
    body: Value,
    /// Set when WhatsApp throttled the call, for the request log.
    throttled: bool,
}

fn ok(body: Value) -> Answer {
    Answer {
        status: StatusCode::OK,
        body,
        throttled: false,
    }
}

fn status(code: u16, body: Value) -> Answer {
    Answer {
        status: StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body,
        throttled: false,
    }
}

fn not_found_route(method: &Method, path: &str) -> Answer {
    status(
        404,
        json!({"message": format!("Cannot {method} {path}"), "error": "Not Found", "statusCode": 404}),
    )
}

/// WAHA's 500 envelope around an engine failure, the request echoed back as WAHA does.
fn envelope(exception: Value, method: &Method, path: &str, body: Option<&Value>) -> Answer {
    status(
        500,
        json!({
            "statusCode": 500,
            "timestamp": humantime::format_rfc3339_seconds(super::now()).to_string(),
            "exception": exception,
            "request": {"path": path, "method": method.as_str(), "body": body, "query": {}},
            "version": {"version": "2026.2.1", "tier": "CORE"},
        }),
    )
}

/// An engine error in the engine's own words (waha.md §4).
fn engine_error(engine: Engine, what: EngineError) -> Value {
    match (engine, what) {
        (Engine::Noweb, EngineError::RateOverlimit) => {
            json!({"message": "rate-overlimit", "name": "Error", "data": 429})
        }
        (Engine::Gows, EngineError::RateOverlimit) => json!({
            "message": "failed to update participants", "name": "Error",
            "details": "info query returned status 429: rate-overlimit"
        }),
        (Engine::Webjs, EngineError::RateOverlimit) => {
            json!({"message": "IQErrorRateOverlimit: rate-overlimit", "name": "Error"})
        }
        (Engine::Noweb, EngineError::NoGroup(id)) => {
            json!({"message": format!("Group with id '{id}' not found"), "name": "Error", "data": 404})
        }
        (Engine::Gows, EngineError::NoGroup(_)) => json!({
            "message": "failed to get group info", "name": "Error",
            "details": "that group does not exist"
        }),
        (Engine::Webjs, EngineError::NoGroup(_)) => json!({
            "message": "Cannot read properties of undefined (reading 'participants') - group not found",
            "name": "Error"
        }),
        (Engine::Noweb, EngineError::NotAdmin) => {
            json!({"message": "not-authorized", "name": "Error", "data": 401})
        }
        (_, EngineError::NotAdmin) => json!({
            "message": "failed to update participants", "name": "Error",
            "details": "server returned error 401: not-authorized"
        }),
        (Engine::Noweb, EngineError::BadRequest) => {
            json!({"message": "bad-request", "name": "Error", "data": 400})
        }
        (_, EngineError::BadRequest) => json!({
            "message": "failed to update participants", "name": "Error",
            "details": "info query returned status 400: bad-request"
        }),
        (_, EngineError::NoParticipants) => json!({
            "message": "Cannot read properties of undefined (reading 'map')", "name": "TypeError"
        }),
        (_, EngineError::NoneLeft) => json!({
            "message": "expected at least 1 children, but found 0", "name": "Error"
        }),
        (_, EngineError::Flaky) => json!({"message": "Connection Closed", "name": "Error"}),
    }
}

enum EngineError {
    RateOverlimit,
    NoGroup(String),
    NotAdmin,
    NoParticipants,
    BadRequest,
    NoneLeft,
    Flaky,
}

async fn handle(AxState(emu): AxState<WahaEmulator>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(String::from);
    let conn = req
        .extensions()
        .get::<ConnectInfo<Conn>>()
        .map(|c| c.0.clone());
    let headers = req.headers().clone();
    let params: HashMap<String, String> = Query::<HashMap<String, String>>::try_from_uri(req.uri())
        .map(|q| q.0)
        .unwrap_or_default();
    let raw = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let body: Option<Value> = if raw.is_empty() {
        None
    } else {
        match serde_json::from_slice(&raw) {
            Ok(v) => Some(v),
            Err(e) => {
                let a = status(
                    400,
                    json!({"message": format!("Unexpected token in JSON: {e}"), "error": "Bad Request", "statusCode": 400}),
                );
                return (a.status, axum::Json(a.body)).into_response();
            }
        }
    };
    let _in_flight = (method != Method::GET).then(|| InFlight::enter(&emu.inner));
    let mut entry = LoggedRequest {
        method: method.to_string(),
        path: path.clone(),
        query,
        body: body.clone(),
        status: 0,
        fault: None,
    };

    match emu.inner.faults.take(method != Method::GET) {
        Some(FaultKind::Status(code)) => {
            entry.status = code;
            entry.fault = Some(format!("status {code}"));
            emu.log(entry);
            let s = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            if matches!(code, 502..=504) {
                return (s, "upstream unavailable").into_response();
            }
            let engine = lock(&emu.inner.state).engine;
            let mut a = envelope(
                engine_error(engine, EngineError::Flaky),
                &method,
                &path,
                body.as_ref(),
            );
            a.body["statusCode"] = json!(code);
            return (s, axum::Json(a.body)).into_response();
        }
        Some(FaultKind::Reset) => {
            entry.fault = Some("reset".into());
            match conn {
                Some(c) => {
                    c.kill.store(true, Ordering::SeqCst);
                    emu.log(entry);
                    // The connection now fails every read and write; this never arrives.
                    return StatusCode::BAD_GATEWAY.into_response();
                }
                None => {
                    entry.status = 502;
                    emu.log(entry);
                    return (StatusCode::BAD_GATEWAY, "connection reset").into_response();
                }
            }
        }
        Some(FaultKind::Slow(d)) => tokio::time::sleep(d).await,
        None => {}
    }

    let answer = route(&emu, &method, &path, &headers, &params, body.as_ref());
    entry.status = answer.status.as_u16();
    if answer.throttled {
        entry.fault = Some("rate-overlimit".into());
    }
    emu.log(entry);
    match answer.body {
        // WEBJS's plain-string refusal is sent as text, as WAHA does.
        Value::String(s) => (answer.status, s).into_response(),
        b => (answer.status, axum::Json(b)).into_response(),
    }
}

fn route(
    emu: &WahaEmulator,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    body: Option<&Value>,
) -> Answer {
    let segs: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let mut state = lock(&emu.inner.state);
    let key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| params.get("x-api-key").map(String::as_str))
        .unwrap_or("");
    if key.is_empty() || key != state.api_key {
        let message = if state.echo_credentials {
            format!("Unauthorized: X-Api-Key {key} is not valid")
        } else {
            "Unauthorized".to_string()
        };
        return status(401, json!({"message": message, "statusCode": 401}));
    }
    let Some(("api", rest)) = segs.split_first().map(|(a, r)| (*a, r)) else {
        return not_found_route(method, path);
    };
    match (method.clone(), rest) {
        (Method::GET, ["server", "version"]) => ok(json!({
            "version": "2026.2.1", "engine": state.engine.as_str(), "tier": "CORE", "browser": null
        })),
        (Method::GET, ["sessions", name]) => {
            if *name != state.session {
                return status(
                    404,
                    json!({"message": "Session not found", "error": "Not Found", "statusCode": 404}),
                );
            }
            let me = (state.status == "WORKING").then(|| {
                json!({"id": state.me.phone, "lid": state.me.lid, "pushName": "rosterd sandbox"})
            });
            ok(json!({
                "name": state.session, "status": state.status, "me": me,
                "engine": {"engine": state.engine.as_str()},
                "config": {"webhooks": [], "debug": false}, "presence": null,
            }))
        }
        (_, [session, rest @ ..]) if matches!(rest.first(), Some(&"groups") | Some(&"lids")) => {
            if *session != state.session {
                return status(
                    422,
                    json!({"error": format!("Session \"{session}\" does not exist"), "session": session}),
                );
            }
            if state.status != "WORKING" {
                return status(
                    422,
                    json!({
                        "error": "Session status is not as expected. Try again later or restart the session",
                        "session": session, "status": state.status, "expected": ["WORKING"],
                    }),
                );
            }
            session_route(emu, &mut state, method, path, rest, body)
        }
        _ => not_found_route(method, path),
    }
}

fn session_route(
    emu: &WahaEmulator,
    state: &mut State,
    method: &Method,
    path: &str,
    rest: &[&str],
    body: Option<&Value>,
) -> Answer {
    let engine = state.engine;
    match (method.clone(), rest) {
        (Method::GET, ["lids", "count"]) if state.lids_api => {
            ok(json!({"count": state.lids.len()}))
        }
        (Method::GET, ["lids", lid]) if state.lids_api => {
            let lid = norm(lid);
            let pn = state.lids.get(&lid).and_then(|e| e.pn.clone());
            ok(json!({"lid": lid, "pn": pn}))
        }
        (_, ["groups", gid, tail @ ..]) => {
            let Some(group) = state.groups.get(*gid).cloned() else {
                return envelope(
                    engine_error(engine, EngineError::NoGroup(gid.to_string())),
                    method,
                    path,
                    body,
                );
            };
            let me_role = group
                .members
                .iter()
                .find(|(k, _)| state.is_me(k))
                .map(|(_, r)| *r);
            let Some(me_role) = me_role else {
                // The engines cannot read a group the account is not in.
                return envelope(
                    engine_error(engine, EngineError::NoGroup(gid.to_string())),
                    method,
                    path,
                    body,
                );
            };
            match (method.clone(), tail) {
                (Method::GET, ["participants", "v2"]) if state.v2 => ok(list_v2(state, &group)),
                (Method::GET, ["participants"]) => ok(list_legacy(state, &group)),
                (Method::POST, [a, b]) => {
                    let op = match (*a, *b) {
                        ("participants", "add") => WriteOp::Add,
                        ("participants", "remove") => WriteOp::Remove,
                        ("admin", "promote") => WriteOp::Promote,
                        ("admin", "demote") => WriteOp::Demote,
                        _ => return not_found_route(method, path),
                    };
                    let Some(ids) = body
                        .and_then(|b| b.get("participants"))
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(|p| p.get("id").and_then(Value::as_str))
                                .map(norm)
                                .collect::<Vec<_>>()
                        })
                    else {
                        return envelope(
                            engine_error(engine, EngineError::NoParticipants),
                            method,
                            path,
                            body,
                        );
                    };
                    // One id WhatsApp cannot read fails the whole call (waha.md §6.8).
                    if ids.iter().any(|id| !is_jid(id)) {
                        return envelope(
                            engine_error(engine, EngineError::BadRequest),
                            method,
                            path,
                            body,
                        );
                    }
                    if !me_role.is_admin() {
                        return match (engine, op) {
                            (Engine::Webjs, WriteOp::Add) => ok(Value::String(
                                "AddParticipantsError: You have no admin rights to add a participant to a group"
                                    .into(),
                            )),
                            (Engine::Webjs, _) => ok(json!({"status": 200})),
                            _ => envelope(
                                engine_error(engine, EngineError::NotAdmin),
                                method,
                                path,
                                body,
                            ),
                        };
                    }
                    if op == WriteOp::Add && !emu.admit_adds(state.overlimit, ids.len()) {
                        // WEBJS reports WhatsApp's refusal per member in a 200; the other
                        // engines fail the call with a 500 envelope (waha.md §4, §5).
                        let mut a = if engine == Engine::Webjs {
                            ok(Value::Object(
                                ids.iter()
                                    .map(|id| {
                                        (
                                            id.clone(),
                                            json!({"code": 429, "message": "rate-overlimit", "isInviteV4Sent": false}),
                                        )
                                    })
                                    .collect(),
                            ))
                        } else {
                            envelope(
                                engine_error(engine, EngineError::RateOverlimit),
                                method,
                                path,
                                body,
                            )
                        };
                        a.throttled = true;
                        return a;
                    }
                    write(state, gid, op, &ids, method, path, body)
                }
                _ => not_found_route(method, path),
            }
        }
        _ => not_found_route(method, path),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteOp {
    Add,
    Remove,
    Promote,
    Demote,
}

/// `<digits>@c.us` or `<digits>@lid`, as `norm` leaves every id WhatsApp can read.
fn is_jid(id: &str) -> bool {
    id.split_once('@').is_some_and(|(user, server)| {
        !user.is_empty()
            && user.bytes().all(|b| b.is_ascii_digit())
            && matches!(server, "c.us" | "lid")
    })
}

fn digits(id: &str) -> &str {
    id.split('@').next().unwrap_or(id)
}

fn s_whatsapp(id: &str) -> String {
    format!("{}@s.whatsapp.net", digits(id))
}

/// The phone behind a member key, as the listings show it (`None`: unknown to them).
fn listed_pn(state: &State, key: &str) -> Option<String> {
    if key.ends_with("@c.us") {
        return Some(key.to_string());
    }
    if state.me.lid.as_deref() == Some(key) {
        return Some(state.me.phone.clone());
    }
    state
        .lids
        .get(key)
        .filter(|e| e.listed)
        .and_then(|e| e.pn.clone())
}

fn list_v2(state: &State, group: &Group) -> Value {
    let rows: Vec<Value> = group
        .members
        .iter()
        .map(|(k, r)| {
            let pn = listed_pn(state, k);
            let mut row = json!({"id": k, "role": r.as_str()});
            match (state.engine, pn) {
                // NOWEB omits unknown phones, and may omit them even for phone rows.
                (Engine::Noweb, Some(pn)) if k.ends_with("@lid") => row["pn"] = json!(pn),
                (Engine::Noweb, _) => {}
                (Engine::Gows, None) => row["pn"] = json!(""),
                // WEBJS gives no phone for any `@lid` row, known or not (waha.md §3.2).
                (Engine::Webjs, _) if k.ends_with("@lid") => row["pn"] = Value::Null,
                (_, pn) => row["pn"] = json!(pn),
            }
            row
        })
        .collect();
    Value::Array(rows)
}

fn list_legacy(state: &State, group: &Group) -> Value {
    let rows: Vec<Value> = group
        .members
        .iter()
        .map(|(k, r)| match state.engine {
            Engine::Webjs => {
                let (user, server) = k.split_once('@').unwrap_or((k, "c.us"));
                json!({
                    "id": {"server": server, "user": user, "_serialized": k},
                    "isAdmin": r.is_admin(), "isSuperAdmin": *r == WaRole::Superadmin,
                })
            }
            Engine::Noweb => {
                let id = if k.ends_with("@c.us") {
                    s_whatsapp(k)
                } else {
                    k.clone()
                };
                let admin = match r {
                    WaRole::Superadmin => json!("superadmin"),
                    WaRole::Admin => json!("admin"),
                    WaRole::Participant => Value::Null,
                };
                json!({"id": id, "admin": admin})
            }
            Engine::Gows => gows_row(state, k, *r == WaRole::Admin, *r == WaRole::Superadmin, 0),
        })
        .collect();
    Value::Array(rows)
}

fn gows_row(state: &State, key: &str, admin: bool, superadmin: bool, error: u16) -> Value {
    let lid = key.ends_with("@lid");
    let (jid, pn, lid_s) = if lid {
        (
            key.to_string(),
            listed_pn(state, key)
                .map(|p| s_whatsapp(&p))
                .unwrap_or_default(),
            key.to_string(),
        )
    } else {
        (s_whatsapp(key), String::new(), String::new())
    };
    json!({
        "JID": jid, "PhoneNumber": pn, "LID": lid_s, "IsAdmin": admin || superadmin,
        "IsSuperAdmin": superadmin, "DisplayName": "", "Error": error, "AddRequest": null,
    })
}

/// Carry out a write and answer in the engine's shape (waha.md §3.6-3.8).
fn write(
    state: &mut State,
    gid: &str,
    op: WriteOp,
    ids: &[String],
    method: &Method,
    path: &str,
    body: Option<&Value>,
) -> Answer {
    let engine = state.engine;
    let mut results: Vec<(String, String, u16)> = Vec::new(); // (sent id, member key, code)
    let mut webjs_hits = 0usize;
    for id in ids {
        let group = state.groups.get(gid).cloned().unwrap_or_default();
        let found = state.member_key(&group, id);
        let (key, code) = match op {
            WriteOp::Add => {
                if let Some(k) = found {
                    (k, 409)
                } else if state.not_on_whatsapp.contains(id) {
                    (id.clone(), 404)
                } else if state.private.contains(id) {
                    (state.lid_of(id).unwrap_or(id).to_string(), 403)
                } else if group.members.len() >= MAX_MEMBERS {
                    (id.clone(), 419)
                } else {
                    // A phone the server knows a lid for joins under that lid.
                    let key = if id.ends_with("@c.us") {
                        state.lid_of(id).unwrap_or(id).to_string()
                    } else {
                        id.clone()
                    };
                    if let Some(g) = state.groups.get_mut(gid) {
                        g.members.insert(key.clone(), WaRole::Participant);
                    }
                    (key, 200)
                }
            }
            _ => match found {
                None => (id.clone(), 404),
                Some(k) => {
                    webjs_hits += 1;
                    let role = group.members[&k];
                    let g = state.groups.get_mut(gid).expect("group exists");
                    match (op, role) {
                        (WriteOp::Remove | WriteOp::Demote, WaRole::Superadmin) => (k, 403),
                        (WriteOp::Remove, _) => {
                            g.members.remove(&k);
                            (k, 200)
                        }
                        (WriteOp::Promote, WaRole::Superadmin) => (k, 200),
                        (WriteOp::Promote, _) => {
                            g.members.insert(k.clone(), WaRole::Admin);
                            (k, 200)
                        }
                        (WriteOp::Demote, _) => {
                            g.members.insert(k.clone(), WaRole::Participant);
                            (k, 200)
                        }
                        (WriteOp::Add, _) => unreachable!("adds are handled above"),
                    }
                }
            },
        };
        results.push((id.clone(), key, code));
    }
    match (engine, op) {
        (Engine::Webjs, WriteOp::Add) => {
            let map: serde_json::Map<String, Value> = results
                .iter()
                .map(|(sent, _, code)| {
                    let message = match code {
                        200 => "The participant was added successfully",
                        409 => "The participant is already a group member",
                        403 => "The participant can be added by sending private invitation only",
                        404 => "The phone number is not registered on WhatsApp",
                        419 => "The participant can't be added because the group is full",
                        _ => "An unknown error occupied while adding a participant",
                    };
                    (
                        sent.clone(),
                        json!({"code": code, "message": message, "isInviteV4Sent": false}),
                    )
                })
                .collect();
            ok(Value::Object(map))
        }
        (Engine::Webjs, _) if webjs_hits == 0 => envelope(
            engine_error(engine, EngineError::NoneLeft),
            method,
            path,
            body,
        ),
        (Engine::Webjs, _) => ok(json!({"status": 200})),
        (Engine::Noweb, _) => ok(Value::Array(
            results
                .iter()
                .map(|(_, key, code)| {
                    let jid = if key.ends_with("@c.us") {
                        s_whatsapp(key)
                    } else {
                        key.clone()
                    };
                    let mut attrs = json!({"jid": jid});
                    if *code != 200 {
                        attrs["error"] = json!(code.to_string());
                    }
                    json!({"status": code.to_string(), "jid": jid,
                           "content": {"tag": "participant", "attrs": attrs}})
                })
                .collect(),
        )),
        (Engine::Gows, _) => ok(Value::Array(
            results
                .iter()
                .map(|(_, key, code)| {
                    let mut row = gows_row(
                        state,
                        key,
                        false,
                        false,
                        if *code == 200 { 0 } else { *code },
                    );
                    if *code == 403 && op == WriteOp::Add {
                        row["AddRequest"] =
                            json!({"Code": "Xy7Kp9Lm", "Expiration": "2026-08-01T10:00:00Z"});
                    }
                    row
                })
                .collect(),
        )),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl super::Emulator for WahaEmulator {
    type State = State;
    const KIND: crate::model::Kind = crate::model::Kind::Waha;
    const PREFIX: &'static str = "";
    const FIXED_PORT: u16 = 8083;
    fn credentials(state: &State, _base_url: &str) -> Vec<String> {
        vec![format!(
            "session {}: X-Api-Key {}",
            state.session, state.api_key
        )]
    }
}

/// The client of a WAHA instance pointed at the emulator, with the seed's key.
pub fn client(
    instance: &mut crate::provider::Instance,
    state: &super::SandboxState,
) -> anyhow::Result<Arc<dyn crate::provider::Provider>> {
    // WAHA's defaults pace writes at one per 10 s to keep a real account safe; the emulator
    // needs none of that, and a throttle in it clears in milliseconds.
    instance.common.interval = Some(Duration::ZERO);
    let key = crate::config::secret::Secret::new(state.waha.api_key.clone());
    let client = crate::provider::waha::Waha::with_key(instance, key)?
        .with_throttle_cooldown(Duration::from_millis(100))?;
    Ok(Arc::new(client))
}
