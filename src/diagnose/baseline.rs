//! The last good state: the newest snapshot taken before the migration started whose recorded
//! migration rows show it not yet applied, read through its stored schema text (which `lab`
//! loads on the scratch server for the replay).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::snapshot::{self, Manifest};
use crate::sql::Baseline;
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

/// `before`: whether a candidate's schema can be from before the migration (for a half-applied
/// one, which no row dates: the schema must lack what the migration created).
pub async fn find_baseline(
    storage: &Arc<dyn Storage>,
    database: &str,
    migration: &Migration,
    dialect: &dyn Dialect,
    before: &(dyn Fn(&Baseline) -> bool + Sync),
) -> Result<BaselineSnapshot, String> {
    // A tool that records no start time (golang-migrate): the rows alone tell.
    let started = migration.started_at.unwrap_or_else(Utc::now);
    let all =
        snapshot::list(storage, Some(database)).await.map_err(|e| format!("cannot list snapshots: {e}"))?;
    let candidates = all.iter().rev().filter(|m| m.taken_at < started && !attempted(m, dialect, migration));
    for m in candidates {
        let text = match schema_text(storage, m).await {
            Ok(Some(t)) => t,
            Ok(None) => continue,
            Err(Mismatch) => {
                tracing::warn!(snapshot = %m.id, "a snapshot's schema text does not match its manifest's hash; trying an older one");
                continue;
            }
            Err(Unreadable(e)) => return Err(e),
        };
        let schema = Baseline::parse(&text).resolving_in(dialect.schema());
        if !before(&schema) {
            tracing::info!(snapshot = %m.id, migration = %migration.name, "a snapshot already holds what the migration created; trying an older one");
            continue;
        }
        return Ok(BaselineSnapshot { id: m.id.clone(), taken_at: m.taken_at, text, schema });
    }
    Err(format!(
        "no snapshot of {database} with its schema was taken before {} while `{}` was not yet applied",
        started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        migration.name
    ))
}

pub enum SchemaTextError {
    /// The stored bytes are not those the manifest names.
    Mismatch,
    Unreadable(String),
}
use SchemaTextError::{Mismatch, Unreadable};

/// The schema text stored beside snapshot `m` (None when it has none), checked against its
/// manifest's hash, decrypted and decompressed within bounds.
pub async fn schema_text(
    storage: &Arc<dyn Storage>,
    m: &Manifest,
) -> Result<Option<String>, SchemaTextError> {
    let Some(obj) = &m.schema else { return Ok(None) };
    let bytes = storage
        .get(&layout::object(&m.database, &m.id, &obj.object))
        .await
        .map_err(|e| Unreadable(format!("cannot read the schema of snapshot {}: {e}", m.id)))?;
    if hex::encode(Sha256::digest(&bytes)) != obj.sha256 {
        return Err(Mismatch);
    }
    let raw = open_schema(m, &bytes)
        .map_err(|e| Unreadable(format!("cannot read the schema of snapshot {}: {e}", m.id)))?;
    Ok(Some(String::from_utf8_lossy(&raw).into_owned()))
}

/// No schema text is larger than this (a 100,000-table schema is ~100 MB): a forged object that
/// decompresses without end (a zstd bomb) stops here, not at the daemon's memory.
const SCHEMA_CAP: u64 = 512 * 1024 * 1024;

/// The schema text of `m` from its stored bytes: decrypted with the configured identity when
/// the snapshot is encrypted (zstd → age on the way in), then decompressed, to at most the size
/// its manifest records (and never over `SCHEMA_CAP`).
fn open_schema(m: &Manifest, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let limit = m.schema.as_ref().map_or(SCHEMA_CAP, |s| s.raw_bytes.min(SCHEMA_CAP));
    if m.encryption.is_none() {
        return decode_bounded(bytes, limit);
    }
    let ids = crate::crypt::configured_identities().map_err(|e| format!("it is encrypted and {e}"))?;
    let plain = crate::crypt::open(bytes, &ids).map_err(|e| format!("it is encrypted and {e}"))?;
    decode_bounded(plain, limit)
}

fn decode_bounded(input: impl std::io::Read, limit: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let dec = zstd::stream::read::Decoder::new(input).map_err(|e| format!("cannot decompress it: {e}"))?;
    let mut out = Vec::new();
    dec.take(limit + 1).read_to_end(&mut out).map_err(|e| format!("cannot decompress it: {e}"))?;
    if out.len() as u64 > limit {
        return Err(format!("it decompresses to more than the {limit} bytes its manifest allows: not used"));
    }
    Ok(out)
}
