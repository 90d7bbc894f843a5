//! Commands answered by a running daemon over its control socket.

use anyhow::Context;

use super::output::{human_bytes, table};
use crate::config::Config;
use crate::control::{client, Request};
use crate::snapshot::Manifest;

/// Snapshots through the daemon when its socket answers; `None` means run in-process.
pub async fn snapshot(cfg: &Config, db: Option<&str>, reason: &str) -> anyhow::Result<Option<Vec<Manifest>>> {
    let path = &cfg.daemon.socket;
    let Some(stream) = client::try_connect(path).await else {
        tracing::info!("no daemon at {}; running in-process", path.display());
        return Ok(None);
    };
    tracing::info!(socket = %path.display(), "asking the running daemon to take the snapshot");
    let req = Request::Snapshot { db: db.map(str::to_string), reason: Some(reason.to_string()), wait: true };
    let reply = client::call(stream, path, &req).await?;
    let taken = serde_json::from_value(reply["snapshots"].clone())
        .context("the daemon's reply lists no snapshots")?;
    Ok(Some(taken))
}

pub async fn status(cfg: &Config, json: bool) -> anyhow::Result<()> {
    let path = &cfg.daemon.socket;
    let stream = client::try_connect(path).await.with_context(|| {
        format!(
            "no pgmedic daemon answers at {} (start it: `pgmedic daemon` or `systemctl start pgmedic`)",
            path.display()
        )
    })?;
    let s = client::call(stream, path, &Request::Status).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!(
        "pgmedic {} (pid {}), up {}s, storage {}",
        s["version"].as_str().unwrap_or("?"),
        s["pid"],
        s["uptime_seconds"],
        s["storage"].as_str().unwrap_or("?")
    );
    let reload = &s["last_reload"];
    if reload["ok"] == false {
        println!(
            "last reload FAILED at {}: {}",
            reload["at"].as_str().unwrap_or("?"),
            reload["error"].as_str().unwrap_or("")
        );
    }
    let mut rows =
        vec![["DATABASE", "LAST SNAPSHOT", "SIZE", "TOOK", "OUTCOME", "NEXT RUN", "QUEUED", "LAST ERROR"]
            .map(String::from)
            .to_vec()];
    for (name, d) in s["databases"].as_object().into_iter().flatten() {
        let last = &d["last_snapshot"];
        rows.push(vec![
            name.clone(),
            last["finished_at"]
                .as_str()
                .map(|t| t.chars().take(19).collect())
                .unwrap_or_else(|| "never".into()),
            last["stored_bytes"].as_u64().map(human_bytes).unwrap_or_default(),
            last["duration_seconds"].as_f64().map(|t| format!("{t:.1}s")).unwrap_or_default(),
            if d["running"].is_object() {
                "running".into()
            } else {
                last["outcome"].as_str().unwrap_or("").into()
            },
            d["next_run"].as_str().map(|t| t.chars().take(19).collect()).unwrap_or_else(|| "-".into()),
            d["queued"].as_u64().unwrap_or(0).to_string(),
            d["last_error"].as_str().unwrap_or("").chars().take(80).collect(),
        ]);
    }
    print!("{}", table(&rows));
    print_notes(&s);
    Ok(())
}

/// Below the table: the snapshot slots, and per database what is not ok.
fn print_notes(s: &serde_json::Value) {
    let snaps = &s["snapshots"];
    println!(
        "snapshots: {} running, {} waiting (snapshot.max_concurrent = {}); repairs running: {}",
        snaps["running"], snaps["waiting"], snaps["max_concurrent"], s["repairs_running"]
    );
    for (name, d) in s["databases"].as_object().into_iter().flatten() {
        let (m, r) = (&d["migrations"], &d["last_repair"]);
        if let Some(state) = m["state"].as_str().filter(|st| *st != "ok") {
            println!("{name}: migrations {state} {}", m["error"].as_str().unwrap_or(""));
        }
        if r.is_object() {
            println!(
                "{name}: last repair {} {} {}",
                r["run_id"].as_str().unwrap_or(""),
                r["outcome"].as_str().unwrap_or(""),
                r["error"].as_str().unwrap_or("")
            );
        }
    }
}

/// Repairs through the daemon when its socket answers; `None` means run in-process.
pub async fn repair(
    cfg: &Config,
    db: Option<&str>,
    playbook: Option<String>,
    dry_run: bool,
) -> anyhow::Result<Option<Vec<crate::audit::RunRecord>>> {
    let path = &cfg.daemon.socket;
    let Some(stream) = client::try_connect(path).await else {
        tracing::info!("no daemon at {}; running in-process", path.display());
        return Ok(None);
    };
    tracing::info!(socket = %path.display(), "asking the running daemon to run the repair");
    let req = Request::Repair { db: db.map(str::to_string), playbook, dry_run };
    let reply = client::call(stream, path, &req).await?;
    let runs =
        serde_json::from_value(reply["runs"].clone()).context("the daemon's reply lists no repair runs")?;
    Ok(Some(runs))
}
