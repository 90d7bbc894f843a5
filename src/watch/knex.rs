//! knex: `knex_migrations (id, name, batch, migration_time)` lists what ran (a failed migration
//! leaves no row); `knex_migrations_lock (index, is_locked)` is its only lock. `is_locked = 1`
//! with no live migrator is `locked` (a killed `transaction: false` batch leaves it so: "Migration
//! table is already locked"); with a live session it is in progress. knex records nothing about
//! the holder, so any other active session, or one whose last query touched knex's tables,
//! counts as live. Release is `knex migrate:unlock`'s two statements. Its migrations are
//! JavaScript files in `dir`, run in file-name order and recorded by file name: a `transaction:
//! false` one that fails half way leaves no row, which `half_applied` finds from the schema (see
//! `diagnose::leftovers`). resolve writes the row knex's own success writes.

use std::path::PathBuf;

use async_trait::async_trait;

use super::{live, Dialect, Migration, Place, Status, StepResult, TableState};
use crate::config::{MigrationsConfig, ResolveAs};
use crate::pg::{error_text, quote_ident, DbError, Session};

/// The extensions knex loads migrations from (its default `loadExtensions`).
const EXTENSIONS: &[&str] =
    &[".js", ".cjs", ".mjs", ".ts", ".cts", ".mts", ".coffee", ".litcoffee", ".ls", ".eg", ".iced", ".co"];

pub struct Knex(pub Place);

impl Knex {
    fn lock_table(&self) -> String {
        format!("{}.{}", quote_ident(self.schema()), quote_ident(&format!("{}_lock", self.table())))
    }

    /// Sessions that may be the migrator: one in a transaction that touched knex's tables (its
    /// lock taken in the batch's transaction), one waiting on a lock of those tables, one running
    /// DDL, or one running a statement the first pending file spells out (`knex.raw`). An
    /// ordinary application query, or an idle pooled connection whose last query read
    /// knex_migrations, is not one.
    async fn live(&self, s: &Session, pending: &[Migration]) -> Result<Vec<String>, DbError> {
        let esc = |t: String| t.replace('\'', "''");
        let tables =
            format!("to_regclass('{}'), to_regclass('{}')", esc(self.qualified()), esc(self.lock_table()));
        let mut cond = format!(
            "EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.relation IN ({tables})) \
             OR (a.wait_event_type = 'Lock' AND EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = ANY (pg_blocking_pids(a.pid)) AND l.relation IN ({tables}))) \
             OR (a.state = 'active' AND a.query ~* '^\\s*(create|alter|drop|comment|reindex|cluster|vacuum|truncate|grant|revoke)\\M')"
        );
        let text =
            pending.first().and_then(|m| self.code_file(m)).and_then(|p| std::fs::read_to_string(p).ok());
        if let Some(text) = text {
            let sql = "SELECT a.pid, a.query FROM pg_stat_activity a WHERE a.datname = current_database() \
                       AND a.pid <> pg_backend_pid() AND a.state = 'active' AND a.backend_type = 'client backend'";
            let rows =
                s.client().query(sql, &[]).await.map_err(|e| s.err("look for live migrator sessions", e))?;
            let squash = |q: &str| q.split_whitespace().collect::<Vec<_>>().join(" ");
            let file = squash(&text);
            for r in &rows {
                let q = squash(r.get::<_, String>(1).trim().trim_end_matches(';'));
                if q.len() >= 8 && file.contains(&q) {
                    cond.push_str(&format!(" OR a.pid = {}", r.get::<_, i32>(0)));
                }
            }
        }
        live::sessions(s, &cond).await
    }

    /// Every migration file in `dir`, as knex names and orders them (by file name).
    fn files(&self) -> Vec<(String, PathBuf)> {
        self.0.scan(|n, p| {
            let ok = p.is_file() && !n.ends_with(".d.ts") && EXTENSIONS.iter().any(|x| n.ends_with(x));
            ok.then_some((n, p))
        })
    }

    async fn lock_rows(&self, s: &Session) -> Result<Vec<serde_json::Value>, String> {
        live::rows(s, &self.lock_table()).await
    }
}

#[async_trait]
impl Dialect for Knex {
    fn tool(&self) -> &'static str {
        "knex"
    }

    fn place(&self) -> &Place {
        &self.0
    }

    fn own_tables(&self) -> Vec<crate::snapshot::ScopedTable> {
        let t = |table: String| crate::snapshot::ScopedTable { schema: self.schema().into(), table };
        vec![t(self.table().into()), t(format!("{}_lock", self.table()))]
    }

    fn advisory_key(&self, _database: &str) -> Option<i64> {
        None
    }

    async fn read(&self, session: &Session) -> Result<TableState, DbError> {
        if !session.relation_exists(&self.qualified()).await? {
            return Ok(TableState::Missing);
        }
        let sql = format!("SELECT id, name, migration_time FROM {} ORDER BY id", self.qualified());
        let rows = session.query(&sql, "read knex_migrations").await?;
        let t = self.qualified();
        let mut migrations: Vec<Migration> = rows
            .iter()
            .map(|r| {
                let name: Option<String> = super::cell(session, &t, r, 1)?;
                let mut m = Migration::bare(name.unwrap_or_default(), Status::Applied, None);
                m.id = super::cell::<i32>(session, &t, r, 0)?.to_string();
                m.finished_at = super::cell(session, &t, r, 2)?;
                Ok(m)
            })
            .collect::<Result<_, DbError>>()?;
        if session.relation_exists(&self.lock_table()).await? {
            let sql = format!("SELECT coalesce(max(is_locked), 0)::int FROM {}", self.lock_table());
            let locked: i32 = session.query(&sql, "read knex_migrations_lock").await?[0].get(0);
            if locked == 1 {
                let live = self.live(session, &self.pending(&migrations)).await?;
                let (status, logs) = if live.is_empty() {
                    (Status::Locked, "is_locked = 1 and no live migrator: every `knex migrate` fails with \"Migration table is already locked\"".to_string())
                } else {
                    (
                        Status::InProgress,
                        format!("is_locked = 1, held by a live session: {}", live.join("; ")),
                    )
                };
                migrations.push(Migration::bare(format!("{}_lock", self.table()), status, Some(logs)));
            }
        }
        Ok(TableState::Rows { migrations })
    }

    fn attempted(&self, rows: &[serde_json::Value], m: &Migration) -> bool {
        rows.iter().any(|r| r.get("name").and_then(|v| v.as_str()) == Some(m.name.as_str()))
    }

    fn pending(&self, recorded: &[Migration]) -> Vec<Migration> {
        self.files()
            .into_iter()
            .filter(|(n, _)| !recorded.iter().any(|m| m.name == *n))
            .map(|(n, _)| Migration::bare(n, Status::Applied, None))
            .collect()
    }

    fn code_file(&self, m: &Migration) -> Option<PathBuf> {
        self.files().into_iter().find(|(n, _)| *n == m.name).map(|(_, p)| p)
    }

    /// applied: the row knex's own success writes (`name`, the next batch, now); rolled back:
    /// nothing to write once the table holds no row for it (knex runs it again).
    async fn resolve(
        &self,
        s: &Session,
        _cfg: &MigrationsConfig,
        m: &Migration,
        how: ResolveAs,
    ) -> StepResult {
        let t = self.qualified();
        let insert = format!("INSERT INTO {t} (name, batch, migration_time) SELECT $1, coalesce(max(batch), 0) + 1, now() FROM {t}");
        let row = super::row::Row {
            tool: "knex",
            label: &m.name,
            find: "name = $1",
            find_params: vec![&m.name],
            insert: Ok((insert, vec![&m.name])),
            done: format!("recorded {} in a new batch, as knex's own success does", m.name),
            again: "its next migrate:latest",
            undo_hint: " (run `knex migrate:down`, or fix the table by hand)",
            table: t,
        };
        super::row::resolve(s, row, how).await
    }

    /// `knex migrate:unlock`: `DELETE FROM knex_migrations_lock; INSERT … (is_locked) VALUES (0)`.
    async fn release_lock(&self, s: &Session) -> StepResult {
        let recorded = match self.read(s).await.map_err(|e| e.to_string())? {
            TableState::Rows { migrations } => migrations,
            _ => Vec::new(),
        };
        let live = self.live(s, &self.pending(&recorded)).await.map_err(|e| e.to_string())?;
        if !live.is_empty() {
            return Err(format!(
                "knex's lock is not released: a live session may be the migrator: {}",
                live.join("; ")
            ));
        }
        let before = self.lock_rows(s).await?;
        let t = self.lock_table();
        let sql = format!("BEGIN; DELETE FROM {t}; INSERT INTO {t} (is_locked) VALUES (0); COMMIT");
        if let Err(e) = s.client().batch_execute(&sql).await {
            let _ = s.client().batch_execute("ROLLBACK").await;
            return Err(error_text(&e));
        }
        let after = self.lock_rows(s).await?;
        Ok(format!(
            "knex migrate:unlock: lock rows before {} after {}",
            serde_json::Value::from(before),
            serde_json::Value::from(after)
        ))
    }
}
