//! The daemon's status board: what `status` and `/metrics` report, per database. Updated by
//! the workers and the scheduler; read by the control socket and the metrics endpoint.

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize)]
pub struct DbStatus {
    pub schedule: Option<String>,
    pub next_run: Option<DateTime<Utc>>,
    pub last_snapshot: Option<LastSnapshot>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub running: Option<RunningJob>,
    /// A job of this database waits for a slot under `snapshot.max_concurrent`.
    pub waiting_for_slot: bool,
    /// Jobs waiting (0 or 1: triggers that find one waiting or running are coalesced).
    pub queued: u32,
    pub coalesced_total: u64,
    pub snapshots_success_total: u64,
    pub snapshots_failure_total: u64,
    /// Snapshots not taken because another one of the database held its lock (another daemon),
    /// its server is a standby, or another installation took the scheduled run.
    pub snapshots_skipped_total: u64,
    /// Why the last skipped one was skipped.
    pub last_skipped: Option<String>,
    pub migrations: Option<MigrationsStatus>,
    pub last_repair: Option<serde_json::Value>,
    /// Finished repair runs (dry runs aside), by outcome; interrupted ones when closed at start.
    #[serde(skip)]
    pub repairs_total: std::collections::BTreeMap<String, u64>,
    pub drill_schedule: Option<String>,
    /// The last restore drill's report, passed or failed.
    pub last_drill: Option<crate::restore::DrillReport>,
    pub last_drill_success_at: Option<DateTime<Utc>>,
    pub last_drill_success_seconds: Option<f64>,
    pub drill_running: bool,
    /// Invalid indexes nothing is building, as the watcher last read them.
    pub invalid_indexes: Option<Vec<crate::watch::indexes::InvalidIndex>>,
    /// The diagnosis of each failed migration the watcher saw, by the migration's id: computed
    /// once when the failure is first seen, dropped when it clears (the status page's).
    #[serde(skip)]
    pub diagnoses: Vec<(String, crate::web::Diagnosis)>,
    /// The last snapshot jobs that stored nothing (failed or skipped), oldest first.
    #[serde(skip)]
    pub attempts: std::collections::VecDeque<crate::web::Attempt>,
}

/// Snapshot jobs that stored nothing, kept for the status page's timeline.
pub const ATTEMPTS_KEPT: usize = 20;

impl DbStatus {
    /// Remembers a job that stored nothing, forgetting the oldest beyond `ATTEMPTS_KEPT`.
    pub fn remember_attempt(&mut self, attempt: crate::web::Attempt) {
        if self.attempts.len() == ATTEMPTS_KEPT {
            self.attempts.pop_front();
        }
        self.attempts.push_back(attempt);
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MigrationsStatus {
    /// ok, failed, missing, standby or unreachable
    pub state: String,
    pub failed: Vec<String>,
    pub checked_at: DateTime<Utc>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastSnapshot {
    pub id: Option<String>,
    pub reason: String,
    pub trigger: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_seconds: f64,
    pub stored_bytes: Option<u64>,
    pub outcome: &'static str,
    /// The client tools chosen for the server: `pg_dump (PostgreSQL) 18.1 in /usr/lib/…/bin`.
    pub tools: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunningJob {
    pub since: DateTime<Utc>,
    pub reason: String,
    pub trigger: String,
}

#[derive(Default)]
pub struct Board {
    dbs: Mutex<BTreeMap<String, DbStatus>>,
}

impl Board {
    pub fn update(&self, db: &str, f: impl FnOnce(&mut DbStatus)) {
        let mut dbs = self.dbs.lock().unwrap_or_else(|p| p.into_inner());
        f(dbs.entry(db.to_string()).or_default());
    }

    pub fn get(&self) -> BTreeMap<String, DbStatus> {
        self.dbs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Keeps only `names` (after a reload removed databases).
    pub fn retain(&self, names: &[String]) {
        self.dbs.lock().unwrap_or_else(|p| p.into_inner()).retain(|k, _| names.contains(k));
    }
}
