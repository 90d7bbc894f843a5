//! The read-only pages the daemon serves on `daemon.metrics_listen`: `GET /`, this
//! installation's databases (`page`), and `GET /fleet`, every installation sharing the storage
//! (`fleet`), with the snapshot timeline drawn by `chart`. Rendering is a pure function of the
//! views defined here, which the daemon fills from what it holds in memory: a page never reads
//! a database, never recomputes a diagnosis, and carries no script, font or link to anything
//! outside itself (it must work on an air-gapped host, on a phone). Every text goes through
//! `html::escape`; the texts themselves arrive redacted.

pub mod chart;
mod detail;
pub mod fleet;
pub mod html;
pub mod page;

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::audit::RunRecord;
use crate::diagnose::Report;
use crate::restore::DrillReport;
use crate::watch::indexes::InvalidIndex;

pub use html::escape;

/// How often the pages reload themselves.
pub const REFRESH_SECONDS: u32 = 30;

/// One complete snapshot in storage, as the timeline shows it.
#[derive(Debug, Clone)]
pub struct SnapPoint {
    pub id: String,
    pub taken_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub stored_bytes: u64,
    pub reason: String,
    /// The whole database (a scoped pre-repair snapshot holds some tables' rows).
    pub full: bool,
}

impl SnapPoint {
    pub fn duration_seconds(&self) -> f64 {
        (self.finished_at - self.taken_at).num_milliseconds().max(0) as f64 / 1000.0
    }
}

/// A snapshot job of the daemon that did not store a snapshot.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub at: DateTime<Utc>,
    /// `failure` or `skipped`.
    pub outcome: String,
    pub error: Option<String>,
    pub duration_seconds: f64,
}

impl Attempt {
    pub fn is_failure(&self) -> bool {
        self.outcome == "failure"
    }
}

/// The daemon's diagnosis of one failed migration, computed once when the failure was seen.
#[derive(Debug, Clone)]
pub enum Diagnosis {
    Running { migration: String, since: DateTime<Utc> },
    Done { at: DateTime<Utc>, report: Arc<Report> },
    Failed { migration: String, at: DateTime<Utc>, error: String },
}

/// The migrations watcher's last reading.
#[derive(Debug, Clone)]
pub struct MigrationsView {
    pub state: String,
    pub failed: Vec<String>,
    pub checked_at: DateTime<Utc>,
    pub error: Option<String>,
    /// How often it reads: a reading older than three of these is stale.
    pub interval: std::time::Duration,
}

/// One configured database.
#[derive(Debug, Clone, Default)]
pub struct DbView {
    pub name: String,
    pub schedule: Option<String>,
    pub next_run: Option<DateTime<Utc>>,
    /// What runs now (`snapshot since …`, `waiting for a slot`).
    pub running: Option<String>,
    /// Complete snapshots in storage, oldest first.
    pub snapshots: Arc<[SnapPoint]>,
    /// The daemon's recent jobs that stored nothing, oldest first.
    pub attempts: Vec<Attempt>,
    pub migrations: Option<MigrationsView>,
    pub diagnoses: Vec<Diagnosis>,
    /// None: not read yet.
    pub invalid_indexes: Option<Vec<InvalidIndex>>,
    /// Repair runs from the audit trail, newest first.
    pub repairs: Vec<RunRecord>,
    /// Runs older than those shown.
    pub repairs_more: usize,
    pub drill_schedule: Option<String>,
    pub drill_next: Option<DateTime<Utc>>,
    pub drill: Option<DrillReport>,
    pub drill_running: bool,
}

/// This installation's page.
#[derive(Debug, Clone)]
pub struct StatusView {
    pub instance: String,
    pub host: String,
    pub version: String,
    pub now: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    /// When the snapshot list was last read from storage, and why the last read failed.
    pub listed_at: Option<DateTime<Utc>>,
    pub list_error: Option<String>,
    /// The daemon drains: what the page shows will not change any more.
    pub draining: bool,
    pub databases: Vec<DbView>,
}
