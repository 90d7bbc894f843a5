//! The audit trail: a repair run appends a fsynced `started` record to `state_dir/audit.jsonl`
//! before its snapshot and first step, a `running` record after each step, and its final record
//! before it is reported done; the final record is also copied to storage. Reading merges a
//! run's lines (the last one wins), so a run whose process died (kill -9, the OOM killer) shows
//! as `interrupted`. The log is 0600 in a 0700 directory; parameters are redacted (`redact`).

use std::io::{BufRead, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::storage::{layout, Storage};

pub use crate::redact::redact;

pub const FILE: &str = "audit.jsonl";
/// Captured output kept per step.
pub const OUTPUT_CAP: usize = 16 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub database: String,
    pub playbook: Option<String>,
    pub migration: Option<String>,
    pub trigger: String,
    pub requested_by: String,
    pub dry_run: bool,
    pub snapshot_id: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// succeeded, failed, noop, refused, snapshot_failed, no_playbook or dry_run; while it runs
    /// `started` / `running`, and `interrupted` when its process died before finishing it
    pub outcome: String,
    /// The host and pid running it, to tell a live run from an interrupted one.
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub pid: u32,
    pub error: Option<String>,
    pub rows_before: Vec<serde_json::Value>,
    pub rows_after: Vec<serde_json::Value>,
    pub steps: Vec<StepRecord>,
    /// What the pre-repair snapshot holds (`"full"` or its tables) and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_scope: Option<crate::snapshot::Scope>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_scope_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    pub index: usize,
    pub kind: String,
    pub params: serde_json::Value,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// ok, failed, or planned (dry run)
    pub outcome: String,
    pub output: String,
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("audit log {path}: {message}")]
pub struct AuditError {
    pub path: PathBuf,
    pub message: String,
}

pub fn new_run_id(at: DateTime<Utc>) -> String {
    format!("{}-{:06x}", at.format("%Y%m%dT%H%M%SZ"), rand::random::<u32>() & 0xff_ffff)
}

pub struct AuditLog {
    path: PathBuf,
}

impl AuditLog {
    pub fn new(state_dir: &Path) -> AuditLog {
        AuditLog { path: state_dir.join(FILE) }
    }

    fn err(&self, message: impl std::fmt::Display) -> AuditError {
        AuditError { path: self.path.clone(), message: message.to_string() }
    }

    /// Opens the log for appending without writing: a repair that could not be recorded must
    /// not start.
    pub fn check_writable(&self) -> Result<(), AuditError> {
        self.open().map(|_| ())
    }

    fn open(&self) -> Result<std::fs::File, AuditError> {
        if let Some(dir) = self.path.parent() {
            private_dir(dir).map_err(|e| self.err(e))?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(|e| self.err(e))?;
        // A log created by an older version may be wider open: records hold rows and output.
        f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(|e| self.err(e))?;
        Ok(f)
    }

    /// Appends `rec` as one line and fsyncs it.
    pub fn append(&self, rec: &RunRecord) -> Result<(), AuditError> {
        let mut line = serde_json::to_vec(rec).map_err(|e| self.err(e))?;
        line.push(b'\n');
        let mut f = self.open()?;
        f.write_all(&line).map_err(|e| self.err(e))?;
        f.sync_data().map_err(|e| self.err(e))
    }

    /// Records of `database` (or all) that started after `since`, oldest first; a run whose
    /// process died before it finished is shown as `interrupted`.
    pub fn read(
        &self,
        database: Option<&str>,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<RunRecord>, AuditError> {
        let mut out = self.merged(database, since)?;
        for rec in out.iter_mut().filter(|r| r.is_unfinished() && !r.is_live()) {
            rec.outcome = INTERRUPTED.into();
        }
        Ok(out)
    }

    /// Each run's last line, in the order the runs started.
    fn merged(
        &self,
        database: Option<&str>,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<RunRecord>, AuditError> {
        let f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.err(e)),
        };
        let mut out: Vec<RunRecord> = Vec::new();
        let mut index = std::collections::HashMap::new();
        for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line = line.map_err(|e| self.err(e))?;
            let rec = match parse_line(&line) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(line = n + 1, error = %e, "skipping an unreadable audit line");
                    continue;
                }
            };
            if database.is_none_or(|d| d == rec.database) && since.is_none_or(|s| rec.started_at >= s) {
                // A run's later lines (progress, its end) replace its earlier ones.
                match index.get(&rec.run_id) {
                    Some(&i) => out[i] = rec,
                    None => {
                        index.insert(rec.run_id.clone(), out.len());
                        out.push(rec);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Runs whose last line says they were still going but whose process is gone: each gets a
    /// final `interrupted` record (so this is reported once), which is returned.
    pub fn close_interrupted(&self) -> Result<Vec<RunRecord>, AuditError> {
        let mut closed = Vec::new();
        let dead = self.merged(None, None)?.into_iter().filter(|r| r.is_unfinished() && !r.is_live());
        for mut rec in dead {
            rec.outcome = INTERRUPTED.into();
            rec.finished_at = Utc::now();
            rec.error = Some(format!(
                "the process running this repair (pid {} on {}) stopped before it finished; the steps \
                 marked ok ran, a step still `planned` may have run in part: check `pgmedic migrations` \
                 and the database, and restore the pre-repair snapshot if needed",
                rec.pid, rec.host
            ));
            self.append(&rec)?;
            closed.push(rec);
        }
        Ok(closed)
    }
}

pub const INTERRUPTED: &str = "interrupted";

impl RunRecord {
    fn is_unfinished(&self) -> bool {
        matches!(self.outcome.as_str(), "started" | "running")
    }

    /// The run's process still exists on this host (it is pgmedic, not a reused pid).
    fn is_live(&self) -> bool {
        if self.host != crate::snapshot::hostname() || self.pid == 0 {
            return false;
        }
        std::fs::read(format!("/proc/{}/cmdline", self.pid))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("pgmedic"))
    }
}

/// Creates `dir` (and missing parents) 0700, and narrows it to 0700 when it is wider: it holds
/// the audit log and decompressed dumps.
/// One line of the audit log (anyone who can write `state_dir` can write one).
pub fn parse_line(line: &str) -> Result<RunRecord, serde_json::Error> {
    serde_json::from_str(line)
}

pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let meta = std::fs::metadata(dir)?;
    if meta.permissions().mode() & 0o077 != 0 {
        if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
            tracing::warn!(dir = %dir.display(), error = %e, "state directory is readable by others and cannot be narrowed to 0700");
        }
    }
    Ok(())
}

/// Copies `rec` to storage; a failure is logged (the local record is the one that counts).
pub async fn store_copy(storage: &Arc<dyn Storage>, rec: &RunRecord) {
    let body = serde_json::to_vec_pretty(rec).unwrap_or_default();
    if let Err(e) = storage.put(&layout::audit(&rec.database, &rec.run_id), Bytes::from(body)).await {
        tracing::warn!(run_id = %rec.run_id, error = %e, "could not copy the audit record to storage");
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::parse_line;

    const LINE: &str = r#"{"run_id":"r1","database":"app","playbook":"p","migration":"m","trigger":"cli","requested_by":"u","dry_run":false,"snapshot_id":null,"started_at":"2026-01-01T00:00:00Z","finished_at":"2026-01-01T00:00:01Z","outcome":"running","host":"h","pid":4294967295,"error":null,"rows_before":[{"a":1}],"rows_after":[],"steps":[{"index":1,"kind":"sql","params":{},"started_at":null,"finished_at":null,"outcome":"planned","output":"","error":null}]}"#;

    #[test]
    fn the_sample_parses() {
        parse_line(LINE).unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        /// A damaged or forged line: skipped or read, never a panic, and a record read can be
        /// judged live or interrupted.
        #[test]
        fn mutated_lines_never_panic(at in 0usize..600, junk in "\\PC{0,8}", cut in 0usize..600) {
            let mut line = LINE.to_string();
            let at = line.char_indices().map(|(i, _)| i).nth(at).unwrap_or(line.len());
            line.insert_str(at, &junk);
            let cut = line.char_indices().map(|(i, _)| i).nth(cut).unwrap_or(line.len());
            line.truncate(cut);
            if let Ok(r) = parse_line(&line) {
                let _ = (r.is_unfinished(), r.is_live());
            }
        }
    }
}
