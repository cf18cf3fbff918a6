//! What a group's plan was computed from, as checksums: the desired state (the files, after
//! people and teams are resolved) and the live roster the engine read. `plan --out` records them
//! and `apply --plan` recomputes them after its own read, so a reviewed plan is applied only to
//! a group that has not moved since (octoDNS' `--checksum`, per group).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::model::{DesiredGroup, LiveGroup};

/// The checksums of one group's plan inputs, each `sha256:<hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checksum {
    /// Of `desired` and `live` together: the one to quote in a review.
    pub group: String,
    /// Of the desired state.
    pub desired: String,
    /// Of the live roster read.
    pub live: String,
}

impl Checksum {
    pub fn of(desired: &DesiredGroup, live: &LiveGroup) -> Self {
        let d = sha(&desired_doc(desired));
        let l = sha(&live_doc(live));
        Checksum {
            group: sha(&json!([d, l])),
            desired: d,
            live: l,
        }
    }

    /// The first hex digits, enough to match a pull-request comment with an apply log.
    pub fn short(&self) -> &str {
        let hex = self.group.strip_prefix("sha256:").unwrap_or(&self.group);
        &hex[..hex.len().min(12)]
    }
}

/// The tree a plan belongs to: its provider instances as (name, kind), in name order. A plan
/// of another tree must not be applied to this one, whatever its groups are called.
pub fn tree<'a>(instances: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let names: Vec<(&str, &str)> = instances.into_iter().collect();
    sha(&json!(names))
}

fn sha(v: &Value) -> String {
    // serde_json writes maps in key order and the model's collections are ordered, so the
    // same state always gives the same bytes.
    let bytes = serde_json::to_vec(v).expect("JSON");
    let digest = Sha256::digest(&bytes);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in digest.iter() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Everything of the desired state that can change a plan; not where it is written.
fn desired_doc(g: &DesiredGroup) -> Value {
    json!({
        "group": g.name, "provider": g.provider, "kind": g.kind, "id": g.id,
        "owner": g.owner,
        "members": g.members.iter().collect::<Vec<_>>(),
        "bans": g.bans,
        "mutes": g.mutes.as_ref().map(|m| m.iter().collect::<Vec<_>>()),
        "unlisted": g.unlisted, "max_removals": g.max_removals,
        "protected": g.protected,
    })
}

fn live_doc(l: &LiveGroup) -> Value {
    json!({
        "members": l.members.iter().collect::<Vec<_>>(),
        "owner": l.owner, "bans": l.bans,
        "mutes": l.mutes.iter().collect::<Vec<_>>(),
        "me": l.me, "unresolved": l.unresolved, "group_type": l.group_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MemberId, Role};

    fn desired() -> DesiredGroup {
        DesiredGroup {
            name: "g".into(),
            provider: "cc".into(),
            kind: crate::model::Kind::Cometchat,
            id: crate::model::GroupId("g".into()),
            owner: None,
            members: [(MemberId::new("a"), Role::Admin)].into(),
            bans: None,
            mutes: None,
            unlisted: crate::model::Unlisted::Remove,
            max_removals: crate::model::RemovalLimit::Count(1),
            protected: Default::default(),
            source: "a.yaml:1:1".into(),
            names: Default::default(),
        }
    }

    #[test]
    fn a_checksum_follows_the_state_not_where_it_is_written() {
        let live = LiveGroup::default();
        let base = Checksum::of(&desired(), &live);
        assert_eq!(base, Checksum::of(&desired(), &live), "deterministic");
        let moved = DesiredGroup {
            source: "b.yaml:9:1".into(),
            ..desired()
        };
        assert_eq!(
            Checksum::of(&moved, &live),
            base,
            "moving a manifest is no change"
        );

        let mut promoted = desired();
        promoted
            .members
            .insert(MemberId::new("b"), Role::Participant);
        let c = Checksum::of(&promoted, &live);
        assert_ne!(c.desired, base.desired);
        assert_eq!(c.live, base.live);
        assert_ne!(c.group, base.group);

        let mut other = LiveGroup::default();
        other.members.insert(MemberId::new("a"), Role::Moderator);
        let c = Checksum::of(&desired(), &other);
        assert_eq!(c.desired, base.desired);
        assert_ne!(c.live, base.live);
        assert_eq!(base.short().len(), 12);
        assert!(base.group.starts_with("sha256:") && base.group.len() == 71);
    }
}
