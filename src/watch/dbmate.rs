//! dbmate: `schema_migrations (version varchar PRIMARY KEY)` — golang-migrate's table name with
//! no `dirty` column — one row per applied file, written after the file's SQL succeeded. A failed
//! migration leaves no row (and dbmate prints "Applied:" for it anyway), so its only failure
//! state is `half_applied`: a `-- migrate:up transaction:false` file whose lone `CREATE INDEX
//! CONCURRENTLY` failed leaves an invalid index. A file is sent as one query (in a transaction,
//! or with `transaction:false` as one multi-statement query, which PostgreSQL also runs as one
//! implicit transaction): none or all of its statements. No lock. Its files are
//! `<version>_<name>.sql` in `dir`, run in version order, with `-- migrate:up` and
//! `-- migrate:down` sections; success records `INSERT INTO schema_migrations (version) VALUES
//! ('<version>')`, which is what resolve applied writes (dbmate has no "mark applied" command).

use std::path::PathBuf;

use async_trait::async_trait;

use super::{Dialect, Migration, Place, Status, StepResult, TableState};
use crate::config::{MigrationsConfig, ResolveAs};
use crate::pg::{DbError, Session};

pub struct Dbmate(pub Place);

impl Dbmate {
    /// `(version, name without .sql, path)` of every migration file in `dir`, by version.
    fn files(&self) -> Vec<(String, String, PathBuf)> {
        self.0.scan(|file, path| {
            let name = file.strip_suffix(".sql")?.to_string();
            let version = name.split('_').next()?.to_string();
            let digits = !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit());
            digits.then_some((version, name, path))
        })
    }

    fn migration(&self, version: &str, status: Status) -> Migration {
        let name = self.files().into_iter().find(|(v, ..)| v == version).map(|(_, n, _)| n);
        let mut m = Migration::bare(name.unwrap_or_else(|| version.to_string()), status, None);
        m.id = version.to_string();
        m
    }
}

#[async_trait]
impl Dialect for Dbmate {
    fn tool(&self) -> &'static str {
        "dbmate"
    }

    fn place(&self) -> &Place {
        &self.0
    }

    fn advisory_key(&self, _database: &str) -> Option<i64> {
        None
    }

    fn atomic(&self) -> bool {
        true
    }

    async fn read(&self, session: &Session) -> Result<TableState, DbError> {
        if !session.relation_exists(&self.qualified()).await? {
            return Ok(TableState::Missing);
        }
        let sql = format!("SELECT version::text FROM {} ORDER BY version", self.qualified());
        let rows = session.query(&sql, "read schema_migrations").await?;
        let t = self.qualified();
        let migrations = rows
            .iter()
            .map(|r| Ok(self.migration(&super::cell::<String>(session, &t, r, 0)?, Status::Applied)))
            .collect::<Result<_, DbError>>()?;
        Ok(TableState::Rows { migrations })
    }

    fn attempted(&self, rows: &[serde_json::Value], m: &Migration) -> bool {
        rows.iter().any(|r| r.get("version").and_then(|v| v.as_str()) == Some(m.id.as_str()))
    }

    fn file(&self, m: &Migration) -> Option<PathBuf> {
        self.files().into_iter().find(|(v, ..)| *v == m.id).map(|(.., p)| p)
    }

    fn up_sql(&self, text: &str) -> String {
        up_section(text)
    }

    fn pending(&self, recorded: &[Migration]) -> Vec<Migration> {
        self.files()
            .into_iter()
            .filter(|(v, ..)| !recorded.iter().any(|m| m.id == *v))
            .map(|(v, n, _)| {
                let mut m = Migration::bare(n, Status::Applied, None);
                m.id = v;
                m
            })
            .collect()
    }

    /// applied: the row dbmate's own success writes; rolled back: nothing (a half-applied file
    /// has no row), once the table is checked to hold none.
    async fn resolve(
        &self,
        s: &Session,
        _cfg: &MigrationsConfig,
        m: &Migration,
        how: ResolveAs,
    ) -> StepResult {
        let t = self.qualified();
        let row = super::row::Row {
            tool: "dbmate",
            label: &m.id,
            find: "version = $1",
            find_params: vec![&m.id],
            insert: Ok((format!("INSERT INTO {t} (version) VALUES ($1)"), vec![&m.id])),
            done: format!("recorded version {} as dbmate's own success does", m.id),
            again: "its next `up`",
            undo_hint: " (run `dbmate rollback`, or fix the table by hand)",
            table: t,
        };
        super::row::resolve(s, row, how).await
    }
}

/// The `-- migrate:up` section of a dbmate file (up to `-- migrate:down`); the whole text when
/// it has no such marker.
pub fn up_section(text: &str) -> String {
    let mut out = String::new();
    let mut inside = !text.lines().any(|l| l.trim_start().starts_with("-- migrate:up"));
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("-- migrate:up") {
            inside = true;
        } else if t.starts_with("-- migrate:down") {
            inside = false;
        } else if inside {
            out.push_str(line);
        }
        // Keep line numbers: a statement's line is the file's.
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_up_section_keeps_the_files_line_numbers() {
        let text =
            "-- migrate:up transaction:false\nCREATE TABLE a (id int);\n\n-- migrate:down\nDROP TABLE a;\n";
        let up = super::up_section(text);
        assert_eq!(up.lines().nth(1), Some("CREATE TABLE a (id int);"));
        assert!(!up.contains("DROP"));
    }
}
