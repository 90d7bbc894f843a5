//! `tool = "auto"`: the tool recognised by its table's columns in the migrations schema, not by
//! the table's name (golang-migrate and dbmate both use `schema_migrations`; only
//! golang-migrate's has `dirty`; Rails' sits beside `ar_internal_metadata`). The first table
//! found decides; until one exists, the state is "missing". A table that looks like a tool
//! pgmedic does not read, or bears a tool's name with other columns, is `unrecognised`, named
//! with its columns: "missing" means no migration has ever run, which would be the opposite of
//! the truth.

use std::sync::OnceLock;

use async_trait::async_trait;

use super::{by_tool, Dialect, Migration, Place, StepResult, TableState};
use crate::config::{MigrationsConfig, ResolveAs};
use crate::pg::{DbError, Session};

/// Each tool's columns (all must be present; `exact`: and no others), and the table name the
/// tool gives it where its columns alone are too common to tell (Sequelize's one `name`).
struct Signature {
    tool: &'static str,
    columns: &'static [&'static str],
    exact: bool,
    table: Option<&'static str>,
}

const fn sig(tool: &'static str, columns: &'static [&'static str]) -> Signature {
    Signature { tool, columns, exact: false, table: None }
}

const SIGNATURES: &[Signature] = &[
    sig(
        "prisma",
        &[
            "id",
            "checksum",
            "finished_at",
            "migration_name",
            "logs",
            "rolled_back_at",
            "started_at",
            "applied_steps_count",
        ],
    ),
    sig(
        "flyway",
        &[
            "installed_rank",
            "version",
            "description",
            "type",
            "script",
            "checksum",
            "installed_by",
            "installed_on",
            "execution_time",
            "success",
        ],
    ),
    sig("sqlx", &["version", "description", "installed_on", "success", "checksum", "execution_time"]),
    sig("liquibase", &["id", "author", "filename", "dateexecuted", "orderexecuted", "exectype", "md5sum"]),
    sig("knex", &["id", "name", "batch", "migration_time"]),
    Signature { tool: "golang-migrate", columns: &["version", "dirty"], exact: true, table: None },
    // Tools pgmedic recognises but does not read yet: their table is `unrecognised`, named.
    sig("django", &["id", "app", "name", "applied"]),
    sig("node-pg-migrate", &["id", "name", "run_on"]),
    sig("drizzle", &["id", "hash", "created_at"]),
    sig("goose", &["id", "version_id", "is_applied", "tstamp"]),
    Signature { tool: "typeorm", columns: &["id", "timestamp", "name"], exact: true, table: None },
    Signature { tool: "alembic", columns: &["version_num"], exact: true, table: Some("alembic_version") },
    Signature { tool: "sequelize", columns: &["name"], exact: true, table: Some("SequelizeMeta") },
    // dbmate's and Rails' tables are alike (`version varchar`); Rails keeps ar_internal_metadata.
    Signature { tool: "dbmate", columns: &["version"], exact: true, table: None },
];

/// The tools `auto` can hand a table to; the others' tables are reported, not read.
const READABLE: &[&str] = &[
    "prisma",
    "flyway",
    "sqlx",
    "liquibase",
    "knex",
    "golang-migrate",
    "dbmate",
    "node-pg-migrate",
    "drizzle",
    "sequelize",
    "typeorm",
    "django",
    "alembic",
    "rails",
];

/// Table names migration tools use by default: one of these that no signature matches is
/// `unrecognised`, never `missing`.
const KNOWN_NAMES: &[&str] = &[
    "_prisma_migrations",
    "flyway_schema_history",
    "_sqlx_migrations",
    "databasechangelog",
    "knex_migrations",
    "schema_migrations",
    "django_migrations",
    "alembic_version",
    "migrations",
    "pgmigrations",
    "SequelizeMeta",
    "__drizzle_migrations",
    "goose_db_version",
];

/// What `auto` found in the migrations schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Tool(&'static str, String),
    /// A migrations table pgmedic cannot read: `like` names the tool it resembles, if any.
    Unrecognised {
        table: String,
        columns: Vec<String>,
        like: Option<&'static str>,
    },
}

/// The first migrations table in `schema`, by columns.
pub async fn detect(session: &Session, schema: &str) -> Result<Option<Found>, DbError> {
    let sql = "SELECT c.relname::text, array_agg(a.attname::text ORDER BY a.attnum) FROM pg_class c \
               JOIN pg_namespace n ON n.oid = c.relnamespace \
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
               WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') GROUP BY c.relname ORDER BY c.relname";
    let rows = session
        .client()
        .query(sql, &[&schema])
        .await
        .map_err(|e| session.err("look for a migrations table", e))?;
    let tables: Vec<(String, Vec<String>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    Ok(classify(&tables))
}

fn classify(tables: &[(String, Vec<String>)]) -> Option<Found> {
    let rails = tables.iter().any(|(t, _)| t == "ar_internal_metadata");
    for s in SIGNATURES {
        for (table, have) in tables {
            let fits = s.columns.iter().all(|c| have.iter().any(|h| h == c))
                && (!s.exact || have.len() == s.columns.len())
                && s.table.is_none_or(|t| t == table);
            if !fits {
                continue;
            }
            let tool = if s.tool == "dbmate" && rails { "rails" } else { s.tool };
            if READABLE.contains(&tool) {
                return Some(Found::Tool(tool, table.clone()));
            }
            return Some(Found::Unrecognised {
                table: table.clone(),
                columns: have.clone(),
                like: Some(tool),
            });
        }
    }
    let (table, columns) = tables.iter().find(|(t, _)| KNOWN_NAMES.contains(&t.as_str()))?;
    Some(Found::Unrecognised { table: table.clone(), columns: columns.clone(), like: None })
}

pub struct Auto {
    at: Place,
    found: OnceLock<Box<dyn Dialect>>,
}

impl Found {
    fn state(self) -> TableState {
        match self {
            Found::Tool(..) => TableState::Missing,
            Found::Unrecognised { table, columns, like } => {
                TableState::Unrecognised { table, columns, like: like.map(String::from) }
            }
        }
    }
}

impl Auto {
    pub fn new(at: Place) -> Auto {
        Auto { at, found: OnceLock::new() }
    }

    async fn inner(&self, session: &Session) -> Result<Option<&dyn Dialect>, DbError> {
        Ok(self.look(session).await?.ok())
    }

    /// The dialect of the table found, or the state to report instead (missing, unrecognised).
    async fn look(&self, session: &Session) -> Result<Result<&dyn Dialect, TableState>, DbError> {
        if self.found.get().is_none() {
            match detect(session, &self.at.schema).await? {
                Some(Found::Tool(tool, table)) => {
                    let _ = self.found.set(by_tool(tool, Place { table, ..self.at.clone() }));
                }
                Some(other) => return Ok(Err(other.state())),
                None => return Ok(Err(TableState::Missing)),
            }
        }
        Ok(self.found.get().map(|d| d.as_ref()).ok_or(TableState::Missing))
    }
}

#[async_trait]
impl Dialect for Auto {
    fn tool(&self) -> &'static str {
        self.found.get().map(|d| d.tool()).unwrap_or("auto")
    }

    fn place(&self) -> &Place {
        self.found.get().map(|d| d.place()).unwrap_or(&self.at)
    }

    async fn read(&self, session: &Session) -> Result<TableState, DbError> {
        match self.look(session).await? {
            Ok(d) => d.read(session).await,
            Err(state) => Ok(state),
        }
    }

    async fn raw_rows(&self, session: &Session) -> Result<Vec<serde_json::Value>, DbError> {
        match self.inner(session).await? {
            Some(d) => d.raw_rows(session).await,
            None => Ok(Vec::new()),
        }
    }

    fn advisory_key(&self, database: &str) -> Option<i64> {
        self.found.get().and_then(|d| d.advisory_key(database))
    }

    fn attempted(&self, rows: &[serde_json::Value], m: &Migration) -> bool {
        self.found.get().is_some_and(|d| d.attempted(rows, m))
    }

    fn file(&self, m: &Migration) -> Option<std::path::PathBuf> {
        self.found.get().and_then(|d| d.file(m))
    }

    fn own_tables(&self) -> Vec<crate::snapshot::ScopedTable> {
        match self.found.get() {
            Some(d) => d.own_tables(),
            None => vec![crate::snapshot::ScopedTable {
                schema: self.at.schema.clone(),
                table: self.at.table.clone(),
            }],
        }
    }

    fn atomic(&self) -> bool {
        self.found.get().is_some_and(|d| d.atomic())
    }

    fn up_sql(&self, text: &str) -> String {
        self.found.get().map(|d| d.up_sql(text)).unwrap_or_else(|| text.to_string())
    }

    fn pending(&self, recorded: &[Migration]) -> Vec<Migration> {
        self.found.get().map(|d| d.pending(recorded)).unwrap_or_default()
    }

    fn command_name(&self, m: &Migration) -> String {
        self.found.get().map(|d| d.command_name(m)).unwrap_or_else(|| m.name.clone())
    }

    fn command_prev(&self, m: &Migration) -> Option<String> {
        self.found.get().and_then(|d| d.command_prev(m))
    }

    fn same_rows(&self, rows: &[serde_json::Value], applied: &[&Migration]) -> bool {
        match self.found.get() {
            Some(d) => d.same_rows(rows, applied),
            None => rows.len() == applied.len() && applied.iter().all(|a| self.attempted(rows, a)),
        }
    }

    fn code_file(&self, m: &Migration) -> Option<std::path::PathBuf> {
        self.found.get().and_then(|d| d.code_file(m))
    }

    fn file_changed(&self, m: &Migration, text: &str) -> Option<bool> {
        self.found.get().and_then(|d| d.file_changed(m, text))
    }

    async fn resolve(
        &self,
        s: &Session,
        cfg: &MigrationsConfig,
        m: &Migration,
        how: ResolveAs,
    ) -> StepResult {
        match self.inner(s).await.map_err(|e| e.to_string())? {
            Some(d) => d.resolve(s, cfg, m, how).await,
            None => Err("no migrations table was found to resolve in".into()),
        }
    }

    async fn release_lock(&self, s: &Session) -> StepResult {
        match self.inner(s).await.map_err(|e| e.to_string())? {
            Some(d) => d.release_lock(s).await,
            None => Err("no migrations table was found".into()),
        }
    }

    async fn accept_checksums(&self, s: &Session, cfg: &MigrationsConfig) -> StepResult {
        match self.inner(s).await.map_err(|e| e.to_string())? {
            Some(d) => d.accept_checksums(s, cfg).await,
            None => Err("no migrations table was found".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{classify, Found};

    fn t(name: &str, cols: &[&str]) -> (String, Vec<String>) {
        (name.into(), cols.iter().map(|c| c.to_string()).collect())
    }

    #[test]
    fn dbmate_rails_and_golang_migrate_are_told_apart_by_columns_and_neighbours() {
        let dbmate = [t("schema_migrations", &["version"])];
        assert_eq!(classify(&dbmate), Some(Found::Tool("dbmate", "schema_migrations".into())));
        let gm = [t("schema_migrations", &["version", "dirty"])];
        assert_eq!(classify(&gm), Some(Found::Tool("golang-migrate", "schema_migrations".into())));
        let rails = [t("ar_internal_metadata", &["key", "value"]), t("schema_migrations", &["version"])];
        assert_eq!(classify(&rails), Some(Found::Tool("rails", "schema_migrations".into())));
    }

    #[test]
    fn a_known_tool_table_is_never_missing() {
        let django = [t("django_migrations", &["id", "app", "name", "applied"])];
        assert_eq!(classify(&django), Some(Found::Tool("django", "django_migrations".into())));
        let goose = [t("goose_db_version", &["id", "version_id", "is_applied", "tstamp"])];
        assert!(matches!(classify(&goose), Some(Found::Unrecognised { like: Some("goose"), .. })));
        let odd = [t("users", &["id"]), t("knex_migrations", &["id", "title"])];
        match classify(&odd) {
            Some(Found::Unrecognised { table, columns, like: None }) => {
                assert_eq!(table, "knex_migrations");
                assert_eq!(columns, ["id", "title"]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(classify(&[t("users", &["id", "name"])]), None);
    }
}
