//! Taking a snapshot: lock, gather what the manifest records, stream pg_dump through the
//! pipeline into storage, and write the manifest last. Every failure path aborts the upload, so
//! a failed snapshot is never listed; the manifest is the only proof a snapshot exists.

pub mod archive;
mod dump;
pub mod id;
mod manifest;
mod pipeline;
mod retention;

use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{DatabaseConfig, SnapshotConfig};
use crate::pg::{self, DbError, PgTools, ToolError};
use crate::storage::{layout, Storage, StorageError};

pub use manifest::{
    find, is_manifest_key, list, load as load_manifest, Compression, EncryptionInfo, Manifest, MigrationRows,
    Scope, ScopedTable, StoredObject, FORMAT_VERSION,
};
pub use pipeline::{cores, CHUNK};
pub use retention::{plan, prune, Decision, PruneReport, PRE_REPAIR};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("snapshot of {database} failed: {source}")]
    Dump { database: String, source: ToolError },
    #[error("snapshot of {database} is refused: another snapshot of it is running (pgmedic's snapshot lock on the database is held); wait for it, or see `pgmedic status`")]
    Busy { database: String },
    /// A scheduled run another installation sharing the storage covers (or a standby's).
    #[error("scheduled snapshot of {database} skipped: {why}")]
    Skipped { database: String, why: String, newest_at: Option<chrono::DateTime<Utc>> },
    #[error("snapshot {id} of {database} failed while compressing: {message}")]
    Pipeline { database: String, id: String, message: String },
    #[error("snapshot of {database} failed: pgmedic's snapshot lock on it was lost ({detail}); another snapshot may have started meanwhile, so nothing of this one was kept: take a new snapshot")]
    LockLost { database: String, detail: String },
    #[error("snapshot of {database} failed: pg_dump waited {waited} (snapshot.lock_wait_timeout) for a lock on table {table}, held by {holders}; end that session or raise snapshot.lock_wait_timeout ({stderr})")]
    LockWait { database: String, table: String, waited: String, holders: String, stderr: String },
    #[error("snapshot of {database} was cancelled; nothing was stored")]
    Cancelled { database: String },
    #[error("snapshot {id} not found in {location} (list them with `pgmedic snapshots`)")]
    NotFound { id: String, location: String },
    #[error("`{id}` is not a snapshot id (they look like 20261121T031500Z-manual-a1b2c3)")]
    BadId { id: String },
    #[error("scoped snapshot of {database} failed: {message}; no repair step runs without it")]
    Scoped { database: String, message: String },
    #[error("manifest {key} is unreadable: {message}")]
    BadManifest { key: String, message: String },
}

impl SnapshotError {
    /// Refusals exit 3: nothing was wrong, it was not safe to go on.
    pub fn is_refusal(&self) -> bool {
        matches!(self, SnapshotError::Busy { .. } | SnapshotError::Skipped { .. })
    }

    /// Not a failure: another snapshot of the database runs, or another installation covers
    /// this run. Status and metrics say "skipped"; no failure webhook or alert.
    pub fn is_skip(&self) -> bool {
        matches!(self, SnapshotError::Busy { .. } | SnapshotError::Skipped { .. })
    }
}

/// What a snapshot needs, built once and shared.
#[derive(Clone)]
pub struct Snapshotter {
    pub storage: Arc<dyn Storage>,
    pub tools: PgTools,
    pub cfg: SnapshotConfig,
}

/// Why a snapshot is taken and who asked.
#[derive(Debug, Clone)]
pub struct Request {
    pub reason: String,
    pub trigger: String,
    /// Taken by the daemon on its schedule (or catching up): skipped on a standby unless
    /// `snapshot.on_standby = "snapshot"`.
    pub scheduled: bool,
    /// The scheduled run's due time: skipped when another installation sharing the storage
    /// already took this slot.
    pub slot: Option<chrono::DateTime<Utc>>,
    /// The whole database, or only these tables' rows (a scoped pre-repair snapshot: the
    /// schema and globals stay whole).
    pub scope: Scope,
    pub scope_reason: Option<String>,
}

impl Request {
    /// A snapshot an operator or a repair asked for: always taken.
    pub fn asked(reason: impl Into<String>, trigger: impl Into<String>) -> Request {
        Request {
            reason: reason.into(),
            trigger: trigger.into(),
            scheduled: false,
            slot: None,
            scope: Scope::Full,
            scope_reason: None,
        }
    }
}

/// Advisory lock keys, two-int form, scoped to the database like every advisory lock.
pub mod locks {
    pub const CLASS: i32 = 0x7067_6d64; // "pgmd"
    pub const SNAPSHOT: i32 = 1;
    pub const REPAIR: i32 = 2;
}

impl Snapshotter {
    pub async fn take(
        &self,
        db: &DatabaseConfig,
        req: &Request,
        cancel: &CancellationToken,
    ) -> Result<Manifest, SnapshotError> {
        let taken_at = Utc::now();
        let id = id::new_id(taken_at, &req.reason);
        let span = tracing::info_span!("snapshot", id = %id, database = %db.name);
        self.take_as(db, req, &id, taken_at, cancel).instrument(span).await
    }

    async fn take_as(
        &self,
        db: &DatabaseConfig,
        req: &Request,
        id: &str,
        taken_at: chrono::DateTime<Utc>,
        cancel: &CancellationToken,
    ) -> Result<Manifest, SnapshotError> {
        let (session, shared) = self.open_locked(db, req).await?;
        let server_version = session.server_version().await?;
        let mut migrations = read_migrations(&session, db).await?;
        if self.cfg.encryption.is_some() {
            // The manifest stays readable without the identity: a tool's failure log (a server
            // DETAIL quoting row values, a statement with a password) is left out of it.
            if let Some(m) = migrations.as_mut() {
                m.omit_logs();
            }
        }
        let this = self.for_server(&session, db).await?;
        tracing::info!(tools = %this.tools.bin_dir().map(|d| d.display().to_string()).unwrap_or_else(|| "PATH".into()), "dumping");
        // The globals first (a snapshot killed mid-dump leaves one partial object, the dump's);
        // the schema and the tool's version ride along the dump.
        let globals = this.store_globals(db, id, cancel).await;
        let (dumped, schema, pg_dump_version) = tokio::join!(
            this.dump(db, id, shared.as_deref(), &req.scope, cancel),
            this.store_schema(db, id, shared.as_deref(), cancel),
            this.tools.version("pg_dump"),
        );
        let extras = [globals.as_ref(), schema.as_ref()];
        if !req.scope.is_full() && schema.is_none() {
            // Its tables' rows are nothing without the schema to put them in.
            if dumped.is_ok() {
                let _ = self.storage.delete(&layout::object(&db.name, id, layout::DUMP)).await;
            }
            self.delete_quietly(db, id, &extras).await;
            let message = "pg_dump --schema-only failed, and a scoped snapshot needs the whole schema".into();
            return Err(SnapshotError::Scoped { database: db.name.clone(), message });
        }
        let dumped = match dumped {
            Ok(d) => d,
            Err(e) => return Err(self.dump_failed(&session, db, id, &extras, e).await),
        };
        let pg_dump_version = match pg_dump_version {
            Ok(v) => v,
            Err(e) => {
                let _ = self.storage.delete(&layout::object(&db.name, id, layout::DUMP)).await;
                self.delete_quietly(db, id, &extras).await;
                return Err(dump::dump_err(db, e));
            }
        };
        // Without the lock another snapshot may be cleaning this folder: never finish it then.
        if let Err(e) = check_lock(&session, db).await {
            let _ = self.storage.delete(&layout::object(&db.name, id, layout::DUMP)).await;
            self.delete_quietly(db, id, &extras).await;
            return Err(e);
        }
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            id: id.to_string(),
            database: db.name.clone(),
            reason: req.reason.clone(),
            trigger: req.trigger.clone(),
            taken_at,
            finished_at: Utc::now(),
            host: hostname(),
            instance: Some(self.cfg.instance.clone()).filter(|i| !i.is_empty()),
            slot: req.slot,
            pg_dump_version,
            pg_bin_dir: this.tools.bin_dir().map(|d| d.display().to_string()),
            server_version,
            format: "pg_dump custom".into(),
            compression: Compression { algorithm: "zstd".into(), level: self.cfg.compression_level },
            object: layout::DUMP.into(),
            raw_bytes: dumped.stats.raw_bytes,
            stored_bytes: dumped.stats.stored_bytes,
            sha256: dumped.stats.sha256,
            tables: dumped.stats.tables,
            globals,
            schema,
            migrations,
            encryption: self.encryption_info(),
            scope: req.scope.clone(),
            scope_reason: req.scope_reason.clone(),
        };
        self.write_manifest(&manifest).await?;
        tracing::info!(
            stored_bytes = manifest.stored_bytes,
            raw_bytes = manifest.raw_bytes,
            "snapshot complete"
        );
        drop(session);
        Ok(manifest)
    }

    /// Err(Skipped) when this scheduled run is not this installation's to take: its server is a
    /// standby (the primary's daemon takes them, unless `snapshot.on_standby = "snapshot"`), or
    /// another installation sharing the storage already took this slot. Checked under the
    /// snapshot lock, so two daemons on one server never both pass.
    async fn covered_elsewhere(
        &self,
        session: &pg::Session,
        db: &DatabaseConfig,
        req: &Request,
    ) -> Result<(), SnapshotError> {
        let standby = !self.cfg.snapshot_standbys && session.is_in_recovery().await?;
        let listed = manifest::list(&self.storage, Some(&db.name)).await?;
        let newest_at = listed.iter().filter(|m| m.scope.is_full()).last().map(|m| m.finished_at);
        let skipped = |why: String| Err(SnapshotError::Skipped { database: db.name.clone(), why, newest_at });
        if standby {
            return skipped("its server is a standby (in recovery): the primary's pgmedic takes the scheduled snapshots; set snapshot.on_standby = \"snapshot\" to dump this standby instead".into());
        }
        let Some(slot) = req.slot else { return Ok(()) };
        match listed.iter().rev().find(|m| m.slot == Some(slot)) {
            Some(m) => skipped(format!(
                "the run due at {} was taken by {} (snapshot {}): one snapshot per scheduled run across the installations sharing the storage",
                slot.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                m.instance.as_deref().unwrap_or(&m.host),
                m.id
            )),
            None => Ok(()),
        }
    }

    /// A session holding the database's snapshot lock, with leftovers cleaned, and the id of an
    /// exported database snapshot that the migrations rows, the dump and the schema all read.
    async fn open_locked(
        &self,
        db: &DatabaseConfig,
        req: &Request,
    ) -> Result<(pg::Session, Option<String>), SnapshotError> {
        let session = pg::connect(&db.url).await?;
        // The lock lives as long as this session: the database's idle_session_timeout must not
        // end it half way through a dump.
        session.immune_to_timeouts().await?;
        if !session.try_advisory_lock(locks::CLASS, locks::SNAPSHOT).await? {
            return Err(SnapshotError::Busy { database: db.name.clone() });
        }
        // Before any cleaning: the lock is this server's, and a run that is another
        // installation's must not touch the storage they share (its snapshot may be in flight).
        if req.scheduled {
            self.covered_elsewhere(&session, db, req).await?;
        }
        self.clean_leftovers(&session, db).await?;
        let shared = session.export_snapshot().await;
        if let Err(e) = &shared {
            tracing::warn!(error = %e, "no shared database snapshot: the manifest's migration rows and the dump are read moments apart");
        }
        Ok((session, shared.ok()))
    }

    /// This snapshotter with the client tools that can dump the server's major (pg_dump
    /// refuses a newer server).
    async fn for_server(
        &self,
        session: &pg::Session,
        db: &DatabaseConfig,
    ) -> Result<Snapshotter, SnapshotError> {
        let major = session.server_major().await?;
        let tools = self
            .tools
            .for_server(db.pg_bin_dir.as_deref(), major)
            .await
            .map_err(|e| dump::dump_err(db, e))?;
        Ok(Snapshotter { storage: Arc::clone(&self.storage), tools, cfg: self.cfg.clone() })
    }

    /// Removes what the failed dump left and says why it failed.
    async fn dump_failed(
        &self,
        session: &pg::Session,
        db: &DatabaseConfig,
        id: &str,
        extras: &[Option<&StoredObject>],
        e: SnapshotError,
    ) -> SnapshotError {
        self.delete_quietly(db, id, extras).await;
        // A lost lock session also ends the exported snapshot, and pg_dump may fail on that:
        // report the lost lock, with pg_dump's own words.
        if let Err(SnapshotError::LockLost { database, detail }) = check_lock(session, db).await {
            return SnapshotError::LockLost { database, detail: format!("{detail}; and {e}") };
        }
        dump::explain_lock_wait(session, db, &self.cfg, e).await
    }

    /// What the manifest says of client-side encryption: the format and the recipients'
    /// fingerprints, never a key.
    fn encryption_info(&self) -> Option<manifest::EncryptionInfo> {
        self.cfg.encryption.as_ref().map(|e| manifest::EncryptionInfo {
            format: "age".into(),
            recipients: e.recipients.iter().map(|r| crate::crypt::fingerprint(r)).collect(),
        })
    }

    /// The lock is ours, so any partial upload of this database, and any dump without its
    /// manifest, belongs to a dead process: remove them (after checking the lock still holds).
    async fn clean_leftovers(&self, session: &pg::Session, db: &DatabaseConfig) -> Result<(), SnapshotError> {
        check_lock(session, db).await?;
        let cleaned = self.storage.abort_partial_writes(&format!("{}/", db.name)).await?;
        if cleaned > 0 {
            tracing::info!(cleaned, "removed partial uploads of earlier snapshots");
        }
        manifest::remove_orphans(&self.storage, &db.name).await?;
        Ok(())
    }

    async fn write_manifest(&self, m: &Manifest) -> Result<(), SnapshotError> {
        let body = serde_json::to_vec_pretty(m).expect("a manifest always serialises");
        if let Err(e) = self.storage.put(&m.manifest_key(), Bytes::from(body)).await {
            // Without its manifest the dump is invisible; remove it rather than leave it.
            for key in m.keys().iter().skip(1) {
                let _ = self.storage.delete(key).await;
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// Removes the small objects (globals, schema) of a snapshot that failed.
    async fn delete_quietly(&self, db: &DatabaseConfig, id: &str, objects: &[Option<&StoredObject>]) {
        for o in objects.iter().flatten() {
            if let Err(e) = self.storage.delete(&layout::object(&db.name, id, &o.object)).await {
                tracing::warn!(error = %e, object = %o.object, "could not remove an object of a failed snapshot");
            }
        }
    }
}

async fn check_lock(session: &pg::Session, db: &DatabaseConfig) -> Result<(), SnapshotError> {
    let lost = |detail: String| SnapshotError::LockLost { database: db.name.clone(), detail };
    match session.holds_advisory_lock(locks::CLASS, locks::SNAPSHOT).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(lost("the session no longer holds it".into())),
        Err(e) => Err(lost(format!("its session ended: {e}"))),
    }
}

/// The migrations table's rows, as the configured tool (or Prisma's default place) has them.
async fn read_migrations(
    session: &pg::Session,
    db: &DatabaseConfig,
) -> Result<Option<MigrationRows>, SnapshotError> {
    let dialect = crate::watch::dialect(&db.migrations_or_default());
    let rows = dialect.raw_rows(session).await?;
    if dialect.table().is_empty() {
        return Ok(None); // `auto` found no migrations table
    }
    if rows.is_empty() && !session.relation_exists(&dialect.qualified()).await? {
        return Ok(None);
    }
    let (tool, schema, table) =
        (dialect.tool().to_string(), dialect.table_schema().to_string(), dialect.table().to_string());
    Ok(Some(MigrationRows { tool, schema, table, rows, logs_omitted: false }))
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if ok {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "unknown".into()
    }
}
