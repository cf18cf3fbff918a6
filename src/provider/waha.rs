//! WhatsApp through a WAHA server. See `shared/providers/waha.md`.
//!
//! WAHA is a thin HTTP layer over an unofficial WhatsApp client ("engine"), so three things
//! shape this module:
//! - the account: every call acts as one linked WhatsApp account (the session's `me`). The
//!   session is checked before any group is touched (and again after [`ACCOUNT_TTL`]), because
//!   a session that is not `WORKING` makes every group call wait ~15 s and then fail (waha.md §2);
//! - ids: manifests name phone numbers (`<digits>@c.us`), while WhatsApp lists many members under
//!   hidden `@lid` ids. Live members are matched to phones through the listing's `pn`, the
//!   session's own lid and the lids API; a member whose phone stays unknown is reported in
//!   [`LiveGroup::unresolved`] and never removed as unlisted (waha.md §6.4);
//! - pacing: WAHA has no rate limiter, WhatsApp does, and it punishes fast adds (waha.md §5).
//!   The defaults below are deliberately slow; `interval`, `rate` and `batch_size` override them.
//!
//! Retrying, pacing and cooldowns live in [`crate::provider::http`]; this module classifies
//! answers (a `rate-overlimit` inside a 500 is a throttle, not a fault) and parses each engine's
//! per-member results.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;
use reqwest::header::{ACCEPT, HeaderMap, HeaderValue};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::secret::{Secret, SecretRef};
use crate::ctx::Ctx;
use crate::model::{Batch, GroupId, LiveGroup, MemberId, MemberOutcome, Op, OpKind, Role};
use crate::provider::http::{Call, HttpClient, HttpOptions, Response, Verdict};
use crate::provider::spec::{self, KindSpec, SettingError, SettingsInput};
use crate::provider::{
    BatchLimits, Capabilities, ErrorClass, Instance, Kind, KindSettings, MuteSupport, Provider,
    ProviderError, RequestCounts, rest,
};

mod wire;

pub use wire::classify_error;
use wire::*;

/// WhatsApp through WAHA as a kind: everything rosterd knows about it.
pub static SPEC: KindSpec = KindSpec {
    kind: Kind::Waha,
    caps: CAPS,
    parse_member,
    parse_group,
    settings,
    schema: spec::settings_schema::<Settings>,
    connect: |i| Ok(std::sync::Arc::new(Waha::new(i)?)),
    sandbox_client: crate::sandbox::waha::client,
};

const CAPS: Capabilities = Capabilities {
    roles: &[Role::Admin, Role::Participant],
    bans: false,
    mutes: MuteSupport::No,
    add_with_role: false,
    transfer_owner: false,
    // WhatsApp documents no per-call cap; 20 keeps one WEBJS call under ~20 s (waha.md §5).
    max_batch: BatchLimits::ONE
        .with(OpKind::Add, 20)
        .with(OpKind::Remove, 20)
        .with(OpKind::Promote, 20)
        .with(OpKind::Demote, 20),
    uniform_batch: crate::model::kind::never,
    // Every repeated add notifies the group and counts towards anti-spam limits; only reads
    // are retried blindly, writes are verified by re-reading instead.
    idempotent: |k| !matches!(k, OpKind::Add),
};

/// WhatsApp members: a phone number (with `+`, spaces, dashes, dots or brackets) normalised
/// to `<digits>@c.us`, or an explicit `<digits>@c.us`. A hidden `@lid` is refused: the
/// client keys every member whose phone it can learn by that phone, so a manifest naming the
/// lid would see that member as unlisted and remove it; members whose phone stays unknown
/// are kept and reported without being named.
pub fn parse_member(raw: &str) -> Result<MemberId, String> {
    let s = raw.trim();
    let expected = || {
        format!(
            "a phone number in international form (e.g. \"+49 151 2345678\") or a WhatsApp id \
             (<digits>@c.us), found {raw:?}"
        )
    };
    if let Some((user, server)) = s.split_once('@') {
        let server = match server {
            "c.us" | "s.whatsapp.net" => "c.us",
            "lid" => {
                return Err(format!(
                    "a phone number, not a hidden WhatsApp id: {raw:?} is an @lid, which \
                     names nobody rosterd can match safely; use the member's phone number \
                     (members WAHA lists only under a lid are kept and reported)"
                ));
            }
            _ => return Err(expected()),
        };
        if user.is_empty() || !user.bytes().all(|b| b.is_ascii_digit()) || user.len() > 20 {
            return Err(expected());
        }
        return Ok(MemberId(format!("{user}@{server}")));
    }
    let mut digits = String::new();
    for (i, c) in s.chars().enumerate() {
        match c {
            '0'..='9' => digits.push(c),
            '+' if i == 0 => {}
            ' ' | '-' | '.' | '(' | ')' => {}
            _ => return Err(expected()),
        }
    }
    if !(7..=15).contains(&digits.len()) || digits.starts_with('0') {
        return Err(expected());
    }
    Ok(MemberId(format!("{digits}@c.us")))
}

pub fn parse_group(raw: &str) -> Result<GroupId, String> {
    let s = raw.trim();
    let ok = s.strip_suffix("@g.us").is_some_and(|user| {
        !user.is_empty() && user.bytes().all(|b| b.is_ascii_digit() || b == b'-')
    });
    if !ok {
        return Err(format!(
            "a WhatsApp group id (<digits>@g.us), found {raw:?}"
        ));
    }
    Ok(GroupId(s.to_string()))
}

/// The kind's keys, checked: a `session` name that can be a path segment, and `base_url`
/// (a common key) set, since a WAHA server has no public address.
fn settings(input: &SettingsInput<'_>) -> Result<KindSettings, Vec<SettingError>> {
    let s: Settings = spec::deserialize(&input.own).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    if let Err(m) = check_session(&s.session) {
        errors.push(SettingError::at("session", m));
    }
    if input.common.base_url.is_none() {
        errors.push(SettingError::entry(
            "base_url is required: the WAHA server's address",
        ));
    }
    if errors.is_empty() {
        Ok(KindSettings::new(s))
    } else {
        Err(errors)
    }
}

/// A session name is one segment of every route: not empty, and nothing a path would split
/// or hide (spaces, `/`, `?`, `#`, `%`, control characters).
fn check_session(session: &str) -> Result<(), String> {
    let s = session.trim();
    if !s.is_empty()
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '?' | '#' | '%'))
    {
        return Ok(());
    }
    Err(format!(
        "expected a WAHA session name (`default` on WAHA Core; no spaces, /, ?, # or %), found {session:?}"
    ))
}

/// WAHA's own keys in a `providers:` entry (`base_url` is a common key and required here).
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The WAHA session name (`default` on WAHA Core).
    #[serde(default = "default_session")]
    pub session: String,
    /// The server's key (`WAHA_API_KEY`), sent as the `X-Api-Key` header.
    pub api_key: SecretRef,
}

fn default_session() -> String {
    "default".to_string()
}

/// Pause between two write calls when the instance sets no `interval`. A community report on
/// whatsapp-web.js found ~10 s between adds sustainable for 100+ adds, while ~4 quick adds
/// already drew `rate-overlimit` (waha.md §5).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// Members per add call when the instance sets no `batch_size`: one, so that with
/// [`DEFAULT_INTERVAL`] adds go out at the one-per-10-s pace the report found sustainable.
/// Each member of a WEBJS add call is a separate quick add inside WhatsApp (waha.md §3.6).
pub const DEFAULT_ADD_BATCH: usize = 1;

/// Cap on requests per second (reads included) when the instance sets no `rate`: NOWEB without
/// its store fetches every group from WhatsApp on each listing, so reads can trip the limit too.
pub const DEFAULT_RATE: f64 = 2.0;

/// Per-request timeout when the instance sets none: the session gate alone may hold a call
/// ~15 s, and a WEBJS add takes ~0.5-1 s per member (waha.md §2, §3.6, §5).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the session's account is trusted before it is read again: longer than one run of
/// many groups, shorter than the daemon's resync.
pub const ACCOUNT_TTL: Duration = Duration::from_secs(60);

/// The first pause after a `rate-overlimit`; it doubles on each further one in a row.
pub const DEFAULT_THROTTLE_COOLDOWN: Duration = Duration::from_secs(60);

/// The longest pause after repeated `rate-overlimit` answers (waha.md §5: cap ~15 min).
pub const MAX_THROTTLE_COOLDOWN: Duration = Duration::from_secs(15 * 60);

/// The most members a WhatsApp group holds.
pub const MAX_GROUP_SIZE: usize = 1024;

/// The client library inside WAHA; bodies of legacy listings and writes differ per engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Webjs,
    Noweb,
    Gows,
    Wpp,
    Other,
}

impl Engine {
    fn parse(s: &str) -> Engine {
        match s.to_ascii_uppercase().as_str() {
            "WEBJS" => Engine::Webjs,
            "NOWEB" => Engine::Noweb,
            "GOWS" => Engine::Gows,
            "WPP" => Engine::Wpp,
            _ => Engine::Other,
        }
    }
}

/// The account a session acts as, learnt before the first group and again once it is older
/// than [`ACCOUNT_TTL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// `me.id` as `<digits>@c.us`.
    pub me: MemberId,
    /// `me.lid` as `<digits>@lid`, on servers that report it.
    pub lid: Option<String>,
    pub engine: Engine,
}

/// What the last listing of a group taught us: the id to send for each member (WEBJS looks
/// members up by the exact listed id and silently skips others, waha.md §6.4) and whether the
/// account may write at all.
#[derive(Debug, Clone, Default)]
struct GroupIds {
    send_as: HashMap<MemberId, String>,
    /// `None` when the account's own row could not be recognised (an `@lid` with no phone on a
    /// server that does not report `me.lid`): the server then decides.
    me_admin: Option<bool>,
}

const V2_UNKNOWN: u8 = 0;
const V2_YES: u8 = 1;
const V2_NO: u8 = 2;

/// A WAHA client for one provider instance (one session, one WhatsApp account).
pub struct Waha {
    instance: String,
    base: reqwest::Url,
    session: String,
    api_key: Secret,
    http: HttpClient,
    add_batch: usize,
    /// The session's account and when it was read. Re-read after [`ACCOUNT_TTL`]: a long-lived
    /// client (the daemon) must notice the session being linked to another phone, or it would
    /// take its own new account for an unlisted member.
    account: tokio::sync::Mutex<Option<(tokio::time::Instant, Account)>>,
    account_ttl: Duration,
    groups: Mutex<HashMap<GroupId, GroupIds>>,
    /// Whether the server has the v2 participants listing (2025.11+).
    v2: AtomicU8,
    /// Whether the server has the lids API (2025.5+); cleared on its first 404.
    lids_api: AtomicBool,
}

impl std::fmt::Debug for Waha {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        rest::debug_client(
            f,
            "Waha",
            &[
                ("instance", &self.instance),
                ("session", &self.session),
                ("api_key", &self.api_key),
                ("add_batch", &self.add_batch),
            ],
        )
    }
}

impl Waha {
    /// Build the client of a `waha` instance, resolving its API key now.
    pub fn new(instance: &Instance) -> Result<Self, ProviderError> {
        let settings: &Settings = instance.settings()?;
        let key = rest::resolve(&instance.name, "api_key", &settings.api_key)?;
        Self::with_key(instance, key)
    }

    /// Build the client with an already resolved key (the demo and tests hand one in).
    pub fn with_key(instance: &Instance, api_key: Secret) -> Result<Self, ProviderError> {
        let settings: &Settings = instance.settings()?;
        let base = base_url(&instance.name, instance.common.base_url.as_deref())?;
        check_session(&settings.session).map_err(|m| {
            ProviderError::fatal(format!("provider {}: session: {m}", instance.name))
        })?;
        let session = settings.session.trim().to_string();
        let http = HttpClient::new(http_options(instance))?;
        Ok(Waha {
            instance: instance.name.clone(),
            base,
            session,
            api_key,
            http,
            add_batch: add_batch(instance),
            account: tokio::sync::Mutex::new(None),
            account_ttl: ACCOUNT_TTL,
            groups: Mutex::new(HashMap::new()),
            v2: AtomicU8::new(V2_UNKNOWN),
            lids_api: AtomicBool::new(true),
        })
    }

    /// Start the pause after a `rate-overlimit` at `d` instead of a minute (the demo and tests
    /// run against an emulator whose limit resets in milliseconds).
    pub fn with_throttle_cooldown(mut self, d: Duration) -> Result<Self, ProviderError> {
        let opts = HttpOptions {
            throttle_wait: d,
            max_throttle_wait: MAX_THROTTLE_COOLDOWN.max(d),
            ..self.http.options().clone()
        };
        self.http = HttpClient::new(opts)?;
        Ok(self)
    }

    /// The pacing in force: the HTTP layer's options (interval, rate, timeout) and the members
    /// per add call.
    pub fn pacing(&self) -> (&HttpOptions, usize) {
        (self.http.options(), self.add_batch)
    }

    /// Re-read the session's account after `d` instead of [`ACCOUNT_TTL`] (tests).
    pub fn with_account_ttl(mut self, d: Duration) -> Self {
        self.account_ttl = d;
        self
    }

    /// The account and engine of the session, checked before the first group and again when
    /// the last check is older than the TTL. A failed check is not kept: the next call checks
    /// again.
    pub async fn account(&self, ctx: &Ctx) -> Result<Account, ProviderError> {
        // Held across the check so that concurrent groups share one request.
        let mut cached = self.account.lock().await;
        if let Some((at, account)) = cached.as_ref()
            && at.elapsed() < self.account_ttl
        {
            return Ok(account.clone());
        }
        let account = self.check_session(ctx).await?;
        *cached = Some((tokio::time::Instant::now(), account.clone()));
        Ok(account)
    }

    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> String {
        let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        rest::url(&self.base, segments, &query).into()
    }

    fn group_url(&self, group: &GroupId, tail: &[&str]) -> String {
        let mut segs = vec!["api", self.session.as_str(), "groups", group.as_str()];
        segs.extend_from_slice(tail);
        self.url(&segs, &[])
    }

    fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_static("application/json"));
        // A key that cannot be a header value fails in `check_key`; its value is never echoed.
        if let Some(v) = rest::sensitive_header(&self.api_key) {
            h.insert("x-api-key", v);
        }
        h
    }

    fn check_key(&self) -> Result<(), ProviderError> {
        rest::check_header(&self.instance, "api_key", &self.api_key)
    }

    fn call(&self, method: Method, url: String, body: Option<Value>, kind: Option<OpKind>) -> Call {
        let write = kind.is_some();
        Call {
            method,
            url,
            headers: self.headers(),
            body,
            write,
            idempotent: kind.is_none_or(|k| (Kind::Waha.capabilities().idempotent)(k)),
            label: kind.map_or("read", |k| match k {
                OpKind::Add => "add",
                OpKind::Remove => "remove",
                OpKind::Promote => "promote",
                OpKind::Demote => "demote",
                _ => "write",
            }),
            ..Call::default()
        }
    }

    /// Classify a non-2xx answer; `rate-overlimit` is a throttle naming no wait, so the HTTP
    /// layer's doubling cooldown (from a minute, waha.md §5) applies.
    fn error(&self, r: &Response, label: &str) -> ProviderError {
        classify_error(r, label)
    }

    async fn check_session(&self, ctx: &Ctx) -> Result<Account, ProviderError> {
        self.check_key()?;
        let url = self.url(&["api", "sessions", &self.session], &[]);
        let session = self.session.clone();
        let name = self.instance.clone();
        let info: SessionInfo = self
            .http
            .call(ctx, self.call(Method::GET, url, None, None), |r| {
                if r.status == 404 || r.status == 422 {
                    return Err(ProviderError::fatal(format!(
                        "provider {name}: WAHA has no session {session:?} (WAHA Core serves only \"default\"): {}",
                        short_message(r)
                    )));
                }
                if !is_success(r.status) {
                    return Err(self.error(r, "read session"));
                }
                r.json()
            })
            .await?;
        let status = info.status.unwrap_or_default();
        if status != "WORKING" {
            let hint = match status.as_str() {
                "SCAN_QR_CODE" => "link the phone by scanning the QR code",
                "STARTING" => "it is starting; try again shortly",
                "STOPPED" => "start the session",
                "FAILED" => "restart the session (and check the phone is still linked)",
                _ => "check the session in WAHA",
            };
            let err = format!(
                "provider {}: WAHA session {:?} is {status}, not WORKING: {hint}; no group of this instance is read or changed",
                self.instance, self.session
            );
            return Err(if status == "STARTING" {
                ProviderError::transient(err)
            } else {
                ProviderError::fatal(err)
            }
            .with_code(format!("session-{}", status.to_ascii_lowercase())));
        }
        let me = info.me.ok_or_else(|| {
            ProviderError::fatal(format!(
                "provider {}: WAHA session {:?} reports no account (me); link a phone first",
                self.instance, self.session
            ))
        })?;
        let me_id = jid(&me.id)
            .filter(|j| j.server == Server::Phone)
            .ok_or_else(|| {
                ProviderError::fatal(format!(
                    "provider {}: WAHA session {:?} reports an unusable account id {:?}",
                    self.instance, self.session, me.id
                ))
            })?;
        let lid = me
            .lid
            .as_deref()
            .and_then(jid)
            .filter(|j| j.server == Server::Lid)
            .map(|j| j.to_string());
        let engine = info
            .engine
            .and_then(|e| e.engine)
            .map_or(Engine::Other, |e| Engine::parse(&e));
        tracing::debug!(instance = %self.instance, ?engine, "WAHA session is working");
        Ok(Account {
            me: MemberId(me_id.to_string()),
            lid,
            engine,
        })
    }

    /// The participant rows of a group: the v2 listing when the server has it, else the
    /// engine's legacy listing.
    async fn list(&self, ctx: &Ctx, group: &GroupId) -> Result<Vec<Row>, ProviderError> {
        if self.v2.load(Ordering::Relaxed) != V2_NO {
            let url = self.group_url(group, &["participants", "v2"]);
            let got = self
                .http
                .call(ctx, self.call(Method::GET, url, None, None), |r| {
                    if r.status == 404 && is_missing_route(r) {
                        return Ok(None);
                    }
                    if !is_success(r.status) {
                        return Err(self.error(r, "list participants"));
                    }
                    let rows: Vec<Value> = r.json()?;
                    parse_rows(&rows).map(Some)
                })
                .await?;
            match got {
                Some(rows) => {
                    self.v2.store(V2_YES, Ordering::Relaxed);
                    return Ok(rows);
                }
                None => self.v2.store(V2_NO, Ordering::Relaxed),
            }
        }
        let url = self.group_url(group, &["participants"]);
        let rows = self
            .http
            .call(ctx, self.call(Method::GET, url, None, None), |r| {
                if !is_success(r.status) {
                    return Err(self.error(r, "list participants"));
                }
                let rows: Vec<Value> = r.json()?;
                parse_rows(&rows)
            })
            .await?;
        Ok(rows)
    }

    /// The phone of a `@lid` the listing gave none for, from the lids API; `None` when the
    /// server does not know it (or is too old to have the API).
    async fn lookup_lid(&self, ctx: &Ctx, lid: &str) -> Result<Option<Jid>, ProviderError> {
        if !self.lids_api.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let url = self.url(&["api", &self.session, "lids", lid], &[]);
        let got = self
            .http
            .call(ctx, self.call(Method::GET, url, None, None), |r| {
                if r.status == 404 {
                    return Ok(Err(()));
                }
                if !is_success(r.status) {
                    return Err(self.error(r, "look up lid"));
                }
                let v: Value = r.json()?;
                Ok(Ok(v
                    .get("pn")
                    .and_then(Value::as_str)
                    .and_then(jid)
                    .filter(|j| j.server == Server::Phone)))
            })
            .await?;
        match got {
            Ok(pn) => Ok(pn),
            Err(()) => {
                // An unknown lid answers `pn: null`; a 404 is a server older than the API.
                self.lids_api.store(false, Ordering::Relaxed);
                Ok(None)
            }
        }
    }

    /// One write call; the per-member outcomes in `ops` order.
    async fn write(
        &self,
        ctx: &Ctx,
        group: &GroupId,
        kind: OpKind,
        ops: &[Op],
        ids: &GroupIds,
        engine: Engine,
    ) -> Result<Vec<MemberOutcome>, ProviderError> {
        let tail: [&str; 2] = match kind {
            OpKind::Add => ["participants", "add"],
            OpKind::Remove => ["participants", "remove"],
            OpKind::Promote => ["admin", "promote"],
            OpKind::Demote => ["admin", "demote"],
            other => {
                return Err(ProviderError::fatal(format!(
                    "provider {}: WhatsApp groups have no {other}",
                    self.instance
                )));
            }
        };
        // Adds go by phone; everything else by the exact id the listing gave (waha.md §6.4).
        let sent: Vec<String> = ops
            .iter()
            .map(|op| match kind {
                OpKind::Add => op.member.0.clone(),
                _ => ids
                    .send_as
                    .get(&op.member)
                    .cloned()
                    .unwrap_or_else(|| op.member.0.clone()),
            })
            .collect();
        let mut body = json!({
            "participants": sent.iter().map(|id| json!({ "id": id })).collect::<Vec<_>>()
        });
        if kind == OpKind::Add && engine == Engine::Webjs {
            // A private invite is a message the operator did not ask for.
            body["autoSendInviteV4"] = json!(false);
        }
        let url = self.group_url(group, &tail);
        let label = self
            .call(Method::POST, String::new(), None, Some(kind))
            .label;
        let results = self
            .http
            .call(
                ctx,
                self.call(Method::POST, url, Some(body), Some(kind)),
                |r| {
                    if !is_success(r.status) {
                        return Verdict::from(Err(self.error(r, label)));
                    }
                    let results = match parse_results(r, label) {
                        Ok(v) => v,
                        Err(e) => return Verdict::from(Err(e)),
                    };
                    // WEBJS may report WhatsApp's throttle per member instead of failing the call
                    // (waha.md §5): the whole call waits out the cooldown and is made again; members
                    // it already added then answer 409, which counts as done.
                    if results
                        .iter()
                        .flatten()
                        .any(|m| m.code == 429 || m.message.contains("overlimit"))
                    {
                        return Verdict::Throttled {
                            error: ProviderError::throttled(
                                format!(
                                    "{label}: WhatsApp answered rate-overlimit for some members"
                                ),
                                None,
                            )
                            .with_code("rate-overlimit"),
                            after: None,
                        };
                    }
                    Verdict::Done(results)
                },
            )
            .await?;
        Ok(outcomes(kind, ops, &sent, results.as_deref()))
    }

    fn cached(&self, group: &GroupId) -> Option<GroupIds> {
        self.groups.lock().ok()?.get(group).cloned()
    }
}

fn base_url(name: &str, raw: Option<&str>) -> Result<reqwest::Url, ProviderError> {
    let raw = raw.ok_or_else(|| {
        ProviderError::fatal(format!(
            "provider {name}: base_url is required: the WAHA server's address"
        ))
    })?;
    let mut url = rest::base_url(name, "base_url", raw)?;
    // Every route starts with /api/; a base that already ends in it would double it.
    if url.path().trim_end_matches('/').ends_with("/api") {
        let p = url
            .path()
            .trim_end_matches('/')
            .trim_end_matches("/api")
            .to_string();
        url.set_path(&p);
    }
    Ok(url)
}

/// Pacing of one instance: its own `interval`, `rate` and `timeout` over the slow defaults.
fn http_options(instance: &Instance) -> HttpOptions {
    let mut o = HttpOptions::for_instance(instance, Some(DEFAULT_RATE), DEFAULT_INTERVAL);
    o.timeout = instance.common.timeout.unwrap_or(DEFAULT_TIMEOUT);
    // Every group of a session writes as one WhatsApp account (waha.md §5).
    o.serial_writes = true;
    o.throttle_wait = DEFAULT_THROTTLE_COOLDOWN;
    o.max_throttle_wait = MAX_THROTTLE_COOLDOWN;
    o
}

/// Members per add call: `batch_size` when set, else one; never more than the kind's cap.
fn add_batch(instance: &Instance) -> usize {
    instance
        .common
        .batch_size
        .unwrap_or(DEFAULT_ADD_BATCH)
        .clamp(1, CAPS.max_batch.get(OpKind::Add))
}

fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

/// Express's "Cannot GET /api/..." 404 of a route the server does not have.
fn is_missing_route(r: &Response) -> bool {
    String::from_utf8_lossy(&r.body).contains("Cannot ")
}

#[async_trait]
impl Provider for Waha {
    async fn fetch(&self, ctx: &Ctx, group: &GroupId) -> Result<LiveGroup, ProviderError> {
        let account = self.account(ctx).await?;
        let rows = self.list(ctx, group).await?;
        let me_user = jid(account.me.as_str()).map(|j| j.user);
        let me_lid = account.lid.as_deref().and_then(jid).map(|j| j.user);

        let mut live = LiveGroup {
            me: Some(account.me.clone()),
            ..LiveGroup::default()
        };
        let mut ids = GroupIds::default();
        for row in rows {
            let phone = match row.id.server {
                Server::Phone => Some(row.id.clone()),
                Server::Lid if Some(&row.id.user) == me_lid.as_ref() => jid(account.me.as_str()),
                Server::Lid => match row.pn.clone() {
                    Some(pn) => Some(pn),
                    None => self.lookup_lid(ctx, &row.id.to_string()).await?,
                },
            };
            let key = MemberId(phone.as_ref().unwrap_or(&row.id).to_string());
            if phone.is_none() {
                live.unresolved.insert(key.clone());
            }
            let is_me = phone.as_ref().map(|p| &p.user) == me_user.as_ref();
            if is_me {
                ids.me_admin = Some(row.admin || row.superadmin);
            }
            if row.superadmin {
                live.owner = Some(key.clone());
            }
            let role = if row.admin || row.superadmin {
                Role::Admin
            } else {
                Role::Participant
            };
            ids.send_as.insert(key.clone(), row.raw);
            live.members.insert(key, role);
        }
        if let Ok(mut g) = self.groups.lock() {
            g.insert(group.clone(), ids);
        }
        Ok(live)
    }

    async fn apply(
        &self,
        ctx: &Ctx,
        group: &GroupId,
        batch: &Batch,
    ) -> Result<Vec<MemberOutcome>, ProviderError> {
        let account = self.account(ctx).await?;
        // Remove, promote and demote must send the id the listing shows (WEBJS skips any other
        // form, waha.md §6.4). A member added earlier in this run is not in the last listing and
        // may have joined under a lid, so the group is read again first (§6.9).
        let unknown = |ids: &GroupIds| {
            batch.kind != OpKind::Add
                && batch
                    .ops
                    .iter()
                    .any(|op| !ids.send_as.contains_key(&op.member))
        };
        let ids = match self.cached(group) {
            Some(ids) if !unknown(&ids) => ids,
            _ => {
                self.fetch(ctx, group).await?;
                self.cached(group).unwrap_or_default()
            }
        };
        if ids.me_admin == Some(false) {
            return Err(ProviderError::fatal(format!(
                "provider {}: the WhatsApp account {} is not an admin of group {group}; WAHA writes need admin rights",
                self.instance, account.me
            ))
            .with_code("not-authorized"));
        }
        // One batch is one call: the planner already cut adds to `add_batch` members through
        // `capabilities_for`, so the reported call count is the number of requests made.
        self.write(ctx, group, batch.kind, &batch.ops, &ids, account.engine)
            .await
    }

    fn capabilities_for(&self, _live: &LiveGroup) -> Capabilities {
        // The planner cuts adds to the instance's pace, while `batch_size` still applies to
        // every other kind of call.
        let mut caps = *Kind::Waha.capabilities();
        caps.max_batch = caps.max_batch.with(OpKind::Add, self.add_batch);
        caps
    }

    fn requests(&self) -> RequestCounts {
        self.http.counts()
    }
}

/// How long adding `n` members takes under the default pacing when nothing throttles: one call
/// per member (or per `batch` members) and [`DEFAULT_INTERVAL`] between calls, not counting the
/// calls' own time. For docs and the pacing test.
pub fn default_add_time(n: usize, batch: Option<usize>) -> Duration {
    let calls = n.div_ceil(batch.unwrap_or(DEFAULT_ADD_BATCH).max(1));
    DEFAULT_INTERVAL * calls.saturating_sub(1) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waha_numbers_normalise_to_jids() {
        assert_eq!(
            parse_member("+49 151 2345678").unwrap().0,
            "491512345678@c.us"
        );
        assert_eq!(
            parse_member("+1 (555) 010-9999").unwrap().0,
            "15550109999@c.us"
        );
        assert_eq!(
            parse_member("491512345678@s.whatsapp.net").unwrap().0,
            "491512345678@c.us"
        );
        assert!(parse_member("12345@lid").unwrap_err().contains("@lid"));
        assert!(parse_member("alice").is_err());
        assert!(parse_member("+49 151").is_err());
    }
}
