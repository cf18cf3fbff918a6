//! Progress of an apply: on a terminal one updating line (calls done/total and any current
//! wait); otherwise log lines.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::model::OpKind;

/// Receives the engine's progress events.
pub trait Progress: Send + Sync {
    fn calls_planned(&self, n: usize);
    fn call_done(&self, group: &str, kind: OpKind);
    fn waiting(&self, why: &str, d: Duration);
    fn finish(&self);
    /// A group's live state was read: its provider answered (the daemon's readiness).
    fn group_read(&self, _group: &str, _provider: &str) {}
}

/// The display for this process: a status line on a terminal, log lines otherwise.
pub fn default_progress() -> std::sync::Arc<dyn Progress> {
    if std::io::stderr().is_terminal() {
        std::sync::Arc::new(TerminalProgress::default())
    } else {
        std::sync::Arc::new(LogProgress::default())
    }
}

/// One line on stderr, rewritten in place.
#[derive(Default)]
pub struct TerminalProgress {
    total: AtomicUsize,
    done: AtomicUsize,
    wait: Mutex<Option<(String, Duration)>>,
}

impl TerminalProgress {
    fn draw(&self) {
        let done = self.done.load(Ordering::Relaxed);
        let total = self.total.load(Ordering::Relaxed);
        let wait = self.wait.lock().map(|w| w.clone()).unwrap_or(None);
        let mut line = format!("applying: {done}/{total} calls");
        if let Some((why, d)) = wait {
            line.push_str(&format!(", waiting {}s ({why})", d.as_secs()));
        }
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{line}");
        let _ = err.flush();
    }
}

impl Progress for TerminalProgress {
    fn calls_planned(&self, n: usize) {
        self.total.store(n, Ordering::Relaxed);
        self.draw();
    }
    fn call_done(&self, _group: &str, _kind: OpKind) {
        self.done.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut w) = self.wait.lock() {
            *w = None;
        }
        self.draw();
    }
    fn waiting(&self, why: &str, d: Duration) {
        if let Ok(mut w) = self.wait.lock() {
            *w = Some((why.to_string(), d));
        }
        self.draw();
    }
    fn finish(&self) {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err);
    }
}

/// Log lines through `tracing`, for CI logs and collectors.
#[derive(Default)]
pub struct LogProgress {
    total: AtomicUsize,
    done: AtomicUsize,
}

impl Progress for LogProgress {
    fn calls_planned(&self, n: usize) {
        self.total.store(n, Ordering::Relaxed);
        tracing::info!(calls = n, "applying");
    }
    fn call_done(&self, group: &str, kind: OpKind) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        let total = self.total.load(Ordering::Relaxed);
        tracing::info!(group, op = %kind, done, total, "write call done");
    }
    fn waiting(&self, why: &str, d: Duration) {
        tracing::info!(reason = why, seconds = d.as_secs_f64(), "waiting");
    }
    fn finish(&self) {
        let done = self.done.load(Ordering::Relaxed);
        tracing::info!(calls = done, "apply finished");
    }
}
