//! Tencent Cloud Chat (IM server REST API v4). See `shared/providers/tencent.md`.
//!
//! Every call is a POST whose query string carries a UserSig (an HMAC token, [`usersig`]), so
//! no request URL may reach a log line or an error: the shared HTTP layer strips URLs from
//! transport errors, and the service's own `ErrorInfo` is scrubbed of the credential before it
//! is quoted. Answers are HTTP 200 with an `ErrorCode`; the class of a failure is decided by
//! that code (§4), never by the status. Capabilities depend on the group's type (§1), which
//! [`Tencent::fetch`] reads and [`Provider::capabilities_for`] turns into the group's
//! capabilities, so the planner refuses what a type cannot do before anything is written.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::secret::{Secret, SecretRef};
use crate::ctx::Ctx;
use crate::model::{Batch, GroupId, LiveGroup, MemberId, MemberOutcome, Mute, Op, OpKind, Role};
use crate::provider::http::{Call, HttpClient, HttpOptions, Renew, Response, Verdict};
use crate::provider::spec::{self, KindSpec, SettingError, SettingsInput};
use crate::provider::{
    BatchLimits, Capabilities, ErrorClass, Instance, Kind, KindSettings, MuteSupport, Provider,
    ProviderError, RequestCounts, rest,
};

pub mod usersig;

/// Tencent Cloud Chat as a kind: everything rosterd knows about it.
pub static SPEC: KindSpec = KindSpec {
    kind: Kind::Tencent,
    caps: CAPS,
    parse_member,
    parse_group,
    settings,
    schema: spec::settings_schema::<Settings>,
    connect: |i| Ok(Arc::new(Tencent::new(i)?)),
    sandbox_client: crate::sandbox::tencent::client,
};

/// The kind's capabilities; a group's type narrows them ([`Provider::capabilities_for`]).
pub const CAPS: Capabilities = Capabilities {
    roles: &[Role::Admin, Role::Participant],
    bans: true,
    mutes: MuteSupport::Timed,
    add_with_role: false,
    transfer_owner: true,
    max_batch: BatchLimits::ONE
        .with(OpKind::Add, 20)
        .with(OpKind::Ban, 20)
        .with(OpKind::Unban, 20)
        .with(OpKind::Remove, 100)
        .with(OpKind::Mute, 500)
        .with(OpKind::Unmute, 500),
    uniform_batch: |k| matches!(k, OpKind::Mute),
    idempotent: crate::model::kind::always,
};

/// Tencent UserIDs: at most 32 bytes of letters, digits, `_`, `-`, `@` and `.` (case-sensitive).
pub fn parse_member(raw: &str) -> Result<MemberId, String> {
    let s = raw.trim();
    if ids_invalid(s) {
        return Err(format!(
            "a Tencent UserID (1-32 characters of letters, digits, _ - @ .), found {raw:?}"
        ));
    }
    Ok(MemberId(s.to_string()))
}

pub fn parse_group(raw: &str) -> Result<GroupId, String> {
    let s = raw.trim();
    if s.is_empty() || s.len() > 48 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "a Tencent GroupId (1-48 characters, no spaces), found {raw:?}"
        ));
    }
    Ok(GroupId(s.to_string()))
}

/// The kind's keys, checked: `identifier` a UserID, `region` a known one (or `base_url` set).
fn settings(input: &SettingsInput<'_>) -> Result<KindSettings, Vec<SettingError>> {
    let s: Settings = spec::deserialize(&input.own).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    if let Err(m) = check_identifier(&s.identifier) {
        errors.push(SettingError::at("identifier", m));
    }
    match &s.region {
        Some(r) => {
            if let Err(m) = region_domain(r) {
                errors.push(SettingError::at("region", m));
            }
        }
        None if input.common.base_url.is_none() => errors.push(SettingError::entry(
            "set region (e.g. singapore) or base_url",
        )),
        None => {}
    }
    if errors.is_empty() {
        Ok(KindSettings::new(s))
    } else {
        Err(errors)
    }
}

fn check_identifier(identifier: &str) -> Result<(), String> {
    if ids_invalid(identifier) {
        return Err(format!(
            "must be a Tencent UserID (the app admin: 1-32 characters of letters, digits, _ - @ .), found {identifier:?}"
        ));
    }
    Ok(())
}

/// The REST domain of a region name (any case).
fn region_domain(region: &str) -> Result<&'static str, String> {
    let r = region.trim().to_ascii_lowercase();
    REGIONS
        .iter()
        .find(|(n, _)| *n == r)
        .map(|(_, d)| *d)
        .ok_or_else(|| {
            let names: Vec<&str> = REGIONS.iter().map(|(n, _)| *n).collect();
            format!("must be one of {}; found {r:?}", names.join(", "))
        })
}

/// Tencent's own keys in a `providers:` entry.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The app's SDKAppID.
    pub sdk_app_id: u64,
    /// The app admin account the calls act as.
    pub identifier: String,
    /// The app's key (`{ env: … }` / `{ file: … }`): it signs the UserSig and is never sent.
    pub secret_key: SecretRef,
    /// A regional domain name (`singapore`, `guangzhou`, ...); or set `base_url`.
    #[serde(default)]
    pub region: Option<String>,
    /// Raise (or lower) the most members one write call carries, per kind of call. The
    /// documentation disagrees across versions (adds: 20, 300 or 500 per call); the defaults
    /// are the most recent page's figures, and an over-limit answer (10005) is split anyway.
    #[serde(default)]
    pub max_batch: Option<MaxBatch>,
}

/// Per-call maxima by kind of write call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MaxBatch {
    /// `add_group_member` (default 20).
    #[serde(default)]
    pub add: Option<usize>,
    /// `delete_group_member` (default 100).
    #[serde(default)]
    pub remove: Option<usize>,
    /// `forbid_send_msg`, mutes and unmutes (default 500).
    #[serde(default)]
    pub mute: Option<usize>,
    /// `ban_group_member` / `unban_group_member` (default 20).
    #[serde(default)]
    pub ban: Option<usize>,
}

/// The regions and their REST domains (§2). Aliases name the same data centre.
pub const REGIONS: [(&str, &str); 13] = [
    ("china", "console.tim.qq.com"),
    ("guangzhou", "console.tim.qq.com"),
    ("singapore", "adminapisgp.im.qcloud.com"),
    ("seoul", "adminapikr.im.qcloud.com"),
    ("korea", "adminapikr.im.qcloud.com"),
    ("tokyo", "adminapijpn.im.qcloud.com"),
    ("frankfurt", "adminapiger.im.qcloud.com"),
    ("germany", "adminapiger.im.qcloud.com"),
    ("silicon-valley", "adminapiusa.im.qcloud.com"),
    ("usa", "adminapiusa.im.qcloud.com"),
    ("jakarta", "adminapiidn.im.qcloud.com"),
    ("mumbai", "adminapiind.im.qcloud.com"),
    ("riyadh", "adminapiksa.im.qcloud.com"),
];

/// Requests per second when the instance sets no `rate`: well under the service's 200 per
/// second per API, so other apps sharing the SDKAppID keep headroom (§5).
pub const DEFAULT_RATE: f64 = 20.0;

/// Members per page of `get_group_member_info` (the recommended 100, §3.2).
pub const DEFAULT_PAGE_SIZE: usize = 100;

/// Ban-list page size (the documented maximum, §3.8).
const BAN_PAGE: usize = 100;

/// `MuteTime`/`Duration` meaning "forever" (§3.6), and the `MuteUntil` that says so.
pub const FOREVER: u64 = u32::MAX as u64;

/// Lifetime of the UserSigs the client issues. Short, so a leaked one is worth little; renewed
/// [`USERSIG_RENEW`] before it ends.
pub const USERSIG_TTL: u64 = 24 * 3600;
const USERSIG_RENEW: u64 = 300;

/// The largest groups are 100,000 members (Community, §6.10); a listing past this is a server
/// ignoring paging.
const MAX_LISTED: usize = 200_000;

/// A Tencent Cloud Chat group type, by its REST name (§1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupType {
    /// Work: owner and members only, no mutes.
    Private,
    Public,
    /// Meeting.
    ChatRoom,
    /// Paged by cursor.
    Community,
    /// Live: no member list, no adds or deletes.
    AvChatRoom,
}

impl GroupType {
    pub fn parse(s: &str) -> Option<GroupType> {
        match s {
            "Private" | "Work" => Some(GroupType::Private),
            "Public" => Some(GroupType::Public),
            "ChatRoom" | "Meeting" => Some(GroupType::ChatRoom),
            "Community" => Some(GroupType::Community),
            "AVChatRoom" | "Live" => Some(GroupType::AvChatRoom),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GroupType::Private => "Private",
            GroupType::Public => "Public",
            GroupType::ChatRoom => "ChatRoom",
            GroupType::Community => "Community",
            GroupType::AvChatRoom => "AVChatRoom",
        }
    }

    /// Whether members can be made admins.
    pub fn has_admins(self) -> bool {
        !matches!(self, GroupType::Private | GroupType::AvChatRoom)
    }

    /// Whether members can be muted.
    pub fn has_mutes(self) -> bool {
        !matches!(self, GroupType::Private)
    }
}

/// The per-call maxima in force for one instance: the kind's defaults, raised or lowered by
/// the instance's `max_batch` (the documentation disagrees across versions, tencent.md §3).
fn maxima(m: Option<MaxBatch>) -> BatchLimits {
    let d = CAPS.max_batch;
    let m = m.unwrap_or_default();
    let mute = m.mute.unwrap_or(d.get(OpKind::Mute));
    let ban = m.ban.unwrap_or(d.get(OpKind::Ban));
    d.with(OpKind::Add, m.add.unwrap_or(d.get(OpKind::Add)))
        .with(OpKind::Remove, m.remove.unwrap_or(d.get(OpKind::Remove)))
        .with(OpKind::Mute, mute)
        .with(OpKind::Unmute, mute)
        .with(OpKind::Ban, ban)
        .with(OpKind::Unban, ban)
}

struct CachedSig {
    value: String,
    /// Unix seconds after which a new one is issued.
    renew_at: u64,
}

/// The UserSigs of one instance: minted from the key, cached until near their end, and
/// dropped when the service rejects one (70001), so the HTTP layer's one renewal mints anew.
struct Sigs {
    sdk_app_id: u64,
    identifier: String,
    secret: Secret,
    cache: Mutex<Option<CachedSig>>,
    /// Bumped at every mint, so a renewal after a rejection happens once across tasks.
    issue: AtomicU64,
}

impl Sigs {
    /// The cached UserSig (and its issue), or a fresh one when it is near its end at `now`.
    fn current(&self, now: SystemTime) -> (String, u64) {
        let now = unix(now);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.as_ref()
            && now < c.renew_at
        {
            return (c.value.clone(), self.issue.load(Ordering::SeqCst));
        }
        let value = usersig::generate(
            self.secret.expose(),
            &self.identifier,
            self.sdk_app_id,
            now,
            USERSIG_TTL,
        );
        // A derived credential: masked at every exit like the key it comes from.
        crate::redact::register(&value);
        *cache = Some(CachedSig {
            value: value.clone(),
            renew_at: now + USERSIG_TTL - USERSIG_RENEW,
        });
        (value, self.issue.fetch_add(1, Ordering::SeqCst) + 1)
    }

    /// What error text must never quote: the key and the UserSig in use.
    fn scrub(&self) -> Vec<String> {
        let mut out = vec![self.secret.expose().to_string()];
        if let Some(c) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            out.push(c.value.clone());
        }
        out
    }
}

#[async_trait]
impl Renew for Sigs {
    async fn renew(&self, _: &Ctx, _: &HttpClient, seen: u64) -> Result<(), ProviderError> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if self.issue.load(Ordering::SeqCst) == seen {
            *cache = None;
        }
        Ok(())
    }
}

/// A Tencent Cloud Chat REST client for one provider instance.
pub struct Tencent {
    instance: String,
    base: reqwest::Url,
    http: HttpClient,
    max_batch: BatchLimits,
    sigs: Arc<Sigs>,
    /// Members per page when listing. A field so tests can page through small pages.
    pub page_size: usize,
}

impl std::fmt::Debug for Tencent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        rest::debug_client(
            f,
            "Tencent",
            &[
                ("instance", &self.instance),
                ("sdk_app_id", &self.sigs.sdk_app_id),
                ("identifier", &self.sigs.identifier),
                ("secret_key", &self.sigs.secret),
                ("page_size", &self.page_size),
            ],
        )
    }
}

impl Tencent {
    /// Build the client of a `tencent` instance, resolving its secret key now.
    pub fn new(instance: &Instance) -> Result<Self, ProviderError> {
        let settings: &Settings = instance.settings()?;
        let key = rest::resolve(&instance.name, "secret_key", &settings.secret_key)?;
        Self::with_key(instance, key)
    }

    /// Build the client with an already resolved key (the demo and tests hand one in).
    pub fn with_key(instance: &Instance, secret: Secret) -> Result<Self, ProviderError> {
        let s: &Settings = instance.settings()?;
        let base = base_url(&instance.name, instance.common.base_url.as_deref(), s)?;
        check_identifier(&s.identifier).map_err(|m| {
            ProviderError::fatal(format!("provider {}: identifier {m}", instance.name))
        })?;
        let max_batch = maxima(s.max_batch);
        let sigs = Arc::new(Sigs {
            sdk_app_id: s.sdk_app_id,
            identifier: s.identifier.clone(),
            secret,
            cache: Mutex::new(None),
            issue: AtomicU64::new(0),
        });
        Ok(Tencent {
            instance: instance.name.clone(),
            base,
            http: HttpClient::new(http_options(instance))?.with_renewal(sigs.clone()),
            max_batch,
            sigs,
            page_size: DEFAULT_PAGE_SIZE,
        })
    }

    /// Use pages of `n` members (1..=200) when listing.
    pub fn with_page_size(mut self, n: usize) -> Self {
        self.page_size = n.clamp(1, 200);
        self
    }

    fn url(&self, command: &str, sig: &str) -> String {
        let app = self.sigs.sdk_app_id.to_string();
        let random = rand::random::<u32>().to_string();
        rest::url(
            &self.base,
            &["v4", "group_open_http_svc", command],
            &[
                ("sdkappid", &app),
                ("identifier", &self.sigs.identifier),
                ("usersig", sig),
                ("random", &random),
                ("contenttype", "json"),
            ],
        )
        .into()
    }

    /// One command: the envelope's fields on `ErrorCode` 0, else the classified error. An
    /// expired UserSig (70001) is renewed once by the HTTP layer.
    async fn command(
        &self,
        ctx: &Ctx,
        command: &'static str,
        body: Value,
        write: bool,
        label: &'static str,
    ) -> Result<Value, ProviderError> {
        self.http
            .call(
                ctx,
                || self.request(ctx, command, body.clone(), write, label),
                |r| verdict(self.classify(r, label)),
            )
            .await
    }

    /// The request of one command, signed with the UserSig in force.
    fn request(
        &self,
        ctx: &Ctx,
        command: &str,
        body: Value,
        write: bool,
        label: &'static str,
    ) -> Call {
        let (sig, issue) = self.sigs.current(ctx.now());
        Call {
            method: Method::POST,
            url: self.url(command, &sig),
            headers: json_headers(),
            body: Some(body),
            write,
            idempotent: true,
            label,
            credentials: issue,
        }
    }

    fn classify(&self, r: &Response, label: &str) -> Result<Value, ProviderError> {
        classify(r, label, &self.sigs.scrub(), &self.instance)
    }

    async fn group_info(
        &self,
        ctx: &Ctx,
        group: &GroupId,
    ) -> Result<(GroupType, Option<MemberId>), ProviderError> {
        let v = self
            .command(
                ctx,
                "get_group_info",
                json!({
                    "GroupIdList": [group.as_str()],
                    "ResponseFilter": {"GroupBaseInfoFilter": ["Type", "Owner_Account", "MemberNum"]},
                }),
                false,
                "get group info",
            )
            .await?;
        let info = v["GroupInfo"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|g| g["GroupId"].as_str() == Some(group.as_str()))
            })
            .ok_or_else(|| {
                ProviderError::transient(format!("get group info: no entry for group {group}"))
            })?;
        let code = info["ErrorCode"].as_u64().unwrap_or(0);
        if code != 0 {
            let text = info["ErrorInfo"].as_str().unwrap_or_default();
            return Err(ProviderError::fatal(format!(
                "group {group}: Tencent error {code}: {text}"
            ))
            .with_code(code.to_string()));
        }
        let ty = info["Type"].as_str().unwrap_or_default();
        let ty = GroupType::parse(ty).ok_or_else(|| {
            ProviderError::fatal(format!("group {group}: unknown group type {ty:?}"))
        })?;
        let owner = info["Owner_Account"]
            .as_str()
            .filter(|o| !o.is_empty())
            .map(MemberId::new);
        Ok((ty, owner))
    }

    /// Every page of the member list: (account, role, mute end). A roster that changed size
    /// while being paged is read again, since offsets shift (§3.2).
    async fn members(
        &self,
        ctx: &Ctx,
        group: &GroupId,
        ty: GroupType,
    ) -> Result<Vec<(String, String, u64)>, ProviderError> {
        'attempt: for _ in 0..3 {
            let mut out: Vec<(String, String, u64)> = Vec::new();
            let mut offset = 0usize;
            let mut next = String::new();
            let mut total: Option<u64> = None;
            loop {
                let mut body = json!({
                    "GroupId": group.as_str(),
                    "Limit": self.page_size,
                    "MemberInfoFilter": ["Role", "MuteUntil"],
                });
                if ty == GroupType::Community {
                    body["Next"] = json!(next);
                } else {
                    body["Offset"] = json!(offset);
                }
                let v = self
                    .command(ctx, "get_group_member_info", body, false, "list members")
                    .await?;
                let num = v["MemberNum"].as_u64();
                if total.is_some() && num.is_some() && total != num {
                    continue 'attempt;
                }
                total = total.or(num);
                let page = v["MemberList"].as_array().cloned().unwrap_or_default();
                let n = page.len();
                for m in page {
                    let account = m["Member_Account"].as_str().ok_or_else(|| {
                        ProviderError::transient("list members: an entry has no Member_Account")
                    })?;
                    // A missing role is an unreadable entry, not a plain member: guessing
                    // could demote an admin.
                    let role = m["Role"].as_str().unwrap_or("(none)").to_string();
                    let until = m
                        .get("MuteUntil")
                        .or_else(|| m.get("ShutUpUntil"))
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                    out.push((account.to_string(), role, until));
                }
                if out.len() > MAX_LISTED {
                    return Err(ProviderError::fatal(format!(
                        "list members: more than {MAX_LISTED} entries; the server seems to ignore paging"
                    )));
                }
                if ty == GroupType::Community {
                    next = v["Next"].as_str().unwrap_or_default().to_string();
                    if next.is_empty() {
                        return Ok(out);
                    }
                } else {
                    offset += n;
                    // Without a role filter MemberNum counts exactly what the pages list. A
                    // short page before that count is a server that pages smaller than asked:
                    // read on. An empty one is a listing that ended early, and a roster short
                    // of members would plan their removal.
                    match total {
                        Some(t) if (offset as u64) < t && n == 0 => {
                            return Err(ProviderError::transient(format!(
                                "list members: the listing of {group} ended after {offset} of its {t} members"
                            )));
                        }
                        Some(t) if (offset as u64) < t => {}
                        Some(_) => return Ok(out),
                        None if n < self.page_size => return Ok(out),
                        None => {}
                    }
                }
            }
        }
        Err(ProviderError::transient(format!(
            "list members: the roster of {group} kept changing while it was read"
        )))
    }

    /// The ban list, or `None` where the app's edition or console switch has no bans.
    async fn bans(
        &self,
        ctx: &Ctx,
        group: &GroupId,
    ) -> Result<Option<BTreeSet<MemberId>>, ProviderError> {
        let mut out = BTreeSet::new();
        let mut offset = 0u64;
        loop {
            let v = match self
                .command(
                    ctx,
                    "get_group_ban_member",
                    json!({"GroupId": group.as_str(), "Limit": BAN_PAGE, "Offset": offset}),
                    false,
                    "list banned",
                )
                .await
            {
                Ok(v) => v,
                Err(e) if matches!(e.code.as_deref(), Some("10059" | "10007")) => return Ok(None),
                Err(e) => return Err(e),
            };
            for b in v["BannedAccountList"].as_array().into_iter().flatten() {
                if let Some(a) = b["Member_Account"].as_str() {
                    out.insert(MemberId::new(a));
                }
            }
            let next = v["NextOffset"].as_u64().unwrap_or(0);
            if next == 0 || next <= offset || out.len() > MAX_LISTED {
                return Ok(Some(out));
            }
            offset = next;
        }
    }

    /// Send a bulk write in as few calls as the service takes (the HTTP layer splits): a
    /// call answered with 10005 (too many accounts) is halved, and the smaller size is kept
    /// for later batches; an add answered with 10019 (an unknown account fails the whole call)
    /// is halved until the unknown accounts stand alone, each then a per-member failure.
    async fn bulk(
        &self,
        ctx: &Ctx,
        group: &GroupId,
        batch: &Batch,
    ) -> Result<Vec<MemberOutcome>, ProviderError> {
        let kind = batch.kind;
        let mute_time = match (kind, batch.ops.first().and_then(|o| o.mute)) {
            (OpKind::Mute, Some(mu)) => mute_seconds(mu, ctx.now()),
            (OpKind::Mute, None) => {
                return Err(ProviderError::fatal(format!(
                    "mute of {} carries no end",
                    batch.ops.first().map_or("nobody", |o| o.member.as_str())
                )));
            }
            _ => 0,
        };
        if kind == OpKind::Mute && mute_time == 0 {
            // Already past its end: nothing to send, and 0 would mean "unmute".
            return Ok(batch
                .ops
                .iter()
                .map(|o| MemberOutcome::done(o.member.clone()))
                .collect());
        }
        let (command, label) = bulk_command(kind);
        let g = group.as_str();
        self.http
            .call_split(
                ctx,
                label,
                &batch.ops,
                |ops| {
                    let accounts: Vec<&str> = ops.iter().map(|o| o.member.as_str()).collect();
                    let body = match kind {
                        OpKind::Add => {
                            let list: Vec<Value> = accounts
                                .iter()
                                .map(|a| json!({"Member_Account": a}))
                                .collect();
                            json!({"GroupId": g, "Silence": 1, "MemberList": list})
                        }
                        OpKind::Remove => {
                            json!({"GroupId": g, "Silence": 1, "Reason": "rosterd sync", "MemberToDel_Account": accounts})
                        }
                        OpKind::Mute | OpKind::Unmute => {
                            json!({"GroupId": g, "Members_Account": accounts, "MuteTime": mute_time})
                        }
                        OpKind::Ban => {
                            json!({"GroupId": g, "Members_Account": accounts, "Duration": FOREVER, "Description": "rosterd: banned by manifest"})
                        }
                        _ => json!({"GroupId": g, "Members_Account": accounts}),
                    };
                    self.request(ctx, command, body, true, label)
                },
                |ops, r| match self.classify(r, label) {
                    Ok(v) => Verdict::Done(bulk_outcomes(kind, ops, &v)),
                    Err(e) if e.code.as_deref() == Some("10005") => {
                        tracing::debug!(instance = %self.instance, op = %kind, "over the per-call maximum");
                        Verdict::Split {
                            error: e,
                            learn: true,
                        }
                    }
                    Err(e) if e.code.as_deref() == Some("10019") && kind == OpKind::Add => {
                        Verdict::Split {
                            error: e,
                            learn: false,
                        }
                    }
                    Err(e) => verdict(Err(e)),
                },
                |op, e| {
                    let code = e.code.clone().unwrap_or_default();
                    let message = if code == "10019" {
                        "the account does not exist in the app".to_string()
                    } else {
                        e.message
                    };
                    MemberOutcome::failed(op.member.clone(), code, message)
                },
            )
            .await
    }

    /// One single-member call. A refusal about this member (bad parameter, no permission,
    /// unknown account) is its outcome; anything else fails the call.
    async fn single(
        &self,
        ctx: &Ctx,
        command: &'static str,
        body: Value,
        label: &'static str,
        member: &MemberId,
    ) -> Result<MemberOutcome, ProviderError> {
        match self.command(ctx, command, body, true, label).await {
            Ok(_) => Ok(MemberOutcome::done(member.clone())),
            Err(e) if matches!(e.code.as_deref(), Some("10004" | "10007" | "10019")) => {
                Ok(MemberOutcome::failed(
                    member.clone(),
                    e.code.clone().unwrap_or_default(),
                    e.message,
                ))
            }
            Err(e) => Err(e),
        }
    }
}

impl Tencent {
    /// Hand the group to `new`. Tencent demotes the previous owner to `Member`, while rosterd's
    /// model (and the plan made from it) keeps every other member's role; so where the type
    /// has admins the previous owner, who was read as an admin, is made `Admin` again and any
    /// change the manifest wants for them is planned from there.
    async fn transfer(
        &self,
        ctx: &Ctx,
        group: &GroupId,
        new: &MemberId,
    ) -> Result<MemberOutcome, ProviderError> {
        let (ty, previous) = self.group_info(ctx, group).await?;
        let g = group.as_str();
        let out = self
            .single(
                ctx,
                "change_group_owner",
                json!({"GroupId": g, "NewOwner_Account": new.as_str()}),
                "transfer owner",
                new,
            )
            .await?;
        if let (true, true, Some(prev)) = (out.outcome.is_ok(), ty.has_admins(), previous)
            && &prev != new
        {
            let restored = self
                .single(
                    ctx,
                    "modify_group_member_info",
                    json!({"GroupId": g, "Member_Account": prev.as_str(), "Role": "Admin"}),
                    "keep previous owner admin",
                    &prev,
                )
                .await?;
            if !restored.outcome.is_ok() {
                tracing::warn!(instance = %self.instance, member = %prev, outcome = ?restored.outcome, "the previous owner could not be kept an admin");
            }
        }
        Ok(out)
    }
}

/// The command and label of a bulk kind of write.
fn bulk_command(kind: OpKind) -> (&'static str, &'static str) {
    match kind {
        OpKind::Add => ("add_group_member", "add"),
        OpKind::Remove => ("delete_group_member", "remove"),
        OpKind::Mute => ("forbid_send_msg", "mute"),
        OpKind::Unmute => ("forbid_send_msg", "unmute"),
        OpKind::Ban => ("ban_group_member", "ban"),
        _ => ("unban_group_member", "unban"),
    }
}

/// Per-member outcomes of an accepted bulk call: adds answer per account (§3.3), the others
/// act on every account or fail whole.
fn bulk_outcomes(kind: OpKind, ops: &[Op], v: &Value) -> Vec<MemberOutcome> {
    if kind != OpKind::Add {
        return ops
            .iter()
            .map(|o| MemberOutcome::done(o.member.clone()))
            .collect();
    }
    let results: HashMap<&str, u64> = v["MemberList"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| Some((m["Member_Account"].as_str()?, m["Result"].as_u64()?)))
        .collect();
    ops.iter()
        .filter_map(|o| {
            let m = o.member.clone();
            // A member the answer does not mention gets no outcome: the engine reports it.
            Some(match *results.get(o.member.as_str())? {
                1 => MemberOutcome::done(m),
                2 => MemberOutcome::already(m),
                3 => MemberOutcome::failed(
                    m,
                    "PENDING",
                    "waiting for the invitee to confirm (Result 3)",
                ),
                r => MemberOutcome::failed(
                    m,
                    format!("RESULT_{r}"),
                    "the service did not add this account (banned, or refused)",
                ),
            })
        })
        .collect()
}

/// A classified answer as the HTTP layer's verdict: an expired UserSig (70001) is renewed.
fn verdict<T>(r: Result<T, ProviderError>) -> Verdict<T> {
    match r {
        Err(e) if e.code.as_deref() == Some("70001") => Verdict::Reauth(e),
        other => other.into(),
    }
}

/// Whether a text is not a Tencent UserID (surrounding spaces aside).
fn ids_invalid(s: &str) -> bool {
    let s = s.trim();
    s.is_empty()
        || s.len() > 32
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'@' || b == b'.')
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `MuteTime` for a mute: seconds from `now` to its end (rounded up, so a mute never ends
/// early), [`FOREVER`] without an end, 0 when the end has passed.
pub fn mute_seconds(mute: Mute, now: SystemTime) -> u64 {
    match mute {
        Mute::Indefinite => FOREVER,
        Mute::Until(t) => match t.duration_since(now) {
            Ok(d) => {
                let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
                s.min(FOREVER - 1)
            }
            Err(_) => 0,
        },
    }
}

fn json_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h
}

/// `common.base_url`, else `https://{the region's domain}`. Validation checked the region
/// with its position; an instance built by hand is checked here.
fn base_url(name: &str, over: Option<&str>, s: &Settings) -> Result<reqwest::Url, ProviderError> {
    let raw = match (over, s.region.as_deref()) {
        (Some(u), _) => u.to_string(),
        (None, Some(r)) => {
            let domain = region_domain(r)
                .map_err(|m| ProviderError::fatal(format!("provider {name}: region {m}")))?;
            format!("https://{domain}")
        }
        (None, None) => {
            return Err(ProviderError::fatal(format!(
                "provider {name}: set region (e.g. singapore) or base_url"
            )));
        }
    };
    rest::base_url(name, "base_url", &raw)
}

/// Pacing of one instance: its own settings, else 20 requests/s; backoff from 250 ms capped at
/// a few seconds, since throttled answers carry no Retry-After (§5).
fn http_options(instance: &Instance) -> HttpOptions {
    HttpOptions {
        min_backoff: Duration::from_millis(250),
        max_backoff: Duration::from_secs(5),
        throttle_wait: Duration::from_millis(250),
        max_throttle_wait: Duration::from_secs(5),
        ..HttpOptions::for_instance(instance, Some(DEFAULT_RATE), Duration::ZERO)
    }
}

/// Codes that mean the credentials or the app are wrong: stop, and say which setting to check.
fn is_auth_code(code: u64) -> bool {
    matches!(
        code,
        60004 | 60005 | 60006 | 60010 | 60016 | 60020 | 70000..=70999
    )
}

/// The class of a non-zero `ErrorCode` (§4).
pub fn class_of(code: u64) -> ErrorClass {
    match code {
        10006 | 60007 | 60011 | 60018 | 60019 => ErrorClass::Throttled,
        10002 | 60008 => ErrorClass::Transient,
        _ => ErrorClass::Fatal,
    }
}

/// Turn one answer into its fields or a classified error. The message quotes the service's
/// `ErrorInfo` with `scrub` (the UserSig, the key) blanked, and never the URL.
fn classify(
    r: &Response,
    label: &str,
    scrub: &[String],
    instance: &str,
) -> Result<Value, ProviderError> {
    if r.status != 200 {
        let msg = format!("{label}: HTTP {}", r.status);
        return Err(ProviderError {
            class: rest::class_of_status(r.status),
            code: None,
            message: msg,
            retry_after: crate::provider::http::retry_after(&r.headers),
        });
    }
    let v: Value = r.json()?;
    let code = match &v["ErrorCode"] {
        Value::Number(n) => n.as_u64().unwrap_or(u64::MAX),
        _ if v["ActionStatus"] == "OK" => 0,
        _ => {
            return Err(ProviderError::transient(format!(
                "{label}: an answer without ErrorCode"
            )));
        }
    };
    if code == 0 {
        return Ok(v);
    }
    let mut info = v["ErrorInfo"].as_str().unwrap_or_default().to_string();
    for s in scrub.iter().filter(|s| !s.is_empty()) {
        info = info.replace(s.as_str(), "***");
    }
    let message = if is_auth_code(code) {
        format!(
            "provider {instance}: {label}: authentication failed (Tencent error {code}: {info}); \
             check sdk_app_id, identifier, secret_key and region"
        )
    } else {
        format!("{label}: Tencent error {code}: {info}")
    };
    Err(ProviderError {
        class: class_of(code),
        code: Some(code.to_string()),
        message,
        retry_after: None,
    })
}

#[async_trait]
impl Provider for Tencent {
    async fn fetch(&self, ctx: &Ctx, group: &GroupId) -> Result<LiveGroup, ProviderError> {
        let (ty, owner_account) = self.group_info(ctx, group).await?;
        if ty == GroupType::AvChatRoom {
            return Err(ProviderError::fatal(format!(
                "group {group} is of type AVChatRoom (Live): it has no member list and takes no \
                 adds or removals, so rosterd cannot manage it"
            )));
        }
        let (members, mutes, role_owner) =
            self.roster(ctx, group, ty, owner_account.as_ref()).await?;
        let bans = self.bans(ctx, group).await?;
        Ok(LiveGroup {
            members,
            owner: owner_account.or(role_owner),
            bans,
            mutes,
            me: Some(MemberId::new(self.sigs.identifier.clone())),
            unresolved: BTreeSet::new(),
            group_type: Some(ty.as_str().to_string()),
        })
    }

    /// Only what the writes could change: the group's info after an owner transfer, the member
    /// listing (roles, mutes, the owner's row) after member writes, the ban list after bans.
    async fn refetch(
        &self,
        ctx: &Ctx,
        group: &GroupId,
        before: &LiveGroup,
        touched: &BTreeSet<OpKind>,
    ) -> Result<LiveGroup, ProviderError> {
        let known = before.group_type.as_deref().and_then(GroupType::parse);
        let any = |f: fn(OpKind) -> bool| touched.iter().copied().any(f);
        // A transfer changes the group's info, which only a whole read shows.
        let (Some(ty), false) = (known, any(OpKind::changes_owner)) else {
            return self.fetch(ctx, group).await;
        };
        let mut after = before.clone();
        if any(OpKind::changes_roster) {
            let (members, mutes, role_owner) =
                self.roster(ctx, group, ty, before.owner.as_ref()).await?;
            after.members = members;
            after.mutes = mutes;
            after.owner = before.owner.clone().or(role_owner);
        }
        if any(OpKind::changes_bans) {
            after.bans = self.bans(ctx, group).await?;
        }
        Ok(after)
    }

    async fn apply(
        &self,
        ctx: &Ctx,
        group: &GroupId,
        batch: &Batch,
    ) -> Result<Vec<MemberOutcome>, ProviderError> {
        self.apply_batch(ctx, group, batch).await
    }

    fn capabilities_for(&self, live: &LiveGroup) -> Capabilities {
        self.capabilities(live)
    }

    fn requests(&self) -> RequestCounts {
        self.http.counts()
    }
}

/// A group's roster as read: members by role, mutes, and the owner's row.
type Roster = (
    BTreeMap<MemberId, Role>,
    BTreeMap<MemberId, Mute>,
    Option<MemberId>,
);

impl Tencent {
    /// The member listing as the model's roster. `owner` is the owner the group's info names:
    /// a group created without one lists none, but an owner is always a member, so a listing
    /// without them is partial and no roster is made from it.
    async fn roster(
        &self,
        ctx: &Ctx,
        group: &GroupId,
        ty: GroupType,
        owner: Option<&MemberId>,
    ) -> Result<Roster, ProviderError> {
        let listed = self.members(ctx, group, ty).await?;
        let mut members = BTreeMap::new();
        let mut mutes = BTreeMap::new();
        let mut role_owner = None;
        for (account, role, until) in listed {
            let id = MemberId::new(account);
            let role = match role.as_str() {
                "Owner" => {
                    role_owner = Some(id.clone());
                    if ty.has_admins() {
                        Role::Admin
                    } else {
                        Role::Participant
                    }
                }
                "Admin" => Role::Admin,
                "Member" => Role::Participant,
                other => {
                    return Err(ProviderError::fatal(format!(
                        "list members: member {id} has an unknown role {other:?}"
                    )));
                }
            };
            if until != 0 {
                let mute = if until >= FOREVER {
                    Mute::Indefinite
                } else {
                    // The service's end is its receipt time + MuteTime; the planner allows for
                    // that difference (plan::MUTE_END_TOLERANCE).
                    Mute::Until(UNIX_EPOCH + Duration::from_secs(until))
                };
                mutes.insert(id.clone(), mute);
            }
            members.insert(id, role);
        }
        if let Some(owner) = owner
            && !members.contains_key(owner)
        {
            return Err(ProviderError::fatal(format!(
                "list members: the listing of group {group} lacks its owner {owner}; it is \
                 incomplete, so no plan is made from it"
            )));
        }
        Ok((members, mutes, role_owner))
    }

    async fn apply_batch(
        &self,
        ctx: &Ctx,
        group: &GroupId,
        batch: &Batch,
    ) -> Result<Vec<MemberOutcome>, ProviderError> {
        match batch.kind {
            OpKind::Add
            | OpKind::Remove
            | OpKind::Mute
            | OpKind::Unmute
            | OpKind::Ban
            | OpKind::Unban => self.bulk(ctx, group, batch).await,
            kind => {
                let mut out = Vec::with_capacity(batch.ops.len());
                for op in &batch.ops {
                    let g = group.as_str();
                    let a = op.member.as_str();
                    let outcome = match kind {
                        OpKind::Promote | OpKind::Demote => {
                            let role = match op.role {
                                Some(Role::Admin) => "Admin",
                                Some(_) => "Member",
                                None => {
                                    return Err(ProviderError::fatal(format!(
                                        "{kind} of {a} carries no target role"
                                    )));
                                }
                            };
                            self.single(
                                ctx,
                                "modify_group_member_info",
                                json!({"GroupId": g, "Member_Account": a, "Role": role}),
                                kind.as_str(),
                                &op.member,
                            )
                            .await?
                        }
                        _ => self.transfer(ctx, group, &op.member).await?,
                    };
                    out.push(outcome);
                }
                Ok(out)
            }
        }
    }

    fn capabilities(&self, live: &LiveGroup) -> Capabilities {
        let ty = live
            .group_type
            .as_deref()
            .and_then(GroupType::parse)
            .unwrap_or(GroupType::Public);
        Capabilities {
            roles: if ty.has_admins() {
                &[Role::Admin, Role::Participant]
            } else {
                &[Role::Participant]
            },
            bans: live.bans.is_some(),
            mutes: if ty.has_mutes() {
                MuteSupport::Timed
            } else {
                MuteSupport::No
            },
            transfer_owner: ty != GroupType::AvChatRoom,
            max_batch: self.max_batch,
            ..*Kind::Tencent.capabilities()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::CommonSettings;

    fn instance(base_url: Option<&str>, region: Option<&str>, max: Option<MaxBatch>) -> Instance {
        Instance {
            name: "tim".into(),
            kind: Kind::Tencent,
            common: CommonSettings {
                base_url: base_url.map(String::from),
                ..CommonSettings::default()
            },
            settings: KindSettings::new(Settings {
                sdk_app_id: 1_400_000_000,
                identifier: "administrator".into(),
                secret_key: SecretRef::Env("ROSTERD_TEST_UNUSED_TENCENT".into()),
                region: region.map(String::from),
                max_batch: max,
            }),
        }
    }

    fn resp(status: u16, body: &str) -> Response {
        Response {
            status,
            headers: HeaderMap::new(),
            body: bytes::Bytes::from(body.to_string()),
            received: std::time::SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn tencent_region_selects_the_domain_and_base_url_overrides_it() {
        let c =
            Tencent::with_key(&instance(None, Some("Singapore"), None), Secret::new("k")).unwrap();
        let u = c.url("add_group_member", "SIG");
        assert!(
            u.starts_with("https://adminapisgp.im.qcloud.com/v4/group_open_http_svc/add_group_member?sdkappid=1400000000&identifier=administrator&usersig=SIG&random="),
            "{u}"
        );
        assert!(u.ends_with("&contenttype=json"));
        let e =
            Tencent::with_key(&instance(None, Some("mars"), None), Secret::new("k")).unwrap_err();
        assert!(e.message.contains("region"), "{e}");
        let c = Tencent::with_key(
            &instance(Some("http://127.0.0.1:9/"), Some("mars"), None),
            Secret::new("k"),
        )
        .unwrap();
        assert!(
            c.url("x", "s")
                .starts_with("http://127.0.0.1:9/v4/group_open_http_svc/x?")
        );
    }

    #[test]
    fn tencent_debug_output_hides_the_key() {
        let c = Tencent::with_key(
            &instance(None, Some("tokyo"), None),
            Secret::new("topsecretkey"),
        )
        .unwrap();
        let (sig, _) = c
            .sigs
            .current(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let d = format!("{c:?}");
        assert!(!d.contains("topsecretkey") && !d.contains(&sig), "{d}");
    }

    #[test]
    fn tencent_usersig_is_cached_until_shortly_before_its_end() {
        let mut now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let c = Tencent::with_key(&instance(None, Some("tokyo"), None), Secret::new("k")).unwrap();
        let (first, issue) = c.sigs.current(now);
        now += Duration::from_secs(USERSIG_TTL - USERSIG_RENEW - 1);
        assert_eq!(c.sigs.current(now), (first.clone(), issue));
        now += Duration::from_secs(1);
        let (second, next) = c.sigs.current(now);
        assert_eq!(next, issue + 1);
        assert_ne!(second, first);
        let claims = usersig::decode(&second).unwrap();
        assert_eq!(claims.time, 1_700_000_000 + USERSIG_TTL - USERSIG_RENEW);
        assert!(usersig::verify(&claims, "k"));
    }

    #[test]
    fn tencent_errors_are_classified_by_error_code_in_the_200_envelope() {
        let c = |body: &str| classify(&resp(200, body), "x", &["SIG".into()], "tim");
        assert!(c(r#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}"#).is_ok());
        for (code, class) in [
            (10006, ErrorClass::Throttled),
            (60007, ErrorClass::Throttled),
            (10002, ErrorClass::Transient),
            (10007, ErrorClass::Fatal),
            (70009, ErrorClass::Fatal),
        ] {
            let e = c(&format!(
                r#"{{"ActionStatus":"FAIL","ErrorCode":{code},"ErrorInfo":"bad usersig SIG"}}"#
            ))
            .unwrap_err();
            assert_eq!(
                (e.class, e.code.as_deref()),
                (class, Some(code.to_string().as_str()))
            );
            assert!(!e.message.contains("SIG"), "{e}");
        }
        let e =
            c(r#"{"ActionStatus":"FAIL","ErrorCode":70001,"ErrorInfo":"expired"}"#).unwrap_err();
        assert!(e.message.contains("authentication failed"), "{e}");
        let e = classify(&resp(502, "bad gateway"), "x", &[], "tim").unwrap_err();
        assert_eq!(e.class, ErrorClass::Transient);
        let e = classify(&resp(200, "<html>"), "x", &[], "tim").unwrap_err();
        assert_eq!(e.class, ErrorClass::Transient);
    }

    #[test]
    fn tencent_mute_time_counts_from_the_clock_passed_in() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(mute_seconds(Mute::Indefinite, now), FOREVER);
        assert_eq!(
            mute_seconds(Mute::Until(now + Duration::from_secs(3600)), now),
            3600
        );
        assert_eq!(
            mute_seconds(Mute::Until(now + Duration::from_millis(1500)), now),
            2
        );
        assert_eq!(
            mute_seconds(Mute::Until(now - Duration::from_secs(1)), now),
            0
        );
    }

    #[test]
    fn tencent_max_batch_override_raises_the_maximum_per_kind() {
        let c = Tencent::with_key(
            &instance(
                None,
                Some("tokyo"),
                Some(MaxBatch {
                    add: Some(300),
                    remove: Some(500),
                    ..MaxBatch::default()
                }),
            ),
            Secret::new("k"),
        )
        .unwrap();
        let caps = c.capabilities_for(&LiveGroup {
            group_type: Some("Public".into()),
            bans: Some(BTreeSet::new()),
            ..LiveGroup::default()
        });
        assert_eq!(caps.max_batch.get(OpKind::Add), 300);
        assert_eq!(caps.max_batch.get(OpKind::Remove), 500);
        assert_eq!(caps.max_batch.get(OpKind::Mute), 500);
        assert_eq!(caps.max_batch.get(OpKind::Ban), 20);
        assert_eq!(caps.max_batch.get(OpKind::Promote), 1);
        let d = Tencent::with_key(&instance(None, Some("tokyo"), None), Secret::new("k")).unwrap();
        let work = d.capabilities_for(&LiveGroup {
            group_type: Some("Private".into()),
            ..LiveGroup::default()
        });
        assert_eq!(work.max_batch.get(OpKind::Add), 20);
        assert!(!work.bans && work.mutes == MuteSupport::No && !work.supports_role(Role::Admin));
    }
}
