//! The HTTP layer against a scripted server on 127.0.0.1: throttling, retries, pacing,
//! timeouts, and that no URL reaches an error.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response as AxumResponse};
use axum::routing::any;

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
    hits: Mutex<Vec<Instant>>,
}

async fn serve(replies: Vec<Reply>) -> (String, Arc<Script>) {
    let script = Arc::new(Script {
        replies: Mutex::new(replies.into()),
        hits: Mutex::new(Vec::new()),
    });
    let s = script.clone();
    let app = Router::new().route(
        "/{*path}",
        any(move || {
            let s = s.clone();
            async move {
                s.hits.lock().unwrap().push(Instant::now());
                let reply = {
                    let mut q = s.replies.lock().unwrap();
                    if q.len() > 1 {
                        q.pop_front().unwrap()
                    } else {
                        q.front().cloned().unwrap_or(Reply::Ok)
                    }
                };
                let r: AxumResponse = match reply {
                    Reply::Ok => (StatusCode::OK, "{\"ok\":true}").into_response(),
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

fn opts() -> HttpOptions {
    HttpOptions {
        instance: "t".into(),
        timeout: Duration::from_millis(300),
        min_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        max_attempts: 4,
        ..HttpOptions::default()
    }
}

fn call(url: &str, write: bool, idempotent: bool) -> Call {
    Call {
        method: Method::POST,
        url: url.to_string(),
        headers: HeaderMap::new(),
        body: None,
        write,
        idempotent,
        label: "test",
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

#[tokio::test]
async fn retry_after_is_obeyed_by_every_task_of_the_instance() {
    let (url, script) = serve(vec![Reply::Throttle(1), Reply::Ok]).await;
    let client = Arc::new(HttpClient::new(opts()).unwrap());
    let start = Instant::now();
    let first = client.call(call(&url, false, true), classify);
    // A second task starts once the first has been throttled; it must wait out the cooldown too.
    let c2 = client.clone();
    let u2 = url.clone();
    let second = async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c2.call(call(&u2, false, true), classify).await
    };
    let (a, b) = tokio::join!(first, second);
    assert_eq!((a.unwrap(), b.unwrap()), (200, 200));
    let hits = script.hits.lock().unwrap().clone();
    assert_eq!(hits.len(), 3);
    assert!(
        hits[1] - start >= Duration::from_millis(950)
            && hits[2] - start >= Duration::from_millis(950),
        "both waited"
    );
    assert_eq!(client.counts().throttled, 1);
}

#[tokio::test]
async fn transient_failures_of_a_read_are_retried() {
    let (url, script) = serve(vec![Reply::Status(503), Reply::Status(502), Reply::Ok]).await;
    let client = HttpClient::new(opts()).unwrap();
    assert_eq!(
        client
            .call(call(&url, false, false), classify)
            .await
            .unwrap(),
        200
    );
    assert_eq!(script.hits.lock().unwrap().len(), 3);
    assert_eq!(client.counts().retries, 2);
}

#[tokio::test]
async fn a_write_that_is_not_harmless_to_repeat_is_sent_once() {
    let (url, script) = serve(vec![Reply::Status(503), Reply::Ok]).await;
    let client = HttpClient::new(opts()).unwrap();
    let err = client
        .call(call(&url, true, false), classify)
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient);
    assert_eq!(script.hits.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn attempts_are_bounded() {
    let (url, script) = serve(vec![Reply::Status(500)]).await;
    let client = HttpClient::new(opts()).unwrap();
    assert!(client.call(call(&url, true, true), classify).await.is_err());
    assert_eq!(script.hits.lock().unwrap().len(), 4);
}

#[tokio::test]
async fn fatal_answers_are_not_retried() {
    let (url, script) = serve(vec![Reply::Status(400), Reply::Ok]).await;
    let client = HttpClient::new(opts()).unwrap();
    assert_eq!(
        client
            .call(call(&url, false, true), classify)
            .await
            .unwrap_err()
            .class,
        ErrorClass::Fatal
    );
    assert_eq!(script.hits.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn the_rate_cap_spaces_requests() {
    let (url, script) = serve(vec![Reply::Ok]).await;
    let client = HttpClient::new(HttpOptions {
        rate: Some(20.0),
        burst: 1,
        ..opts()
    })
    .unwrap();
    for _ in 0..5 {
        client
            .call(call(&url, false, true), classify)
            .await
            .unwrap();
    }
    let hits = script.hits.lock().unwrap().clone();
    assert!(
        hits[4] - hits[0] >= Duration::from_millis(190),
        "4 gaps of 50 ms: {:?}",
        hits[4] - hits[0]
    );
}

#[tokio::test]
async fn writes_are_spaced_by_the_interval_reads_are_not() {
    let (url, script) = serve(vec![Reply::Ok]).await;
    let client = HttpClient::new(HttpOptions {
        interval: Duration::from_millis(100),
        ..opts()
    })
    .unwrap();
    client
        .call(call(&url, false, true), classify)
        .await
        .unwrap();
    client
        .call(call(&url, false, true), classify)
        .await
        .unwrap();
    client.call(call(&url, true, true), classify).await.unwrap();
    client.call(call(&url, true, true), classify).await.unwrap();
    let hits = script.hits.lock().unwrap().clone();
    assert!(
        hits[1] - hits[0] < Duration::from_millis(90),
        "reads are not paced"
    );
    assert!(
        hits[3] - hits[2] >= Duration::from_millis(95),
        "writes are paced"
    );
}

#[tokio::test]
async fn a_timeout_is_transient_and_its_message_has_no_url() {
    let (url, _script) = serve(vec![Reply::Slow(Duration::from_secs(2))]).await;
    let client = HttpClient::new(HttpOptions {
        max_attempts: 1,
        ..opts()
    })
    .unwrap();
    let err = client
        .call(call(&url, false, true), classify)
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient);
    assert!(err.message.contains("timed out"), "{}", err.message);
    assert!(
        !err.message.contains("secret-token") && !err.message.contains("127.0.0.1"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn a_refused_connection_names_no_url() {
    let client = HttpClient::new(HttpOptions {
        max_attempts: 2,
        ..opts()
    })
    .unwrap();
    // Port 9 on loopback: nothing listens there.
    let err = client
        .call(
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

#[tokio::test]
async fn redirects_are_not_followed_and_fail_without_the_url() {
    let (url, script) = serve(vec![Reply::Redirect, Reply::Ok]).await;
    let client = HttpClient::new(opts()).unwrap();
    let err = client
        .call(call(&url, true, true), classify)
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Fatal);
    assert_eq!(err.code.as_deref(), Some("HTTP_302"));
    assert!(!err.message.contains("secret-token"), "{err}");
    // One request: neither the redirect target nor a retry was asked for.
    assert_eq!(script.hits.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn serial_writes_never_overlap_and_other_writes_may() {
    for serial in [true, false] {
        let (url, script) = serve(vec![Reply::Slow(Duration::from_millis(150))]).await;
        let client = HttpClient::new(HttpOptions {
            serial_writes: serial,
            ..opts()
        })
        .unwrap();
        let (a, b) = tokio::join!(
            client.call(call(&url, true, true), classify),
            client.call(call(&url, true, true), classify)
        );
        assert_eq!((a.unwrap(), b.unwrap()), (200, 200));
        let hits = script.hits.lock().unwrap().clone();
        let gap = hits[1] - hits[0];
        if serial {
            assert!(
                gap >= Duration::from_millis(140),
                "the second waited: {gap:?}"
            );
        } else {
            assert!(gap < Duration::from_millis(100), "both in flight: {gap:?}");
        }
    }
}
