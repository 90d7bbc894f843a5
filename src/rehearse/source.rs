//! The source database proven untouched by a rehearsal: its migration rows and a catalog
//! fingerprint (every relation, column, index and constraint outside the system schemas, one
//! query) read before the deploy starts and after it ends. Any difference is named: a deploy
//! that reached the source (a `directUrl` in the app's `.env`, a `flyway.toml` in the working
//! directory, a URL the operator's shell expanded) cannot pass as a rehearsal. What this cannot
//! see: rows written to the source's ordinary tables, and a third database the deploy wrote.

use std::collections::BTreeSet;

use crate::config::DatabaseConfig;
use crate::pg::{self, DbError};
use crate::watch::{self, Dialect, Migration, TableState};

const FINGERPRINT: &str = "\
WITH rel AS (
  SELECT c.oid, c.relkind, quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
    AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
    AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
)
SELECT 'relation ' || name || ' (' || CASE relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table'
    WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence'
    ELSE 'foreign table' END || ')' FROM rel
UNION ALL
SELECT 'column ' || rel.name || '.' || quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod)
    || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
  FROM pg_attribute a JOIN rel ON rel.oid = a.attrelid
  WHERE a.attnum > 0 AND NOT a.attisdropped AND rel.relkind <> 'S'
UNION ALL
SELECT 'index ' || pg_get_indexdef(i.indexrelid) || CASE WHEN i.indisvalid THEN '' ELSE ' (invalid)' END
  FROM pg_index i JOIN rel ON rel.oid = i.indrelid
UNION ALL
SELECT 'constraint ' || quote_ident(co.conname) || ' on ' || rel.name || ': ' || pg_get_constraintdef(co.oid)
    || CASE WHEN co.convalidated THEN '' ELSE ' (not valid)' END
  FROM pg_constraint co JOIN rel ON rel.oid = co.conrelid
ORDER BY 1";

/// What the source looked like at one moment, as far as a deploy could change it.
pub struct SourceState {
    migrations: Vec<String>,
    catalog: BTreeSet<String>,
}

/// Reads the source's migration rows and catalog fingerprint (read-only, two queries).
pub async fn read(db: &DatabaseConfig, dialect: &dyn Dialect) -> Result<SourceState, DbError> {
    let session = pg::connect(&db.url).await?;
    let rows = match watch::read(&session, dialect).await? {
        TableState::Rows { migrations } => migrations,
        _ => Vec::new(),
    };
    let catalog = session
        .client()
        .query(FINGERPRINT, &[])
        .await
        .map_err(|e| session.err("read the catalog fingerprint", e))?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    Ok(SourceState { migrations: rows.iter().map(row_text).collect(), catalog })
}

fn row_text(m: &Migration) -> String {
    format!(
        "{} {:?} finished={} rolled_back={} steps={} checksum={}",
        m.name,
        m.status,
        m.finished_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
        m.rolled_back_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
        m.applied_steps_count,
        m.checksum
    )
}

impl SourceState {
    /// What changed between `self` (before) and `after`, each named; empty when nothing did.
    pub fn changes(&self, after: &SourceState) -> Vec<String> {
        let mut out = Vec::new();
        let (b, a): (BTreeSet<&String>, BTreeSet<&String>) =
            (self.migrations.iter().collect(), after.migrations.iter().collect());
        for m in a.difference(&b) {
            out.push(format!("migration row now reads: {m}"));
        }
        for m in b.difference(&a) {
            out.push(format!("migration row gone or changed: {m}"));
        }
        for c in after.catalog.difference(&self.catalog) {
            out.push(format!("new {c}"));
        }
        for c in self.catalog.difference(&after.catalog) {
            out.push(format!("gone {c}"));
        }
        out
    }
}
