//! The HTTP layer against a scripted server on 127.0.0.1, on tokio's paused clock: every wait
//! (cooldowns, backoff, rate cap, interval, timeouts) is asserted exactly, and none takes
//! real time.

use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response as AxumResponse};
use axum::routing::any;
use tokio::time::Instant;

use super::*;

/// What the server answers, in order; the last answer repeats.
#[derive(Clone)]
enum Reply {
    Ok,
    Status(u16),
    Throttle(u64),
    Slow(Duration),
    Redirect,
}

struct Script {
    replies: Mutex<VecDeque<Reply>>,
    hits: Mutex<Vec<(Instant, String)>>,
}

impl Script {
    /// When each request arrived, from the test's start.
    fn times(&self, start: Instant) -> Vec<Duration> {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| *t - start)
            .collect()
    }
    fn bodies(&self) -> Vec<String> {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| b.clone())
            .collect()
    }
    fn count(&self) -> usize {
        self.hits.lock().unwrap().len()
    }
}

async fn serve(replies: Vec<Reply>) -> (String, Arc<Script>) {
    let script = Arc::new(Script {
        replies: Mutex::new(replies.into()),
        hits: Mutex::new(Vec::new()),
    });
    let s = script.clone();
    let app = Router::new().route(
        "/{*path}",
        any(move |body: String| {
            let s = s.clone();
            async move {
                s.hits.lock().unwrap().push((Instant::now(), body.clone()));
                let reply = {
                    let mut q = s.replies.lock().unwrap();
                    if q.len() > 1 {
                        q.pop_front().unwrap()
                    } else {
                        q.front().cloned().unwrap_or(Reply::Ok)
                    }
                };
                let r: AxumResponse = match reply {
                    Reply::Ok => (StatusCode::OK, body).into_response(),
                    Reply::Status(c) => (StatusCode::from_u16(c).unwrap(), "{}").into_response(),
                    Reply::Throttle(secs) => (
                        StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", secs.to_string())],
                        "{}",
                    )
                        .into_response(),
                    Reply::Redirect => (
                        StatusCode::FOUND,
                        [("location", "/elsewhere/secret-token-in-path/x")],
                        "",
                    )
                        .into_response(),
                    Reply::Slow(d) => {
                        tokio::time::sleep(d).await;
                        (StatusCode::OK, "{}").into_response()
                    }
                };
                r
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/secret-token-in-path/x"), script)
}

/// Exact waits: no jitter.
fn opts() -> HttpOptions {
    HttpOptions {
        instance: "t".into(),
        timeout: Duration::from_millis(300),
        min_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(2),
        throttle_wait: Duration::from_secs(10),
        max_throttle_wait: Duration::from_secs(25),
        max_named_wait: Duration::from_secs(120),
        max_attempts: 4,
        jitter: 0.0,
        ..HttpOptions::default()
    }
}

fn ctx() -> Ctx {
    Ctx::at(SystemTime::UNIX_EPOCH)
}

fn call(url: &str, write: bool, idempotent: bool) -> Call {
    Call {
        method: Method::POST,
        url: url.to_string(),
        write,
        idempotent,
        label: "test",
        ..Call::default()
    }
}

/// Status-based classification, as a provider would do it.
fn classify(r: &Response) -> Result<u16, ProviderError> {
    match r.status {
        200 => Ok(200),
        429 => Err(ProviderError::throttled(
            "throttled",
            retry_after(&r.headers),
        )),
        400 => Err(ProviderError::fatal("bad request")),
        _ => Err(ProviderError::transient(format!("HTTP {}", r.status))),
    }
}

const S: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;

#[tokio::test(start_paused = true)]
async fn retry_after_is_obeyed_by_every_task_of_the_instance() {
    let (url, script) = serve(vec![Reply::Throttle(7), Reply::Ok]).await;
    let client = Arc::new(HttpClient::new(opts()).unwrap());
    let start = Instant::now();
    let ctx = ctx();
    let first = client.call(&ctx, call(&url, false, true), classify);
    // A second task starts once the first has been throttled; it must wait out the cooldown too.
    let c2 = client.clone();
    let u2 = url.clone();
    let ctx2 = ctx.clone();
    let second = async move {
        tokio::time::sleep(S(1)).await;
        c2.call(&ctx2, call(&u2, false, true), classify).await
    };
    let (a, b) = tokio::join!(first, second);
    assert_eq!((a.unwrap(), b.unwrap()), (200, 200));
    assert_eq!(script.times(start), vec![S(0), S(7), S(7)]);
    assert_eq!(client.counts().throttled, 1);
}

#[tokio::test(start_paused = true)]
async fn a_throttle_naming_no_wait_doubles_the_instance_cooldown_up_to_its_cap() {
    let (url, script) = serve(vec![
        Reply::Status(429),
        Reply::Status(429),
        Reply::Status(429),
        Reply::Ok,
        Reply::Status(429),
        Reply::Ok,
    ])
    .await;
    let client = HttpClient::new(opts()).unwrap();
    let start = Instant::now();
    let classify = |r: &Response| match r.status {
        429 => Err(ProviderError::throttled("overlimit", None)),
        _ => classify(r),
    };
    client
        .call(&ctx(), call(&url, true, false), classify)
        .await
        .unwrap();
    // 10 s, 20 s, then 40 s capped at 25 s.
    assert_eq!(script.times(start), vec![S(0), S(10), S(30), S(55)]);
    // A success ends the streak: the next throttle starts from 10 s again.
    client
        .call(&ctx(), call(&url, true, false), classify)
        .await
        .unwrap();
    assert_eq!(script.times(start)[4..], [S(55), S(65)]);
}

#[tokio::test(start_paused = true)]
async fn a_named_wait_is_capped() {
    let (url, script) = serve(vec![Reply::Throttle(86_400), Reply::Ok]).await;
    let client = HttpClient::new(opts()).unwrap();
    let start = Instant::now();
    client
        .call(&ctx(), call(&url, false, true), classify)
        .await
        .unwrap();
    assert_eq!(script.times(start), vec![S(0), S(120)]);
}

#[tokio::test(start_paused = true)]
async fn jitter_only_shortens_a_wait() {
    let client = HttpClient::new(HttpOptions {
        jitter: 0.5,
        ..opts()
    })
    .unwrap();
    for _ in 0..1000 {
        let d = client.jittered(S(10));
        assert!(d <= S(10) && d >= S(5), "{d:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn transient_failures_of_a_read_are_retried_after_capped_backoff() {
    let (url, script) = serve(vec![
        Reply::Status(503),
        Reply::Status(502),
        Reply::Status(500),
        Reply::Ok,
    ])
    .await;
    let client = HttpClient::new(opts()).unwrap();
    let start = Instant::now();
    let ctx = ctx().scoped();
    assert_eq!(
        client
            .call(&ctx, call(&url, false, false), classify)
            .await
            .unwrap(),
        200
    );
    // 1 s, 2 s, then 4 s capped at 2 s.
    assert_eq!(script.times(start), vec![S(0), S(1), S(3), S(5)]);
    assert_eq!(client.counts().retries, 3);
    assert_eq!(
        ctx.sent().reads,
        4,
        "every request counts, retries included"
    );
}

#[tokio::test(start_paused = true)]
async fn a_write_that_is_not_harmless_to_repeat_is_sent_once() {
    let (url, script) = serve(vec![Reply::Status(503), Reply::Ok]).await;
    let client = HttpClient::new(opts()).unwrap();
    let err = client
        .call(&ctx(), call(&url, true, false), classify)
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient);
    assert_eq!(script.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn attempts_are_bounded() {
    let (url, script) = serve(vec![Reply::Status(500)]).await;
    let client = HttpClient::new(opts()).unwrap();
    assert!(
        client
            .call(&ctx(), call(&url, true, true), classify)
            .await
            .is_err()
    );
    assert_eq!(script.count(), 4);
}

#[tokio::test(start_paused = true)]
async fn fatal_answers_are_not_retried() {
    let (url, script) = serve(vec![Reply::Status(400), Reply::Ok]).await;
    let client = HttpClient::new(opts()).unwrap();
    assert_eq!(
        client
            .call(&ctx(), call(&url, false, true), classify)
            .await
            .unwrap_err()
            .class,
        ErrorClass::Fatal
    );
    assert_eq!(script.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_rate_cap_spaces_requests() {
    let (url, script) = serve(vec![Reply::Ok]).await;
    let client = HttpClient::new(HttpOptions {
        rate: Some(20.0),
        burst: 1,
        ..opts()
    })
    .unwrap();
    let start = Instant::now();
    for _ in 0..5 {
        client
            .call(&ctx(), call(&url, false, true), classify)
            .await
            .unwrap();
    }
    let expected: Vec<Duration> = (0..5).map(|i| MS(50 * i)).collect();
    assert_eq!(script.times(start), expected);
}

#[tokio::test(start_paused = true)]
async fn writes_are_spaced_by_the_interval_reads_are_not() {
    let (url, script) = serve(vec![Reply::Ok]).await;
    let client = HttpClient::new(HttpOptions {
        interval: MS(100),
        ..opts()
    })
    .unwrap();
    let start = Instant::now();
    let ctx = ctx();
    for write in [false, false, true, true] {
        client
            .call(&ctx, call(&url, write, true), classify)
            .await
            .unwrap();
    }
    assert_eq!(script.times(start), vec![S(0), S(0), S(0), MS(100)]);
}

#[tokio::test(start_paused = true)]
async fn a_timeout_is_transient_and_its_message_has_no_url() {
    let (url, _script) = serve(vec![Reply::Slow(S(2))]).await;
    let client = HttpClient::new(HttpOptions {
        max_attempts: 1,
        ..opts()
    })
    .unwrap();
    let start = Instant::now();
    let err = client
        .call(&ctx(), call(&url, false, true), classify)
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), MS(300));
    assert_eq!(err.class, ErrorClass::Transient);
    assert!(err.message.contains("timed out"), "{}", err.message);
    assert!(
        !err.message.contains("secret-token") && !err.message.contains("127.0.0.1"),
        "{}",
        err.message
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_connection_names_no_url() {
    let client = HttpClient::new(HttpOptions {
        max_attempts: 2,
        ..opts()
    })
    .unwrap();
    // Port 9 on loopback: nothing listens there.
    let err = client
        .call(
            &ctx(),
            call("http://127.0.0.1:9/secret-token-in-path", true, false),
            classify,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code.as_deref(), Some(NOT_SENT));
    assert!(!err.message.contains("secret-token"), "{}", err.message);
    assert_eq!(
        client.counts().retries,
        1,
        "a request that never left may be repeated, even a write"
    );
}

#[tokio::test(start_paused = true)]
async fn redirects_are_not_followed_and_fail_without_the_url() {
    let (url, script) = serve(vec![Reply::Redirect, Reply::Ok]).await;
    let client = HttpClient::new(opts()).unwrap();
    let err = client
        .call(&ctx(), call(&url, true, true), classify)
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Fatal);
    assert_eq!(err.code.as_deref(), Some("HTTP_302"));
    assert!(!err.message.contains("secret-token"), "{err}");
    // One request: neither the redirect target nor a retry was asked for.
    assert_eq!(script.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn serial_writes_never_overlap_and_other_writes_may() {
    for serial in [true, false] {
        let (url, script) = serve(vec![Reply::Slow(MS(150))]).await;
        let client = HttpClient::new(HttpOptions {
            serial_writes: serial,
            ..opts()
        })
        .unwrap();
        let start = Instant::now();
        let ctx = ctx();
        let (a, b) = tokio::join!(
            client.call(&ctx, call(&url, true, true), classify),
            client.call(&ctx, call(&url, true, true), classify)
        );
        assert_eq!((a.unwrap(), b.unwrap()), (200, 200));
        let expected = if serial {
            vec![S(0), MS(150)]
        } else {
            vec![S(0), S(0)]
        };
        assert_eq!(script.times(start), expected, "serial: {serial}");
    }
}

#[tokio::test(start_paused = true)]
async fn cancellation_ends_a_cooldown_and_nothing_more_is_sent() {
    let (url, script) = serve(vec![Reply::Throttle(3600), Reply::Ok]).await;
    let client = HttpClient::new(HttpOptions {
        max_named_wait: S(3600),
        ..opts()
    })
    .unwrap();
    let ctx = ctx();
    let cancel = ctx.cancel_token().clone();
    let start = Instant::now();
    tokio::spawn(async move {
        tokio::time::sleep(S(2)).await;
        cancel.cancel();
    });
    let err = client
        .call(&ctx, call(&url, true, false), classify)
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), S(2));
    assert_eq!(err.code.as_deref(), Some(CANCELLED));
    assert_eq!(
        script.count(),
        1,
        "the write after the cooldown was not sent"
    );
    // A cancelled context sends nothing at all.
    let err = client
        .call(&ctx, call(&url, false, true), classify)
        .await
        .unwrap_err();
    assert_eq!(err.code.as_deref(), Some(CANCELLED));
    assert_eq!(script.count(), 1);
}

/// Renews by bumping the issue; counts renewals.
struct Issuer {
    issue: AtomicU64,
    renewals: AtomicUsize,
}

#[async_trait::async_trait]
impl Renew for Issuer {
    async fn renew(&self, _: &Ctx, _: &HttpClient, seen: u64) -> Result<(), ProviderError> {
        self.renewals.fetch_add(1, Ordering::SeqCst);
        let _ = self
            .issue
            .compare_exchange(seen, seen + 1, Ordering::SeqCst, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn rejected_credentials_are_renewed_once_and_the_call_rebuilt() {
    let (url, script) = serve(vec![Reply::Ok]).await;
    let issuer = Arc::new(Issuer {
        issue: AtomicU64::new(1),
        renewals: AtomicUsize::new(0),
    });
    let client = HttpClient::new(opts())
        .unwrap()
        .with_renewal(issuer.clone());
    let build = || {
        let issue = issuer.issue.load(Ordering::SeqCst);
        Call {
            body: Some(serde_json::json!({ "token": issue })),
            credentials: issue,
            ..call(&url, true, false)
        }
    };
    // The server echoes the body: token 1 is "expired", any later one is accepted.
    let by_token = |r: &Response| {
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        match v["token"].as_u64() {
            Some(1) => Verdict::Reauth(ProviderError::fatal("expired token")),
            Some(t) => Verdict::Done(t),
            None => Verdict::Fatal(ProviderError::fatal("no token")),
        }
    };
    assert_eq!(client.call(&ctx(), build, by_token).await.unwrap(), 2);
    assert_eq!(script.bodies(), vec![r#"{"token":1}"#, r#"{"token":2}"#]);
    // Credentials rejected again after their renewal: fatal, no second renewal.
    let always = |_: &Response| Verdict::<u64>::Reauth(ProviderError::transient("expired"));
    let err = client.call(&ctx(), build, always).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Fatal);
    assert_eq!(issuer.renewals.load(Ordering::SeqCst), 2);
    assert_eq!(script.count(), 4);
}

/// Accepts calls of at most `max` items and fails any call holding a `bad` one; answers one
/// result per item.
fn split_classify(
    max: usize,
) -> impl Fn(&[&'static str], &Response) -> Verdict<Vec<String>> + Send + Sync {
    move |items, _| {
        if items.len() > max {
            Verdict::Split {
                error: ProviderError::fatal("too many accounts").with_code("10005"),
                learn: true,
            }
        } else if items.contains(&"bad") {
            Verdict::Split {
                error: ProviderError::fatal("unknown account").with_code("10019"),
                learn: false,
            }
        } else {
            Verdict::Done(items.iter().map(|i| format!("{i}: ok")).collect())
        }
    }
}

fn item_list(items: &[&str]) -> Call {
    Call {
        body: Some(serde_json::json!(items)),
        ..call("", true, true)
    }
}

#[tokio::test(start_paused = true)]
async fn an_over_limit_call_is_halved_and_the_limit_kept_for_the_instance() {
    let (url, script) = serve(vec![Reply::Ok]).await;
    let client = HttpClient::new(opts()).unwrap();
    let items: Vec<&'static str> = vec!["a", "b", "c", "d", "e", "f", "g", "h"];
    let build = |part: &[&'static str]| Call {
        url: url.clone(),
        ..item_list(part)
    };
    let ctx = ctx().scoped();
    let out = client
        .call_split(&ctx, "add", &items, build, split_classify(2), |i, e| {
            format!("{i}: {e}")
        })
        .await
        .unwrap();
    let expected: Vec<String> = items.iter().map(|i| format!("{i}: ok")).collect();
    assert_eq!(out, expected);
    // 8 refused, 4 refused, then the rest at the taught size of 2.
    let sizes: Vec<usize> = script
        .bodies()
        .iter()
        .map(|b| serde_json::from_str::<Vec<String>>(b).unwrap().len())
        .collect();
    assert_eq!(sizes, vec![8, 4, 2, 2, 2, 2]);
    assert_eq!(client.learned_max("add"), Some(2));
    assert_eq!(ctx.sent().writes, 6);
    // The next batch starts at the learned size.
    client
        .call_split(&ctx, "add", &items, build, split_classify(2), |i, e| {
            format!("{i}: {e}")
        })
        .await
        .unwrap();
    assert_eq!(script.count(), 10);
    assert_eq!(ctx.sent().writes, 10);
}

#[tokio::test(start_paused = true)]
async fn a_member_that_fails_the_whole_call_is_isolated_and_fails_alone() {
    let (url, script) = serve(vec![Reply::Ok]).await;
    let client = HttpClient::new(opts()).unwrap();
    let items: Vec<&'static str> = vec!["a", "bad", "c", "d"];
    let build = |part: &[&'static str]| Call {
        url: url.clone(),
        ..item_list(part)
    };
    let out = client
        .call_split(&ctx(), "add", &items, build, split_classify(10), |i, e| {
            format!("{i}: failed {}", e.code.unwrap_or_default())
        })
        .await
        .unwrap();
    assert_eq!(out, vec!["a: ok", "bad: failed 10019", "c: ok", "d: ok"]);
    // [a bad c d], [a bad], [a], [bad], [c d]; nothing learned.
    assert_eq!(script.count(), 5);
    assert_eq!(client.learned_max("add"), None);
}
