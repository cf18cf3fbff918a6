//! Provider kinds as vocabulary: which kinds exist and what a kind can do, as data. The
//! planner and config read these; everything else a kind brings (id syntax, settings, schema,
//! client, emulator) is its spec in `provider::spec`, reached through `Kind::spec()`.

use serde::Serialize;

use super::{OpKind, Role};

/// Every provider kind rosterd knows. Its name, parse and list are derived, so a new kind is
/// one variant here and one arm in `Kind::spec()`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::VariantArray,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Kind {
    Cometchat,
    Tencent,
    Waha,
    Bitrix24,
}

impl Kind {
    /// Every kind, in declaration order.
    pub const ALL: &'static [Kind] = <Kind as strum::VariantArray>::VARIANTS;

    /// The name a `providers:` entry's `kind` uses.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(s: &str) -> Option<Kind> {
        s.parse().ok()
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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

/// For [`Capabilities::idempotent`] and [`Capabilities::uniform_batch`]: every kind of write.
pub fn always(_: OpKind) -> bool {
    true
}

/// For [`Capabilities::idempotent`] and [`Capabilities::uniform_batch`]: no kind of write.
pub fn never(_: OpKind) -> bool {
    false
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip_and_match_serde() {
        for &k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        assert_eq!(Kind::Bitrix24.as_str(), "bitrix24");
        assert_eq!(Kind::parse("slack"), None);
    }
}
