//! What the CLI and the daemon hand down to every layer below them instead of letting it read
//! the clock or sleep on its own: a clock that advances with tokio's (so tests pause it), a
//! cancellation token every wait selects on, and a tally of the HTTP requests sent in its scope.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Wall-clock time anchored once, then advanced by tokio's monotonic clock: under a paused
/// runtime, mutes, OAuth expiries and reset headers move exactly as far as the test advances.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall: SystemTime,
    at: Instant,
}

impl Clock {
    /// A clock that reads `wall` now.
    pub fn starting_at(wall: SystemTime) -> Self {
        Clock {
            wall,
            at: Instant::now(),
        }
    }

    /// The wall-clock time now.
    pub fn now(&self) -> SystemTime {
        self.wall + self.at.elapsed()
    }

    /// The monotonic time now (tokio's, pausable).
    pub fn instant(&self) -> Instant {
        Instant::now()
    }
}

/// Returned by a wait that was cut short because the run is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rosterd is stopping")]
pub struct Cancelled;

/// HTTP requests sent within one scope (a group's run, one planned batch).
#[derive(Debug, Default)]
pub struct Tally {
    reads: AtomicU64,
    writes: AtomicU64,
}

/// A reading of a [`Tally`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Sent {
    pub reads: u64,
    pub writes: u64,
}

/// The context of one piece of work: its clock, its cancellation and its request tally.
#[derive(Debug, Clone)]
pub struct Ctx {
    clock: Clock,
    cancel: CancellationToken,
    tallies: Vec<Arc<Tally>>,
}

impl Ctx {
    pub fn new(clock: Clock, cancel: CancellationToken) -> Self {
        Ctx {
            clock,
            cancel,
            tallies: Vec::new(),
        }
    }

    /// A context for tests and tools: the given wall time, never cancelled.
    pub fn at(wall: SystemTime) -> Self {
        Ctx::new(Clock::starting_at(wall), CancellationToken::new())
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The wall-clock time now.
    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Wait `d`, or less if the work is cancelled meanwhile.
    pub async fn sleep(&self, d: Duration) -> Result<(), Cancelled> {
        if self.cancel.is_cancelled() {
            return Err(Cancelled);
        }
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Err(Cancelled),
            _ = tokio::time::sleep(d) => Ok(()),
        }
    }

    /// The same context, with a fresh tally of its own; requests made through the returned
    /// context count in every enclosing scope too. Read it with [`Ctx::sent`].
    pub fn scoped(&self) -> Ctx {
        let mut c = self.clone();
        c.tallies.push(Arc::new(Tally::default()));
        c
    }

    /// Requests sent through this context's innermost scope (zero outside any scope).
    pub fn sent(&self) -> Sent {
        self.tallies.last().map_or(Sent::default(), |t| Sent {
            reads: t.reads.load(Ordering::Relaxed),
            writes: t.writes.load(Ordering::Relaxed),
        })
    }

    /// Count one request that left the machine.
    pub(crate) fn count(&self, write: bool) {
        for t in &self.tallies {
            if write {
                t.writes.fetch_add(1, Ordering::Relaxed);
            } else {
                t.reads.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_wall_clock_moves_with_paused_time() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ctx = Ctx::at(t0);
        ctx.sleep(Duration::from_secs(90)).await.unwrap();
        assert_eq!(ctx.now(), t0 + Duration::from_secs(90));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_at_cancellation() {
        let ctx = Ctx::at(SystemTime::UNIX_EPOCH);
        let start = Instant::now();
        let c = ctx.cancel_token().clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            c.cancel();
        });
        assert_eq!(ctx.sleep(Duration::from_secs(3600)).await, Err(Cancelled));
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        assert_eq!(ctx.sleep(Duration::ZERO).await, Err(Cancelled));
    }

    #[test]
    fn scopes_nest() {
        let ctx = Ctx::at(SystemTime::UNIX_EPOCH).scoped();
        let inner = ctx.scoped();
        inner.count(true);
        inner.count(false);
        ctx.count(true);
        assert_eq!(
            inner.sent(),
            Sent {
                reads: 1,
                writes: 1
            }
        );
        assert_eq!(
            ctx.sent(),
            Sent {
                reads: 1,
                writes: 2
            }
        );
    }
}
