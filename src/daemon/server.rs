//! The daemon's HTTP endpoints (loopback by default): `/healthz` (alive), `/readyz`
//! (configuration loaded and every provider in use reached once), `/metrics` (Prometheus text),
//! `/status` (JSON per group: last run, result, pending drift, last error; no secrets), and the
//! status page for people (`/`, `/group?name=`, see `page.rs`).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{Shared, page};

/// Serve until `stop` is cancelled.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/", get(page::index))
        .route("/group", get(page::group))
        .layer(axum::middleware::map_response(redacted))
        .with_state(shared);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

/// Every response body passes the redactor: `/status` quotes providers' errors, which may
/// repeat a credential.
async fn redacted(resp: Response) -> Response {
    let (parts, body) = resp.into_parts();
    match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => {
            let masked = crate::redact::mask_bytes(&bytes).into_owned();
            let mut parts = parts;
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, axum::body::Body::from(masked))
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read a response body");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    match s.ready() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    s.metrics.ready.set(i64::from(s.ready().is_ok()));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

async fn status(State(s): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let groups = s.status.read().map(|g| g.clone()).unwrap_or_default();
    let errors: Vec<String> = s
        .tree
        .lock()
        .map(|t| t.errors().iter().map(|d| d.to_string()).collect())
        .unwrap_or_default();
    let warnings: Vec<String> = s.tree.lock().map(|t| t.warnings()).unwrap_or_default();
    Json(json!({
        "ready": s.ready().is_ok(),
        "groups": groups,
        "file_errors": errors,
        "file_warnings": warnings,
    }))
}
