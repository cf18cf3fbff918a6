//! The daemon's scheduling rules as a value: which groups run, which wait for one more run, and
//! one keyed timer per group (its retry backoff or its next resync). Driven by events — groups
//! in force, a change, a run finished, a timer due — and answering with the runs to start. No
//! I/O and no clock of its own: timers are tokio's (`DelayQueue`), so tests pause them.
//!
//! Rules:
//! - a group never runs twice at once; triggers while it runs coalesce into exactly one more run
//!   after it (the kube-rs runner's rule);
//! - a failed run is retried after 5 s, doubling up to the resync period; any other trigger
//!   meanwhile replaces the retry (one timer per group, so an edit during a backoff is one run);
//! - each group has its own phase in the resync period: the groups in force at start are spread
//!   evenly over the period, and each resyncs at its phase plus whole periods however long its
//!   runs take — a run caused by an edit restarts that group's period from its start.

use std::collections::BTreeMap;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::time::DelayQueue;
use tokio_util::time::delay_queue::Key;

/// First retry delay of a failed group.
pub const RETRY_BASE: Duration = Duration::from_secs(5);

/// Why a run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The group came into force (daemon start, or a new manifest).
    Start,
    /// Its desired state changed (an edit), or an operator asked (SIGHUP reloads do not).
    Change,
    /// Its resync period elapsed.
    Resync,
    /// The backoff after a failure elapsed.
    Retry,
}

/// How a run ended, as far as scheduling cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// In sync or applied.
    Ok,
    /// A read or an operation failed, or drift remains: retry with backoff.
    Failed,
    /// A safety limit blocked it: wait for a change or the next resync.
    Blocked,
}

/// A run to start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub group: String,
    pub cause: Cause,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    Resync,
    Retry,
}

#[derive(Debug)]
struct Entry {
    running: bool,
    /// A trigger arrived while running: one more run follows, for the first such cause.
    again: Option<Cause>,
    failures: u32,
    started: Instant,
    /// The group's phase: its resyncs come at this instant plus whole periods. Spread over the
    /// period for the groups in force at start; an edit's run moves it to that run's start.
    phase: Instant,
    timer: Option<(Key, Timer)>,
}

/// The scheduling state of every group in force.
#[derive(Debug)]
pub struct Scheduler {
    period: Duration,
    retry_base: Duration,
    groups: BTreeMap<String, Entry>,
    timers: DelayQueue<String>,
}

impl Scheduler {
    /// Resync every `period` (at least a millisecond).
    pub fn new(period: Duration) -> Self {
        Scheduler {
            period: period.max(Duration::from_millis(1)),
            retry_base: RETRY_BASE,
            groups: BTreeMap::new(),
            timers: DelayQueue::new(),
        }
    }

    /// The resync period in force.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// A new resync period, for the timers armed from now on.
    pub fn set_period(&mut self, period: Duration) {
        self.period = period.max(Duration::from_millis(1));
    }

    /// Whether `group` is in force here.
    pub fn knows(&self, group: &str) -> bool {
        self.groups.contains_key(group)
    }

    /// Groups in force that were not before: each runs now, and their first resyncs are spread
    /// evenly over one period, so the reads of a large tree stay flat instead of a burst.
    pub fn add(&mut self, names: impl IntoIterator<Item = String>) -> Vec<Run> {
        let now = Instant::now();
        let new: Vec<String> = names
            .into_iter()
            .filter(|g| !self.groups.contains_key(g))
            .collect();
        let n = new.len() as f64;
        let mut runs = Vec::new();
        for (i, g) in new.into_iter().enumerate() {
            let phase = now + self.period.mul_f64((i + 1) as f64 / n);
            self.groups.insert(
                g.clone(),
                Entry {
                    running: false,
                    again: None,
                    failures: 0,
                    started: now,
                    phase,
                    timer: None,
                },
            );
            runs.extend(self.trigger(&g, Cause::Start));
        }
        runs
    }

    /// A group's desired state changed: run it now, or once more after the run in flight.
    pub fn changed(&mut self, group: &str) -> Option<Run> {
        self.trigger(group, Cause::Change)
    }

    /// A group is no longer in force: forget it and its timer (a run in flight ends on its own).
    pub fn remove(&mut self, group: &str) {
        if let Some(e) = self.groups.remove(group)
            && let Some((key, _)) = e.timer
        {
            self.timers.remove(&key);
        }
    }

    /// A run ended: start the coalesced re-run if one is owed, else arm the group's timer.
    pub fn finished(&mut self, group: &str, how: Finished) -> Option<Run> {
        let now = Instant::now();
        let (period, base) = (self.period, self.retry_base);
        let e = self.groups.get_mut(group)?;
        e.running = false;
        e.failures = match how {
            Finished::Failed => e.failures.saturating_add(1),
            Finished::Ok | Finished::Blocked => 0,
        };
        if let Some(cause) = e.again.take() {
            return self.trigger(group, cause);
        }
        let (when, kind) = if how == Finished::Failed {
            let doubling = base.saturating_mul(1 << e.failures.clamp(1, 20).saturating_sub(1));
            (now + doubling.min(period), Timer::Retry)
        } else {
            (next_phase(e.phase, period, now), Timer::Resync)
        };
        let key = self.timers.insert_at(group.to_string(), when);
        e.timer = Some((key, kind));
        None
    }

    /// Whether a run of `group` is in flight.
    pub fn is_running(&self, group: &str) -> bool {
        self.groups.get(group).is_some_and(|e| e.running)
    }

    /// Groups with a run in flight.
    pub fn running(&self) -> impl Iterator<Item = &str> {
        self.groups
            .iter()
            .filter(|(_, e)| e.running)
            .map(|(g, _)| g.as_str())
    }

    /// Poll for the next run a timer makes due. `Pending` while none is (also when there are no
    /// timers at all: the caller polls again after its next event).
    pub fn poll_due(&mut self, cx: &mut Context<'_>) -> Poll<Run> {
        loop {
            let Poll::Ready(Some(expired)) = self.timers.poll_expired(cx) else {
                return Poll::Pending;
            };
            let group = expired.into_inner();
            let Some(e) = self.groups.get_mut(&group) else {
                continue;
            };
            let kind = e.timer.take().map(|(_, k)| k);
            let cause = match kind {
                Some(Timer::Retry) => Cause::Retry,
                _ => Cause::Resync,
            };
            if let Some(run) = self.trigger(&group, cause) {
                return Poll::Ready(run);
            }
        }
    }

    /// The next run a timer makes due.
    pub async fn due(&mut self) -> Run {
        std::future::poll_fn(|cx| self.poll_due(cx)).await
    }

    fn trigger(&mut self, group: &str, cause: Cause) -> Option<Run> {
        let e = self.groups.get_mut(group)?;
        if e.running {
            e.again.get_or_insert(cause);
            return None;
        }
        // One timer per group: whatever was armed (a retry, the next resync) is replaced by
        // this run, and re-armed when it finishes.
        if let Some((key, _)) = e.timer.take() {
            self.timers.remove(&key);
        }
        e.running = true;
        e.started = Instant::now();
        if cause == Cause::Change {
            e.phase = e.started;
        }
        Some(Run {
            group: group.to_string(),
            cause,
        })
    }
}

/// The first instant after `now` that is `phase` plus whole periods: a run that took long, or
/// retries that went past the phase, never shift a group's resyncs onto another's.
fn next_phase(phase: Instant, period: Duration, now: Instant) -> Instant {
    if phase > now {
        return phase;
    }
    let behind = (now - phase).as_nanos() / period.as_nanos().max(1) + 1;
    let k = u32::try_from(behind).unwrap_or(u32::MAX);
    period.checked_mul(k).map_or(now + period, |d| phase + d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("g{i:03}")).collect()
    }

    /// The next due run and how long after `t0` it came, on the paused clock.
    async fn next(s: &mut Scheduler, t0: Instant) -> (Run, Duration) {
        let r = s.due().await;
        (r, t0.elapsed())
    }

    /// Whether a timer makes a run due within `d` (advances the paused clock by `d` if not).
    async fn due_within(s: &mut Scheduler, d: Duration) -> Option<Run> {
        tokio::time::timeout(d, s.due()).await.ok()
    }

    fn run(g: &str, cause: Cause) -> Run {
        Run {
            group: g.into(),
            cause,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_trigger_during_a_run_means_exactly_one_more_run_after_it() {
        let mut s = Scheduler::new(HOUR);
        assert_eq!(s.add(["a".to_string()]), [run("a", Cause::Start)]);
        assert!(s.is_running("a"));
        assert_eq!(s.changed("a"), None, "never two runs at once");
        assert_eq!(s.finished("a", Finished::Ok), Some(run("a", Cause::Change)));
        assert!(s.is_running("a"));
        assert_eq!(s.finished("a", Finished::Ok), None, "exactly one more");
        assert!(!s.is_running("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn many_triggers_during_a_run_still_make_one_more_run() {
        let mut s = Scheduler::new(HOUR);
        s.add(["a".to_string(), "b".to_string()]);
        for _ in 0..50 {
            assert_eq!(s.changed("a"), None);
        }
        assert_eq!(s.finished("b", Finished::Ok), None, "b owes nothing");
        assert_eq!(s.finished("a", Finished::Ok), Some(run("a", Cause::Change)));
        assert_eq!(s.finished("a", Finished::Ok), None);
        assert_eq!(s.running().count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_doubling_up_to_the_period_on_one_keyed_timer() {
        let period = Duration::from_secs(60);
        let mut s = Scheduler::new(period);
        s.add(["a".to_string()]);
        let mut waits = Vec::new();
        for _ in 0..6 {
            assert_eq!(s.finished("a", Finished::Failed), None);
            let t0 = Instant::now();
            let (r, after) = next(&mut s, t0).await;
            assert_eq!(r, run("a", Cause::Retry));
            waits.push(after.as_secs());
        }
        assert_eq!(waits, [5, 10, 20, 40, 60, 60]);
        // Success resets the backoff; the next wait is a resync at the group's own phase
        // (60 s, 120 s, ... after the start): now at 195 s, the next is at 240 s.
        assert_eq!(s.finished("a", Finished::Ok), None);
        let t0 = Instant::now();
        let (r, after) = next(&mut s, t0).await;
        assert_eq!(
            (r, after),
            (run("a", Cause::Resync), Duration::from_secs(45))
        );
        // A resync that finishes late keeps the phase too.
        tokio::time::advance(Duration::from_secs(7)).await;
        assert_eq!(s.finished("a", Finished::Ok), None);
        let t0 = Instant::now();
        let (_, after) = next(&mut s, t0).await;
        assert_eq!(after, Duration::from_secs(53));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_and_an_edit_during_its_backoff_make_one_run() {
        let mut s = Scheduler::new(HOUR);
        s.add(["a".to_string()]);
        assert_eq!(s.finished("a", Finished::Failed), None);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(s.changed("a"), Some(run("a", Cause::Change)));
        // The retry that was 3 s away never comes: the edit's run replaced it.
        assert_eq!(due_within(&mut s, Duration::from_secs(10)).await, None);
        assert_eq!(s.finished("a", Finished::Ok), None);
        let t0 = Instant::now();
        let (r, after) = next(&mut s, t0).await;
        assert_eq!(r, run("a", Cause::Resync));
        // One period after the edit's run started (12 s ago at finish), not after the failure.
        assert_eq!(after, HOUR - Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn an_edit_during_a_failed_run_reruns_once_and_does_not_also_retry() {
        let mut s = Scheduler::new(HOUR);
        s.add(["a".to_string()]);
        assert_eq!(s.changed("a"), None);
        assert_eq!(
            s.finished("a", Finished::Failed),
            Some(run("a", Cause::Change))
        );
        assert_eq!(s.finished("a", Finished::Ok), None);
        assert_eq!(
            due_within(&mut s, HOUR - Duration::from_millis(1)).await,
            None
        );
        assert_eq!(
            due_within(&mut s, Duration::from_millis(1)).await,
            Some(run("a", Cause::Resync))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_blocked_group_waits_for_the_resync_not_a_retry() {
        let mut s = Scheduler::new(HOUR);
        s.add(["a".to_string()]);
        assert_eq!(s.finished("a", Finished::Blocked), None);
        assert_eq!(
            due_within(&mut s, HOUR - Duration::from_millis(1)).await,
            None
        );
        assert_eq!(s.changed("a"), Some(run("a", Cause::Change)));
    }

    #[tokio::test(start_paused = true)]
    async fn resyncs_are_spread_evenly_and_an_edit_restarts_its_groups_period() {
        let period = Duration::from_secs(100);
        let mut s = Scheduler::new(period);
        let t0 = Instant::now();
        let start = s.add(names(10));
        assert_eq!(start.len(), 10, "every group runs at start");
        for r in &start {
            assert_eq!(s.finished(&r.group, Finished::Ok), None);
        }
        // One group every 10 s, never two at once; at 40 s, beside g003's resync, an edit of
        // g005 runs it and restarts its period.
        let mut at = Vec::new();
        while t0.elapsed() < Duration::from_secs(140) {
            let (r, after) = next(&mut s, t0).await;
            if r.group == "g003" && r.cause == Cause::Resync && after.as_secs() == 40 {
                assert_eq!(s.changed("g005"), Some(run("g005", Cause::Change)));
                assert_eq!(s.finished("g005", Finished::Ok), None);
            }
            assert_eq!(s.finished(&r.group, Finished::Ok), None);
            at.push((r.group, after.as_secs()));
        }
        let mut expected: Vec<(String, u64)> = [0, 1, 2, 3, 4, 6, 7, 8, 9]
            .iter()
            .map(|i| (format!("g{i:03}"), (i + 1) * 10))
            .collect();
        // The second period keeps every phase.
        expected.extend([0, 1, 2].map(|i| (format!("g{i:03}"), 100 + (i + 1) * 10)));
        let (last, rest) = at.split_last().unwrap();
        assert_eq!(
            rest, expected,
            "one group every 10 s, g005 left out of its old phase"
        );
        assert_eq!(last.1, 140);
        let (r, after) = next(&mut s, t0).await;
        let mut both = [last.0.clone(), r.group];
        both.sort();
        assert_eq!(
            (both, after.as_secs()),
            (["g003".to_string(), "g005".to_string()], 140),
            "g005 resyncs a period after its edit, beside g003's own phase"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_thousand_groups_resync_flat_over_the_period_not_in_a_burst() {
        let period = Duration::from_secs(100);
        let mut s = Scheduler::new(period);
        let t0 = Instant::now();
        for r in s.add(names(1000)) {
            s.finished(&r.group, Finished::Ok);
        }
        // Two periods of resyncs, each run finishing at once: 100 per 10 s, every 10 s.
        let mut per_ten_seconds = [0u32; 20];
        while t0.elapsed() < 2 * period {
            let (r, after) = next(&mut s, t0).await;
            let bucket = ((after.as_millis() - 1) / 10_000) as usize;
            per_ten_seconds[bucket.min(19)] += 1;
            s.finished(&r.group, Finished::Ok);
        }
        assert_eq!(per_ten_seconds, [100; 20]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_removed_group_is_forgotten_with_its_timer() {
        let mut s = Scheduler::new(Duration::from_secs(10));
        s.add(["a".to_string(), "b".to_string()]);
        s.finished("a", Finished::Ok);
        s.finished("b", Finished::Ok);
        s.remove("a");
        assert_eq!(s.finished("a", Finished::Ok), None);
        assert_eq!(s.changed("a"), None);
        let t0 = Instant::now();
        let (r, after) = next(&mut s, t0).await;
        assert_eq!(
            (r, after),
            (run("b", Cause::Resync), Duration::from_secs(10))
        );
        // Coming back into force, it runs at once.
        assert_eq!(s.add(["a".to_string()]), [run("a", Cause::Start)]);
    }
}
