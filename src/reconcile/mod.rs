//! The reconcile engine: per group fetch -> plan -> safety -> apply batches in order ->
//! re-fetch -> drift. Groups run concurrently, bounded per provider instance by the one
//! semaphore its [`Target`] carries; one group's failure never stops another. Time,
//! cancellation and request counts come from the [`Ctx`] handed in.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::audit::AuditLog;
use crate::ctx::{Ctx, Sent};
use crate::model::{
    Batch, DesiredGroup, LiveGroup, MemberId, MemberOutcome, Op, OpKind, Outcome, Role,
};
use crate::plan::{self, GroupError, GroupPlan, Plan, PlanOptions};
use crate::provider::{Instance, Provider};

mod progress;

pub use progress::{LogProgress, Progress, TerminalProgress, default_progress};

/// Groups of one provider instance reconciled at the same time, unless configured.
pub const DEFAULT_CONCURRENCY: usize = 4;

/// A provider instance's configuration, its client, and the bound on its groups in flight.
#[derive(Clone)]
pub struct Target {
    /// The instance's settings (batch sizes, pacing).
    pub instance: Instance,
    /// The client that reads and writes the instance's groups.
    pub provider: Arc<dyn Provider>,
    /// Held by every group run of the instance, whoever starts it.
    permits: Arc<Semaphore>,
}

impl Target {
    /// The target of `instance`, at most [`DEFAULT_CONCURRENCY`] groups at a time.
    pub fn new(instance: Instance, provider: Arc<dyn Provider>) -> Self {
        Target {
            instance,
            provider,
            permits: Arc::new(Semaphore::new(DEFAULT_CONCURRENCY)),
        }
    }

    /// At most `n` (at least 1) groups of this instance at a time.
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.permits = Arc::new(Semaphore::new(n.max(1)));
        self
    }
}

/// How one run behaves.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Apply the plan (otherwise stop after planning).
    pub apply: bool,
    /// Lift the mass-removal safety limit (SPEC: `--allow-mass-removal`).
    pub allow_mass_removal: bool,
    /// Where apply progress is shown; `None` shows nothing.
    pub progress: Option<Arc<dyn Progress>>,
}

/// How a group's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupStatus {
    /// Nothing to do.
    InSync,
    /// Plan only: changes are pending.
    Changes,
    /// Applied, and the re-read shows no drift.
    Applied,
    /// A read failed, an operation failed, or drift remains.
    Failed,
    /// A safety limit blocked the group; nothing was applied.
    Blocked,
}

/// One operation's outcome for one member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpOutcome {
    /// The operation.
    pub kind: OpKind,
    /// The member it was for.
    pub member: MemberId,
    /// What the provider (or the engine, for skips) said.
    pub outcome: Outcome,
}

/// What happened to one group.
#[derive(Debug, Clone, Serialize)]
pub struct GroupReport {
    /// The group's manifest name.
    pub group: String,
    /// The provider instance name.
    pub provider: String,
    /// The plan from the first read; `None` when the read failed.
    pub plan: Option<GroupPlan>,
    /// Why the group could not be read (no secret or URL in it).
    pub error: Option<String>,
    /// One entry per member per operation applied or skipped, in send order.
    pub outcomes: Vec<OpOutcome>,
    /// After apply: the plan computed from the re-read (empty = converged).
    pub drift: Option<GroupPlan>,
    /// How the group ended.
    pub status: GroupStatus,
    /// HTTP write requests sent for this group (every request, splits and retries included).
    pub calls: usize,
    /// HTTP requests of this group's run, reads and writes.
    pub requests: Sent,
}

impl GroupReport {
    fn new(g: &DesiredGroup) -> Self {
        GroupReport {
            group: g.name.clone(),
            provider: g.provider.clone(),
            plan: None,
            error: None,
            outcomes: Vec::new(),
            drift: None,
            status: GroupStatus::Failed,
            calls: 0,
            requests: Sent::default(),
        }
    }

    /// Operations that failed or were skipped.
    pub fn failed_ops(&self) -> impl Iterator<Item = &OpOutcome> {
        self.outcomes.iter().filter(|o| !o.outcome.is_ok())
    }
}

/// The result of a run over many groups.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Per group, sorted by group name.
    pub groups: Vec<GroupReport>,
}

impl Report {
    /// The process exit code (SPEC §5).
    ///
    /// plan: any blocked group -> 4; else any group that could not be read -> 3; else pending
    /// changes -> 2 with `--detailed-exitcode` (0 without); else 0.
    /// apply: any blocked group -> 4 (the others were applied); else any failed or skipped
    /// operation, unreadable group or remaining drift -> 3; else 0.
    pub fn exit_code(&self, apply: bool, detailed: bool) -> u8 {
        let blocked = self.groups.iter().any(|g| g.status == GroupStatus::Blocked);
        if blocked {
            return 4;
        }
        if self.groups.iter().any(|g| g.status == GroupStatus::Failed) {
            return 3;
        }
        if !apply && detailed && self.groups.iter().any(|g| g.status == GroupStatus::Changes) {
            return 2;
        }
        0
    }

    /// The plan document of this run: the plan of every group that was read, an error entry
    /// for every group that was not.
    pub fn plan(&self) -> Plan {
        let mut out = Plan::default();
        for g in &self.groups {
            match (&g.plan, &g.error) {
                (Some(p), _) => out.groups.push(p.clone()),
                (None, Some(e)) => out.errors.push(GroupError {
                    group: g.group.clone(),
                    provider: g.provider.clone(),
                    message: e.clone(),
                }),
                (None, None) => {}
            }
        }
        out
    }

    /// Write calls sent across all groups.
    pub fn calls(&self) -> usize {
        self.groups.iter().map(|g| g.calls).sum()
    }
}

/// Reconcile every group: plan only, or plan and apply. Never panics on a provider failure;
/// every group gets a report.
pub async fn run(
    ctx: &Ctx,
    groups: &[DesiredGroup],
    targets: &BTreeMap<String, Target>,
    opts: &RunOptions,
    audit: Option<&AuditLog>,
) -> Report {
    // One scope per group, so its report counts the requests made for it alone.
    let scopes: Vec<Ctx> = groups.iter().map(|_| ctx.scoped()).collect();
    // Plans first, for every group, so the progress display knows the total of calls.
    let planned = futures::future::join_all(groups.iter().zip(&scopes).map(|(g, gctx)| {
        let target = targets.get(&g.provider);
        bounded(target, g, plan_one(gctx, g, target, opts))
    }))
    .await;

    if !opts.apply {
        let mut reports: Vec<GroupReport> = planned
            .into_iter()
            .zip(&scopes)
            .map(|((mut r, _), gctx)| {
                r.requests = gctx.sent();
                r
            })
            .collect();
        reports.sort_by(|a, b| a.group.cmp(&b.group));
        return Report { groups: reports };
    }

    if let Some(p) = &opts.progress {
        let total: usize = planned
            .iter()
            .filter_map(|(r, _)| r.plan.as_ref().filter(|p| p.blocked.is_none()))
            .map(GroupPlan::calls)
            .sum();
        p.calls_planned(total);
    }

    // `join_all` keeps order, so plans line up with their groups.
    let mut reports = futures::future::join_all(groups.iter().zip(planned).zip(&scopes).map(
        |((g, (report, live)), gctx)| {
            let target = targets.get(&g.provider);
            bounded(target, g, async move {
                let mut r = apply_one(gctx, g, report, live, target, opts, audit).await;
                r.requests = gctx.sent();
                r
            })
        },
    ))
    .await;
    if let Some(p) = &opts.progress {
        p.finish();
    }
    reports.sort_by(|a, b| a.group.cmp(&b.group));
    Report { groups: reports }
}

/// One group's whole run — fetch, plan, safety, apply, verify — holding a permit of its
/// provider instance. The daemon's entry point.
pub async fn reconcile_group(
    ctx: &Ctx,
    g: &DesiredGroup,
    target: Option<&Target>,
    opts: &RunOptions,
    audit: Option<&AuditLog>,
) -> GroupReport {
    let gctx = ctx.scoped();
    let mut report = bounded(target, g, async {
        let (report, live) = plan_one(&gctx, g, target, opts).await;
        if opts.apply {
            apply_one(&gctx, g, report, live, target, opts, audit).await
        } else {
            report
        }
    })
    .await;
    report.requests = gctx.sent();
    report
}

/// Run one group's work inside its span, holding a permit of its provider instance.
async fn bounded<T>(target: Option<&Target>, g: &DesiredGroup, work: impl Future<Output = T>) -> T {
    let _permit = match target {
        Some(t) => t.permits.clone().acquire_owned().await.ok(),
        None => None,
    };
    let span = tracing::info_span!("group", group = %g.name, provider = %g.provider);
    work.instrument(span).await
}

/// Fetch and plan one group.
async fn plan_one(
    ctx: &Ctx,
    g: &DesiredGroup,
    target: Option<&Target>,
    opts: &RunOptions,
) -> (GroupReport, Option<LiveGroup>) {
    let mut report = GroupReport::new(g);
    let Some(target) = target else {
        report.error = Some(format!("provider instance {} has no client", g.provider));
        return (report, None);
    };
    let live = match target.provider.fetch(ctx, &g.id).await {
        Ok(live) => live,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the group; nothing planned or applied");
            report.error = Some(format!("cannot read group {}: {e}", g.id));
            return (report, None);
        }
    };
    if let Some(why) = plan::unsupported(g, &live, &target.provider.capabilities_for(&live)) {
        tracing::warn!(reason = %why, "the group cannot do what its manifest asks");
        report.error = Some(why);
        return (report, None);
    }
    let plan = make_plan(ctx, g, &live, target, opts.allow_mass_removal);
    report.status = if plan.blocked.is_some() {
        GroupStatus::Blocked
    } else if plan.is_empty() {
        GroupStatus::InSync
    } else {
        GroupStatus::Changes
    };
    report.plan = Some(plan);
    (report, Some(live))
}

fn make_plan(
    ctx: &Ctx,
    g: &DesiredGroup,
    live: &LiveGroup,
    target: &Target,
    allow_mass_removal: bool,
) -> GroupPlan {
    let caps = target.provider.capabilities_for(live);
    let batch_size = |k: OpKind| target.instance.batch_size(k, &caps);
    plan::plan_group(
        g,
        live,
        &PlanOptions {
            caps: &caps,
            batch_size: &batch_size,
            now: ctx.now(),
            allow_mass_removal,
        },
    )
}

/// Apply one group's plan, batch by batch, then re-read and report drift.
async fn apply_one(
    ctx: &Ctx,
    g: &DesiredGroup,
    mut report: GroupReport,
    live: Option<LiveGroup>,
    target: Option<&Target>,
    opts: &RunOptions,
    audit: Option<&AuditLog>,
) -> GroupReport {
    let (Some(plan), Some(live), Some(target)) = (report.plan.clone(), live, target) else {
        return report; // the read failed: nothing is applied
    };
    if plan.blocked.is_some() {
        tracing::warn!(
            reason = plan.blocked.as_deref().unwrap_or(""),
            "blocked by a safety limit"
        );
        return report;
    }
    if plan.is_empty() {
        return report;
    }
    let mut floor = AdminFloor::new(&live, g);
    // The kinds of write sent, so the verifying read covers what they could have changed.
    let mut touched = BTreeSet::new();

    let packs = target.provider.packs_batches();
    let mut next = 0;
    while next < plan.batches.len() {
        // The batches that go out together: one, or — where the provider packs several into
        // one request — as many as the admin floor lets ride along. A batch that takes an admin
        // waits for the results of an admin add or promotion before it (a later request), so a
        // failed promotion still keeps the floor.
        let mut wave: Vec<Batch> = Vec::new();
        let mut gives_admin = false;
        while next < plan.batches.len() {
            let batch = &plan.batches[next];
            if !wave.is_empty() && (!packs || (gives_admin && floor.takes_admin(batch))) {
                break;
            }
            next += 1;
            // Keep only the members the admin floor allows to go.
            let (send, skipped) = floor.filter(batch);
            for op in skipped {
                report.outcomes.push(OpOutcome {
                    kind: op.kind,
                    member: op.member.clone(),
                    outcome: Outcome::Skipped {
                        reason: "an earlier admin add or promotion failed; keeping the group's \
                                 admin floor"
                            .to_string(),
                    },
                });
            }
            if send.ops.is_empty() {
                continue;
            }
            // Admins this wave takes count as gone for the batches after it in the wave: a
            // failed removal only leaves one more admin than counted.
            if packs {
                floor.take(&send);
            }
            gives_admin |= AdminFloor::gives_admin(&send);
            touched.insert(send.kind);
            wave.push(send);
        }
        if wave.is_empty() {
            continue;
        }
        let scope = ctx.scoped();
        let results = if wave.len() == 1 {
            vec![target.provider.apply(&scope, &g.id, &wave[0]).await]
        } else {
            target.provider.apply_all(&scope, &g.id, &wave).await
        };
        let requests = scope.sent().writes as usize;
        report.calls += requests;
        for (i, (send, result)) in wave.iter().zip(results).enumerate() {
            let outcomes = match result {
                Ok(outs) => outs,
                Err(e) => {
                    tracing::warn!(op = %send.kind, members = send.ops.len(), error = %e, "write call failed");
                    send.ops
                        .iter()
                        .map(|o| MemberOutcome {
                            member: o.member.clone(),
                            outcome: Outcome::Failed {
                                code: e
                                    .code
                                    .clone()
                                    .unwrap_or_else(|| format!("{:?}", e.class).to_lowercase()),
                                message: e.message.clone(),
                            },
                        })
                        .collect()
                }
            };
            if let Some(a) = audit {
                // The requests of a packed wave are counted on its first call line.
                a.call(
                    ctx.now(),
                    &g.name,
                    &g.provider,
                    send.kind,
                    send.ops.len(),
                    if i == 0 { requests } else { 0 },
                    &outcomes,
                );
            }
            for (op, out) in pair(send, outcomes) {
                if out.is_ok() {
                    floor.applied(&op);
                } else {
                    floor.failed(&op);
                    tracing::warn!(op = %op.kind, member = %op.member, outcome = ?out, "operation failed");
                }
                report.outcomes.push(OpOutcome {
                    kind: op.kind,
                    member: op.member.clone(),
                    outcome: out,
                });
            }
            if let Some(p) = &opts.progress {
                p.call_done(&g.name, send.kind);
            }
        }
    }

    // Verify: read again what the writes could have changed, and whatever a new plan would
    // still do is drift.
    match target.provider.refetch(ctx, &g.id, &live, &touched).await {
        Ok(after) => {
            let drift = make_plan(ctx, g, &after, target, true);
            let failed = report.failed_ops().next().is_some();
            report.status = if drift.is_empty() && !failed {
                GroupStatus::Applied
            } else {
                GroupStatus::Failed
            };
            if !drift.is_empty() {
                tracing::warn!(operations = drift.ops.len(), "drift remains after apply");
            }
            report.drift = Some(drift);
        }
        Err(e) => {
            report.error = Some(format!("applied, but cannot re-read group {}: {e}", g.id));
            report.status = GroupStatus::Failed;
        }
    }
    report
}

/// Match outcomes to the batch's operations by member; a member the provider did not report
/// on is a failure, never silently done.
fn pair(batch: &Batch, outcomes: Vec<MemberOutcome>) -> Vec<(Op, Outcome)> {
    let mut by_member: BTreeMap<MemberId, Outcome> = outcomes
        .into_iter()
        .map(|o| (o.member, o.outcome))
        .collect();
    batch
        .ops
        .iter()
        .map(|op| {
            let out = by_member
                .remove(&op.member)
                .unwrap_or_else(|| Outcome::Failed {
                    code: "NO_RESULT".to_string(),
                    message: "the provider reported no result for this member".to_string(),
                });
            (op.clone(), out)
        })
        .collect()
}

/// Tracks admins while a plan runs, so a failed admin add or promotion never lets later
/// demotions or removals take the group below min(live admins, desired admins). Without such
/// a failure the plan's own end state already holds the desired admins, so nothing is held back.
struct AdminFloor {
    admins: BTreeSet<MemberId>,
    floor: usize,
    /// An add or promotion to admin failed earlier in this run.
    tripped: bool,
}

impl AdminFloor {
    fn new(live: &LiveGroup, g: &DesiredGroup) -> Self {
        let admins: BTreeSet<MemberId> = live
            .members
            .iter()
            .filter(|(_, r)| **r == Role::Admin)
            .map(|(m, _)| m.clone())
            .collect();
        let desired = g.members.values().filter(|r| **r == Role::Admin).count();
        AdminFloor {
            floor: admins.len().min(desired),
            admins,
            tripped: false,
        }
    }

    /// Split a batch into what may be sent and what must be skipped.
    fn filter(&self, batch: &Batch) -> (Batch, Vec<Op>) {
        let takes_admin = |op: &Op| {
            self.tripped
                && matches!(op.kind, OpKind::Demote | OpKind::Remove | OpKind::Ban)
                && self.admins.contains(&op.member)
        };
        let mut remaining = self.admins.len();
        let mut send = Batch {
            kind: batch.kind,
            ops: Vec::new(),
        };
        let mut skipped = Vec::new();
        for op in &batch.ops {
            if takes_admin(op) {
                if remaining <= self.floor {
                    skipped.push(op.clone());
                    continue;
                }
                remaining -= 1;
            }
            send.ops.push(op.clone());
        }
        (send, skipped)
    }

    /// Whether `batch` would take an admin (demote, remove or ban one).
    fn takes_admin(&self, batch: &Batch) -> bool {
        batch.ops.iter().any(|op| {
            matches!(op.kind, OpKind::Demote | OpKind::Remove | OpKind::Ban)
                && self.admins.contains(&op.member)
        })
    }

    /// Whether `batch` makes an admin (an add or promotion to admin), which may fail.
    fn gives_admin(batch: &Batch) -> bool {
        batch.ops.iter().any(|op| {
            matches!(op.kind, OpKind::Add | OpKind::Promote) && op.role == Some(Role::Admin)
        })
    }

    /// Count the admins `batch` takes as gone before its results are known.
    fn take(&mut self, batch: &Batch) {
        for op in &batch.ops {
            if matches!(op.kind, OpKind::Demote | OpKind::Remove | OpKind::Ban) {
                self.admins.remove(&op.member);
            }
        }
    }

    fn applied(&mut self, op: &Op) {
        match op.kind {
            OpKind::Add | OpKind::Promote if op.role == Some(Role::Admin) => {
                self.admins.insert(op.member.clone());
            }
            OpKind::Demote | OpKind::Remove | OpKind::Ban => {
                self.admins.remove(&op.member);
            }
            _ => {}
        }
    }

    fn failed(&mut self, op: &Op) {
        if matches!(op.kind, OpKind::Add | OpKind::Promote) && op.role == Some(Role::Admin) {
            self.tripped = true;
        }
    }
}

/// How long a wait must be before it is worth telling the operator.
pub const LONG_WAIT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests;
