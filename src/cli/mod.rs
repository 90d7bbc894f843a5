//! The command line: parsing, logging set-up, and the one place where errors become exit
//! codes (0 ok, 1 failed, 2 bad usage or configuration, 3 refused for safety).

mod commands;
mod context;
mod diagnose;
mod fleet;
mod lint;
mod output;
mod remote;
mod repair;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{ConfigError, DEFAULT_CONFIG_PATH};
use crate::restore::RestoreError;
use crate::snapshot::SnapshotError;

pub use output::human_bytes;

#[derive(Debug, Parser)]
#[command(name = "pgmedic", version, about = "Snapshots, migration repair and restore for PostgreSQL hosts")]
pub struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = "PGMEDIC_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: schedules, control socket, signals, metrics.
    Daemon,
    /// Ask the running daemon for its state.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Every installation sharing the storage, from the heartbeats their daemons write: host,
    /// version, up or down, and per database the last snapshot, migration state, repair, drill.
    Fleet {
        #[arg(long)]
        json: bool,
    },
    /// Load and validate the configuration, print the effective result (secrets redacted).
    CheckConfig,
    /// Take a snapshot now (through the daemon when its socket answers, else in-process).
    Snapshot {
        /// A `[[databases]]` name; every database when absent.
        #[arg(long)]
        db: Option<String>,
        #[arg(long, default_value = "manual")]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    /// List complete snapshots, oldest first.
    Snapshots {
        #[arg(long)]
        db: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Restore a snapshot into a database; refuses a non-empty target unless --clean.
    Restore {
        snapshot_id: String,
        /// A database name on the snapshot's server, or a connection URL.
        #[arg(long)]
        target: String,
        /// Create the target database when it does not exist.
        #[arg(long)]
        create: bool,
        /// Replace what the snapshot holds in a non-empty target (needs --yes or a typed confirmation).
        #[arg(long)]
        clean: bool,
        /// Parallel pg_restore jobs (decompresses to a file in the state directory first).
        #[arg(long, default_value_t = 1)]
        jobs: u32,
        /// Make the restoring user own everything and skip grants, for a cluster that lacks
        /// the snapshot's roles.
        #[arg(long)]
        no_owner: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        #[arg(long)]
        json: bool,
    },
    /// Re-hash a stored snapshot and read its table of contents; --deep also restores it into a scratch database.
    Verify {
        snapshot_id: String,
        #[arg(long)]
        deep: bool,
        #[arg(long)]
        json: bool,
    },
    /// Restore drill: the newest snapshot restored on the scratch server and every table's rows
    /// compared with its manifest; exit 1 when it does not restore or differs.
    Drill {
        #[arg(long)]
        db: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Read the migrations table: applied, failed, rolled back, with the failure log.
    Migrations {
        #[arg(long)]
        db: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Explain each failed or crashed migration: its log, every statement's verdict against the
    /// live catalog, the rows of what it created, the schema change since the newest snapshot
    /// before it, and two drafted playbooks (finish, undo).
    Diagnose {
        #[arg(long)]
        db: Option<String>,
        /// This migration (whatever its state) instead of every failed or crashed one.
        #[arg(long)]
        migration: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Restore a snapshot into a scratch database, run the deploy against it, report, drop it;
    /// exit 0 when the deploy succeeded, 1 when it failed.
    Rehearse {
        #[arg(long)]
        db: Option<String>,
        /// Rehearse on this snapshot (any age) instead of the newest.
        #[arg(long, conflicts_with = "fresh")]
        snapshot: Option<String>,
        /// Take a new snapshot first.
        #[arg(long)]
        fresh: bool,
        /// Keep the scratch database afterwards (its name is printed).
        #[arg(long)]
        keep: bool,
        #[arg(long)]
        json: bool,
        /// The deploy command (argv, no shell); `databases.migrations.rehearse_command` when absent.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell), generated from this CLI.
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff), generated from this CLI.
    #[command(hide = true)]
    Man,
    /// Check migration files before they run: every one under --dir, or the pending ones of
    /// --db against its live schema; exit 1 when a finding is an error.
    Lint {
        #[arg(long)]
        db: Option<String>,
        /// The migrations folder (`<dir>/<name>/migration.sql`); the database's configured one by default.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        #[arg(long, conflicts_with = "format")]
        json: bool,
        /// `github` prints GitHub Actions annotations.
        #[arg(long, value_enum, default_value = "text")]
        format: lint::Format,
    },
    /// Run the matching playbook for a failed migration now (snapshot first, then its steps).
    Repair {
        #[arg(long)]
        db: Option<String>,
        /// Use this playbook (it must still match the failure).
        #[arg(long)]
        playbook: Option<String>,
        /// Print the playbook and the steps it would run; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Print the audit trail of repair runs.
    Audit {
        #[arg(long)]
        db: Option<String>,
        /// Only runs that started within this long, e.g. 7d or 12h.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Apply the retention policy.
    Prune {
        #[arg(long)]
        db: Option<String>,
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
}

/// A bad command line that clap could not catch (an unknown `--db`, say): exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The operator did not confirm something destructive: exit 3.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Memory that is freed goes back to the system. glibc would otherwise raise its mmap threshold
/// to the size of the multipart buffers once one is freed, serve the next ones from the heap,
/// and keep an arena per thread: the daemon's resident memory would ratchet up to several
/// uploads' worth and stay there, on the host whose memory belongs to PostgreSQL.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 512 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Parses arguments, runs the command, and returns the exit code.
pub fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PGMEDIC_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The error and its causes, each said once (our messages often already include their source).
pub fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    text
}

pub fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.is::<ConfigError>() || cause.is::<UsageError>() {
            return 2;
        }
        if cause.is::<Refused>()
            || cause.downcast_ref::<SnapshotError>().is_some_and(SnapshotError::is_refusal)
            || cause.downcast_ref::<RestoreError>().is_some_and(RestoreError::is_refusal)
            || cause
                .downcast_ref::<crate::repair::RepairError>()
                .is_some_and(crate::repair::RepairError::is_refusal)
            || cause
                .downcast_ref::<crate::rehearse::RehearseError>()
                .is_some_and(crate::rehearse::RehearseError::is_refusal)
        {
            return 3;
        }
    }
    1
}
