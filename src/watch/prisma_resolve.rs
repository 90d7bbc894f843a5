//! Prisma's `resolve`, with exactly `prisma migrate resolve`'s semantics. Rolled back: every failed
//! row of the migration gets `rolled_back_at = now()` (P3011 when no row has that name, P3012
//! when none is failed). Applied: the same, then a new row with a fresh UUID, the SHA-256 of
//! `<dir>/<name>/migration.sql` (or the failed row's checksum when no dir is configured), empty
//! logs, `started_at = finished_at = now()` and 0 applied steps (P3008 when it is already
//! applied, P3017 when its folder is missing). One transaction, parameterised.

use sha2::{Digest, Sha256};

use crate::config::{MigrationsConfig, ResolveAs};
use crate::pg::{error_text, quote_ident, Session};

const FAILED: &str = "finished_at IS NULL AND rolled_back_at IS NULL";

pub async fn run(
    session: &Session,
    cfg: &MigrationsConfig,
    name: &str,
    how: ResolveAs,
) -> Result<String, String> {
    let table = format!("{}.{}", quote_ident(&cfg.schema), quote_ident(&cfg.table));
    let checksum = match how {
        ResolveAs::Applied => Some(local_checksum(cfg, name).await?).filter(|c| !c.is_empty()),
        ResolveAs::RolledBack | ResolveAs::FromDiagnosis => None,
    };
    let c = session.client();
    c.batch_execute("BEGIN").await.map_err(|e| error_text(&e))?;
    let result = resolve_in_tx(session, &table, name, how, checksum).await;
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    c.batch_execute(end).await.map_err(|e| error_text(&e))?;
    result
}

async fn resolve_in_tx(
    session: &Session,
    table: &str,
    name: &str,
    how: ResolveAs,
    checksum: Option<String>,
) -> Result<String, String> {
    let c = session.client();
    let q = |e: tokio_postgres::Error| error_text(&e);
    let counts = format!(
        "SELECT count(*), count(*) FILTER (WHERE {FAILED}), count(*) FILTER (WHERE finished_at IS NOT NULL AND rolled_back_at IS NULL), \
                (array_agg(checksum ORDER BY started_at DESC) FILTER (WHERE {FAILED}))[1] \
         FROM {table} WHERE migration_name = $1"
    );
    let row = c.query_one(&counts, &[&name]).await.map_err(q)?;
    let (all, failed, applied, failed_checksum): (i64, i64, i64, Option<String>) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    if how == ResolveAs::Applied && applied > 0 {
        return Err(format!("P3008: migration `{name}` is already recorded as applied"));
    }
    if how == ResolveAs::RolledBack && all == 0 {
        return Err(format!("P3011: no migration `{name}` in the table"));
    }
    if how == ResolveAs::RolledBack && failed == 0 {
        return Err(format!("P3012: migration `{name}` is not in a failed state"));
    }
    let marked = c
        .execute(
            &format!("UPDATE {table} SET rolled_back_at = now() WHERE migration_name = $1 AND {FAILED}"),
            &[&name],
        )
        .await
        .map_err(q)?;
    if how == ResolveAs::RolledBack {
        return Ok(format!("marked {marked} failed row(s) of {name} rolled back"));
    }
    let checksum = checksum.or(failed_checksum).ok_or_else(|| {
        format!("no checksum for `{name}`: configure databases.migrations.dir or keep its failed row")
    })?;
    let id = uuid::Uuid::new_v4().to_string();
    let insert = format!(
        "INSERT INTO {table} (id, checksum, finished_at, migration_name, logs, rolled_back_at, started_at, applied_steps_count) \
         VALUES ($1, $2, now(), $3, '', NULL, now(), 0)"
    );
    c.execute(&insert, &[&id, &checksum, &name]).await.map_err(q)?;
    Ok(format!("marked {marked} failed row(s) of {name} rolled back and recorded it applied (id {id}, checksum {checksum})"))
}

/// The SHA-256 of the local migration.sql, when `dir` is configured (P3017 when it is missing).
async fn local_checksum(cfg: &MigrationsConfig, name: &str) -> Result<String, String> {
    let Some(dir) = &cfg.dir else { return Ok(String::new()) };
    if name.contains('/') || name.contains("..") {
        return Err(format!("migration name `{name}` is not a folder name"));
    }
    let path = dir.join(name).join("migration.sql");
    let bytes =
        tokio::fs::read(&path).await.map_err(|e| format!("P3017: cannot read {}: {e}", path.display()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}
