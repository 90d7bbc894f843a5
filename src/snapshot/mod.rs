//! Taking a snapshot: lock, gather what the manifest records, stream pg_dump through the
//! pipeline into storage, and write the manifest last. Every failure path aborts the upload, so
//! a failed snapshot is never listed; the manifest is the only proof a snapshot exists.

pub mod id;
mod manifest;
mod pipeline;
mod retention;

use std::ffi::OsString;
use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{DatabaseConfig, SnapshotConfig};
use crate::pg::{self, DbError, PgTools, Pipes, ToolError};
use crate::storage::{layout, ObjectWriter, Storage, StorageError};

pub use manifest::{find, list, Compression, Manifest, MigrationRows, StoredObject, FORMAT_VERSION};
pub use pipeline::{cores, CHUNK};
pub use retention::{plan, prune, Decision, PruneReport, PRE_REPAIR};

const GLOBALS_CAP: u64 = 64 * 1024 * 1024;

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
    #[error("manifest {key} is unreadable: {message}")]
    BadManifest { key: String, message: String },
}

impl SnapshotError {
    /// Refusals exit 3: nothing was wrong, it was not safe to go on.
    pub fn is_refusal(&self) -> bool {
        matches!(self, SnapshotError::Busy { .. })
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
}

/// Advisory lock keys, two-int form, scoped to the database like every advisory lock.
pub mod locks {
    pub const CLASS: i32 = 0x7067_6d64; // "pgmd"
    pub const SNAPSHOT: i32 = 1;
    pub const REPAIR: i32 = 2;
}

struct Dumped {
    stats: pipeline::Stats,
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
        let session = pg::connect(&db.url).await?;
        // The lock lives as long as this session: the database's idle_session_timeout must not
        // end it half way through a dump.
        session.immune_to_timeouts().await?;
        if !session.try_advisory_lock(locks::CLASS, locks::SNAPSHOT).await? {
            return Err(SnapshotError::Busy { database: db.name.clone() });
        }
        self.clean_leftovers(&session, db).await?;
        let server_version = session.server_version().await?;
        let migrations = read_migrations(&session, db).await?;
        let pg_dump_version = self.tools.version("pg_dump").await.map_err(|e| dump_err(db, e))?;
        let globals = self.store_globals(db, id).await;
        tracing::info!("dumping");
        let dumped = match self.dump(db, id, cancel).await {
            Ok(d) => d,
            Err(e) => {
                self.delete_quietly(db, id, globals.as_ref()).await;
                return Err(explain_lock_wait(&session, db, &self.cfg, e).await);
            }
        };
        // Without the lock another snapshot may be cleaning this folder: never finish it then.
        if let Err(e) = check_lock(&session, db).await {
            let _ = self.storage.delete(&layout::object(&db.name, id, layout::DUMP)).await;
            self.delete_quietly(db, id, globals.as_ref()).await;
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
            pg_dump_version,
            server_version,
            format: "pg_dump custom".into(),
            compression: Compression { algorithm: "zstd".into(), level: self.cfg.compression_level },
            object: layout::DUMP.into(),
            raw_bytes: dumped.stats.raw_bytes,
            stored_bytes: dumped.stats.stored_bytes,
            sha256: dumped.stats.sha256,
            globals,
            migrations,
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

    async fn delete_quietly(&self, db: &DatabaseConfig, id: &str, globals: Option<&StoredObject>) {
        if let Some(g) = globals {
            if let Err(e) = self.storage.delete(&layout::object(&db.name, id, &g.object)).await {
                tracing::warn!(error = %e, "could not remove the globals of a failed snapshot");
            }
        }
    }

    /// pg_dump → pipeline → storage; the object is finished only if pg_dump exited 0.
    async fn dump(
        &self,
        db: &DatabaseConfig,
        id: &str,
        cancel: &CancellationToken,
    ) -> Result<Dumped, SnapshotError> {
        let key = layout::object(&db.name, id, layout::DUMP);
        let mut writer = self.storage.create(&key).await?;
        let wait_ms = self.cfg.lock_wait_timeout.as_millis().max(1);
        let args: Vec<OsString> = vec![
            "--format=custom".into(),
            "--compress=0".into(),
            format!("--lock-wait-timeout={wait_ms}").into(),
        ];
        let mut proc = match self.tools.spawn(
            "pg_dump",
            Some(&db.url),
            &args,
            Pipes { stdout: true, ..Pipes::default() },
        ) {
            Ok(p) => p,
            Err(e) => {
                writer.abort().await;
                return Err(dump_err(db, e));
            }
        };
        let stdout = proc.take_stdout().map_err(|e| dump_err(db, e))?;
        let (tx, mut rx) = mpsc::channel::<Bytes>(4);
        let (level, threads) = (self.cfg.compression_level, self.cfg.compression_threads);
        let thread = tokio::task::spawn_blocking(move || pipeline::compress(stdout, level, threads, tx));
        let pumped = pump(&mut rx, writer.as_mut(), cancel).await;
        drop(rx); // a compressor still sending now gets BrokenPipe, and pg_dump EPIPE
        if let Err(e) = pumped {
            // Kill first: a pg_dump stalled on a lock would keep the compressor waiting forever.
            proc.kill().await;
            let _ = thread.await;
            writer.abort().await;
            return Err(match e {
                PumpError::Cancelled => SnapshotError::Cancelled { database: db.name.clone() },
                PumpError::Storage(s) => s.into(),
            });
        }
        let compressed = thread.await.map_err(|e| std::io::Error::other(e.to_string())).and_then(|r| r);
        // pg_dump's verdict comes before the compressor's: its stderr says why the stream broke.
        if let Err(e) = proc.wait().await {
            writer.abort().await;
            return Err(dump_err(db, e));
        }
        let stats = match compressed {
            Ok(s) => s,
            Err(e) => {
                writer.abort().await;
                return Err(SnapshotError::Pipeline {
                    database: db.name.clone(),
                    id: id.into(),
                    message: e.to_string(),
                });
            }
        };
        writer.finish().await?;
        Ok(Dumped { stats })
    }

    /// The cluster's roles and tablespaces, so a restore onto a new cluster can recreate owners.
    /// Optional: a role that cannot read them still gets its snapshot.
    async fn store_globals(&self, db: &DatabaseConfig, id: &str) -> Option<StoredObject> {
        match self.try_store_globals(db, id).await {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::warn!(error = %e, "snapshot continues without the cluster's roles (pg_dumpall --globals-only failed)");
                None
            }
        }
    }

    async fn try_store_globals(&self, db: &DatabaseConfig, id: &str) -> Result<StoredObject, SnapshotError> {
        use tokio::io::AsyncReadExt;
        let args: Vec<OsString> = vec!["--globals-only".into(), "--no-role-passwords".into()];
        let mut proc = self
            .tools
            .spawn("pg_dumpall", Some(&db.url), &args, Pipes { stdout: true, ..Pipes::default() })
            .map_err(|e| dump_err(db, e))?;
        let mut out = Vec::new();
        if let Some(stdout) = proc.take_async_stdout() {
            let _ = stdout.take(GLOBALS_CAP).read_to_end(&mut out).await;
        }
        proc.wait().await.map_err(|e| dump_err(db, e))?;
        let level = self.cfg.compression_level;
        let (bytes, stats) = pipeline::compress_small(&out, level).map_err(|e| SnapshotError::Pipeline {
            database: db.name.clone(),
            id: id.into(),
            message: e.to_string(),
        })?;
        self.storage.put(&layout::object(&db.name, id, layout::GLOBALS), bytes).await?;
        Ok(StoredObject {
            object: layout::GLOBALS.into(),
            raw_bytes: stats.raw_bytes,
            stored_bytes: stats.stored_bytes,
            sha256: stats.sha256,
        })
    }
}

enum PumpError {
    Cancelled,
    Storage(StorageError),
}

/// Moves chunks from the compressor to storage until the stream ends, fails or is cancelled.
async fn pump(
    rx: &mut mpsc::Receiver<Bytes>,
    writer: &mut dyn ObjectWriter,
    cancel: &CancellationToken,
) -> Result<(), PumpError> {
    loop {
        let step = async {
            match rx.recv().await {
                Some(chunk) => writer.write(chunk).await.map(|_| true),
                None => Ok(false),
            }
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(PumpError::Cancelled),
            r = step => match r {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(e) => return Err(PumpError::Storage(e)),
            },
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

/// A pg_dump that gave up waiting for a table lock: say which table and who holds it.
async fn explain_lock_wait(
    session: &pg::Session,
    db: &DatabaseConfig,
    cfg: &SnapshotConfig,
    e: SnapshotError,
) -> SnapshotError {
    let SnapshotError::Dump { source: ToolError::Failed { stderr, .. }, .. } = &e else { return e };
    // pg_dump 15 enforces --lock-wait-timeout with statement_timeout, newer ones may with
    // lock_timeout: what identifies the case is the statement it gave up in.
    if !(stderr.contains("lock timeout") || stderr.contains("statement timeout")) {
        return e;
    }
    // pg_dump reports the statement it was waiting in: `LOCK TABLE public.t IN ACCESS SHARE MODE`.
    let Some(table) = stderr.split("LOCK TABLE ").nth(1).and_then(|r| r.split(" IN ").next()) else {
        return e;
    };
    let holders = match session.lock_holders(table).await {
        Ok(h) if !h.is_empty() => h.join("; "),
        Ok(_) => "a session that has let go since".into(),
        Err(err) => format!("unknown ({err})"),
    };
    SnapshotError::LockWait {
        database: db.name.clone(),
        table: table.to_string(),
        waited: humantime::format_duration(cfg.lock_wait_timeout).to_string(),
        holders,
        stderr: stderr.clone(),
    }
}

fn dump_err(db: &DatabaseConfig, source: ToolError) -> SnapshotError {
    SnapshotError::Dump { database: db.name.clone(), source }
}

/// The migrations table's rows, from the configured table or Prisma's default place.
async fn read_migrations(
    session: &pg::Session,
    db: &DatabaseConfig,
) -> Result<Option<MigrationRows>, SnapshotError> {
    let (tool, schema, table) = match &db.migrations {
        Some(m) => (m.tool.clone(), m.schema.clone(), m.table.clone()),
        None => ("prisma".into(), "public".into(), "_prisma_migrations".into()),
    };
    let order = if tool == "prisma" { "started_at, migration_name" } else { "1" };
    let rows = session.table_rows(&schema, &table, order).await?;
    Ok(rows.map(|rows| MigrationRows { tool, schema, table, rows }))
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
