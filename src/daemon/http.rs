//! `daemon.metrics_listen`: the daemon's HTTP side, an axum router on hyper. `/metrics` (see
//! `metrics`; the format follows the request's Accept header), `/healthz` (the process answers) and `/readyz` (configuration loaded and storage
//! reachable); status endpoints are meant to join these routes. It stops taking connections
//! when the daemon shuts down and lets the ones in flight finish.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Shared;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { text(StatusCode::OK, "ok\n") }))
        .route("/readyz", get(ready))
        .fallback(unknown)
        .method_not_allowed_fallback(|| async { only_get() })
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await {
        tracing::warn!(error = %e, "the metrics listener stopped");
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body.into()).into_response()
}

fn only_get() -> Response {
    text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n")
}

async fn unknown(method: Method) -> Response {
    if method != Method::GET {
        return only_get();
    }
    text(StatusCode::NOT_FOUND, "not found: try /metrics, /healthz or /readyz\n")
}

/// OpenMetrics for a scraper that asks for it (Prometheus does), else the classic format.
async fn metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let openmetrics = accept.contains("application/openmetrics-text");
    let ctype = if openmetrics { OPENMETRICS } else { CLASSIC };
    ([(header::CONTENT_TYPE, ctype)], super::metrics::render(&shared, openmetrics)).into_response()
}

async fn ready(State(shared): State<Arc<Shared>>) -> Response {
    let storage = shared.current().snapshotter.storage.clone();
    match tokio::time::timeout(Duration::from_secs(5), storage.probe()).await {
        Ok(Ok(())) => text(StatusCode::OK, "ready\n"),
        Ok(Err(e)) => text(StatusCode::SERVICE_UNAVAILABLE, format!("storage unreachable: {e}\n")),
        Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "storage did not answer within 5s\n"),
    }
}
