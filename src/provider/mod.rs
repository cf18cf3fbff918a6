//! The provider seam: what each provider kind can do (as data, checked at validation with no
//! network), the `Provider` trait every client implements, and the error classes the shared
//! HTTP layer acts on.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::ctx::Ctx;
use crate::model::{Batch, GroupId, LiveGroup, MemberId, MemberOutcome, OpKind, Role};

pub mod bitrix24;
pub mod cometchat;
pub mod http;
pub mod memory;
pub mod tencent;
pub mod waha;

/// Every provider kind rosterd knows. The exhaustive `match`es on this type are the places a
/// new provider must be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Cometchat,
    Tencent,
    Waha,
    Bitrix24,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Cometchat, Kind::Tencent, Kind::Waha, Kind::Bitrix24];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Cometchat => "cometchat",
            Kind::Tencent => "tencent",
            Kind::Waha => "waha",
            Kind::Bitrix24 => "bitrix24",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// What the provider kind supports, as data.
    pub fn capabilities(self) -> &'static Capabilities {
        match self {
            Kind::Cometchat => &COMETCHAT_CAPS,
            Kind::Tencent => &TENCENT_CAPS,
            Kind::Waha => &WAHA_CAPS,
            Kind::Bitrix24 => &BITRIX24_CAPS,
        }
    }

    /// Normalise a raw member id written in a manifest or people.yaml to the provider's form,
    /// or say what was expected.
    pub fn normalize_member(self, raw: &str) -> Result<MemberId, String> {
        match self {
            Kind::Cometchat => ids::cometchat(raw),
            Kind::Tencent => ids::tencent(raw),
            Kind::Waha => ids::waha(raw),
            Kind::Bitrix24 => ids::bitrix24(raw),
        }
    }

    /// Check a group id's syntax.
    pub fn normalize_group(self, raw: &str) -> Result<GroupId, String> {
        match self {
            Kind::Cometchat => ids::cometchat(raw).map(|m| GroupId(m.0)),
            Kind::Tencent => ids::tencent_group(raw),
            Kind::Waha => ids::waha_group(raw),
            Kind::Bitrix24 => ids::bitrix24_group(raw),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether and how a provider mutes members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum MuteSupport {
    No,
    Indefinite,
    Timed,
}

/// Facts about a provider kind that do not change, so `validate` can enforce them offline.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    /// Roles a member may hold. A manifest role outside this list fails validation.
    pub roles: &'static [Role],
    pub bans: bool,
    pub mutes: MuteSupport,
    /// The add call puts members straight into their target role (and may mix roles in one
    /// call); otherwise they are added as participants and promoted afterwards.
    pub add_with_role: bool,
    pub transfer_owner: bool,
    /// The most members one write call of each kind may carry; 1 where the API has no bulk call.
    pub max_batch: BatchLimits,
    /// Members of one batch of this kind must share the same parameter (target role, mute
    /// duration), because the call takes one value for all of them.
    pub uniform_batch: fn(OpKind) -> bool,
    /// A write of this kind may be repeated without harm (the provider answers "already
    /// done"), so the HTTP layer may retry it after a timeout or a reset.
    pub idempotent: fn(OpKind) -> bool,
}

impl Capabilities {
    pub fn supports_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

fn always(_: OpKind) -> bool {
    true
}

/// Members per write call, per kind of operation. Data rather than a function, so an
/// instance's settings (Tencent's `max_batch`) or the pace chosen for one run (WhatsApp's adds)
/// can change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits([usize; OpKind::ALL.len()]);

impl BatchLimits {
    /// One member per call for every kind: an API with no bulk calls.
    pub const ONE: BatchLimits = BatchLimits([1; OpKind::ALL.len()]);

    /// The same limits with `n` (at least 1) members per call of `kind`.
    pub const fn with(mut self, kind: OpKind, n: usize) -> Self {
        self.0[kind as usize] = if n == 0 { 1 } else { n };
        self
    }

    /// Members per call of `kind`; at least 1.
    pub const fn get(&self, kind: OpKind) -> usize {
        self.0[kind as usize]
    }
}

pub static COMETCHAT_CAPS: Capabilities = Capabilities {
    roles: &[Role::Admin, Role::Moderator, Role::Participant],
    bans: true,
    mutes: MuteSupport::No,
    add_with_role: true,
    transfer_owner: true,
    max_batch: BatchLimits::ONE.with(OpKind::Add, 25).with(OpKind::Ban, 25),
    uniform_batch: |_| false,
    idempotent: always,
};

pub static TENCENT_CAPS: Capabilities = Capabilities {
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
    idempotent: always,
};

pub static WAHA_CAPS: Capabilities = Capabilities {
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
    uniform_batch: |_| false,
    // Every repeated add notifies the group and counts towards anti-spam limits; only reads
    // are retried blindly, writes are verified by re-reading instead.
    idempotent: |k| !matches!(k, OpKind::Add),
};

pub static BITRIX24_CAPS: Capabilities = Capabilities {
    roles: &[Role::Admin, Role::Participant],
    bans: false,
    mutes: MuteSupport::No,
    add_with_role: false,
    transfer_owner: true,
    // One planned batch is one `batch` request of at most 50 commands: adds carry 50 ids per
    // command (the 50th command re-lists to verify), removals and manager changes one member
    // per command (manager changes keep one command to verify), ownership one.
    max_batch: BatchLimits::ONE
        .with(OpKind::Add, bitrix24::MAX_ADDS_PER_REQUEST)
        .with(OpKind::Remove, bitrix24::MAX_COMMANDS)
        .with(OpKind::Promote, bitrix24::MAX_MANAGER_CHANGES)
        .with(OpKind::Demote, bitrix24::MAX_MANAGER_CHANGES),
    uniform_batch: |_| false,
    idempotent: always,
};

/// Member and group id syntax per provider kind.
pub mod ids {
    use super::*;

    /// CometChat UIDs/GUIDs: at most 100 of `a-z 0-9 _ -`, lower-cased by the service.
    pub fn cometchat(raw: &str) -> Result<MemberId, String> {
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

    /// Tencent UserIDs: at most 32 bytes of letters, digits, `_` and `-` (case-sensitive).
    pub fn tencent(raw: &str) -> Result<MemberId, String> {
        let s = raw.trim();
        if s.is_empty()
            || s.len() > 32
            || !s.bytes().all(|b| {
                b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'@' || b == b'.'
            })
        {
            return Err(format!(
                "a Tencent UserID (1-32 characters of letters, digits, _ - @ .), found {raw:?}"
            ));
        }
        Ok(MemberId(s.to_string()))
    }

    pub fn tencent_group(raw: &str) -> Result<GroupId, String> {
        let s = raw.trim();
        if s.is_empty() || s.len() > 48 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "a Tencent GroupId (1-48 characters, no spaces), found {raw:?}"
            ));
        }
        Ok(GroupId(s.to_string()))
    }

    /// WhatsApp members: a phone number (with `+`, spaces, dashes, dots or brackets) normalised
    /// to `<digits>@c.us`, or an explicit `<digits>@c.us`. A hidden `@lid` is refused: the
    /// client keys every member whose phone it can learn by that phone, so a manifest naming the
    /// lid would see that member as unlisted and remove it; members whose phone stays unknown
    /// are kept and reported without being named.
    pub fn waha(raw: &str) -> Result<MemberId, String> {
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

    pub fn waha_group(raw: &str) -> Result<GroupId, String> {
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

    /// Bitrix24 user ids: positive integers.
    pub fn bitrix24(raw: &str) -> Result<MemberId, String> {
        let s = raw.trim();
        match s.parse::<u64>() {
            Ok(n) if n > 0 => Ok(MemberId(n.to_string())),
            _ => Err(format!(
                "a Bitrix24 user id (a positive integer), found {raw:?}"
            )),
        }
    }

    /// Bitrix24 chats: `42` or `chat42`, kept as the number.
    pub fn bitrix24_group(raw: &str) -> Result<GroupId, String> {
        let s = raw.trim();
        let n = s.strip_prefix("chat").unwrap_or(s);
        match n.parse::<u64>() {
            Ok(n) if n > 0 => Ok(GroupId(n.to_string())),
            _ => Err(format!("a Bitrix24 chat id (42 or chat42), found {raw:?}")),
        }
    }
}

/// Keys every provider instance accepts, whatever its kind.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CommonSettings {
    /// Replaces the provider's public address (proxies, the sandbox, tests).
    pub base_url: Option<String>,
    /// Members per write call, already capped at the provider's maximum per kind of call.
    pub batch_size: Option<usize>,
    /// Groups of this instance reconciled at the same time (default 4).
    pub concurrency: Option<usize>,
    /// Pause between write calls.
    pub interval: Option<Duration>,
    /// Cap on requests per second (reads and writes).
    pub rate: Option<f64>,
    /// Per-request timeout.
    pub timeout: Option<Duration>,
    /// Ids never removed, demoted, banned or muted (normalised for the kind).
    pub protected: Vec<MemberId>,
}

/// A kind's own settings, as its module declares them.
#[derive(Debug, Clone, PartialEq)]
pub enum KindSettings {
    Cometchat(cometchat::Settings),
    Tencent(tencent::Settings),
    Waha(waha::Settings),
    Bitrix24(bitrix24::Settings),
}

impl KindSettings {
    pub fn kind(&self) -> Kind {
        match self {
            KindSettings::Cometchat(_) => Kind::Cometchat,
            KindSettings::Tencent(_) => Kind::Tencent,
            KindSettings::Waha(_) => Kind::Waha,
            KindSettings::Bitrix24(_) => Kind::Bitrix24,
        }
    }
}

/// One validated `providers:` entry of rosterd.yaml.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub name: String,
    pub kind: Kind,
    pub common: CommonSettings,
    pub settings: KindSettings,
}

impl Instance {
    /// The batch size for one kind of write: `batch_size` capped at the provider's maximum.
    pub fn batch_size(&self, op: OpKind, caps: &Capabilities) -> usize {
        let max = caps.max_batch.get(op);
        self.common.batch_size.map_or(max, |b| b.clamp(1, max))
    }
}

/// Build the client of one provider instance. Secrets are resolved here, late.
pub fn build(instance: &Instance) -> Result<std::sync::Arc<dyn Provider>, ProviderError> {
    match &instance.settings {
        KindSettings::Cometchat(_) => Ok(std::sync::Arc::new(cometchat::CometChat::new(instance)?)),
        KindSettings::Waha(_) => Ok(std::sync::Arc::new(waha::Waha::new(instance)?)),
        KindSettings::Tencent(_) => Ok(std::sync::Arc::new(tencent::Tencent::new(instance)?)),
        KindSettings::Bitrix24(_) => Ok(std::sync::Arc::new(bitrix24::Bitrix24::new(instance)?)),
    }
}

/// How a failed call should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClass {
    /// The provider asked us to slow down; retry after the cooldown.
    Throttled,
    /// A passing fault (5xx, timeout, reset); retry with backoff when the call is harmless to repeat.
    Transient,
    /// Retrying will not help (auth, bad request, unknown group, config).
    Fatal,
}

/// A whole call failed. Messages never carry secrets or request URLs.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("{message}")]
pub struct ProviderError {
    pub class: ErrorClass,
    /// The provider's own code where it gave one (`ERR_GUID_NOT_FOUND`, `10007`, ...).
    pub code: Option<String>,
    pub message: String,
    /// Throttled: how long the provider asked us to wait.
    pub retry_after: Option<Duration>,
}

impl ProviderError {
    pub fn fatal(message: impl Into<String>) -> Self {
        ProviderError {
            class: ErrorClass::Fatal,
            code: None,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn transient(message: impl Into<String>) -> Self {
        ProviderError {
            class: ErrorClass::Transient,
            code: None,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn throttled(message: impl Into<String>, retry_after: Option<Duration>) -> Self {
        ProviderError {
            class: ErrorClass::Throttled,
            code: None,
            message: message.into(),
            retry_after,
        }
    }
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }
    pub fn is_retryable(&self) -> bool {
        !matches!(self.class, ErrorClass::Fatal)
    }
}

/// A provider client. Implementations translate and classify; retries, pacing, waits and
/// credential renewal live once, in [`http`]. Every request goes through the [`Ctx`] handed
/// in: its clock, its cancellation, and its tally, which is where the engine learns how many
/// HTTP requests a call really took.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Every page of the live roster, the owner, and our own id where the provider reveals it.
    /// A partial read is an `Err`, never a short roster.
    async fn fetch(&self, ctx: &Ctx, group: &GroupId) -> Result<LiveGroup, ProviderError>;

    /// One planned batch, in as few HTTP requests as the provider takes (one where it can;
    /// more where its limits or its answers split the batch); one outcome per member, in batch
    /// order. The write requests it sent are counted on `ctx`.
    async fn apply(
        &self,
        ctx: &Ctx,
        group: &GroupId,
        batch: &Batch,
    ) -> Result<Vec<MemberOutcome>, ProviderError>;

    /// The capabilities in force for one group, where they depend on the live group (Tencent's
    /// group types). Defaults to the kind's static capabilities.
    fn capabilities_for(&self, _live: &LiveGroup) -> Capabilities;

    /// Counts of HTTP requests made so far by this instance (reads, writes), for metrics.
    fn requests(&self) -> RequestCounts {
        RequestCounts::default()
    }
}

/// HTTP requests made by one provider instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RequestCounts {
    pub reads: u64,
    pub writes: u64,
    pub throttled: u64,
    pub retries: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waha_numbers_normalise_to_jids() {
        assert_eq!(ids::waha("+49 151 2345678").unwrap().0, "491512345678@c.us");
        assert_eq!(
            ids::waha("+1 (555) 010-9999").unwrap().0,
            "15550109999@c.us"
        );
        assert_eq!(
            ids::waha("491512345678@s.whatsapp.net").unwrap().0,
            "491512345678@c.us"
        );
        assert!(ids::waha("12345@lid").unwrap_err().contains("@lid"));
        assert!(ids::waha("alice").is_err());
        assert!(ids::waha("+49 151").is_err());
    }

    #[test]
    fn cometchat_ids_are_lowercased_and_checked() {
        assert_eq!(ids::cometchat("Alice").unwrap().0, "alice");
        assert!(ids::cometchat("al ice").is_err());
        assert!(ids::cometchat("").is_err());
    }

    #[test]
    fn bitrix_ids_are_positive_integers() {
        assert_eq!(ids::bitrix24("17").unwrap().0, "17");
        assert!(ids::bitrix24("0").is_err());
        assert!(ids::bitrix24("bob").is_err());
        assert_eq!(ids::bitrix24_group("chat42").unwrap().0, "42");
    }
}
