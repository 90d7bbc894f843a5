//! `daemon.metrics_listen`: Prometheus text at `/metrics`, `/healthz` (the process answers)
//! and `/readyz` (configuration loaded and storage reachable). Three GET paths do not need a
//! web framework: this reads one request head per connection and answers it.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::Shared;

const HEAD_LIMIT: usize = 8 * 1024;

pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
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
        let (shared, tasks) = (shared.clone(), shared.tasks.clone());
        tasks.spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, &shared)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < HEAD_LIMIT {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_string();
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", render(shared)),
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", "/readyz") => ready(shared).await,
        ("GET", _) => {
            ("404 Not Found", "text/plain", "not found: try /metrics, /healthz or /readyz\n".into())
        }
        _ => ("405 Method Not Allowed", "text/plain", "only GET\n".into()),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

async fn ready(shared: &Shared) -> (&'static str, &'static str, String) {
    let storage = shared.current().snapshotter.storage.clone();
    match tokio::time::timeout(Duration::from_secs(5), storage.probe()).await {
        Ok(Ok(())) => ("200 OK", "text/plain", "ready\n".into()),
        Ok(Err(e)) => ("503 Service Unavailable", "text/plain", format!("storage unreachable: {e}\n")),
        Err(_) => ("503 Service Unavailable", "text/plain", "storage did not answer within 5s\n".into()),
    }
}

fn render(shared: &Shared) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, rows: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in rows {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    metric(
        "pgmedic_build_info",
        "gauge",
        "pgmedic's version.",
        vec![(format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION")), "1".into())],
    );
    let uptime = (chrono::Utc::now() - shared.started_at).num_milliseconds() as f64 / 1000.0;
    metric(
        "pgmedic_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        vec![(String::new(), uptime.to_string())],
    );
    let reload_ok = if shared.reload_status().ok { "1" } else { "0" };
    metric(
        "pgmedic_config_last_reload_success",
        "gauge",
        "1 when the last reload (or start) loaded the configuration.",
        vec![(String::new(), reload_ok.into())],
    );
    let board = shared.board.get();
    let per_db = |f: &dyn Fn(&super::board::DbStatus) -> Option<String>| -> Vec<(String, String)> {
        board.iter().filter_map(|(db, s)| f(s).map(|v| (format!("{{database=\"{db}\"}}"), v))).collect()
    };
    metric(
        "pgmedic_snapshot_last_success_timestamp_seconds",
        "gauge",
        "When the last successful snapshot finished.",
        per_db(&|s| s.last_success_at.map(|t| (t.timestamp_millis() as f64 / 1000.0).to_string())),
    );
    metric(
        "pgmedic_snapshot_last_duration_seconds",
        "gauge",
        "Duration of the last snapshot, successful or not.",
        per_db(&|s| s.last_snapshot.as_ref().map(|l| l.duration_seconds.to_string())),
    );
    metric(
        "pgmedic_snapshot_last_size_bytes",
        "gauge",
        "Stored size of the last successful snapshot.",
        per_db(&|s| s.last_snapshot.as_ref().and_then(|l| l.stored_bytes).map(|b| b.to_string())),
    );
    let mut totals = Vec::new();
    for (db, s) in &board {
        totals.push((
            format!("{{database=\"{db}\",outcome=\"success\"}}"),
            s.snapshots_success_total.to_string(),
        ));
        totals.push((
            format!("{{database=\"{db}\",outcome=\"failure\"}}"),
            s.snapshots_failure_total.to_string(),
        ));
    }
    metric("pgmedic_snapshots_total", "counter", "Snapshots finished, by outcome.", totals);
    metric(
        "pgmedic_snapshot_triggers_coalesced_total",
        "counter",
        "Triggers that joined a snapshot already queued or running.",
        per_db(&|s| Some(s.coalesced_total.to_string())),
    );
    metric(
        "pgmedic_snapshot_queue_depth",
        "gauge",
        "Snapshots waiting for the database's worker.",
        per_db(&|s| Some(s.queued.to_string())),
    );
    metric(
        "pgmedic_migrations_failed",
        "gauge",
        "Failed migrations seen by the watcher (0 when healthy).",
        per_db(&|s| s.migrations.as_ref().map(|m| m.failed.len().to_string())),
    );
    // The outcomes alerts watch exist from the start at 0: increase() sees their first run.
    let mut repairs = Vec::new();
    for (db, s) in &board {
        let mut counts = s.repairs_total.clone();
        for o in ["succeeded", "failed", "refused", "snapshot_failed", "interrupted"] {
            counts.entry(o.to_string()).or_default();
        }
        repairs.extend(
            counts.iter().map(|(o, n)| (format!("{{database=\"{db}\",outcome=\"{o}\"}}"), n.to_string())),
        );
    }
    metric(
        "pgmedic_repairs_total",
        "counter",
        "Repair runs finished, by outcome (interrupted: closed at the next start).",
        repairs,
    );
    let now = chrono::Utc::now();
    let periods = shared
        .current()
        .config
        .databases
        .iter()
        .filter_map(|d| {
            let period = d.schedule.as_ref()?.period_after(now)?;
            Some((format!("{{database=\"{}\"}}", d.name), period.num_seconds().to_string()))
        })
        .collect();
    metric(
        "pgmedic_snapshot_schedule_period_seconds",
        "gauge",
        "Seconds between two scheduled snapshots (for staleness alerts).",
        periods,
    );
    let (running, waiting, limit) = shared.gate.counts();
    metric(
        "pgmedic_snapshots_running",
        "gauge",
        "Snapshots running now, across databases (at most snapshot.max_concurrent).",
        vec![(String::new(), running.to_string())],
    );
    metric(
        "pgmedic_snapshots_waiting",
        "gauge",
        "Snapshots waiting for a slot under snapshot.max_concurrent.",
        vec![(String::new(), waiting.to_string())],
    );
    metric(
        "pgmedic_snapshots_max_concurrent",
        "gauge",
        "snapshot.max_concurrent.",
        vec![(String::new(), limit.to_string())],
    );
    metric(
        "pgmedic_snapshot_running",
        "gauge",
        "1 while a snapshot of the database runs.",
        per_db(&|s| Some(if s.running.is_some() { "1" } else { "0" }.to_string())),
    );
    out
}
