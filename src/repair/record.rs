//! How a run's steps appear in its audit record: planned with their parameters (secrets
//! redacted, `env` values hidden), and captured output capped at `OUTPUT_CAP` (not the SQL a
//! finish or undo step drafted and ran, which the audit keeps whole).

use serde_json::json;

use crate::audit::{redact, StepRecord, OUTPUT_CAP};
use crate::config::Step;

pub(super) fn cap(s: &str) -> String {
    if s.len() <= OUTPUT_CAP {
        return s.to_string();
    }
    let mut end = OUTPUT_CAP;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes cut)", &s[..end], s.len() - end)
}

/// A step as the audit shows it: its kind and parameters, secrets redacted.
pub(super) fn planned(index: usize, step: &Step, migration: &str) -> StepRecord {
    let (kind, params) = match step {
        Step::Sql { sql, timeout } => (
            "sql",
            json!({ "sql": redact(sql), "timeout": timeout.map(|t| humantime::format_duration(t).to_string()) }),
        ),
        Step::SqlFile { path, timeout } => (
            "sql_file",
            json!({ "sql_file": path, "timeout": timeout.map(|t| humantime::format_duration(t).to_string()) }),
        ),
        Step::Resolve(how) => ("resolve", json!({ "resolve": how, "migration": migration })),
        Step::Command { argv, cwd, env, timeout } => (
            "command",
            json!({
                "command": argv.iter().map(|a| redact(a)).collect::<Vec<_>>(),
                "cwd": cwd,
                "env": env.keys().map(|k| (k.clone(), "***")).collect::<std::collections::BTreeMap<_, _>>(),
                "timeout": humantime::format_duration(*timeout).to_string(),
            }),
        ),
        Step::AssertSql { sql } => ("assert_sql", json!({ "assert_sql": redact(sql) })),
        Step::Finish { timeout } => (
            "finish",
            json!({ "finish": true, "migration": migration, "timeout": timeout.map(|t| humantime::format_duration(t).to_string()) }),
        ),
        Step::Undo { allow_data_loss, timeout } => (
            "undo",
            json!({ "undo": true, "allow_data_loss": allow_data_loss, "migration": migration, "timeout": timeout.map(|t| humantime::format_duration(t).to_string()) }),
        ),
        Step::ReleaseLock => ("release_lock", json!({ "release_lock": true, "migration": migration })),
        Step::AcceptChecksums => ("accept_checksums", json!({ "accept_checksums": true })),
    };
    StepRecord {
        index: index + 1,
        kind: kind.into(),
        params,
        started_at: None,
        finished_at: None,
        outcome: "planned".into(),
        output: String::new(),
        error: None,
    }
}
