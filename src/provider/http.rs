//! The one HTTP layer every provider client goes through: a reqwest client with rustls and
//! connect/read/total timeouts, a per-instance rate cap, a pause between write calls, a
//! cooldown shared by every task of the instance when the provider throttles, and bounded
//! retries with exponential backoff and jitter for transient faults. Writes are retried only
//! when the caller says repeating them is harmless.
//!
//! Request URLs never reach a log line or an error: Bitrix24 webhook URLs and Tencent's
//! `usersig` query carry credentials.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use governor::Quota;
use reqwest::Method;
use reqwest::header::HeaderMap;
use tokio::time::Instant;

use super::{ErrorClass, ProviderError, RequestCounts};
use crate::reconcile::LONG_WAIT;

/// Pacing and timeout settings of one provider instance.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Instance name, for logs and metrics.
    pub instance: String,
    /// Per-request total timeout.
    pub timeout: Duration,
    /// Timeout for establishing the connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// Pause between write calls.
    pub interval: Duration,
    /// Cap on requests per second across all calls of the instance (reads and writes).
    pub rate: Option<f64>,
    /// Burst allowed by the rate cap.
    pub burst: u32,
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    /// First backoff step; doubles with jitter up to `max_backoff`.
    pub min_backoff: Duration,
    /// Upper bound of one backoff step.
    pub max_backoff: Duration,
    /// Write calls of the instance never overlap: the next waits until the one in flight has
    /// its answer (retries and throttle waits included). For providers where every write acts
    /// as one account, whatever the number of groups in flight (WhatsApp).
    pub serial_writes: bool,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            instance: String::new(),
            timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            interval: Duration::ZERO,
            rate: None,
            burst: 1,
            max_attempts: 5,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(60),
            serial_writes: false,
        }
    }
}

/// One request a provider wants made.
#[derive(Debug, Clone)]
pub struct Call {
    /// HTTP method.
    pub method: Method,
    /// Full URL. Never logged.
    pub url: String,
    /// Extra headers (auth headers are marked sensitive by the provider).
    pub headers: HeaderMap,
    /// JSON body, if any.
    pub body: Option<serde_json::Value>,
    /// Whether the call changes state (paced by `interval`, counted as a write).
    pub write: bool,
    /// Whether repeating the call after a timeout or reset is harmless.
    pub idempotent: bool,
    /// A short label for logs and metrics, e.g. `"add"`, `"list members"`. Never a URL.
    pub label: &'static str,
}

/// A response as the classifier sees it.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Response headers (for `Retry-After` and rate-limit hints).
    pub headers: HeaderMap,
    /// The whole body.
    pub body: bytes::Bytes,
}

impl Response {
    /// Decode the body as JSON; an undecodable body is transient (proxies answer with HTML).
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ProviderError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ProviderError::transient(format!(
                "unexpected response body (HTTP {}): {e}",
                self.status
            ))
        })
    }
}

/// Parse `Retry-After` as a number of seconds. HTTP dates are not accepted because no provider
/// here sends them; an unparsable value yields `None` and the caller falls back to backoff.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

type Limiter = governor::RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    governor::clock::DefaultClock,
>;

/// Called with every wait the layer makes (reason, length), e.g. by the CLI's progress line.
pub type WaitObserver = Arc<dyn Fn(&str, Duration) + Send + Sync>;

static WAIT_OBSERVER: OnceLock<WaitObserver> = OnceLock::new();

/// Install the process-wide wait observer (once; later calls are ignored).
pub fn set_wait_observer(f: WaitObserver) {
    let _ = WAIT_OBSERVER.set(f);
}

/// The most throttled answers one call waits through before giving up.
const MAX_THROTTLED: u32 = 10;

/// The shared client of one provider instance. Cheap to share behind an `Arc`.
pub struct HttpClient {
    opts: HttpOptions,
    client: reqwest::Client,
    limiter: Option<Limiter>,
    /// No request of this instance goes out before this instant (set by throttle signals).
    cooldown: std::sync::Mutex<Option<Instant>>,
    /// When the last write call went out, for `interval`.
    last_write: tokio::sync::Mutex<Option<Instant>>,
    /// Held by the write in flight when `serial_writes` is set.
    write_gate: tokio::sync::Mutex<()>,
    current_wait: std::sync::Mutex<Option<(Instant, &'static str)>>,
    reads: AtomicU64,
    writes: AtomicU64,
    throttled: AtomicU64,
    retries: AtomicU64,
}

impl HttpClient {
    /// Build the client, its connection pool and its rate limiter.
    pub fn new(opts: HttpOptions) -> Result<Self, ProviderError> {
        let client = build_reqwest(&opts)?;
        let limiter = match opts.rate {
            Some(rate) if rate.is_finite() && rate > 0.0 => {
                let burst = NonZeroU32::new(opts.burst.max(1)).expect("max(1) is non-zero");
                let quota = Quota::with_period(Duration::from_secs_f64(1.0 / rate))
                    .ok_or_else(|| ProviderError::fatal("rate must be positive"))?
                    .allow_burst(burst);
                Some(governor::RateLimiter::direct(quota))
            }
            Some(_) => {
                return Err(ProviderError::fatal(
                    "rate must be a positive number per second",
                ));
            }
            None => None,
        };
        Ok(HttpClient {
            opts,
            client,
            limiter,
            cooldown: std::sync::Mutex::new(None),
            last_write: tokio::sync::Mutex::new(None),
            write_gate: tokio::sync::Mutex::new(()),
            current_wait: std::sync::Mutex::new(None),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        })
    }

    /// The settings the client was built with.
    pub fn options(&self) -> &HttpOptions {
        &self.opts
    }

    /// The wait in progress, if any: how long is left and why.
    pub fn current_wait(&self) -> Option<(Duration, &'static str)> {
        let w = *self.current_wait.lock().ok()?;
        w.map(|(until, why)| (until.saturating_duration_since(Instant::now()), why))
    }

    /// Make the call, obeying pace and throttle signals, retrying what may be retried, and
    /// hand each response to `classify`, which turns it into a value or a classified error.
    pub async fn call<T>(
        &self,
        call: Call,
        classify: impl Fn(&Response) -> Result<T, ProviderError> + Send + Sync,
    ) -> Result<T, ProviderError> {
        let mut backoff = ExponentialBuilder::new()
            .with_min_delay(self.opts.min_backoff)
            .with_max_delay(self.opts.max_backoff)
            .with_jitter()
            .without_max_times()
            .build();
        let _gate = match call.write && self.opts.serial_writes {
            true => Some(self.write_gate.lock().await),
            false => None,
        };
        let mut failures = 0u32;
        let mut throttles = 0u32;
        loop {
            self.wait_turn(&call).await;
            let result = match self.send_once(&call).await {
                Ok(resp) => classify(&resp),
                Err(e) => Err(e),
            };
            let err = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let delay = backoff.next().unwrap_or(self.opts.max_backoff);
            match err.class {
                ErrorClass::Fatal => return Err(err),
                ErrorClass::Throttled => {
                    self.throttled.fetch_add(1, Ordering::Relaxed);
                    throttles += 1;
                    if throttles > MAX_THROTTLED {
                        return Err(err);
                    }
                    let wait = err
                        .retry_after
                        .unwrap_or(delay)
                        .min(Duration::from_secs(3600));
                    self.extend_cooldown(wait);
                    tracing::debug!(instance = %self.opts.instance, call = call.label, ?wait, "throttled");
                }
                ErrorClass::Transient => {
                    failures += 1;
                    let repeatable =
                        !call.write || call.idempotent || err.code.as_deref() == Some(NOT_SENT);
                    if !repeatable || failures >= self.opts.max_attempts.max(1) {
                        return Err(err);
                    }
                    tracing::debug!(instance = %self.opts.instance, call = call.label, error = %err, "retrying");
                    self.sleep(delay, "backoff after error", call.label).await;
                }
            }
            self.retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Wait for the instance's cooldown, the rate cap and (for writes) the interval.
    async fn wait_turn(&self, call: &Call) {
        loop {
            let until = self.cooldown.lock().ok().and_then(|c| *c);
            match until {
                Some(t) if t > Instant::now() => {
                    self.sleep(t - Instant::now(), "throttled by provider", call.label)
                        .await
                }
                _ => break,
            }
        }
        if call.write && !self.opts.interval.is_zero() {
            let mut last = self.last_write.lock().await;
            if let Some(prev) = *last {
                let next = prev + self.opts.interval;
                if next > Instant::now() {
                    self.sleep(next - Instant::now(), "interval between writes", call.label)
                        .await;
                }
            }
            *last = Some(Instant::now());
        }
        if let Some(limiter) = &self.limiter
            && let Err(not_until) = limiter.check()
        {
            {
                let wait = not_until.wait_time_from(governor::clock::Clock::now(limiter.clock()));
                if wait >= LONG_WAIT {
                    self.note_long_wait(wait, "rate cap", call.label);
                }
                self.set_current_wait(Some((Instant::now() + wait, "rate cap")));
                limiter.until_ready().await;
                self.set_current_wait(None);
            }
        }
    }

    fn extend_cooldown(&self, wait: Duration) {
        if let Ok(mut c) = self.cooldown.lock() {
            let until = Instant::now() + wait;
            if c.is_none_or(|t| t < until) {
                *c = Some(until);
            }
        }
    }

    async fn sleep(&self, d: Duration, why: &'static str, label: &'static str) {
        if d >= LONG_WAIT {
            self.note_long_wait(d, why, label);
        }
        self.set_current_wait(Some((Instant::now() + d, why)));
        tokio::time::sleep(d).await;
        self.set_current_wait(None);
    }

    fn note_long_wait(&self, d: Duration, why: &'static str, label: &'static str) {
        tracing::warn!(
            instance = %self.opts.instance,
            call = label,
            seconds = d.as_secs_f64(),
            reason = why,
            "waiting before the next request"
        );
        if let Some(obs) = WAIT_OBSERVER.get() {
            obs(why, d);
        }
    }

    fn set_current_wait(&self, w: Option<(Instant, &'static str)>) {
        if let Ok(mut c) = self.current_wait.lock() {
            *c = w;
        }
    }

    async fn send_once(&self, call: &Call) -> Result<Response, ProviderError> {
        if call.write {
            self.writes.fetch_add(1, Ordering::Relaxed);
        } else {
            self.reads.fetch_add(1, Ordering::Relaxed);
        }
        let mut req = self
            .client
            .request(call.method.clone(), &call.url)
            .headers(call.headers.clone());
        if let Some(body) = &call.body {
            req = req.json(body);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| transport_error(call.label, e))?;
        let status = resp.status().as_u16();
        if resp.status().is_redirection() {
            // Not followed (see `build_reqwest`). The Location is not quoted: it may echo the
            // credentials of the request URL.
            return Err(ProviderError::fatal(format!(
                "{}: the provider answered with a redirect (HTTP {status}); rosterd does not \
                 follow redirects, which would resend credentials elsewhere: check base_url",
                call.label
            ))
            .with_code(format!("HTTP_{status}")));
        }
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .map_err(|e| transport_error(call.label, e))?;
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    /// Requests made so far by every task of this instance.
    pub fn counts(&self) -> RequestCounts {
        RequestCounts {
            reads: self.reads.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }
}

/// The code of a transport error raised before the request left this machine: repeating it
/// is harmless even for a write.
pub const NOT_SENT: &str = "NOT_SENT";

/// A reqwest failure as a transient error, with the URL stripped (it may carry credentials).
fn transport_error(label: &str, e: reqwest::Error) -> ProviderError {
    let not_sent = e.is_connect() || e.is_builder();
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "transport error"
    };
    let err = ProviderError::transient(format!("{label}: {kind}: {}", e.without_url()));
    if not_sent {
        err.with_code(NOT_SENT)
    } else {
        err
    }
}

impl HttpOptions {
    /// The options of one instance: its `timeout`, `interval` and `rate` over the provider's
    /// defaults.
    pub fn for_instance(
        instance: &crate::provider::Instance,
        default_rate: Option<f64>,
        default_interval: Duration,
    ) -> Self {
        let c = &instance.common;
        let d = HttpOptions::default();
        HttpOptions {
            instance: instance.name.clone(),
            timeout: c.timeout.unwrap_or(d.timeout),
            interval: c.interval.unwrap_or(default_interval),
            rate: c.rate.or(default_rate),
            ..d
        }
    }
}

/// Build a reqwest client. Installs the ring crypto provider first: with `rustls-no-provider`
/// building a client without one panics.
pub fn build_reqwest(opts: &HttpOptions) -> Result<reqwest::Client, ProviderError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(opts.connect_timeout)
        .read_timeout(opts.timeout)
        .timeout(opts.timeout)
        .user_agent(concat!("rosterd/", env!("CARGO_PKG_VERSION")))
        // A followed redirect would carry the credentials in the URL (Bitrix24's webhook path,
        // Tencent's usersig) and in headers to another host, and turn a POST into a bodyless GET.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| {
            ProviderError::fatal(format!("cannot build the HTTP client: {}", e.without_url()))
        })
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
