//! The diagnosis as a document (`diagnose --json`) and as text: when and why it failed, each
//! statement's verdict, the rows of what it created, the schema change since the baseline, and
//! the two drafted playbooks as TOML ready to paste, with the SQL they would run now. SQL and
//! reasons are shown redacted (a `PASSWORD '…'` in a migration): the steps compute their SQL
//! again when they run, so nothing here is pasted back.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use super::{sqlstate, Analysis};
use crate::redact::redact;
use crate::sql::{Change, Verdict};

#[derive(Debug, Serialize)]
pub struct Report {
    pub database: String,
    pub migration: String,
    pub status: crate::watch::Status,
    pub started_at: Option<DateTime<Utc>>,
    pub log: Option<String>,
    pub sqlstate: Option<String>,
    pub sqlstate_source: Option<String>,
    /// Set when a repair must wait (a crashed migrator's backend still runs).
    pub wait: Option<String>,
    pub file: Option<String>,
    /// Why the statements could not be judged.
    pub file_error: Option<String>,
    pub statements: Vec<StatementReport>,
    /// How the migration was tied to what the catalog shows: `"replay"` (its own SQL replayed),
    /// or `"position"` for a code migration whose SQL is unknown: the first pending one, whose
    /// file names the objects; its statements are written from those objects.
    pub attribution: &'static str,
    /// For `"position"`: every object the attribution rests on.
    pub attributed_objects: Vec<String>,
    /// Statements that took effect, when the evidence proves it.
    pub stopped_after: Option<usize>,
    /// `replay`, `catalog` or `none`: what the verdicts stand on.
    pub proof: super::Proof,
    /// `[first, last]` when several stopping points give the live schema.
    pub stopped_range: Option<[usize; 2]>,
    /// 1-based index of the statement that failed, or null.
    pub failed_statement: Option<usize>,
    /// The server log's ERROR (with DETAIL, HINT, STATEMENT) of the failure, for a tool that
    /// stores no error text; redacted.
    pub server_log: Option<String>,
    /// Why `server_log` is null when it was looked for (which grant or setting would let it).
    pub server_log_why: Option<String>,
    /// Where the replay ran (`ephemeral`, `source` or a URL without its password).
    pub scratch_server: Option<String>,
    /// What the replay showed, or why there was none.
    pub replay: Vec<String>,
    pub created_tables: Vec<CreatedTable>,
    pub baseline_snapshot: Option<String>,
    pub baseline_why: Option<String>,
    pub schema_diff: Vec<Change>,
    pub playbooks: Playbooks,
}

#[derive(Debug, Serialize)]
pub struct StatementReport {
    pub index: usize,
    pub line: usize,
    pub sql: String,
    pub verdict: Verdict,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct CreatedTable {
    pub table: String,
    pub rows: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct Playbooks {
    pub finish: Draft,
    pub undo: Draft,
}

/// A drafted playbook: its TOML and SQL, or why it cannot be drafted.
#[derive(Debug, Serialize)]
pub struct Draft {
    pub toml: Option<String>,
    pub sql: Option<String>,
    /// The SQL as it runs: transactions and the statements outside them marked.
    pub script: Option<String>,
    pub why: Option<String>,
    pub notes: Vec<String>,
}

impl Draft {
    fn refused(why: String) -> Draft {
        Draft { toml: None, sql: None, script: None, why: Some(redact(&why)), notes: Vec::new() }
    }
}

fn toml(kind: &str, database: &str, migration: &str, steps: &str) -> String {
    let q = |s: &str| toml::Value::String(s.to_string()).to_string();
    format!(
        "[[playbooks]]\nname = {}\ndatabase = {}\nmatch = {{ migration = {} }}\nsteps = [\n{steps}]\n",
        q(&format!("{kind}-{migration}")),
        q(database),
        q(migration)
    )
}

fn sql_text(stmts: &[String]) -> String {
    if stmts.is_empty() {
        return "-- nothing left to run\n".into();
    }
    stmts.iter().map(|s| format!("{s};\n")).collect()
}

/// Builds the report; `now` is today's schema dump, when it could be taken. `schema` is the
/// migrations' schema, on which unqualified names resolve.
pub async fn report(
    a: &Analysis,
    client: &Client,
    schema: &str,
    now: Result<&crate::sql::Baseline, String>,
) -> Report {
    let m = &a.migration;
    let code = m.tool_log().and_then(sqlstate);
    let mut created = Vec::new();
    let old = crate::sql::catalog::set_search_path(client, schema).await.ok();
    for t in a.created_tables() {
        let rows = client.query_one(&format!("SELECT count(*) FROM {t}"), &[]).await.ok().map(|r| r.get(0));
        created.push(CreatedTable { table: t.to_string(), rows });
    }
    if let Some(old) = old {
        let _ = crate::sql::catalog::restore_search_path(client, &old).await;
    }
    let (mut schema_diff, baseline_why) = match (&a.baseline, now) {
        (Ok(b), Ok(now)) => (b.schema.diff(now), None),
        (Err(why), _) => (Vec::new(), Some(why.clone())),
        (Ok(_), Err(why)) => (Vec::new(), Some(format!("cannot dump today's schema to compare: {why}"))),
    };
    schema_diff.extend(invalid_indexes(client).await);
    // Only Prisma stores the server's error; for the others the log is the only witness.
    let log = match code {
        Some(_) => None,
        None => {
            let stmts: Vec<crate::sql::Statement> = a.statements.iter().map(|(s, _)| s.clone()).collect();
            let since = a.baseline.as_ref().ok().map(|b| b.taken_at);
            Some(super::serverlog::read(client, &stmts, since).await)
        }
    };
    let code = code.or_else(|| {
        let c = log.as_ref()?.sqlstate.clone()?;
        Some((c, "the server log".to_string()))
    });
    Report {
        database: a.database.clone(),
        migration: m.name.clone(),
        status: m.status,
        started_at: m.started_at,
        log: m.logs.as_deref().map(crate::redact::redact),
        sqlstate: code.as_ref().map(|c| c.0.clone()),
        sqlstate_source: code.map(|c| c.1),
        wait: (!a.running.is_empty()).then(|| a.blocked().unwrap_or_default()),
        file: a.file.as_ref().ok().map(|p| p.display().to_string()),
        file_error: a.file.as_ref().err().cloned(),
        statements: a
            .statements
            .iter()
            .map(|(s, _)| {
                let (verdict, reason) = a.verdict(s.index);
                StatementReport { index: s.index, line: s.line, sql: redact(&s.sql), verdict, reason }
            })
            .collect(),
        attribution: if a.reconstructed.is_some() { "position" } else { "replay" },
        attributed_objects: a.reconstructed.clone().unwrap_or_default(),
        stopped_after: a.evidence.stop.stopped_after,
        proof: a.evidence.proof,
        stopped_range: a.evidence.stop.range.map(|(lo, hi)| [lo, hi]),
        failed_statement: a.evidence.stop.failed_statement,
        server_log: log.as_ref().and_then(|l| l.entry.clone()),
        server_log_why: log.and_then(|l| l.why),
        scratch_server: a.evidence.server.clone(),
        replay: a.evidence.explanation.iter().map(|l| redact(l)).collect(),
        playbooks: Playbooks { finish: finish(a), undo: undo(a, &created) },
        created_tables: created,
        baseline_snapshot: a.baseline.as_ref().ok().map(|b| b.id.clone()),
        baseline_why,
        schema_diff,
    }
}

/// Invalid indexes no running `CREATE INDEX` is building: pg_dump leaves them out, so a
/// schema diff would never show what a failed CONCURRENTLY build left; the catalog does.
async fn invalid_indexes(client: &Client) -> Vec<Change> {
    let q = "SELECT n.nspname::text, t.relname || ' ' || c.relname, pg_get_indexdef(i.indexrelid) \
             FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE NOT i.indisvalid AND NOT EXISTS (SELECT FROM pg_stat_progress_create_index p WHERE p.index_relid = i.indexrelid) \
             ORDER BY 1, 2";
    let rows = client.query(q, &[]).await.unwrap_or_default();
    rows.iter()
        .map(|r| Change {
            change: "invalid",
            kind: "INDEX".into(),
            schema: r.get(0),
            name: r.get(1),
            before: None,
            after: Some(format!(
                "{} (indisvalid = false: a failed build left it; pg_dump leaves it out)",
                r.get::<_, String>(2)
            )),
        })
        .collect()
}

fn finish(a: &Analysis) -> Draft {
    match &a.evidence.finish {
        Err(why) => Draft::refused(why.clone()),
        Ok(plan) => {
            let mut notes = Vec::new();
            if plan.segments.iter().any(|s| matches!(s, super::plan::Segment::Alone { .. })) {
                notes.push("some statements cannot run inside a transaction (CONCURRENTLY and the like): they run on their own, so a failure part way leaves the ones before it done".into());
            }
            notes.push(format!(
                "proven: it ran on a copy of the baseline stopped after statement {} and left it as the whole migration does",
                a.evidence.stop.stopped_after.unwrap_or(0)
            ));
            let steps = "  { finish = true },\n  { resolve = \"applied\" },\n";
            Draft {
                toml: Some(toml("finish", &a.database, &a.migration.name, steps)),
                sql: Some(redact(&sql_text(&plan.statements()))),
                script: Some(redact(&plan.text())),
                why: None,
                notes,
            }
        }
    }
}

fn undo(a: &Analysis, created: &[CreatedTable]) -> Draft {
    match a.undo() {
        Err(why) => Draft::refused(why),
        Ok(u) => {
            let mut notes = Vec::new();
            for t in created.iter().filter(|t| t.rows.unwrap_or(1) > 0) {
                let rows = t.rows.map(|r| r.to_string()).unwrap_or_else(|| "an unknown number of".into());
                notes.push(format!("{} holds {rows} rows: the undo refuses to drop it unless the step says allow_data_loss = true", t.table));
            }
            notes.push(
                "proven: it ran on a copy of the baseline at the stopping point and gave the baseline back"
                    .into(),
            );
            let steps = "  { undo = true, allow_data_loss = false },\n  { resolve = \"rolled-back\" },\n";
            Draft {
                toml: Some(toml("undo", &a.database, &a.migration.name, steps)),
                sql: Some(redact(&sql_text(&u.plan.statements()))),
                script: Some(redact(&u.plan.text())),
                why: None,
                notes,
            }
        }
    }
}

impl Report {
    pub fn text(&self) -> String {
        let mut o = String::new();
        self.head_text(&mut o);
        self.statements_text(&mut o);
        self.diff_text(&mut o);
        self.playbooks_text(&mut o);
        o
    }

    /// The migration, its status and start, the error code, the log's first lines, and a wait.
    fn head_text(&self, o: &mut String) {
        let started = self
            .started_at
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_else(|| "?".into());
        let status = serde_json::to_value(self.status)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let _ =
            writeln!(o, "{} · migration {} · {status} · started {started}", self.database, self.migration);
        if let Some(code) = &self.sqlstate {
            let _ = writeln!(o, "SQLSTATE {code} ({})", self.sqlstate_source.as_deref().unwrap_or(""));
        }
        if let Some(log) = &self.log {
            let first: Vec<&str> = log.lines().take(4).collect();
            let _ = writeln!(o, "log:\n  {}", first.join("\n  "));
        }
        if let Some(entry) = &self.server_log {
            let _ = writeln!(o, "server log:\n  {}", entry.lines().collect::<Vec<_>>().join("\n  "));
        } else if let Some(why) = &self.server_log_why {
            let _ = writeln!(o, "server log: {why}");
        }
        if let Some(wait) = &self.wait {
            let _ = writeln!(o, "WAIT: {wait}");
        }
        if self.attribution == "position" {
            let _ = writeln!(o, "attributed by position, not proven by its own SQL (the migration is code): the first pending migration, whose file names {}; the statements below are written from those objects and replayed on the baseline", self.attributed_objects.join(", "));
        }
    }

    /// Each statement's verdict, and the rows of the tables the migration created.
    fn statements_text(&self, o: &mut String) {
        match (&self.file, &self.file_error) {
            (Some(f), _) => {
                let _ = writeln!(o, "\nstatements of {f}:");
            }
            (None, Some(why)) => {
                let _ = writeln!(o, "\nstatements: cannot judge them: {why}");
            }
            _ => {}
        }
        for s in &self.statements {
            let head: String =
                s.sql.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(90).collect();
            let _ = writeln!(
                o,
                "  {:>3}. line {:<4} {:<11} {head}\n                      {}",
                s.index,
                s.line,
                s.verdict.words(),
                s.reason
            );
        }
        let proof = match (self.proof, self.stopped_after, self.stopped_range) {
            (super::Proof::Replay, Some(k), _) => format!("replay: it stopped after statement {k}"),
            (super::Proof::Replay, None, Some([lo, hi])) => format!(
                "replay: it stopped after statement {lo} to {hi}, which the evidence cannot tell apart"
            ),
            (super::Proof::Replay, None, None) => "replay: no stopping point gives the live schema".into(),
            (super::Proof::Catalog, ..) => "the catalog checks alone".into(),
            (super::Proof::None, ..) => "none".into(),
        };
        let on =
            self.scratch_server.as_deref().map(|s| format!(" (scratch server: {s})")).unwrap_or_default();
        let _ = writeln!(o, "\nproof: {proof}{on}");
        for line in &self.replay {
            let _ = writeln!(o, "  {line}");
        }
        for t in &self.created_tables {
            let rows = t.rows.map(|r| r.to_string()).unwrap_or_else(|| "?".into());
            let _ = writeln!(o, "\ncreated by the migration: {} holds {rows} rows", t.table);
        }
    }

    /// The drafted finish and undo: their TOML and SQL, or why they could not be drafted.
    fn playbooks_text(&self, o: &mut String) {
        for (name, d) in [("finish", &self.playbooks.finish), ("undo", &self.playbooks.undo)] {
            let _ = writeln!(o, "\n── drafted playbook: {name} ──");
            match (&d.toml, &d.why) {
                (Some(t), _) => {
                    let _ = write!(o, "{t}\n-- SQL it runs now:\n{}", d.script.as_deref().unwrap_or(""));
                }
                (None, Some(why)) => {
                    let _ = writeln!(o, "cannot be drafted: {why}");
                }
                _ => {}
            }
            for n in &d.notes {
                let _ = writeln!(o, "note: {n}");
            }
        }
    }

    fn diff_text(&self, o: &mut String) {
        match (&self.baseline_snapshot, &self.baseline_why) {
            (Some(id), _) => {
                let _ =
                    writeln!(o, "\nschema since snapshot {id} (the newest before the migration started):");
                if self.schema_diff.is_empty() {
                    let _ = writeln!(o, "  no difference");
                }
            }
            (None, Some(why)) => {
                let _ = writeln!(o, "\nschema difference: none shown: {why}");
            }
            _ => {}
        }
        for c in &self.schema_diff {
            let _ = writeln!(o, "  {:<8} {} {}.{}", c.change, c.kind, c.schema, c.name);
        }
    }
}
