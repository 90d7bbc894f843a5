//! A SQL session on one database and the catalogue queries pgmedic needs. Errors name the
//! database (never its password) and carry the server's message.

use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

use crate::config::{DbUrl, SslMode};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to {target}: {message}")]
    Connect { target: String, message: String, missing_database: bool },
    #[error("query on {target} failed ({what}): {message}")]
    Query { target: String, what: &'static str, message: String },
}

/// The full text of a driver error, including the server's message and detail.
pub fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{}: {}", db.severity(), db.message());
            if let Some(d) = db.detail() {
                s.push_str(&format!(" ({d})"));
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(&format!(": {inner}"));
                src = inner.source();
            }
            s
        }
    }
}

pub struct Session {
    client: Client,
    target: String,
    conn: JoinHandle<()>,
}

pub async fn connect(url: &DbUrl) -> Result<Session, DbError> {
    let target = url.display_target();
    let mut config = url.pg_config().clone();
    if config.get_application_name().is_none() {
        // Names the holder of a lock in another pgmedic's refusal, across hosts.
        config.application_name(format!("pgmedic@{}:{}", crate::snapshot::hostname(), std::process::id()));
    }
    let connect_err = |e: tokio_postgres::Error| DbError::Connect {
        target: target.clone(),
        message: error_text(&e),
        missing_database: e.code() == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME),
    };
    let (client, conn) = if url.tls().mode == SslMode::Disable {
        let (client, connection) = config.connect(NoTls).await.map_err(connect_err)?;
        (client, tokio::spawn(drive(connection)))
    } else {
        let tls = super::tls::connector(url.tls()).map_err(|message| DbError::Connect {
            target: target.clone(),
            message,
            missing_database: false,
        })?;
        let (client, connection) = config.connect(tls).await.map_err(connect_err)?;
        (client, tokio::spawn(drive(connection)))
    };
    Ok(Session { client, target, conn })
}

async fn drive<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(connection: F) {
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, "database connection closed");
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// `"name"` with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Session {
    pub fn err(&self, what: &'static str, e: tokio_postgres::Error) -> DbError {
        DbError::Query { target: self.target.clone(), what, message: error_text(&e) }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    pub async fn query(&self, sql: &str, what: &'static str) -> Result<Vec<tokio_postgres::Row>, DbError> {
        self.client.query(sql, &[]).await.map_err(|e| self.err(what, e))
    }

    pub async fn is_in_recovery(&self) -> Result<bool, DbError> {
        let row = self
            .client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map_err(|e| self.err("check for a standby", e))?;
        Ok(row.get(0))
    }

    pub async fn relation_exists(&self, qualified: &str) -> Result<bool, DbError> {
        let row = (self.client.query_one("SELECT to_regclass($1) IS NOT NULL", &[&qualified]))
            .await
            .map_err(|e| self.err("look up a table", e))?;
        Ok(row.get(0))
    }

    /// The server's major version (15, 18): which client tools may talk to it.
    pub async fn server_major(&self) -> Result<u32, DbError> {
        let row = self
            .client
            .query_one("SELECT current_setting('server_version_num')::int / 10000", &[])
            .await
            .map_err(|e| self.err("server version", e))?;
        Ok(row.get::<_, i32>(0).max(0) as u32)
    }

    pub async fn server_version(&self) -> Result<String, DbError> {
        let row = self
            .client
            .query_one("SHOW server_version", &[])
            .await
            .map_err(|e| self.err("server version", e))?;
        Ok(row.get(0))
    }

    /// Up to five user tables (schema-qualified) and how many there are in all.
    pub async fn user_tables(&self) -> Result<(i64, Vec<String>), DbError> {
        let sql = "SELECT count(*) OVER (), format('%I.%I', n.nspname, c.relname) \
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                   WHERE c.relkind IN ('r', 'p') \
                     AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                     AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
                   ORDER BY 2 LIMIT 5";
        let rows = self.client.query(sql, &[]).await.map_err(|e| self.err("list user tables", e))?;
        let count = rows.first().map(|r| r.get::<_, i64>(0)).unwrap_or(0);
        Ok((count, rows.iter().map(|r| r.get(1)).collect()))
    }

    /// Up to five user objects of any kind a restore could collide with or commit beside (tables,
    /// views, sequences, functions, types, extensions, schemas other than `public`), named with
    /// their kind, and how many there are in all: a database holding only views is not empty.
    pub async fn user_objects(&self) -> Result<(i64, Vec<String>), DbError> {
        let sql = "WITH user_ns AS (                      SELECT oid, nspname FROM pg_namespace                      WHERE nspname NOT IN ('pg_catalog', 'information_schema')                        AND nspname NOT LIKE 'pg\\_toast%' AND nspname NOT LIKE 'pg\\_temp%'),                    extension_objects AS (SELECT objid FROM pg_depend WHERE deptype = 'e'),                    found AS (                      SELECT CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table' WHEN 'v' THEN 'view'                               WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence' WHEN 'f' THEN 'foreign table' END                             || ' ' || format('%I.%I', n.nspname, c.relname) AS what                      FROM pg_class c JOIN user_ns n ON n.oid = c.relnamespace                      WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND c.oid NOT IN (SELECT objid FROM extension_objects)                      UNION ALL                      SELECT 'function ' || format('%I.%I', n.nspname, p.proname) FROM pg_proc p JOIN user_ns n ON n.oid = p.pronamespace                      WHERE p.oid NOT IN (SELECT objid FROM extension_objects)                      UNION ALL                      SELECT 'type ' || format('%I.%I', n.nspname, t.typname) FROM pg_type t JOIN user_ns n ON n.oid = t.typnamespace                      WHERE t.typtype IN ('e', 'd', 'c', 'r', 'm') AND (t.typtype <> 'c' OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')                        AND t.oid NOT IN (SELECT objid FROM extension_objects)                      UNION ALL                      SELECT 'extension ' || extname FROM pg_extension WHERE extname <> 'plpgsql'                      UNION ALL                      SELECT 'schema ' || quote_ident(nspname) FROM user_ns WHERE nspname <> 'public')                    SELECT count(*) OVER (), what FROM found ORDER BY 2 LIMIT 5";
        let rows = self.client.query(sql, &[]).await.map_err(|e| self.err("list user objects", e))?;
        let count = rows.first().map(|r| r.get::<_, i64>(0)).unwrap_or(0);
        Ok((count, rows.iter().map(|r| r.get(1)).collect()))
    }

    /// Every row of `schema.table` as JSON objects, or `None` when the table does not exist.
    pub async fn table_rows(
        &self,
        schema: &str,
        table: &str,
        order_by: &str,
    ) -> Result<Option<Vec<serde_json::Value>>, DbError> {
        let qualified = format!("{}.{}", quote_ident(schema), quote_ident(table));
        let exists = self
            .client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&qualified])
            .await
            .map_err(|e| self.err("look up the migrations table", e))?;
        if !exists.get::<_, bool>(0) {
            return Ok(None);
        }
        let sql = format!("SELECT to_jsonb(t) FROM {qualified} t ORDER BY {order_by}");
        let rows =
            self.client.query(&sql, &[]).await.map_err(|e| self.err("read the migrations table", e))?;
        Ok(Some(rows.iter().map(|r| r.get(0)).collect()))
    }

    /// Makes this session safe to hold a lock while idle through a long dump: no idle,
    /// statement or lock timeout of the database's or role's defaults can end it.
    pub async fn immune_to_timeouts(&self) -> Result<(), DbError> {
        let sql = "SELECT set_config('statement_timeout', '0', false), \
                          set_config('lock_timeout', '0', false), \
                          set_config('idle_in_transaction_session_timeout', '0', false); \
                   SELECT set_config('idle_session_timeout', '0', false) \
                   WHERE current_setting('server_version_num')::int >= 140000";
        self.client.batch_execute(sql).await.map_err(|e| self.err("turn off session timeouts", e))
    }

    /// Opens a read-only repeatable-read transaction and exports its snapshot, for pg_dump's
    /// `--snapshot`: whatever this session and those pg_dumps read then agrees. The transaction
    /// stays open until the session ends (timeouts are off: `immune_to_timeouts`).
    pub async fn export_snapshot(&self) -> Result<String, DbError> {
        let begin = self.client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await;
        begin.map_err(|e| self.err("begin a snapshot transaction", e))?;
        match self.client.query_one("SELECT pg_export_snapshot()", &[]).await {
            Ok(row) => Ok(row.get(0)),
            Err(e) => {
                let _ = self.client.batch_execute("ROLLBACK").await;
                Err(self.err("export a snapshot", e))
            }
        }
    }

    /// Whether this session still holds `(class, id)`. A session the server ended answers
    /// with an error, which is as good as "no".
    pub async fn holds_advisory_lock(&self, class: i32, id: i32) -> Result<bool, DbError> {
        let sql =
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() \
                   AND granted AND classid = $1::int::oid AND objid = $2::int::oid AND objsubid = 2)";
        let row = self
            .client
            .query_one(sql, &[&class, &id])
            .await
            .map_err(|e| self.err("check the snapshot lock", e))?;
        Ok(row.get(0))
    }

    /// Who holds a granted lock on `table` (as pg_dump names it), for a lock-wait error.
    pub async fn lock_holders(&self, table: &str) -> Result<Vec<String>, DbError> {
        let sql = "SELECT format('pid %s (%s, %s, user %s, %s since %s)', a.pid, l.mode, \
                          coalesce(nullif(a.application_name, ''), '?'), coalesce(a.usename::text, '?'), \
                          coalesce(a.state, '?'), coalesce(a.xact_start, a.backend_start)::timestamptz(0)) \
                   FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
                   WHERE l.locktype = 'relation' AND l.granted AND l.relation = to_regclass($1) \
                     AND l.pid <> pg_backend_pid() ORDER BY a.pid";
        let rows =
            self.client.query(sql, &[&table]).await.map_err(|e| self.err("look up lock holders", e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// `pg_try_advisory_lock(class, id)`: true when taken; held until this session ends.
    pub async fn try_advisory_lock(&self, class: i32, id: i32) -> Result<bool, DbError> {
        let row = self
            .client
            .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&class, &id])
            .await
            .map_err(|e| self.err("take an advisory lock", e))?;
        Ok(row.get(0))
    }

    pub async fn database_exists(&self, name: &str) -> Result<bool, DbError> {
        let row = self
            .client
            .query_one("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", &[&name])
            .await
            .map_err(|e| self.err("look up a database", e))?;
        Ok(row.get(0))
    }

    pub async fn create_database(&self, name: &str) -> Result<(), DbError> {
        let sql = format!("CREATE DATABASE {}", quote_ident(name));
        self.client.batch_execute(&sql).await.map_err(|e| self.err("create database", e))
    }

    /// Drops `name`, ending its other sessions first.
    pub async fn drop_database(&self, name: &str) -> Result<(), DbError> {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name));
        self.client.batch_execute(&sql).await.map_err(|e| self.err("drop database", e))
    }
}
