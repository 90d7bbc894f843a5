//! The fleet: every installation sharing one storage, seen through the heartbeat each daemon
//! writes to `<prefix>/_pgmedic/hosts/<instance>.json` every `daemon.heartbeat_interval` and at
//! shutdown (marked stopped). This module owns the heartbeat document, reading every one under
//! the prefix, and judging each host: up, down (stopped, or silent for `MISSED_BEATS`
//! intervals of its own) or unreadable. The storage is the only coordination; nothing here
//! talks to another host.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::storage::{layout, Storage, StorageError};

pub const FORMAT_VERSION: u32 = 1;
/// A host whose newest heartbeat is older than this many of its intervals is down.
pub const MISSED_BEATS: u32 = 3;
/// The largest heartbeat read: anyone who can write the bucket can write one.
const MAX_HEARTBEAT: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("cannot list the heartbeats under {folder} in {location}: {source}")]
    List { folder: String, location: String, source: StorageError },
}

/// What one daemon says about itself. Every text in it is redacted by the writer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub format_version: u32,
    pub instance: String,
    pub host: String,
    pub version: String,
    pub pid: u32,
    pub started_at: DateTime<Utc>,
    pub written_at: DateTime<Utc>,
    /// The writer's interval: a reader judges silence by it.
    pub interval_seconds: u64,
    /// `running`, or `stopped` in the one written at shutdown.
    pub state: String,
    pub databases: BTreeMap<String, DbBeat>,
}

/// One database of a heartbeat.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DbBeat {
    /// The newest complete snapshot in storage.
    pub last_snapshot: Option<SnapshotBeat>,
    /// The daemon's last snapshot job when it did not succeed (`failure` or `skipped`).
    pub last_failure: Option<FailureBeat>,
    pub next_run: Option<DateTime<Utc>>,
    pub migrations: Option<MigrationsBeat>,
    pub invalid_indexes: usize,
    pub last_repair: Option<RepairBeat>,
    pub last_drill: Option<DrillBeat>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotBeat {
    pub id: String,
    pub taken_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub stored_bytes: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailureBeat {
    pub at: DateTime<Utc>,
    pub outcome: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrationsBeat {
    /// ok, failed, missing, standby, unreachable…
    pub state: String,
    pub failed: Vec<String>,
    pub checked_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepairBeat {
    pub run_id: String,
    pub outcome: String,
    pub at: Option<DateTime<Utc>>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillBeat {
    pub ok: bool,
    pub at: DateTime<Utc>,
    pub snapshot_id: Option<String>,
    pub error: Option<String>,
}

/// One installation as the fleet view shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Host {
    pub instance: String,
    /// `up`, `down` or `unreadable`.
    pub state: &'static str,
    /// Why it is down or unreadable.
    pub why: Option<String>,
    /// Seconds since its newest heartbeat was written.
    pub silent_seconds: Option<i64>,
    pub heartbeat: Option<Heartbeat>,
}

impl Host {
    pub fn is_up(&self) -> bool {
        self.state == "up"
    }
}

/// The heartbeat's key for `instance`, relative to the storage prefix.
pub fn key(instance: &str) -> String {
    format!("{}{instance}.json", layout::hosts())
}

/// Up, or down and why, at `now`.
pub fn judge(beat: &Heartbeat, now: DateTime<Utc>) -> (&'static str, Option<String>) {
    let silent = (now - beat.written_at).num_seconds();
    let limit = beat.interval_seconds.max(1).saturating_mul(u64::from(MISSED_BEATS));
    if beat.state == "stopped" {
        return (
            "down",
            Some(format!("stopped at {} (its daemon shut down)", beat.written_at.format("%F %T UTC"))),
        );
    }
    if silent > 0 && silent as u64 > limit {
        let why = format!(
            "no heartbeat for {} ({MISSED_BEATS} intervals of {}s): its daemon or host is down, or cannot reach the storage",
            crate::units::span(silent),
            beat.interval_seconds
        );
        return ("down", Some(why));
    }
    ("up", None)
}

/// Every heartbeat under the prefix, judged at `now`, sorted by instance. One that cannot be
/// read or parsed is listed as unreadable, never skipped.
pub async fn read(storage: &Arc<dyn Storage>, now: DateTime<Utc>) -> Result<Vec<Host>, FleetError> {
    let folder = layout::hosts();
    let keys = storage.list(&folder).await.map_err(|source| FleetError::List {
        folder: folder.clone(),
        location: storage.location(),
        source,
    })?;
    let names: Vec<(String, String)> = keys
        .into_iter()
        .filter_map(|k| {
            let name = k.strip_prefix(&folder)?.strip_suffix(".json")?.to_string();
            (!name.is_empty() && !name.contains('/') && !name.starts_with('.')).then_some((k, name))
        })
        .collect();
    let reads: Vec<_> = names
        .into_iter()
        .map(|(key, name)| {
            let storage = storage.clone();
            async move { host(&storage, &key, &name, now).await }
        })
        .collect();
    let mut hosts: Vec<Host> =
        futures::StreamExt::collect(futures::StreamExt::buffered(futures::stream::iter(reads), 8)).await;
    hosts.sort_by(|a, b| a.instance.cmp(&b.instance));
    Ok(hosts)
}

/// The heartbeat of `instance`, judged at `now` (unreadable when there is none).
pub async fn one(storage: &Arc<dyn Storage>, instance: &str, now: DateTime<Utc>) -> Host {
    host(storage, &key(instance), instance, now).await
}

async fn host(storage: &Arc<dyn Storage>, key: &str, instance: &str, now: DateTime<Utc>) -> Host {
    let unreadable = |why: String| Host {
        instance: instance.to_string(),
        state: "unreadable",
        why: Some(why),
        silent_seconds: None,
        heartbeat: None,
    };
    let bytes = match read_capped(storage, key).await {
        Ok(b) => b,
        Err(why) => return unreadable(why),
    };
    let beat: Heartbeat = match serde_json::from_slice(&bytes) {
        Ok(b) => b,
        Err(e) => return unreadable(format!("{key} is not a heartbeat: {e}")),
    };
    if beat.instance != instance {
        return unreadable(format!(
            "{key} says it is instance `{}`: a copied heartbeat is not used",
            beat.instance
        ));
    }
    let (state, why) = judge(&beat, now);
    Host {
        instance: instance.to_string(),
        state,
        why,
        silent_seconds: Some((now - beat.written_at).num_seconds()),
        heartbeat: Some(beat),
    }
}

async fn read_capped(storage: &Arc<dyn Storage>, key: &str) -> Result<Vec<u8>, String> {
    use tokio::io::AsyncReadExt;
    let reader = storage.open(key).await.map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    reader
        .take(MAX_HEARTBEAT + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| format!("cannot read {key}: {e}"))?;
    if bytes.len() as u64 > MAX_HEARTBEAT {
        return Err(format!(
            "{key} is larger than {} MiB: not a heartbeat pgmedic wrote",
            MAX_HEARTBEAT >> 20
        ));
    }
    Ok(bytes)
}

/// A one-line summary of a host's databases: failed migrations, failed drills, invalid indexes.
pub fn trouble(beat: &Heartbeat) -> Vec<String> {
    let mut out = Vec::new();
    for (name, db) in &beat.databases {
        if let Some(m) = db.migrations.as_ref().filter(|m| m.state != "ok") {
            match m.failed.as_slice() {
                [] => out.push(format!("{name}: migrations {}", m.state)),
                failed => out.push(format!("{name}: migration {} {}", failed.join(", "), m.state)),
            }
        }
        if let Some(d) = db.last_drill.as_ref().filter(|d| !d.ok) {
            out.push(format!("{name}: drill failed {}", d.at.format("%F %H:%M")));
        }
        if let Some(f) = &db.last_failure {
            if db.last_snapshot.as_ref().is_none_or(|s| s.finished_at < f.at) && f.outcome == "failure" {
                out.push(format!("{name}: snapshot failed {}", f.at.format("%F %H:%M")));
            }
        }
        if db.invalid_indexes > 0 {
            out.push(format!("{name}: {} invalid index(es)", db.invalid_indexes));
        }
        if let Some(r) = db
            .last_repair
            .as_ref()
            .filter(|r| !matches!(r.outcome.as_str(), "succeeded" | "noop" | "dry_run"))
        {
            out.push(format!("{name}: repair {}", r.outcome));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(state: &str, written: DateTime<Utc>, interval: u64) -> Heartbeat {
        Heartbeat {
            format_version: FORMAT_VERSION,
            instance: "a".into(),
            host: "h".into(),
            version: "0".into(),
            pid: 1,
            started_at: written,
            written_at: written,
            interval_seconds: interval,
            state: state.into(),
            databases: BTreeMap::new(),
        }
    }

    #[test]
    fn silent_for_three_intervals_is_down_and_stopped_is_down_at_once() {
        let now = Utc::now();
        let at = |s: i64| now - chrono::Duration::seconds(s);
        assert_eq!(judge(&beat("running", at(170), 60), now).0, "up");
        let (state, why) = judge(&beat("running", at(181), 60), now);
        assert!(state == "down" && why.unwrap().contains("3 intervals of 60s"));
        let (state, why) = judge(&beat("stopped", at(1), 60), now);
        assert!(state == "down" && why.unwrap().contains("stopped at"));
        // A writer's clock ahead of ours is not silence.
        assert_eq!(judge(&beat("running", now + chrono::Duration::seconds(30), 60), now).0, "up");
    }
}
