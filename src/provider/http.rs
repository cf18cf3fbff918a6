//! The one HTTP layer every provider client goes through, and the only place that retries,
//! paces and waits: a reqwest client with rustls and connect/read/total timeouts, a
//! per-instance rate cap (governor, on tokio's clock), a pause between write calls, a cooldown
//! shared by every task of the instance when the provider throttles (the provider's named wait,
//! else a doubling one), one credential renewal per call, halving of calls the provider finds
//! too large (the learned maximum kept per instance), and bounded retries with capped, jittered
//! backoff for passing faults. Providers classify each answer into a [`Verdict`]; the loop in
//! [`HttpClient::call`] acts on it. Every wait runs on the [`Ctx`]'s clock and ends when the
//! run is cancelled; a call not yet sent then is not sent. Writes are repeated after a fault
//! only when the caller says repeating them is harmless.
//!
//! Request URLs never reach a log line or an error: Bitrix24 webhook URLs and Tencent's
//! `usersig` query carry credentials.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use governor::nanos::Nanos;
use reqwest::Method;
use reqwest::header::HeaderMap;
use tokio::time::Instant;

use super::pace::Pacer;
use super::{ErrorClass, ProviderError, RequestCounts};
use crate::ctx::{Cancelled, Ctx};
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
    /// Attempts per call after passing faults, the first included.
    pub max_attempts: u32,
    /// First backoff step after a passing fault; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Upper bound of one backoff step (jitter included: a wait never exceeds it).
    pub max_backoff: Duration,
    /// First cooldown after a throttle answer that names no wait; doubles per throttle in a
    /// row across the instance, up to `max_throttle_wait`.
    pub throttle_wait: Duration,
    /// Upper bound of a cooldown the layer chooses itself (jitter included).
    pub max_throttle_wait: Duration,
    /// Upper bound of a wait the provider names (`Retry-After` and the like).
    pub max_named_wait: Duration,
    /// Share of a chosen wait taken off at random, so tasks that waited together do not come
    /// back together; 0 makes waits exact. Jitter only shortens a wait, never lengthens it.
    pub jitter: f64,
    /// Write calls of the instance never overlap: the next waits until the one in flight has
    /// its answer (retries and throttle waits included). For providers where every write acts
    /// as one account, whatever the number of groups in flight (WhatsApp).
    pub serial_writes: bool,
    /// Extra trusted certificate authorities (PEM bundle); verification always stays on.
    pub ca_file: Option<std::path::PathBuf>,
    /// The proxy of every request; `None` leaves `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` in charge.
    pub proxy: Option<String>,
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
            throttle_wait: Duration::from_millis(200),
            max_throttle_wait: Duration::from_secs(60),
            max_named_wait: Duration::from_secs(3600),
            jitter: 0.2,
            serial_writes: false,
            ca_file: None,
            proxy: None,
        }
    }
}

/// One request a provider wants made.
#[derive(Debug, Clone, Default)]
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
    /// Which issue of the instance's credentials the call carries, so a renewal after its
    /// rejection is skipped when another task already renewed them.
    pub credentials: u64,
}

/// What makes the request of each attempt: a fixed [`Call`], or a closure that builds it anew
/// (with the credentials in force after a renewal).
pub trait MakeCall: Send + Sync {
    fn make(&self) -> Call;
}

impl MakeCall for Call {
    fn make(&self) -> Call {
        self.clone()
    }
}

impl<F: Fn() -> Call + Send + Sync> MakeCall for F {
    fn make(&self) -> Call {
        self()
    }
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
    /// When it arrived, by the run's clock (for reset times given as wall-clock instants).
    pub received: SystemTime,
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

/// What a provider's classifier says about one answer; the loop in [`HttpClient`] is the only
/// code that acts on it.
#[derive(Debug)]
pub enum Verdict<T> {
    /// The answer, translated.
    Done(T),
    /// The provider asked us to slow down: nothing was done, so the call is repeated (writes
    /// too) after `after`, or after the instance's own doubling cooldown when it named none.
    Throttled {
        error: ProviderError,
        after: Option<Duration>,
    },
    /// A passing fault (5xx, an unreadable body): repeated after backoff when harmless.
    Fault(ProviderError),
    /// The credentials the call carried were rejected in a way fresh ones fix: renew them
    /// once, then repeat.
    Reauth(ProviderError),
    /// The items of a split call must go in smaller calls: halve them. With `learn`, the half
    /// becomes the instance's maximum for this kind of call (the provider told us its limit);
    /// without, one item is at fault and is isolated.
    Split { error: ProviderError, learn: bool },
    /// Retrying will not help.
    Fatal(ProviderError),
}

impl<T> From<Result<T, ProviderError>> for Verdict<T> {
    /// By the error's class: throttled, transient or fatal.
    fn from(r: Result<T, ProviderError>) -> Self {
        match r {
            Ok(v) => Verdict::Done(v),
            Err(e) => match e.class {
                ErrorClass::Throttled => Verdict::Throttled {
                    after: e.retry_after,
                    error: e,
                },
                ErrorClass::Transient => Verdict::Fault(e),
                ErrorClass::Fatal => Verdict::Fatal(e),
            },
        }
    }
}

/// What a classifier may answer: a [`Verdict`], or a plain result judged by its error's class.
pub trait IntoVerdict {
    type Out;
    fn into_verdict(self) -> Verdict<Self::Out>;
}

impl<T> IntoVerdict for Verdict<T> {
    type Out = T;
    fn into_verdict(self) -> Verdict<T> {
        self
    }
}

impl<T> IntoVerdict for Result<T, ProviderError> {
    type Out = T;
    fn into_verdict(self) -> Verdict<T> {
        self.into()
    }
}

/// Fresh credentials for an instance whose provider rejected the ones a call carried.
#[async_trait::async_trait]
pub trait Renew: Send + Sync {
    /// Renew the credentials, unless they changed since issue `seen` (another task renewed
    /// them meanwhile). Requests it makes go through `http`.
    async fn renew(&self, ctx: &Ctx, http: &HttpClient, seen: u64) -> Result<(), ProviderError>;
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

/// governor's clock, read from tokio's (pausable) clock instead of the system's.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

/// An instant of [`TokioClock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TokioInstant(Instant);

impl std::ops::Add<Nanos> for TokioInstant {
    type Output = TokioInstant;
    fn add(self, d: Nanos) -> TokioInstant {
        TokioInstant(self.0 + Duration::from(d))
    }
}

impl governor::clock::Reference for TokioInstant {
    fn duration_since(&self, earlier: Self) -> Nanos {
        self.0.saturating_duration_since(earlier.0).into()
    }
    fn saturating_sub(&self, d: Nanos) -> Self {
        TokioInstant(self.0.checked_sub(d.into()).unwrap_or(self.0))
    }
}

impl governor::clock::Clock for TokioClock {
    type Instant = TokioInstant;
    fn now(&self) -> TokioInstant {
        TokioInstant(Instant::now())
    }
}

/// Called with every long wait the layer makes (reason, length), e.g. by the CLI's progress
/// line.
pub type WaitObserver = Arc<dyn Fn(&str, Duration) + Send + Sync>;

static WAIT_OBSERVER: OnceLock<WaitObserver> = OnceLock::new();

/// Install the process-wide wait observer (once; later calls are ignored).
pub fn set_wait_observer(f: WaitObserver) {
    let _ = WAIT_OBSERVER.set(f);
}

/// The most throttled answers one call waits through before giving up.
const MAX_THROTTLED: u32 = 10;

/// The code of a call refused because the run was cancelled before it left the machine.
pub const CANCELLED: &str = "NOT_SENT_STOPPING";

fn cancelled(label: &str) -> ProviderError {
    ProviderError::fatal(format!(
        "{label}: rosterd is stopping: the call was not sent"
    ))
    .with_code(CANCELLED)
}

/// The shared client of one provider instance. Cheap to share behind an `Arc`.
pub struct HttpClient {
    opts: HttpOptions,
    client: reqwest::Client,
    /// The rate cap, learned from throttle signals (never above the configured `rate`).
    pacer: Option<Pacer>,
    renew: OnceLock<Arc<dyn Renew>>,
    /// No request of this instance goes out before this instant (set by throttle signals).
    cooldown: std::sync::Mutex<Option<Instant>>,
    /// Throttle answers in a row across the instance, for the doubling cooldown.
    throttle_streak: AtomicU32,
    /// When the last write call went out, for `interval`.
    last_write: tokio::sync::Mutex<Option<Instant>>,
    /// Held by the write in flight when `serial_writes` is set.
    write_gate: tokio::sync::Mutex<()>,
    /// The most items one call of a kind may carry, as the provider taught us.
    learned: std::sync::Mutex<HashMap<&'static str, usize>>,
    current_wait: std::sync::Mutex<Option<(Instant, &'static str)>>,
    reads: AtomicU64,
    writes: AtomicU64,
    throttled: AtomicU64,
    retries: AtomicU64,
}

/// Where the loop goes after a verdict that is not final.
enum Next {
    Again,
    Fail(ProviderError),
}

impl HttpClient {
    /// Build the client, its connection pool and its rate limiter.
    pub fn new(opts: HttpOptions) -> Result<Self, ProviderError> {
        let client = build_reqwest(&opts)?;
        let pacer = match opts.rate {
            Some(rate) => Some(Pacer::new(&opts.instance, rate, opts.burst).ok_or_else(|| {
                ProviderError::fatal("rate must be a positive number per second")
            })?),
            None => None,
        };
        Ok(HttpClient {
            opts,
            client,
            pacer,
            renew: OnceLock::new(),
            cooldown: std::sync::Mutex::new(None),
            throttle_streak: AtomicU32::new(0),
            last_write: tokio::sync::Mutex::new(None),
            write_gate: tokio::sync::Mutex::new(()),
            learned: std::sync::Mutex::new(HashMap::new()),
            current_wait: std::sync::Mutex::new(None),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        })
    }

    /// Renew credentials through `r` when a classifier answers [`Verdict::Reauth`].
    pub fn with_renewal(self, r: Arc<dyn Renew>) -> Self {
        let _ = self.renew.set(r);
        self
    }

    /// The settings the client was built with.
    pub fn options(&self) -> &HttpOptions {
        &self.opts
    }

    /// The pace in force, requests per second (`None` when the instance has no rate cap).
    pub fn pace(&self) -> Option<f64> {
        self.pacer.as_ref().map(Pacer::rate)
    }

    /// The wait in progress, if any: how long is left and why.
    pub fn current_wait(&self) -> Option<(Duration, &'static str)> {
        let w = *self.current_wait.lock().ok()?;
        w.map(|(until, why)| (until.saturating_duration_since(Instant::now()), why))
    }

    /// The most items one call of `key` may carry, where the provider taught a limit.
    pub fn learned_max(&self, key: &'static str) -> Option<usize> {
        self.learned.lock().ok()?.get(key).copied()
    }

    fn learn(&self, key: &'static str, max: usize) {
        if let Ok(mut l) = self.learned.lock() {
            let e = l.entry(key).or_insert(max);
            *e = (*e).min(max);
        }
    }

    /// Make the call, obeying pace and throttle signals, renewing credentials once, retrying
    /// what may be retried, and hand each response to `classify`.
    pub async fn call<V: IntoVerdict>(
        &self,
        ctx: &Ctx,
        make: impl MakeCall,
        classify: impl Fn(&Response) -> V + Send + Sync,
    ) -> Result<V::Out, ProviderError> {
        let probe = make.make();
        let _gate = match probe.write && self.opts.serial_writes {
            true => Some(self.write_gate.lock().await),
            false => None,
        };
        let mut backoff = self.backoff();
        let mut failures = 0u32;
        let mut throttles = 0u32;
        let mut renewed = false;
        let mut call = probe;
        loop {
            if let Err(Cancelled) = self.wait_turn(ctx, &call).await {
                return Err(cancelled(call.label));
            }
            let verdict = match self.send_once(ctx, &call).await {
                Ok(resp) => classify(&resp).into_verdict(),
                Err(e) => Verdict::from(Err(e)),
            };
            let next = match verdict {
                Verdict::Done(v) => {
                    self.throttle_streak.store(0, Ordering::Relaxed);
                    if let Some(p) = &self.pacer {
                        p.accepted();
                    }
                    return Ok(v);
                }
                Verdict::Split { error, .. } => Next::Fail(error),
                other => {
                    self.after_failure(
                        ctx,
                        &call,
                        other,
                        &mut backoff,
                        &mut failures,
                        &mut throttles,
                        &mut renewed,
                    )
                    .await
                }
            };
            match next {
                Next::Fail(e) => return Err(e),
                Next::Again => {
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    call = make.make();
                }
            }
        }
    }

    /// Send `items` in as few calls as the provider takes: at most the learned maximum of
    /// `key` per call; a call answered [`Verdict::Split`] is halved (and, when the provider
    /// named its limit, the half is kept for later calls); a single item still refused is
    /// turned into its own result by `alone`. Results come back in item order.
    pub async fn call_split<I, T>(
        &self,
        ctx: &Ctx,
        key: &'static str,
        items: &[I],
        build: impl Fn(&[I]) -> Call + Send + Sync,
        classify: impl Fn(&[I], &Response) -> Verdict<Vec<T>> + Send + Sync,
        alone: impl Fn(&I, ProviderError) -> T + Send + Sync,
    ) -> Result<Vec<T>, ProviderError>
    where
        I: Sync,
        T: Send,
    {
        let cap = self.learned_max(key).unwrap_or(usize::MAX).max(1);
        let mut queue: VecDeque<std::ops::Range<usize>> = (0..items.len())
            .step_by(cap)
            .map(|s| s..(s + cap).min(items.len()))
            .collect();
        let mut out: Vec<(usize, Vec<T>)> = Vec::new();
        while let Some(range) = queue.pop_front() {
            let part = &items[range.clone()];
            let split = std::sync::Mutex::new(None);
            let result = self
                .call(
                    ctx,
                    || build(part),
                    |r| match classify(part, r) {
                        Verdict::Split { error, learn } => {
                            *split.lock().unwrap_or_else(|e| e.into_inner()) = Some(learn);
                            Verdict::Split { error, learn }
                        }
                        other => other,
                    },
                )
                .await;
            let learn = split.lock().unwrap_or_else(|e| e.into_inner()).take();
            match (result, learn) {
                (Ok(v), _) => out.push((range.start, v)),
                (Err(e), Some(_)) if part.len() == 1 => {
                    out.push((range.start, vec![alone(&part[0], e)]));
                }
                (Err(e), Some(learn)) => {
                    let half = part.len().div_ceil(2);
                    tracing::debug!(instance = %self.opts.instance, call = key, size = half, error = %e, "splitting the call");
                    let mid = range.start + half;
                    queue.push_front(mid..range.end);
                    queue.push_front(range.start..mid);
                    if learn {
                        // What is still queued goes at the taught size, not tried larger first.
                        self.learn(key, half);
                        queue = queue
                            .into_iter()
                            .flat_map(|r| {
                                (r.start..r.end)
                                    .step_by(half)
                                    .map(move |s| s..(s + half).min(r.end))
                            })
                            .collect();
                    }
                }
                (Err(e), None) => return Err(e),
            }
        }
        out.sort_by_key(|(start, _)| *start);
        Ok(out.into_iter().flat_map(|(_, v)| v).collect())
    }

    fn backoff(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::new()
            .with_min_delay(self.opts.min_backoff)
            .with_max_delay(self.opts.max_backoff)
            .without_max_times()
            .build()
    }

    /// What to do after a failed attempt; waits what must be waited.
    #[allow(clippy::too_many_arguments)]
    async fn after_failure<T>(
        &self,
        ctx: &Ctx,
        call: &Call,
        verdict: Verdict<T>,
        backoff: &mut impl Iterator<Item = Duration>,
        failures: &mut u32,
        throttles: &mut u32,
        renewed: &mut bool,
    ) -> Next {
        match verdict {
            Verdict::Done(_) | Verdict::Split { .. } => unreachable!("handled by the caller"),
            Verdict::Fatal(e) => Next::Fail(e),
            Verdict::Throttled { error, after } => {
                self.throttled.fetch_add(1, Ordering::Relaxed);
                if let Some(p) = &self.pacer {
                    p.throttled();
                }
                *throttles += 1;
                if *throttles > MAX_THROTTLED {
                    return Next::Fail(error);
                }
                let streak = self.throttle_streak.fetch_add(1, Ordering::Relaxed);
                let wait = match after {
                    Some(named) => named.min(self.opts.max_named_wait),
                    None => self.jittered(
                        doubled(self.opts.throttle_wait, streak).min(self.opts.max_throttle_wait),
                    ),
                };
                self.extend_cooldown(wait);
                tracing::debug!(instance = %self.opts.instance, call = call.label, ?wait, error = %error, "throttled");
                Next::Again
            }
            Verdict::Reauth(error) => {
                let Some(renew) = self.renew.get().filter(|_| !*renewed) else {
                    return Next::Fail(ProviderError {
                        class: ErrorClass::Fatal,
                        ..error
                    });
                };
                *renewed = true;
                tracing::debug!(instance = %self.opts.instance, call = call.label, "renewing credentials");
                match renew.renew(ctx, self, call.credentials).await {
                    Ok(()) => Next::Again,
                    Err(e) => Next::Fail(e),
                }
            }
            Verdict::Fault(error) => {
                *failures += 1;
                let repeatable =
                    !call.write || call.idempotent || error.code.as_deref() == Some(NOT_SENT);
                if !repeatable || *failures >= self.opts.max_attempts.max(1) {
                    return Next::Fail(error);
                }
                tracing::debug!(instance = %self.opts.instance, call = call.label, error = %error, "retrying");
                let step = backoff.next().unwrap_or(self.opts.max_backoff);
                let wait = self.jittered(step.min(self.opts.max_backoff));
                match self
                    .sleep(ctx, wait, "backoff after error", call.label)
                    .await
                {
                    Ok(()) => Next::Again,
                    Err(Cancelled) => Next::Fail(cancelled(call.label)),
                }
            }
        }
    }

    /// `d` less a random share of up to `jitter` of it.
    fn jittered(&self, d: Duration) -> Duration {
        let j = self.opts.jitter.clamp(0.0, 1.0);
        if j == 0.0 {
            return d;
        }
        d.mul_f64(1.0 - j * rand::random::<f64>())
    }

    /// Wait for the instance's cooldown, the rate cap and (for writes) the interval.
    async fn wait_turn(&self, ctx: &Ctx, call: &Call) -> Result<(), Cancelled> {
        if ctx.is_cancelled() {
            return Err(Cancelled);
        }
        loop {
            let until = self.cooldown.lock().ok().and_then(|c| *c);
            match until {
                Some(t) if t > Instant::now() => {
                    self.sleep(ctx, t - Instant::now(), "throttled by provider", call.label)
                        .await?
                }
                _ => break,
            }
        }
        if call.write && !self.opts.interval.is_zero() {
            let mut last = self.last_write.lock().await;
            if let Some(prev) = *last {
                let next = prev + self.opts.interval;
                if next > Instant::now() {
                    self.sleep(
                        ctx,
                        next - Instant::now(),
                        "interval between writes",
                        call.label,
                    )
                    .await?;
                }
            }
            *last = Some(Instant::now());
        }
        if let Some(pacer) = &self.pacer {
            while let Some(wait) = pacer.check() {
                self.sleep(ctx, wait, "rate cap", call.label).await?;
            }
        }
        Ok(())
    }

    fn extend_cooldown(&self, wait: Duration) {
        if let Ok(mut c) = self.cooldown.lock() {
            let until = Instant::now() + wait;
            if c.is_none_or(|t| t < until) {
                *c = Some(until);
            }
        }
    }

    async fn sleep(
        &self,
        ctx: &Ctx,
        d: Duration,
        why: &'static str,
        label: &'static str,
    ) -> Result<(), Cancelled> {
        if d >= LONG_WAIT {
            self.note_long_wait(d, why, label);
        }
        self.set_current_wait(Some((Instant::now() + d, why)));
        let r = ctx.sleep(d).await;
        self.set_current_wait(None);
        r
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

    async fn send_once(&self, ctx: &Ctx, call: &Call) -> Result<Response, ProviderError> {
        if call.write {
            self.writes.fetch_add(1, Ordering::Relaxed);
        } else {
            self.reads.fetch_add(1, Ordering::Relaxed);
        }
        ctx.count(call.write);
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
            received: ctx.now(),
        })
    }

    /// Requests made so far by every task of this instance.
    pub fn counts(&self) -> RequestCounts {
        RequestCounts {
            reads: self.reads.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            pace: self.pace(),
        }
    }
}

/// `base` doubled `n` times, saturating.
fn doubled(base: Duration, n: u32) -> Duration {
    base.saturating_mul(1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX))
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
    // The innermost cause says what went wrong ("invalid peer certificate: UnknownIssuer",
    // "Connection refused"); reqwest's own text only says a request failed. Causes below
    // reqwest carry no URL.
    let mut cause = String::new();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    let e = e.without_url();
    let text = e.to_string();
    let err = ProviderError::transient(if cause.is_empty() || text.contains(&cause) {
        format!("{label}: {kind}: {text}")
    } else {
        format!("{label}: {kind}: {text}: {cause}")
    });
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
            ca_file: c.ca_file.clone(),
            proxy: c.proxy.clone(),
            ..d
        }
    }
}

/// Build a reqwest client. Installs the ring crypto provider first: with `rustls-no-provider`
/// building a client without one panics.
pub fn build_reqwest(opts: &HttpOptions) -> Result<reqwest::Client, ProviderError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder();
    if let Some(path) = &opts.ca_file {
        // Added to the trusted roots, never replacing them; nothing turns verification off.
        builder = builder.tls_certs_merge(read_ca_file(path).map_err(ProviderError::fatal)?);
    }
    if let Some(p) = &opts.proxy {
        let proxy = reqwest::Proxy::all(p)
            .map_err(|e| ProviderError::fatal(format!("proxy: {}", e.without_url())))?;
        builder = builder.proxy(proxy);
    }
    builder
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

/// The certificates of a PEM bundle; an error names the file and says what is wrong.
pub fn read_ca_file(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read ca_file {}: {}", path.display(), e.kind()))?;
    match reqwest::Certificate::from_pem_bundle(&bytes) {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        _ => Err(format!(
            "ca_file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )),
    }
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
