//! The manifest: written last, it is what makes a snapshot exist. This file also owns the
//! catalogue, which is nothing but the manifests found in storage.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::SnapshotError;
use crate::storage::{layout, Storage, StorageError};

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub id: String,
    pub database: String,
    pub reason: String,
    pub trigger: String,
    pub taken_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub host: String,
    /// The installation that took it (`daemon.instance`; absent before version 0.4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// A scheduled run's due time: the run this snapshot covers for every installation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<DateTime<Utc>>,
    pub pg_dump_version: String,
    /// Where that pg_dump was (chosen for the server's major; absent before version 0.3).
    #[serde(default)]
    pub pg_bin_dir: Option<String>,
    pub server_version: String,
    pub format: String,
    pub compression: Compression,
    /// The dump object's key, relative to the snapshot's folder.
    pub object: String,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    /// SHA-256 of the stored (compressed) object, lowercase hex.
    pub sha256: String,
    /// Each table's rows as dumped, counted from pg_dump's stream (absent in older manifests,
    /// and when the stream was not understood).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<Vec<super::archive::TableRows>>,
    pub globals: Option<StoredObject>,
    /// `pg_dump --schema-only` of the same database snapshot (absent before version 0.2).
    #[serde(default)]
    pub schema: Option<StoredObject>,
    pub migrations: Option<MigrationRows>,
    /// Set when every object (dump, globals, schema) is age-encrypted: to whom, by fingerprint.
    #[serde(default)]
    pub encryption: Option<EncryptionInfo>,
    /// `"full"`, or the tables whose rows a scoped pre-repair snapshot holds (the schema and
    /// globals are whole either way); absent in older manifests: full.
    #[serde(default)]
    pub scope: Scope,
    /// Why a pre-repair snapshot has the scope it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope_reason: Option<String>,
}

/// A snapshot's data: the whole database, or exactly these tables' rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Scope {
    #[default]
    Full,
    Tables(Vec<ScopedTable>),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ScopedTable {
    pub schema: String,
    pub table: String,
}

impl ScopedTable {
    /// `"schema"."table"`, for SQL.
    pub fn sql(&self) -> String {
        format!("{}.{}", crate::pg::quote_ident(&self.schema), crate::pg::quote_ident(&self.table))
    }

    /// pg_dump's `--table` pattern matching exactly this table (quotes make `*`, `?`, `.` literal).
    pub fn pattern(&self) -> String {
        let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        format!("{}.{}", q(&self.schema), q(&self.table))
    }
}

impl Scope {
    pub fn is_full(&self) -> bool {
        matches!(self, Scope::Full)
    }

    pub fn tables(&self) -> Option<&[ScopedTable]> {
        match self {
            Scope::Full => None,
            Scope::Tables(t) => Some(t),
        }
    }
}

/// `"full"` or `{"tables": [...]}` on the wire.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum ScopeWire {
    Word(String),
    Tables { tables: Vec<ScopedTable> },
}

impl Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Scope::Full => ScopeWire::Word("full".into()),
            Scope::Tables(t) => ScopeWire::Tables { tables: t.clone() },
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Scope, D::Error> {
        match ScopeWire::deserialize(d)? {
            ScopeWire::Word(w) if w == "full" => Ok(Scope::Full),
            ScopeWire::Word(w) => {
                Err(serde::de::Error::custom(format!("scope `{w}` is not \"full\" or {{\"tables\": [...]}}")))
            }
            ScopeWire::Tables { tables } => Ok(Scope::Tables(tables)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncryptionInfo {
    /// `age` (X25519 recipients), applied after zstd.
    pub format: String,
    /// `sha256:<16 hex>` of each recipient; never a key.
    pub recipients: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Compression {
    pub algorithm: String,
    pub level: i32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredObject {
    pub object: String,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrationRows {
    pub tool: String,
    pub schema: String,
    pub table: String,
    pub rows: Vec<serde_json::Value>,
    /// The rows' `logs` were left out (an encrypted snapshot's plaintext manifest).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub logs_omitted: bool,
}

impl MigrationRows {
    /// Each row's `logs` emptied (null), and that said.
    pub fn omit_logs(&mut self) {
        for r in &mut self.rows {
            if let Some(v) = r.as_object_mut().and_then(|o| o.get_mut("logs")) {
                *v = serde_json::Value::Null;
            }
        }
        self.logs_omitted = true;
    }
}

impl Manifest {
    pub fn object_key(&self) -> String {
        layout::object(&self.database, &self.id, &self.object)
    }

    pub fn manifest_key(&self) -> String {
        layout::object(&self.database, &self.id, layout::MANIFEST)
    }

    /// Every key of this snapshot, the manifest first (the order deletion must follow).
    pub fn keys(&self) -> Vec<String> {
        let mut keys = vec![self.manifest_key(), self.object_key()];
        for o in [&self.globals, &self.schema].into_iter().flatten() {
            keys.push(layout::object(&self.database, &self.id, &o.object));
        }
        keys
    }
}

/// Complete snapshots, oldest first; `database` narrows the listing.
pub async fn list(
    storage: &Arc<dyn Storage>,
    database: Option<&str>,
) -> Result<Vec<Manifest>, SnapshotError> {
    let prefix = database.map(|d| format!("{d}/")).unwrap_or_default();
    let keys = storage.list(&prefix).await?;
    let mut out = Vec::new();
    for key in keys.iter().filter(|k| is_manifest_key(k)) {
        match load(storage, key).await {
            Ok(m) => out.push(m),
            Err(SnapshotError::Storage(StorageError::NotFound { .. })) => {} // deleted meanwhile
            Err(e) => tracing::warn!(key = %key, error = %e, "skipping an unreadable manifest"),
        }
    }
    out.sort_by(|a, b| (a.taken_at, &a.id).cmp(&(b.taken_at, &b.id)));
    Ok(out)
}

/// `<database>/<id>/manifest.json` (never under pgmedic's own folder).
pub fn is_manifest_key(key: &str) -> bool {
    let parts: Vec<&str> = key.split('/').collect();
    parts.len() == 3
        && parts[0] != layout::OWN
        && parts[2] == layout::MANIFEST
        && super::id::is_valid(parts[1])
}

/// The largest manifest read: a forged one of gigabytes must not take the daemon's memory (a
/// real one is kilobytes, or a few MiB with a hundred thousand tables' row counts).
const MAX_MANIFEST: u64 = 64 << 20;

pub async fn load(storage: &Arc<dyn Storage>, key: &str) -> Result<Manifest, SnapshotError> {
    use tokio::io::AsyncReadExt;
    let bad = |message: String| SnapshotError::BadManifest { key: key.into(), message };
    let mut bytes = Vec::new();
    let reader = storage.open(key).await?;
    reader.take(MAX_MANIFEST + 1).read_to_end(&mut bytes).await.map_err(|e| bad(e.to_string()))?;
    if bytes.len() as u64 > MAX_MANIFEST {
        return Err(bad(format!("larger than {} MiB: not a manifest pgmedic wrote", MAX_MANIFEST >> 20)));
    }
    parse(&bytes, key).map_err(bad)
}

/// A manifest's bytes, read from `key`: well-formed, and belonging there.
pub fn parse(bytes: &[u8], key: &str) -> Result<Manifest, String> {
    let m: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    belongs(&m, key)?;
    Ok(m)
}

/// Anyone who can write the bucket can write a manifest: its database and id must be those of
/// the key it was read from (a copied or renamed folder is not another snapshot), and the
/// objects it names the layout's own (never `../../state/audit.jsonl` for prune to delete).
fn belongs(m: &Manifest, key: &str) -> Result<(), String> {
    if m.manifest_key() != key {
        return Err(format!(
            "it says it is snapshot {} of {}, but it was read from {key}: a copied or renamed snapshot folder is not used",
            m.id, m.database
        ));
    }
    let named = [
        (Some(m.object.as_str()), layout::DUMP),
        (m.globals.as_ref().map(|o| o.object.as_str()), layout::GLOBALS),
        (m.schema.as_ref().map(|o| o.object.as_str()), layout::SCHEMA),
    ];
    for (object, want) in named {
        if let Some(o) = object {
            if o != want {
                return Err(format!("it names the object `{o}` where the layout has `{want}`: not used"));
            }
        }
    }
    Ok(())
}

/// The complete snapshot `id`, wherever its database is.
pub async fn find(storage: &Arc<dyn Storage>, id: &str) -> Result<Manifest, SnapshotError> {
    if !super::id::is_valid(id) {
        return Err(SnapshotError::BadId { id: id.into() });
    }
    let keys = storage.list("").await?;
    let suffix = format!("/{id}/{}", layout::MANIFEST);
    match keys.iter().find(|k| k.ends_with(&suffix) && is_manifest_key(k)) {
        Some(key) => load(storage, key).await,
        None => Err(SnapshotError::NotFound { id: id.into(), location: storage.location() }),
    }
}

/// Deletes the objects of `database`'s snapshots that have no manifest (a process killed between
/// storing its dump and writing its manifest). Call only under the database's snapshot lock:
/// then no snapshot of it is being written.
pub async fn remove_orphans(storage: &Arc<dyn Storage>, database: &str) -> Result<usize, SnapshotError> {
    let keys = storage.list(&format!("{database}/")).await?;
    let mut by_id: std::collections::BTreeMap<&str, Vec<&String>> = std::collections::BTreeMap::new();
    for key in &keys {
        let parts: Vec<&str> = key.split('/').collect();
        // Only snapshot objects: an old audit copy under `audit/` is never taken for an orphan.
        if parts.len() == 3 && super::id::is_valid(parts[1]) && layout::is_snapshot_object(parts[2]) {
            by_id.entry(parts[1]).or_default().push(key);
        }
    }
    let mut removed = 0;
    for (id, keys) in by_id {
        if keys.iter().any(|k| k.ends_with(&format!("/{}", layout::MANIFEST))) {
            continue;
        }
        tracing::warn!(database, id, "removing a snapshot that never got its manifest");
        for key in keys {
            storage.delete(key).await?;
        }
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::parse;

    const KEY: &str = "app/20260101T000000Z-abcd/manifest.json";

    fn sample() -> String {
        serde_json::json!({
            "format_version": 1, "id": "20260101T000000Z-abcd", "database": "app", "reason": "scheduled",
            "trigger": "cron", "taken_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:01Z",
            "host": "h", "pg_dump_version": "15", "server_version": "15", "format": "custom",
            "compression": {"algorithm": "zstd", "level": 3}, "object": "dump.zst", "raw_bytes": 10,
            "stored_bytes": 5, "sha256": "00", "tables": [{"schema": "public", "table": "t", "rows": 1}],
            "globals": null, "schema": {"object": "schema.sql.zst", "raw_bytes": 1, "stored_bytes": 1, "sha256": "00"},
            "migrations": {"tool": "prisma", "schema": "public", "table": "_prisma_migrations", "rows": [{"logs": "x"}]}
        })
        .to_string()
    }

    #[test]
    fn the_sample_parses() {
        assert!(parse(sample().as_bytes(), KEY).is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Any bytes: an error or a manifest, never a panic; one accepted names only its own
        /// folder's objects.
        #[test]
        fn mutated_manifests_never_panic(cut in 0usize..2000, at in 0usize..2000, junk in proptest::collection::vec(any::<u8>(), 0..16)) {
            let mut bytes = sample().into_bytes();
            let at = at.min(bytes.len());
            bytes.splice(at..(at + junk.len()).min(bytes.len()), junk);
            bytes.truncate(cut.max(1).min(bytes.len()));
            if let Ok(m) = parse(&bytes, KEY) {
                for k in m.keys() {
                    prop_assert!(k.starts_with("app/20260101T000000Z-abcd/") && !k.contains(".."), "{k}");
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes, KEY);
        }
    }
}
