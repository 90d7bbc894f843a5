//! TypeORM: `migrations (id serial, timestamp bigint, name varchar)`, one row per applied
//! migration: its class name (or its `name` field) and the 13-digit timestamp that name ends
//! with. Its migrations are classes in the JavaScript or TypeScript files of `dir`, run in
//! timestamp order. By default (`migrationsTransactionMode: "all"`) one transaction wraps the
//! run and a failure leaves nothing; under `"each"` a class with `transaction = false` runs
//! bare, and if it fails half way what ran is committed with no row: `half_applied`, found from
//! the schema (see `diagnose::leftovers`). No lock. resolve applied writes what `migration:run
//! --fake` writes.

use std::path::PathBuf;

use async_trait::async_trait;

use super::{Dialect, Migration, Place, Status, StepResult, TableState};
use crate::config::{MigrationsConfig, ResolveAs};
use crate::pg::{DbError, Session};

pub struct TypeOrm(pub Place);

/// Each class in `text` whose name ends in a 13-digit timestamp: `(name, timestamp)`.
fn classes(text: &str) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices("class ") {
        let before = text[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let name: String = text[i + 6..]
            .trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '$')
            .collect();
        let digits = name.len().checked_sub(13).and_then(|at| name.get(at..));
        if let Some(ts) =
            digits.filter(|d| d.bytes().all(|b| b.is_ascii_digit())).and_then(|d| d.parse().ok())
        {
            out.push((name, ts));
        }
    }
    out
}

impl TypeOrm {
    /// `(class name, timestamp, file)` of every migration class in `dir`, by timestamp.
    fn migrations(&self) -> Vec<(String, i64, PathBuf)> {
        let code = self.0.scan(|name, path| {
            let code = [".js", ".cjs", ".mjs", ".ts", ".cts", ".mts"].iter().any(|x| name.ends_with(x));
            (code && !name.ends_with(".d.ts")).then_some(path)
        });
        let mut out: Vec<(String, i64, PathBuf)> = Vec::new();
        for path in code {
            let Ok(text) = std::fs::read_to_string(&path) else { continue };
            out.extend(classes(&text).into_iter().map(|(c, ts)| (c, ts, path.clone())));
        }
        out.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        out
    }
}

#[async_trait]
impl Dialect for TypeOrm {
    fn tool(&self) -> &'static str {
        "typeorm"
    }

    fn place(&self) -> &Place {
        &self.0
    }

    fn advisory_key(&self, _database: &str) -> Option<i64> {
        None
    }

    async fn read(&self, session: &Session) -> Result<TableState, DbError> {
        if !session.relation_exists(&self.qualified()).await? {
            return Ok(TableState::Missing);
        }
        let sql = format!(
            "SELECT id, \"timestamp\", name::text FROM {} ORDER BY \"timestamp\", id",
            self.qualified()
        );
        let rows = session.query(&sql, "read TypeORM's migrations").await?;
        let t = self.qualified();
        let migrations = rows
            .iter()
            .map(|r| {
                let mut m = Migration::bare(super::cell::<String>(session, &t, r, 2)?, Status::Applied, None);
                m.id = super::cell::<i64>(session, &t, r, 1)?.to_string();
                Ok(m)
            })
            .collect::<Result<_, DbError>>()?;
        Ok(TableState::Rows { migrations })
    }

    fn attempted(&self, rows: &[serde_json::Value], m: &Migration) -> bool {
        rows.iter().any(|r| r.get("name").and_then(|v| v.as_str()) == Some(m.name.as_str()))
    }

    fn code_file(&self, m: &Migration) -> Option<PathBuf> {
        self.migrations().into_iter().find(|(n, ..)| *n == m.name).map(|(.., p)| p)
    }

    fn pending(&self, recorded: &[Migration]) -> Vec<Migration> {
        self.migrations()
            .into_iter()
            .filter(|(n, ..)| !recorded.iter().any(|m| m.name == *n))
            .map(|(n, ts, _)| {
                let mut m = Migration::bare(n, Status::Applied, None);
                m.id = ts.to_string();
                m
            })
            .collect()
    }

    /// applied: `INSERT INTO "migrations"("timestamp", "name")`, as `migration:run --fake`;
    /// rolled back: nothing to write once no row exists.
    async fn resolve(
        &self,
        s: &Session,
        _cfg: &MigrationsConfig,
        m: &Migration,
        how: ResolveAs,
    ) -> StepResult {
        let t = self.qualified();
        let ts: Option<i64> = m.name.get(m.name.len().saturating_sub(13)..).and_then(|d| d.parse().ok());
        let insert = match &ts {
            Some(ts) => Ok((
                format!("INSERT INTO {t} (\"timestamp\", name) VALUES ($1, $2)"),
                vec![ts as super::row::Param, &m.name],
            )),
            None => Err(format!("`{}` does not end in a JavaScript timestamp, as TypeORM requires", m.name)),
        };
        let row = super::row::Row {
            tool: "TypeORM",
            label: &m.name,
            find: "name = $1",
            find_params: vec![&m.name],
            insert,
            done: format!("recorded {} as `typeorm migration:run --fake` does", m.name),
            again: "its next migration:run",
            undo_hint: " (run `typeorm migration:revert`, or fix the table by hand)",
            table: t,
        };
        super::row::resolve(s, row, how).await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn classes_are_found_with_their_timestamps() {
        let js = "module.exports = class Audit1767312000000 {\n  transaction = false;\n}\nclass Helper {}\nexport class AddUser1700000000001 implements MigrationInterface {}";
        let found = super::classes(js);
        assert_eq!(
            found,
            [
                ("Audit1767312000000".to_string(), 1767312000000),
                ("AddUser1700000000001".to_string(), 1700000000001)
            ]
        );
    }
}
