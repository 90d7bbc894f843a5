//! What each subcommand does, in-process. The daemon-aware paths arrive with the daemon.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::context::{database, invoking_user, open_storage};
use super::output::{human_bytes, snapshot_line, snapshot_table, table};
use super::{Cli, Command, Refused, UsageError};
use crate::config::{self, Config, DatabaseConfig};
use crate::pg::PgTools;
use crate::restore::{Progress, RestoreOptions, Restorer};
use crate::snapshot::{self, Request, Snapshotter};

/// The commands that need no configuration, if `cli` is one.
async fn without_config(cli: &Cli) -> Option<anyhow::Result<()>> {
    match &cli.command {
        // Generated from the CLI definition itself.
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "pgmedic", &mut std::io::stdout());
            Some(Ok(()))
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            Some(clap_mangen::Man::new(cmd).render(&mut std::io::stdout()).map_err(Into::into))
        }
        // Linting a folder: CI runs it before any pgmedic is set up.
        Command::Lint { db: None, dir, json, format } => Some(match dir {
            Some(dir) => super::lint::lint_dir(dir, *json, *format).await,
            None => Err(UsageError("lint needs --dir DIR or --db NAME".into()).into()),
        }),
        _ => None,
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(done) = without_config(&cli).await {
        return done;
    }
    let cfg = Arc::new(Config::load(&cli.config)?);
    crate::crypt::use_identity_file(cfg.storage.encryption.as_ref().and_then(|e| e.identity_file.clone()));
    match cli.command {
        Command::Daemon => {
            let shutdown = CancellationToken::new();
            crate::daemon::run(cli.config.clone(), Arc::unwrap_or_clone(cfg), shutdown).await?;
            Ok(())
        }
        Command::Status { json } => super::remote::status(&cfg, json).await,
        Command::Fleet { json } => super::fleet::fleet(&cfg, json).await,
        Command::CheckConfig => {
            cmd_check_config(&cfg).await;
            Ok(())
        }
        Command::Snapshot { db, reason, json } => cmd_snapshot(&cfg, db.as_deref(), &reason, json).await,
        Command::Snapshots { db, json } => {
            let storage = open_storage(&cfg).await?;
            let name = db.as_deref().map(|n| database(&cfg, n).map(|d| d.name.as_str())).transpose()?;
            let list = snapshot::list(&storage, name).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("no complete snapshots in {}", storage.location());
            } else {
                print!("{}", snapshot_table(&list));
            }
            Ok(())
        }
        Command::Restore { snapshot_id, target, create, clean, jobs, no_owner, yes, json } => {
            let opts = RestoreOptions {
                target,
                create,
                clean,
                jobs: jobs.max(1),
                no_owner,
                no_subscriptions: false,
            };
            cmd_restore(&cfg, &snapshot_id, opts, yes, json).await
        }
        Command::Verify { snapshot_id, deep, json } => cmd_verify(&cfg, &snapshot_id, deep, json).await,
        Command::Drill { db, json } => cmd_drill(&cfg, db.as_deref(), json).await,
        Command::Migrations { db, json } => super::repair::migrations(&cfg, db.as_deref(), json).await,
        Command::Completions { .. } | Command::Man => Ok(()),
        Command::Rehearse { db, snapshot, fresh, keep, json, command } => {
            let opts = crate::rehearse::Options { snapshot, fresh, keep, command };
            cmd_rehearse(&cfg, db.as_deref(), &opts, json).await
        }
        Command::Lint { db, dir, json, format } => {
            let db = db.as_deref().unwrap_or_default();
            super::lint::lint_db(&cfg, db, dir, json, format).await
        }
        Command::Diagnose { db, migration, json } => {
            super::diagnose::diagnose(&cfg, db.as_deref(), migration.as_deref(), json).await
        }
        Command::Repair { db, playbook, dry_run, json } => {
            super::repair::repair(&cfg, db.as_deref(), playbook, dry_run, json).await
        }
        Command::Audit { db, since, json } => {
            super::repair::audit(&cfg, db.as_deref(), since.as_deref(), json)
        }
        Command::Prune { db, dry_run, json } => cmd_prune(&cfg, db.as_deref(), dry_run, json).await,
    }
}

/// The effective configuration (secrets redacted), the client tools found, and warnings.
async fn cmd_check_config(cfg: &Config) {
    print!("{}", config::render_redacted(cfg));
    print!("{}", client_tools(cfg).await);
    let identity = cfg.storage.encryption.as_ref().and_then(|e| e.identity_file.as_deref());
    if let Some(warning) = identity.and_then(crate::crypt::loose_permissions) {
        println!("\n# warning: {warning}");
    }
}

/// The client tools found, as comments: each database uses the lowest major ≥ its server's.
async fn client_tools(cfg: &Config) -> String {
    let mut out = String::from(
        "\n# client tools found (each database uses the lowest version >= its server's major):\n",
    );
    for db in &cfg.databases {
        if let Some(dir) = &db.pg_bin_dir {
            out += &format!("#   {}: its own pg_bin_dir {} first\n", db.name, dir.display());
        }
    }
    for (dir, major) in crate::pg::locate::inventory(&cfg.snapshot.pg_bin_dir).await {
        let version = major.map(|m| m.to_string()).unwrap_or_else(|| "version unknown".into());
        out += &format!("#   {} ({version})\n", dir.display());
    }
    out
}

async fn cmd_snapshot(cfg: &Config, db: Option<&str>, reason: &str, json: bool) -> anyhow::Result<()> {
    let targets: Vec<&DatabaseConfig> = match db {
        Some(n) => vec![database(cfg, n)?],
        None => cfg.databases.iter().collect(),
    };
    if let Some(taken) = super::remote::snapshot(cfg, db, reason).await? {
        return print_taken(&taken, json);
    }
    let snapshotter = Snapshotter {
        storage: open_storage(cfg).await?,
        tools: PgTools::new(cfg.snapshot.pg_bin_dir.clone()),
        cfg: cfg.snapshot.clone(),
    };
    let cancel = CancellationToken::new();
    crate::daemon::signals::cancel_on_terminate(cancel.clone());
    let req = Request::asked(reason, format!("cli:{}", invoking_user()));
    if let [only] = targets[..] {
        let m = snapshotter.take(only, &req, &cancel).await?;
        return print_taken(&[m], json);
    }
    // Every database is attempted: one failure must not cost the others their snapshot.
    let mut taken = Vec::new();
    let mut failed = Vec::new();
    for db in targets {
        match snapshotter.take(db, &req, &cancel).await {
            Ok(m) => taken.push(m),
            Err(e) => {
                tracing::error!(database = %db.name, error = %e, "snapshot failed");
                failed.push(db.name.clone());
            }
        }
    }
    print_taken(&taken, json)?;
    if !failed.is_empty() {
        anyhow::bail!(
            "snapshot failed for {} of {} databases: {} (see the errors above)",
            failed.len(),
            failed.len() + taken.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

pub(super) fn print_taken(taken: &[crate::snapshot::Manifest], json: bool) -> anyhow::Result<()> {
    if !json {
        for m in taken {
            println!("{}", snapshot_line(m));
        }
        return Ok(());
    }
    let out = if taken.len() == 1 {
        serde_json::to_string_pretty(&taken[0])?
    } else {
        serde_json::to_string_pretty(taken)?
    };
    println!("{out}");
    Ok(())
}

async fn cmd_restore(
    cfg: &Arc<Config>,
    id: &str,
    opts: RestoreOptions,
    yes: bool,
    json: bool,
) -> anyhow::Result<()> {
    let storage = open_storage(cfg).await?;
    let m = snapshot::find(&storage, id).await?;
    if opts.clean && !yes {
        confirm_clean(&opts.target)?;
    }
    let restorer =
        Restorer { storage, tools: PgTools::new(cfg.snapshot.pg_bin_dir.clone()), config: cfg.clone() };
    let progress = Progress::start(format!("restoring {id}"), m.stored_bytes, !json);
    let cancel = CancellationToken::new();
    crate::daemon::signals::cancel_on_terminate(cancel.clone());
    let report = restorer.restore(&m, &opts, &progress, &cancel).await?;
    drop(progress);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "restored {} ({} from {}) into {} in {:.1}s{}",
            report.id,
            human_bytes(report.raw_bytes),
            report.database,
            report.target,
            report.seconds,
            if report.created { " (created it)" } else { "" }
        );
    }
    Ok(())
}

/// `--clean` replaces data: a terminal must type the target's name, a script must say --yes.
fn confirm_clean(target: &str) -> anyhow::Result<()> {
    // The name as libpq parses it: `postgresql://h/rv_a?sslmode=disable` is rv_a, not `disable`.
    let parsed = if target.contains("://") || target.contains('=') {
        let url: crate::config::DbUrl =
            target.parse().map_err(|e| UsageError(format!("--target is not a connection string: {e}")))?;
        url.dbname().to_string()
    } else {
        target.to_string()
    };
    let name = parsed.as_str();
    if !std::io::stdin().is_terminal() {
        return Err(Refused(format!("--clean replaces the contents of {name}: confirm with --yes")).into());
    }
    eprint!("--clean replaces what the snapshot holds in database {name}. Type its name to go on: ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    if line.trim() == name {
        Ok(())
    } else {
        Err(Refused(format!("not confirmed: {name} was left as it is")).into())
    }
}

async fn cmd_verify(cfg: &Arc<Config>, id: &str, deep: bool, json: bool) -> anyhow::Result<()> {
    let storage = open_storage(cfg).await?;
    let m = snapshot::find(&storage, id).await?;
    let restorer =
        Restorer { storage, tools: PgTools::new(cfg.snapshot.pg_bin_dir.clone()), config: cfg.clone() };
    let progress = Progress::start(format!("verifying {id}"), m.stored_bytes, !json);
    let cancel = CancellationToken::new();
    crate::daemon::signals::cancel_on_terminate(cancel.clone());
    let report = restorer.verify(&m, deep, &progress, &cancel).await?;
    drop(progress);
    let differs = report.deep.as_ref().and_then(|d| d.rows.as_ref()).filter(|r| !r.ok()).map(|r| {
        let first: Vec<String> = r.mismatches.iter().take(3).map(|m| m.text()).collect();
        format!(
            "snapshot {} restored, but its copy differs from the manifest: {}",
            report.id,
            first.join("; ")
        )
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        if let Some(d) = differs {
            anyhow::bail!(d);
        }
        return Ok(());
    }
    println!(
        "snapshot {} is intact: sha256 {} over {}, {} decompressed, {} archive entries",
        report.id,
        &report.sha256[..12.min(report.sha256.len())],
        human_bytes(report.stored_bytes),
        human_bytes(report.raw_bytes),
        report.toc_entries
    );
    if let Some(d) = &report.deep {
        println!(
            "deep: restored into {} on the {} scratch server ({} tables) in {:.1}s and dropped it",
            d.scratch_database, d.scratch_server, d.tables, d.seconds
        );
        if let Some(r) = &d.rows {
            println!(
                "rows: {} tables compared with the manifest ({} rows as dumped), {} differ",
                r.tables,
                r.rows,
                r.mismatches.len()
            );
        }
    }
    if let Some(d) = differs {
        anyhow::bail!(d);
    }
    Ok(())
}

async fn cmd_drill(cfg: &Arc<Config>, db: Option<&str>, json: bool) -> anyhow::Result<()> {
    let d = one_database(cfg, db)?;
    let restorer = Restorer {
        storage: open_storage(cfg).await?,
        tools: PgTools::new(cfg.snapshot.pg_bin_dir.clone()),
        config: cfg.clone(),
    };
    let cancel = CancellationToken::new();
    crate::daemon::signals::cancel_on_terminate(cancel.clone());
    let report = restorer.drill(&d.name, &cancel).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    if !report.ok {
        anyhow::bail!("restore drill of {} failed: {}", d.name, report.error.unwrap_or_default());
    }
    Ok(())
}

async fn cmd_prune(cfg: &Config, db: Option<&str>, dry_run: bool, json: bool) -> anyhow::Result<()> {
    let storage = open_storage(cfg).await?;
    let names: Vec<&str> = match db {
        Some(n) => vec![database(cfg, n)?.name.as_str()],
        None => cfg.databases.iter().map(|d| d.name.as_str()).collect(),
    };
    let report = snapshot::prune(&storage, &cfg.snapshot.retention, &names, dry_run).await?;
    let failed = (!report.errors.is_empty()).then(|| {
        format!("{} snapshot(s) could not be deleted: {}", report.errors.len(), report.errors.join("; "))
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        if let Some(f) = failed {
            anyhow::bail!(f);
        }
        return Ok(());
    }
    let verb = if dry_run { "would delete" } else { "deleted" };
    let mut rows = vec![vec!["ID".to_string(), "DATABASE".into(), "ACTION".into(), "WHY KEPT".into()]];
    for d in &report.decisions {
        let action = if d.keep { "keep" } else { verb };
        rows.push(vec![d.id.clone(), d.database.clone(), action.into(), d.reasons.join(", ")]);
    }
    print!("{}", table(&rows));
    let gone = report.decisions.iter().filter(|d| !d.keep).count();
    let kept = report.decisions.len() - gone;
    if dry_run {
        println!("{gone} snapshot(s) to delete (dry run), {kept} kept");
    } else {
        println!("{gone} snapshot(s) deleted, {kept} kept");
    }
    if let Some(f) = failed {
        anyhow::bail!(f);
    }
    Ok(())
}

/// One database: `--db`, or the only one configured.
fn one_database<'a>(cfg: &'a Config, db: Option<&str>) -> Result<&'a DatabaseConfig, UsageError> {
    match (db, cfg.databases.as_slice()) {
        (Some(n), _) => database(cfg, n),
        (None, [only]) => Ok(only),
        (None, _) => Err(UsageError("several databases are configured: name one with --db".into())),
    }
}

async fn cmd_rehearse(
    cfg: &Arc<Config>,
    db: Option<&str>,
    opts: &crate::rehearse::Options,
    json: bool,
) -> anyhow::Result<()> {
    let d = one_database(cfg, db)?;
    let rehearser = crate::rehearse::Rehearser { config: Arc::clone(cfg), storage: open_storage(cfg).await? };
    let cancel = CancellationToken::new();
    crate::daemon::signals::cancel_on_terminate(cancel.clone());
    let report = rehearser.rehearse(d, opts, &cancel).await?;
    if report.source_changed {
        // Sent from here as the daemon would; waited for (bounded by the notifier's retries).
        let tasks = tokio_util::task::TaskTracker::new();
        let notifier = crate::daemon::webhook::Notifier::new(cfg.notify.clone(), tasks.clone());
        notifier.send("rehearse_touched_source", &d.name, crate::rehearse::touched_detail(&report));
        tasks.close();
        tasks.wait().await;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    if let Some(p) = &report.problem {
        anyhow::bail!("rehearsal of {} failed: {p}", d.name);
    }
    if !report.ok {
        anyhow::bail!("the rehearsed deploy of {} failed (see above)", d.name);
    }
    Ok(())
}
