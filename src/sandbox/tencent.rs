//! A stateful emulator of the Tencent Cloud Chat REST API v4 group commands rosterd uses, as
//! strict as `shared/providers/tencent.md` describes the service: the UserSig in the query is
//! decoded and its HMAC checked against the app's own secret, its expiry against the
//! emulator's clock and its identifier against the app admin; answers are HTTP 200 with an
//! `ErrorCode`; per-call maxima answer 10005; group types carry their rules (Work has no
//! admins or mutes, Live no member list and no adds); owners cannot be removed, banned, muted
//! or re-roled; adds report a `Result` per member; member lists page by Offset, or by `Next`
//! for Community; the ban list by `NextOffset`; a configurable frequency limit answers 60007;
//! faults are injected with [`Fault`]; every request is logged with its UserSig blanked.
//!
//! Choices where the reference is silent or unconfirmed (the emulator decides):
//! - deleting, muting or banning the owner, or changing the owner's role, is 10007;
//! - modifying, or handing ownership to, a non-member is 10007 / 10004;
//! - a banned account added again gets `Result` 0; muting a non-member who is an app
//!   account is accepted (a mute survives leaving, §3.6);
//! - the app's edition switch for bans (`bans_enabled: false`) answers 10059 on every ban
//!   command, the ban list included;
//! - ten failed UserSig checks within a minute lock the SDKAppID out with 70050 for a minute;
//! - time comes from a settable clock, so tests move it instead of sleeping.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{ConnectInfo, Query, Request, State as AxState};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use super::RateLimit;
use super::{Conn, Fault, FaultKind, Faults, Window};
use crate::provider::tencent::usersig;

/// `MuteUntil` / `BannedUntil` meaning forever, and the `MuteTime` that sets it.
pub const FOREVER: u64 = u32::MAX as u64;

/// Every app the emulator serves, keyed by SDKAppID.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    #[serde(default)]
    pub apps: BTreeMap<u64, App>,
    /// Answer 60007 (REST frequency limit) beyond this many requests per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Repeat the rejected credential in the error message of a 401/403, as many services,
    /// gateways and proxies do: what the redactor must catch.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub echo_credentials: bool,
}

/// One IM app: its key, its admin, its accounts and groups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    /// The key UserSigs must be signed with.
    pub secret_key: String,
    /// The App admin the REST calls must act as.
    #[serde(default = "default_admin")]
    pub admin: String,
    /// Imported accounts: only these can be added.
    #[serde(default)]
    pub accounts: BTreeSet<String>,
    /// The edition/console switch for group bans (§3.8).
    #[serde(default = "yes")]
    pub bans_enabled: bool,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub groups: BTreeMap<String, Group>,
}

fn default_admin() -> String {
    "administrator".into()
}

fn yes() -> bool {
    true
}

/// Per-call maxima the app enforces (10005 over them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub add: usize,
    pub delete: usize,
    pub mute: usize,
    pub ban: usize,
    /// Largest `Limit` of a member-list page.
    pub page: usize,
    /// Answer a larger `Limit` with a page of `page` members instead of refusing it: Tencent's
    /// pages disagree on the cap (200 or 6000, tencent.md §3), so a client must not take a
    /// page shorter than it asked for as the end of the list.
    pub clamp_page: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            add: 20,
            delete: 100,
            mute: 500,
            ban: 20,
            page: 200,
            clamp_page: false,
        }
    }
}

/// A group type by its REST name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum GroupType {
    Private,
    #[default]
    Public,
    ChatRoom,
    Community,
    #[serde(rename = "AVChatRoom")]
    AvChatRoom,
}

impl GroupType {
    fn as_str(self) -> &'static str {
        match self {
            GroupType::Private => "Private",
            GroupType::Public => "Public",
            GroupType::ChatRoom => "ChatRoom",
            GroupType::Community => "Community",
            GroupType::AvChatRoom => "AVChatRoom",
        }
    }
}

/// A member's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberRole {
    Owner,
    Admin,
    Member,
}

/// One group.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    #[serde(default, rename = "type")]
    pub group_type: GroupType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Members and their roles (the owner is added as `Owner`).
    #[serde(default)]
    pub members: BTreeMap<String, MemberRole>,
    /// Account -> `MuteUntil` (unix seconds; [`FOREVER`] = always).
    #[serde(default)]
    pub muted: BTreeMap<String, u64>,
    /// Account -> `BannedUntil` (unix seconds).
    #[serde(default)]
    pub banned: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_members: Option<usize>,
}

impl State {
    /// Make the shorthand consistent: the owner is a member with role `Owner` (and nobody
    /// else is), and everyone named anywhere is an account of the app.
    pub fn normalized(mut self) -> State {
        for app in self.apps.values_mut() {
            for g in app.groups.values_mut() {
                for r in g.members.values_mut() {
                    if *r == MemberRole::Owner {
                        *r = MemberRole::Member;
                    }
                }
                if let Some(o) = &g.owner {
                    g.members.insert(o.clone(), MemberRole::Owner);
                }
                app.accounts.extend(g.members.keys().cloned());
                app.accounts.extend(g.banned.keys().cloned());
                app.accounts.extend(g.muted.keys().cloned());
            }
        }
        self
    }
}

/// One request as the emulator saw it, with the UserSig blanked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoggedRequest {
    /// The command (last path segment).
    pub command: String,
    /// The query with `usersig=***`.
    pub query: String,
    pub body: Option<Value>,
    /// HTTP status (200 for every answer of the service itself).
    pub status: u16,
    /// The envelope's `ErrorCode`, when the service answered.
    pub error_code: Option<u64>,
    /// The injected fault or throttle that answered, if any.
    pub fault: Option<String>,
}

const WRITES: [&str; 7] = [
    "add_group_member",
    "delete_group_member",
    "modify_group_member_info",
    "forbid_send_msg",
    "ban_group_member",
    "unban_group_member",
    "change_group_owner",
];

impl LoggedRequest {
    /// A write command the service carried out or refused on its merits (not cut short by the
    /// frequency limit or an injected fault).
    pub fn is_write(&self) -> bool {
        WRITES.contains(&self.command.as_str()) && self.fault.is_none()
    }
}

struct Inner {
    state: Mutex<State>,
    log: Mutex<Vec<LoggedRequest>>,
    faults: Faults,
    limiter: Window,
    /// A fixed time (tests); `None` follows the system clock.
    now: Mutex<Option<SystemTime>>,
    /// Per SDKAppID, when UserSig checks failed (emulator clock), for the 70050 lock.
    auth_failures: Mutex<HashMap<String, Vec<u64>>>,
}

/// Failed UserSig checks within [`LOCK_WINDOW`] seconds that lock an app out (70050, §5).
pub const LOCK_AFTER: usize = 10;
/// How long failures count, and how long the lock lasts, in seconds.
pub const LOCK_WINDOW: u64 = 60;

/// A handle on one Tencent emulator; clones share the same state.
#[derive(Clone)]
pub struct TencentEmulator {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking test thread must not wedge every later request.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl TencentEmulator {
    pub fn new(state: State) -> Self {
        TencentEmulator {
            inner: Arc::new(Inner {
                state: Mutex::new(state.normalized()),
                log: Mutex::new(Vec::new()),
                faults: Faults::default(),
                limiter: Window::default(),
                now: Mutex::new(None),
                auth_failures: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The routes, to be served with `ConnectInfo<Conn>`.
    pub fn router(&self) -> Router {
        Router::new().fallback(handle).with_state(self.clone())
    }

    pub fn state(&self) -> State {
        lock(&self.inner.state).clone()
    }

    /// Change the state in place (tests seed accounts or drift this way).
    pub fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut s = lock(&self.inner.state);
        let r = f(&mut s);
        *s = std::mem::take(&mut *s).normalized();
        r
    }

    /// One group of one app, as it stands.
    pub fn group(&self, app: u64, group: &str) -> Option<Group> {
        lock(&self.inner.state)
            .apps
            .get(&app)?
            .groups
            .get(group)
            .cloned()
    }

    /// Fix the emulator's clock at `t` (`None`: follow the system clock again).
    pub fn set_now(&self, t: Option<SystemTime>) {
        *lock(&self.inner.now) = t;
    }

    /// The emulator's idea of now.
    pub fn now(&self) -> SystemTime {
        lock(&self.inner.now).unwrap_or_else(super::now)
    }

    pub fn requests(&self) -> Vec<LoggedRequest> {
        lock(&self.inner.log).clone()
    }

    pub fn writes(&self) -> Vec<LoggedRequest> {
        self.requests()
            .into_iter()
            .filter(LoggedRequest::is_write)
            .collect()
    }

    pub fn clear_log(&self) {
        lock(&self.inner.log).clear();
    }

    pub fn set_rate_limit(&self, limit: Option<RateLimit>) {
        lock(&self.inner.state).rate_limit = limit;
        self.inner.limiter.reset();
    }

    pub fn inject(&self, fault: Fault) {
        self.inner.faults.inject(fault);
    }

    pub fn clear_faults(&self) {
        self.inner.faults.clear();
    }

    /// Count the request against the frequency window (real time: pacing is real).
    fn admit(&self) -> bool {
        let Some(limit) = lock(&self.inner.state).rate_limit else {
            return true;
        };
        self.inner.limiter.admit(limit).admitted
    }

    fn log(&self, entry: LoggedRequest) {
        lock(&self.inner.log).push(entry);
    }
}

fn envelope(code: u64, info: &str) -> Value {
    json!({
        "ActionStatus": if code == 0 { "OK" } else { "FAIL" },
        "ErrorCode": code,
        "ErrorInfo": info,
    })
}

fn fail(code: u64, info: &str) -> Value {
    envelope(code, info)
}

fn ok(fields: Value) -> Value {
    let mut v = envelope(0, "");
    if let (Some(o), Value::Object(f)) = (v.as_object_mut(), fields) {
        o.extend(f);
    }
    v
}

/// The query with the UserSig value replaced, for the log.
fn redact(query: &str) -> String {
    query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some(("usersig", _)) => "usersig=***".to_string(),
            _ => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

async fn handle(AxState(emu): AxState<TencentEmulator>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let conn = req
        .extensions()
        .get::<ConnectInfo<Conn>>()
        .map(|c| c.0.clone());
    let params: HashMap<String, String> = Query::<HashMap<String, String>>::try_from_uri(req.uri())
        .map(|q| q.0)
        .unwrap_or_default();
    let raw = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let body: Option<Value> = serde_json::from_slice(&raw).ok();
    let command = path.rsplit('/').next().unwrap_or_default().to_string();
    let write = WRITES.contains(&command.as_str());
    let mut entry = LoggedRequest {
        command: command.clone(),
        query: redact(&query),
        body: body.clone(),
        status: 200,
        error_code: None,
        fault: None,
    };

    if !emu.admit() {
        entry.fault = Some("throttled".into());
        entry.error_code = Some(60007);
        emu.log(entry);
        return axum::Json(fail(60007, "REST API call frequency exceeds the limit"))
            .into_response();
    }
    match emu.inner.faults.take(write) {
        Some(FaultKind::Status(code)) => {
            entry.fault = Some(format!("status {code}"));
            // A gateway answers 502-504 bare; the service itself says 10002 inside a 200.
            if matches!(code, 502..=504) || !(500..600).contains(&code) {
                entry.status = code;
                emu.log(entry);
                let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
                return (status, "upstream unavailable").into_response();
            }
            entry.error_code = Some(10002);
            emu.log(entry);
            return axum::Json(fail(10002, "internal error, please retry")).into_response();
        }
        Some(FaultKind::Reset) => {
            entry.fault = Some("reset".into());
            entry.status = 0;
            emu.log(entry);
            if let Some(c) = conn {
                c.kill.store(true, Ordering::SeqCst);
            }
            return StatusCode::BAD_GATEWAY.into_response();
        }
        Some(FaultKind::Slow(d)) => tokio::time::sleep(d).await,
        None => {}
    }

    let now = unix(emu.now());
    let app_key = params.get("sdkappid").cloned().unwrap_or_default();
    let locked = {
        let mut f = lock(&emu.inner.auth_failures);
        let times = f.entry(app_key.clone()).or_default();
        times.retain(|t| t + LOCK_WINDOW > now);
        times.len() >= LOCK_AFTER
    };
    if locked {
        entry.error_code = Some(70050);
        emu.log(entry);
        return axum::Json(fail(
            70050,
            "too many failed UserSig checks; locked for about a minute",
        ))
        .into_response();
    }
    let answer = {
        let mut state = lock(&emu.inner.state);
        route(
            &mut state,
            &method,
            &path,
            &params,
            body.as_ref(),
            &raw,
            now,
        )
    };
    entry.error_code = answer["ErrorCode"].as_u64();
    if entry
        .error_code
        .is_some_and(|c| (70000..70050).contains(&c))
    {
        lock(&emu.inner.auth_failures)
            .entry(app_key)
            .or_default()
            .push(now);
    }
    emu.log(entry);
    axum::Json(answer).into_response()
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Check the URL's app, admin and UserSig (§2, §4 60xxx/70xxx).
fn authenticate<'a>(
    state: &'a mut State,
    params: &HashMap<String, String>,
    now: u64,
) -> Result<&'a mut App, Value> {
    let echo = state.echo_credentials;
    let Some(appid) = params.get("sdkappid") else {
        return Err(fail(60012, "SDKAppID is missing from the URL"));
    };
    let Ok(appid) = appid.parse::<u64>() else {
        return Err(fail(60006, "SDKAppID is invalid"));
    };
    let (Some(identifier), Some(sig)) = (params.get("identifier"), params.get("usersig")) else {
        return Err(fail(60004, "identifier or usersig is missing from the URL"));
    };
    let Some(app) = state.apps.get_mut(&appid) else {
        return Err(fail(70016, "the SDKAppID is not known in this data centre"));
    };
    let claims = usersig::decode(sig).map_err(|_| fail(70003, "UserSig cannot be decoded"))?;
    if claims.sdk_app_id != appid {
        return Err(fail(
            70014,
            "the SDKAppID in the UserSig does not match the URL",
        ));
    }
    if &claims.identifier != identifier {
        return Err(fail(
            70013,
            "the identifier in the UserSig does not match the URL",
        ));
    }
    if !usersig::verify(&claims, &app.secret_key) {
        if echo {
            return Err(fail(
                70009,
                &format!("UserSig {sig} verification failed: wrong key"),
            ));
        }
        return Err(fail(70009, "UserSig verification failed: wrong key"));
    }
    if claims.time.saturating_add(claims.expire) < now {
        return Err(fail(70001, "UserSig has expired"));
    }
    if *identifier != app.admin {
        return Err(fail(60010, "the identifier is not an App admin"));
    }
    Ok(app)
}

fn route(
    state: &mut State,
    method: &Method,
    path: &str,
    params: &HashMap<String, String>,
    body: Option<&Value>,
    raw: &[u8],
    now: u64,
) -> Value {
    let Some(command) = path.strip_prefix("/v4/group_open_http_svc/") else {
        return fail(60009, "unknown REST resource");
    };
    if method != Method::POST {
        return fail(60002, "only POST is accepted");
    }
    let app = match authenticate(state, params, now) {
        Ok(app) => app,
        Err(e) => return e,
    };
    let Some(body) = body.filter(|b| b.is_object()) else {
        return fail(
            60003,
            if raw.is_empty() {
                "the request body may not be empty"
            } else {
                "the request body is not a JSON object"
            },
        );
    };
    if command == "get_group_info" {
        return group_info(app, body);
    }
    let Some(gid) = body["GroupId"].as_str() else {
        return fail(10004, "GroupId is missing");
    };
    let bans_enabled = app.bans_enabled;
    let limits = app.limits;
    let accounts = app.accounts.clone();
    let Some(g) = app.groups.get_mut(gid) else {
        return fail(10010, "group does not exist or has been dismissed");
    };
    // Expired mutes and bans read as none.
    g.muted.retain(|_, u| *u > now);
    g.banned.retain(|_, u| *u > now);
    let ty = g.group_type;
    match command {
        "get_group_member_info" => member_info(g, body, limits),
        "add_group_member" => {
            if ty == GroupType::AvChatRoom {
                return fail(10007, "AVChatRoom groups do not take member adds");
            }
            let Some(list) = body["MemberList"].as_array() else {
                return fail(10004, "MemberList is missing");
            };
            if list.len() > limits.add {
                return fail(10005, "too many accounts in MemberList");
            }
            let mut ids = Vec::new();
            for m in list {
                let Some(a) = m["Member_Account"].as_str() else {
                    return fail(10004, "Member_Account is missing");
                };
                if !accounts.contains(a) {
                    return fail(10019, "an account in the request does not exist");
                }
                ids.push(a.to_string());
            }
            let joining = ids
                .iter()
                .filter(|a| !g.members.contains_key(*a) && !g.banned.contains_key(*a))
                .count();
            if g.max_members
                .is_some_and(|max| g.members.len() + joining > max)
            {
                return fail(10014, "the group is full");
            }
            let results: Vec<Value> = ids
                .iter()
                .map(|a| {
                    let r = if g.banned.contains_key(a) {
                        0
                    } else if g.members.contains_key(a) {
                        2
                    } else {
                        g.members.insert(a.clone(), MemberRole::Member);
                        1
                    };
                    json!({"Member_Account": a, "Result": r})
                })
                .collect();
            ok(json!({"MemberList": results}))
        }
        "delete_group_member" => {
            if ty == GroupType::AvChatRoom {
                return fail(10004, "AVChatRoom groups do not take member deletes");
            }
            let Some(list) = strings(&body["MemberToDel_Account"]) else {
                return fail(10004, "MemberToDel_Account is missing");
            };
            if list.len() > limits.delete {
                return fail(10005, "too many accounts in MemberToDel_Account");
            }
            if list
                .iter()
                .any(|a| g.members.get(a) == Some(&MemberRole::Owner))
            {
                return fail(10007, "the group owner cannot be deleted");
            }
            for a in &list {
                g.members.remove(a);
            }
            ok(json!({}))
        }
        "modify_group_member_info" => {
            let Some(a) = body["Member_Account"].as_str() else {
                return fail(10004, "Member_Account is missing");
            };
            let Some(&role) = g.members.get(a) else {
                return fail(10007, "the account is not a member of the group");
            };
            let mute = body.get("MuteTime").or_else(|| body.get("ShutUpTime"));
            if role == MemberRole::Owner && (body.get("Role").is_some() || mute.is_some()) {
                return fail(10007, "the group owner's role and mute cannot be modified");
            }
            if let Some(r) = body.get("Role") {
                match (r.as_str(), ty) {
                    (Some("Admin"), GroupType::Private | GroupType::AvChatRoom) => {
                        return fail(10007, "this group type has no admins");
                    }
                    (Some("Admin"), _) => {
                        g.members.insert(a.to_string(), MemberRole::Admin);
                    }
                    (Some("Member"), _) => {
                        g.members.insert(a.to_string(), MemberRole::Member);
                    }
                    _ => return fail(10004, "Role must be Admin or Member"),
                }
            }
            if let Some(t) = mute {
                if ty == GroupType::Private {
                    return fail(10007, "Work groups do not support mutes");
                }
                let Some(t) = t.as_u64().filter(|t| *t <= FOREVER) else {
                    return fail(10004, "MuteTime must be an unsigned 32-bit number");
                };
                set_mute(g, a, t, now);
            }
            ok(json!({}))
        }
        "forbid_send_msg" => {
            if ty == GroupType::Private {
                return fail(10007, "Work groups do not support mutes");
            }
            let Some(list) = strings(&body["Members_Account"]) else {
                return fail(10004, "Members_Account is missing");
            };
            if list.len() > limits.mute {
                return fail(10005, "too many accounts in Members_Account");
            }
            let Some(t) = body["MuteTime"].as_u64().filter(|t| *t <= FOREVER) else {
                return fail(10004, "MuteTime is required, an unsigned 32-bit number");
            };
            if list.iter().any(|a| !accounts.contains(a)) {
                return fail(10019, "an account in the request does not exist");
            }
            if list
                .iter()
                .any(|a| g.members.get(a) == Some(&MemberRole::Owner))
            {
                return fail(10007, "the group owner cannot be muted");
            }
            for a in &list {
                set_mute(g, a, t, now);
            }
            ok(json!({}))
        }
        "get_group_muted_account" => {
            let list: Vec<Value> = g
                .muted
                .iter()
                .map(|(a, u)| json!({"Member_Account": a, "MutedUntil": u}))
                .collect();
            ok(json!({"GroupId": gid, "MutedAccountList": list}))
        }
        "ban_group_member" | "unban_group_member" | "get_group_ban_member" if !bans_enabled => {
            fail(
                10059,
                "group bans need a higher edition and the console switch",
            )
        }
        "ban_group_member" => {
            let Some(list) = strings(&body["Members_Account"]) else {
                return fail(10004, "Members_Account is missing");
            };
            if list.len() > limits.ban {
                return fail(10005, "too many accounts in Members_Account");
            }
            let Some(d) = body["Duration"].as_u64().filter(|d| *d <= FOREVER) else {
                return fail(10004, "Duration is required, an unsigned 32-bit number");
            };
            if list.iter().any(|a| !accounts.contains(a)) {
                return fail(10019, "an account in the request does not exist");
            }
            if list
                .iter()
                .any(|a| g.members.get(a) == Some(&MemberRole::Owner))
            {
                return fail(10007, "the group owner cannot be banned");
            }
            let until = if d >= FOREVER { FOREVER } else { now + d };
            for a in list {
                g.members.remove(&a);
                g.banned.insert(a, until);
            }
            ok(json!({}))
        }
        "unban_group_member" => {
            let Some(list) = strings(&body["Members_Account"]) else {
                return fail(10004, "Members_Account is missing");
            };
            if list.len() > limits.ban {
                return fail(10005, "too many accounts in Members_Account");
            }
            for a in &list {
                g.banned.remove(a);
            }
            ok(json!({}))
        }
        "get_group_ban_member" => {
            let limit = body["Limit"].as_u64().unwrap_or(0) as usize;
            let Some(offset) = body["Offset"].as_u64() else {
                return fail(10004, "Offset is required");
            };
            if !(1..=100).contains(&limit) {
                return fail(10004, "Limit must be 1..100");
            }
            let all: Vec<(&String, &u64)> = g.banned.iter().collect();
            let start = (offset as usize).min(all.len());
            let end = (start + limit).min(all.len());
            let page: Vec<Value> = all[start..end]
                .iter()
                .map(|(a, u)| json!({"Member_Account": a, "BannedUntil": u}))
                .collect();
            let next = if end < all.len() { end } else { 0 };
            ok(json!({"NextOffset": next, "BannedAccountList": page}))
        }
        "change_group_owner" => {
            if ty == GroupType::AvChatRoom {
                return fail(10007, "AVChatRoom groups cannot change owner");
            }
            let Some(new) = body["NewOwner_Account"].as_str() else {
                return fail(10004, "NewOwner_Account is missing");
            };
            if !g.members.contains_key(new) {
                return fail(10004, "the new owner must be a member of the group");
            }
            if let Some(old) = g.owner.take() {
                g.members.insert(old, MemberRole::Member);
            }
            g.members.insert(new.to_string(), MemberRole::Owner);
            g.owner = Some(new.to_string());
            ok(json!({}))
        }
        _ => fail(10003, "unknown command"),
    }
}

fn set_mute(g: &mut Group, a: &str, t: u64, now: u64) {
    match t {
        0 => {
            g.muted.remove(a);
        }
        FOREVER => {
            g.muted.insert(a.to_string(), FOREVER);
        }
        t => {
            g.muted.insert(a.to_string(), (now + t).min(FOREVER));
        }
    }
}

fn strings(v: &Value) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|s| s.as_str().map(String::from))
        .collect()
}

fn group_info(app: &App, body: &Value) -> Value {
    let Some(ids) = strings(&body["GroupIdList"]) else {
        return fail(10004, "GroupIdList is missing");
    };
    if ids.len() > 50 {
        return fail(10004, "at most 50 groups per request");
    }
    let infos: Vec<Value> = ids
        .iter()
        .map(|id| match app.groups.get(id) {
            Some(g) => json!({
                "GroupId": id,
                "Type": g.group_type.as_str(),
                "Owner_Account": g.owner.clone().unwrap_or_default(),
                "MemberNum": g.members.len(),
                "MaxMemberNum": g.max_members.unwrap_or(6000),
                "ErrorCode": 0,
                "ErrorInfo": "",
            }),
            None => json!({"GroupId": id, "ErrorCode": 10010, "ErrorInfo": "group not exist"}),
        })
        .collect();
    ok(json!({"GroupInfo": infos}))
}

fn member_info(g: &Group, body: &Value, limits: Limits) -> Value {
    if g.group_type == GroupType::AvChatRoom {
        return fail(10007, "AVChatRoom groups have no member list");
    }
    let limit = match body.get("Limit") {
        None => g.members.len().max(1),
        Some(l) => match l.as_u64() {
            Some(l) if (1..=limits.page as u64).contains(&l) => l as usize,
            Some(l) if l >= 1 && limits.clamp_page => limits.page,
            _ => return fail(10004, "Limit is out of range"),
        },
    };
    let start = if g.group_type == GroupType::Community {
        if body.get("Offset").is_some() {
            return fail(10004, "Community groups page with Next, not Offset");
        }
        match body["Next"].as_str() {
            Some("") | None => 0,
            Some(c) => match c.strip_prefix("cursor-").and_then(|n| n.parse().ok()) {
                Some(n) => n,
                None => return fail(10004, "invalid Next"),
            },
        }
    } else {
        body["Offset"].as_u64().unwrap_or(0) as usize
    };
    let filter = strings(&body["MemberInfoFilter"]).unwrap_or_default();
    let all: Vec<(&String, &MemberRole)> = g.members.iter().collect();
    let start = start.min(all.len());
    let end = (start + limit).min(all.len());
    let page: Vec<Value> = all[start..end]
        .iter()
        .map(|(a, r)| {
            let mut m = json!({"Member_Account": a});
            if filter.iter().any(|f| f == "Role") {
                m["Role"] = json!(match r {
                    MemberRole::Owner => "Owner",
                    MemberRole::Admin => "Admin",
                    MemberRole::Member => "Member",
                });
            }
            if filter.iter().any(|f| f == "MuteUntil") {
                m["MuteUntil"] = json!(g.muted.get(*a).copied().unwrap_or(0));
            }
            m
        })
        .collect();
    let mut out = json!({"MemberNum": g.members.len(), "MemberList": page});
    if g.group_type == GroupType::Community {
        out["Next"] = json!(if end < all.len() {
            format!("cursor-{end}")
        } else {
            String::new()
        });
    }
    ok(out)
}

/// `Duration` helper for seeds: unix seconds of `t`.
pub fn unix_secs(t: SystemTime) -> u64 {
    unix(t)
}

impl super::Emulator for TencentEmulator {
    type State = State;
    const KIND: crate::model::Kind = crate::model::Kind::Tencent;
    const PREFIX: &'static str = "";
    const FIXED_PORT: u16 = 8084;
    fn credentials(state: &State, _base_url: &str) -> Vec<String> {
        (state.apps.iter())
            .map(|(id, a)| {
                format!(
                    "sdk_app_id {id}: identifier {}, secret_key {}",
                    a.admin, a.secret_key
                )
            })
            .collect()
    }
}

/// The client of a Tencent instance pointed at the emulator, signing with the seed's key of
/// the instance's `sdk_app_id`.
pub fn client(
    instance: &mut crate::provider::Instance,
    state: &super::SandboxState,
) -> anyhow::Result<Arc<dyn crate::provider::Provider>> {
    use anyhow::Context as _;
    let settings: &crate::provider::tencent::Settings = instance.settings()?;
    let app = (state.tencent.apps.get(&settings.sdk_app_id)).with_context(|| {
        format!(
            "the sandbox state has no Tencent app {}",
            settings.sdk_app_id
        )
    })?;
    let key = crate::config::secret::Secret::new(app.secret_key.clone());
    Ok(Arc::new(crate::provider::tencent::Tencent::with_key(
        instance, key,
    )?))
}
