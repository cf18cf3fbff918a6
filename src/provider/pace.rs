//! The pace of one provider instance, learned from the provider's answers: a rate cap
//! (governor, on tokio's clock) whose rate and burst follow the throttle signals.
//!
//! A throttle first takes the burst away: after the cooldown requests leave one at a time
//! instead of all at once (a portal whose bucket stays nearly full throttles a clump again at
//! once). A throttle while the burst is already one lowers the rate to what the provider was
//! seen to accept over the last window, less a margin — but never below half the rate in force
//! in one step, since a window that has not run its course undercounts. While answers are clean
//! the rate climbs back slowly (a small step per run of clean answers), never above the
//! configured `rate`, and the burst returns with the whole rate. One throttle changes the pace
//! once: further throttles within the same window are the same event, seen by other tasks of
//! the instance.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::Quota;
use tokio::time::Instant;

use super::http::{TokioClock, TokioInstant};

type Limiter = governor::RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    TokioClock,
    governor::middleware::NoOpMiddleware<TokioInstant>,
>;

/// The lowest rate the pacer learns: one request every 10 s, so no pacing wait is longer.
pub const MIN_RATE: f64 = 0.1;
/// Share of the rate seen accepted that the pacer keeps to after a throttle.
const MARGIN: f64 = 0.95;
/// Clean answers in a row before the rate is raised by [`STEP`].
const CLEAN_RUN: u32 = 25;
/// How much one raise adds (a share of the current rate).
const STEP: f64 = 0.02;

struct State {
    limiter: Arc<Limiter>,
    rate: f64,
    burst: u32,
    /// When answers the provider accepted were received, over the last window.
    accepted: VecDeque<Instant>,
    clean: u32,
    /// When the rate was last lowered; throttles within a window of it change nothing more.
    lowered: Option<Instant>,
}

/// The learned pace of one instance.
pub struct Pacer {
    instance: String,
    max_rate: f64,
    max_burst: u32,
    state: Mutex<State>,
}

fn limiter(rate: f64, burst: u32) -> Arc<Limiter> {
    let burst = NonZeroU32::new(burst.max(1)).expect("max(1) is non-zero");
    let quota = Quota::with_period(Duration::from_secs_f64(1.0 / rate))
        .expect("a positive rate has a positive period")
        .allow_burst(burst);
    Arc::new(governor::RateLimiter::direct_with_clock(quota, TokioClock))
}

impl Pacer {
    /// A pacer starting at (and never above) `rate` requests per second with `burst`.
    pub fn new(instance: &str, rate: f64, burst: u32) -> Option<Pacer> {
        if !(rate.is_finite() && rate > 0.0) {
            return None;
        }
        Some(Pacer {
            instance: instance.to_string(),
            max_rate: rate,
            max_burst: burst.max(1),
            state: Mutex::new(State {
                limiter: limiter(rate, burst),
                rate,
                burst: burst.max(1),
                accepted: VecDeque::new(),
                clean: 0,
                lowered: None,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The rate in force, requests per second.
    pub fn rate(&self) -> f64 {
        self.lock().rate
    }

    /// How long until the next request may leave; `None` takes the slot now.
    pub fn check(&self) -> Option<Duration> {
        let limiter = self.lock().limiter.clone();
        match limiter.check() {
            Ok(()) => None,
            Err(not_until) => Some(
                not_until
                    .wait_time_from(governor::clock::Clock::now(&TokioClock))
                    .max(Duration::from_millis(1)),
            ),
        }
    }

    /// The window the accepted rate is measured over: a second, or long enough to hold a few
    /// requests at a slow rate.
    fn window(rate: f64) -> Duration {
        Duration::from_secs_f64((4.0 / rate).max(1.0))
    }

    /// An answer the provider accepted.
    pub fn accepted(&self) {
        let now = Instant::now();
        let mut st = self.lock();
        let window = Self::window(st.rate);
        st.accepted.push_back(now);
        while st
            .accepted
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > window)
        {
            st.accepted.pop_front();
        }
        st.clean += 1;
        if st.clean >= CLEAN_RUN && (st.rate < self.max_rate || st.burst < self.max_burst) {
            st.clean = 0;
            let rate = (st.rate * (1.0 + STEP)).min(self.max_rate);
            // The burst comes back only with the whole configured rate.
            let burst = if rate >= self.max_rate {
                self.max_burst
            } else {
                1
            };
            self.set(&mut st, rate, burst, "raised");
        }
    }

    /// A throttle answer: lower the rate to what was accepted over the last window.
    pub fn throttled(&self) {
        let now = Instant::now();
        let mut st = self.lock();
        st.clean = 0;
        let window = Self::window(st.rate);
        if st
            .lowered
            .is_some_and(|t| now.saturating_duration_since(t) < window)
        {
            return;
        }
        st.lowered = Some(now);
        if st.burst > 1 {
            let rate = st.rate;
            self.set(&mut st, rate, 1, "burst dropped after a throttle");
            return;
        }
        let seen = st
            .accepted
            .iter()
            .filter(|t| now.saturating_duration_since(**t) <= window)
            .count();
        let observed = seen as f64 / window.as_secs_f64();
        let rate = (observed * MARGIN)
            .max(st.rate * 0.5)
            .clamp(MIN_RATE, st.rate);
        st.accepted.clear();
        self.set(&mut st, rate, 1, "lowered after a throttle");
    }

    fn set(&self, st: &mut State, rate: f64, burst: u32, why: &str) {
        if rate == st.rate && burst == st.burst {
            return;
        }
        st.rate = rate;
        st.burst = burst;
        st.limiter = limiter(rate, burst);
        // A fresh limiter would let a request go at once: the slot is spent, so the next one
        // waits its full interval (no burst after a throttle).
        let _ = st.limiter.check();
        tracing::info!(
            instance = %self.instance,
            requests_per_second = rate,
            burst,
            "pace {why}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_throttle_takes_the_burst_then_lowers_the_rate_to_what_was_accepted() {
        let p = Pacer::new("t", 20.0, 10).unwrap();
        for _ in 0..10 {
            assert_eq!(p.check(), None, "the burst goes at once");
        }
        p.throttled();
        assert_eq!(p.rate(), 20.0);
        // No burst after the throttle: the next slot is a whole interval away.
        assert_eq!(p.check(), Some(Duration::from_millis(50)));
        // A second throttle in the same window is the same event.
        p.throttled();
        assert_eq!(p.rate(), 20.0);
        tokio::time::advance(Duration::from_secs(1)).await;
        // Six accepted over the next second, then a throttle: the rate drops to 6/s less the
        // margin, but no lower than half of 20/s in one step.
        for _ in 0..6 {
            p.accepted();
        }
        p.throttled();
        assert_eq!(p.rate(), 10.0);
        tokio::time::advance(Duration::from_secs(2)).await;
        for _ in 0..6 {
            p.accepted();
        }
        p.throttled();
        assert!((p.rate() - 6.0 * MARGIN).abs() < 1e-9, "{}", p.rate());
    }

    #[tokio::test(start_paused = true)]
    async fn clean_answers_raise_the_rate_slowly_up_to_the_configured_one() {
        let p = Pacer::new("t", 5.0, 1).unwrap();
        p.throttled();
        assert_eq!(p.rate(), 2.5, "nothing was accepted yet: half the rate");
        for _ in 0..CLEAN_RUN {
            p.accepted();
        }
        assert!((p.rate() - 2.5 * (1.0 + STEP)).abs() < 1e-9);
        for _ in 0..CLEAN_RUN * 1000 {
            p.accepted();
        }
        assert_eq!(p.rate(), 5.0, "never above the configured rate");
    }

    #[tokio::test(start_paused = true)]
    async fn no_wait_is_longer_than_the_slowest_pace() {
        let p = Pacer::new("t", 0.15, 1).unwrap();
        p.throttled();
        assert_eq!(p.rate(), MIN_RATE);
        let _ = p.check();
        let wait = p.check().unwrap();
        assert!(wait <= Duration::from_secs_f64(1.0 / MIN_RATE), "{wait:?}");
    }
}
