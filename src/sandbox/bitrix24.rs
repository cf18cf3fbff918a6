//! A stateful emulator of the Bitrix24 REST methods rosterd uses (`shared/providers/bitrix24.md`):
//! incoming-webhook path auth and OAuth token auth (expiring access tokens and a refresh
//! endpoint), the per-portal leaky bucket (`503 QUERY_LIMIT_EXCEEDED`), the per-method operating
//! budget (`429 OPERATION_TIME_LIMIT`, `time.operating_reset_at`), `batch` with its 50-command
//! rule and PHP-array JSON shapes, silent skips on add, `USER_NOT_FOUND` on delete, the owner
//! and manager rules, optional legacy `WRONG_REQUEST` answers and a portal without
//! `im.chat.setManager`, injected faults, and a request log for tests.
//!
//! Choices where the reference is silent (and so the emulator decides):
//! - `ACCESS_DENIED_EXTEND` / `ACCESS_DENIED_KICK` answer 403;
//! - `setManager` on the owner is a silent no-op, like on a non-member;
//! - every call costs a fixed `operating.cost` of its method's budget;
//! - `$result[...]` references inside a batch are not expanded.
//!
//! The request log never holds a credential: the webhook code and OAuth tokens are dropped.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::extract::{ConnectInfo, Request, State as AxState};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{Conn, Fault, FaultKind, Faults};

/// Commands one `batch` carries; the rest get `ERROR_BATCH_LENGTH_EXCEEDED`.
pub const BATCH_MAX_LENGTH: usize = 50;

/// One portal: users, credentials, chats and limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Active users (ids). Members, owners and credential users are added on load.
    #[serde(default)]
    pub users: BTreeSet<u64>,
    /// Deactivated users: adds skip them silently.
    #[serde(default)]
    pub inactive: BTreeSet<u64>,
    /// Incoming webhooks: code -> the user it acts as.
    #[serde(default)]
    pub webhooks: BTreeMap<String, u64>,
    /// An installed OAuth application, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth: Option<OAuthApp>,
    #[serde(default)]
    pub chats: BTreeMap<u64, Chat>,
    /// The leaky bucket; `null` turns it off. Default: 50 requests, draining 2 per second.
    #[serde(default = "Bucket::standard_opt")]
    pub bucket: Option<Bucket>,
    /// Per-method operating-time budget; `null` turns it off.
    #[serde(default = "Operating::standard_opt")]
    pub operating: Option<Operating>,
    /// Whether the portal has the undocumented `im.chat.setManager`.
    #[serde(default = "yes")]
    pub set_manager: bool,
    /// Answer add/delete failures as old portals do: `400 WRONG_REQUEST`.
    #[serde(default)]
    pub legacy_errors: bool,
    /// Repeat the rejected credential in the error message of a 401/403, as many services,
    /// gateways and proxies do: what the redactor must catch.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub echo_credentials: bool,
}

fn yes() -> bool {
    true
}

impl Default for State {
    fn default() -> Self {
        State {
            users: BTreeSet::new(),
            inactive: BTreeSet::new(),
            webhooks: BTreeMap::new(),
            oauth: None,
            chats: BTreeMap::new(),
            bucket: Bucket::standard_opt(),
            operating: Operating::standard_opt(),
            set_manager: true,
            legacy_errors: false,
            echo_credentials: false,
        }
    }
}

/// An OAuth application installed on the portal, with the tokens it holds now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthApp {
    pub client_id: String,
    pub client_secret: String,
    /// The user the tokens act as.
    pub user: u64,
    pub access_token: String,
    pub refresh_token: String,
    /// Lifetime of an access token (Bitrix24: 1 hour).
    #[serde(with = "humantime_serde", default = "OAuthApp::hour")]
    pub token_ttl: Duration,
    /// The seeded access token has already expired.
    #[serde(default)]
    pub expired: bool,
}

impl OAuthApp {
    fn hour() -> Duration {
        Duration::from_secs(3600)
    }
}

/// One group chat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chat {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub owner: u64,
    /// Managers besides the owner (the owner is always one).
    #[serde(default)]
    pub managers: BTreeSet<u64>,
    #[serde(default)]
    pub members: BTreeSet<u64>,
    /// The portal's general chat: membership cannot be edited.
    #[serde(default, skip_serializing_if = "is_false")]
    pub general: bool,
    /// Who may add members (`member`, `manager`, `owner`).
    #[serde(default = "Perm::member")]
    pub manage_users_add: Perm,
    /// Who may remove members.
    #[serde(default = "Perm::manager")]
    pub manage_users_delete: Perm,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A chat permission level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Perm {
    #[default]
    Member,
    Manager,
    Owner,
}

impl Perm {
    fn member() -> Perm {
        Perm::Member
    }
    fn manager() -> Perm {
        Perm::Manager
    }
    fn as_str(self) -> &'static str {
        match self {
            Perm::Member => "member",
            Perm::Manager => "manager",
            Perm::Owner => "owner",
        }
    }
}

/// The leaky bucket: each request adds one; it drains `drain` per second; above `size` the
/// request fails.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    pub size: u32,
    pub drain: f64,
}

impl Bucket {
    /// Standard plans: 50, draining 2 per second.
    pub fn standard() -> Bucket {
        Bucket {
            size: 50,
            drain: 2.0,
        }
    }
    fn standard_opt() -> Option<Bucket> {
        Some(Bucket::standard())
    }
}

/// The operating-time budget of each method over a sliding `window`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operating {
    #[serde(with = "humantime_serde")]
    pub limit: Duration,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// What one call of a method adds to its budget.
    #[serde(with = "humantime_serde")]
    pub cost: Duration,
}

impl Operating {
    /// Cloud defaults: 480 s per 10 minutes; membership calls are cheap.
    pub fn standard() -> Operating {
        Operating {
            limit: Duration::from_secs(480),
            window: Duration::from_secs(600),
            cost: Duration::from_millis(10),
        }
    }
    fn standard_opt() -> Option<Operating> {
        Some(Operating::standard())
    }
}

impl State {
    /// Make the seed consistent: the owner is a member and a manager, managers are members,
    /// and every member and credential user is a user of the portal.
    pub fn normalized(mut self) -> State {
        for c in self.chats.values_mut() {
            c.members.insert(c.owner);
            c.managers.insert(c.owner);
            c.managers = c.managers.intersection(&c.members).copied().collect();
        }
        let mut users: BTreeSet<u64> = self
            .chats
            .values()
            .flat_map(|c| c.members.iter().copied())
            .collect();
        users.extend(self.webhooks.values().copied());
        users.extend(self.oauth.as_ref().map(|o| o.user));
        users.retain(|u| !self.inactive.contains(u));
        self.users.extend(users);
        self
    }
}

/// The made-up credentials a seed accepts, for `rosterd sandbox` to print (sandbox-only
/// values: they open nothing anywhere else). Webhook URLs are relative to the base URL.
pub fn credentials(state: &State) -> Vec<String> {
    let mut out: Vec<String> = state
        .webhooks
        .iter()
        .map(|(code, user)| {
            format!("webhook of user {user}: webhook_url <base_url>/rest/{user}/{code}/")
        })
        .collect();
    if let Some(o) = &state.oauth {
        out.push(format!(
            "oauth app {} (user {}): endpoint <base_url>/rest/, client_secret {}, tokens {} / {}",
            o.client_id, o.user, o.client_secret, o.access_token, o.refresh_token
        ));
    }
    out
}

/// One request as the emulator saw it, without credentials.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoggedRequest {
    /// The REST method (`batch`, `profile`, ...) or `oauth/token`.
    pub method: String,
    /// `webhook`, `oauth` or `none`.
    pub auth: String,
    /// For a batch: the method of each command, in order.
    pub commands: Vec<String>,
    /// Whether the request carries a state-changing call.
    pub write: bool,
    pub status: u16,
    /// The top-level error code, if any.
    pub error: Option<String>,
    /// For a batch: the error code of each failed command.
    pub command_errors: Vec<String>,
    /// When the request arrived (unix seconds).
    pub at: f64,
    /// The injected fault that answered, if any.
    pub fault: Option<String>,
}

impl LoggedRequest {
    /// A state-changing request the portal carried out (not cut short by a limit or a fault).
    pub fn is_write(&self) -> bool {
        self.write && self.fault.is_none() && self.status == 200
    }
}

struct Runtime {
    /// Leaky-bucket level and when it was last drained.
    level: f64,
    drained_at: f64,
    /// Per method: (when, cost in seconds) of calls inside the window.
    operating: HashMap<String, VecDeque<(f64, f64)>>,
    access_expires_at: f64,
    issued: u64,
}

struct Inner {
    state: Mutex<State>,
    log: Mutex<Vec<LoggedRequest>>,
    faults: Faults,
    rt: Mutex<Runtime>,
}

/// A handle on one Bitrix24 emulator; clones share the same state.
#[derive(Clone)]
pub struct Bitrix24Emulator {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking test thread must not wedge every later request.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now() -> f64 {
    super::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Bitrix24Emulator {
    pub fn new(state: State) -> Self {
        let state = state.normalized();
        let t = now();
        let expires = match &state.oauth {
            Some(o) if o.expired => t - 1.0,
            Some(o) => t + o.token_ttl.as_secs_f64(),
            None => t,
        };
        Bitrix24Emulator {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                log: Mutex::new(Vec::new()),
                faults: Faults::default(),
                rt: Mutex::new(Runtime {
                    level: 0.0,
                    drained_at: t,
                    operating: HashMap::new(),
                    access_expires_at: expires,
                    issued: 0,
                }),
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

    /// Change the state in place (tests seed drift this way).
    pub fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut s = lock(&self.inner.state);
        let r = f(&mut s);
        *s = std::mem::take(&mut *s).normalized();
        r
    }

    /// One chat as it stands.
    pub fn chat(&self, id: u64) -> Option<Chat> {
        lock(&self.inner.state).chats.get(&id).cloned()
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        lock(&self.inner.log).clone()
    }

    /// The write requests carried out so far (see [`LoggedRequest::is_write`]).
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

    /// Expire the current OAuth access token now.
    pub fn expire_token(&self) {
        lock(&self.inner.rt).access_expires_at = now() - 1.0;
    }

    /// Fill the leaky bucket to `level` (as if other integrations had just called).
    pub fn fill_bucket(&self, level: f64) {
        let mut rt = lock(&self.inner.rt);
        rt.level = level;
        rt.drained_at = now();
    }

    /// Count one request against the bucket; `false` when it overflows.
    fn admit(&self) -> bool {
        let Some(b) = lock(&self.inner.state).bucket else {
            return true;
        };
        let mut rt = lock(&self.inner.rt);
        let t = now();
        rt.level = (rt.level - (t - rt.drained_at) * b.drain).max(0.0);
        rt.drained_at = t;
        if rt.level + 1.0 > b.size as f64 + 1e-9 {
            return false;
        }
        rt.level += 1.0;
        true
    }

    /// Charge one call of `method` to its budget: `Err` when the budget is spent, else the
    /// (operating, operating_reset_at) to report.
    fn charge(&self, method: &str) -> Result<(f64, f64), ()> {
        let Some(op) = lock(&self.inner.state).operating else {
            return Ok((0.0, now()));
        };
        let mut rt = lock(&self.inner.rt);
        let t = now();
        let window = op.window.as_secs_f64();
        let q = rt.operating.entry(method.to_string()).or_default();
        while q.front().is_some_and(|(at, _)| *at + window <= t) {
            q.pop_front();
        }
        let used: f64 = q.iter().map(|(_, c)| c).sum();
        if used >= op.limit.as_secs_f64() {
            return Err(());
        }
        q.push_back((t, op.cost.as_secs_f64()));
        let oldest = q.front().map_or(t, |(at, _)| *at);
        Ok((used + op.cost.as_secs_f64(), (oldest + window).ceil()))
    }

    fn log(&self, entry: LoggedRequest) {
        lock(&self.inner.log).push(entry);
    }
}

/// Request parameters: scalars and lists (`USERS[]=7` or a JSON array).
#[derive(Debug, Default)]
struct Params(HashMap<String, Param>);

#[derive(Debug, Clone)]
enum Param {
    One(String),
    Many(Vec<String>),
    /// A nested object (`cmd` of a batch), kept in its original key order.
    Object(Vec<(String, Value)>),
}

impl Params {
    fn one(&self, k: &str) -> Option<&str> {
        match self.0.get(k)? {
            Param::One(s) => Some(s.as_str()),
            Param::Many(v) => v.first().map(String::as_str),
            Param::Object(_) => None,
        }
    }
    fn many(&self, k: &str) -> Vec<String> {
        match self.0.get(k) {
            Some(Param::One(s)) => vec![s.clone()],
            Some(Param::Many(v)) => v.clone(),
            _ => vec![],
        }
    }
    /// A positive id, or `None` (missing, 0, `chat42`, ...).
    fn id(&self, k: &str) -> Option<u64> {
        self.one(k)?.trim().parse::<u64>().ok().filter(|n| *n > 0)
    }

    /// Form syntax: `A=1&USERS[]=7&USERS[1]=9`; parameter names upper-cased as `im.*` does.
    fn from_query(q: &str) -> Params {
        let mut p = Params::default();
        for pair in q.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = percent_decode(k);
            let v = percent_decode(v);
            match k.split_once('[') {
                Some((name, _)) => {
                    let e =
                        p.0.entry(name.to_ascii_uppercase())
                            .or_insert_with(|| Param::Many(vec![]));
                    if let Param::Many(list) = e {
                        list.push(v);
                    }
                }
                None => {
                    p.0.insert(k.to_ascii_uppercase(), Param::One(v));
                }
            }
        }
        p
    }

    fn from_json(body: &[u8]) -> Params {
        // A body that does not parse is silently ignored, as the portal does.
        let Ok(OrderedObject(fields)) = serde_json::from_slice::<OrderedObject>(body) else {
            return Params::default();
        };
        let mut p = Params::default();
        for (k, v) in fields {
            let key = if k == "cmd" || k == "halt" || k == "auth" {
                k
            } else {
                k.to_ascii_uppercase()
            };
            let val = match v {
                Value::Array(a) => Param::Many(a.iter().map(scalar).collect()),
                Value::Object(_) => Param::Object(ordered_fields(&v)),
                other => Param::One(scalar(&other)),
            };
            p.0.insert(key, val);
        }
        p
    }
}

/// The batch's `cmd` must keep its order (commands run sequentially), so the body is read as
/// an ordered list of fields, nested objects included (see [`RawOrValue`]).
struct OrderedObject(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for OrderedObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<OrderedObject, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, RawOrValue>()? {
                    out.push((k, v.0));
                }
                Ok(OrderedObject(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A value whose nested objects keep their key order (as `{"__ordered": [[k, v], ...]}`).
struct RawOrValue(Value);

impl<'de> Deserialize<'de> for RawOrValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawOrValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<RawOrValue, E> {
                Ok(RawOrValue(Value::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<RawOrValue, E> {
                Ok(RawOrValue(json!(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<RawOrValue, E> {
                Ok(RawOrValue(json!(v)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<RawOrValue, E> {
                Ok(RawOrValue(json!(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<RawOrValue, E> {
                Ok(RawOrValue(Value::String(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<RawOrValue, E> {
                Ok(RawOrValue(Value::String(v)))
            }
            fn visit_unit<E>(self) -> Result<RawOrValue, E> {
                Ok(RawOrValue(Value::Null))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut s: A,
            ) -> Result<RawOrValue, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = s.next_element::<RawOrValue>()? {
                    out.push(v.0);
                }
                Ok(RawOrValue(Value::Array(out)))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<RawOrValue, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, RawOrValue>()? {
                    out.push(json!([k, v.0]));
                }
                Ok(RawOrValue(json!({ "__ordered": out })))
            }
        }
        d.deserialize_any(V)
    }
}

/// The fields of an object read through [`RawOrValue`], in order.
fn ordered_fields(v: &Value) -> Vec<(String, Value)> {
    match v.get("__ordered").and_then(Value::as_array) {
        Some(items) => items
            .iter()
            .filter_map(|kv| Some((kv.get(0)?.as_str()?.to_string(), kv.get(1)?.clone())))
            .collect(),
        None => match v {
            Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), v.clone()))
                .collect(),
            _ => vec![],
        },
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "1".into(),
        Value::Bool(false) => "0".into(),
        Value::Null => String::new(),
        other => other.to_string(),
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
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A method failure: HTTP status, code, description.
type Failure = (u16, &'static str, String);

fn fail(status: u16, code: &'static str, desc: impl Into<String>) -> Failure {
    (status, code, desc.into())
}

const WRITE_METHODS: [&str; 4] = [
    "im.chat.user.add",
    "im.chat.user.delete",
    "im.chat.setowner",
    "im.chat.setmanager",
];

fn method_name(raw: &str) -> String {
    let m = raw.trim().to_ascii_lowercase();
    m.strip_suffix(".json").unwrap_or(&m).to_string()
}

/// Who is calling, as established by the credentials.
enum Caller {
    Webhook(u64),
    OAuth(u64),
}

async fn handle(AxState(emu): AxState<Bitrix24Emulator>, req: Request) -> Response {
    let http_method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let conn = req
        .extensions()
        .get::<ConnectInfo<Conn>>()
        .map(|c| c.0.clone());
    let raw = axum::body::to_bytes(req.into_body(), 8 << 20)
        .await
        .unwrap_or_default();

    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    if segs.first() == Some(&"oauth") {
        return refresh(&emu, &http_method, &query);
    }
    // `/rest/{user}/{code}/{method}` (webhook) or `/rest/{method}` (OAuth).
    let (webhook, method) = match segs.as_slice() {
        ["rest", user, code, method] => (Some((user.to_string(), code.to_string())), *method),
        ["rest", method] => (None, *method),
        _ => return text(StatusCode::NOT_FOUND, "Not found"),
    };
    let method = method_name(method);
    let mut params = Params::from_query(&query);
    let body = Params::from_json(&raw);
    params.0.extend(body.0);
    let commands: Vec<String> = match params.0.get("cmd") {
        Some(Param::Object(cmds)) if method == "batch" => cmds
            .iter()
            .map(|(_, v)| method_name(scalar(v).split('?').next().unwrap_or("")))
            .collect(),
        _ => vec![],
    };
    let write = WRITE_METHODS.contains(&method.as_str())
        || commands.iter().any(|c| WRITE_METHODS.contains(&c.as_str()));
    let mut entry = LoggedRequest {
        method: method.clone(),
        auth: if webhook.is_some() {
            "webhook".into()
        } else if params.0.contains_key("auth") {
            "oauth".into()
        } else {
            "none".into()
        },
        commands,
        write,
        status: 0,
        error: None,
        command_errors: vec![],
        at: now(),
        fault: None,
    };

    if !emu.admit() {
        entry.status = 503;
        entry.error = Some("QUERY_LIMIT_EXCEEDED".into());
        emu.log(entry);
        return error_response(503, "QUERY_LIMIT_EXCEEDED", "Too many requests");
    }
    match emu.inner.faults.take(write) {
        Some(FaultKind::Status(code)) => {
            entry.status = code;
            entry.fault = Some(format!("status {code}"));
            emu.log(entry);
            if matches!(code, 502..=504) {
                return text(
                    StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY),
                    "upstream unavailable",
                );
            }
            return error_response(code, "INTERNAL_SERVER_ERROR", "Internal server error");
        }
        Some(FaultKind::Reset) => {
            entry.fault = Some("reset".into());
            emu.log(entry);
            if let Some(c) = conn {
                c.kill.store(true, Ordering::SeqCst);
            }
            return text(StatusCode::BAD_GATEWAY, "connection reset");
        }
        Some(FaultKind::Slow(d)) => tokio::time::sleep(d).await,
        None => {}
    }

    let caller = match authenticate(&emu, webhook.as_ref(), &params) {
        Ok(c) => c,
        Err((status, code, desc)) => {
            entry.status = status;
            entry.error = Some(code.into());
            emu.log(entry);
            return error_response(status, code, &desc);
        }
    };
    let user = match caller {
        Caller::Webhook(u) | Caller::OAuth(u) => u,
    };
    let started = now();
    let outcome = if method == "batch" {
        run_batch(&emu, user, &params)
    } else {
        match emu.charge(&method) {
            Err(()) => Err(fail(
                429,
                "OPERATION_TIME_LIMIT",
                "Method is blocked due to operation time limit.",
            )),
            Ok((operating, reset)) => {
                let mut state = lock(&emu.inner.state);
                exec(&mut state, user, &method, &params).map(|v| (v, Some((operating, reset))))
            }
        }
    };
    match outcome {
        Ok((result, op)) => {
            entry.status = 200;
            if let Some(errs) = result.get("result_error").and_then(Value::as_object) {
                entry.command_errors = errs
                    .values()
                    .filter_map(|e| Some(e.get("error")?.as_str()?.to_string()))
                    .collect();
            }
            emu.log(entry);
            let body = json!({ "result": result, "time": time_json(started, op) });
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Err((status, code, desc)) => {
            entry.status = status;
            entry.error = Some(code.into());
            emu.log(entry);
            error_response(status, code, &desc)
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (status, body).into_response()
}

fn error_response(status: u16, code: &str, desc: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (
        status,
        axum::Json(json!({ "error": code, "error_description": desc })),
    )
        .into_response()
}

fn time_json(started: f64, op: Option<(f64, f64)>) -> Value {
    let finish = now();
    let date = |t: f64| {
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs_f64(t.max(0.0)))
            .to_string()
    };
    let mut t = json!({
        "start": started, "finish": finish, "duration": finish - started,
        "processing": finish - started, "date_start": date(started), "date_finish": date(finish),
    });
    if let Some((operating, reset)) = op {
        t["operating"] = json!(operating);
        t["operating_reset_at"] = json!(reset as i64);
    }
    t
}

fn authenticate(
    emu: &Bitrix24Emulator,
    webhook: Option<&(String, String)>,
    params: &Params,
) -> Result<Caller, Failure> {
    let state = lock(&emu.inner.state);
    let echo = state.echo_credentials;
    if let Some((user, code)) = webhook {
        let user: u64 = user.parse().unwrap_or(0);
        return match state.webhooks.get(code) {
            Some(u) if *u == user && state.users.contains(u) => Ok(Caller::Webhook(user)),
            Some(u) if *u == user => {
                Err(fail(401, "authorization_error", "Unable to authorize user"))
            }
            _ if echo => Err(fail(
                401,
                "INVALID_CREDENTIALS",
                format!("Invalid request credentials for /rest/{user}/{code}/"),
            )),
            _ => Err(fail(
                401,
                "INVALID_CREDENTIALS",
                "Invalid request credentials",
            )),
        };
    }
    let token = params.one("auth").unwrap_or("");
    if token.is_empty() {
        return Err(fail(401, "NO_AUTH_FOUND", "Wrong authorization data"));
    }
    let Some(app) = &state.oauth else {
        return Err(fail(
            401,
            "invalid_token",
            "Unable to get application by token",
        ));
    };
    if app.access_token != token {
        let desc = if echo {
            format!("Unable to get application by token {token}")
        } else {
            "Unable to get application by token".to_string()
        };
        return Err(fail(401, "invalid_token", desc));
    }
    if lock(&emu.inner.rt).access_expires_at <= now() {
        return Err(fail(
            401,
            "expired_token",
            "The access token provided has expired.",
        ));
    }
    Ok(Caller::OAuth(app.user))
}

/// `GET /oauth/token/?grant_type=refresh_token&client_id&client_secret&refresh_token`.
fn refresh(emu: &Bitrix24Emulator, method: &Method, query: &str) -> Response {
    let p = Params::from_query(query);
    let mut entry = LoggedRequest {
        method: "oauth/token".into(),
        auth: "none".into(),
        commands: vec![],
        write: false,
        status: 200,
        error: None,
        command_errors: vec![],
        at: now(),
        fault: None,
    };
    let answer = {
        let mut state = lock(&emu.inner.state);
        let state_echo = state.echo_credentials;
        match &mut state.oauth {
            _ if method != Method::GET && method != Method::POST => {
                Err(fail(405, "invalid_request", "Method not allowed"))
            }
            _ if p.one("GRANT_TYPE") != Some("refresh_token") => Err(fail(
                400,
                "unsupported_grant_type",
                "Unsupported grant type",
            )),
            None => Err(fail(401, "invalid_client", "Invalid client")),
            Some(app)
                if p.one("CLIENT_ID") != Some(app.client_id.as_str())
                    || p.one("CLIENT_SECRET") != Some(app.client_secret.as_str()) =>
            {
                Err(fail(401, "invalid_client", "Invalid client"))
            }
            Some(app) if p.one("REFRESH_TOKEN") != Some(app.refresh_token.as_str()) => Err(fail(
                400,
                "invalid_grant",
                match (state_echo, p.one("REFRESH_TOKEN")) {
                    (true, Some(t)) => format!("Invalid refresh token {t}"),
                    _ => "Invalid refresh token".to_string(),
                },
            )),
            Some(app) => {
                let mut rt = lock(&emu.inner.rt);
                rt.issued += 1;
                let n = rt.issued;
                app.access_token =
                    format!("sandbox-access-{n}-{:08x}", rand::rng().random::<u32>());
                app.refresh_token =
                    format!("sandbox-refresh-{n}-{:08x}", rand::rng().random::<u32>());
                app.expired = false;
                rt.access_expires_at = now() + app.token_ttl.as_secs_f64();
                Ok(json!({
                    "access_token": app.access_token,
                    "refresh_token": app.refresh_token,
                    "expires_in": app.token_ttl.as_secs(),
                    "expires": (now() + app.token_ttl.as_secs_f64()) as i64,
                    "scope": "im",
                    "user_id": app.user,
                    "member_id": "sandbox",
                    "status": "L",
                    "client_endpoint": "/rest/",
                    "server_endpoint": "/oauth/",
                }))
            }
        }
    };
    match answer {
        Ok(v) => {
            emu.log(entry);
            (StatusCode::OK, axum::Json(v)).into_response()
        }
        Err((status, code, desc)) => {
            entry.status = status;
            entry.error = Some(code.into());
            emu.log(entry);
            error_response(status, code, &desc)
        }
    }
}

type BatchOutcome = Result<(Value, Option<(f64, f64)>), Failure>;

fn run_batch(emu: &Bitrix24Emulator, user: u64, params: &Params) -> BatchOutcome {
    let halt = params
        .one("halt")
        .is_some_and(|h| !h.is_empty() && h != "0");
    let cmds = match params.0.get("cmd") {
        Some(Param::Object(c)) => c.clone(),
        _ => vec![],
    };
    let mut result: Vec<(String, Value)> = Vec::new();
    let mut errors: Vec<(String, Value)> = Vec::new();
    let mut times: Vec<(String, Value)> = Vec::new();
    for (i, (key, cmd)) in cmds.iter().enumerate() {
        if i >= BATCH_MAX_LENGTH {
            errors.push((
                key.clone(),
                json!({"error": "ERROR_BATCH_LENGTH_EXCEEDED", "error_description": "Max batch length exceeded"}),
            ));
            continue;
        }
        let cmd = scalar(cmd);
        let (m, q) = cmd.split_once('?').unwrap_or((cmd.as_str(), ""));
        let m = method_name(m);
        let started = now();
        let out: Result<(Value, (f64, f64)), Failure> = if m == "batch" {
            Err(fail(
                400,
                "ERROR_BATCH_METHOD_NOT_ALLOWED",
                "Batch call is not allowed",
            ))
        } else {
            match emu.charge(&m) {
                Err(()) => Err(fail(
                    429,
                    "OPERATION_TIME_LIMIT",
                    "Method is blocked due to operation time limit.",
                )),
                Ok(op) => {
                    let mut state = lock(&emu.inner.state);
                    exec(&mut state, user, &m, &Params::from_query(q)).map(|v| (v, op))
                }
            }
        };
        match out {
            Ok((v, op)) => {
                result.push((key.clone(), v));
                times.push((key.clone(), time_json(started, Some(op))));
            }
            Err((_, code, desc)) => {
                errors.push((
                    key.clone(),
                    json!({"error": code, "error_description": desc}),
                ));
                if halt {
                    break;
                }
            }
        }
    }
    Ok((
        json!({
            "result": php_array(result),
            "result_error": php_array(errors),
            "result_total": [],
            "result_next": [],
            "result_time": php_array(times),
        }),
        None,
    ))
}

/// A PHP array as PHP's json_encode writes it: `[]` when empty, a list when the keys are
/// exactly `0..n-1` in order, an object otherwise.
fn php_array(items: Vec<(String, Value)>) -> Value {
    let sequential = items
        .iter()
        .enumerate()
        .all(|(i, (k, _))| *k == i.to_string());
    if sequential {
        Value::Array(items.into_iter().map(|(_, v)| v).collect())
    } else {
        Value::Object(items.into_iter().collect::<Map<String, Value>>())
    }
}

fn role_of(c: &Chat, user: u64) -> Option<Perm> {
    if c.owner == user {
        Some(Perm::Owner)
    } else if c.managers.contains(&user) {
        Some(Perm::Manager)
    } else if c.members.contains(&user) {
        Some(Perm::Member)
    } else {
        None
    }
}

fn dialog_json(id: u64, c: &Chat, caller: u64) -> Value {
    let mut managers: Vec<u64> = c.managers.iter().copied().collect();
    if !managers.contains(&c.owner) {
        managers.insert(0, c.owner);
    }
    json!({
        "id": id, "name": c.name.clone().unwrap_or_else(|| format!("Chat {id}")),
        "owner": c.owner, "type": if c.general { "general" } else { "chat" },
        "message_type": "C", "user_counter": c.members.len(), "manager_list": managers,
        "role": role_of(c, caller).map_or("guest", Perm::as_str), "mute_list": [],
        "entity_type": if c.general { "GENERAL" } else { "" }, "entity_id": "",
        "restrictions": {"extend": !c.general, "leave": !c.general, "leave_owner": !c.general,
                          "user_list": true, "mute": true},
        "permissions": {"manage_users_add": c.manage_users_add.as_str(),
                         "manage_users_delete": c.manage_users_delete.as_str(),
                         "manage_ui": "member", "manage_settings": "owner",
                         "manage_messages": "member", "can_post": "member"},
        "dialog_id": format!("chat{id}"),
    })
}

/// Run one method as `caller`.
fn exec(state: &mut State, caller: u64, method: &str, p: &Params) -> Result<Value, Failure> {
    let legacy = state.legacy_errors;
    match method {
        "profile" => Ok(json!({
            "ID": caller.to_string(), "ADMIN": true, "NAME": format!("User {caller}"),
            "LAST_NAME": "", "PERSONAL_GENDER": "", "TIME_ZONE": "", "TIME_ZONE_OFFSET": 0,
        })),
        "im.dialog.get" => {
            let Some(d) = p.one("DIALOG_ID").filter(|d| !d.trim().is_empty()) else {
                return Err(fail(400, "DIALOG_ID_EMPTY", "Dialog ID can't be empty"));
            };
            let no_access = || {
                fail(
                    403,
                    "ACCESS_ERROR",
                    "You do not have access to the specified dialog",
                )
            };
            let id = d
                .trim()
                .strip_prefix("chat")
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(no_access)?;
            let c = state.chats.get(&id).ok_or_else(no_access)?;
            if !c.members.contains(&caller) {
                return Err(no_access());
            }
            Ok(dialog_json(id, c, caller))
        }
        "im.chat.user.list" => {
            let id = chat_param(p)?;
            match state.chats.get(&id) {
                Some(c) if c.general => Err(fail(403, "ACCESS_ERROR", "Action unavailable")),
                // Silent empties: not a member, or no such chat.
                Some(c) if c.members.contains(&caller) => {
                    Ok(json!(c.members.iter().collect::<Vec<_>>()))
                }
                _ => Ok(json!([])),
            }
        }
        "im.chat.user.add" => {
            let id = chat_param(p)?;
            let users = state.users.clone();
            let inactive = state.inactive.clone();
            let Some(c) = state.chats.get_mut(&id) else {
                return Err(deny_add(legacy));
            };
            if c.general {
                return Err(fail(403, "ACCESS_ERROR", "Action unavailable"));
            }
            match role_of(c, caller) {
                Some(r) if r >= c.manage_users_add => {}
                _ => return Err(deny_add(legacy)),
            }
            for u in p.many("USERS") {
                // Silent skips: unknown, inactive, already a member.
                if let Ok(u) = u.trim().parse::<u64>()
                    && users.contains(&u)
                    && !inactive.contains(&u)
                {
                    c.members.insert(u);
                }
            }
            Ok(json!(true))
        }
        "im.chat.user.delete" => {
            let id = chat_param(p)?;
            let Some(target) = p.id("USER_ID") else {
                return Err(fail(400, "USER_ID_EMPTY", "User ID can't be empty"));
            };
            let Some(c) = state.chats.get_mut(&id) else {
                return Err(deny_kick(legacy));
            };
            if c.general {
                return Err(fail(403, "ACCESS_ERROR", "Action unavailable"));
            }
            let Some(role) = role_of(c, caller) else {
                return Err(deny_kick(legacy));
            };
            if !c.members.contains(&target) {
                return Err(if legacy {
                    fail(
                        400,
                        "WRONG_REQUEST",
                        "You don't have access or user isn't member in chat",
                    )
                } else {
                    fail(
                        400,
                        "USER_NOT_FOUND",
                        "The specified user is not in the chat",
                    )
                });
            }
            if target == c.owner && target == caller {
                return Err(fail(403, "ACCESS_ERROR", "The owner cannot leave the chat"));
            }
            if target == c.owner || (target != caller && role < c.manage_users_delete) {
                return Err(deny_kick(legacy));
            }
            c.members.remove(&target);
            c.managers.remove(&target);
            Ok(json!(true))
        }
        "im.chat.setowner" => {
            let id = chat_param(p)?;
            let Some(target) = p.id("USER_ID") else {
                return Err(fail(400, "USER_ID_EMPTY", "User ID can't be empty"));
            };
            let wrong = || {
                fail(
                    400,
                    "WRONG_REQUEST",
                    "Change owner can only owner and user must be member in chat",
                )
            };
            let c = state.chats.get_mut(&id).ok_or_else(wrong)?;
            if c.general {
                return Err(fail(403, "ACCESS_ERROR", "Action unavailable"));
            }
            if c.owner != caller || !c.members.contains(&target) {
                return Err(wrong());
            }
            if target != c.owner {
                // The previous owner loses the manager flag (bitrix24.md §3).
                c.managers.remove(&c.owner);
                c.owner = target;
                c.managers.insert(target);
            }
            Ok(json!(true))
        }
        "im.chat.setmanager" => {
            if !state.set_manager {
                return Err(fail(404, "ERROR_METHOD_NOT_FOUND", "Method not found!"));
            }
            let id = chat_param(p)?;
            let Some(target) = p.id("USER_ID") else {
                return Err(fail(400, "USER_ID_EMPTY", "User ID can't be empty"));
            };
            let wrong = || {
                fail(
                    400,
                    "WRONG_REQUEST",
                    "Change manager can only owner and user must be member in chat",
                )
            };
            let c = state.chats.get_mut(&id).ok_or_else(wrong)?;
            if c.owner != caller {
                return Err(wrong());
            }
            // Non-members and the owner are ignored with `true`.
            if c.members.contains(&target) && target != c.owner {
                if p.one("IS_MANAGER") == Some("N") {
                    c.managers.remove(&target);
                } else {
                    c.managers.insert(target);
                }
            }
            Ok(json!(true))
        }
        _ => Err(fail(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")),
    }
}

fn chat_param(p: &Params) -> Result<u64, Failure> {
    p.id("CHAT_ID")
        .or_else(|| {
            p.one("DIALOG_ID")
                .and_then(|d| d.trim().strip_prefix("chat")?.parse().ok())
        })
        .ok_or_else(|| fail(400, "CHAT_ID_EMPTY", "Chat ID can't be empty"))
}

fn deny_add(legacy: bool) -> Failure {
    if legacy {
        fail(
            400,
            "WRONG_REQUEST",
            "You don't have access or user already member in chat",
        )
    } else {
        fail(
            403,
            "ACCESS_DENIED_EXTEND",
            "Insufficient permission to add chat members.",
        )
    }
}

fn deny_kick(legacy: bool) -> Failure {
    if legacy {
        fail(
            400,
            "WRONG_REQUEST",
            "You don't have access or user isn't member in chat",
        )
    } else {
        fail(
            403,
            "ACCESS_DENIED_KICK",
            "You do not have permission to remove this user from the chat",
        )
    }
}

impl super::Emulator for Bitrix24Emulator {
    type State = State;
    const KIND: crate::model::Kind = crate::model::Kind::Bitrix24;
    const PREFIX: &'static str = "";
    const FIXED_PORT: u16 = 8082;
    fn credentials(state: &State, base_url: &str) -> Vec<String> {
        (credentials(state).iter())
            .map(|c| c.replace("<base_url>", base_url))
            .collect()
    }
}

/// The client of a Bitrix24 instance pointed at the emulator: the seed's first webhook stands
/// in for the instance's secret `webhook_url`.
pub fn client(
    instance: &mut crate::provider::Instance,
    state: &super::SandboxState,
) -> anyhow::Result<Arc<dyn crate::provider::Provider>> {
    use anyhow::Context as _;
    let (code, user) = (state.bitrix24.webhooks.iter().next())
        .context("the sandbox state has no Bitrix24 webhook")?;
    let base_url = (instance.common.base_url.as_deref())
        .context("the instance is not pointed at the sandbox")?;
    let url = crate::config::secret::Secret::new(format!("{base_url}/rest/{user}/{code}/"));
    Ok(Arc::new(crate::provider::bitrix24::Bitrix24::with_webhook(
        instance, url,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitrix24_php_arrays_serialise_like_json_encode() {
        assert_eq!(php_array(vec![]), json!([]));
        assert_eq!(
            php_array(vec![("0".into(), json!(1)), ("1".into(), json!(2))]),
            json!([1, 2])
        );
        assert_eq!(
            php_array(vec![("a".into(), json!(true))]),
            json!({"a": true})
        );
    }

    #[test]
    fn bitrix24_form_queries_take_php_list_syntax() {
        let p = Params::from_query("chat_id=42&USERS[]=7&USERS%5B%5D=9&HIDE_HISTORY=N");
        assert_eq!(p.id("CHAT_ID"), Some(42));
        assert_eq!(p.many("USERS"), vec!["7", "9"]);
        assert_eq!(p.id("DIALOG_ID"), None);
    }

    #[test]
    fn bitrix24_batch_commands_keep_their_order() {
        let raw = br#"{"halt":0,"cmd":{"z":"profile","a":"profile","m":"profile"}}"#;
        let OrderedObject(fields) = serde_json::from_slice(raw).unwrap();
        let cmd = &fields.iter().find(|(k, _)| k == "cmd").unwrap().1;
        let keys: Vec<String> = ordered_fields(cmd).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["z", "a", "m"]);
    }
}
