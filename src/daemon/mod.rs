//! `rosterd run`: the daemon. Watches the files, keeps the last valid version of each, and
//! reconciles groups on change and on a resync timer (SPEC §6).
//!
//! One control loop owns the scheduling state: a group is never reconciled twice at once, and
//! triggers that arrive while it runs coalesce into one more run afterwards (the kube-rs
//! runner's rule). Work runs in tracked tasks, bounded per provider instance; on shutdown no new
//! work starts, the write call in flight completes, and later calls are refused unsent.

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
use crate::model::DesiredGroup;
use crate::provider::RequestCounts;
use crate::reconcile::{self, GroupStatus, RunOptions, Target};

pub mod metrics;
pub mod server;
pub mod state;
pub mod watch;

use metrics::{GroupLabel, Metrics, OpLabels, ProviderLabel, ResultLabel};
use state::Tree;

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
}

/// State shared by the control loop, the workers and the HTTP server.
pub struct Shared {
    pub tree: Mutex<Tree>,
    pub status: RwLock<BTreeMap<String, GroupState>>,
    pub metrics: Metrics,
    /// Provider instances that answered a read at least once.
    pub reached: Mutex<BTreeSet<String>>,
    targets: RwLock<BTreeMap<String, Target>>,
    audit: RwLock<Option<Arc<AuditLog>>>,
    /// Request counts already added to the metrics, per instance.
    counted: Mutex<BTreeMap<String, RequestCounts>>,
    /// Cancelled when the daemon stops taking work.
    stop: CancellationToken,
}

impl Shared {
    /// Configuration loaded and every provider instance in use reached once.
    pub fn ready(&self) -> Result<(), String> {
        let tree = self.tree.lock().expect("lock");
        if tree.context().is_none() {
            return Err("configuration not loaded".into());
        }
        let used: BTreeSet<String> = tree.groups().values().map(|g| g.provider.clone()).collect();
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

enum Event {
    Reload,
    Resync,
    Trigger(String),
    Done(String),
}

/// Run the daemon until `shutdown` is cancelled. Returns an error only when the configuration
/// cannot be loaded at start or the listen address cannot be bound.
pub async fn run(opts: DaemonOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut tree = Tree::new(&opts.config);
    tree.reload();
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
        reached: Mutex::new(BTreeSet::new()),
        targets: RwLock::new(BTreeMap::new()),
        audit: RwLock::new(None),
        counted: Mutex::new(BTreeMap::new()),
    });
    let server_stop = CancellationToken::new();
    let tracker = TaskTracker::new();

    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(address = %listener.local_addr()?, "listening");
    let server = tokio::spawn(server::serve(listener, shared.clone(), server_stop.clone()));

    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let _watcher = watch::start(&opts.config, &ctx, opts.debounce, {
        let tx = tx.clone();
        move || {
            let _ = tx.send(Event::Reload);
        }
    });
    spawn_timers(&tracker, &tx, &work_stop, resync, opts.poll);
    spawn_signals(&tracker, &tx, &shutdown);

    rebuild_targets(&shared);
    update_file_metrics(&shared);
    for name in shared.tree.lock().expect("lock").groups().keys() {
        let _ = tx.send(Event::Trigger(name.clone()));
    }

    // The control loop: single flight per group, coalesced re-runs.
    let mut running: BTreeSet<String> = BTreeSet::new();
    let mut again: BTreeSet<String> = BTreeSet::new();
    loop {
        let ev = tokio::select! {
            _ = work_stop.cancelled() => break,
            ev = rx.recv() => match ev { Some(ev) => ev, None => break },
        };
        match ev {
            Event::Reload => {
                let r = shared.tree.lock().expect("lock").reload();
                if r.context_changed {
                    rebuild_targets(&shared);
                }
                for g in &r.dropped {
                    shared.status.write().expect("lock").remove(g);
                    shared
                        .metrics
                        .drift
                        .remove(&GroupLabel { group: g.clone() });
                }
                update_file_metrics(&shared);
                for g in r.changed {
                    let _ = tx.send(Event::Trigger(g));
                }
            }
            Event::Resync => {
                for g in shared.tree.lock().expect("lock").groups().keys() {
                    let _ = tx.send(Event::Trigger(g.clone()));
                }
            }
            Event::Trigger(g) => {
                if running.contains(&g) {
                    again.insert(g);
                    continue;
                }
                let Some(desired) = shared.tree.lock().expect("lock").groups().get(&g).cloned()
                else {
                    continue; // no longer managed
                };
                running.insert(g.clone());
                set_running(&shared, &g, true);
                let (shared2, tx2) = (shared.clone(), tx.clone());
                tracker.spawn(async move {
                    reconcile_group(&shared2, desired).await;
                    let _ = tx2.send(Event::Done(g));
                });
            }
            Event::Done(g) => {
                running.remove(&g);
                set_running(&shared, &g, false);
                if again.remove(&g) {
                    let _ = tx.send(Event::Trigger(g));
                } else if let Some(delay) = retry_delay(&shared, &g, resync) {
                    let tx2 = tx.clone();
                    let stop = work_stop.clone();
                    tracker.spawn(async move {
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = tokio::time::sleep(delay) => { let _ = tx2.send(Event::Trigger(g)); }
                        }
                    });
                }
            }
        }
    }

    tracing::info!("stopping: no new work; waiting for groups in flight");
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

fn spawn_timers(
    tracker: &TaskTracker,
    tx: &mpsc::UnboundedSender<Event>,
    stop: &CancellationToken,
    resync: Duration,
    poll: Duration,
) {
    let (tx1, stop1) = (tx.clone(), stop.clone());
    tracker.spawn(async move {
        loop {
            // ±10% jitter so many daemons (or many restarts) do not resync in step.
            let jitter = 0.9 + rand::random::<f64>() * 0.2;
            tokio::select! {
                _ = stop1.cancelled() => return,
                _ = tokio::time::sleep(resync.mul_f64(jitter)) => { let _ = tx1.send(Event::Resync); }
            }
        }
    });
    let (tx2, stop2) = (tx.clone(), stop.clone());
    tracker.spawn(async move {
        loop {
            tokio::select! {
                _ = stop2.cancelled() => return,
                _ = tokio::time::sleep(poll) => { let _ = tx2.send(Event::Reload); }
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
                    _ = hup.recv() => { tracing::info!("SIGHUP: reloading"); let _ = tx.send(Event::Reload); }
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

/// Build the provider clients of the configuration in force. An instance whose client cannot
/// be built (a missing secret) keeps its groups failing with that error until fixed.
fn rebuild_targets(shared: &Shared) {
    let tree = shared.tree.lock().expect("lock");
    let Some(ctx) = tree.context() else { return };
    let mut targets = BTreeMap::new();
    for (name, instance) in &ctx.instances {
        match crate::provider::build(instance) {
            Ok(provider) => {
                targets.insert(name.clone(), Target::new(instance.clone(), provider));
            }
            Err(e) => {
                tracing::error!(provider = %name, error = %e, "cannot build the provider client")
            }
        }
    }
    *shared.targets.write().expect("lock") = targets;
    let audit = ctx
        .audit_log
        .as_ref()
        .and_then(|p| match AuditLog::open(p) {
            Ok(a) => Some(Arc::new(a)),
            Err(e) => {
                tracing::error!(file = %p.display(), error = %e, "cannot open the audit log");
                None
            }
        });
    *shared.audit.write().expect("lock") = audit;
}

/// One run of one group: the same road as `rosterd apply`, bounded per provider instance.
async fn reconcile_group(shared: &Shared, desired: DesiredGroup) {
    let target = shared
        .targets
        .read()
        .expect("lock")
        .get(&desired.provider)
        .cloned();
    let audit = shared.audit.read().expect("lock").clone();
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
        return;
    };
    let opts = RunOptions {
        apply: true,
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

    if g.plan.is_some() {
        shared
            .reached
            .lock()
            .expect("lock")
            .insert(desired.provider.clone());
    }
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
            .map(|o| format!("{} {}", o.kind, o.member))
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
    if matches!(status, Some(GroupStatus::Applied | GroupStatus::InSync)) {
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()) as i64;
        shared
            .metrics
            .last_success
            .get_or_create(&GroupLabel {
                group: name.to_string(),
            })
            .set(secs);
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

/// A failed group is retried with exponential backoff (5 s doubling, at most the resync
/// period); a blocked one waits for a file change or the next resync.
fn retry_delay(shared: &Shared, name: &str, resync: Duration) -> Option<Duration> {
    let st = shared.status.read().expect("lock");
    let s = st.get(name)?;
    if s.result != Some(GroupStatus::Failed) || s.failures == 0 {
        return None;
    }
    let base = Duration::from_secs(5).saturating_mul(1 << s.failures.min(10).saturating_sub(1));
    Some(base.min(resync))
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
