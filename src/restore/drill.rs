//! A restore drill: the newest snapshot of a database restored on the scratch server (never
//! the production server unless `scratch.server` says so) and every table's rows compared with
//! what its manifest recorded as dumped. Nobody knows whether last night's snapshot restores
//! until someone restores it; a drill does so on a schedule and says so when it does not.

use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::verify::RowMismatch;
use super::{RestoreError, Restorer};
use crate::snapshot;

#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    pub database: String,
    pub ok: bool,
    pub snapshot_id: Option<String>,
    pub started_at: DateTime<Utc>,
    pub duration_seconds: f64,
    pub scratch_server: Option<String>,
    /// Tables compared, and the rows the manifest says they held.
    pub tables: usize,
    pub rows: u64,
    pub mismatches: Vec<RowMismatch>,
    /// Why the drill failed, when it did.
    pub error: Option<String>,
}

impl DrillReport {
    pub fn text(&self) -> String {
        let snap = self.snapshot_id.as_deref().unwrap_or("-");
        let mut o = format!(
            "restore drill of {} on snapshot {snap}: {} in {:.1}s\n",
            self.database,
            if self.ok { "passed" } else { "FAILED" },
            self.duration_seconds
        );
        if let Some(s) = &self.scratch_server {
            o += &format!("scratch server: {s}\n");
        }
        o += &format!("tables compared: {} ({} rows as dumped)\n", self.tables, self.rows);
        for m in &self.mismatches {
            o += &format!("mismatch: {}\n", m.text());
        }
        if let Some(e) = &self.error {
            o += &format!("error: {e}\n");
        }
        o
    }
}

impl Restorer {
    /// Drills `database`'s newest snapshot. A failure of the drill (no snapshot, a damaged
    /// object, a restore error, a row count that differs) is a report with `ok = false`, not an
    /// error: the caller records and announces it.
    pub async fn drill(&self, database: &str, cancel: &CancellationToken) -> DrillReport {
        let (started_at, clock) = (Utc::now(), Instant::now());
        let mut report = DrillReport {
            database: database.to_string(),
            ok: false,
            snapshot_id: None,
            started_at,
            duration_seconds: 0.0,
            scratch_server: None,
            tables: 0,
            rows: 0,
            mismatches: Vec::new(),
            error: None,
        };
        let outcome = self.drill_newest(database, &mut report, cancel).await;
        report.duration_seconds = clock.elapsed().as_secs_f64();
        match outcome {
            Ok(()) if report.mismatches.is_empty() => report.ok = true,
            Ok(()) => {
                let first: Vec<String> = report.mismatches.iter().take(3).map(RowMismatch::text).collect();
                report.error =
                    Some(format!("the restored copy differs from the manifest: {}", first.join("; ")));
            }
            Err(e) => report.error = Some(e.to_string()),
        }
        report
    }

    async fn drill_newest(
        &self,
        database: &str,
        report: &mut DrillReport,
        cancel: &CancellationToken,
    ) -> Result<(), RestoreError> {
        let all = snapshot::list(&self.storage, Some(database)).await?;
        let Some(m) = all.into_iter().filter(|m| m.scope.is_full()).last() else {
            return Err(RestoreError::NoSnapshot { database: database.to_string() });
        };
        report.snapshot_id = Some(m.id.clone());
        let deep = self.verify_deep(&m, cancel).await?;
        report.scratch_server = Some(deep.scratch_server);
        match deep.rows {
            Some(rows) => {
                (report.tables, report.rows, report.mismatches) = (rows.tables, rows.rows, rows.mismatches);
                Ok(())
            }
            None => Err(RestoreError::NoRowCounts { id: m.id.clone() }),
        }
    }
}
