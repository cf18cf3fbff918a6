//! CometChat (Chat REST API v3). See `shared/providers/cometchat.md`.
//!
//! The client translates rosterd's operations into CometChat calls and classifies every answer
//! by the body's `error.code` (the provider does not document its statuses, cometchat.md §4).
//! Retrying, pacing and throttle cooldowns live in [`crate::provider::http`]; this module only
//! says which class a failure belongs to and how long the provider asked us to wait.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use reqwest::Method;
use reqwest::header::{ACCEPT, HeaderMap, HeaderValue};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::secret::{Secret, SecretRef};
use crate::ctx::Ctx;
use crate::model::{
    Batch, BatchLimits, GroupId, LiveGroup, MemberId, MemberOutcome, MuteSupport, Op, OpKind, Role,
};
use crate::provider::http::{Call, HttpClient, HttpOptions, Response, Verdict};
use crate::provider::spec::{self, KindSpec, SettingError, SettingsInput};
use crate::provider::{
    Capabilities, ErrorClass, Instance, Kind, KindSettings, Provider, ProviderError, RequestCounts,
    rest,
};

/// CometChat as a kind: everything rosterd knows about it.
pub static SPEC: KindSpec = KindSpec {
    kind: Kind::Cometchat,
    caps: CAPS,
    parse_member,
    parse_group,
    settings,
    schema: spec::settings_schema::<Settings>,
    connect: |i| Ok(std::sync::Arc::new(CometChat::new(i)?)),
    sandbox_client: crate::sandbox::cometchat::client,
};

const CAPS: Capabilities = Capabilities {
    roles: &[Role::Admin, Role::Moderator, Role::Participant],
    bans: true,
    mutes: MuteSupport::No,
    add_with_role: true,
    transfer_owner: true,
    max_batch: BatchLimits::ONE
        .with(OpKind::Add, MAX_IDS_PER_CALL)
        .with(OpKind::Ban, MAX_IDS_PER_CALL),
    uniform_batch: crate::model::kind::never,
    idempotent: crate::model::kind::always,
};

/// CometChat UIDs: at most 100 of `a-z 0-9 _ -`, lower-cased by the service.
pub fn parse_member(raw: &str) -> Result<MemberId, String> {
    let s = raw.trim().to_ascii_lowercase();
    if s.is_empty()
        || s.len() > 100
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "a CometChat id (1-100 characters of a-z, 0-9, _ and -), found {raw:?}"
        ));
    }
    Ok(MemberId(s))
}

/// CometChat GUIDs follow the UID syntax.
pub fn parse_group(raw: &str) -> Result<GroupId, String> {
    parse_member(raw).map(|m| GroupId(m.0))
}

/// The kind's keys, checked: `region` one of [`REGIONS`], `app_id` a host label.
fn settings(input: &SettingsInput<'_>) -> Result<KindSettings, Vec<SettingError>> {
    let s: Settings = spec::deserialize(&input.own).map_err(|e| vec![e])?;
    let errors: Vec<SettingError> = [
        check_region(&s.region).map_err(|m| SettingError::at("region", m)),
        check_app_id(&s.app_id).map_err(|m| SettingError::at("app_id", m)),
    ]
    .into_iter()
    .filter_map(Result::err)
    .collect();
    if errors.is_empty() {
        Ok(KindSettings::new(s))
    } else {
        Err(errors)
    }
}

fn check_region(region: &str) -> Result<(), String> {
    if REGIONS.contains(&region) {
        return Ok(());
    }
    Err(format!(
        "must be one of {}; found {region:?}",
        REGIONS.join(", ")
    ))
}

/// The app id is the first label of the API host, so it must be one.
fn check_app_id(app_id: &str) -> Result<(), String> {
    let app = app_id.trim();
    if !app.is_empty() && app.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Ok(());
    }
    Err(format!(
        "must be letters, digits and dashes; found {app_id:?}"
    ))
}

/// CometChat's own keys in a `providers:` entry.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The app id (selects the host `{app_id}.api-{region}.cometchat.io`).
    pub app_id: String,
    /// `us`, `eu` or `in`.
    pub region: String,
    /// A REST API key with `fullAccess` scope.
    pub api_key: SecretRef,
}

/// The regions CometChat serves v3 from.
pub const REGIONS: [&str; 3] = ["us", "eu", "in"];

/// The most ids one `POST members` call may carry across all its arrays (cometchat.md §3.5).
pub const MAX_IDS_PER_CALL: usize = 25;

/// The page size of member and ban listings: the provider's maximum (cometchat.md §3.4).
pub const DEFAULT_PAGE_SIZE: usize = 1000;

/// The pace used when the instance sets no `rate`: 5 requests/s stays under the free plan's
/// 500 requests/minute (cometchat.md §5).
pub const DEFAULT_RATE: f64 = 5.0;

/// The owner CometChat records for groups created by REST without one; it is not a member.
const SYSTEM_OWNER: &str = "app_system";

/// Groups are capped at 100,000 members (cometchat.md §6.10); a listing that goes on past that
/// is a server that ignores `page`, and must not spin forever.
const MAX_LISTED: usize = 200_000;

/// A CometChat v3 client for one provider instance.
pub struct CometChat {
    instance: String,
    base: reqwest::Url,
    api_key: Secret,
    http: HttpClient,
    /// Items per page of member and ban listings. A field so tests can page through small pages.
    pub page_size: usize,
}

impl std::fmt::Debug for CometChat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        rest::debug_client(
            f,
            "CometChat",
            &[
                ("instance", &self.instance),
                ("api_key", &self.api_key),
                ("page_size", &self.page_size),
            ],
        )
    }
}

impl CometChat {
    /// Build the client of a `cometchat` instance, resolving its API key now.
    pub fn new(instance: &Instance) -> Result<Self, ProviderError> {
        let settings: &Settings = instance.settings()?;
        let key = rest::resolve(&instance.name, "api_key", &settings.api_key)?;
        Self::with_key(instance, key)
    }

    /// Build the client with an already resolved key (the demo and tests hand one in).
    pub fn with_key(instance: &Instance, api_key: Secret) -> Result<Self, ProviderError> {
        let settings: &Settings = instance.settings()?;
        let base = base_url(
            &instance.name,
            instance.common.base_url.as_deref(),
            settings,
        )?;
        let http = HttpClient::new(http_options(instance))?;
        Ok(CometChat {
            instance: instance.name.clone(),
            base,
            api_key,
            http,
            page_size: DEFAULT_PAGE_SIZE,
        })
    }

    /// Use pages of `n` items (at least 1, at most the provider's 1000) when listing.
    pub fn with_page_size(mut self, n: usize) -> Self {
        self.page_size = n.clamp(1, DEFAULT_PAGE_SIZE);
        self
    }

    /// `{base}/{segments...}` with every segment percent-encoded.
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> String {
        let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        rest::url(&self.base, segments, &query).into()
    }

    fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_static("application/json"));
        // A key that cannot be a header value (control characters) fails the call as a
        // config error below; the value itself is never echoed.
        if let Some(v) = rest::sensitive_header(&self.api_key) {
            h.insert("apikey", v);
        }
        h
    }

    fn call(
        &self,
        method: Method,
        url: String,
        body: Option<Value>,
        write: bool,
        label: &'static str,
    ) -> Call {
        Call {
            method,
            url,
            headers: self.headers(),
            body,
            write,
            idempotent: true,
            label,
            ..Call::default()
        }
    }

    fn check_key(&self) -> Result<(), ProviderError> {
        rest::check_header(&self.instance, "api_key", &self.api_key)
            .map_err(|e| e.with_code("AUTH_ERR_APIKEY_NOT_FOUND"))
    }

    /// The group's owner, unless it is the system's placeholder.
    async fn owner(&self, ctx: &Ctx, guid: &str) -> Result<Option<MemberId>, ProviderError> {
        let url = self.url(&["groups", guid], &[]);
        Ok(self
            .http
            .call(
                ctx,
                self.call(Method::GET, url, None, false, "get group"),
                |r| ok_json::<DataEnvelope<GroupData>>(r).map(|g| g.data.owner),
            )
            .await?
            .map(|o| o.to_ascii_lowercase())
            .filter(|o| !o.is_empty() && o != SYSTEM_OWNER)
            .map(MemberId))
    }

    async fn members(
        &self,
        ctx: &Ctx,
        guid: &str,
    ) -> Result<BTreeMap<MemberId, Role>, ProviderError> {
        let mut members = BTreeMap::new();
        for item in self.list_all(ctx, guid, "members", "list members").await? {
            let uid = item.uid.to_ascii_lowercase();
            let role = parse_role(item.scope.as_deref(), &uid)?;
            members.insert(MemberId(uid), role);
        }
        Ok(members)
    }

    async fn bans(&self, ctx: &Ctx, guid: &str) -> Result<BTreeSet<MemberId>, ProviderError> {
        Ok(self
            .list_all(ctx, guid, "bannedusers", "list banned users")
            .await?
            .into_iter()
            .map(|i| MemberId(i.uid.to_ascii_lowercase()))
            .collect())
    }

    /// Every page of a listing, until a page comes back shorter than asked for. `pagination.total`
    /// is not trusted: the provider's own examples show 0 next to data (cometchat.md §6.8).
    async fn list_all(
        &self,
        ctx: &Ctx,
        guid: &str,
        what: &'static str,
        label: &'static str,
    ) -> Result<Vec<ListItem>, ProviderError> {
        let mut out = Vec::new();
        let mut page = 1usize;
        loop {
            let url = self.url(
                &["groups", guid, what],
                &[
                    ("perPage", self.page_size.to_string()),
                    ("page", page.to_string()),
                ],
            );
            let (items, per_page) = self
                .http
                .call(ctx, self.call(Method::GET, url, None, false, label), |r| {
                    ok_json::<PagedEnvelope>(r).map(|body| {
                        let per_page = body.per_page();
                        (body.data, per_page)
                    })
                })
                .await?;
            let n = items.len();
            out.extend(items);
            // The end is a page shorter than the server's own page size, which it states in
            // `per_page`: a server that pages smaller than asked must not end the read early,
            // or the members past its first page would be planned away.
            let page_size = per_page
                .filter(|&p| p > 0)
                .map_or(self.page_size, |p| p.min(self.page_size));
            if n < page_size {
                return Ok(out);
            }
            if out.len() > MAX_LISTED {
                return Err(ProviderError::fatal(format!(
                    "{label}: more than {MAX_LISTED} entries listed; the server seems to ignore paging"
                )));
            }
            page += 1;
        }
    }

    async fn add_or_ban(
        &self,
        ctx: &Ctx,
        guid: &str,
        kind: OpKind,
        ops: &[Op],
    ) -> Result<Vec<MemberOutcome>, ProviderError> {
        let mut arrays: BTreeMap<&'static str, Vec<&str>> = BTreeMap::new();
        for op in ops {
            let key = match kind {
                OpKind::Ban => "usersToBan",
                _ => match op.role.unwrap_or(Role::Participant) {
                    Role::Admin => "admins",
                    Role::Moderator => "moderators",
                    Role::Participant => "participants",
                },
            };
            arrays.entry(key).or_default().push(op.member.as_str());
        }
        let url = self.url(&["groups", guid, "members"], &[]);
        let label = if kind == OpKind::Ban { "ban" } else { "add" };
        let results =
            self.http
                .call(
                    ctx,
                    self.call(Method::POST, url, Some(json!(arrays)), true, label),
                    |r| {
                        ok_json::<DataEnvelope<HashMap<String, HashMap<String, MemberResult>>>>(r)
                            .map(|body| {
                                // One flat map: a UID in several arrays gets one outcome only (§3.5).
                                let mut flat = HashMap::new();
                                for (_, per) in body.data {
                                    for (uid, res) in per {
                                        flat.insert(uid.to_ascii_lowercase(), res);
                                    }
                                }
                                flat
                            })
                    },
                )
                .await?;
        let already = if kind == OpKind::Ban {
            "ERR_ALREADY_BANNED"
        } else {
            "ERR_ALREADY_JOINED"
        };
        Ok(ops
            .iter()
            // A member the answer does not mention gets no outcome: the engine reports it.
            .filter_map(|op| {
                let r = results.get(op.member.as_str())?;
                Some(if r.success {
                    MemberOutcome::done(op.member.clone())
                } else {
                    let (code, message) = r.error_parts();
                    if code == already {
                        // For adds the engine's re-read verifies the scope (§6.5).
                        MemberOutcome::already(op.member.clone())
                    } else {
                        MemberOutcome::failed(op.member.clone(), code, message)
                    }
                })
            })
            .collect())
    }

    /// One call about one member. A per-member refusal is an outcome; `already` is the code
    /// that means the effect already holds.
    #[allow(clippy::too_many_arguments)]
    async fn single(
        &self,
        ctx: &Ctx,
        method: Method,
        url: String,
        body: Option<Value>,
        label: &'static str,
        member: &MemberId,
        already: &'static str,
    ) -> Result<MemberOutcome, ProviderError> {
        let member = member.clone();
        self.http
            .call(ctx, self.call(method, url, body, true, label), move |r| {
                if is_success(r.status) {
                    return Verdict::Done(MemberOutcome::done(member.clone()));
                }
                let err = classify_error(r, label);
                match err.class {
                    ErrorClass::Fatal if is_member_code(err.code.as_deref()) => {
                        let code = err.code.clone().unwrap_or_default();
                        Verdict::Done(if code == already {
                            MemberOutcome::already(member.clone())
                        } else {
                            MemberOutcome::failed(member.clone(), code, err.message)
                        })
                    }
                    _ => Verdict::from(Err(err)),
                }
            })
            .await
    }
}

/// `common.base_url`, else `https://{app_id}.api-{region}.cometchat.io/v3`. Validation
/// checked region and app id with their positions; an instance built by hand is checked here.
fn base_url(name: &str, over: Option<&str>, s: &Settings) -> Result<reqwest::Url, ProviderError> {
    let raw = match over {
        Some(u) => u.to_string(),
        None => {
            let bad =
                |key: &str, m: String| ProviderError::fatal(format!("provider {name}: {key} {m}"));
            check_region(&s.region).map_err(|m| bad("region", m))?;
            check_app_id(&s.app_id).map_err(|m| bad("app_id", m))?;
            format!(
                "https://{}.api-{}.cometchat.io/v3",
                s.app_id.trim(),
                s.region
            )
        }
    };
    rest::base_url(name, "base_url", &raw)
}

/// Pacing of one instance: its own settings, and 5 requests/s when it sets no rate.
fn http_options(instance: &Instance) -> HttpOptions {
    HttpOptions::for_instance(instance, Some(DEFAULT_RATE), Duration::ZERO)
}

#[derive(Deserialize)]
struct DataEnvelope<T> {
    data: T,
}

/// A listing: the items, and the meta block where the server states its page size.
#[derive(Deserialize)]
struct PagedEnvelope {
    data: Vec<ListItem>,
    /// Read leniently: a meta block of an unexpected shape must not fail the read.
    #[serde(default)]
    meta: Value,
}

impl PagedEnvelope {
    fn per_page(&self) -> Option<usize> {
        let p = &self.meta["pagination"]["per_page"];
        p.as_u64()
            .or_else(|| p.as_str()?.parse().ok())
            .and_then(|n| usize::try_from(n).ok())
    }
}

#[derive(Deserialize)]
struct GroupData {
    #[serde(default)]
    owner: Option<String>,
}

#[derive(Deserialize)]
struct ListItem {
    uid: String,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Deserialize)]
struct MemberResult {
    #[serde(default)]
    success: bool,
    #[serde(default)]
    error: Option<ErrorBody>,
}

impl MemberResult {
    fn error_parts(&self) -> (String, String) {
        match &self.error {
            Some(e) => (
                e.code.clone().unwrap_or_else(|| "UNKNOWN".into()),
                e.message.clone().unwrap_or_default(),
            ),
            None => (
                "UNKNOWN".into(),
                "the provider reported a failure without a reason".into(),
            ),
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

/// A 2xx body as `T`, or the classified error.
fn ok_json<T: serde::de::DeserializeOwned>(r: &Response) -> Result<T, ProviderError> {
    if is_success(r.status) {
        r.json()
    } else {
        Err(classify_error(r, "request"))
    }
}

/// Codes that describe one member rather than the whole call: on a single-member call they
/// become that member's outcome (cometchat.md §4, "per-member" column and the §3.6-3.9 lists).
fn is_member_code(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "ERR_UID_NOT_FOUND"
                | "ERR_ALREADY_JOINED"
                | "ERR_NOT_A_MEMBER"
                | "ERR_SAME_SCOPE"
                | "ERR_NO_VACANCY"
                | "ERR_PLAN_QUOTA_RESTRICTION"
                | "ERR_ALREADY_BANNED"
                | "ERR_NOT_A_BANNED_USER"
                | "ERR_BANNED_GROUPMEMBER"
                | "ERR_GROUP_NO_CLEARANCE"
                | "ERR_GROUP_NO_SCOPE_CLEARANCE"
                | "ERR_GROUP_NO_ADMIN_SCOPE"
                | "ERR_GROUP_NO_MODERATOR_SCOPE"
                | "ERR_GROUP_NO_SELF_ACTION"
                | "ERR_GROUP_NOT_JOINED"
        )
    )
}

/// Classify a non-2xx answer by its `error.code`, falling back on the status only when the body
/// has no code (an edge proxy's 502, say). The message carries the provider's text and code,
/// never the URL or a header.
pub fn classify_error(r: &Response, label: &str) -> ProviderError {
    let body: Option<ErrorBody> = serde_json::from_slice::<ErrorEnvelope>(&r.body)
        .ok()
        .map(|e| e.error);
    let code = body.as_ref().and_then(|b| b.code.clone());
    let text = body
        .as_ref()
        .and_then(|b| b.message.clone())
        .unwrap_or_default();
    let message = match &code {
        Some(c) if text.is_empty() => format!("{label}: HTTP {} {c}", r.status),
        Some(c) => format!("{label}: HTTP {} {c}: {text}", r.status),
        None => format!("{label}: HTTP {}", r.status),
    };
    let class = match code.as_deref() {
        Some("ERR_TOO_MANY_REQUESTS") => ErrorClass::Throttled,
        _ if r.status == 429 => ErrorClass::Throttled,
        Some(
            "ERR_MISSION_FAILED"
            | "ERR_OPERATION_FAILED"
            | "ERR_EXCEPTION"
            | "ERR_BAD_ERROR_RESPONSE",
        ) => ErrorClass::Transient,
        Some(c) if c.ends_with("_FAILED") => ErrorClass::Transient,
        Some(c) if c.starts_with("AUTH_ERR") => ErrorClass::Fatal,
        // Every other coded answer is a decision of the service, not a passing fault.
        Some(_) => ErrorClass::Fatal,
        None => rest::class_of_status(r.status),
    };
    let retry_after = if class == ErrorClass::Throttled {
        throttle_wait(&r.headers, r.received)
    } else {
        None
    };
    ProviderError {
        class,
        code,
        message,
        retry_after,
    }
}

/// How long a throttled answer asks us to wait: `Retry-After`, else the reset time in either
/// header spelling minus now (cometchat.md §5).
pub fn throttle_wait(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(d) = crate::provider::http::retry_after(headers) {
        return Some(d);
    }
    let reset = ["x-rate-limit-reset", "x-ratelimit-reset"]
        .iter()
        .find_map(|h| headers.get(*h)?.to_str().ok()?.trim().parse::<f64>().ok())?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
    Some(Duration::from_secs_f64((reset - now).max(0.0)))
}

fn parse_role(scope: Option<&str>, uid: &str) -> Result<Role, ProviderError> {
    match scope {
        Some("admin") => Ok(Role::Admin),
        Some("moderator") => Ok(Role::Moderator),
        Some("participant") => Ok(Role::Participant),
        other => Err(ProviderError::fatal(format!(
            "list members: member {uid} has an unknown scope {other:?}"
        ))),
    }
}

#[async_trait]
impl Provider for CometChat {
    async fn fetch(&self, ctx: &Ctx, group: &GroupId) -> Result<LiveGroup, ProviderError> {
        self.check_key()?;
        let guid = group.as_str();
        Ok(LiveGroup {
            owner: self.owner(ctx, guid).await?,
            members: self.members(ctx, guid).await?,
            bans: Some(self.bans(ctx, guid).await?),
            ..LiveGroup::default()
        })
    }

    /// Only what the writes could change: the member listing after member writes (a ban
    /// kicks, an owner transfer re-scopes), the ban list after bans and unbans, the group
    /// object after an owner transfer.
    async fn refetch(
        &self,
        ctx: &Ctx,
        group: &GroupId,
        before: &LiveGroup,
        touched: &BTreeSet<OpKind>,
    ) -> Result<LiveGroup, ProviderError> {
        self.check_key()?;
        let guid = group.as_str();
        let any = |f: fn(OpKind) -> bool| touched.iter().copied().any(f);
        let mut after = before.clone();
        if any(OpKind::changes_owner) {
            after.owner = self.owner(ctx, guid).await?;
        }
        if any(OpKind::changes_roster) {
            after.members = self.members(ctx, guid).await?;
        }
        if any(OpKind::changes_bans) {
            after.bans = Some(self.bans(ctx, guid).await?);
        }
        Ok(after)
    }

    async fn apply(
        &self,
        ctx: &Ctx,
        group: &GroupId,
        batch: &Batch,
    ) -> Result<Vec<MemberOutcome>, ProviderError> {
        self.check_key()?;
        let guid = group.as_str();
        match batch.kind {
            OpKind::Add | OpKind::Ban => {
                // The planner sizes batches; a larger one is still sent within the provider's cap.
                let mut out = Vec::with_capacity(batch.ops.len());
                for chunk in batch.ops.chunks(MAX_IDS_PER_CALL) {
                    out.extend(self.add_or_ban(ctx, guid, batch.kind, chunk).await?);
                }
                Ok(out)
            }
            OpKind::Mute | OpKind::Unmute => Err(ProviderError::fatal(format!(
                "provider {}: CometChat groups have no member mutes",
                self.instance
            ))),
            kind => {
                let mut out = Vec::with_capacity(batch.ops.len());
                for op in &batch.ops {
                    let uid = op.member.as_str();
                    let outcome = match kind {
                        OpKind::Promote | OpKind::Demote => {
                            let role = op.role.ok_or_else(|| {
                                ProviderError::fatal(format!(
                                    "{kind} of {uid} carries no target role"
                                ))
                            })?;
                            let url = self.url(&["groups", guid, "members", uid], &[]);
                            let body = json!({ "scope": role.as_str() });
                            self.single(
                                ctx,
                                Method::PUT,
                                url,
                                Some(body),
                                kind.as_str(),
                                &op.member,
                                "ERR_SAME_SCOPE",
                            )
                            .await?
                        }
                        OpKind::Remove => {
                            let url = self.url(&["groups", guid, "members", uid], &[]);
                            self.single(
                                ctx,
                                Method::DELETE,
                                url,
                                None,
                                "remove",
                                &op.member,
                                "ERR_NOT_A_MEMBER",
                            )
                            .await?
                        }
                        OpKind::Unban => {
                            let url = self.url(&["groups", guid, "bannedusers", uid], &[]);
                            self.single(
                                ctx,
                                Method::DELETE,
                                url,
                                None,
                                "unban",
                                &op.member,
                                "ERR_NOT_A_BANNED_USER",
                            )
                            .await?
                        }
                        OpKind::TransferOwner => {
                            let url = self.url(&["groups", guid], &[]);
                            let body = json!({ "owner": uid });
                            // No "already" code exists for ownership; the engine's re-read checks it.
                            self.single(
                                ctx,
                                Method::PUT,
                                url,
                                Some(body),
                                "transfer owner",
                                &op.member,
                                "",
                            )
                            .await?
                        }
                        OpKind::Add | OpKind::Ban | OpKind::Mute | OpKind::Unmute => {
                            unreachable!("handled above")
                        }
                    };
                    out.push(outcome);
                }
                Ok(out)
            }
        }
    }

    fn capabilities_for(&self, _live: &LiveGroup) -> Capabilities {
        *Kind::Cometchat.capabilities()
    }

    fn requests(&self) -> RequestCounts {
        self.http.counts()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::CommonSettings;

    fn instance(base_url: Option<&str>, region: &str) -> Instance {
        Instance {
            name: "cc".into(),
            kind: Kind::Cometchat,
            common: CommonSettings {
                base_url: base_url.map(String::from),
                ..CommonSettings::default()
            },
            settings: KindSettings::new(Settings {
                app_id: "abc123".into(),
                region: region.into(),
                api_key: SecretRef::Env("ROSTERD_TEST_UNUSED".into()),
            }),
        }
    }

    fn resp(status: u16, body: &str, headers: &[(&'static str, &str)]) -> Response {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        Response {
            status,
            headers: h,
            body: bytes::Bytes::from(body.to_string()),
            received: std::time::SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn base_url_is_built_from_app_and_region() {
        let c = CometChat::with_key(&instance(None, "eu"), Secret::new("k")).unwrap();
        assert_eq!(
            c.url(&["groups", "g1"], &[]),
            "https://abc123.api-eu.cometchat.io/v3/groups/g1"
        );
        let err = CometChat::with_key(&instance(None, "asia"), Secret::new("k")).unwrap_err();
        assert!(err.message.contains("region"), "{err}");
    }

    #[test]
    fn base_url_override_keeps_its_path_and_encodes_segments() {
        let c = CometChat::with_key(
            &instance(Some("http://127.0.0.1:9/v3/"), "xx"),
            Secret::new("k"),
        )
        .unwrap();
        assert_eq!(
            c.url(&["groups", "a b", "members"], &[("perPage", "3".into())]),
            "http://127.0.0.1:9/v3/groups/a%20b/members?perPage=3"
        );
    }

    #[test]
    fn debug_output_hides_the_key() {
        let c = CometChat::with_key(&instance(None, "us"), Secret::new("supersecretkey")).unwrap();
        assert!(!format!("{c:?}").contains("supersecretkey"));
        let h = c.headers();
        assert!(h.get("apikey").unwrap().is_sensitive());
    }

    #[test]
    fn missing_key_names_the_variable_not_a_value() {
        let err = CometChat::new(&instance(None, "us")).unwrap_err();
        assert_eq!(err.class, ErrorClass::Fatal);
        assert!(err.message.contains("ROSTERD_TEST_UNUSED"), "{err}");
    }

    #[test]
    fn cometchat_ids_are_lowercased_and_checked() {
        assert_eq!(parse_member("Alice").unwrap().0, "alice");
        assert!(parse_member("al ice").is_err());
        assert!(parse_member("").is_err());
    }

    #[test]
    fn errors_are_classified_by_code_not_status() {
        let e = classify_error(
            &resp(
                400,
                r#"{"error":{"code":"ERR_TOO_MANY_REQUESTS","message":"slow"}}"#,
                &[("retry-after", "3")],
            ),
            "x",
        );
        assert_eq!(
            (e.class, e.retry_after),
            (ErrorClass::Throttled, Some(Duration::from_secs(3)))
        );
        let e = classify_error(
            &resp(200, r#"{"error":{"code":"ERR_MEMBER_DELETE_FAILED"}}"#, &[]),
            "x",
        );
        assert_eq!(e.class, ErrorClass::Transient);
        let e = classify_error(
            &resp(500, r#"{"error":{"code":"ERR_GUID_NOT_FOUND"}}"#, &[]),
            "x",
        );
        assert_eq!(e.class, ErrorClass::Fatal);
        let e = classify_error(
            &resp(
                401,
                r#"{"error":{"code":"AUTH_ERR_APIKEY_NOT_FOUND"}}"#,
                &[],
            ),
            "x",
        );
        assert_eq!(
            (e.class, e.code.as_deref()),
            (ErrorClass::Fatal, Some("AUTH_ERR_APIKEY_NOT_FOUND"))
        );
        let e = classify_error(&resp(502, "bad gateway", &[]), "x");
        assert_eq!(e.class, ErrorClass::Transient);
        let e = classify_error(&resp(429, "", &[]), "x");
        assert_eq!(e.class, ErrorClass::Throttled);
    }

    #[test]
    fn throttle_wait_falls_back_to_either_reset_header() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let h = resp(429, "", &[("x-rate-limit-reset", "1004")]).headers;
        assert_eq!(throttle_wait(&h, now), Some(Duration::from_secs(4)));
        let h = resp(429, "", &[("x-ratelimit-reset", "1002")]).headers;
        assert_eq!(throttle_wait(&h, now), Some(Duration::from_secs(2)));
        let h = resp(429, "", &[("x-ratelimit-reset", "900")]).headers;
        assert_eq!(throttle_wait(&h, now), Some(Duration::ZERO));
        assert_eq!(throttle_wait(&HeaderMap::new(), now), None);
    }

    #[test]
    fn default_pace_is_five_per_second() {
        assert_eq!(http_options(&instance(None, "us")).rate, Some(DEFAULT_RATE));
        let mut i = instance(None, "us");
        i.common.rate = Some(12.0);
        assert_eq!(http_options(&i).rate, Some(12.0));
    }
}
