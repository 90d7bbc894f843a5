//! Prisma's `_prisma_migrations`: failed rows have neither `finished_at` nor `rolled_back_at`;
//! a row without logs is in progress while another session holds advisory lock 72707369 (the
//! lock `prisma migrate` takes), and crashed otherwise; an applied row whose file's SHA-256 is
//! not its checksum has drifted.
//!
//! `resolve` has exactly `prisma migrate resolve`'s semantics. Rolled back: every failed row of
//! the migration gets `rolled_back_at = now()` (P3011 when no row has that name, P3012 when none
//! is failed). Applied: the same, then a new row with a fresh UUID, the SHA-256 of
//! `<dir>/<name>/migration.sql` (or the failed row's checksum when no dir is configured), empty
//! logs, `started_at = finished_at = now()` and 0 applied steps (P3008 when it is already
//! applied, P3017 when its folder is missing). One transaction, parameterised.

use std::path::PathBuf;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use super::{Dialect, Migration, Place, Status, StepResult, TableState};
use crate::config::{MigrationsConfig, ResolveAs};
use crate::pg::{error_text, quote_ident, DbError, Session};

/// The advisory lock Prisma holds while it migrates or resolves.
pub const PRISMA_LOCK: i64 = 72707369;

pub struct Prisma(pub Place);

type Timestamp = Option<chrono::DateTime<chrono::Utc>>;

/// One row, classified. Data from the database never panics: a NULL where Prisma's schema has
/// NOT NULL is read as empty, a column of another type is an error.
fn row(r: &tokio_postgres::Row) -> Result<Migration, tokio_postgres::Error> {
    let (finished, rolled_back): (Timestamp, Timestamp) = (r.try_get(4)?, r.try_get(5)?);
    let logs: Option<String> = r.try_get(7)?;
    let locked: Option<bool> = r.try_get(8)?;
    let status = match (finished, rolled_back, &logs) {
        (_, Some(_), _) => Status::RolledBack,
        (Some(_), None, _) => Status::Applied,
        (None, None, Some(_)) => Status::Failed,
        (None, None, None) if locked == Some(true) => Status::InProgress,
        (None, None, None) => Status::Crashed,
    };
    Ok(Migration {
        id: r.try_get::<_, Option<String>>(0)?.unwrap_or_default(),
        name: r.try_get::<_, Option<String>>(1)?.unwrap_or_default(),
        checksum: r.try_get::<_, Option<String>>(2)?.unwrap_or_default(),
        started_at: r.try_get(3)?,
        finished_at: finished,
        rolled_back_at: rolled_back,
        applied_steps_count: r.try_get::<_, Option<i32>>(6)?.unwrap_or_default(),
        logs,
        judged_against: None,
        status,
    })
}

impl Prisma {
    /// Applied rows whose file no longer hashes to their checksum.
    fn drift(&self, m: &mut Migration) {
        if m.status != Status::Applied {
            return;
        }
        if let Some(bytes) = self.file(m).and_then(|p| std::fs::read(p).ok()) {
            let sum = hex::encode(Sha256::digest(&bytes));
            if sum != m.checksum {
                m.status = Status::Drifted;
                m.logs = Some(format!("migration.sql hashes to {sum}, the table records {}", m.checksum));
            }
        }
    }
}

#[async_trait]
impl Dialect for Prisma {
    fn tool(&self) -> &'static str {
        "prisma"
    }

    /// The row's checksum is the SHA-256 of migration.sql as it was deployed.
    fn file_changed(&self, m: &Migration, text: &str) -> Option<bool> {
        (!m.checksum.is_empty()).then(|| hex::encode(Sha256::digest(text.as_bytes())) != m.checksum)
    }

    fn place(&self) -> &Place {
        &self.0
    }

    fn advisory_key(&self, _database: &str) -> Option<i64> {
        Some(PRISMA_LOCK)
    }

    fn attempted(&self, rows: &[serde_json::Value], m: &Migration) -> bool {
        rows.iter().any(|r| {
            r.get("migration_name").and_then(|v| v.as_str()) == Some(m.name.as_str())
                && r.get("rolled_back_at").is_none_or(|v| v.is_null())
        })
    }

    fn file(&self, m: &Migration) -> Option<PathBuf> {
        let dir = self.0.dir.as_ref()?;
        (!m.name.contains('/') && !m.name.contains("..")).then(|| dir.join(&m.name).join("migration.sql"))
    }

    async fn resolve(
        &self,
        s: &Session,
        cfg: &MigrationsConfig,
        m: &Migration,
        how: ResolveAs,
    ) -> StepResult {
        resolve_rows(s, cfg, &m.name, how).await
    }

    async fn read(&self, session: &Session) -> Result<TableState, DbError> {
        if !session.relation_exists(&self.qualified()).await? {
            return Ok(TableState::Missing);
        }
        // One query: the rows, and whether another session holds Prisma's lock.
        let sql = format!(
            "SELECT id, migration_name, checksum, started_at, finished_at, rolled_back_at, applied_steps_count, logs, \
                    EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = 0 AND objid = {PRISMA_LOCK} \
                            AND objsubid = 1 AND granted AND pid <> pg_backend_pid() \
                            AND database = (SELECT oid FROM pg_database WHERE datname = current_database())) \
             FROM {} ORDER BY started_at, migration_name",
            self.qualified()
        );
        let rows = session.query(&sql, "read the migrations table").await?;
        let bad = |e: tokio_postgres::Error| DbError::Query {
            target: session.target().to_string(),
            what: "read the migrations table",
            message: format!("{} has a column pgmedic cannot read as Prisma's: {e}", self.qualified()),
        };
        let mut migrations: Vec<Migration> =
            rows.iter().map(|r| row(r).map_err(bad)).collect::<Result<_, _>>()?;
        migrations.iter_mut().for_each(|m| self.drift(m));
        Ok(TableState::Rows { migrations })
    }

    async fn raw_rows(&self, session: &Session) -> Result<Vec<serde_json::Value>, DbError> {
        Ok(session
            .table_rows(self.schema(), self.table(), "started_at, migration_name")
            .await?
            .unwrap_or_default())
    }
}

// --- resolve, as `prisma migrate resolve` writes it ---

const FAILED: &str = "finished_at IS NULL AND rolled_back_at IS NULL";

async fn resolve_rows(
    session: &Session,
    cfg: &MigrationsConfig,
    name: &str,
    how: ResolveAs,
) -> Result<String, String> {
    let table = format!("{}.{}", quote_ident(&cfg.schema), quote_ident(&cfg.table));
    let checksum = match how {
        ResolveAs::Applied => Some(local_checksum(cfg, name).await?).filter(|c| !c.is_empty()),
        ResolveAs::RolledBack | ResolveAs::FromDiagnosis => None,
    };
    let c = session.client();
    c.batch_execute("BEGIN").await.map_err(|e| error_text(&e))?;
    let result = resolve_in_tx(session, &table, name, how, checksum).await;
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    c.batch_execute(end).await.map_err(|e| error_text(&e))?;
    result
}

async fn resolve_in_tx(
    session: &Session,
    table: &str,
    name: &str,
    how: ResolveAs,
    checksum: Option<String>,
) -> Result<String, String> {
    let c = session.client();
    let q = |e: tokio_postgres::Error| error_text(&e);
    let counts = format!(
        "SELECT count(*), count(*) FILTER (WHERE {FAILED}), count(*) FILTER (WHERE finished_at IS NOT NULL AND rolled_back_at IS NULL), \
                (array_agg(checksum ORDER BY started_at DESC) FILTER (WHERE {FAILED}))[1] \
         FROM {table} WHERE migration_name = $1"
    );
    let row = c.query_one(&counts, &[&name]).await.map_err(q)?;
    let (all, failed, applied, failed_checksum): (i64, i64, i64, Option<String>) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    if how == ResolveAs::Applied && applied > 0 {
        return Err(format!("P3008: migration `{name}` is already recorded as applied"));
    }
    if how == ResolveAs::RolledBack && all == 0 {
        return Err(format!("P3011: no migration `{name}` in the table"));
    }
    if how == ResolveAs::RolledBack && failed == 0 {
        return Err(format!("P3012: migration `{name}` is not in a failed state"));
    }
    let marked = c
        .execute(
            &format!("UPDATE {table} SET rolled_back_at = now() WHERE migration_name = $1 AND {FAILED}"),
            &[&name],
        )
        .await
        .map_err(q)?;
    if how == ResolveAs::RolledBack {
        return Ok(format!("marked {marked} failed row(s) of {name} rolled back"));
    }
    let checksum = checksum.or(failed_checksum).ok_or_else(|| {
        format!("no checksum for `{name}`: configure databases.migrations.dir or keep its failed row")
    })?;
    let id = uuid::Uuid::new_v4().to_string();
    let insert = format!(
        "INSERT INTO {table} (id, checksum, finished_at, migration_name, logs, rolled_back_at, started_at, applied_steps_count) \
         VALUES ($1, $2, now(), $3, '', NULL, now(), 0)"
    );
    c.execute(&insert, &[&id, &checksum, &name]).await.map_err(q)?;
    Ok(format!("marked {marked} failed row(s) of {name} rolled back and recorded it applied (id {id}, checksum {checksum})"))
}

/// The SHA-256 of the local migration.sql, when `dir` is configured (P3017 when it is missing).
async fn local_checksum(cfg: &MigrationsConfig, name: &str) -> Result<String, String> {
    let Some(dir) = &cfg.dir else { return Ok(String::new()) };
    if name.contains('/') || name.contains("..") {
        return Err(format!("migration name `{name}` is not a folder name"));
    }
    let path = dir.join(name).join("migration.sql");
    let bytes =
        tokio::fs::read(&path).await.map_err(|e| format!("P3017: cannot read {}: {e}", path.display()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}
