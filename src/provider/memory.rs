//! An in-memory provider for engine and CLI tests. It enforces the same capabilities and
//! batch limits as the real services, protects the owner, answers per member, can fail reads
//! on demand, and keeps a request log so tests assert end states and call counts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use crate::ctx::Ctx;
use crate::model::{Batch, GroupId, LiveGroup, MemberId, MemberOutcome, OpKind, Role};

use super::{Capabilities, Kind, MuteSupport, Provider, ProviderError, RequestCounts};

/// One write call as the memory provider saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedCall {
    /// The group written to.
    pub group: GroupId,
    /// The operation of the call.
    pub kind: OpKind,
    /// The members the call carried, in batch order.
    pub members: Vec<MemberId>,
}

#[derive(Debug, Default)]
struct State {
    groups: BTreeMap<GroupId, LiveGroup>,
    log: Vec<LoggedCall>,
    fail_fetches: usize,
    fail_group_fetches: BTreeSet<GroupId>,
    reads: u64,
}

/// A stateful fake of a provider of some kind.
pub struct MemoryProvider {
    kind: Kind,
    state: Mutex<State>,
    /// Ids that do not exist at the provider: adding them fails per member.
    pub nonexistent: Mutex<BTreeSet<MemberId>>,
    /// A pause inside every call, to observe concurrency.
    pub latency: Duration,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl MemoryProvider {
    /// An empty provider that enforces the capabilities of `kind`.
    pub fn new(kind: Kind) -> Self {
        MemoryProvider {
            kind,
            state: Mutex::new(State::default()),
            nonexistent: Mutex::new(BTreeSet::new()),
            latency: Duration::ZERO,
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        }
    }

    /// Pause `d` inside every call so concurrent calls overlap observably.
    pub fn with_latency(mut self, d: Duration) -> Self {
        self.latency = d;
        self
    }

    /// Put a group's live state.
    pub fn set_group(&self, id: &str, live: LiveGroup) {
        let mut live = live;
        if self.kind.capabilities().bans && live.bans.is_none() {
            live.bans = Some(BTreeSet::new());
        }
        self.state
            .lock()
            .expect("lock")
            .groups
            .insert(GroupId(id.to_string()), live);
    }

    /// A group's live state as it is now.
    pub fn group(&self, id: &str) -> Option<LiveGroup> {
        self.state
            .lock()
            .expect("lock")
            .groups
            .get(&GroupId(id.to_string()))
            .cloned()
    }

    /// Every write call so far.
    pub fn log(&self) -> Vec<LoggedCall> {
        self.state.lock().expect("lock").log.clone()
    }

    /// Fail the next `n` fetches (any group).
    pub fn fail_next_fetches(&self, n: usize) {
        self.state.lock().expect("lock").fail_fetches = n;
    }

    /// Always fail fetches of one group (a partial or broken read).
    pub fn fail_fetches_of(&self, id: &str) {
        self.state
            .lock()
            .expect("lock")
            .fail_group_fetches
            .insert(GroupId(id.to_string()));
    }

    /// The most calls that were in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    async fn enter(&self, ctx: &Ctx, write: bool) -> InFlight<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        ctx.count(write);
        if !self.latency.is_zero() {
            // A fake's latency is not a wait to cut short: the call is "in flight".
            let _ = Ctx::new(*ctx.clock(), Default::default())
                .sleep(self.latency)
                .await;
        }
        InFlight(&self.in_flight)
    }
}

struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Provider for MemoryProvider {
    async fn fetch(&self, ctx: &Ctx, group: &GroupId) -> Result<LiveGroup, ProviderError> {
        let _g = self.enter(ctx, false).await;
        let mut st = self.state.lock().expect("lock");
        st.reads += 1;
        if st.fail_fetches > 0 {
            st.fail_fetches -= 1;
            return Err(ProviderError::transient(
                "read failed after 2 of 3 pages (injected)",
            ));
        }
        if st.fail_group_fetches.contains(group) {
            return Err(ProviderError::transient(
                "read failed after 2 of 3 pages (injected)",
            ));
        }
        st.groups.get(group).cloned().ok_or_else(|| {
            ProviderError::fatal(format!("group {group} does not exist")).with_code("NOT_FOUND")
        })
    }

    async fn apply(
        &self,
        ctx: &Ctx,
        group: &GroupId,
        batch: &Batch,
    ) -> Result<Vec<MemberOutcome>, ProviderError> {
        let _g = self.enter(ctx, true).await;
        let caps = self.kind.capabilities();
        let max = caps.max_batch.get(batch.kind);
        if batch.ops.len() > max {
            return Err(ProviderError::fatal(format!(
                "{} members in one {} call; the maximum is {max}",
                batch.ops.len(),
                batch.kind
            ))
            .with_code("OVER_LIMIT"));
        }
        check_caps(caps, batch)?;
        let nonexistent = self.nonexistent.lock().expect("lock").clone();
        let mut st = self.state.lock().expect("lock");
        st.log.push(LoggedCall {
            group: group.clone(),
            kind: batch.kind,
            members: batch.members().cloned().collect(),
        });
        let g = st.groups.get_mut(group).ok_or_else(|| {
            ProviderError::fatal(format!("group {group} does not exist")).with_code("NOT_FOUND")
        })?;
        let mut out = Vec::new();
        for op in &batch.ops {
            let m = op.member.clone();
            let is_owner = g.owner.as_ref() == Some(&m);
            let res = match op.kind {
                OpKind::Add if nonexistent.contains(&m) => {
                    MemberOutcome::failed(m, "NOT_FOUND", "no such user")
                }
                OpKind::Add if g.bans.as_ref().is_some_and(|b| b.contains(&m)) => {
                    MemberOutcome::failed(m, "BANNED", "the user is banned from the group")
                }
                OpKind::Add if g.members.contains_key(&m) => MemberOutcome::already(m),
                OpKind::Add => {
                    let role = if caps.add_with_role {
                        op.role.unwrap_or(Role::Participant)
                    } else {
                        Role::Participant
                    };
                    g.members.insert(m.clone(), role);
                    MemberOutcome::done(m)
                }
                OpKind::Promote | OpKind::Demote if is_owner && op.kind == OpKind::Demote => {
                    MemberOutcome::failed(m, "OWNER", "the owner cannot be demoted")
                }
                OpKind::Promote | OpKind::Demote => match g.members.get_mut(&m) {
                    None => MemberOutcome::failed(m, "NOT_A_MEMBER", "not a member"),
                    Some(r) if Some(*r) == op.role => MemberOutcome::already(m),
                    Some(r) => {
                        *r = op.role.unwrap_or(*r);
                        MemberOutcome::done(m)
                    }
                },
                OpKind::Remove if is_owner => {
                    MemberOutcome::failed(m, "OWNER", "the owner cannot be removed")
                }
                OpKind::Remove => match g.members.remove(&m) {
                    Some(_) => MemberOutcome::done(m),
                    None => MemberOutcome::already(m),
                },
                OpKind::Ban if is_owner => {
                    MemberOutcome::failed(m, "OWNER", "the owner cannot be banned")
                }
                OpKind::Ban => {
                    g.members.remove(&m);
                    if g.bans.get_or_insert_with(BTreeSet::new).insert(m.clone()) {
                        MemberOutcome::done(m)
                    } else {
                        MemberOutcome::already(m)
                    }
                }
                OpKind::Unban => {
                    if g.bans.as_mut().is_some_and(|b| b.remove(&m)) {
                        MemberOutcome::done(m)
                    } else {
                        MemberOutcome::already(m)
                    }
                }
                OpKind::Mute if is_owner => {
                    MemberOutcome::failed(m, "OWNER", "the owner cannot be muted")
                }
                OpKind::Mute => {
                    g.mutes
                        .insert(m.clone(), op.mute.unwrap_or(crate::model::Mute::Indefinite));
                    MemberOutcome::done(m)
                }
                OpKind::Unmute => match g.mutes.remove(&m) {
                    Some(_) => MemberOutcome::done(m),
                    None => MemberOutcome::already(m),
                },
                OpKind::TransferOwner if !g.members.contains_key(&m) => {
                    MemberOutcome::failed(m, "NOT_A_MEMBER", "the new owner must be a member")
                }
                OpKind::TransferOwner => {
                    g.owner = Some(m.clone());
                    MemberOutcome::done(m)
                }
            };
            out.push(res);
        }
        Ok(out)
    }

    fn capabilities_for(&self, _live: &LiveGroup) -> Capabilities {
        *self.kind.capabilities()
    }

    fn requests(&self) -> RequestCounts {
        let st = self.state.lock().expect("lock");
        RequestCounts {
            reads: st.reads,
            writes: st.log.len() as u64,
            ..RequestCounts::default()
        }
    }
}

/// Refuse what the kind cannot do, as the real service would.
fn check_caps(caps: &Capabilities, batch: &Batch) -> Result<(), ProviderError> {
    let refuse = |what: &str| {
        Err(ProviderError::fatal(format!("the provider cannot {what}")).with_code("UNSUPPORTED"))
    };
    match batch.kind {
        OpKind::Ban | OpKind::Unban if !caps.bans => refuse("ban"),
        OpKind::Mute | OpKind::Unmute if caps.mutes == MuteSupport::No => refuse("mute"),
        OpKind::TransferOwner if !caps.transfer_owner => refuse("transfer ownership"),
        _ => {
            for op in &batch.ops {
                if let Some(r) = op.role
                    && !caps.supports_role(r)
                {
                    return refuse(&format!("give the {r} role"));
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Op, Outcome};

    fn m(s: &str) -> MemberId {
        MemberId::new(s)
    }

    fn gid() -> GroupId {
        GroupId("g".into())
    }

    fn provider(kind: Kind) -> MemoryProvider {
        let p = MemoryProvider::new(kind);
        let mut live = LiveGroup {
            owner: Some(m("owner")),
            ..LiveGroup::default()
        };
        live.members.insert(m("owner"), Role::Admin);
        live.members.insert(m("alice"), Role::Participant);
        p.set_group("g", live);
        p
    }

    fn ctx() -> Ctx {
        Ctx::at(std::time::SystemTime::UNIX_EPOCH)
    }

    fn batch(kind: OpKind, ops: Vec<Op>) -> Batch {
        Batch { kind, ops }
    }

    #[tokio::test]
    async fn adds_answer_per_member_and_repeats_are_already_done() {
        let p = provider(Kind::Cometchat);
        p.nonexistent.lock().unwrap().insert(m("ghost"));
        let b = batch(
            OpKind::Add,
            vec![
                Op::new(OpKind::Add, m("bob")).with_role(Role::Moderator),
                Op::new(OpKind::Add, m("ghost")).with_role(Role::Participant),
                Op::new(OpKind::Add, m("alice")).with_role(Role::Participant),
            ],
        );
        let out = p.apply(&ctx(), &gid(), &b).await.unwrap();
        assert_eq!(out[0].outcome, Outcome::Done);
        assert!(matches!(&out[1].outcome, Outcome::Failed { code, .. } if code == "NOT_FOUND"));
        assert_eq!(out[2].outcome, Outcome::AlreadyDone);
        let live = p.group("g").unwrap();
        assert_eq!(live.members.get(&m("bob")), Some(&Role::Moderator));
        assert!(!live.members.contains_key(&m("ghost")));
        assert_eq!(p.log().len(), 1);
        assert_eq!(p.log()[0].members, vec![m("bob"), m("ghost"), m("alice")]);
    }

    #[tokio::test]
    async fn the_owner_is_never_removed_demoted_or_banned() {
        let p = provider(Kind::Cometchat);
        for (kind, op) in [
            (OpKind::Remove, Op::new(OpKind::Remove, m("owner"))),
            (
                OpKind::Demote,
                Op::new(OpKind::Demote, m("owner")).with_role(Role::Participant),
            ),
            (OpKind::Ban, Op::new(OpKind::Ban, m("owner"))),
        ] {
            let out = p
                .apply(&ctx(), &gid(), &batch(kind, vec![op]))
                .await
                .unwrap();
            assert!(
                matches!(&out[0].outcome, Outcome::Failed { code, .. } if code == "OWNER"),
                "{kind}: {:?}",
                out[0]
            );
        }
        let live = p.group("g").unwrap();
        assert_eq!(live.members.get(&m("owner")), Some(&Role::Admin));
        assert!(!live.bans.unwrap().contains(&m("owner")));
    }

    #[tokio::test]
    async fn over_limit_batches_and_missing_capabilities_are_fatal() {
        let p = provider(Kind::Cometchat);
        let ops: Vec<Op> = (0..26)
            .map(|i| Op::new(OpKind::Add, m(&format!("u{i}"))).with_role(Role::Participant))
            .collect();
        let e = p
            .apply(&ctx(), &gid(), &batch(OpKind::Add, ops))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("maximum is 25"), "{e}");

        // CometChat has no mutes; WAHA has neither bans nor moderators.
        let e = p
            .apply(
                &ctx(),
                &gid(),
                &batch(OpKind::Mute, vec![Op::new(OpKind::Mute, m("alice"))]),
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("cannot mute"), "{e}");
        let w = provider(Kind::Waha);
        let e = w
            .apply(
                &ctx(),
                &gid(),
                &batch(OpKind::Ban, vec![Op::new(OpKind::Ban, m("alice"))]),
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("cannot ban"), "{e}");
        let e = w
            .apply(
                &ctx(),
                &gid(),
                &batch(
                    OpKind::Promote,
                    vec![Op::new(OpKind::Promote, m("alice")).with_role(Role::Moderator)],
                ),
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("moderator"), "{e}");
        // Refused calls change nothing and are not logged as sent.
        assert!(p.log().is_empty() && w.log().is_empty());
        assert_eq!(p.group("g").unwrap().members.len(), 2);
    }

    #[tokio::test]
    async fn fetches_fail_on_demand_and_then_recover() {
        let p = provider(Kind::Tencent);
        p.fail_next_fetches(2);
        assert!(p.fetch(&ctx(), &gid()).await.is_err());
        assert!(p.fetch(&ctx(), &gid()).await.is_err());
        let live = p.fetch(&ctx(), &gid()).await.unwrap();
        assert_eq!(live.members.len(), 2);
        p.fail_fetches_of("g");
        assert!(p.fetch(&ctx(), &gid()).await.is_err());
        assert!(p.fetch(&ctx(), &GroupId("other".into())).await.is_err());
        assert_eq!(p.requests().reads, 5);
    }

    #[tokio::test]
    async fn bans_remove_the_member_and_unbans_lift_them() {
        let p = provider(Kind::Tencent);
        let out = p
            .apply(
                &ctx(),
                &gid(),
                &batch(OpKind::Ban, vec![Op::new(OpKind::Ban, m("alice"))]),
            )
            .await
            .unwrap();
        assert_eq!(out[0].outcome, Outcome::Done);
        let live = p.group("g").unwrap();
        assert!(!live.members.contains_key(&m("alice")));
        assert!(live.bans.as_ref().unwrap().contains(&m("alice")));
        // A banned user cannot be added back until unbanned.
        let add = batch(OpKind::Add, vec![Op::new(OpKind::Add, m("alice"))]);
        let out = p.apply(&ctx(), &gid(), &add).await.unwrap();
        assert!(matches!(&out[0].outcome, Outcome::Failed { code, .. } if code == "BANNED"));
        let unban = batch(OpKind::Unban, vec![Op::new(OpKind::Unban, m("alice"))]);
        assert_eq!(
            p.apply(&ctx(), &gid(), &unban).await.unwrap()[0].outcome,
            Outcome::Done
        );
        assert_eq!(
            p.apply(&ctx(), &gid(), &unban).await.unwrap()[0].outcome,
            Outcome::AlreadyDone
        );
        assert_eq!(
            p.apply(&ctx(), &gid(), &add).await.unwrap()[0].outcome,
            Outcome::Done
        );
    }
}
