//! Rails (ActiveRecord): `schema_migrations (version varchar PRIMARY KEY)` beside
//! `ar_internal_metadata`, one row per applied migration, its version (the file name's leading
//! timestamp). Its migrations are `<version>_<name>.rb` in `dir` (db/migrate), run in version
//! order, each in a transaction unless it calls `disable_ddl_transaction!`: such a one that fails
//! half way commits what ran and records nothing, and every later migrate fails "already exists"
//! — `half_applied`, found from the schema. While it migrates, ActiveRecord holds session
//! advisory lock `2053462845 × crc32(database)` on a connection of its own (in progress). resolve
//! applied writes the row its success writes.

use std::path::PathBuf;

use async_trait::async_trait;

use super::{live, Dialect, Migration, Place, Status, StepResult, TableState};
use crate::config::{MigrationsConfig, ResolveAs};
use crate::pg::{DbError, Session};

pub struct Rails(pub Place);

/// ActiveRecord's `MIGRATOR_SALT * Zlib.crc32(current_database)`.
pub fn advisory_key(database: &str) -> i64 {
    2_053_462_845_i64 * i64::from(crc32fast::hash(database.as_bytes()))
}

impl Rails {
    /// `(version, name, path)` of each migration file, by version.
    fn files(&self) -> Vec<(String, String, PathBuf)> {
        // By the version as a number (shorter first), as ActiveRecord orders them.
        let by_number = self.0.scan(|file, path| {
            let stem = file.strip_suffix(".rb")?.to_string();
            let version = stem.split('_').next()?.to_string();
            let ok = !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit());
            ok.then_some((version.len(), version, stem, path))
        });
        by_number.into_iter().map(|(_, v, s, p)| (v, s, p)).collect()
    }

    fn migration(&self, version: &str) -> Migration {
        let name = self.files().into_iter().find(|(v, ..)| v == version).map(|(_, n, _)| n);
        let mut m = Migration::bare(name.unwrap_or_else(|| version.to_string()), Status::Applied, None);
        m.id = version.to_string();
        m
    }
}

#[async_trait]
impl Dialect for Rails {
    fn tool(&self) -> &'static str {
        "rails"
    }

    fn place(&self) -> &Place {
        &self.0
    }

    fn advisory_key(&self, database: &str) -> Option<i64> {
        Some(advisory_key(database))
    }

    async fn read(&self, session: &Session) -> Result<TableState, DbError> {
        if !session.relation_exists(&self.qualified()).await? {
            return Ok(TableState::Missing);
        }
        let sql = format!("SELECT version::text FROM {} ORDER BY length(version), version", self.qualified());
        let rows = session.query(&sql, "read schema_migrations").await?;
        let t = self.qualified();
        let mut migrations = rows
            .iter()
            .map(|r| Ok(self.migration(&super::cell::<String>(session, &t, r, 0)?)))
            .collect::<Result<Vec<_>, DbError>>()?;
        let db = live::database(session).await?;
        if let Some(holder) = live::advisory_holder(session, advisory_key(&db)).await? {
            let logs = format!("ActiveRecord's migration lock is held by {holder}");
            migrations.push(Migration::bare(
                format!("{}_lock", self.table()),
                Status::InProgress,
                Some(logs),
            ));
        }
        Ok(TableState::Rows { migrations })
    }

    fn attempted(&self, rows: &[serde_json::Value], m: &Migration) -> bool {
        rows.iter().any(|r| r["version"].as_str() == Some(m.id.as_str()))
    }

    fn code_file(&self, m: &Migration) -> Option<PathBuf> {
        self.files().into_iter().find(|(v, ..)| *v == m.id).map(|(.., p)| p)
    }

    fn pending(&self, recorded: &[Migration]) -> Vec<Migration> {
        self.files()
            .into_iter()
            .filter(|(v, ..)| !recorded.iter().any(|m| m.id == *v))
            .map(|(v, ..)| self.migration(&v))
            .collect()
    }

    /// applied: `INSERT INTO schema_migrations (version)`, as its success; rolled back: nothing
    /// to write once no row exists.
    async fn resolve(
        &self,
        s: &Session,
        _cfg: &MigrationsConfig,
        m: &Migration,
        how: ResolveAs,
    ) -> StepResult {
        let t = self.qualified();
        let hint = format!(" (db:migrate:down VERSION={})", m.id);
        let row = super::row::Row {
            tool: "Rails",
            label: &m.id,
            find: "version = $1",
            find_params: vec![&m.id],
            insert: Ok((format!("INSERT INTO {t} (version) VALUES ($1)"), vec![&m.id])),
            done: format!("recorded version {} as ActiveRecord's own success does", m.id),
            again: "its next migrate",
            undo_hint: &hint,
            table: t,
        };
        super::row::resolve(s, row, how).await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_lock_key_is_activerecords() {
        // `ruby -rzlib -e 'p 2053462845*Zlib.crc32("rs_rails")'` printed 8157164690083620015.
        assert_eq!(super::advisory_key("rs_rails"), 8_157_164_690_083_620_015);
    }
}
