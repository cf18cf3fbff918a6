//! Bitrix24 chats (im.chat.* through `batch`). See `shared/providers/bitrix24.md`.
//!
//! Every write goes out as one `batch` request of at most 50 commands, so one planned batch is
//! one HTTP request: removals and manager changes are one command per member, adds carry up to
//! 50 ids per command. Because `im.chat.user.add` and `im.chat.setManager` answer `true` whatever
//! they did, the last command of those batches re-reads the chat, and the per-member outcome is
//! what that read shows. Reads are one `batch` too: `im.dialog.get` first (an inaccessible chat
//! is an error, never an empty roster), then `im.chat.user.list`.
//!
//! Credentials: a webhook URL (its path holds the token, so the URL is a secret and never
//! logged) or OAuth tokens kept in a file; on `expired_token` the client refreshes once and
//! rewrites that file atomically. Pacing, throttle cooldowns and retries live in
//! [`crate::provider::http`]; this module only classifies and says how long to wait.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU8;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use reqwest::Method;
use reqwest::header::{ACCEPT, HeaderMap, HeaderValue};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::config::secret::{Secret, SecretRef};
use crate::ctx::Ctx;
use crate::model::{Batch, GroupId, LiveGroup, MemberId, MemberOutcome, Op, OpKind, Role};
use crate::provider::http::{Call, HttpClient, HttpOptions, Renew, Response, Verdict};
use crate::provider::spec::{self, KindSpec, SettingError, SettingsInput};
use crate::provider::{
    BatchLimits, Capabilities, ErrorClass, Instance, Kind, KindSettings, MuteSupport, Provider,
    ProviderError, RequestCounts, rest,
};

mod oauth;
mod pack;

use oauth::{OAuthAuth, is_token_error, read_tokens};
mod read;
mod ride;

/// Bitrix24 chats as a kind: everything rosterd knows about it.
pub static SPEC: KindSpec = KindSpec {
    kind: Kind::Bitrix24,
    caps: CAPS,
    parse_member,
    parse_group,
    settings,
    schema: spec::settings_schema::<Settings>,
    connect: |i| Ok(std::sync::Arc::new(Bitrix24::new(i)?)),
    sandbox_client: crate::sandbox::bitrix24::client,
};

const CAPS: Capabilities = Capabilities {
    roles: &[Role::Admin, Role::Participant],
    bans: false,
    mutes: MuteSupport::No,
    add_with_role: false,
    transfer_owner: true,
    // One planned batch is one `batch` request of at most 50 commands: adds carry 50 ids per
    // command (the 50th command re-lists to verify), removals and manager changes one member
    // per command (manager changes keep one command to verify), ownership one.
    max_batch: BatchLimits::ONE
        .with(OpKind::Add, MAX_ADDS_PER_REQUEST)
        .with(OpKind::Remove, MAX_COMMANDS)
        .with(OpKind::Promote, MAX_MANAGER_CHANGES)
        .with(OpKind::Demote, MAX_MANAGER_CHANGES),
    uniform_batch: crate::model::kind::never,
    idempotent: crate::model::kind::always,
};

/// Bitrix24 user ids: positive integers.
pub fn parse_member(raw: &str) -> Result<MemberId, String> {
    let s = raw.trim();
    match s.parse::<u64>() {
        Ok(n) if n > 0 => Ok(MemberId(n.to_string())),
        _ => Err(format!(
            "a Bitrix24 user id (a positive integer), found {raw:?}"
        )),
    }
}

/// Bitrix24 chats: `42` or `chat42`, kept as the number.
pub fn parse_group(raw: &str) -> Result<GroupId, String> {
    let s = raw.trim();
    let n = s.strip_prefix("chat").unwrap_or(s);
    match n.parse::<u64>() {
        Ok(n) if n > 0 => Ok(GroupId(n.to_string())),
        _ => Err(format!("a Bitrix24 chat id (42 or chat42), found {raw:?}")),
    }
}

/// The kind's keys, checked: exactly one credential, an http(s) `oauth.endpoint`, and a
/// relative `token_file` rooted at the folder of rosterd.yaml like every other path there
/// (SPEC §2). The webhook URL is a secret reference, so its shape is checked when resolved.
fn settings(input: &SettingsInput<'_>) -> Result<KindSettings, Vec<SettingError>> {
    let mut s: Settings = spec::deserialize(&input.own).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    if s.webhook_url.is_some() == s.oauth.is_some() {
        errors.push(SettingError::entry(
            "give exactly one of webhook_url and oauth",
        ));
    }
    if let Some(o) = &mut s.oauth {
        if let Err(bad) = rest::parse_http_url(&o.endpoint) {
            errors.push(SettingError::at(
                "oauth.endpoint",
                rest::url_message(&bad, "https://portal.bitrix24.com/rest/"),
            ));
        }
        if o.token_file.is_relative() {
            o.token_file = input.root.join(&o.token_file);
        }
    }
    if errors.is_empty() {
        Ok(KindSettings::new(s))
    } else {
        Err(errors)
    }
}

/// Bitrix24's own keys in a `providers:` entry: a webhook URL or OAuth tokens.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `https://portal/rest/<user>/<token>/` — a secret: the token is in the path.
    #[serde(default)]
    pub webhook_url: Option<SecretRef>,
    /// Instead of a webhook: `{ endpoint, client_id, client_secret, token_file }`.
    #[serde(default)]
    pub oauth: Option<OAuth>,
    /// The portal's leaky-bucket size: requests allowed at once before `rate` applies
    /// (50 on standard plans, 250 on Enterprise). Default 50.
    #[serde(default)]
    pub burst: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuth {
    /// `https://portal/rest/`
    pub endpoint: String,
    pub client_id: String,
    pub client_secret: SecretRef,
    /// A file holding `{access_token, refresh_token}`; rosterd rewrites it after a refresh.
    pub token_file: PathBuf,
}

/// Commands one `batch` request may carry (`BATCH_MAX_LENGTH`, bitrix24.md §3).
pub const MAX_COMMANDS: usize = 50;
/// Ids per `im.chat.user.add` command. The API documents no cap; the reference advises modest
/// chunks, and PHP parses each command's query with its input-variable limits.
pub const ADD_IDS_PER_COMMAND: usize = 50;
/// Members one add request carries: 49 add commands, the 50th re-lists the chat to verify.
pub const MAX_ADDS_PER_REQUEST: usize = (MAX_COMMANDS - 1) * ADD_IDS_PER_COMMAND;
/// Manager changes per request: 49 `setManager` commands and one `im.dialog.get` to verify.
pub const MAX_MANAGER_CHANGES: usize = MAX_COMMANDS - 1;
/// Standard plans drain the leaky bucket at 2 requests/s (bitrix24.md §5).
pub const DEFAULT_RATE: f64 = 2.0;
/// Standard plans' bucket size.
pub const DEFAULT_BURST: u32 = 50;
/// Cloud portals cut a request off after 60 s; a full add batch may need much of it.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Where OAuth tokens are refreshed, unless `base_url` replaces it.
pub const OAUTH_SERVER: &str = "https://oauth.bitrix.info";
/// How long to pause a method over its operating budget when no reset time was ever seen:
/// budgets drop their oldest one-minute basket at least this often.
const OPERATING_FALLBACK: Duration = Duration::from_secs(60);

/// A Bitrix24 client for one provider instance.
pub struct Bitrix24 {
    instance: String,
    auth: Auth,
    http: HttpClient,
    /// The acting user, asked once with `profile`.
    me: tokio::sync::OnceCell<MemberId>,
    /// Whether `im.chat.setManager` exists on this portal: 0 unknown, 1 yes, 2 no.
    managers: AtomicU8,
    /// Chat reads waiting to ride in the next read request.
    reads: Mutex<Vec<read::Waiting>>,
    /// Chats' writes waiting to ride in the next write request.
    riders: Mutex<Vec<ride::Rider>>,
    /// Per chat: its state as the re-reads inside its last write request showed it, taken by
    /// the verifying [`Provider::refetch`] instead of reading the chat again.
    verified: Mutex<HashMap<u64, LiveGroup>>,
    /// Per method: the unix time its operating budget next frees up, from the last answers.
    operating_reset: Mutex<HashMap<String, f64>>,
}

enum Auth {
    /// The whole webhook URL, ending in `/`.
    Webhook(Secret),
    OAuth(Arc<OAuthAuth>),
}

impl std::fmt::Debug for Bitrix24 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match &self.auth {
            Auth::Webhook(_) => "webhook ***",
            Auth::OAuth(_) => "oauth ***",
        };
        rest::debug_client(
            f,
            "Bitrix24",
            &[("instance", &self.instance), ("auth", &auth)],
        )
    }
}

impl Bitrix24 {
    /// Build the client of a `bitrix24` instance, resolving its secrets now.
    pub fn new(instance: &Instance) -> Result<Self, ProviderError> {
        let s: &Settings = instance.settings()?;
        let name = &instance.name;
        match (&s.webhook_url, &s.oauth) {
            (Some(w), None) => {
                let url = rest::resolve(name, "webhook_url", w)?;
                Self::with_webhook(instance, url)
            }
            (None, Some(o)) => {
                let secret = rest::resolve(name, "oauth.client_secret", &o.client_secret)?;
                Self::with_oauth(instance, secret)
            }
            _ => Err(ProviderError::fatal(format!(
                "provider {name}: give exactly one of webhook_url and oauth"
            ))),
        }
    }

    /// Build a webhook client from an already resolved URL (the demo and tests hand one in).
    pub fn with_webhook(instance: &Instance, url: Secret) -> Result<Self, ProviderError> {
        let name = &instance.name;
        let webhook = webhook_base(name, url.expose(), instance.common.base_url.as_deref())?;
        Self::build(instance, Auth::Webhook(Secret::new(webhook)))
    }

    /// Build an OAuth client with an already resolved client secret; the tokens are read from
    /// the instance's `token_file`.
    pub fn with_oauth(instance: &Instance, client_secret: Secret) -> Result<Self, ProviderError> {
        let name = &instance.name;
        let s: &Settings = instance.settings()?;
        let o = s
            .oauth
            .as_ref()
            .ok_or_else(|| ProviderError::fatal(format!("provider {name}: no oauth settings")))?;
        let over = instance.common.base_url.as_deref();
        let rest = match over {
            Some(b) => format!("{}/rest/", b.trim_end_matches('/')),
            None => {
                rest::parse_http_url(&o.endpoint).map_err(|bad| {
                    ProviderError::fatal(format!(
                        "provider {name}: oauth.endpoint {}",
                        rest::url_message(&bad, "https://portal.bitrix24.com/rest/")
                    ))
                })?;
                format!("{}/", o.endpoint.trim().trim_end_matches('/'))
            }
        };
        let token_url = format!(
            "{}/oauth/token/",
            over.unwrap_or(OAUTH_SERVER).trim_end_matches('/')
        );
        let tokens = read_tokens(name, &o.token_file)?;
        Self::build(
            instance,
            Auth::OAuth(Arc::new(OAuthAuth {
                instance: name.clone(),
                rest,
                token_url,
                client_id: o.client_id.clone(),
                client_secret,
                token_file: o.token_file.clone(),
                tokens: Mutex::new(tokens),
                refreshing: tokio::sync::Mutex::new(()),
            })),
        )
    }

    fn build(instance: &Instance, auth: Auth) -> Result<Self, ProviderError> {
        let burst = instance.settings::<Settings>()?.burst;
        let mut http = HttpClient::new(http_options(instance, burst))?;
        if let Auth::OAuth(o) = &auth {
            http = http.with_renewal(o.clone());
        }
        Ok(Bitrix24 {
            instance: instance.name.clone(),
            auth,
            http,
            me: tokio::sync::OnceCell::new(),
            managers: AtomicU8::new(0),
            operating_reset: Mutex::new(HashMap::new()),
            verified: Mutex::new(HashMap::new()),
            reads: Mutex::new(Vec::new()),
            riders: Mutex::new(Vec::new()),
        })
    }

    /// Replace the backoff bounds (1 s to 30 s by default) — tests that inject faults use short
    /// ones so they stay quick.
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Result<Self, ProviderError> {
        let opts = HttpOptions {
            min_backoff: min,
            max_backoff: max,
            ..self.http.options().clone()
        };
        self.http = HttpClient::new(opts)?;
        if let Auth::OAuth(o) = &self.auth {
            self.http = self.http.with_renewal(o.clone());
        }
        Ok(self)
    }

    /// One REST call: `method` with `params`, classified; an expired OAuth token is refreshed
    /// once by the HTTP layer and the call repeated with the new one.
    async fn rest<T>(
        &self,
        ctx: &Ctx,
        method: &'static str,
        params: Value,
        write: bool,
        label: &'static str,
        parse: impl Fn(&Value) -> Result<T, ProviderError> + Send + Sync,
    ) -> Result<T, ProviderError> {
        self.http
            .call(
                ctx,
                || self.request(method, &params, write, label),
                |r| match self.envelope(r, method, label).and_then(|v| parse(&v)) {
                    Err(e) if is_token_error(&e) && matches!(self.auth, Auth::OAuth(_)) => {
                        Verdict::Reauth(e)
                    }
                    other => other.into(),
                },
            )
            .await
    }

    /// The request of one REST call, with the credentials in force.
    fn request(&self, method: &str, params: &Value, write: bool, label: &'static str) -> Call {
        let (url, body, credentials) = match &self.auth {
            Auth::Webhook(base) => (format!("{}{method}", base.expose()), params.clone(), 0),
            Auth::OAuth(o) => {
                let t = o.tokens.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let mut body = params.clone();
                if let Value::Object(m) = &mut body {
                    m.insert("auth".into(), Value::String(t.access.expose().to_string()));
                }
                (format!("{}{method}", o.rest), body, t.generation)
            }
        };
        Call {
            method: Method::POST,
            url,
            headers: headers(),
            body: Some(body),
            write,
            // Every command rosterd sends is idempotent at Bitrix24: repeat adds are
            // no-ops, a repeated delete answers USER_NOT_FOUND, setManager/setOwner repeat.
            idempotent: true,
            label,
            credentials,
        }
    }

    /// A 2xx body's `result` (and its `time`, which feeds the operating-budget tracker), or
    /// the classified error.
    fn envelope(&self, r: &Response, method: &str, label: &str) -> Result<Value, ProviderError> {
        let body: Option<Value> = serde_json::from_slice(&r.body).ok();
        let err = body
            .as_ref()
            .and_then(|b| b.get("error"))
            .and_then(Value::as_str);
        if !(200..300).contains(&r.status) || err.is_some() {
            let desc = body
                .as_ref()
                .and_then(|b| b.get("error_description"))
                .and_then(Value::as_str);
            return Err(self.classify(r.status, err, desc, method, label, r.received));
        }
        let Some(mut body) = body else {
            return Err(ProviderError::transient(format!(
                "{label}: unexpected response body (HTTP {})",
                r.status
            )));
        };
        if let Some(t) = body.get("time") {
            self.note_time(method, t);
        }
        match body.get_mut("result") {
            Some(v) => Ok(v.take()),
            None => Err(ProviderError::transient(format!(
                "{label}: the answer has no result (HTTP {})",
                r.status
            ))),
        }
    }

    /// Classify an error answer by its code (case-insensitive: Bitrix24 mixes cases).
    fn classify(
        &self,
        status: u16,
        code: Option<&str>,
        desc: Option<&str>,
        method: &str,
        label: &str,
        received: SystemTime,
    ) -> ProviderError {
        let message = match (code, desc) {
            (Some(c), Some(d)) if !d.is_empty() => format!("{label}: HTTP {status} {c}: {d}"),
            (Some(c), _) => format!("{label}: HTTP {status} {c}"),
            (None, _) => format!("{label}: HTTP {status}"),
        };
        let upper = code.map(str::to_ascii_uppercase);
        let (class, retry_after) = match upper.as_deref() {
            Some("QUERY_LIMIT_EXCEEDED") => (ErrorClass::Throttled, None),
            Some("OPERATION_TIME_LIMIT") => (
                ErrorClass::Throttled,
                Some(self.operating_wait(method, received)),
            ),
            Some("INTERNAL_SERVER_ERROR" | "ERROR_UNEXPECTED_ANSWER") => {
                (ErrorClass::Transient, None)
            }
            Some(_) => (ErrorClass::Fatal, None),
            None => (rest::class_of_status(status), None),
        };
        ProviderError {
            class,
            code: code.map(String::from),
            message: format!("provider {}: {message}", self.instance),
            retry_after,
        }
    }

    /// Remember when a method's operating budget frees up (`time.operating_reset_at`).
    fn note_time(&self, method: &str, time: &Value) {
        if let Some(at) = time.get("operating_reset_at").and_then(as_f64)
            && let Ok(mut m) = self.operating_reset.lock()
        {
            m.insert(method.to_ascii_lowercase(), at);
        }
    }

    /// How long a method over its operating budget must rest: until its last seen reset time
    /// plus a second (the reset is in whole seconds), or a basket's length when none was seen.
    fn operating_wait(&self, method: &str, now: SystemTime) -> Duration {
        let at = self
            .operating_reset
            .lock()
            .ok()
            .and_then(|m| m.get(&method.to_ascii_lowercase()).copied());
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        match at {
            Some(at) if at + 1.0 > now => Duration::from_secs_f64(at + 1.0 - now),
            Some(_) => Duration::from_secs(1),
            None => OPERATING_FALLBACK,
        }
    }

    /// The acting user (`profile`), asked once per client.
    async fn me(&self, ctx: &Ctx) -> Result<MemberId, ProviderError> {
        self.me
            .get_or_try_init(|| async {
                self.rest(ctx, "profile", json!({}), false, "profile", |v| {
                    let id = v.get("ID").and_then(id_of).ok_or_else(|| {
                        ProviderError::fatal("profile: the answer has no user ID")
                    })?;
                    Ok(MemberId(id.to_string()))
                })
                .await
            })
            .await
            .cloned()
    }

    /// One `batch` request; commands run in order with `halt` off.
    async fn batch(
        &self,
        ctx: &Ctx,
        cmds: &[Cmd],
        write: bool,
        label: &'static str,
    ) -> Result<BatchResult, ProviderError> {
        if cmds.len() > MAX_COMMANDS {
            return Err(ProviderError::fatal(format!(
                "{label}: {} commands exceed the 50 one batch may carry",
                cmds.len()
            )));
        }
        // serde_json's map sorts its keys and the portal runs commands in key order, so keys are
        // named to sort as they must run: `add_*`/`mgr_*`/`owner` before `verify`, `dialog`
        // before `users`.
        let cmd: Map<String, Value> = cmds
            .iter()
            .map(|c| (c.key.clone(), Value::String(c.text.clone())))
            .collect();
        let methods: HashMap<String, &'static str> =
            cmds.iter().map(|c| (c.key.clone(), c.method)).collect();
        let params = json!({ "halt": 0, "cmd": cmd });
        self.rest(ctx, "batch", params, write, label, |v| {
            let res = BatchResult::parse(v, label)?;
            for (key, t) in &res.time {
                if let Some(m) = methods.get(key) {
                    self.note_time(m, t);
                }
            }
            for (key, (code, desc)) in &res.errors {
                let m = methods.get(key).copied().unwrap_or("batch");
                match code.to_ascii_uppercase().as_str() {
                    // An inner call over its budget was not carried out: the whole batch is
                    // repeated after the pause, which every command here tolerates.
                    "OPERATION_TIME_LIMIT" | "QUERY_LIMIT_EXCEEDED" => {
                        return Err(self.classify(
                            429,
                            Some(code),
                            Some(desc),
                            m,
                            label,
                            ctx.now(),
                        ));
                    }
                    "ERROR_BATCH_LENGTH_EXCEEDED" | "ERROR_BATCH_METHOD_NOT_ALLOWED" => {
                        return Err(ProviderError::fatal(format!(
                            "provider {}: {label}: {code}: {desc}",
                            self.instance
                        ))
                        .with_code(code.clone()));
                    }
                    _ => {}
                }
            }
            Ok(res)
        })
        .await
    }

    /// `im.chat.user.list` alone, for verifying when the batch's own re-list is missing.
    async fn list_members(&self, ctx: &Ctx, chat: u64) -> Result<BTreeSet<u64>, ProviderError> {
        self.rest(
            ctx,
            "im.chat.user.list",
            json!({ "CHAT_ID": chat }),
            false,
            "list members",
            parse_ids,
        )
        .await
    }

    /// A chat's live state from its dialog and member list. A member list without the owner
    /// is refused: it is the silent empty of a chat we lost access to (or a broken answer).
    fn live_group(
        &self,
        chat: u64,
        dialog: &Dialog,
        ids: &BTreeSet<u64>,
        me: MemberId,
    ) -> Result<LiveGroup, ProviderError> {
        if !ids.contains(&dialog.owner) {
            return Err(ProviderError::fatal(format!(
                "provider {}: chat {chat}: the member list ({} ids, dialog counts {}) does not \
                 hold the owner {}; refusing to plan from a partial read",
                self.instance,
                ids.len(),
                dialog
                    .user_counter
                    .map_or("?".to_string(), |n| n.to_string()),
                dialog.owner
            )));
        }
        let members = ids
            .iter()
            .map(|id| {
                let role = if *id == dialog.owner || dialog.managers.contains(id) {
                    Role::Admin
                } else {
                    Role::Participant
                };
                (MemberId(id.to_string()), role)
            })
            .collect();
        Ok(LiveGroup {
            members,
            owner: Some(MemberId(dialog.owner.to_string())),
            bans: None,
            me: Some(me),
            ..LiveGroup::default()
        })
    }

    fn no_managers(&self) -> ProviderError {
        ProviderError::fatal(format!(
            "provider {}: this portal has no im.chat.setManager, so chat managers (admins) cannot \
             be changed here; list the current managers as admins in the manifest",
            self.instance
        ))
        .with_code("ERROR_METHOD_NOT_FOUND")
    }
}

/// One command of a `batch`: its key (never numeric, so PHP keeps the map an object), the
/// method it calls, and `method?query`.
#[derive(Clone)]
struct Cmd {
    key: String,
    method: &'static str,
    text: String,
}

impl Cmd {
    fn new(key: String, method: &'static str, text: String) -> Self {
        Cmd { key, method, text }
    }
}

/// A `batch` answer: results and errors per command key, and per-command timings.
#[derive(Debug, Default)]
struct BatchResult {
    ok: BTreeMap<String, Value>,
    errors: BTreeMap<String, (String, String)>,
    time: BTreeMap<String, Value>,
}

impl BatchResult {
    fn parse(v: &Value, label: &str) -> Result<BatchResult, ProviderError> {
        let bad = || ProviderError::transient(format!("{label}: the batch answer has no result"));
        let obj = v.as_object().ok_or_else(bad)?;
        let ok = php_map(obj.get("result"));
        let time = php_map(obj.get("result_time"));
        let errors = php_map(obj.get("result_error"))
            .into_iter()
            .map(|(k, e)| {
                let code = e
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("UNKNOWN")
                    .to_string();
                let desc = e
                    .get("error_description")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                (k, (code, desc))
            })
            .collect();
        Ok(BatchResult { ok, errors, time })
    }
}

/// A PHP array as JSON: an object, `[]` when empty, or a list when its keys were `0..n-1`.
fn php_map(v: Option<&Value>) -> BTreeMap<String, Value> {
    match v {
        Some(Value::Object(m)) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v.clone()))
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// What rosterd reads from `im.dialog.get`.
#[derive(Debug)]
struct Dialog {
    owner: u64,
    managers: BTreeSet<u64>,
    user_counter: Option<u64>,
}

impl Dialog {
    fn parse(v: &Value) -> Result<Dialog, ProviderError> {
        let owner = v
            .get("owner")
            .and_then(id_of)
            .ok_or_else(|| ProviderError::fatal("im.dialog.get: the chat has no owner"))?;
        let managers = match v.get("manager_list") {
            None | Some(Value::Null) => BTreeSet::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    id_of(x).ok_or_else(|| {
                        ProviderError::fatal("im.dialog.get: manager_list holds a non-id")
                    })
                })
                .collect::<Result<_, _>>()?,
            // PHP serialises an array with holes as an object; its values are the ids.
            Some(Value::Object(m)) => m
                .values()
                .map(|x| {
                    id_of(x).ok_or_else(|| {
                        ProviderError::fatal("im.dialog.get: manager_list holds a non-id")
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(ProviderError::fatal(
                    "im.dialog.get: manager_list is not a list",
                ));
            }
        };
        Ok(Dialog {
            owner,
            managers,
            user_counter: v.get("user_counter").and_then(id_of),
        })
    }
}

/// A positive id given as a number or a numeric string (`profile` and `user.*` use strings).
fn id_of(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|n| *n > 0)
}

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `im.chat.user.list`'s answer: a list of ids (a PHP map of them, at worst).
fn parse_ids(v: &Value) -> Result<BTreeSet<u64>, ProviderError> {
    php_map(Some(v))
        .values()
        .map(|x| {
            id_of(x).ok_or_else(|| {
                ProviderError::fatal("im.chat.user.list: the member list holds a non-id")
            })
        })
        .collect::<Result<_, _>>()
        .and_then(|ids: BTreeSet<u64>| {
            if matches!(v, Value::Array(_) | Value::Object(_)) {
                Ok(ids)
            } else {
                Err(ProviderError::fatal(
                    "im.chat.user.list: the answer is not a list",
                ))
            }
        })
}

fn user_id(m: &MemberId) -> Result<u64, ProviderError> {
    m.as_str()
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ProviderError::fatal(format!("{m} is not a Bitrix24 user id")))
}

fn chat_id(g: &GroupId) -> Result<u64, ProviderError> {
    g.as_str()
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ProviderError::fatal(format!("{g} is not a Bitrix24 chat id")))
}

fn manager_flag(kind: OpKind, op: &Op) -> Result<&'static str, ProviderError> {
    match (kind, op.role) {
        (OpKind::Promote, Some(Role::Admin)) => Ok("Y"),
        (OpKind::Demote, Some(Role::Participant)) => Ok("N"),
        (_, role) => Err(ProviderError::fatal(format!(
            "{kind} of {} to {role:?}: Bitrix24 chats have managers and members only",
            op.member
        ))),
    }
}

fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(ACCEPT, HeaderValue::from_static("application/json"));
    h
}

/// The webhook URL, checked and ending in `/`; `base_url` replaces its scheme, host and port.
/// Errors never repeat the URL: its path is the credential.
fn webhook_base(name: &str, raw: &str, over: Option<&str>) -> Result<String, ProviderError> {
    let shape = || {
        ProviderError::fatal(format!(
            "provider {name}: webhook_url must look like https://portal.bitrix24.com/rest/<user id>/<token>/"
        ))
    };
    let url = rest::parse_http_url(raw).map_err(|_| shape())?;
    let segs: Vec<&str> = url
        .path_segments()
        .map(|s| s.filter(|x| !x.is_empty()).collect())
        .unwrap_or_default();
    let n = segs.len();
    let ok = n >= 3
        && segs[n - 3] == "rest"
        && segs[n - 2].parse::<u64>().is_ok_and(|u| u > 0)
        && !segs[n - 1].is_empty();
    if !ok || url.query().is_some() {
        return Err(shape());
    }
    let path = format!("/{}/", segs.join("/"));
    // The token is the credential, and the path carries it: both are masked at every exit.
    crate::redact::register(segs[n - 1]);
    crate::redact::register(&path);
    crate::redact::register(raw.trim());
    let origin = match over {
        Some(b) => b.trim_end_matches('/').to_string(),
        None => {
            rest::warn_plain_http(name, "webhook_url", &url);
            url.origin().ascii_serialization()
        }
    };
    Ok(format!("{origin}{path}"))
}

/// Pacing of one instance: 2 requests/s with a burst of 50 unless configured, a 60 s request
/// timeout, and backoff from 1 s to 30 s on `QUERY_LIMIT_EXCEEDED` (bitrix24.md §5).
fn http_options(instance: &Instance, burst: Option<u32>) -> HttpOptions {
    let mut o = HttpOptions::for_instance(instance, Some(DEFAULT_RATE), Duration::ZERO);
    o.burst = burst.unwrap_or(DEFAULT_BURST).max(1);
    if instance.common.timeout.is_none() {
        o.timeout = DEFAULT_TIMEOUT;
    }
    o.min_backoff = Duration::from_secs(1);
    o.max_backoff = Duration::from_secs(30);
    o
}

#[async_trait]
impl Provider for Bitrix24 {
    async fn fetch(&self, ctx: &Ctx, group: &GroupId) -> Result<LiveGroup, ProviderError> {
        let chat = chat_id(group)?;
        self.read_chat(ctx, chat).await
    }

    /// The group as verified by the re-reads inside the last request of its writes, where
    /// they were answered; else read again.
    async fn refetch(
        &self,
        ctx: &Ctx,
        group: &GroupId,
        _before: &LiveGroup,
        _touched: &BTreeSet<OpKind>,
    ) -> Result<LiveGroup, ProviderError> {
        let chat = chat_id(group)?;
        let verified = self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&chat);
        match verified {
            Some(live) => Ok(live),
            None => self.fetch(ctx, group).await,
        }
    }

    async fn apply(
        &self,
        ctx: &Ctx,
        group: &GroupId,
        batch: &Batch,
    ) -> Result<Vec<MemberOutcome>, ProviderError> {
        let chat = chat_id(group)?;
        self.pack(ctx, chat, std::slice::from_ref(batch))
            .await
            .pop()
            .unwrap_or_else(|| Ok(Vec::new()))
    }

    fn packs_batches(&self) -> bool {
        true
    }

    async fn apply_all(
        &self,
        ctx: &Ctx,
        group: &GroupId,
        batches: &[Batch],
    ) -> Vec<Result<Vec<MemberOutcome>, ProviderError>> {
        match chat_id(group) {
            Ok(chat) => self.pack(ctx, chat, batches).await,
            Err(e) => batches.iter().map(|_| Err(e.clone())).collect(),
        }
    }

    fn capabilities_for(&self, _live: &LiveGroup) -> Capabilities {
        *Kind::Bitrix24.capabilities()
    }

    fn requests(&self) -> RequestCounts {
        self.http.counts()
    }
}

#[cfg(test)]
mod tests {
    use super::oauth::write_tokens;
    use super::*;
    use crate::provider::CommonSettings;

    const TOKEN: &str = "s3cr3tw3bh00kt0k3n";

    fn instance(oauth: Option<OAuth>) -> Instance {
        Instance {
            name: "b24".into(),
            kind: Kind::Bitrix24,
            common: CommonSettings::default(),
            settings: KindSettings::new(Settings {
                webhook_url: None,
                oauth,
                burst: None,
            }),
        }
    }

    #[test]
    fn bitrix24_webhook_url_is_checked_without_echoing_it() {
        let ok =
            webhook_base("b", &format!("https://p.bitrix24.com/rest/7/{TOKEN}"), None).unwrap();
        assert_eq!(ok, format!("https://p.bitrix24.com/rest/7/{TOKEN}/"));
        let moved = webhook_base(
            "b",
            &format!("https://p.bitrix24.com/rest/7/{TOKEN}/"),
            Some("http://127.0.0.1:9/"),
        )
        .unwrap();
        assert_eq!(moved, format!("http://127.0.0.1:9/rest/7/{TOKEN}/"));
        for bad in [
            format!("https://p.bitrix24.com/{TOKEN}"),
            format!("https://p.bitrix24.com/rest/x/{TOKEN}/"),
            format!("p.bitrix24.com/rest/7/{TOKEN}"),
            format!("https://p.bitrix24.com/rest/7/{TOKEN}/?a=1"),
        ] {
            let e = webhook_base("b", &bad, None).unwrap_err();
            assert!(!format!("{e} {e:?}").contains(TOKEN), "{e}");
        }
    }

    #[test]
    fn bitrix_ids_are_positive_integers() {
        assert_eq!(parse_member("17").unwrap().0, "17");
        assert!(parse_member("0").is_err());
        assert!(parse_member("bob").is_err());
        assert_eq!(parse_group("chat42").unwrap().0, "42");
    }

    #[test]
    fn bitrix24_debug_output_hides_the_webhook() {
        let c = Bitrix24::with_webhook(
            &instance(None),
            Secret::new(format!("https://p.bitrix24.com/rest/7/{TOKEN}/")),
        )
        .unwrap();
        assert!(!format!("{c:?}").contains(TOKEN));
    }

    #[test]
    fn bitrix24_default_pace_is_two_per_second_with_a_burst_of_fifty() {
        let o = http_options(&instance(None), None);
        assert_eq!((o.rate, o.burst), (Some(2.0), 50));
        assert_eq!(o.timeout, DEFAULT_TIMEOUT);
        let mut i = instance(None);
        i.common.rate = Some(5.0);
        let o = http_options(&i, Some(250));
        assert_eq!((o.rate, o.burst), (Some(5.0), 250));
    }

    #[test]
    fn bitrix24_php_arrays_parse_as_objects_lists_or_empty() {
        let v = json!({"result": {"a": true}, "result_error": [], "result_time": [],
                       "result_total": [], "result_next": []});
        let r = BatchResult::parse(&v, "x").unwrap();
        assert!(r.ok.contains_key("a") && r.errors.is_empty());
        let v = json!({"result": [], "result_error": {"del_5": {"error": "USER_NOT_FOUND",
                       "error_description": "gone"}}});
        let r = BatchResult::parse(&v, "x").unwrap();
        assert_eq!(r.errors["del_5"].0, "USER_NOT_FOUND");
        let v = json!({"result": [true, false]});
        let r = BatchResult::parse(&v, "x").unwrap();
        assert_eq!(r.ok.len(), 2);
        assert_eq!(parse_ids(&json!([1, "7", 9])).unwrap().len(), 3);
        assert_eq!(parse_ids(&json!([])).unwrap().len(), 0);
        assert!(parse_ids(&json!(true)).is_err());
        let d = Dialog::parse(&json!({"owner": "1", "manager_list": {"0": 1, "2": "7"}})).unwrap();
        assert_eq!((d.owner, d.managers.len()), (1, 2));
    }

    #[test]
    fn bitrix24_errors_are_classified_by_code_in_any_case() {
        let c = Bitrix24::with_webhook(
            &instance(None),
            Secret::new(format!("https://p.bitrix24.com/rest/7/{TOKEN}/")),
        )
        .unwrap();
        let e = c.classify(
            503,
            Some("QUERY_LIMIT_EXCEEDED"),
            Some("Too many"),
            "batch",
            "x",
            UNIX_EPOCH,
        );
        assert_eq!(e.class, ErrorClass::Throttled);
        let e = c.classify(
            429,
            Some("OPERATION_TIME_LIMIT"),
            None,
            "batch",
            "x",
            UNIX_EPOCH,
        );
        assert_eq!(
            (e.class, e.retry_after),
            (ErrorClass::Throttled, Some(OPERATING_FALLBACK))
        );
        c.note_time("im.chat.user.list", &json!({"operating_reset_at": 1e12}));
        let e = c.classify(
            429,
            Some("OPERATION_TIME_LIMIT"),
            None,
            "IM.CHAT.USER.LIST",
            "x",
            UNIX_EPOCH,
        );
        assert!(e.retry_after.unwrap() > Duration::from_secs(3600));
        let e = c.classify(401, Some("expired_token"), None, "batch", "x", UNIX_EPOCH);
        assert!(is_token_error(&e) && e.class == ErrorClass::Fatal);
        let e = c.classify(
            500,
            Some("INTERNAL_SERVER_ERROR"),
            None,
            "batch",
            "x",
            UNIX_EPOCH,
        );
        assert_eq!(e.class, ErrorClass::Transient);
        let e = c.classify(502, None, None, "batch", "x", UNIX_EPOCH);
        assert_eq!(e.class, ErrorClass::Transient);
        let e = c.classify(403, Some("ACCESS_ERROR"), None, "batch", "x", UNIX_EPOCH);
        assert_eq!(e.class, ErrorClass::Fatal);
    }

    #[test]
    fn bitrix24_token_file_is_replaced_atomically_and_privately() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens.json");
        std::fs::write(&p, r#"{"access_token":"a1","refresh_token":"r1"}"#).unwrap();
        let t = read_tokens("b", &p).unwrap();
        assert_eq!(t.refresh.expose(), "r1");
        write_tokens(&p, &json!({"access_token": "a2", "refresh_token": "r2"})).unwrap();
        let t = read_tokens("b", &p).unwrap();
        assert_eq!((t.access.expose(), t.refresh.expose()), ("a2", "r2"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0);
        }
        let o = OAuth {
            endpoint: "https://p.bitrix24.com/rest/".into(),
            client_id: "app".into(),
            client_secret: SecretRef::Env("UNUSED".into()),
            token_file: dir.path().join("missing.json"),
        };
        let e = Bitrix24::with_oauth(&instance(Some(o)), Secret::new("s")).unwrap_err();
        assert!(e.message.contains("missing.json"), "{e}");
    }
}
