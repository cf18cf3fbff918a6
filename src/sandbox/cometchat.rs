//! A stateful emulator of the CometChat Chat REST API v3 routes rosterd uses, as strict as the
//! service documents itself (`shared/providers/cometchat.md`): the `apikey` header selects the
//! app, at most 25 ids per add call, per-member results in a 200, owner protections, the
//! "already done" codes, case-insensitive ids, page-based listings, a configurable rate limit
//! answering 429 with CometChat's headers, injected faults, and a request log for tests.
//!
//! Choices where the provider's documentation is silent (and so the emulator decides):
//! - refusing the owner is `403 ERR_GROUP_NO_CLEARANCE` for kick, ban and scope change;
//! - transferring ownership to a non-member is `400 ERR_NOT_A_MEMBER`; the new owner becomes
//!   `admin` and the old owner keeps its scope;
//! - adding a banned user is a per-member `ERR_BANNED_GROUPMEMBER`;
//! - the rate limit is one window for the whole emulator, not per app and class.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{ConnectInfo, Query, Request, State as AxState};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

pub use super::RateLimit;
use super::{Conn, Fault, FaultKind, Faults, Window};

/// The most ids one `POST members` call may carry across all four arrays.
pub const MAX_IDS: usize = 25;
/// The largest `perPage` the service accepts.
pub const MAX_PER_PAGE: usize = 1000;
/// The `perPage` used when a listing names none.
pub const DEFAULT_PER_PAGE: usize = 100;

/// Everything the emulator knows: apps (selected by API key), their users and groups.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    #[serde(default)]
    pub apps: BTreeMap<String, App>,
    /// Answer 429 beyond this many requests per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// List at most this many items a page whatever `perPage` asks, saying so in
    /// `meta.pagination.per_page`: a server whose cap is below the documented 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_cap: Option<usize>,
    /// Repeat the rejected credential in the error message of a 401/403, as many services,
    /// gateways and proxies do: what the redactor must catch.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub echo_credentials: bool,
}

/// One CometChat app.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    /// The REST API key (`fullAccess`) that selects this app.
    pub api_key: String,
    /// UIDs of the app's users: only these can be added, banned or made owner.
    #[serde(default)]
    pub users: BTreeSet<String>,
    #[serde(default)]
    pub groups: BTreeMap<String, Group>,
}

/// One group: its owner, its members with their scopes, and its banned users.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `None` stands for `app_system`, the owner of groups created without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default)]
    pub members: BTreeMap<String, Scope>,
    #[serde(default)]
    pub banned: BTreeSet<String>,
}

/// A member's scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Admin,
    Moderator,
    Participant,
}

impl Scope {
    fn parse(s: &str) -> Option<Scope> {
        match s {
            "admin" => Some(Scope::Admin),
            "moderator" => Some(Scope::Moderator),
            "participant" => Some(Scope::Participant),
            _ => None,
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Moderator => "moderator",
            Scope::Participant => "participant",
        }
    }
}

impl State {
    /// Lower-case every id (the service forces ids to lower case) and make the file's
    /// shorthand consistent: members, banned users and owners are users of the app, and the
    /// owner is a member with scope `admin`.
    pub fn normalized(self) -> State {
        let apps = self
            .apps
            .into_iter()
            .map(|(id, app)| {
                let mut users: BTreeSet<String> = app.users.iter().map(|u| lower(u)).collect();
                let groups = app
                    .groups
                    .into_iter()
                    .map(|(guid, g)| {
                        let owner = g.owner.map(|o| lower(&o)).filter(|o| o != "app_system");
                        let mut members: BTreeMap<String, Scope> =
                            g.members.into_iter().map(|(u, s)| (lower(&u), s)).collect();
                        let banned: BTreeSet<String> = g.banned.iter().map(|u| lower(u)).collect();
                        if let Some(o) = &owner {
                            members.insert(o.clone(), Scope::Admin);
                        }
                        users.extend(members.keys().cloned());
                        users.extend(banned.iter().cloned());
                        (
                            lower(&guid),
                            Group {
                                name: g.name,
                                owner,
                                members,
                                banned,
                            },
                        )
                    })
                    .collect();
                (
                    id,
                    App {
                        api_key: app.api_key,
                        users,
                        groups,
                    },
                )
            })
            .collect();
        State {
            apps,
            rate_limit: self.rate_limit,
            page_cap: self.page_cap,
            echo_credentials: self.echo_credentials,
        }
    }
}

fn lower(s: &str) -> String {
    s.trim().to_ascii_lowercase()
}

/// One request as the emulator saw it. Headers are not kept: the API key never lands here.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoggedRequest {
    pub method: String,
    /// The path without the query.
    pub path: String,
    pub query: Option<String>,
    pub body: Option<Value>,
    pub status: u16,
    /// The injected fault or throttle that answered, if any.
    pub fault: Option<String>,
}

impl LoggedRequest {
    /// A state-changing call the service carried out or refused on its merits (not one cut
    /// short by the rate limit or an injected fault).
    pub fn is_write(&self) -> bool {
        self.method != "GET" && self.fault.is_none()
    }
}

struct Inner {
    state: Mutex<State>,
    log: Mutex<Vec<LoggedRequest>>,
    faults: Faults,
    limiter: Window,
}

/// A handle on one CometChat emulator; clones share the same state.
#[derive(Clone)]
pub struct CometChatEmulator {
    inner: Arc<Inner>,
}

impl CometChatEmulator {
    pub fn new(state: State) -> Self {
        CometChatEmulator {
            inner: Arc::new(Inner {
                state: Mutex::new(state.normalized()),
                log: Mutex::new(Vec::new()),
                faults: Faults::default(),
                limiter: Window::default(),
            }),
        }
    }

    /// The routes, to be served with `ConnectInfo<Conn>` (see [`super::serve_router`]).
    pub fn router(&self) -> Router {
        Router::new().fallback(handle).with_state(self.clone())
    }

    /// A copy of the current state, e.g. to dump it or compare it with a manifest.
    pub fn state(&self) -> State {
        lock(&self.inner.state).clone()
    }

    /// Change the state in place (tests seed users or drift this way).
    pub fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut s = lock(&self.inner.state);
        let r = f(&mut s);
        *s = std::mem::take(&mut *s).normalized();
        r
    }

    /// One group of one app, as it stands.
    pub fn group(&self, app: &str, guid: &str) -> Option<Group> {
        lock(&self.inner.state)
            .apps
            .get(app)?
            .groups
            .get(&lower(guid))
            .cloned()
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        lock(&self.inner.log).clone()
    }

    /// The write calls so far (see [`LoggedRequest::is_write`]).
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

    /// Count the request against the window. `Err` carries the 429 headers, `Ok` the
    /// informational ones (both empty when no limit is set).
    fn admit(&self) -> Result<HeaderMap, HeaderMap> {
        let Some(limit) = lock(&self.inner.state).rate_limit else {
            return Ok(HeaderMap::new());
        };
        let a = self.inner.limiter.admit(limit);
        let mut h = HeaderMap::new();
        h.insert("x-rate-limit", num(limit.requests as u64));
        h.insert("x-rate-limit-remaining", num(a.remaining as u64));
        if !a.admitted {
            h.insert("x-rate-limit-reset", num(a.reset_ms.div_ceil(1000)));
            // Whole seconds, as the service sends them.
            h.insert(
                "retry-after",
                num((a.reset_ms - a.now_ms).div_ceil(1000).max(1)),
            );
            return Err(h);
        }
        Ok(h)
    }

    fn log(&self, entry: LoggedRequest) {
        lock(&self.inner.log).push(entry);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking test thread must not wedge every later request.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn num(n: u64) -> HeaderValue {
    HeaderValue::from(n)
}

/// A CometChat answer before it becomes an HTTP response.
struct Answer {
    status: StatusCode,
    body: Value,
}

fn ok(data: Value) -> Answer {
    Answer {
        status: StatusCode::OK,
        body: json!({ "data": data }),
    }
}

fn err(status: u16, code: &str, message: impl Into<String>) -> Answer {
    Answer {
        status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        body: json!({ "error": { "code": code, "message": message.into(), "source": "chat-api" } }),
    }
}

fn bad_request(field: &str, problem: &str) -> Answer {
    let mut a = err(
        400,
        "ERR_BAD_REQUEST",
        format!("Failed to validate the data sent with the request: {problem}"),
    );
    a.body["error"]["details"] = json!({ field: [problem] });
    a
}

fn member_err(code: &str, message: String) -> Value {
    json!({ "success": false, "error": { "code": code, "message": message } })
}

fn json_response(status: StatusCode, body: &Value, extra: HeaderMap) -> Response {
    let mut r = (status, axum::Json(body.clone())).into_response();
    r.headers_mut().extend(extra);
    r
}

async fn handle(AxState(emu): AxState<CometChatEmulator>, req: Request) -> Response {
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
        Some(
            serde_json::from_slice(&raw)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&raw).into())),
        )
    };
    let mut entry = LoggedRequest {
        method: method.to_string(),
        path: path.clone(),
        query,
        body: body.clone(),
        status: 0,
        fault: None,
    };

    let rate_headers = match emu.admit() {
        Ok(h) => h,
        Err(h) => {
            entry.status = 429;
            entry.fault = Some("throttled".into());
            emu.log(entry);
            let a = err(
                429,
                "ERR_TOO_MANY_REQUESTS",
                "Too many requests. Please retry after some time.",
            );
            return json_response(a.status, &a.body, h);
        }
    };

    match emu.inner.faults.take(method != Method::GET) {
        Some(FaultKind::Status(code)) => {
            entry.status = code;
            entry.fault = Some(format!("status {code}"));
            emu.log(entry);
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            // An edge proxy answers 502-504 without CometChat's envelope; the API itself with one.
            if matches!(code, 502..=504) {
                return (status, "upstream unavailable").into_response();
            }
            let a = err(
                code,
                "ERR_MISSION_FAILED",
                "Something went wrong. Please try again.",
            );
            return json_response(status, &a.body, rate_headers);
        }
        Some(FaultKind::Reset) => {
            entry.fault = Some("reset".into());
            match conn {
                Some(c) => {
                    c.kill.store(true, Ordering::SeqCst);
                    entry.status = 0;
                    emu.log(entry);
                    // The connection now fails every read and write, so this never reaches the client.
                    return StatusCode::BAD_GATEWAY.into_response();
                }
                None => {
                    // Served without the killable listener: a 502 is the nearest thing.
                    entry.status = 502;
                    emu.log(entry);
                    return (StatusCode::BAD_GATEWAY, "connection reset").into_response();
                }
            }
        }
        Some(FaultKind::Slow(d)) => {
            tokio::time::sleep(d).await;
        }
        None => {}
    }

    let answer = {
        let mut state = lock(&emu.inner.state);
        route(&mut state, &method, &path, &headers, &params, body.as_ref())
    };
    entry.status = answer.status.as_u16();
    emu.log(entry);
    json_response(answer.status, &answer.body, rate_headers)
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

fn route(
    state: &mut State,
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
    let Some((version, rest)) = segs.split_first() else {
        return err(
            404,
            "ERR_API_NOT_FOUND",
            "The requested API does not exist.",
        );
    };
    if *version != "v3" {
        return err(
            404,
            "ERR_INVALID_API_VERSION",
            "The API version is not supported.",
        );
    }
    let key = headers
        .get("apikey")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if key.is_empty() {
        return err(
            401,
            "AUTH_ERR_EMPTY_APIKEY",
            "The apikey header is missing.",
        );
    }
    let page_cap = state.page_cap;
    let echo = state.echo_credentials;
    let Some(app) = state.apps.values_mut().find(|a| a.api_key == key) else {
        let message = if echo {
            format!("The apiKey {key} provided could not be found.")
        } else {
            "The apiKey provided could not be found.".to_string()
        };
        return err(401, "AUTH_ERR_APIKEY_NOT_FOUND", message);
    };
    let m = method.clone();
    match (m, rest) {
        (Method::GET, ["users", uid]) => get_user(app, &lower(uid)),
        (Method::GET, ["groups", guid]) => with_group(app, guid, get_group),
        (Method::PUT, ["groups", guid]) => {
            with_group(app, guid, |app, guid| update_group(app, guid, body))
        }
        (Method::GET, ["groups", guid, "members"]) => with_group(app, guid, |app, guid| {
            list(app, guid, params, page_cap, ListKind::Members)
        }),
        (Method::POST, ["groups", guid, "members"]) => {
            with_group(app, guid, |app, guid| add_members(app, guid, body))
        }
        (Method::PUT, ["groups", guid, "members", uid]) => with_group(app, guid, |app, guid| {
            change_scope(app, guid, &lower(uid), body)
        }),
        (Method::DELETE, ["groups", guid, "members", uid]) => {
            with_group(app, guid, |app, guid| kick(app, guid, &lower(uid)))
        }
        (Method::GET, ["groups", guid, "bannedusers"]) => with_group(app, guid, |app, guid| {
            list(app, guid, params, page_cap, ListKind::Banned)
        }),
        (Method::POST, ["groups", guid, "bannedusers", uid]) => {
            with_group(app, guid, |app, guid| ban(app, guid, &lower(uid)))
        }
        (Method::DELETE, ["groups", guid, "bannedusers", uid]) => {
            with_group(app, guid, |app, guid| unban(app, guid, &lower(uid)))
        }
        _ => err(
            404,
            "ERR_API_NOT_FOUND",
            "The requested API does not exist.",
        ),
    }
}

fn with_group(app: &mut App, guid: &str, f: impl FnOnce(&mut App, &str) -> Answer) -> Answer {
    let guid = lower(guid);
    if !app.groups.contains_key(&guid) {
        return err(
            404,
            "ERR_GUID_NOT_FOUND",
            format!("The group with GUID {guid} does not exist."),
        );
    }
    f(app, &guid)
}

fn user_json(uid: &str) -> Value {
    json!({ "uid": uid, "name": uid, "status": "offline", "role": "default", "createdAt": 1_716_000_000u64 })
}

fn uid_not_found(uid: &str) -> String {
    format!(
        "The UID {uid} does not exist, please make sure you have created a user with UID {uid}."
    )
}

fn get_user(app: &App, uid: &str) -> Answer {
    if app.users.contains(uid) {
        ok(user_json(uid))
    } else {
        err(404, "ERR_UID_NOT_FOUND", uid_not_found(uid))
    }
}

fn group_json(guid: &str, g: &Group) -> Value {
    json!({
        "guid": guid,
        "name": g.name.clone().unwrap_or_else(|| guid.to_string()),
        "type": "private",
        "owner": g.owner.clone().unwrap_or_else(|| "app_system".into()),
        "membersCount": g.members.len(),
        "conversationId": format!("group_{guid}"),
        "createdAt": 1_717_000_000u64,
    })
}

fn get_group(app: &mut App, guid: &str) -> Answer {
    ok(group_json(guid, &app.groups[guid]))
}

fn update_group(app: &mut App, guid: &str, body: Option<&Value>) -> Answer {
    let Some(obj) = body.and_then(Value::as_object) else {
        return bad_request("body", "The request body must be a JSON object.");
    };
    if let Some(name) = obj.get("name") {
        let Some(name) = name.as_str() else {
            return bad_request("name", "The name must be a string.");
        };
        app.groups.get_mut(guid).expect("checked").name = Some(name.to_string());
    }
    if let Some(owner) = obj.get("owner") {
        let Some(owner) = owner.as_str().map(lower) else {
            return bad_request("owner", "The owner must be a string.");
        };
        if !app.users.contains(&owner) {
            return err(404, "ERR_UID_NOT_FOUND", uid_not_found(&owner));
        }
        let g = app.groups.get_mut(guid).expect("checked");
        if !g.members.contains_key(&owner) {
            return err(
                400,
                "ERR_NOT_A_MEMBER",
                format!("The user with UID {owner} is not a member of the group {guid}."),
            );
        }
        g.members.insert(owner.clone(), Scope::Admin);
        g.owner = Some(owner);
    }
    ok(group_json(guid, &app.groups[guid]))
}

enum ListKind {
    Members,
    Banned,
}

fn list(
    app: &mut App,
    guid: &str,
    params: &HashMap<String, String>,
    page_cap: Option<usize>,
    kind: ListKind,
) -> Answer {
    let per_page = match params.get("perPage").map(|s| s.parse::<usize>()) {
        None => DEFAULT_PER_PAGE,
        Some(Ok(n)) if (1..=MAX_PER_PAGE).contains(&n) => n,
        Some(_) => return bad_request("perPage", "The per page must be between 1 and 1000."),
    };
    let per_page = page_cap.map_or(per_page, |cap| per_page.min(cap.max(1)));
    let page = match params.get("page").map(|s| s.parse::<usize>()) {
        None => 1,
        Some(Ok(n)) if n >= 1 => n,
        Some(_) => return bad_request("page", "The page must be at least 1."),
    };
    let g = &app.groups[guid];
    let all: Vec<Value> = match kind {
        ListKind::Members => g
            .members
            .iter()
            .map(|(uid, scope)| {
                let mut u = user_json(uid);
                u["scope"] = json!(scope.as_str());
                u["joinedAt"] = json!(1_717_000_100u64);
                u
            })
            .collect(),
        ListKind::Banned => g.banned.iter().map(|uid| user_json(uid)).collect(),
    };
    let total = all.len();
    let data: Vec<Value> = all
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    json_ok_paged(data, total, per_page, page)
}

fn json_ok_paged(data: Vec<Value>, total: usize, per_page: usize, page: usize) -> Answer {
    let count = data.len();
    Answer {
        status: StatusCode::OK,
        body: json!({
            "data": data,
            "meta": { "pagination": {
                "total": total, "count": count, "per_page": per_page,
                "current_page": page, "total_pages": total.div_ceil(per_page),
            }},
        }),
    }
}

const ARRAYS: [&str; 4] = ["admins", "moderators", "participants", "usersToBan"];

fn add_members(app: &mut App, guid: &str, body: Option<&Value>) -> Answer {
    let Some(obj) = body.and_then(Value::as_object) else {
        return bad_request("body", "The request body must be a JSON object.");
    };
    // Each UID resolves to the first array it appears in, in rank order (cometchat.md §3.5).
    let mut resolved: Vec<(&'static str, String)> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut total = 0usize;
    for key in ARRAYS {
        let Some(v) = obj.get(key) else { continue };
        let Some(items) = v.as_array() else {
            return bad_request(key, &format!("The {key} must be an array."));
        };
        for item in items {
            let Some(uid) = item.as_str() else {
                return bad_request(key, &format!("The {key} must be an array of strings."));
            };
            total += 1;
            if seen.insert(lower(uid)) {
                resolved.push((key, uid.to_string()));
            }
        }
    }
    if total == 0 {
        return bad_request(
            "admins",
            "At least one of admins, moderators, participants or usersToBan is required.",
        );
    }
    if total > MAX_IDS {
        return bad_request(
            "participants",
            &format!("At most {MAX_IDS} users can be added or banned in one request."),
        );
    }
    let mut out: Map<String, Value> = ARRAYS.iter().map(|k| (k.to_string(), json!({}))).collect();
    let next_id = app.groups.values().map(|g| g.members.len()).sum::<usize>();
    for (i, (key, raw)) in resolved.into_iter().enumerate() {
        let uid = lower(&raw);
        let g = app.groups.get_mut(guid).expect("checked");
        let result = if !app.users.contains(&uid) {
            member_err("ERR_UID_NOT_FOUND", uid_not_found(&uid))
        } else if key == "usersToBan" {
            if g.banned.contains(&uid) {
                member_err(
                    "ERR_ALREADY_BANNED",
                    format!("The user {uid} is already banned from the group {guid}."),
                )
            } else if g.owner.as_deref() == Some(uid.as_str()) {
                member_err(
                    "ERR_GROUP_NO_CLEARANCE",
                    format!("The owner of the group {guid} cannot be banned."),
                )
            } else {
                g.members.remove(&uid);
                g.banned.insert(uid.clone());
                json!({ "success": true })
            }
        } else if g.banned.contains(&uid) {
            member_err(
                "ERR_BANNED_GROUPMEMBER",
                format!("The user {uid} is banned from the group {guid}."),
            )
        } else if g.members.contains_key(&uid) {
            member_err(
                "ERR_ALREADY_JOINED",
                format!("The user {uid} has already joined the group {guid}."),
            )
        } else {
            let scope = match key {
                "admins" => Scope::Admin,
                "moderators" => Scope::Moderator,
                _ => Scope::Participant,
            };
            g.members.insert(uid.clone(), scope);
            json!({ "success": true, "data": {
                "id": (next_id + i).to_string(), "category": "action", "type": "groupMember",
                "receiver": guid, "receiverType": "group", "data": { "action": "added" },
            }})
        };
        out[key][raw] = result;
    }
    ok(Value::Object(out))
}

fn change_scope(app: &mut App, guid: &str, uid: &str, body: Option<&Value>) -> Answer {
    let Some(scope) = body.and_then(|b| b.get("scope")).and_then(Value::as_str) else {
        return bad_request("scope", "The scope field is required.");
    };
    let Some(scope) = Scope::parse(scope) else {
        return bad_request("scope", "The selected scope is invalid.");
    };
    if !app.users.contains(uid) {
        return err(404, "ERR_UID_NOT_FOUND", uid_not_found(uid));
    }
    let g = app.groups.get_mut(guid).expect("checked");
    let Some(current) = g.members.get(uid).copied() else {
        return err(
            400,
            "ERR_NOT_A_MEMBER",
            format!("The user with UID {uid} is not a member of the group {guid}."),
        );
    };
    if current == scope {
        return err(
            400,
            "ERR_SAME_SCOPE",
            format!("The user {uid} already has the scope {}.", scope.as_str()),
        );
    }
    if g.owner.as_deref() == Some(uid) {
        return err(
            403,
            "ERR_GROUP_NO_CLEARANCE",
            format!("The scope of the owner of the group {guid} cannot be changed."),
        );
    }
    g.members.insert(uid.to_string(), scope);
    ok(json!({ "guid": guid, "uid": uid, "scope": scope.as_str(), "joinedAt": 1_717_000_100u64 }))
}

fn kick(app: &mut App, guid: &str, uid: &str) -> Answer {
    if !app.users.contains(uid) {
        return err(404, "ERR_UID_NOT_FOUND", uid_not_found(uid));
    }
    let g = app.groups.get_mut(guid).expect("checked");
    if !g.members.contains_key(uid) {
        return err(
            400,
            "ERR_NOT_A_MEMBER",
            format!("The user with UID {uid} is not a member of the group {guid}."),
        );
    }
    if g.owner.as_deref() == Some(uid) {
        return err(
            403,
            "ERR_GROUP_NO_CLEARANCE",
            format!("The owner of the group {guid} cannot be kicked."),
        );
    }
    g.members.remove(uid);
    ok(
        json!({ "success": true, "message": format!("The member with {uid} has been kicked from the Group with {guid}.") }),
    )
}

fn ban(app: &mut App, guid: &str, uid: &str) -> Answer {
    if !app.users.contains(uid) {
        return err(404, "ERR_UID_NOT_FOUND", uid_not_found(uid));
    }
    let g = app.groups.get_mut(guid).expect("checked");
    if g.banned.contains(uid) {
        return err(
            400,
            "ERR_ALREADY_BANNED",
            format!("The user {uid} is already banned from the group {guid}."),
        );
    }
    if g.owner.as_deref() == Some(uid) {
        return err(
            403,
            "ERR_GROUP_NO_CLEARANCE",
            format!("The owner of the group {guid} cannot be banned."),
        );
    }
    g.members.remove(uid);
    g.banned.insert(uid.to_string());
    ok(
        json!({ "success": true, "message": format!("The user with uid {uid} has been banned from the Group with {guid}.") }),
    )
}

fn unban(app: &mut App, guid: &str, uid: &str) -> Answer {
    if !app.users.contains(uid) {
        return err(404, "ERR_UID_NOT_FOUND", uid_not_found(uid));
    }
    let g = app.groups.get_mut(guid).expect("checked");
    if !g.banned.remove(uid) {
        return err(
            400,
            "ERR_NOT_A_BANNED_USER",
            format!("The user {uid} is not banned from the group {guid}."),
        );
    }
    ok(
        json!({ "success": true, "message": format!("The user with uid {uid} has been unbanned from the Group with {guid}.") }),
    )
}

impl super::Emulator for CometChatEmulator {
    type State = State;
    const KIND: crate::model::Kind = crate::model::Kind::Cometchat;
    const PREFIX: &'static str = "/v3";
    const FIXED_PORT: u16 = 8081;
    fn credentials(state: &State, _base_url: &str) -> Vec<String> {
        (state.apps.iter())
            .map(|(app, a)| format!("app {app}: apikey {}", a.api_key))
            .collect()
    }
}

/// The client of a CometChat instance pointed at the emulator: the instance's `app_id` names
/// the app in the seed, and a seed with one app serves any.
pub fn client(
    instance: &mut crate::provider::Instance,
    state: &super::SandboxState,
) -> anyhow::Result<Arc<dyn crate::provider::Provider>> {
    use anyhow::Context as _;
    let settings: &crate::provider::cometchat::Settings = instance.settings()?;
    let apps = &state.cometchat.apps;
    let app = apps
        .get(&settings.app_id)
        .or_else(|| (apps.len() == 1).then(|| apps.values().next()).flatten())
        .with_context(|| {
            format!(
                "the sandbox state has no CometChat app {:?}",
                settings.app_id
            )
        })?;
    let key = crate::config::secret::Secret::new(app.api_key.clone());
    Ok(Arc::new(crate::provider::cometchat::CometChat::with_key(
        instance, key,
    )?))
}
