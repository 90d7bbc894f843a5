//! Prisma's `_prisma_migrations`: failed rows have neither `finished_at` nor `rolled_back_at`;
//! a row without logs is in progress while another session holds advisory lock 72707369 (the
//! lock `prisma migrate` takes), and crashed otherwise.

use async_trait::async_trait;

use super::{Dialect, Migration, Status, TableState};
use crate::pg::{quote_ident, DbError, Session};

/// The advisory lock Prisma holds while it migrates or resolves.
pub const PRISMA_LOCK: i64 = 72707369;

pub struct Prisma {
    pub schema: String,
    pub table: String,
}

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
        status,
    })
}

impl Prisma {
    fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }
}

#[async_trait]
impl Dialect for Prisma {
    fn tool(&self) -> &'static str {
        "prisma"
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
        let migrations = rows.iter().map(|r| row(r).map_err(bad)).collect::<Result<_, _>>()?;
        Ok(TableState::Rows { migrations })
    }

    async fn raw_rows(&self, session: &Session) -> Result<Vec<serde_json::Value>, DbError> {
        Ok(session
            .table_rows(&self.schema, &self.table, "started_at, migration_name")
            .await?
            .unwrap_or_default())
    }
}
