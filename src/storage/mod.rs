//! Where snapshots live: one interface over a local directory and an S3-compatible bucket.
//! Keys are relative to the configured prefix and use `/`. Writers are all-or-nothing: an
//! object becomes visible only when `finish` succeeds, so a failed upload never looks stored.

mod local;
mod s3;

use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncRead;

use crate::config::{StorageBackend, StorageConfig};

pub use local::LocalStorage;
pub use s3::S3Storage;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object {key} not found in {location}")]
    NotFound { key: String, location: String },
    #[error("storage {location}: {op} {key} failed: {message}")]
    Backend { location: String, op: &'static str, key: String, message: String },
    #[error("storage {location}: {op} {key} failed: {source}")]
    Io { location: String, op: &'static str, key: String, source: std::io::Error },
}

pub type ObjectReader = Pin<Box<dyn AsyncRead + Send>>;

#[async_trait]
pub trait Storage: Send + Sync {
    /// `s3://bucket/prefix` or the local directory, for messages.
    fn location(&self) -> String;
    /// Starts an all-or-nothing streamed write of `key`.
    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError>;
    /// Writes a small object atomically.
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError>;
    /// Reads a small object whole.
    async fn get(&self, key: &str) -> Result<Bytes, StorageError>;
    /// Streams an object.
    async fn open(&self, key: &str) -> Result<ObjectReader, StorageError>;
    /// Every key under `prefix` (a folder, with or without a trailing `/`), sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError>;
    /// Deletes `key`; a missing key is not an error.
    async fn delete(&self, key: &str) -> Result<(), StorageError>;
    /// Removes partial writes under `prefix` left by a process that died. Call only while no
    /// other writer can be active there (the snapshot lock guarantees it).
    async fn abort_partial_writes(&self, prefix: &str) -> Result<usize, StorageError>;
    /// Checks that the store answers, for readiness and early errors.
    async fn probe(&self) -> Result<(), StorageError>;
}

#[async_trait]
pub trait ObjectWriter: Send {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError>;
    /// Makes the object visible; returns its size.
    async fn finish(self: Box<Self>) -> Result<u64, StorageError>;
    /// Discards everything written; best effort, errors are logged.
    async fn abort(self: Box<Self>);
}

/// Opens the configured backend.
pub async fn open(cfg: &StorageConfig) -> Result<Arc<dyn Storage>, StorageError> {
    Ok(match &cfg.backend {
        StorageBackend::Local { path } => Arc::new(LocalStorage::new(path.clone(), &cfg.prefix)),
        StorageBackend::S3(s3) => Arc::new(S3Storage::connect(s3, cfg).await?),
    })
}

/// The layout of snapshots and audit records inside the prefix: a database's snapshots under
/// `<database>/<id>/`, pgmedic's own records under `_pgmedic/`, a name no database may take
/// (validation refuses it), so the two can never meet. Versions before 0.2 wrote audit copies to
/// `audit/<database>/`; a database named `audit` is safe beside them, because snapshots are
/// recognised by their object names, never by folder.
pub mod layout {
    pub const DUMP: &str = "dump.zst";
    pub const GLOBALS: &str = "globals.sql.zst";
    pub const SCHEMA: &str = "schema.sql.zst";
    pub const MANIFEST: &str = "manifest.json";
    /// The top-level folder of pgmedic's own records.
    pub const OWN: &str = crate::config::OWN_STORAGE_FOLDER;

    /// Whether `name` is an object a snapshot folder holds.
    pub fn is_snapshot_object(name: &str) -> bool {
        matches!(name, DUMP | GLOBALS | SCHEMA | MANIFEST)
    }

    pub fn snapshot_dir(database: &str, id: &str) -> String {
        format!("{database}/{id}/")
    }

    pub fn object(database: &str, id: &str, name: &str) -> String {
        format!("{database}/{id}/{name}")
    }

    pub fn audit(database: &str, run_id: &str) -> String {
        format!("{OWN}/audit/{database}/{run_id}.json")
    }

    /// The folder of the daemons' heartbeats (`fleet`), with its trailing `/`.
    pub fn hosts() -> String {
        format!("{OWN}/hosts/")
    }
}
