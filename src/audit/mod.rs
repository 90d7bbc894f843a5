//! The audit trail: one record per repair run, appended to `state_dir/audit.jsonl` and fsynced
//! before the run is reported done, then copied to storage at `audit/<database>/<run_id>.json`.
//! Records carry parameters with secrets redacted (see `redact`).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::storage::{layout, Storage};

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
    /// succeeded, failed, noop, refused, snapshot_failed, no_playbook or dry_run
    pub outcome: String,
    pub error: Option<String>,
    pub rows_before: Vec<serde_json::Value>,
    pub rows_after: Vec<serde_json::Value>,
    pub steps: Vec<StepRecord>,
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
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| self.err(e))?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Appends `rec` as one line and fsyncs it.
    pub fn append(&self, rec: &RunRecord) -> Result<(), AuditError> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| self.err(e))?;
        }
        let mut line = serde_json::to_vec(rec).map_err(|e| self.err(e))?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| self.err(e))?;
        f.write_all(&line).map_err(|e| self.err(e))?;
        f.sync_data().map_err(|e| self.err(e))
    }

    /// Records of `database` (or all) that started after `since`, oldest first.
    pub fn read(
        &self,
        database: Option<&str>,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<RunRecord>, AuditError> {
        let f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.err(e)),
        };
        let mut out = Vec::new();
        for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line = line.map_err(|e| self.err(e))?;
            let rec: RunRecord = match serde_json::from_str(&line) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(line = n + 1, error = %e, "skipping an unreadable audit line");
                    continue;
                }
            };
            if database.is_none_or(|d| d == rec.database) && since.is_none_or(|s| rec.started_at >= s) {
                out.push(rec);
            }
        }
        Ok(out)
    }
}

/// Copies `rec` to storage; a failure is logged (the local record is the one that counts).
pub async fn store_copy(storage: &Arc<dyn Storage>, rec: &RunRecord) {
    let body = serde_json::to_vec_pretty(rec).unwrap_or_default();
    if let Err(e) = storage.put(&layout::audit(&rec.database, &rec.run_id), Bytes::from(body)).await {
        tracing::warn!(run_id = %rec.run_id, error = %e, "could not copy the audit record to storage");
    }
}

/// Masks passwords in URLs (`scheme://user:***@`), `password=` pairs and SQL `PASSWORD '…'`.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c == '?' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rsplit_once('@') {
            Some((userinfo, host)) if userinfo.contains(':') => {
                let user = userinfo.split(':').next().unwrap_or("");
                out.push_str(&format!("{user}:***@{host}"));
            }
            _ => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    mask_after(&mask_after(&out, "password=", |c| c.is_whitespace() || c == '&'), "PASSWORD '", |c| c == '\'')
}

fn mask_after(text: &str, marker: &str, stop: fn(char) -> bool) -> String {
    let lower = text.to_ascii_lowercase();
    let needle = marker.to_ascii_lowercase();
    let mut out = String::new();
    let mut pos = 0;
    while let Some(i) = lower[pos..].find(&needle) {
        let start = pos + i + marker.len();
        out.push_str(&text[pos..start]);
        let end = text[start..].find(stop).map(|e| start + e).unwrap_or(text.len());
        out.push_str("***");
        pos = end;
    }
    out.push_str(&text[pos..]);
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn secrets_are_masked() {
        assert_eq!(redact("psql postgresql://app:s3cret@db:5432/x"), "psql postgresql://app:***@db:5432/x");
        assert_eq!(redact("host=db password=hunter2 user=x"), "host=db password=*** user=x");
        assert_eq!(redact("CREATE ROLE a PASSWORD 'pw''; x"), "CREATE ROLE a PASSWORD '***''; x");
        assert_eq!(redact("https://hooks.example.com/T0"), "https://hooks.example.com/T0");
    }
}
