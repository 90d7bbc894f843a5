//! Migration tools, one file per tool: each dialect owns everything tool-specific — its table
//! (recognised by its columns), reading and classifying rows, telling "in progress" from "stuck"
//! (its advisory key or lock row, and live sessions), where a migration's SQL file is, and its
//! recovery written exactly as the tool's own command writes it. The watcher, the repair runner,
//! `migrations`, `diagnose` and the audit only see this trait.

mod alembic;
mod auto;
mod dbmate;
mod django;
mod drizzle;
mod flyway;
mod golang_migrate;
mod half;
pub mod indexes;
mod knex;
mod liquibase;
mod live;
mod node_pg_migrate;
mod prisma;
mod rails;
mod row;
mod sequelize;
mod sqlx;
mod typeorm;

use std::path::PathBuf;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::{MigrationsConfig, ResolveAs};
use crate::pg::{quote_ident, DbError, Session};

pub use auto::detect;
pub use golang_migrate::advisory_key as golang_migrate_key;
pub use prisma::PRISMA_LOCK;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Applied,
    /// Blocks every deploy (Prisma's P3009, a failed Flyway or sqlx row) until repaired.
    Failed,
    RolledBack,
    /// The tool's lock is held by a live session, or a backend still runs the migration.
    InProgress,
    /// No log and nobody holds the lock: the deploying process died.
    Crashed,
    /// A lock row held by no live migrator (knex, Liquibase): every deploy waits or fails.
    Locked,
    /// golang-migrate's `dirty` version: the migration began and did not finish.
    Dirty,
    /// An applied migration whose file changed since (a checksum that no longer matches).
    Drifted,
    /// Not recorded as applied, yet some of its effects are in the catalog: a non-transactional
    /// migration that failed or was killed half way (the tool wrote nothing), or a pending
    /// migration whose objects already exist. Every next deploy fails "already exists".
    HalfApplied,
    /// In `dir` and not recorded, with nothing of it in the catalog: only `diagnose --migration`
    /// shows one (why the tool's next run fails, from the server log).
    Pending,
}

impl Status {
    /// The states that stop deploys until someone acts.
    pub fn needs_repair(self) -> bool {
        matches!(
            self,
            Status::Failed
                | Status::Crashed
                | Status::Locked
                | Status::Dirty
                | Status::Drifted
                | Status::HalfApplied
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Migration {
    pub id: String,
    pub name: String,
    pub status: Status,
    pub checksum: String,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub rolled_back_at: Option<DateTime<Utc>>,
    pub applied_steps_count: i32,
    pub logs: Option<String>,
    /// For a half-applied code migration: the snapshot whose schema it was judged against (the
    /// oldest whose recorded migrations are today's), which diagnose replays on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub judged_against: Option<String>,
}

impl Migration {
    /// The tool's own error text, where the tool stored one: a half-applied migration's `logs`
    /// are pgmedic's finding, and carry no SQLSTATE of the failure.
    pub fn tool_log(&self) -> Option<&str> {
        self.logs.as_deref().filter(|_| self.status != Status::HalfApplied)
    }

    /// A row with only a name, a state and a note (lock rows, other tools' rows).
    pub fn bare(name: impl Into<String>, status: Status, logs: Option<String>) -> Migration {
        Migration {
            id: String::new(),
            name: name.into(),
            status,
            checksum: String::new(),
            started_at: None,
            finished_at: None,
            rolled_back_at: None,
            applied_steps_count: 0,
            logs,
            judged_against: None,
        }
    }
}

/// What the watcher saw: rows, or a state that is not a crash.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TableState {
    Rows {
        migrations: Vec<Migration>,
    },
    /// The table does not exist (no migration has ever run).
    Missing,
    /// The server is a standby: it cannot be repaired, only its primary.
    Standby,
    /// `tool = "auto"` found a migrations table it cannot read: `like` names the tool it looks
    /// like (one pgmedic does not read yet), or none when only its name is a tool's.
    Unrecognised {
        table: String,
        columns: Vec<String>,
        like: Option<String>,
    },
}

impl TableState {
    pub fn needing_repair(&self) -> Vec<&Migration> {
        match self {
            TableState::Rows { migrations } => {
                migrations.iter().filter(|m| m.status.needs_repair()).collect()
            }
            _ => Vec::new(),
        }
    }
}

/// A step's failure, in words for the audit record.
pub type StepResult = Result<String, String>;

#[async_trait]
pub trait Dialect: Send + Sync {
    fn tool(&self) -> &'static str;
    fn place(&self) -> &Place;
    fn schema(&self) -> &str {
        &self.place().schema
    }
    fn table(&self) -> &str {
        &self.place().table
    }
    /// The schema of the tool's own table (usually `schema`).
    fn table_schema(&self) -> &str {
        self.place().table_schema.as_deref().unwrap_or(self.schema())
    }
    fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(self.table_schema()), quote_ident(self.table()))
    }
    /// The tables the tool's own steps (resolve, release_lock, accept_checksums) write: its
    /// table, and its lock table when it keeps one. A scoped pre-repair snapshot holds them.
    fn own_tables(&self) -> Vec<crate::snapshot::ScopedTable> {
        vec![crate::snapshot::ScopedTable { schema: self.table_schema().into(), table: self.table().into() }]
    }
    /// One cheap read of the table, classified (files in `migrations.dir` give checksums).
    async fn read(&self, session: &Session) -> Result<TableState, DbError>;
    /// Every row as JSON, for audit records and manifests.
    async fn raw_rows(&self, session: &Session) -> Result<Vec<serde_json::Value>, DbError> {
        Ok(session.table_rows(self.table_schema(), self.table(), "1").await?.unwrap_or_default())
    }
    /// The session-level advisory lock the tool holds while it migrates, which a repair holds
    /// too so the tool cannot run meanwhile; None when the tool has none.
    fn advisory_key(&self, database: &str) -> Option<i64>;
    /// Whether a snapshot's recorded rows show `m` already attempted (for diagnose's baseline).
    fn attempted(&self, rows: &[serde_json::Value], m: &Migration) -> bool;
    /// The SQL file of a migration, when the tool keeps one per migration in `dir`.
    fn file(&self, _m: &Migration) -> Option<PathBuf> {
        None
    }
    /// The part of a migration file the tool runs going up (dbmate's `-- migrate:up` section).
    fn up_sql(&self, text: &str) -> String {
        text.to_string()
    }
    /// The migrations in `dir` the table does not record, in the order the tool would run them,
    /// each named as the tool would record it (`half_applied` looks at the first).
    fn pending(&self, _recorded: &[Migration]) -> Vec<Migration> {
        Vec::new()
    }
    /// The file of a migration written as code (knex's JavaScript): its SQL is unknown, but the
    /// names it mentions corroborate what a half-applied run left.
    fn code_file(&self, _m: &Migration) -> Option<PathBuf> {
        None
    }
    /// The name `sql_command`'s `{name}` stands for (Django's module without its app).
    fn command_name(&self, m: &Migration) -> String {
        m.name.clone()
    }
    /// The migration before `m`, for `sql_command`'s `{prev}` (Alembic's down_revision).
    fn command_prev(&self, _m: &Migration) -> Option<String> {
        None
    }
    /// Whether a snapshot's recorded rows are exactly today's applied migrations.
    fn same_rows(&self, rows: &[serde_json::Value], applied: &[&Migration]) -> bool {
        rows.len() == applied.len() && applied.iter().all(|a| self.attempted(rows, a))
    }
    /// Whether the tool runs a file in one transaction (so a failure applied none or all of it).
    fn atomic(&self) -> bool {
        false
    }
    /// Whether the file (`text`) changed since the tool recorded `m`; None when it cannot tell.
    fn file_changed(&self, _m: &Migration, _text: &str) -> Option<bool> {
        None
    }
    /// `resolve = "applied" | "rolled-back"`, exactly as the tool's own command.
    async fn resolve(
        &self,
        _s: &Session,
        _cfg: &MigrationsConfig,
        _m: &Migration,
        _how: ResolveAs,
    ) -> StepResult {
        Err(format!("{} has no resolve of its own", self.tool()))
    }
    /// `release_lock = true`, exactly as the tool's own command; only with no live migrator.
    async fn release_lock(&self, _s: &Session) -> StepResult {
        Err(format!("{} keeps no lock row to release", self.tool()))
    }
    /// `accept_checksums = true`: the stored checksums realigned with the files.
    async fn accept_checksums(&self, _s: &Session, _cfg: &MigrationsConfig) -> StepResult {
        Err(format!("{} keeps no checksums to accept", self.tool()))
    }
}

/// Where a dialect's table is, and the migration files when configured.
#[derive(Debug, Clone)]
pub struct Place {
    pub schema: String,
    pub table: String,
    pub dir: Option<PathBuf>,
    /// Where the tool's table is, when not in `schema` (drizzle).
    pub table_schema: Option<String>,
}

impl Place {
    /// The migration folder's files that `pick` keeps, as it maps them (from the file's name and
    /// path), sorted; none without a folder or when it cannot be read.
    pub fn scan<T: Ord>(&self, mut pick: impl FnMut(String, PathBuf) -> Option<T>) -> Vec<T> {
        let Some(dir) = &self.dir else { return Vec::new() };
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                // Without its files no pending or half-applied migration can be seen: say so,
                // once per folder (this runs every watch tick).
                if first_failure(dir) {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot read databases.migrations.dir: pending and half-applied migrations cannot be seen until it can be read; check the path and its permissions");
                }
                return Vec::new();
            }
        };
        let mut out: Vec<T> = entries
            .filter_map(Result::ok)
            .filter_map(|e| pick(e.file_name().to_string_lossy().into_owned(), e.path()))
            .collect();
        out.sort();
        out
    }
}

/// True the first time `dir` could not be read (in this process).
fn first_failure(dir: &std::path::Path) -> bool {
    static SEEN: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<PathBuf>>> =
        std::sync::OnceLock::new();
    let mut seen = SEEN.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    seen.insert(dir.to_path_buf())
}

/// The dialect of `[databases.migrations]` (validation has already refused unknown tools).
pub fn dialect(cfg: &MigrationsConfig) -> Box<dyn Dialect> {
    let at = Place {
        schema: cfg.schema.clone(),
        table: cfg.table.clone(),
        dir: cfg.dir.clone(),
        table_schema: cfg.table_schema.clone(),
    };
    by_tool(&cfg.tool, at)
}

fn by_tool(tool: &str, at: Place) -> Box<dyn Dialect> {
    match tool {
        "golang-migrate" => Box::new(golang_migrate::GolangMigrate(at)),
        "knex" => Box::new(knex::Knex(at)),
        "dbmate" => Box::new(dbmate::Dbmate(at)),
        "node-pg-migrate" => Box::new(node_pg_migrate::NodePgMigrate(at)),
        "drizzle" => Box::new(drizzle::Drizzle(at)),
        "sequelize" => Box::new(sequelize::Sequelize(at)),
        "typeorm" => Box::new(typeorm::TypeOrm(at)),
        "django" => Box::new(django::Django(at)),
        "alembic" => Box::new(alembic::Alembic(at)),
        "rails" => Box::new(rails::Rails(at)),
        "liquibase" => Box::new(liquibase::Liquibase(at)),
        "sqlx" => Box::new(sqlx::Sqlx(at)),
        "flyway" => Box::new(flyway::Flyway(at)),
        "auto" => Box::new(auto::Auto::new(at)),
        _ => Box::new(prisma::Prisma(at)),
    }
}

/// Reads `db`'s table once: standby and missing table are states, not errors.
/// Column `i` of a row of a tool's table, or why it cannot be read as what the tool writes (a
/// NULL, another type): an error that shows as the table's state, never a panic.
pub(crate) fn cell<'a, T: tokio_postgres::types::FromSql<'a>>(
    session: &Session,
    table: &str,
    row: &'a tokio_postgres::Row,
    i: usize,
) -> Result<T, DbError> {
    row.try_get(i).map_err(|e| {
        let column = row.columns().get(i).map(|c| c.name().to_string()).unwrap_or_else(|| i.to_string());
        DbError::Query {
            target: session.target().to_string(),
            what: "read the migrations table",
            message: format!("column {column} of {table} is not what the tool writes ({e}); pgmedic cannot read this table: check `tool` in [databases.migrations], or fix that row with the tool's own command"),
        }
    })
}

pub async fn read(session: &Session, dialect: &dyn Dialect) -> Result<TableState, DbError> {
    if session.is_in_recovery().await? {
        return Ok(TableState::Standby);
    }
    let mut state = read_table(session, dialect).await?;
    if let TableState::Rows { migrations } = &mut state {
        if let Some(m) = half::detect(session, dialect, migrations).await? {
            migrations.push(m);
        }
    }
    Ok(state)
}

async fn read_table(session: &Session, dialect: &dyn Dialect) -> Result<TableState, DbError> {
    dialect.read(session).await.map_err(|e| match e {
        // A table of the tool's name without its columns: say which table, and what to check.
        DbError::Query { target, what, message }
            if message.contains("does not exist") && message.contains("column") =>
        {
            DbError::Query {
                target,
                what,
                message: format!(
                    "{message}: {} is not {}'s table; check `tool` and `table` in [databases.migrations]",
                    dialect.qualified(),
                    dialect.tool()
                ),
            }
        }
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::{first_failure, Place};

    fn place(dir: &std::path::Path) -> Place {
        Place { schema: "public".into(), table: "t".into(), dir: Some(dir.into()), table_schema: None }
    }

    #[test]
    fn scan_keeps_what_pick_keeps_sorted_and_warns_once_for_an_unreadable_folder() {
        let tmp = tempfile::tempdir().unwrap();
        for f in ["2_b.sql", "1_a.sql", "notes.txt"] {
            std::fs::write(tmp.path().join(f), "").unwrap();
        }
        let got = place(tmp.path()).scan(|name, _| name.strip_suffix(".sql").map(str::to_string));
        assert_eq!(got, ["1_a", "2_b"]);
        let missing = tmp.path().join("missing");
        assert!(place(&missing).scan(|n, _| Some(n)).is_empty());
        // The scan above already met the missing folder: it is not warned about again.
        assert!(!first_failure(&missing));
        assert!(first_failure(&tmp.path().join("another")));
    }
}
