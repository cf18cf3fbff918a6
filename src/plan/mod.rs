//! The planner: pure and synchronous. Desired vs live -> ordered operations -> safety check ->
//! batches of at most the provider's size. No I/O, no clock (time is a parameter).

use std::time::SystemTime;

pub mod diff;
pub mod render;

pub use diff::{MUTE_END_TOLERANCE, apply_op, plan_group, simulate};

use serde::Serialize;

use crate::model::{Batch, DesiredGroup, GroupId, LiveGroup, MemberId, Op, OpKind};
use crate::model::{Capabilities, Kind, MuteSupport};

/// The plan of one group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupPlan {
    pub group: String,
    pub provider: String,
    pub kind: Kind,
    pub id: GroupId,
    /// Every operation, in SPEC §4 order.
    pub ops: Vec<Op>,
    /// The same operations cut into write calls, in order.
    pub batches: Vec<Batch>,
    /// `Some(reason)` when a safety limit blocks the group: nothing is applied to it.
    pub blocked: Option<String>,
    /// Things the operator should know that are not operations (an unresolvable member kept,
    /// an owner that cannot be transferred, a protected member the manifest would remove).
    pub notes: Vec<String>,
    /// The roster before and after, one line per member (`id role`), for the text diff.
    #[serde(skip)]
    pub before: Vec<String>,
    #[serde(skip)]
    pub after: Vec<String>,
}

impl GroupPlan {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    pub fn count(&self, kind: OpKind) -> usize {
        self.ops.iter().filter(|o| o.kind == kind).count()
    }
    /// Removals and bans together: what `max_removals` counts.
    pub fn removals(&self) -> usize {
        self.ops.iter().filter(|o| o.kind.is_removal()).count()
    }
    /// Write calls this plan takes.
    pub fn calls(&self) -> usize {
        self.batches.len()
    }
}

/// Inputs of one group's plan besides desired and live state.
#[derive(Clone, Copy)]
pub struct PlanOptions<'a> {
    pub caps: &'a Capabilities,
    /// Members per write call for each kind (already capped at the provider's maximum).
    pub batch_size: &'a dyn Fn(OpKind) -> usize,
    pub now: SystemTime,
    pub allow_mass_removal: bool,
}

/// Ids that are never removed, demoted, banned or muted in this group.
pub fn untouchable<'a>(
    desired: &'a DesiredGroup,
    live: &'a LiveGroup,
) -> impl Iterator<Item = &'a MemberId> {
    desired
        .protected
        .iter()
        .chain(live.owner.iter())
        .chain(live.me.iter())
}

/// What the manifest asks of a group that the group's own capabilities rule out (a provider
/// whose capabilities depend on the live group, e.g. a Tencent group's type). `validate` checks
/// the kind's static capabilities offline; this is the same check against the live group, made
/// before planning so the refusal names the group and its type instead of failing mid-apply.
pub fn unsupported(
    desired: &DesiredGroup,
    live: &LiveGroup,
    caps: &Capabilities,
) -> Option<String> {
    let mut why = Vec::new();
    if desired.bans.as_ref().is_some_and(|b| !b.is_empty()) && !caps.bans {
        why.push(
            "it has no ban list (the group type, or the app's edition, lacks bans); remove `bans`"
                .to_string(),
        );
    }
    if desired.mutes.as_ref().is_some_and(|m| !m.is_empty()) && caps.mutes == MuteSupport::No {
        why.push("it cannot mute members; remove `mutes`".to_string());
    }
    for (m, role) in &desired.members {
        if !caps.supports_role(*role) {
            why.push(format!("it has no {role} role (listed for {m})"));
            break;
        }
    }
    if why.is_empty() {
        return None;
    }
    let ty = live
        .group_type
        .as_deref()
        .map_or(String::new(), |t| format!(" of type {t}"));
    Some(format!(
        "group {} ({} group {}{ty}): {}; nothing planned or applied (manifest {})",
        desired.name,
        desired.kind,
        desired.id,
        why.join("; "),
        desired.source
    ))
}

/// A group whose live state could not be read: reported, never planned from half a roster.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupError {
    pub group: String,
    pub provider: String,
    pub message: String,
}

/// The plan of a run: one entry per group that was read, one error per group that was not.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Plan {
    pub groups: Vec<GroupPlan>,
    pub errors: Vec<GroupError>,
}

impl Plan {
    /// No operation pending in any group (errors are not changes).
    pub fn is_empty(&self) -> bool {
        self.groups.iter().all(GroupPlan::is_empty)
    }
    pub fn total(&self, kind: OpKind) -> usize {
        self.groups.iter().map(|g| g.count(kind)).sum()
    }
    pub fn calls(&self) -> usize {
        self.groups.iter().map(GroupPlan::calls).sum()
    }
}

#[cfg(test)]
mod tests;
