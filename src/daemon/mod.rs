//! `rosterd run`: the daemon. Watches the files, keeps the last valid version of each, and
//! reconciles groups on change and on a resync timer (SPEC §6).
//!
//! One control loop owns the scheduling state ([`scheduler::Scheduler`]: single flight per group,
//! coalesced re-runs, one keyed timer per group for its retry or its next resync) and turns
//! events into work: rescans of the files run on a blocking task (one at a time, a request
//! meanwhile makes one more), group runs in tracked tasks, bounded per provider instance. A
//! provider client lives as long as its instance's settings: edits of people.yaml or manifests,
//! and changes to other instances, keep it with its pacing, cooldowns, serial-write gate and
//! learned state. On shutdown no new work starts, every wait ends, the write call in flight
//! completes, and later calls are refused unsent.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::AuditLog;
use crate::ctx::{Clock, Ctx};
use crate::model::{DesiredGroup, OpKind};
use crate::provider::{Instance, RequestCounts};
use crate::reconcile::{self, GroupStatus, Progress, RunOptions, Target};

pub mod metrics;
pub mod page;
pub mod scheduler;
pub mod server;
pub mod state;
pub mod watch;

use metrics::{GroupLabel, Metrics, OpLabels, ProviderLabel, ReasonLabel, ResultLabel};
use scheduler::{Finished, Run, Scheduler};
use state::{Scan, Tree};

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub config: PathBuf,
    /// Overrides `listen:` of rosterd.yaml (tests use port 0).
    pub listen: Option<SocketAddr>,
    /// Quiet time after the last file event before reloading.
    pub debounce: Duration,
    /// A full rescan at this period even without events (a missed or overflowed watch).
    pub poll: Duration,
    /// Overrides `resync:` of rosterd.yaml.
    pub resync: Option<Duration>,
    /// How long shutdown waits for groups in flight.
    pub grace: Duration,
}

impl DaemonOptions {
    pub fn new(config: &Path) -> Self {
        DaemonOptions {
            config: config.to_path_buf(),
            listen: None,
            debounce: Duration::from_millis(500),
            poll: Duration::from_secs(30),
            resync: None,
            grace: Duration::from_secs(30),
        }
    }
}

/// What /status says of one group.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GroupState {
    /// RFC 3339 time of the last finished run.
    pub last_run: Option<String>,
    pub result: Option<GroupStatus>,
    /// Operations still needed after the last run.
    pub pending_drift: usize,
    pub last_error: Option<String>,
    pub running: bool,
    #[serde(skip)]
    pub failures: u32,
    /// The plan of the last run that read the group (from its first read), for the status
    /// page's detail view; kept out of /status, which stays a summary.
    #[serde(skip)]
    pub last_plan: Option<crate::plan::GroupPlan>,
}

/// State shared by the control loop, the workers and the HTTP server.
pub struct Shared {
    pub tree: Mutex<Tree>,
    pub status: RwLock<BTreeMap<String, GroupState>>,
    pub metrics: Metrics,
    /// Provider instances that answered a read at least once.
    pub reached: Arc<Mutex<BTreeSet<String>>>,
    targets: RwLock<BTreeMap<String, Target>>,
    audit: RwLock<Option<(PathBuf, Arc<AuditLog>)>>,
    /// Request counts already added to the metrics, per instance.
    counted: Mutex<BTreeMap<String, RequestCounts>>,
    /// Cancelled when the daemon stops taking work.
    stop: CancellationToken,
}

impl Shared {
    /// Configuration loaded and every provider instance in use reached once.
    pub fn ready(&self) -> Result<(), String> {
        let used: BTreeSet<String> = {
            let tree = self.tree.lock().expect("lock");
            if tree.context().is_none() {
                return Err("configuration not loaded".into());
            }
            tree.groups().values().map(|g| g.provider.clone()).collect()
        };
        let reached = self.reached.lock().expect("lock");
        let missing: Vec<&String> = used.iter().filter(|p| !reached.contains(*p)).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "providers not reached yet: {}",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    }
}

/// What asked for a rescan of the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Start,
    Watch,
    Poll,
    Signal,
}

impl Reason {
    fn label(self) -> &'static str {
        match self {
            Reason::Start => "start",
            Reason::Watch => "watch",
            Reason::Poll => "poll",
            Reason::Signal => "signal",
        }
    }
}

enum Event {
    Rescan(Reason),
    Scanned(Box<Scan>),
    Done(String, Finished),
}

/// Run the daemon until `shutdown` is cancelled. Returns an error only when the configuration
/// cannot be loaded at start or the listen address cannot be bound.
pub async fn run(opts: DaemonOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (tree, start_reads) = {
        let config = opts.config.clone();
        tokio::task::spawn_blocking(move || {
            let mut tree = Tree::new(&config);
            let scan = tree.basis().scan();
            let reads = scan.reads as u64;
            tree.apply(scan);
            (tree, reads)
        })
        .await?
    };
    let Some(ctx) = tree.context().cloned() else {
        let errors = tree
            .errors()
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        anyhow::bail!("cannot start: the configuration is invalid\n{errors}");
    };
    let listen = opts.listen.unwrap_or(ctx.listen);
    let resync = opts.resync.unwrap_or(ctx.resync);
    // Work stops first; the HTTP server stays up until the workers are done.
    let work_stop = shutdown.child_token();
    let shared = Arc::new(Shared {
        stop: work_stop.clone(),
        tree: Mutex::new(tree),
        status: RwLock::new(BTreeMap::new()),
        metrics: Metrics::default(),
        reached: Arc::new(Mutex::new(BTreeSet::new())),
        targets: RwLock::new(BTreeMap::new()),
        audit: RwLock::new(None),
        counted: Mutex::new(BTreeMap::new()),
    });
    shared.metrics.resync.set(resync.as_secs() as i64);
    let server_stop = CancellationToken::new();
    let tracker = TaskTracker::new();

    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(address = %listener.local_addr()?, "listening");
    let server = tokio::spawn(server::serve(listener, shared.clone(), server_stop.clone()));

    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let mut watcher = watch::Watch::start(&opts.config, &ctx, opts.debounce, {
        let tx = tx.clone();
        move || {
            let _ = tx.send(Event::Rescan(Reason::Watch));
        }
    });
    spawn_poll(&tracker, &tx, &work_stop, opts.poll);
    spawn_signals(&tracker, &tx, &shutdown);

    sync_targets(&shared);
    update_file_metrics(&shared);
    count_rescan(&shared, Reason::Start);
    shared.metrics.file_reads.inc_by(start_reads);
    let mut sched = Scheduler::new(resync);
    let worker = Worker {
        shared: shared.clone(),
        tracker: tracker.clone(),
        tx: tx.clone(),
    };
    let names: Vec<String> = shared
        .tree
        .lock()
        .expect("lock")
        .groups()
        .keys()
        .cloned()
        .collect();
    for r in sched.add(names) {
        worker.start(&mut sched, r);
    }

    // The control loop: the scheduler decides, the workers do.
    let mut scanning = false;
    let mut rescan_owed = false;
    loop {
        enum Next {
            Event(Event),
            Due(Run),
        }
        let next = tokio::select! {
            biased;
            _ = work_stop.cancelled() => break,
            ev = rx.recv() => match ev { Some(ev) => Next::Event(ev), None => break },
            run = sched.due() => Next::Due(run),
        };
        match next {
            Next::Due(run) => worker.start(&mut sched, run),
            Next::Event(Event::Rescan(reason)) => {
                count_rescan(&shared, reason);
                if scanning {
                    rescan_owed = true;
                } else {
                    scanning = true;
                    worker.scan();
                }
            }
            Next::Event(Event::Scanned(scan)) => {
                shared.metrics.file_reads.inc_by(scan.reads as u64);
                let r = shared.tree.lock().expect("lock").apply(*scan);
                if r.context_changed {
                    sync_targets(&shared);
                    let tree = shared.tree.lock().expect("lock");
                    if let (Some(w), Some(ctx)) = (watcher.as_mut(), tree.context()) {
                        w.follow(&opts.config, ctx);
                    }
                    if opts.resync.is_none()
                        && let Some(ctx) = tree.context()
                    {
                        sched.set_period(ctx.resync);
                        shared.metrics.resync.set(ctx.resync.as_secs() as i64);
                    }
                }
                for g in &r.dropped {
                    sched.remove(g);
                    shared.status.write().expect("lock").remove(g);
                    shared.metrics.forget_group(g);
                }
                update_file_metrics(&shared);
                let mut new = Vec::new();
                for g in r.changed {
                    if sched.knows(&g) {
                        if let Some(run) = sched.changed(&g) {
                            worker.start(&mut sched, run);
                        }
                    } else {
                        new.push(g);
                    }
                }
                for run in sched.add(new) {
                    worker.start(&mut sched, run);
                }
                scanning = rescan_owed;
                if rescan_owed {
                    rescan_owed = false;
                    worker.scan();
                }
            }
            Next::Event(Event::Done(g, how)) => {
                if sched.knows(&g) {
                    set_running(&shared, &g, false);
                }
                if let Some(run) = sched.finished(&g, how) {
                    worker.start(&mut sched, run);
                }
            }
        }
    }

    tracing::info!("stopping: no new work; waiting for groups in flight");
    drop(watcher);
    tracker.close();
    if tokio::time::timeout(opts.grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?opts.grace, "groups still in flight after the grace period; exiting");
    }
    server_stop.cancel();
    let _ = server.await;
    Ok(())
}

/// Starts the work the control loop decides on, in tracked tasks that report back.
struct Worker {
    shared: Arc<Shared>,
    tracker: TaskTracker,
    tx: mpsc::UnboundedSender<Event>,
}

impl Worker {
    /// Start one group's run, unless the group is no longer in force.
    fn start(&self, sched: &mut Scheduler, run: Run) {
        let desired = self
            .shared
            .tree
            .lock()
            .expect("lock")
            .groups()
            .get(&run.group)
            .cloned();
        let Some(desired) = desired else {
            sched.remove(&run.group);
            return;
        };
        tracing::debug!(group = %run.group, cause = ?run.cause, "run");
        set_running(&self.shared, &run.group, true);
        let (shared, tx) = (self.shared.clone(), self.tx.clone());
        self.tracker.spawn(async move {
            let how = reconcile_group(&shared, desired).await;
            let _ = tx.send(Event::Done(run.group, how));
        });
    }

    /// Read and hash the files on a blocking task; the tree's lock is held only to take the
    /// basis and, back on the control loop, to fold the result in.
    fn scan(&self) {
        let basis = self.shared.tree.lock().expect("lock").basis();
        let tx = self.tx.clone();
        self.tracker.spawn(async move {
            match tokio::task::spawn_blocking(move || basis.scan()).await {
                Ok(scan) => {
                    let _ = tx.send(Event::Scanned(Box::new(scan)));
                }
                Err(e) => tracing::error!(error = %e, "rescan failed"),
            }
        });
    }
}

fn count_rescan(shared: &Shared, reason: Reason) {
    shared
        .metrics
        .rescans
        .get_or_create(&ReasonLabel {
            reason: reason.label().into(),
        })
        .inc();
}

/// The safety rescan: a lost or overflowed watch only delays a change by this much.
fn spawn_poll(
    tracker: &TaskTracker,
    tx: &mpsc::UnboundedSender<Event>,
    stop: &CancellationToken,
    poll: Duration,
) {
    let (tx, stop) = (tx.clone(), stop.clone());
    tracker.spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(poll) => { let _ = tx.send(Event::Rescan(Reason::Poll)); }
            }
        }
    });
}

fn spawn_signals(
    tracker: &TaskTracker,
    tx: &mpsc::UnboundedSender<Event>,
    shutdown: &CancellationToken,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (tx, stop) = (tx.clone(), shutdown.clone());
        tracker.spawn(async move {
            let (Ok(mut hup), Ok(mut term), Ok(mut int)) =
                (signal(SignalKind::hangup()), signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
            else {
                tracing::error!("cannot install signal handlers");
                return;
            };
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = hup.recv() => { tracing::info!("SIGHUP: reloading"); let _ = tx.send(Event::Rescan(Reason::Signal)); }
                    _ = term.recv() => { tracing::info!("SIGTERM: stopping"); stop.cancel(); return; }
                    _ = int.recv() => { tracing::info!("SIGINT: stopping"); stop.cancel(); return; }
                }
            }
        });
    }
    #[cfg(not(unix))]
    {
        let _ = (tracker, tx, shutdown);
    }
}

/// Whether a client built for `old` serves `new` as well: every setting but the concurrency
/// bound (which lives in the target, not the client) is the same.
fn same_client(old: &Instance, new: &Instance) -> bool {
    let mut old = old.clone();
    old.common.concurrency = new.common.concurrency;
    old == *new
}

/// Bring the provider clients in line with the configuration in force, instance by instance:
/// a client whose settings did not change is kept — with its pacing, cooldowns, serial-write
/// gate, learned state and counters — so runs in flight and new runs share it. A changed
/// `concurrency:` alone gives the target a new bound and keeps the client (runs already in
/// flight finish under the old bound). An instance whose client cannot be built (a missing
/// secret) keeps its groups failing with that error until fixed.
fn sync_targets(shared: &Shared) {
    let tree = shared.tree.lock().expect("lock");
    let Some(ctx) = tree.context() else { return };
    let mut targets = shared.targets.write().expect("lock");
    let mut counted = shared.counted.lock().expect("lock");
    targets.retain(|name, _| ctx.instances.contains_key(name));
    for (name, instance) in &ctx.instances {
        let kept = targets.get(name).and_then(|t| {
            if !same_client(&t.instance, instance) {
                None
            } else if t.instance.common.concurrency == instance.common.concurrency {
                Some(t.clone())
            } else {
                Some(Target::new(instance.clone(), t.provider.clone()))
            }
        });
        if let Some(t) = kept {
            targets.insert(name.clone(), t);
            continue;
        }
        targets.remove(name);
        // A new client counts from zero.
        counted.remove(name);
        match crate::provider::build(instance) {
            Ok(provider) => {
                tracing::info!(provider = %name, "provider client built");
                targets.insert(name.clone(), Target::new(instance.clone(), provider));
            }
            Err(e) => {
                tracing::error!(provider = %name, error = %e, "cannot build the provider client")
            }
        }
    }
    let mut audit = shared.audit.write().expect("lock");
    if audit.as_ref().map(|(p, _)| p) != ctx.audit_log.as_ref() {
        *audit = ctx
            .audit_log
            .as_ref()
            .and_then(|p| match AuditLog::open(p) {
                Ok(a) => Some((p.clone(), Arc::new(a))),
                Err(e) => {
                    tracing::error!(file = %p.display(), error = %e, "cannot open the audit log");
                    None
                }
            });
    }
}

/// Tells the daemon which providers answered a read, as soon as they do — not when the run
/// (a long paced apply, maybe) finishes.
struct Reads {
    reached: Arc<Mutex<BTreeSet<String>>>,
}

impl Progress for Reads {
    fn calls_planned(&self, _: usize) {}
    fn call_done(&self, _: &str, _: OpKind) {}
    fn waiting(&self, why: &str, d: Duration) {
        tracing::info!(wait = ?d, "waiting: {why}");
    }
    fn finish(&self) {}
    fn group_read(&self, _group: &str, provider: &str) {
        let mut reached = self.reached.lock().expect("lock");
        if !reached.contains(provider) {
            tracing::info!(provider, "provider reached");
            reached.insert(provider.to_string());
        }
    }
}

/// One run of one group: the same road as `rosterd apply`, bounded per provider instance.
async fn reconcile_group(shared: &Shared, desired: DesiredGroup) -> Finished {
    let target = shared
        .targets
        .read()
        .expect("lock")
        .get(&desired.provider)
        .cloned();
    let audit = shared
        .audit
        .read()
        .expect("lock")
        .as_ref()
        .map(|(_, a)| a.clone());
    let name = desired.name.clone();
    let Some(target) = target else {
        record(
            shared,
            &name,
            None,
            Some(format!(
                "provider {} has no client (see the log)",
                desired.provider
            )),
        );
        return Finished::Failed;
    };
    let opts = RunOptions {
        apply: true,
        progress: Some(Arc::new(Reads {
            reached: shared.reached.clone(),
        })),
        ..RunOptions::default()
    };
    // Once the daemon stops, the request in flight completes and no later one is sent, so
    // the engine winds the group down with nothing half-sent.
    let ctx = Ctx::new(
        Clock::starting_at(SystemTime::now()),
        shared.stop.child_token(),
    );
    let g =
        reconcile::reconcile_group(&ctx, &desired, Some(&target), &opts, audit.as_deref()).await;

    let m = &shared.metrics;
    for o in &g.outcomes {
        let outcome = match &o.outcome {
            crate::model::Outcome::Done => "done",
            crate::model::Outcome::AlreadyDone => "already_done",
            crate::model::Outcome::Failed { .. } => "failed",
            crate::model::Outcome::Skipped { .. } => "skipped",
        };
        m.operations
            .get_or_create(&OpLabels {
                provider: desired.provider.clone(),
                op: o.kind.to_string(),
                outcome: outcome.into(),
            })
            .inc();
    }
    count_requests(shared, &desired.provider, target.provider.requests());
    let mut error = g.error.clone();
    if error.is_none() {
        let failed: Vec<String> = g
            .failed_ops()
            .map(|o| format!("{} {}", o.kind, g.who(&o.member)))
            .collect();
        if !failed.is_empty() {
            error = Some(format!(
                "{} operation(s) failed: {}",
                failed.len(),
                failed.join(", ")
            ));
        }
    }
    let drift = match g.status {
        GroupStatus::Blocked => g.plan.as_ref().map_or(0, |p| p.ops.len()),
        _ => g.drift.as_ref().map_or(0, |d| d.ops.len()),
    };
    if g.status == GroupStatus::Blocked {
        error = g.plan.as_ref().and_then(|p| p.blocked.clone());
    }
    m.drift
        .get_or_create(&GroupLabel {
            group: name.clone(),
        })
        .set(drift as i64);
    record(shared, &name, Some((g.status, drift)), error);
    // A run whose read failed keeps the previous plan: the page shows the last one there was.
    if let (Some(plan), Some(e)) = (g.plan, shared.status.write().expect("lock").get_mut(&name)) {
        e.last_plan = Some(plan);
    }
    match g.status {
        GroupStatus::Applied | GroupStatus::InSync => Finished::Ok,
        GroupStatus::Blocked => Finished::Blocked,
        GroupStatus::Failed | GroupStatus::Changes => Finished::Failed,
    }
}

fn record(
    shared: &Shared,
    name: &str,
    result: Option<(GroupStatus, usize)>,
    error: Option<String>,
) {
    let now = SystemTime::now();
    let status = result.map(|r| r.0);
    let label = status.map_or("failed".to_string(), |s| {
        serde_json::to_value(s)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default()
    });
    shared
        .metrics
        .reconciles
        .get_or_create(&ResultLabel { result: label })
        .inc();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let label = GroupLabel {
        group: name.to_string(),
    };
    if matches!(status, Some(GroupStatus::Applied | GroupStatus::InSync)) {
        shared.metrics.last_success.get_or_create(&label).set(secs);
    }
    if status.is_none() || status == Some(GroupStatus::Failed) {
        // The start of a failure streak, kept while the group goes on failing: the alert on
        // "failing longer than N resyncs" compares it with the resync period.
        let g = shared.metrics.failing_since.get_or_create(&label);
        if g.get() == 0 {
            g.set(secs);
        }
    } else {
        shared.metrics.failing_since.remove(&label);
    }
    let mut st = shared.status.write().expect("lock");
    let e = st.entry(name.to_string()).or_default();
    e.last_run = Some(humantime::format_rfc3339_seconds(now).to_string());
    e.result = Some(status.unwrap_or(GroupStatus::Failed));
    e.pending_drift = result.map_or(0, |r| r.1);
    e.failures = if matches!(status, Some(GroupStatus::Applied | GroupStatus::InSync)) {
        0
    } else {
        e.failures + 1
    };
    e.last_error = error;
}

fn set_running(shared: &Shared, name: &str, running: bool) {
    shared
        .status
        .write()
        .expect("lock")
        .entry(name.to_string())
        .or_default()
        .running = running;
}

fn count_requests(shared: &Shared, provider: &str, now: RequestCounts) {
    let mut counted = shared.counted.lock().expect("lock");
    let before = counted
        .insert(provider.to_string(), now)
        .unwrap_or_default();
    let label = ProviderLabel {
        provider: provider.to_string(),
    };
    let reqs = (now.reads + now.writes).saturating_sub(before.reads + before.writes);
    shared
        .metrics
        .api_requests
        .get_or_create(&label)
        .inc_by(reqs);
    shared
        .metrics
        .throttled
        .get_or_create(&label)
        .inc_by(now.throttled.saturating_sub(before.throttled));
    if let Some(pace) = now.pace {
        shared.metrics.pace.get_or_create(&label).set(pace);
    }
}

fn update_file_metrics(shared: &Shared) {
    let tree = shared.tree.lock().expect("lock");
    shared
        .metrics
        .manifest_errors
        .set(tree.errors().len() as i64);
    shared.metrics.groups.set(tree.groups().len() as i64);
}
