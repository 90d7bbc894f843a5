//! `daemon.metrics_listen`: the daemon's HTTP side, an axum router on hyper. `/metrics` (see
//! `metrics`; the format follows the request's Accept header), `/healthz` (the process answers),
//! `/readyz` (configuration loaded and storage reachable), and the read-only pages `/` (this
//! installation, `web::page`) and `/fleet` (every installation sharing the storage). With
//! `daemon.http_token_file` set, `/`, `/fleet` and `/metrics` need the token (`auth`); the
//! probes stay open. Pages go out with a policy that forbids scripts and any resource from
//! elsewhere, and a `Server-Timing` header saying how long they took. The accept loop is ours, not `axum::serve`'s: each connection runs on the
//! daemon's task tracker, answers one request and is closed within `CONNECTION_LIMIT` whatever
//! the client does, so a stalled client holds neither a task past shutdown nor a descriptor.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Shared;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long one connection may take, from accept to the end of its answer.
const CONNECTION_LIMIT: Duration = Duration::from_secs(10);

pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let app = Router::new()
        .route("/", get(page))
        .route("/fleet", get(fleet))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { text(StatusCode::OK, "ok\n") }))
        .route("/readyz", get(ready))
        .fallback(unknown)
        .method_not_allowed_fallback(|| async { only_get() })
        .with_state(shared.clone());
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(app.clone());
        let connection =
            http1::Builder::new().keep_alive(false).serve_connection(TokioIo::new(stream), service);
        // Dropped at the limit or at shutdown: the socket closes with it.
        let shutdown = shutdown.clone();
        shared.tasks.spawn(async move {
            tokio::select! {
                _ = tokio::time::timeout(CONNECTION_LIMIT, connection) => {}
                _ = shutdown.cancelled() => {}
            }
        });
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
    text(StatusCode::NOT_FOUND, "not found: try /, /fleet, /metrics, /healthz or /readyz\n")
}

/// OpenMetrics for a scraper that asks for it (Prometheus does), else the classic format.
async fn metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(denied) = super::auth::check(shared.current().config.daemon.http_token.as_ref(), &headers) {
        return denied;
    }
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

/// No script, no resource from anywhere: the pages are one self-contained document.
const PAGE_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn html(body: String, started: std::time::Instant) -> Response {
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8".to_string()),
        (header::CONTENT_SECURITY_POLICY, PAGE_POLICY.to_string()),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
        (header::REFERRER_POLICY, "no-referrer".to_string()),
        (header::CACHE_CONTROL, "no-store".to_string()),
        (header::HeaderName::from_static("server-timing"), format!("page;dur={ms:.3}")),
    ];
    (headers, body).into_response()
}

async fn page(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(denied) = super::auth::check(shared.current().config.daemon.http_token.as_ref(), &headers) {
        return denied;
    }
    let started = std::time::Instant::now();
    let view = super::views::status(&shared).await;
    html(crate::web::page::render(&view), started)
}

async fn fleet(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let rt = shared.current();
    if let Some(denied) = super::auth::check(rt.config.daemon.http_token.as_ref(), &headers) {
        return denied;
    }
    let started = std::time::Instant::now();
    let storage = rt.snapshotter.storage.clone();
    let now = chrono::Utc::now();
    let hosts = match tokio::time::timeout(Duration::from_secs(8), crate::fleet::read(&storage, now)).await {
        Ok(Ok(h)) => Ok(h),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("the heartbeats under {} could not be read within 8s", storage.location())),
    };
    let location = storage.location();
    let view = crate::web::fleet::FleetView {
        instance: &rt.config.daemon.instance,
        location: &location,
        now,
        hosts: hosts.as_deref().map_err(Clone::clone),
    };
    html(crate::web::fleet::render(&view), started)
}
