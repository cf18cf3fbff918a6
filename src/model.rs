//! The vocabulary every layer shares: groups, members, roles, mutes, desired and live state,
//! operations and batches, and what a provider kind can do ([`kind`]). Plain data: no I/O, no
//! clock, nothing from `provider`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::SystemTime;

use serde::Serialize;

pub mod kind;

pub use kind::{BatchLimits, Capabilities, Kind, MuteSupport};

/// A member's role in a group. The derived order is the rank: participant < moderator < admin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Participant,
    Moderator,
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Participant, Role::Moderator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Participant => "participant",
            Role::Moderator => "moderator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A provider's id of a member, already normalised for its provider kind (lower-cased for
/// CometChat, JID form for WhatsApp, ...), so equality here is equality at the provider.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct MemberId(pub String);

impl MemberId {
    pub fn new(s: impl Into<String>) -> Self {
        MemberId(s.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The provider's id of a group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct GroupId(pub String);

impl GroupId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How long a member stays muted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mute {
    /// Until the manifest entry is removed.
    Indefinite,
    Until(SystemTime),
}

impl Mute {
    /// Whether the mute is still in force at `now`.
    pub fn active_at(self, now: SystemTime) -> bool {
        match self {
            Mute::Indefinite => true,
            Mute::Until(t) => t > now,
        }
    }
}

impl fmt::Display for Mute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mute::Indefinite => f.write_str("indefinitely"),
            Mute::Until(t) => write!(f, "until {}", humantime::format_rfc3339_seconds(*t)),
        }
    }
}

impl Serialize for Mute {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Mute::Indefinite => s.serialize_none(),
            Mute::Until(t) => s.serialize_str(&humantime::format_rfc3339_seconds(*t).to_string()),
        }
    }
}

/// What to do with live members the manifest does not list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Unlisted {
    #[default]
    Remove,
    Keep,
}

/// `max_removals`: a count or a percentage of the group's current members.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RemovalLimit {
    Count(usize),
    Percent(f64),
}

impl RemovalLimit {
    /// The number of removals allowed for a group of `current` members. A percentage rounds
    /// down, but never below one removal for a non-empty group, so tiny groups stay manageable.
    pub fn allowed(self, current: usize) -> usize {
        match self {
            RemovalLimit::Count(n) => n,
            RemovalLimit::Percent(p) => {
                let n = (current as f64 * p / 100.0).floor() as usize;
                if current > 0 { n.max(1) } else { 0 }
            }
        }
    }
}

impl fmt::Display for RemovalLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemovalLimit::Count(n) => write!(f, "{n}"),
            RemovalLimit::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// The validated desired state of one group, as the files declare it.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredGroup {
    /// rosterd's name of the group (unique across manifests).
    pub name: String,
    /// The provider instance name from rosterd.yaml.
    pub provider: String,
    pub kind: Kind,
    pub id: GroupId,
    pub owner: Option<MemberId>,
    /// member -> role, highest role already chosen.
    pub members: BTreeMap<MemberId, Role>,
    /// `Some` when the manifest has a `bans` key: the set is authoritative.
    pub bans: Option<BTreeSet<MemberId>>,
    /// `Some` when the manifest has a `mutes` key: the map is authoritative.
    pub mutes: Option<BTreeMap<MemberId, Mute>>,
    pub unlisted: Unlisted,
    pub max_removals: RemovalLimit,
    /// Ids never removed, demoted, banned or muted (the instance's `protected`).
    pub protected: BTreeSet<MemberId>,
    /// Where the group was declared, for messages: `file:line:col`.
    pub source: String,
    /// The people.yaml person of every id of this group's instance that a person resolves to,
    /// so plans and reports name members as the manifest does. One map per instance, shared by
    /// its groups.
    pub names: std::sync::Arc<BTreeMap<MemberId, String>>,
}

/// The live state of one group, fetched from its provider (every page).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LiveGroup {
    pub members: BTreeMap<MemberId, Role>,
    pub owner: Option<MemberId>,
    /// `None` when the provider (or this group's type) has no ban list.
    pub bans: Option<BTreeSet<MemberId>>,
    /// Muted members and until when; empty when the provider has no mutes.
    pub mutes: BTreeMap<MemberId, Mute>,
    /// The identity rosterd acts as, where the provider reveals it.
    pub me: Option<MemberId>,
    /// Live members whose id could not be matched to a manifest id form (e.g. a WhatsApp `@lid`
    /// with no known phone). They are reported and never removed as unlisted.
    pub unresolved: BTreeSet<MemberId>,
    /// The provider's group type, where it has types (Tencent), for messages.
    pub group_type: Option<String>,
}

/// The kinds of write operation, in the order SPEC §4 applies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    Unban,
    Add,
    Promote,
    Mute,
    Unmute,
    Demote,
    Remove,
    Ban,
    TransferOwner,
}

impl OpKind {
    pub const ALL: [OpKind; 9] = [
        OpKind::Unban,
        OpKind::Add,
        OpKind::Promote,
        OpKind::Mute,
        OpKind::Unmute,
        OpKind::Demote,
        OpKind::Remove,
        OpKind::Ban,
        OpKind::TransferOwner,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Unban => "unban",
            OpKind::Add => "add",
            OpKind::Promote => "promote",
            OpKind::Mute => "mute",
            OpKind::Unmute => "unmute",
            OpKind::Demote => "demote",
            OpKind::Remove => "remove",
            OpKind::Ban => "ban",
            OpKind::TransferOwner => "transfer_owner",
        }
    }

    /// Whether the operation takes a member out of the group (counted by `max_removals`).
    pub fn is_removal(self) -> bool {
        matches!(self, OpKind::Remove | OpKind::Ban)
    }

    /// Whether a write of this kind can change the member listing (who is in, roles, mutes,
    /// the owner's row): every kind but an unban (a ban removes the member too).
    pub fn changes_roster(self) -> bool {
        self != OpKind::Unban
    }

    /// Whether a write of this kind can change the ban list.
    pub fn changes_bans(self) -> bool {
        matches!(self, OpKind::Ban | OpKind::Unban)
    }

    /// Whether a write of this kind can change the group's owner.
    pub fn changes_owner(self) -> bool {
        self == OpKind::TransferOwner
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One operation on one member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Op {
    pub kind: OpKind,
    pub member: MemberId,
    /// Add: the role to add with; promote/demote: the target role.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Promote/demote/remove/ban: the role the member has now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Role>,
    /// Mute: until when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mute: Option<Mute>,
}

impl Op {
    pub fn new(kind: OpKind, member: MemberId) -> Self {
        Op {
            kind,
            member,
            role: None,
            from: None,
            mute: None,
        }
    }
    pub fn with_role(mut self, role: Role) -> Self {
        self.role = Some(role);
        self
    }
    pub fn with_from(mut self, role: Role) -> Self {
        self.from = Some(role);
        self
    }
    pub fn with_mute(mut self, mute: Mute) -> Self {
        self.mute = Some(mute);
        self
    }
}

/// The operations that go out in one write call: all of one kind, at most the batch size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Batch {
    pub kind: OpKind,
    pub ops: Vec<Op>,
}

impl Batch {
    pub fn members(&self) -> impl Iterator<Item = &MemberId> {
        self.ops.iter().map(|o| &o.member)
    }
}

/// The result of one operation, as the provider reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The change was made.
    Done,
    /// The provider said the effect already held (idempotent repeat).
    AlreadyDone,
    /// The provider refused this member; the rest of the batch is unaffected.
    Failed { code: String, message: String },
    /// The engine did not send it (a safety rule or an earlier failure).
    Skipped { reason: String },
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Done | Outcome::AlreadyDone)
    }
}

/// One member's outcome for one operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberOutcome {
    pub member: MemberId,
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl MemberOutcome {
    pub fn done(member: MemberId) -> Self {
        MemberOutcome {
            member,
            outcome: Outcome::Done,
        }
    }
    pub fn already(member: MemberId) -> Self {
        MemberOutcome {
            member,
            outcome: Outcome::AlreadyDone,
        }
    }
    pub fn failed(member: MemberId, code: impl Into<String>, message: impl Into<String>) -> Self {
        MemberOutcome {
            member,
            outcome: Outcome::Failed {
                code: code.into(),
                message: message.into(),
            },
        }
    }
}
