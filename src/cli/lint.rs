//! `pgmedic lint`: which files (every migration under `--dir`, or the pending ones of `--db`),
//! against which schema (the database's, or only the migrations' own), printed as text, JSON or
//! GitHub annotations; exit 1 when any finding is an error.

use std::path::{Path, PathBuf};

use super::UsageError;
use crate::config::Config;
use crate::lint::{self, File, Finding, Linter, Severity};
use crate::pg;
use crate::watch::{self, Status, TableState};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Github,
}

/// The migration files under `dir` in their tool's layout, or a usage error naming what was
/// looked for.
fn files(dir: &Path) -> anyhow::Result<Vec<File>> {
    Ok(lint::layout::files(dir).map_err(UsageError)?)
}

/// Whether the table records `f`: by name (Prisma, knex), by version (sqlx, dbmate, Flyway), or
/// for golang-migrate, which keeps only the current version, by being at or below it.
fn is_applied(tool: &str, f: &File, applied: &[watch::Migration]) -> bool {
    let version = f.version.as_deref();
    if tool == "golang-migrate" {
        let v = version.and_then(|v| v.parse::<i64>().ok());
        let current = applied.iter().filter_map(|m| m.id.parse::<i64>().ok()).max();
        return matches!((v, current), (Some(v), Some(c)) if v <= c);
    }
    applied.iter().any(|m| m.name == f.name || version.is_some_and(|v| m.id == v || m.name == v))
}

fn print(findings: &[Finding], json: bool, format: Format) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "findings": findings }))?);
    } else if format == Format::Github {
        print!("{}", lint::github(findings));
    } else {
        print!("{}", lint::text(findings));
    }
    let errors = findings.iter().filter(|f| f.severity == Severity::Error).count();
    if errors > 0 {
        anyhow::bail!("lint found {errors} error(s)");
    }
    Ok(())
}

/// `--dir` alone: no configuration needed, every migration checked against the ones before it.
pub async fn lint_dir(dir: &Path, json: bool, format: Format) -> anyhow::Result<()> {
    let linter = Linter { live: None, schema: "public".into(), wraps_files: true };
    let findings = linter.lint(&files(dir)?).await?;
    print(&findings, json, format)
}

/// `--db`: the pending migrations (not applied in its table) against its live schema.
pub async fn lint_db(
    cfg: &Config,
    db: &str,
    dir: Option<PathBuf>,
    json: bool,
    format: Format,
) -> anyhow::Result<()> {
    let d = super::context::database(cfg, db)?;
    let mig = d.migrations_or_default();
    let dir = dir.or_else(|| mig.dir.clone()).ok_or_else(|| {
        UsageError(format!("lint --db {db} needs --dir or databases.migrations.dir for {db}"))
    })?;
    let session = pg::connect(&d.url).await?;
    let dialect = watch::dialect(&mig);
    let applied: Vec<watch::Migration> = match watch::read(&session, dialect.as_ref()).await? {
        TableState::Rows { migrations } => {
            migrations.into_iter().filter(|m| m.status == Status::Applied).collect()
        }
        _ => Vec::new(),
    };
    let linter = Linter {
        live: Some(session.client()),
        schema: mig.schema.clone(),
        wraps_files: mig.tool == "prisma",
    };
    // Migrations written as code: their SQL from the tool's own command.
    if !mig.sql_command.is_empty() {
        let tmp = tempfile::tempdir()?;
        let mut pending = Vec::new();
        let tools = pg::PgTools::new(cfg.snapshot.pg_bin_dir.clone());
        let env = crate::diagnose::Env {
            scratch: &cfg.scratch,
            state_dir: &cfg.daemon.state_dir,
            pg_bin_dir: &cfg.snapshot.pg_bin_dir,
            tools: &tools,
        };
        for m in dialect.pending(&applied) {
            let (_, stmts) = crate::diagnose::sqlcmd::statements(&mig, d, dialect.as_ref(), &m, env)
                .await
                .map_err(UsageError)?;
            let text: String = stmts.iter().map(|s| format!("{};\n", s.sql)).collect();
            let source = dialect.code_file(&m).unwrap_or_default();
            let path = tmp.path().join(format!("{}.sql", pending.len()));
            std::fs::write(&path, text)?;
            pending.push((File { name: m.name.clone(), path, version: None }, source));
        }
        let files: Vec<File> = pending
            .iter()
            .map(|(f, _)| File { name: f.name.clone(), path: f.path.clone(), version: None })
            .collect();
        let mut findings = linter.lint(&files).await?;
        for f in &mut findings {
            if let Some((_, source)) = pending.iter().find(|(p, _)| p.path.display().to_string() == f.file) {
                f.file = format!("{} (its SQL from sql_command)", source.display());
            }
        }
        return print(&findings, json, format);
    }
    let pending: Vec<File> =
        files(&dir)?.into_iter().filter(|f| !is_applied(&mig.tool, f, &applied)).collect();
    let findings = linter.lint(&pending).await?;
    print(&findings, json, format)
}
