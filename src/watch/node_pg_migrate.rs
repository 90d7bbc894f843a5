//! node-pg-migrate: `pgmigrations (id serial, name varchar(255), run_on timestamp)`, one row per
//! applied migration, named by its file without the extension. The CLI holds session advisory
//! lock 7241865325823964 while it runs (in progress). Its migrations are the files in `dir` with
//! a numeric prefix, run in that number's order. An SQL file (`-- Up Migration` … `-- Down
//! Migration`) goes as one multi-statement query inside the batch's transaction: none or all of
//! it. A JavaScript one may call `pgm.noTransaction()`; if it then fails half way, what ran is
//! committed and nothing is recorded, and the next `up` fails "already exists" for ever: that is
//! `half_applied`, found from the schema (see `diagnose::leftovers`). resolve applied writes the
//! row `up --fake` writes; there is no rolled-back state to write.

use std::path::PathBuf;

use async_trait::async_trait;

use super::{live, Dialect, Migration, Place, Status, StepResult, TableState};
use crate::config::{MigrationsConfig, ResolveAs};
use crate::pg::{DbError, Session};

/// `pg_try_advisory_lock(7241865325823964)`, taken by the CLI for the whole run.
pub const LOCK: i64 = 7_241_865_325_823_964;

const EXTENSIONS: &[&str] = &["sql", "js", "cjs", "mjs", "ts", "cts", "mts"];

pub struct NodePgMigrate(pub Place);

impl NodePgMigrate {
    /// `(name without extension, path)` of every migration file, in node-pg-migrate's order (the
    /// numeric prefix, then the name).
    fn files(&self) -> Vec<(String, PathBuf)> {
        let numbered = self.0.scan(|file, path| {
            let (stem, ext) = file.rsplit_once('.')?;
            let digits: String = stem.chars().take_while(char::is_ascii_digit).collect();
            let ok = !file.starts_with('.') && EXTENSIONS.contains(&ext) && path.is_file();
            Some((digits.parse::<u128>().ok().filter(|_| ok)?, stem.to_string(), path))
        });
        numbered.into_iter().map(|(_, n, p)| (n, p)).collect()
    }

    fn path(&self, m: &Migration) -> Option<PathBuf> {
        self.files().into_iter().find(|(n, _)| *n == m.name).map(|(_, p)| p)
    }

    fn lock_name(&self) -> String {
        format!("{}_lock", self.table())
    }
}

#[async_trait]
impl Dialect for NodePgMigrate {
    fn tool(&self) -> &'static str {
        "node-pg-migrate"
    }

    fn place(&self) -> &Place {
        &self.0
    }

    fn advisory_key(&self, _database: &str) -> Option<i64> {
        Some(LOCK)
    }

    /// An SQL file runs inside the batch's transaction; a JavaScript one's statements are not
    /// read from its text (its half-applied state is judged statement at a time from the schema).
    fn atomic(&self) -> bool {
        true
    }

    async fn read(&self, session: &Session) -> Result<TableState, DbError> {
        if !session.relation_exists(&self.qualified()).await? {
            return Ok(TableState::Missing);
        }
        let sql =
            format!("SELECT id, name, run_on::timestamptz FROM {} ORDER BY run_on, id", self.qualified());
        let rows = session.query(&sql, "read pgmigrations").await?;
        let t = self.qualified();
        let mut migrations = rows
            .iter()
            .map(|r| {
                let mut m = Migration::bare(super::cell::<String>(session, &t, r, 1)?, Status::Applied, None);
                m.id = super::cell::<i32>(session, &t, r, 0)?.to_string();
                m.finished_at = super::cell(session, &t, r, 2)?;
                Ok(m)
            })
            .collect::<Result<Vec<_>, DbError>>()?;
        if let Some(holder) = live::advisory_holder(session, LOCK).await? {
            let logs = format!("node-pg-migrate's lock {LOCK} is held by {holder}");
            migrations.push(Migration::bare(self.lock_name(), Status::InProgress, Some(logs)));
        }
        Ok(TableState::Rows { migrations })
    }

    fn attempted(&self, rows: &[serde_json::Value], m: &Migration) -> bool {
        rows.iter().any(|r| r.get("name").and_then(|v| v.as_str()) == Some(m.name.as_str()))
    }

    fn file(&self, m: &Migration) -> Option<PathBuf> {
        self.path(m).filter(|p| p.extension().is_some_and(|e| e == "sql"))
    }

    fn code_file(&self, m: &Migration) -> Option<PathBuf> {
        self.path(m).filter(|p| p.extension().is_some_and(|e| e != "sql"))
    }

    fn up_sql(&self, text: &str) -> String {
        up_section(text)
    }

    fn pending(&self, recorded: &[Migration]) -> Vec<Migration> {
        self.files()
            .into_iter()
            .filter(|(n, _)| !recorded.iter().any(|m| m.name == *n))
            .map(|(n, _)| Migration::bare(n, Status::Applied, None))
            .collect()
    }

    /// applied: `up --fake`'s `INSERT … (name, run_on) VALUES ('<name>', NOW())`; rolled back:
    /// nothing to write once the table holds no row for it.
    async fn resolve(
        &self,
        s: &Session,
        _cfg: &MigrationsConfig,
        m: &Migration,
        how: ResolveAs,
    ) -> StepResult {
        let t = self.qualified();
        let row = super::row::Row {
            tool: "node-pg-migrate",
            label: &m.name,
            find: "name = $1",
            find_params: vec![&m.name],
            insert: Ok((format!("INSERT INTO {t} (name, run_on) VALUES ($1, NOW())"), vec![&m.name])),
            done: format!("recorded {} as `node-pg-migrate up --fake` does", m.name),
            again: "its next up",
            undo_hint: " (run `node-pg-migrate down`, or fix the table by hand)",
            table: t,
        };
        super::row::resolve(s, row, how).await
    }
}

/// The up part of an SQL migration: after a `-- Up Migration` line (any case, any dashes) up to
/// `-- Down Migration`; the whole text without one. Other lines are blanked, so line numbers stay.
pub fn up_section(text: &str) -> String {
    let marker = |l: &str, word: &str| {
        let t = l.trim_start();
        let rest =
            t.strip_prefix("--").map(|r| r.trim_start_matches(|c: char| c == '-' || c.is_whitespace()));
        rest.is_some_and(|r| r.to_ascii_lowercase().starts_with(&format!("{word} migration")))
    };
    if !text.lines().any(|l| marker(l, "up")) {
        return text.to_string();
    }
    let mut inside = false;
    let mut out = String::new();
    for line in text.lines() {
        if marker(line, "up") {
            inside = true;
        } else if marker(line, "down") {
            inside = false;
        } else if inside {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_up_section_is_found_in_any_case() {
        let up = super::up_section(
            "-- up migration\nCREATE TABLE a (id int);\n---- Down Migration\nDROP TABLE a;\n",
        );
        assert_eq!(up, "\nCREATE TABLE a (id int);\n\n\n");
    }
}
