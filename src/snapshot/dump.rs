//! The pg_dump side of a snapshot: the dump itself streamed through the pipeline into storage,
//! and the two small objects beside it, the cluster's globals and the schema text. Every pg_dump
//! of one snapshot reads the same exported database snapshot and gives up on a table lock after
//! `snapshot.lock_wait_timeout`; a lock wait that failed is explained (which table, who holds it).

use std::ffi::OsString;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{pipeline, SnapshotError, Snapshotter, StoredObject};
use crate::config::{DatabaseConfig, SnapshotConfig};
use crate::pg::{self, Pipes, ToolError};
use crate::storage::{layout, ObjectWriter, StorageError};

/// The most of a globals or schema text kept (they are kilobytes; a runaway tool is not).
const SMALL_CAP: u64 = 64 * 1024 * 1024;

pub(super) struct Dumped {
    pub stats: pipeline::Stats,
}

impl Snapshotter {
    /// pg_dump → pipeline → storage; the object is finished only if pg_dump exited 0.
    pub(super) async fn dump(
        &self,
        db: &DatabaseConfig,
        id: &str,
        snapshot: Option<&str>,
        scope: &super::Scope,
        cancel: &CancellationToken,
    ) -> Result<Dumped, SnapshotError> {
        let key = layout::object(&db.name, id, layout::DUMP);
        let mut writer = self.storage.create(&key).await?;
        let mut args = self.dump_args(snapshot);
        args.extend(["--format=custom".into(), "--compress=0".into()]);
        if let Some(tables) = scope.tables() {
            // Only these tables' rows: the schema beside it is whole.
            args.push("--data-only".into());
            args.extend(tables.iter().map(|t| format!("--table={}", t.pattern()).into()));
        }
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
        let recipients = self.cfg.encryption.as_ref().map(crate::crypt::recipients).unwrap_or_default();
        let thread =
            tokio::task::spawn_blocking(move || pipeline::compress(stdout, level, threads, &recipients, tx));
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

    /// Arguments every pg_dump of one snapshot shares: the lock wait, and the exported snapshot.
    fn dump_args(&self, snapshot: Option<&str>) -> Vec<OsString> {
        let wait_ms = self.cfg.lock_wait_timeout.as_millis().max(1);
        let mut args: Vec<OsString> = vec![format!("--lock-wait-timeout={wait_ms}").into()];
        if let Some(name) = snapshot {
            args.push(format!("--snapshot={name}").into());
        }
        args
    }

    /// The cluster's roles and tablespaces, so a restore onto a new cluster can recreate owners.
    /// Optional: a role that cannot read them still gets its snapshot.
    pub(super) async fn store_globals(
        &self,
        db: &DatabaseConfig,
        id: &str,
        cancel: &CancellationToken,
    ) -> Option<StoredObject> {
        let args = vec!["--globals-only".into(), "--no-role-passwords".into()];
        let stored = self.store_small(db, id, "pg_dumpall", args, layout::GLOBALS, cancel).await;
        stored
            .map_err(|e| tracing::warn!(error = %e, "snapshot continues without the cluster's roles (pg_dumpall --globals-only failed)"))
            .ok()
    }

    /// The schema as `pg_dump --schema-only` prints it, in the same database snapshot as the
    /// dump, for `diagnose`: small, and readable without restoring anything. Optional too.
    pub(super) async fn store_schema(
        &self,
        db: &DatabaseConfig,
        id: &str,
        snapshot: Option<&str>,
        cancel: &CancellationToken,
    ) -> Option<StoredObject> {
        let mut args = self.dump_args(snapshot);
        args.push("--schema-only".into());
        let stored = self.store_small(db, id, "pg_dump", args, layout::SCHEMA, cancel).await;
        stored.map_err(|e| tracing::warn!(error = %e, "snapshot continues without its schema text (pg_dump --schema-only failed)")).ok()
    }

    /// The schema as `pg_dump --schema-only` prints it now, for `diagnose` to compare with a
    /// snapshot's (the same tool and flags as the stored one, so equal objects print equal).
    /// It waits at most 10 s for a table lock: a diagnosis must not queue behind the very
    /// migration it explains.
    pub async fn schema_now(
        &self,
        db: &DatabaseConfig,
        cancel: &CancellationToken,
    ) -> Result<String, SnapshotError> {
        let wait_ms = self.cfg.lock_wait_timeout.min(std::time::Duration::from_secs(10)).as_millis().max(1);
        let args = vec![format!("--lock-wait-timeout={wait_ms}").into(), "--schema-only".into()];
        let major = pg::connect(&db.url).await?.server_major().await?;
        let tools =
            self.tools.for_server(db.pg_bin_dir.as_deref(), major).await.map_err(|e| dump_err(db, e))?;
        let this =
            Snapshotter { storage: std::sync::Arc::clone(&self.storage), tools, cfg: self.cfg.clone() };
        let out = this.capture(db, "pg_dump", args, cancel).await?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Runs `tool` and returns what it printed (at most SMALL_CAP).
    async fn capture(
        &self,
        db: &DatabaseConfig,
        tool: &'static str,
        args: Vec<OsString>,
        cancel: &CancellationToken,
    ) -> Result<Vec<u8>, SnapshotError> {
        use tokio::io::AsyncReadExt;
        let mut proc =
            (self.tools.spawn(tool, Some(&db.url), &args, Pipes { stdout: true, ..Pipes::default() }))
                .map_err(|e| dump_err(db, e))?;
        let run = async {
            let mut out = Vec::new();
            if let Some(stdout) = proc.take_async_stdout() {
                let _ = stdout.take(SMALL_CAP).read_to_end(&mut out).await;
            }
            proc.wait().await.map(|_| out)
        };
        // Dropping `run` on cancel drops the tool, which kills its process group.
        tokio::select! {
            r = run => r.map_err(|e| dump_err(db, e)),
            _ = cancel.cancelled() => Err(SnapshotError::Cancelled { database: db.name.clone() }),
        }
    }

    /// Runs `tool`, compresses what it printed (at most SMALL_CAP) and stores it as `name`.
    async fn store_small(
        &self,
        db: &DatabaseConfig,
        id: &str,
        tool: &'static str,
        args: Vec<OsString>,
        name: &str,
        cancel: &CancellationToken,
    ) -> Result<StoredObject, SnapshotError> {
        let out = self.capture(db, tool, args, cancel).await?;
        let level = self.cfg.compression_level;
        let recipients = self.cfg.encryption.as_ref().map(crate::crypt::recipients).unwrap_or_default();
        let (bytes, stats) = pipeline::compress_small(&out, level, &recipients).map_err(|e| {
            SnapshotError::Pipeline { database: db.name.clone(), id: id.into(), message: e.to_string() }
        })?;
        self.storage.put(&layout::object(&db.name, id, name), bytes).await?;
        Ok(StoredObject {
            object: name.into(),
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

/// A pg_dump that gave up waiting for a table lock: say which table and who holds it.
pub(super) async fn explain_lock_wait(
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

pub(super) fn dump_err(db: &DatabaseConfig, source: ToolError) -> SnapshotError {
    SnapshotError::Dump { database: db.name.clone(), source }
}
