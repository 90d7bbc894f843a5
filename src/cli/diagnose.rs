//! `pgmedic diagnose`: reads each database's migrations table, analyses the failed or crashed
//! migrations (or the one named) and prints the reports, as text or one JSON array.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::context::open_storage;
use super::repair::targets;
use crate::config::Config;
use crate::diagnose::{self, Report};
use crate::pg::{self, PgTools};
use crate::snapshot::Snapshotter;
use crate::sql::Baseline;
use crate::watch::{self, Migration, TableState};

fn chosen(state: &TableState, name: Option<&str>, dialect: &dyn watch::Dialect) -> Vec<Migration> {
    let TableState::Rows { migrations } = state else { return Vec::new() };
    match name {
        // The newest row of that name, whatever its state; else a pending migration of `dir`
        // (a tool that prints no error, such as drizzle-kit: the server log says why it fails).
        Some(n) => {
            let row = migrations.iter().rev().find(|m| m.name == n).cloned();
            let pending = || {
                let m = dialect.pending(migrations).into_iter().find(|m| m.name == n)?;
                Some(Migration { status: watch::Status::Pending, ..m })
            };
            row.or_else(pending).into_iter().collect()
        }
        None => state.needing_repair().into_iter().cloned().collect(),
    }
}

pub async fn diagnose(
    cfg: &Config,
    db: Option<&str>,
    migration: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let storage = open_storage(cfg).await?;
    let snapshotter = Snapshotter {
        storage: Arc::clone(&storage),
        tools: PgTools::new(cfg.snapshot.pg_bin_dir.clone()),
        cfg: cfg.snapshot.clone(),
    };
    let cancel = CancellationToken::new();
    crate::daemon::signals::cancel_on_terminate(cancel.clone());
    let tools = PgTools::new(cfg.snapshot.pg_bin_dir.clone());
    let env = diagnose::Env {
        scratch: &cfg.scratch,
        state_dir: &cfg.daemon.state_dir,
        pg_bin_dir: &cfg.snapshot.pg_bin_dir,
        tools: &tools,
    };
    let mut reports: Vec<Report> = Vec::new();
    for d in targets(cfg, db)? {
        let mig = d.migrations_or_default();
        let session = pg::connect(&d.url).await?;
        let dialect = watch::dialect(&mig);
        let state = diagnose::read_state(&session, dialect.as_ref(), &storage, &d.name).await?;
        let todo = chosen(&state, migration, dialect.as_ref());
        if todo.is_empty() {
            continue;
        }
        let now =
            snapshotter.schema_now(d, &cancel).await.map(|t| Baseline::parse(&t)).map_err(|e| e.to_string());
        for m in &todo {
            let a = diagnose::analyse(session.client(), d, &mig, dialect.as_ref(), &storage, m, env).await?;
            reports.push(
                diagnose::report(&a, session.client(), &mig.schema, now.as_ref().map_err(Clone::clone)).await,
            );
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else if reports.is_empty() {
        match migration {
            Some(n) => anyhow::bail!("no migration named `{n}` in the migrations table"),
            None => println!("no failed or crashed migrations"),
        }
    } else {
        let texts: Vec<String> = reports.iter().map(Report::text).collect();
        print!("{}", texts.join("\n════════\n\n"));
    }
    Ok(())
}
