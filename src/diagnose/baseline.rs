//! The last good state: the newest snapshot taken before the migration started whose recorded
//! migration rows show it not yet applied, read through its stored schema text. And the same
//! text loaded into a throw-away database, so that its catalog can describe the objects a
//! migration touched with the very queries that describe them live.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::config::DatabaseConfig;
use crate::pg::{self, scratch, PgTools, Pipes};
use crate::snapshot::{self, Manifest};
use crate::sql::{describe, Baseline};
use crate::storage::{layout, Storage};
use crate::watch::{Dialect, Migration};

pub struct BaselineSnapshot {
    pub id: String,
    pub taken_at: DateTime<Utc>,
    pub text: String,
    pub schema: Baseline,
}

/// Whether the manifest's rows show the migration applied or attempted (the tool decides).
fn attempted(m: &Manifest, dialect: &dyn Dialect, migration: &Migration) -> bool {
    m.migrations.as_ref().is_some_and(|rows| dialect.attempted(&rows.rows, migration))
}

pub async fn find_baseline(
    storage: &Arc<dyn Storage>,
    database: &str,
    migration: &Migration,
    dialect: &dyn Dialect,
) -> Result<BaselineSnapshot, String> {
    // A tool that records no start time (golang-migrate): the rows alone tell.
    let started = migration.started_at.unwrap_or_else(Utc::now);
    let all =
        snapshot::list(storage, Some(database)).await.map_err(|e| format!("cannot list snapshots: {e}"))?;
    let candidates = all.iter().rev().filter(|m| m.taken_at < started && !attempted(m, dialect, migration));
    for m in candidates {
        let Some(obj) = &m.schema else { continue };
        let bytes = storage
            .get(&layout::object(database, &m.id, &obj.object))
            .await
            .map_err(|e| format!("cannot read the schema of snapshot {}: {e}", m.id))?;
        if hex::encode(Sha256::digest(&bytes)) != obj.sha256 {
            tracing::warn!(snapshot = %m.id, "a snapshot's schema text does not match its manifest's hash; trying an older one");
            continue;
        }
        let raw = open_schema(m, &bytes)
            .map_err(|e| format!("cannot read the schema of snapshot {}: {e}", m.id))?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let schema = Baseline::parse(&text);
        return Ok(BaselineSnapshot { id: m.id.clone(), taken_at: m.taken_at, text, schema });
    }
    Err(format!(
        "no snapshot of {database} with its schema was taken before {} while `{}` was not yet applied",
        started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        migration.name
    ))
}

/// The schema text of `m` from its stored bytes: decrypted with the configured identity when
/// the snapshot is encrypted (zstd → age on the way in), then decompressed.
fn open_schema(m: &Manifest, bytes: &[u8]) -> Result<Vec<u8>, String> {
    if m.encryption.is_none() {
        return zstd::decode_all(bytes).map_err(|e| format!("cannot decompress it: {e}"));
    }
    let ids = crate::crypt::configured_identities().map_err(|e| format!("it is encrypted and {e}"))?;
    let plain = crate::crypt::open(bytes, &ids).map_err(|e| format!("it is encrypted and {e}"))?;
    zstd::decode_all(plain).map_err(|e| format!("cannot decompress it: {e}"))
}

/// Loads `schema_text` into a scratch database on `db`'s server, describes `touched` there, and
/// drops the scratch database again (also when something failed).
pub async fn scratch_description(
    db: &DatabaseConfig,
    tools: &PgTools,
    schema_text: &str,
    search_path: &str,
    touched: &describe::Touched,
) -> Result<Vec<String>, String> {
    // What an earlier diagnose, verify or rehearsal left when it was killed; never a live one.
    if let Err(e) = scratch::sweep(&db.url, std::time::Duration::MAX).await {
        tracing::warn!(error = %e, "could not clear scratch databases left by killed runs");
    }
    let made = scratch::Scratch::create(&db.url, scratch::Purpose::Baseline)
        .await
        .map_err(|e| format!("cannot create a scratch database for the baseline: {e}"))?;
    let result = load_and_describe(db, tools, made.name(), schema_text, search_path, touched).await;
    if let Err(e) = made.drop().await {
        tracing::warn!(database = %made.name(), error = %e, "could not drop the scratch database");
    }
    result
}

async fn load_and_describe(
    db: &DatabaseConfig,
    tools: &PgTools,
    name: &str,
    schema_text: &str,
    search_path: &str,
    touched: &describe::Touched,
) -> Result<Vec<String>, String> {
    let url = db.url.with_dbname(name);
    let args = ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"].map(Into::into);
    let mut proc = tools
        .spawn("psql", Some(&url), &args, Pipes { stdin: true, stdout: false })
        .map_err(|e| e.to_string())?;
    let mut stdin = tokio::fs::File::from_std(proc.take_stdin().map_err(|e| e.to_string())?);
    let written = stdin.write_all(schema_text.as_bytes()).await;
    drop(stdin);
    let waited = proc.wait().await;
    written.map_err(|e| format!("cannot feed the baseline schema to psql: {e}"))?;
    waited.map_err(|e| format!("the baseline schema does not load into a scratch database: {e}"))?;
    let session = pg::connect(&url).await.map_err(|e| e.to_string())?;
    crate::sql::catalog::set_search_path(session.client(), search_path)
        .await
        .map_err(|e| pg::error_text(&e))?;
    describe::describe(session.client(), touched).await.map_err(|e| pg::error_text(&e))
}
