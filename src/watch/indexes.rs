//! Invalid indexes: `indisvalid = false` with no `CREATE INDEX` (or `REINDEX`) building one on
//! that table now. A failed or killed `CREATE INDEX CONCURRENTLY` leaves one behind whatever the
//! migration tool recorded (often nothing): the next deploy fails "already exists", and until
//! then every write maintains an index no query may use. Read on every database, with or
//! without a migrations section.

use serde::{Deserialize, Serialize};

use crate::pg::{DbError, Session};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidIndex {
    pub schema: String,
    pub table: String,
    pub index: String,
    pub definition: String,
}

impl InvalidIndex {
    pub fn text(&self) -> String {
        format!(
            "invalid index {}.{} on {}: {} — an index build that failed or was killed left it; drop it (DROP INDEX CONCURRENTLY) or rebuild it (REINDEX INDEX CONCURRENTLY)",
            self.schema, self.index, self.table, self.definition
        )
    }
}

const QUERY: &str =
    "SELECT n.nspname::text, t.relname::text, i.relname::text, pg_get_indexdef(x.indexrelid) \
    FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid \
    JOIN pg_namespace n ON n.oid = i.relnamespace \
    WHERE NOT x.indisvalid AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
      AND NOT EXISTS (SELECT 1 FROM pg_stat_progress_create_index p WHERE p.relid = x.indrelid) \
    ORDER BY 1, 3";

/// The database's invalid indexes that nothing is building now.
pub async fn invalid(session: &Session) -> Result<Vec<InvalidIndex>, DbError> {
    let rows =
        session.client().query(QUERY, &[]).await.map_err(|e| session.err("list invalid indexes", e))?;
    Ok(rows
        .iter()
        .map(|r| InvalidIndex { schema: r.get(0), table: r.get(1), index: r.get(2), definition: r.get(3) })
        .collect())
}
