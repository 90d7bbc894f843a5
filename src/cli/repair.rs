//! `migrations`, `repair` and `audit`: reading the migrations table, running playbooks
//! in-process, and printing the audit trail.

use std::sync::Arc;

use super::context::{database, invoking_user, open_storage};
use super::output::table;
use super::{Refused, UsageError};
use crate::audit::{AuditLog, RunRecord};
use crate::config::{Config, DatabaseConfig};
use crate::pg::{self, PgTools};
use crate::repair::{is_refusal, InProcessSnapshots, Repairer, RunRequest};
use crate::snapshot::Snapshotter;
use crate::watch::{self, TableState};

pub(super) fn targets<'a>(cfg: &'a Config, db: Option<&str>) -> Result<Vec<&'a DatabaseConfig>, UsageError> {
    Ok(match db {
        Some(n) => vec![database(cfg, n)?],
        None => cfg.databases.iter().collect(),
    })
}

pub async fn migrations(cfg: &Config, db: Option<&str>, json: bool) -> anyhow::Result<()> {
    let storage = super::context::open_storage(cfg).await?;
    let mut all = serde_json::Map::new();
    for d in targets(cfg, db)? {
        let mig = d.migrations_or_default();
        let session = pg::connect(&d.url).await?;
        let dialect = watch::dialect(&mig);
        let state = crate::diagnose::read_state(&session, dialect.as_ref(), &storage, &d.name).await?;
        // `auto` says what it found.
        let tool = match (mig.tool.as_str(), dialect.tool()) {
            ("auto", "auto") => "auto (no migrations table found)".to_string(),
            ("auto", found) => format!("{found} (detected)"),
            (_, t) => t.to_string(),
        };
        if !json {
            println!("{}: {tool}, table {}", d.name, dialect.qualified());
            print_state(&d.name, dialect.table(), &state);
        }
        let invalid = watch::indexes::invalid(&session).await?;
        if !json {
            for i in &invalid {
                println!("{}: {}", d.name, i.text());
            }
        }
        let mut value = serde_json::to_value(&state)?;
        value["tool"] = tool.into();
        value["invalid_indexes"] = serde_json::to_value(&invalid)?;
        all.insert(d.name.clone(), value);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    }
    Ok(())
}

fn print_state(db: &str, table_name: &str, state: &TableState) {
    match state {
        TableState::Missing => println!("{db}: no {table_name} table (no migration has run)"),
        TableState::Standby => println!("{db}: a standby; read its primary"),
        TableState::Unrecognised { table, columns, like } => {
            let like = like
                .as_deref()
                .map(|t| format!(", which looks like {t}'s (pgmedic does not read it yet)"))
                .unwrap_or_default();
            println!("{db}: unrecognised migrations table {table} ({}){like}: set `tool` and `table` in [databases.migrations]", columns.join(", "))
        }
        TableState::Rows { migrations } => {
            let failed = state.needing_repair().len();
            println!("{db}: {} migrations, {failed} failed", migrations.len());
            let mut rows =
                vec![["MIGRATION", "STATUS", "STARTED (UTC)", "FINISHED"].map(String::from).to_vec()];
            for m in migrations {
                let t = |t: Option<chrono::DateTime<chrono::Utc>>| {
                    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default()
                };
                rows.push(vec![
                    m.name.clone(),
                    serde_json::to_value(m.status)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default(),
                    t(m.started_at),
                    t(m.finished_at),
                ]);
            }
            print!("{}", table(&rows));
            for m in state.needing_repair() {
                let status = serde_json::to_value(m.status)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default();
                println!(
                    "\n{} {status}:\n  {}",
                    m.name,
                    m.logs
                        .as_deref()
                        .unwrap_or("(no log: the deploying process died)")
                        .trim()
                        .replace('\n', "\n  ")
                );
            }
        }
    }
}

pub async fn repair(
    cfg: &Arc<Config>,
    db: Option<&str>,
    playbook: Option<String>,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<()> {
    if let Some(name) = db {
        database(cfg, name)?;
    }
    if let Some(records) = super::remote::repair(cfg, db, playbook.clone(), dry_run).await? {
        print_records(&records, json)?;
        return verdict(&records);
    }
    let storage = open_storage(cfg).await?;
    let snapshotter = Snapshotter {
        storage: storage.clone(),
        tools: PgTools::new(cfg.snapshot.pg_bin_dir.clone()),
        cfg: cfg.snapshot.clone(),
    };
    let repairer =
        Repairer { config: cfg.clone(), storage, snapshots: Arc::new(InProcessSnapshots(snapshotter)) };
    let user = invoking_user();
    let mut records = Vec::new();
    for d in targets(cfg, db)? {
        let req = RunRequest {
            database: d.name.clone(),
            playbook: playbook.clone(),
            dry_run,
            trigger: "cli".into(),
            requested_by: format!("cli:{user}"),
        };
        records.push(repairer.run(&req).await?);
    }
    print_records(&records, json)?;
    verdict(&records)
}

/// One record as an object, several as an array; or the human lines.
fn print_records(records: &[RunRecord], json: bool) -> anyhow::Result<()> {
    if !json {
        records.iter().for_each(print_run);
        return Ok(());
    }
    let out = if records.len() == 1 {
        serde_json::to_string_pretty(&records[0])?
    } else {
        serde_json::to_string_pretty(records)?
    };
    println!("{out}");
    Ok(())
}

/// Exit 3 when a run was refused for safety, 1 when one failed, else 0.
fn verdict(records: &[RunRecord]) -> anyhow::Result<()> {
    if let Some(r) = records.iter().find(|r| is_refusal(&r.outcome)) {
        return Err(Refused(format!(
            "repair of {} refused: {}",
            r.database,
            r.error.clone().unwrap_or_default()
        ))
        .into());
    }
    if let Some(r) = records.iter().find(|r| r.outcome == "failed" || r.outcome == "no_playbook") {
        anyhow::bail!(
            "repair of {} {}: {}",
            r.database,
            r.outcome.replace('_', " "),
            r.error.clone().unwrap_or_default()
        );
    }
    Ok(())
}

fn print_run(r: &RunRecord) {
    let what = match (&r.migration, &r.playbook) {
        (Some(m), Some(p)) => format!("migration {m} with playbook {p}"),
        (Some(m), None) => format!("migration {m}"),
        _ if r.outcome == "noop" => "nothing failed".into(),
        _ => "before a failed migration was found".into(),
    };
    println!("{}: {} — {} (run {})", r.database, r.outcome, what, r.run_id);
    if let Some(s) = &r.snapshot_id {
        println!("  pre-repair snapshot: {s}");
    }
    for s in &r.steps {
        let detail = s.error.clone().unwrap_or_else(|| s.output.lines().last().unwrap_or("").to_string());
        println!("  {}. [{}] {} {}  {}", s.index, s.outcome, s.kind, s.params, detail);
    }
    if let Some(e) = &r.error {
        println!("  {e}");
    }
}

pub fn audit(cfg: &Config, db: Option<&str>, since: Option<&str>, json: bool) -> anyhow::Result<()> {
    let since = match since {
        Some(s) => {
            let d = humantime::parse_duration(s)
                .map_err(|e| UsageError(format!("--since `{s}`: {e} (try 7d or 12h)")))?;
            Some(chrono::Utc::now() - chrono::Duration::from_std(d).unwrap_or_default())
        }
        None => None,
    };
    let name = db.map(|n| database(cfg, n).map(|d| d.name.as_str())).transpose()?;
    let records = AuditLog::new(&cfg.daemon.state_dir).read(name, since)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(());
    }
    if records.is_empty() {
        println!("no repair runs recorded in {}", cfg.daemon.state_dir.display());
    }
    for r in &records {
        print_run(r);
    }
    Ok(())
}
