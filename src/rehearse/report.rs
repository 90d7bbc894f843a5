//! A rehearsal's report as an operator reads it, and the verdicts beyond the deploy's exit
//! code: a deploy that changed the source, or that exited 0 having applied nothing on the copy.

use super::deploy::Outcome;
use super::{Applied, Report};
use crate::watch::{Migration, Status};

/// The webhook's detail for `rehearse_touched_source`: what changed on the source, and where
/// the rehearsal ran.
pub fn touched_detail(r: &Report) -> serde_json::Value {
    serde_json::json!({
        "snapshot_id": r.snapshot_id,
        "scratch_server": r.scratch_server,
        "command": r.command,
        "changes": r.source_changes,
    })
}

/// Why a rehearsal fails although its deploy may have exited 0; None when nothing is wrong.
pub fn problem(
    database: &str,
    ran: &Outcome,
    pending: &[String],
    applied: &[Applied],
    source_changes: &[String],
) -> Option<String> {
    if !source_changes.is_empty() {
        let shown: Vec<&str> = source_changes.iter().take(5).map(String::as_str).collect();
        let more = source_changes.len().saturating_sub(shown.len());
        let more = if more > 0 { format!(" (and {more} more)") } else { String::new() };
        return Some(format!(
            "the deploy changed the source database {database}: {}{more}; it must have connected there (a directUrl or .env, a flyway.toml or liquibase.properties in its folder, a URL written into the command): the rehearsal proves nothing",
            shown.join("; ")
        ));
    }
    if ran.exit_code == Some(0) && !pending.is_empty() && applied.is_empty() {
        return Some(format!(
            "the deploy applied nothing on the copy although {} migration(s) were pending ({}): did it connect elsewhere?",
            pending.len(),
            pending.join(", ")
        ));
    }
    None
}

/// Rows applied by this deploy, with how long each took.
pub fn applied_now(before: &[Migration], after: &[Migration]) -> Vec<Applied> {
    after
        .iter()
        .filter(|m| {
            m.status == Status::Applied && !before.iter().any(|b| b.id == m.id && b.status == Status::Applied)
        })
        .map(|m| Applied {
            name: m.name.clone(),
            duration_s: m
                .started_at
                .zip(m.finished_at)
                .map(|(s, f)| (f - s).num_milliseconds() as f64 / 1000.0),
        })
        .collect()
}

/// Folders of `migrations.dir` that the table did not show applied before the deploy.
pub fn pending(mig: &crate::config::MigrationsConfig, before: &[Migration]) -> Vec<String> {
    let Some(dir) = &mig.dir else { return Vec::new() };
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().join("migration.sql").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !before.iter().any(|m| &m.name == n && m.status == Status::Applied))
        .collect();
    names.sort();
    names
}

impl Report {
    pub fn text(&self) -> String {
        let mut o = format!(
            "rehearsal of {} on snapshot {} in {}{}: {}\n",
            self.database,
            self.snapshot_id,
            self.scratch_database,
            if self.dropped { " (dropped)" } else { " (kept)" },
            if self.ok { "the deploy succeeded" } else { "the deploy FAILED" }
        );
        let code = self.exit_code.map(|c| c.to_string()).unwrap_or_else(|| {
            if self.timed_out {
                "killed at the timeout".into()
            } else {
                "killed".into()
            }
        });
        o += &format!("scratch server: {}\n", self.scratch_server);
        if let Some(p) = &self.problem {
            o += &format!("PROBLEM: {p}\n");
        }
        o += &format!("command: {} → exit {code} after {:.1}s\n", self.command.join(" "), self.duration_s);
        o += &format!(
            "pending before: {}\n",
            if self.pending.is_empty() { "-".into() } else { self.pending.join(", ") }
        );
        for a in &self.applied {
            o += &format!(
                "applied: {} in {}\n",
                a.name,
                a.duration_s.map(|d| format!("{d:.3}s")).unwrap_or_else(|| "?".into())
            );
        }
        for f in &self.failed {
            o += &format!("failed: {f}\n");
        }
        let mut current: Option<&Option<String>> = None;
        for l in &self.locks {
            if current != Some(&l.migration) {
                let who = l.migration.as_deref().unwrap_or("outside any recorded migration");
                o += &format!("locks during {who}:\n");
                current = Some(&l.migration);
            }
            let held = if l.held_s > 0.0 { format!(" held ~{:.1}s", l.held_s) } else { String::new() };
            let rewritten = if l.rewritten { ", REWRITTEN" } else { "" };
            o += &format!(
                "  {} {} ({}){held}{rewritten}\n",
                l.table,
                l.mode,
                crate::units::human_bytes(l.table_bytes.max(0) as u64)
            );
        }
        o += &format!("output:\n{}\n", self.output.trim_end());
        for d in &self.diagnosis {
            o += &format!("\n{}", d.text());
        }
        o
    }
}
