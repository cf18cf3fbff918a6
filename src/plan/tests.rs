//! The planner as data: table tests per rule, property tests of convergence and the admin
//! floor, and snapshots of the three renderings.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use proptest::prelude::*;

use super::*;
use crate::model::{Capabilities, Kind};
use crate::model::{DesiredGroup, LiveGroup, MemberId, Mute, OpKind, RemovalLimit, Role, Unlisted};

const NOW_SECS: u64 = 1_800_000_000;

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_SECS)
}

fn m(s: &str) -> MemberId {
    MemberId::new(s)
}

fn roster(entries: &[(&str, Role)]) -> BTreeMap<MemberId, Role> {
    entries.iter().map(|(id, r)| (m(id), *r)).collect()
}

fn desired(kind: Kind, members: &[(&str, Role)]) -> DesiredGroup {
    DesiredGroup {
        name: "g".to_string(),
        provider: "p".to_string(),
        kind,
        id: crate::model::GroupId("g".to_string()),
        owner: None,
        members: roster(members),
        bans: None,
        mutes: None,
        unlisted: Unlisted::Remove,
        max_removals: RemovalLimit::Count(1000),
        protected: BTreeSet::new(),
        source: "groups/g.yaml:1:1".to_string(),
    }
}

fn live(members: &[(&str, Role)]) -> LiveGroup {
    LiveGroup {
        members: roster(members),
        ..LiveGroup::default()
    }
}

fn plan_with(d: &DesiredGroup, l: &LiveGroup, allow: bool) -> GroupPlan {
    let caps = d.kind.capabilities();
    let size = |k| caps.max_batch.get(k);
    plan_group(
        d,
        l,
        &PlanOptions {
            caps,
            batch_size: &size,
            now: now(),
            allow_mass_removal: allow,
        },
    )
}

fn plan(d: &DesiredGroup, l: &LiveGroup) -> GroupPlan {
    plan_with(d, l, false)
}

/// `kind member [role]` per operation, for compact assertions.
fn ops(p: &GroupPlan) -> Vec<String> {
    p.ops
        .iter()
        .map(|o| match o.role {
            Some(r) => format!("{} {} {r}", o.kind, o.member),
            None => format!("{} {}", o.kind, o.member),
        })
        .collect()
}

#[test]
fn in_sync_means_no_operations() {
    let d = desired(
        Kind::Cometchat,
        &[("a", Role::Admin), ("b", Role::Participant)],
    );
    let p = plan(&d, &live(&[("a", Role::Admin), ("b", Role::Participant)]));
    assert!(p.is_empty() && p.batches.is_empty() && p.blocked.is_none());
}

#[test]
fn adds_go_straight_into_their_role_where_the_provider_can() {
    let d = desired(
        Kind::Cometchat,
        &[
            ("a", Role::Admin),
            ("m", Role::Moderator),
            ("p", Role::Participant),
        ],
    );
    let p = plan(&d, &live(&[]));
    assert_eq!(
        ops(&p),
        ["add a admin", "add m moderator", "add p participant"]
    );
    assert_eq!(p.calls(), 1, "CometChat mixes roles in one add call");
}

#[test]
fn adds_then_promotes_where_the_provider_cannot_add_with_a_role() {
    let d = desired(Kind::Waha, &[("491510000001@c.us", Role::Admin)]);
    let p = plan(&d, &live(&[]));
    assert_eq!(
        ops(&p),
        [
            "add 491510000001@c.us participant",
            "promote 491510000001@c.us admin"
        ]
    );
}

#[test]
fn role_changes_go_both_ways() {
    let d = desired(
        Kind::Cometchat,
        &[("up", Role::Admin), ("down", Role::Participant)],
    );
    let p = plan(&d, &live(&[("up", Role::Moderator), ("down", Role::Admin)]));
    assert_eq!(ops(&p), ["promote up admin", "demote down participant"]);
}

#[test]
fn unlisted_members_are_removed_or_kept_as_the_policy_says() {
    let mut d = desired(Kind::Cometchat, &[("a", Role::Admin)]);
    let l = live(&[("a", Role::Admin), ("x", Role::Participant)]);
    assert_eq!(ops(&plan(&d, &l)), ["remove x"]);
    d.unlisted = Unlisted::Keep;
    assert!(plan(&d, &l).is_empty());
}

#[test]
fn keep_still_enforces_roles_of_listed_members() {
    let mut d = desired(Kind::Cometchat, &[("a", Role::Participant)]);
    d.unlisted = Unlisted::Keep;
    let p = plan(&d, &live(&[("a", Role::Admin), ("x", Role::Admin)]));
    assert_eq!(ops(&p), ["demote a participant"]);
}

#[test]
fn bans_are_managed_only_when_the_key_is_present() {
    let mut d = desired(Kind::Cometchat, &[("a", Role::Admin)]);
    let mut l = live(&[("a", Role::Admin)]);
    l.bans = Some(BTreeSet::from([m("old")]));
    assert!(
        plan(&d, &l).is_empty(),
        "absent bans key: the ban list is not managed"
    );
    d.bans = Some(BTreeSet::from([m("new")]));
    assert_eq!(ops(&plan(&d, &l)), ["unban old", "ban new"]);
}

#[test]
fn a_banned_member_the_manifest_wants_is_unbanned_before_the_add() {
    let d = desired(Kind::Cometchat, &[("a", Role::Participant)]);
    let mut l = live(&[]);
    l.bans = Some(BTreeSet::from([m("a")]));
    assert_eq!(ops(&plan(&d, &l)), ["unban a", "add a participant"]);
}

#[test]
fn banning_a_live_member_needs_no_separate_removal() {
    let mut d = desired(Kind::Cometchat, &[]);
    d.bans = Some(BTreeSet::from([m("x")]));
    let mut l = live(&[("x", Role::Participant)]);
    l.bans = Some(BTreeSet::new());
    assert_eq!(ops(&plan(&d, &l)), ["ban x"]);
}

#[test]
fn mutes_timed_indefinite_expired_and_extended() {
    let later = now() + Duration::from_secs(3600);
    let even_later = now() + Duration::from_secs(7200);
    let earlier = now() - Duration::from_secs(60);
    let mut d = desired(
        Kind::Tencent,
        &[
            ("a", Role::Participant),
            ("b", Role::Participant),
            ("c", Role::Participant),
            ("e", Role::Participant),
        ],
    );
    d.mutes = Some(BTreeMap::from([
        (m("a"), Mute::Until(later)),      // new timed mute
        (m("b"), Mute::Indefinite),        // new indefinite mute
        (m("c"), Mute::Until(even_later)), // extended
        (m("e"), Mute::Until(earlier)),    // expired in the manifest: not muted
    ]));
    let mut l = live(&[
        ("a", Role::Participant),
        ("b", Role::Participant),
        ("c", Role::Participant),
        ("e", Role::Participant),
        ("f", Role::Participant),
    ]);
    d.members.insert(m("f"), Role::Participant);
    l.mutes = BTreeMap::from([
        (m("c"), Mute::Until(later)),
        (m("e"), Mute::Until(later)),
        (m("f"), Mute::Until(earlier)),
    ]);
    let p = plan(&d, &l);
    assert_eq!(
        ops(&p),
        ["mute a", "mute b", "mute c", "unmute e"],
        "f's live mute already expired"
    );
    // Tencent's batch mute takes one duration per call: three values, three calls, plus the unmute.
    assert_eq!(p.calls(), 4);
}

#[test]
fn mute_ends_within_the_tolerance_are_the_same_end() {
    let until = now() + Duration::from_secs(3600);
    let near = until + super::MUTE_END_TOLERANCE - Duration::from_secs(1);
    let far = until + super::MUTE_END_TOLERANCE + Duration::from_secs(1);
    let mut d = desired(
        Kind::Tencent,
        &[
            ("a", Role::Participant),
            ("b", Role::Participant),
            ("c", Role::Participant),
        ],
    );
    d.mutes = Some(BTreeMap::from([
        (m("a"), Mute::Until(until)),
        (m("b"), Mute::Until(until)),
        (m("c"), Mute::Until(until)),
    ]));
    let mut l = live(&[
        ("a", Role::Participant),
        ("b", Role::Participant),
        ("c", Role::Participant),
    ]);
    l.mutes = BTreeMap::from([
        (m("a"), Mute::Until(near)), // the service's receipt time moved it: same end
        (m("b"), Mute::Until(far)),  // a different end: muted again
        (m("c"), Mute::Indefinite),  // indefinite is never "near" a timed end
    ]);
    assert_eq!(ops(&plan(&d, &l)), ["mute b", "mute c"]);
}

#[test]
fn mutes_are_not_managed_without_the_key() {
    let d = desired(Kind::Tencent, &[("a", Role::Participant)]);
    let mut l = live(&[("a", Role::Participant)]);
    l.mutes = BTreeMap::from([(m("a"), Mute::Indefinite)]);
    assert!(plan(&d, &l).is_empty());
}

#[test]
fn owner_protected_and_own_identity_are_never_touched() {
    let mut d = desired(Kind::Cometchat, &[("a", Role::Participant)]);
    d.protected = BTreeSet::from([m("bot")]);
    d.bans = Some(BTreeSet::from([m("boss")]));
    d.mutes = None;
    let mut l = live(&[
        ("a", Role::Participant),
        ("boss", Role::Admin),
        ("bot", Role::Admin),
        ("me", Role::Admin),
    ]);
    l.owner = Some(m("boss"));
    l.me = Some(m("me"));
    l.bans = Some(BTreeSet::new());
    let p = plan(&d, &l);
    assert!(p.is_empty(), "{:?}", ops(&p));
    assert_eq!(p.notes.len(), 3, "{:?}", p.notes);
    assert!(
        p.notes
            .iter()
            .any(|n| n.contains("boss is the group's owner: not banned"))
    );
}

#[test]
fn unresolved_live_members_are_kept_and_reported() {
    let d = desired(Kind::Waha, &[]);
    let mut l = live(&[("123@lid", Role::Participant)]);
    l.unresolved = BTreeSet::from([m("123@lid")]);
    let p = plan(&d, &l);
    assert!(p.is_empty());
    assert!(p.notes[0].contains("could not be matched"));
}

#[test]
fn ownership_is_transferred_last_and_the_new_owner_is_made_an_admin() {
    let mut d = desired(Kind::Cometchat, &[("old", Role::Admin)]);
    d.owner = Some(m("new"));
    let mut l = live(&[("old", Role::Admin)]);
    l.owner = Some(m("old"));
    assert_eq!(ops(&plan(&d, &l)), ["add new admin", "transfer_owner new"]);
}

#[test]
fn an_owner_the_provider_cannot_transfer_is_a_note() {
    let mut d = desired(Kind::Waha, &[("1@c.us", Role::Admin)]);
    d.owner = Some(m("2@c.us"));
    let mut l = live(&[("1@c.us", Role::Admin)]);
    l.owner = Some(m("1@c.us"));
    let p = plan(&d, &l);
    assert!(p.is_empty());
    assert!(p.notes[0].contains("cannot transfer ownership"));
}

#[test]
fn max_removals_counts_removals_and_bans_together() {
    let mut d = desired(Kind::Cometchat, &[("a", Role::Admin)]);
    d.max_removals = RemovalLimit::Count(2);
    d.bans = Some(BTreeSet::from([m("y")]));
    let mut l = live(&[
        ("a", Role::Admin),
        ("x", Role::Participant),
        ("y", Role::Participant),
    ]);
    l.bans = Some(BTreeSet::new());
    assert!(plan(&d, &l).blocked.is_none(), "2 removals are allowed");
    l.members.insert(m("z"), Role::Participant);
    let p = plan(&d, &l);
    assert!(
        p.blocked.as_deref().unwrap().contains("3 of 4 members"),
        "{:?}",
        p.blocked
    );
    assert!(
        !p.ops.is_empty(),
        "a blocked plan still shows what it would do"
    );
    assert!(
        plan_with(&d, &l, true).blocked.is_none(),
        "--allow-mass-removal"
    );
}

#[test]
fn max_removals_as_a_percentage_of_current_members() {
    let mut d = desired(Kind::Cometchat, &[]);
    d.max_removals = RemovalLimit::Percent(10.0);
    let names: Vec<String> = (0..30).map(|i| format!("u{i:02}")).collect();
    let l = live(
        &names
            .iter()
            .map(|n| (n.as_str(), Role::Participant))
            .collect::<Vec<_>>(),
    );
    for (keep, blocked) in [(27, false), (26, true)] {
        d.members = names
            .iter()
            .take(keep)
            .map(|n| (m(n), Role::Participant))
            .collect();
        assert_eq!(
            plan(&d, &l).blocked.is_some(),
            blocked,
            "keep {keep} of 30 with 10%"
        );
    }
}

#[test]
fn batches_are_the_provider_minimum() {
    let names: Vec<String> = (0..120).map(|i| format!("n{i:03}")).collect();
    let old: Vec<String> = (0..60).map(|i| format!("o{i:03}")).collect();
    let scoped: Vec<String> = (0..30).map(|i| format!("s{i:03}")).collect();
    let mut want: Vec<(&str, Role)> = names
        .iter()
        .map(|n| (n.as_str(), Role::Participant))
        .collect();
    want.extend(scoped.iter().map(|n| (n.as_str(), Role::Moderator)));
    let mut have: Vec<(&str, Role)> = old
        .iter()
        .map(|n| (n.as_str(), Role::Participant))
        .collect();
    have.extend(scoped.iter().map(|n| (n.as_str(), Role::Participant)));
    let d = desired(Kind::Cometchat, &want);
    let p = plan_with(&d, &live(&have), true);
    // ⌈120/25⌉ adds + 60 kicks + 30 scope changes
    assert_eq!(p.calls(), 5 + 60 + 30);
    assert!(p.batches.iter().all(|b| b.ops.len() <= 25));
}

#[test]
fn a_smaller_configured_batch_size_is_obeyed() {
    let names: Vec<String> = (0..10).map(|i| format!("n{i}")).collect();
    let d = desired(
        Kind::Cometchat,
        &names
            .iter()
            .map(|n| (n.as_str(), Role::Participant))
            .collect::<Vec<_>>(),
    );
    let caps = d.kind.capabilities();
    let size = |k| caps.max_batch.get(k).min(4);
    let p = plan_group(
        &d,
        &live(&[]),
        &PlanOptions {
            caps,
            batch_size: &size,
            now: now(),
            allow_mass_removal: false,
        },
    );
    assert_eq!(
        p.batches.iter().map(|b| b.ops.len()).collect::<Vec<_>>(),
        [4, 4, 2]
    );
}

#[test]
fn operations_follow_the_spec_order() {
    let mut d = desired(
        Kind::Cometchat,
        &[
            ("new", Role::Admin),
            ("up", Role::Admin),
            ("down", Role::Participant),
        ],
    );
    d.bans = Some(BTreeSet::from([m("bad")]));
    let mut l = live(&[
        ("up", Role::Participant),
        ("down", Role::Admin),
        ("gone", Role::Participant),
    ]);
    l.bans = Some(BTreeSet::from([m("forgiven")]));
    let kinds: Vec<OpKind> = plan(&d, &l).ops.iter().map(|o| o.kind).collect();
    assert_eq!(
        kinds,
        [
            OpKind::Unban,
            OpKind::Add,
            OpKind::Promote,
            OpKind::Demote,
            OpKind::Remove,
            OpKind::Ban
        ]
    );
}

// ---- properties ----

fn arb_role(caps: &'static Capabilities) -> impl Strategy<Value = Role> {
    prop::sample::select(caps.roles.to_vec())
}

#[derive(Debug, Clone)]
struct Case {
    kind: Kind,
    desired: DesiredGroup,
    live: LiveGroup,
}

fn arb_case() -> impl Strategy<Value = Case> {
    prop::sample::select(Kind::ALL.to_vec())
        .prop_flat_map(|kind| {
            let caps = kind.capabilities();
            let ids = prop::sample::subsequence(
                (0..24).map(|i| format!("u{i}")).collect::<Vec<_>>(),
                0..24,
            );
            (
                Just(kind),
                prop::collection::btree_map(
                    ids.clone().prop_flat_map(|v| {
                        prop::sample::select(if v.is_empty() {
                            vec!["u0".to_string()]
                        } else {
                            v
                        })
                    }),
                    arb_role(caps),
                    0..12,
                ),
                prop::collection::btree_map(
                    prop::sample::select((0..24).map(|i| format!("u{i}")).collect::<Vec<_>>()),
                    arb_role(caps),
                    0..12,
                ),
                prop::collection::btree_set(
                    prop::sample::select((24..30).map(|i| format!("u{i}")).collect::<Vec<_>>()),
                    0..3,
                ),
                prop::collection::btree_set(
                    prop::sample::select((24..30).map(|i| format!("u{i}")).collect::<Vec<_>>()),
                    0..3,
                ),
                prop::collection::btree_map(
                    prop::sample::select((0..24).map(|i| format!("u{i}")).collect::<Vec<_>>()),
                    0u64..3,
                    0..4,
                ),
                any::<bool>(),
                any::<bool>(),
                prop::option::of(prop::sample::select(
                    (0..24).map(|i| format!("u{i}")).collect::<Vec<_>>(),
                )),
            )
        })
        .prop_map(
            |(kind, want, have, want_bans, have_bans, mutes, keep, manage, owner)| {
                let caps = kind.capabilities();
                let want: BTreeMap<MemberId, Role> =
                    want.into_iter().map(|(k, r)| (m(&k), r)).collect();
                let mut d = desired(kind, &[]);
                d.members = want.clone();
                d.unlisted = if keep {
                    Unlisted::Keep
                } else {
                    Unlisted::Remove
                };
                if caps.bans && manage {
                    d.bans = Some(
                        want_bans
                            .into_iter()
                            .map(|b| m(&b))
                            .filter(|b| !want.contains_key(b))
                            .collect(),
                    );
                }
                if caps.mutes != crate::model::MuteSupport::No && manage {
                    d.mutes = Some(
                        mutes
                            .into_iter()
                            .map(|(k, t)| {
                                (
                                    m(&k),
                                    if t == 0 || caps.mutes == crate::model::MuteSupport::Indefinite
                                    {
                                        Mute::Indefinite
                                    } else {
                                        Mute::Until(now() + Duration::from_secs(t * 600))
                                    },
                                )
                            })
                            .filter(|(k, _)| want.contains_key(k))
                            .collect(),
                    );
                }
                let mut l = live(&[]);
                l.members = have.into_iter().map(|(k, r)| (m(&k), r)).collect();
                l.bans = caps
                    .bans
                    .then(|| have_bans.into_iter().map(|b| m(&b)).collect());
                l.owner = owner.map(|o| m(&o)).filter(|o| l.members.contains_key(o));
                Case {
                    kind,
                    desired: d,
                    live: l,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Applying the plan yields the desired state (within what rosterd may touch), planning
    /// again yields nothing, and the admin floor holds after every operation.
    #[test]
    fn applying_the_plan_converges_and_keeps_the_admin_floor(case in arb_case()) {
        let Case { kind, desired: d, live: l } = case;
        let caps = kind.capabilities();
        let p = plan_with(&d, &l, true);
        prop_assert!(p.batches.iter().all(|b| b.ops.len() <= caps.max_batch.get(b.kind)));
        prop_assert_eq!(p.batches.iter().map(|b| b.ops.len()).sum::<usize>(), p.ops.len());

        let admins = |g: &LiveGroup| g.members.values().filter(|r| **r == Role::Admin).count();
        let floor = admins(&l).min(d.members.values().filter(|r| **r == Role::Admin).count());
        let mut state = l.clone();
        state.mutes.retain(|_, mu| mu.active_at(now()));
        for op in &p.ops {
            apply_op(&mut state, op);
            prop_assert!(admins(&state) >= floor, "admin floor broken after {:?}", op);
        }
        // Every desired member holds its role, except where the live owner keeps a higher one.
        for (mem, role) in &d.members {
            let got = state.members.get(mem);
            prop_assert!(got == Some(role) || (l.owner.as_ref() == Some(mem) && got >= Some(role)), "{} -> {:?}", mem, got);
        }
        if d.unlisted == Unlisted::Remove {
            for mem in state.members.keys() {
                prop_assert!(d.members.contains_key(mem) || l.owner.as_ref() == Some(mem), "{} left in the group", mem);
            }
        }
        if let Some(b) = &d.bans {
            prop_assert_eq!(state.bans.clone().unwrap_or_default(), b.clone());
        }
        let again = plan_with(&d, &state, true);
        prop_assert!(again.is_empty(), "second plan: {:?}", ops(&again));
    }
}

// ---- renderings ----

fn sample_plan() -> Plan {
    let mut d = desired(
        Kind::Cometchat,
        &[
            ("alice", Role::Admin),
            ("bob", Role::Moderator),
            ("carol", Role::Participant),
            ("dave", Role::Participant),
        ],
    );
    d.name = "eng-oncall".to_string();
    d.provider = "cc".to_string();
    d.id = crate::model::GroupId("eng-oncall".to_string());
    d.bans = Some(BTreeSet::from([m("mallory")]));
    let mut l = live(&[
        ("alice", Role::Admin),
        ("bob", Role::Admin),
        ("carol", Role::Participant),
        ("zed", Role::Participant),
    ]);
    l.owner = Some(m("alice"));
    l.bans = Some(BTreeSet::from([m("trent")]));
    let changed = plan(&d, &l);
    let mut quiet = desired(Kind::Cometchat, &[("alice", Role::Admin)]);
    quiet.name = "quiet".to_string();
    let same = plan(&quiet, &live(&[("alice", Role::Admin)]));
    let mut big = desired(Kind::Cometchat, &[]);
    big.name = "big".to_string();
    big.max_removals = RemovalLimit::Count(1);
    let blocked = plan(
        &big,
        &live(&[("x", Role::Participant), ("y", Role::Participant)]),
    );
    Plan {
        groups: vec![blocked, changed, same],
        errors: vec![GroupError {
            group: "gone".to_string(),
            provider: "cc".to_string(),
            message: "cannot read group gone: ERR_GUID_NOT_FOUND".to_string(),
        }],
    }
}

#[test]
fn text_rendering() {
    insta::assert_snapshot!(render::text(&sample_plan(), false));
}

#[test]
fn text_rendering_is_coloured_only_when_asked() {
    assert!(!render::text(&sample_plan(), false).contains('\u{1b}'));
    assert!(render::text(&sample_plan(), true).contains('\u{1b}'));
}

#[test]
fn json_rendering() {
    insta::assert_json_snapshot!(render::json(&sample_plan()));
}

#[test]
fn markdown_rendering() {
    insta::assert_snapshot!(render::markdown(&sample_plan()));
}
