//! Django: `django_migrations (id, app, name, applied)`, one row per applied migration of every
//! app. `dir` is one app's `migrations` folder (its parent folder names the app, as Django's
//! label does); its migrations are the `.py` files there, named `<app>.<module>` and run in name
//! order (Django follows `dependencies`, which number order matches for one app). A migration is
//! one transaction unless its class says `atomic = False`: such a one that fails half way commits
//! what ran and records nothing, and every later `migrate` fails "already exists" —
//! `half_applied`, found from the schema, or from its real SQL through `sql_command` (`python
//! manage.py sqlmigrate <app> {name}`). No lock. resolve applied writes what `migrate <app> <name>
//! --fake` writes.

use std::path::PathBuf;

use async_trait::async_trait;

use super::{Dialect, Migration, Place, Status, StepResult, TableState};
use crate::config::{MigrationsConfig, ResolveAs};
use crate::pg::{DbError, Session};

pub struct Django(pub Place);

impl Django {
    /// The app label: the folder holding `migrations`.
    fn app(&self) -> Option<String> {
        let dir = self.0.dir.as_ref()?;
        Some(dir.parent()?.file_name()?.to_string_lossy().into_owned())
    }

    /// `(module, path)` of each migration file, by name.
    fn files(&self) -> Vec<(String, PathBuf)> {
        self.0.scan(|name, path| {
            let module = name.strip_suffix(".py")?.to_string();
            (module != "__init__" && !module.starts_with('.')).then_some((module, path))
        })
    }

    /// `(app, module)` of a migration named `<app>.<module>`.
    fn split(m: &Migration) -> Option<(&str, &str)> {
        m.name.split_once('.')
    }
}

#[async_trait]
impl Dialect for Django {
    fn tool(&self) -> &'static str {
        "django"
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
            "SELECT id::bigint, app::text, name::text, applied FROM {} ORDER BY id",
            self.qualified()
        );
        let rows = session.query(&sql, "read django_migrations").await?;
        let t = self.qualified();
        let migrations = rows
            .iter()
            .map(|r| {
                let (app, name): (String, String) =
                    (super::cell(session, &t, r, 1)?, super::cell(session, &t, r, 2)?);
                let mut m = Migration::bare(format!("{app}.{name}"), Status::Applied, None);
                m.id = super::cell::<i64>(session, &t, r, 0)?.to_string();
                m.finished_at = super::cell(session, &t, r, 3)?;
                Ok(m)
            })
            .collect::<Result<_, DbError>>()?;
        Ok(TableState::Rows { migrations })
    }

    fn attempted(&self, rows: &[serde_json::Value], m: &Migration) -> bool {
        let Some((app, name)) = Self::split(m) else { return false };
        rows.iter().any(|r| r["app"].as_str() == Some(app) && r["name"].as_str() == Some(name))
    }

    fn code_file(&self, m: &Migration) -> Option<PathBuf> {
        let (app, module) = Self::split(m)?;
        if Some(app.to_string()) != self.app() {
            return None;
        }
        self.files().into_iter().find(|(n, _)| n == module).map(|(_, p)| p)
    }

    fn command_name(&self, m: &Migration) -> String {
        Self::split(m).map(|(_, n)| n.to_string()).unwrap_or_else(|| m.name.clone())
    }

    fn pending(&self, recorded: &[Migration]) -> Vec<Migration> {
        let Some(app) = self.app() else { return Vec::new() };
        self.files()
            .into_iter()
            .map(|(n, _)| format!("{app}.{n}"))
            .filter(|n| !recorded.iter().any(|m| m.name == *n))
            .map(|n| Migration::bare(n, Status::Applied, None))
            .collect()
    }

    /// applied: `migrate <app> <name> --fake`'s `INSERT (app, name, applied) VALUES (…, now())`;
    /// rolled back: nothing to write once no row exists.
    async fn resolve(
        &self,
        s: &Session,
        _cfg: &MigrationsConfig,
        m: &Migration,
        how: ResolveAs,
    ) -> StepResult {
        let t = self.qualified();
        let (app, name) = Self::split(m).ok_or_else(|| format!("`{}` is not <app>.<migration>", m.name))?;
        let (app, name) = (app.to_string(), name.to_string());
        let hint = format!(" (migrate {app} to the migration before it)");
        let row = super::row::Row {
            tool: "Django",
            label: &m.name,
            find: "app = $1 AND name = $2",
            find_params: vec![&app, &name],
            insert: Ok((
                format!("INSERT INTO {t} (app, name, applied) VALUES ($1, $2, now())"),
                vec![&app, &name],
            )),
            done: format!("recorded {} as `manage.py migrate {app} {name} --fake` does", m.name),
            again: "its next migrate",
            undo_hint: &hint,
            table: t,
        };
        super::row::resolve(s, row, how).await
    }
}
