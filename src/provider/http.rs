//! The one HTTP layer every provider client goes through: a reqwest client with rustls and
//! connect/read/total timeouts, a per-instance rate cap, a pause between write calls, a
//! cooldown shared by every task of the instance when the provider throttles, and bounded
//! retries with exponential backoff and jitter for transient faults. Writes are retried only
//! when the caller says repeating them is harmless.
//!
//! Request URLs never reach a log line or an error: Bitrix24 webhook URLs and Tencent's
//! `usersig` query carry credentials.

use std::time::Duration;

use reqwest::Method;
use reqwest::header::HeaderMap;

use super::{ProviderError, RequestCounts};

/// Pacing and timeout settings of one provider instance.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Instance name, for logs and metrics.
    pub instance: String,
    /// Per-request total timeout.
    pub timeout: Duration,
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
    pub max_backoff: Duration,
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
        }
    }
}

/// One request a provider wants made.
#[derive(Debug, Clone)]
pub struct Call {
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
    pub status: u16,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
}

impl Response {
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ProviderError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ProviderError::transient(format!("unexpected response body (HTTP {}): {e}", self.status))
        })
    }
}

/// Parse `Retry-After` (seconds or an HTTP date is not supported: seconds only, as every
/// provider here sends seconds).
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

/// The shared client of one provider instance. Cheap to share behind an `Arc`.
pub struct HttpClient {
    opts: HttpOptions,
    client: reqwest::Client,
}

impl HttpClient {
    pub fn new(opts: HttpOptions) -> Result<Self, ProviderError> {
        let client = build_reqwest(&opts)?;
        Ok(HttpClient { opts, client })
    }

    pub fn options(&self) -> &HttpOptions {
        &self.opts
    }

    /// Make the call, obeying pace and throttle signals, retrying what may be retried, and
    /// hand each response to `classify`, which turns it into a value or a classified error.
    pub async fn call<T>(
        &self,
        call: Call,
        classify: impl Fn(&Response) -> Result<T, ProviderError> + Send + Sync,
    ) -> Result<T, ProviderError> {
        let mut req = self.client.request(call.method.clone(), &call.url).headers(call.headers.clone());
        if let Some(body) = &call.body {
            req = req.json(body);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ProviderError::transient(format!("{}: {}", call.label, e.without_url())))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .map_err(|e| ProviderError::transient(format!("{}: {}", call.label, e.without_url())))?;
        classify(&Response { status, headers, body })
    }

    pub fn counts(&self) -> RequestCounts {
        RequestCounts::default()
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
        .build()
        .map_err(|e| ProviderError::fatal(format!("cannot build the HTTP client: {}", e.without_url())))
}
