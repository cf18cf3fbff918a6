//! Desired vs live -> ordered operations, batches and the safety verdict.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{Batch, DesiredGroup, LiveGroup, MemberId, Mute, Op, OpKind, Role, Unlisted};

use super::{GroupPlan, PlanOptions};

/// Plan one group. Pure: the same inputs always give the same plan.
pub fn plan_group(desired: &DesiredGroup, live: &LiveGroup, opts: &PlanOptions) -> GroupPlan {
    let caps = opts.caps;
    let now = opts.now;
    let mut notes = Vec::new();
    // Members are named where the manifest has them; one only the live side has keeps their id.
    let declared_name = |m: &MemberId| {
        let listed = desired.members.contains_key(m)
            || desired.owner.as_ref() == Some(m)
            || desired.bans.as_ref().is_some_and(|b| b.contains(m))
            || desired.mutes.as_ref().is_some_and(|mu| mu.contains_key(m));
        listed.then(|| desired.names.get(m)).flatten()
    };
    let who = |m: &MemberId| super::display(declared_name(m).map(String::as_str), m);

    // Why a member may not be taken out, demoted, banned or muted.
    let untouchable = |m: &MemberId| -> Option<&'static str> {
        if live.owner.as_ref() == Some(m) {
            Some("the group's owner")
        } else if live.me.as_ref() == Some(m) {
            Some("rosterd's own identity")
        } else if desired.protected.contains(m) {
            Some("protected")
        } else {
            None
        }
    };

    // The desired owner is a member (an admin where the provider has admins) even when no
    // role list names them. Kept as an override so the desired roster is never copied.
    let owner_entry: Option<(&MemberId, Role)> = desired
        .owner
        .as_ref()
        .filter(|o| caps.transfer_owner || live.owner.as_ref() == Some(*o))
        .map(|o| {
            let listed = desired.members.get(o).copied();
            let role = if caps.supports_role(Role::Admin) {
                Role::Admin
            } else {
                listed.unwrap_or(Role::Participant)
            };
            (o, role)
        });
    let wants =
        |m: &MemberId| desired.members.contains_key(m) || owner_entry.is_some_and(|(o, _)| o == m);

    let live_banned: BTreeSet<MemberId> = live.bans.clone().unwrap_or_default();
    let mut ops: Vec<Op> = Vec::new();

    // Unban: authoritative bans drop those not listed; a wanted member must be unbanned first.
    for m in &live_banned {
        let keep_banned = desired.bans.as_ref().is_some_and(|b| b.contains(m));
        if !keep_banned && (desired.bans.is_some() || wants(m)) {
            ops.push(Op::new(OpKind::Unban, m.clone()));
        }
    }

    // Adds and role changes: one merge of the two sorted rosters (linear in their sizes),
    // then the owner if no role list names them.
    let mut unlisted_live: Vec<(&MemberId, Role)> = Vec::new();
    let mut wanted: Vec<(&MemberId, Role, Option<Role>)> = Vec::new();
    for (m, want, have) in merge(&desired.members, &live.members) {
        match (want, have) {
            (Some(role), have) => {
                let role = owner_entry
                    .filter(|(o, _)| *o == m)
                    .map_or(role, |(_, r)| r);
                wanted.push((m, role, have));
            }
            (None, Some(cur)) => unlisted_live.push((m, cur)),
            (None, None) => {}
        }
    }
    if let Some((o, r)) = owner_entry.filter(|(o, _)| !desired.members.contains_key(*o)) {
        wanted.push((o, r, live.members.get(o).copied()));
    }
    for (m, role, have) in wanted {
        match have {
            None if caps.add_with_role || role == Role::Participant => {
                ops.push(Op::new(OpKind::Add, m.clone()).with_role(role));
            }
            None => {
                ops.push(Op::new(OpKind::Add, m.clone()).with_role(Role::Participant));
                let promote = Op::new(OpKind::Promote, m.clone()).with_role(role);
                ops.push(promote.with_from(Role::Participant));
            }
            Some(cur) if cur < role => {
                ops.push(
                    Op::new(OpKind::Promote, m.clone())
                        .with_role(role)
                        .with_from(cur),
                );
            }
            Some(cur) if cur > role => match untouchable(m) {
                Some(why) => notes.push(format!(
                    "{} is {why}: not demoted from {cur} to {role}",
                    who(m)
                )),
                None => ops.push(
                    Op::new(OpKind::Demote, m.clone())
                        .with_role(role)
                        .with_from(cur),
                ),
            },
            Some(_) => {}
        }
    }

    // Mutes, only where the manifest manages them.
    if let Some(want_mutes) = &desired.mutes {
        let live_active: BTreeMap<&MemberId, Mute> = live
            .mutes
            .iter()
            .filter(|(_, mu)| mu.active_at(now))
            .map(|(m, mu)| (m, *mu))
            .collect();
        for (m, &mu) in want_mutes {
            if !mu.active_at(now) {
                continue; // an expired desired mute means "not muted"; handled below
            }
            if live_active.get(m).is_some_and(|have| same_mute(*have, mu)) {
                continue;
            }
            match untouchable(m) {
                Some(why) => notes.push(format!("{} is {why}: not muted", who(m))),
                None => ops.push(Op::new(OpKind::Mute, m.clone()).with_mute(mu)),
            }
        }
        for m in live_active.keys() {
            let still = want_mutes.get(*m).is_some_and(|mu| mu.active_at(now));
            if !still {
                ops.push(Op::new(OpKind::Unmute, (*m).clone()));
            }
        }
    }

    // Removals of unlisted members.
    let banning: BTreeSet<&MemberId> = desired
        .bans
        .iter()
        .flatten()
        .filter(|m| !live_banned.contains(*m))
        .collect();
    for (m, cur) in unlisted_live {
        if wants(m) || banning.contains(m) {
            continue;
        }
        if live.unresolved.contains(m) {
            notes.push(format!("{m} could not be matched to a manifest id: kept"));
            continue;
        }
        if desired.unlisted == Unlisted::Keep {
            continue;
        }
        match untouchable(m) {
            Some(why) => notes.push(format!("{} is {why}: not removed", who(m))),
            None => ops.push(Op::new(OpKind::Remove, m.clone()).with_from(cur)),
        }
    }

    // Bans (banning removes a live member too).
    for m in banning {
        match untouchable(m) {
            Some(why) => notes.push(format!("{} is {why}: not banned", who(m))),
            None => {
                let mut op = Op::new(OpKind::Ban, m.clone());
                if let Some(&cur) = live.members.get(m) {
                    op = op.with_from(cur);
                }
                ops.push(op);
            }
        }
    }

    // Ownership.
    if let Some(owner) = &desired.owner
        && live.owner.as_ref() != Some(owner)
    {
        if caps.transfer_owner {
            ops.push(Op::new(OpKind::TransferOwner, owner.clone()));
        } else {
            let current = live.owner.as_ref().map_or("nobody".to_string(), &who);
            notes.push(format!(
                "owner is {current} but the manifest says {}; {} cannot transfer ownership",
                who(owner),
                desired.kind
            ));
        }
    }

    ops.sort_by(|a, b| a.kind.cmp(&b.kind).then_with(|| a.member.cmp(&b.member)));
    let batches = batch(&ops, opts);

    let removals = ops.iter().filter(|o| o.kind.is_removal()).count();
    let allowed = desired.max_removals.allowed(live.members.len());
    let blocked = (removals > allowed && !opts.allow_mass_removal).then(|| {
        format!(
            "plan removes or bans {removals} of {} members, over max_removals {} (= {allowed}); \
             nothing applied to this group (use --allow-mass-removal to override)",
            live.members.len(),
            desired.max_removals
        )
    });

    // The roster diff shows the members the plan touches, so its size follows the drift,
    // not the group.
    let touched: BTreeSet<&MemberId> = ops.iter().map(|o| &o.member).collect();
    let mut small = LiveGroup {
        members: touched
            .iter()
            .filter_map(|m| live.members.get_key_value(*m))
            .map(|(m, r)| (m.clone(), *r))
            .collect(),
        bans: Some(
            touched
                .iter()
                .filter(|m| live_banned.contains(**m))
                .map(|m| (*m).clone())
                .collect(),
        ),
        mutes: touched
            .iter()
            .filter_map(|m| live.mutes.get_key_value(*m))
            .map(|(m, mu)| (m.clone(), *mu))
            .collect(),
        ..LiveGroup::default()
    };
    let before = roster_lines(
        &small.members,
        small.bans.as_ref().expect("set above"),
        &small.mutes,
        now,
    );
    small.mutes.retain(|_, mu| mu.active_at(now));
    for op in &ops {
        apply_op(&mut small, op);
    }
    let after = roster_lines(
        &small.members,
        &small.bans.clone().unwrap_or_default(),
        &small.mutes,
        now,
    );
    let names = touched
        .iter()
        .filter_map(|m| declared_name(m).map(|n| ((*m).clone(), n.clone())))
        .collect();

    GroupPlan {
        group: desired.name.clone(),
        provider: desired.provider.clone(),
        kind: desired.kind,
        id: desired.id.clone(),
        ops,
        batches,
        blocked,
        notes,
        before,
        after,
        names,
        checksum: None,
    }
}

/// The union of two sorted rosters, in order: (member, desired role, live role).
fn merge<'a>(
    want: &'a BTreeMap<MemberId, Role>,
    have: &'a BTreeMap<MemberId, Role>,
) -> impl Iterator<Item = (&'a MemberId, Option<Role>, Option<Role>)> + 'a {
    let mut w = want.iter().peekable();
    let mut h = have.iter().peekable();
    std::iter::from_fn(move || match (w.peek(), h.peek()) {
        (None, None) => None,
        (Some(_), None) => w.next().map(|(m, r)| (m, Some(*r), None)),
        (None, Some(_)) => h.next().map(|(m, r)| (m, None, Some(*r))),
        (Some((wm, _)), Some((hm, _))) => match wm.cmp(hm) {
            std::cmp::Ordering::Less => w.next().map(|(m, r)| (m, Some(*r), None)),
            std::cmp::Ordering::Greater => h.next().map(|(m, r)| (m, None, Some(*r))),
            std::cmp::Ordering::Equal => {
                let (m, wr) = w.next().expect("peeked");
                let (_, hr) = h.next().expect("peeked");
                Some((m, Some(*wr), Some(*hr)))
            }
        },
    })
}

/// Cut ordered operations into the fewest write calls: one kind per call, at most the batch
/// size, and one shared parameter per call where the provider's call takes one value.
fn batch(ops: &[Op], opts: &PlanOptions) -> Vec<Batch> {
    let mut batches = Vec::new();
    for kind in OpKind::ALL {
        let of_kind: Vec<&Op> = ops.iter().filter(|o| o.kind == kind).collect();
        if of_kind.is_empty() {
            continue;
        }
        let size = (opts.batch_size)(kind).max(1);
        let mut groups: BTreeMap<(Option<Role>, Option<Mute>), Vec<Op>> = BTreeMap::new();
        for op in of_kind {
            let key = if (opts.caps.uniform_batch)(kind) {
                (op.role, op.mute)
            } else {
                (None, None)
            };
            groups.entry(key).or_default().push(op.clone());
        }
        for (_, group) in groups {
            for chunk in group.chunks(size) {
                batches.push(Batch {
                    kind,
                    ops: chunk.to_vec(),
                });
            }
        }
    }
    batches
}

/// The live state after `ops` all succeed. Used for the "after" roster and by tests.
pub fn simulate(live: &LiveGroup, ops: &[Op], now: std::time::SystemTime) -> LiveGroup {
    let mut out = live.clone();
    out.mutes.retain(|_, mu| mu.active_at(now));
    for op in ops {
        apply_op(&mut out, op);
    }
    out
}

/// The effect of one successful operation on a live state.
pub fn apply_op(state: &mut LiveGroup, op: &Op) {
    let m = &op.member;
    match op.kind {
        OpKind::Unban => {
            if let Some(b) = state.bans.as_mut() {
                b.remove(m);
            }
        }
        OpKind::Add => {
            state
                .members
                .entry(m.clone())
                .or_insert(op.role.unwrap_or(Role::Participant));
        }
        OpKind::Promote | OpKind::Demote => {
            if let (Some(r), Some(cur)) = (op.role, state.members.get_mut(m)) {
                *cur = r;
            }
        }
        OpKind::Mute => {
            if let Some(mu) = op.mute {
                state.mutes.insert(m.clone(), mu);
            }
        }
        OpKind::Unmute => {
            state.mutes.remove(m);
        }
        OpKind::Remove => {
            state.members.remove(m);
        }
        OpKind::Ban => {
            state.members.remove(m);
            state
                .bans
                .get_or_insert_with(BTreeSet::new)
                .insert(m.clone());
        }
        OpKind::TransferOwner => state.owner = Some(m.clone()),
    }
}

fn roster_lines(
    members: &BTreeMap<MemberId, Role>,
    bans: &BTreeSet<MemberId>,
    mutes: &BTreeMap<MemberId, Mute>,
    now: std::time::SystemTime,
) -> Vec<String> {
    let mut lines: Vec<String> = members.iter().map(|(m, r)| format!("{m} {r}")).collect();
    lines.extend(bans.iter().map(|m| format!("{m} banned")));
    lines.extend(
        mutes
            .iter()
            .filter(|(_, mu)| mu.active_at(now))
            .map(|(m, mu)| format!("{m} muted {mu}")),
    );
    lines.sort();
    lines
}

/// Mute ends this close are the same end. Providers store an end computed from their own
/// receipt time (Tencent: receipt + MuteTime), so an end read back differs from the one asked
/// for by the request's latency and the clocks' skew; re-muting over that would be churn on
/// every run. Manifests give ends to the second, and a minute is below any intent they express.
pub const MUTE_END_TOLERANCE: std::time::Duration = std::time::Duration::from_secs(60);

fn same_mute(a: Mute, b: Mute) -> bool {
    match (a, b) {
        (Mute::Indefinite, Mute::Indefinite) => true,
        (Mute::Until(x), Mute::Until(y)) => {
            let gap = x.duration_since(y).or_else(|_| y.duration_since(x));
            gap.is_ok_and(|d| d <= MUTE_END_TOLERANCE)
        }
        _ => false,
    }
}
