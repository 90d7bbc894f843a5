//! Restoring a snapshot into a database, and verifying one without touching any database. A
//! restore refuses a target that has user tables unless told to clean it, checks the stored
//! object against its manifest before anything can be committed, and drops a database it
//! created if the restore fails.

pub mod drill;
mod progress;
mod scoped;
mod stream;
mod verify;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, DbUrl};
use crate::pg::{self, DbError, PgTools, Pipes, ToolError};
use crate::snapshot::{Manifest, SnapshotError};
use crate::storage::{Storage, StorageError};

pub use drill::DrillReport;
pub use progress::Progress;
pub use verify::{DeepReport, RowCheck, RowMismatch, VerifyReport};

use stream::{stream_object, SinkMode};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("snapshot {id} is encrypted to age recipient(s) {recipients}, and {why}: give pgmedic the identity of one of them")]
    Encrypted { id: String, recipients: String, why: String },
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(
        "restore refused: target database {target} is not empty ({count} user objects, e.g. {examples}); pass --clean to replace what the snapshot holds, or restore into a new database with --create"
    )]
    NotEmpty { target: String, count: i64, examples: String },
    #[error("target database {target} does not exist; pass --create to make it")]
    TargetMissing { target: String },
    #[error(
        "snapshot {id} is of database `{database}`, which is not in the configuration: give --target as a connection URL"
    )]
    UnknownSource { id: String, database: String },
    #[error("--target `{target}` is not a database name or connection URL: {message}")]
    BadTarget { target: String, message: String },
    #[error(
        "snapshot {id} does not match its manifest: sha256 {actual} ({actual_bytes} bytes), manifest says {expected} ({expected_bytes} bytes); the stored object is damaged and nothing from it was committed"
    )]
    Mismatch { id: String, expected: String, actual: String, expected_bytes: u64, actual_bytes: u64 },
    #[error(
        "snapshot {id} could not be decompressed (the stored object is corrupt or the reader stopped): {message}"
    )]
    Decode { id: String, message: String },
    #[error("reading snapshot {id} from storage failed: {message}")]
    Read { id: String, message: String },
    #[error("pg_restore into {target} failed: {message}")]
    Restore { target: String, message: String },
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("{what} {path}: {message}")]
    Local { what: &'static str, path: PathBuf, message: String },
    #[error("restore of {id} was interrupted: nothing was committed{dropped}")]
    Cancelled { id: String, dropped: String },
    #[error("snapshot {id} decompressed to {actual} bytes, the manifest says {expected}")]
    RawSize { id: String, expected: u64, actual: u64 },
    #[error(transparent)]
    Scratch(#[from] crate::scratch::ScratchError),
    #[error("database {database} has no snapshot to drill: take one first")]
    NoSnapshot { database: String },
    #[error("snapshot {id} restored, but its manifest records no row counts (a snapshot of an older pgmedic): the next snapshot will")]
    NoRowCounts { id: String },
}

impl RestoreError {
    /// The stored bytes of `m` are not the ones its manifest names.
    fn mismatch(m: &Manifest, actual: String, actual_bytes: u64) -> RestoreError {
        RestoreError::Mismatch {
            id: m.id.clone(),
            expected: m.sha256.clone(),
            actual,
            expected_bytes: m.stored_bytes,
            actual_bytes,
        }
    }
}

impl RestoreError {
    pub fn is_refusal(&self) -> bool {
        match self {
            RestoreError::NotEmpty { .. } => true,
            RestoreError::Scratch(e) => e.is_refusal(),
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub target: String,
    pub create: bool,
    pub clean: bool,
    pub jobs: u32,
    /// Objects owned by the restoring user, not the snapshot's roles (for a cluster without them).
    pub no_owner: bool,
    /// Leaves out subscriptions: a scratch copy must not start replicating from a publisher.
    pub no_subscriptions: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub id: String,
    pub database: String,
    pub target: String,
    pub created: bool,
    pub cleaned: bool,
    pub stored_bytes: u64,
    pub raw_bytes: u64,
    pub seconds: f64,
}

#[derive(Clone)]
pub struct Restorer {
    pub storage: Arc<dyn Storage>,
    pub tools: PgTools,
    pub config: Arc<Config>,
}

impl Restorer {
    /// The age identities for an encrypted snapshot (None for a plain one), or why not.
    pub fn keys(&self, m: &Manifest) -> Result<Option<Vec<age::x25519::Identity>>, RestoreError> {
        let Some(enc) = &m.encryption else { return Ok(None) };
        let locked = |why: String| RestoreError::Encrypted {
            id: m.id.clone(),
            recipients: enc.recipients.join(", "),
            why,
        };
        let file = self.config.storage.encryption.as_ref().and_then(|e| e.identity_file.clone());
        let file = file.ok_or_else(|| locked("storage.encryption.identity_file is not set".into()))?;
        crate::crypt::identities(&file).map(Some).map_err(|e| locked(e.to_string()))
    }
}

impl Restorer {
    /// The snapshot's database's own `pg_bin_dir`, looked in before `snapshot.pg_bin_dir`, as
    /// the snapshot itself did.
    pub(crate) fn own_bin_dir(&self, m: &Manifest) -> Option<&std::path::Path> {
        self.config.database(&m.database).and_then(|d| d.pg_bin_dir.as_deref())
    }
}

/// The major of the pg_dump that wrote the archive (from the manifest).
pub fn archive_major(m: &Manifest) -> Option<u32> {
    pg::locate::major_of_version(&m.pg_dump_version)
}

impl Restorer {
    /// Restores `m`; `cancel` (Ctrl-C) stops it: pg_restore's process group is killed (one
    /// transaction: nothing committed), the temporary dump of `--jobs` removed, and a database
    /// this restore created dropped.
    pub async fn restore(
        &self,
        m: &Manifest,
        opts: &RestoreOptions,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<RestoreReport, RestoreError> {
        let url = self.resolve_target(m, &opts.target)?;
        self.restore_into(m, &url, opts, progress, cancel).await
    }

    /// Restores `m` into `url` (`opts.target` is not read).
    pub async fn restore_into(
        &self,
        m: &Manifest,
        url: &DbUrl,
        opts: &RestoreOptions,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<RestoreReport, RestoreError> {
        let started = Instant::now();
        let url = url.clone();
        // An encrypted snapshot without its identity fails here, before the target is touched.
        self.keys(m)?;
        let (created, empty) = self.prepare_target(&url, opts).await?;
        let this = match self.for_target(m, &url).await {
            Ok(r) => r,
            Err(e) => {
                if created {
                    self.drop_created(&url, "this failed restore had created").await;
                }
                return Err(e);
            }
        };
        let work = async {
            if let Some(tables) = m.scope.tables() {
                // A scoped snapshot: the schema and those tables' rows, one transaction.
                this.restore_scoped(m, tables, &url, empty, progress).await
            } else if opts.jobs <= 1 {
                this.restore_streaming(m, &url, opts, progress).await
            } else {
                this.restore_parallel(m, &url, opts, progress).await
            }
        };
        // Dropping `work` drops pg_restore (its group is killed) and the temporary file.
        let result = tokio::select! {
            r = work => r,
            _ = cancel.cancelled() => Err(RestoreError::Cancelled {
                id: m.id.clone(),
                dropped: if created { format!(", and {} which it had created was dropped", url.dbname()) } else { String::new() },
            }),
        };
        match result {
            Ok(s) => Ok(RestoreReport {
                id: m.id.clone(),
                database: m.database.clone(),
                target: url.display_target(),
                created,
                cleaned: opts.clean,
                stored_bytes: s.stored_bytes,
                raw_bytes: s.raw_bytes,
                seconds: started.elapsed().as_secs_f64(),
            }),
            Err(e) => {
                if created {
                    self.drop_created(&url, "this failed restore had created").await;
                }
                Err(e)
            }
        }
    }

    /// A URL stays a URL; a bare name is a database on the snapshot's own server.
    pub(crate) fn resolve_target(&self, m: &Manifest, target: &str) -> Result<DbUrl, RestoreError> {
        if target.contains("://") || target.contains('=') {
            return target.parse().map_err(|e: crate::config::DbUrlError| RestoreError::BadTarget {
                target: "(connection string)".into(),
                message: e.to_string(),
            });
        }
        if target.is_empty() || target.contains('/') {
            return Err(RestoreError::BadTarget {
                target: target.into(),
                message: "empty or contains `/`".into(),
            });
        }
        let source = self
            .config
            .database(&m.database)
            .ok_or_else(|| RestoreError::UnknownSource { id: m.id.clone(), database: m.database.clone() })?;
        Ok(source.url.with_dbname(target))
    }

    /// This restorer with the tools that read the archive and talk to the target: the lowest
    /// installed ≥ both the archive's pg_dump major and the target server's (an older snapshot
    /// restores into a newer server: an upgrade by snapshot).
    async fn for_target(&self, m: &Manifest, url: &DbUrl) -> Result<Restorer, RestoreError> {
        let target = pg::connect(url).await?.server_major().await?;
        let need = archive_major(m).map_or(target, |a| a.max(target));
        let tools = self.tools.for_server(self.own_bin_dir(m), need).await?;
        Ok(Restorer { storage: Arc::clone(&self.storage), tools, config: Arc::clone(&self.config) })
    }

    /// Creates the target if asked and missing; refuses a non-empty one without `clean`.
    /// Returns whether this restore created it, and whether it holds no user objects.
    async fn prepare_target(&self, url: &DbUrl, opts: &RestoreOptions) -> Result<(bool, bool), RestoreError> {
        let mut created = false;
        if opts.create {
            let admin = pg::connect(&url.with_dbname("postgres")).await?;
            if !admin.database_exists(url.dbname()).await? {
                admin.create_database(url.dbname()).await?;
                created = true;
            }
        }
        let check = async {
            let session = match pg::connect(url).await {
                Err(DbError::Connect { missing_database: true, .. }) => {
                    return Err(RestoreError::TargetMissing { target: url.display_target() });
                }
                other => other?,
            };
            // A database this restore just made holds only what template1 gave it.
            let (count, examples) = if created { (0, Vec::new()) } else { session.user_objects().await? };
            if count > 0 && !opts.clean {
                return Err(RestoreError::NotEmpty {
                    target: url.display_target(),
                    count,
                    examples: examples.join(", "),
                });
            }
            Ok(count == 0)
        };
        match check.await {
            Ok(empty) => Ok((created, empty)),
            Err(e) => {
                if created {
                    self.drop_created(url, "this failed restore had created").await;
                }
                Err(e)
            }
        }
    }

    /// Drops a database this process created; `whose` says which, for the log.
    async fn drop_created(&self, url: &DbUrl, whose: &str) {
        let dropped =
            async { pg::connect(&url.with_dbname("postgres")).await?.drop_database(url.dbname()).await };
        match dropped.await {
            Ok(()) => tracing::info!(database = %url.dbname(), "dropped the database {whose}"),
            Err(e) => {
                tracing::error!(database = %url.dbname(), error = %e, "could not drop the database {whose}")
            }
        }
    }

    /// One transaction, fed straight from storage; the hold-back in `stream` keeps a damaged
    /// object from ever being committed.
    async fn restore_streaming(
        &self,
        m: &Manifest,
        url: &DbUrl,
        opts: &RestoreOptions,
        progress: &Progress,
    ) -> Result<stream::Streamed, RestoreError> {
        let mut args: Vec<OsString> = vec!["--single-transaction".into(), "--exit-on-error".into()];
        args.extend(option_args(opts));
        let mut proc =
            self.tools.spawn("pg_restore", Some(url), &args, Pipes { stdin: true, ..Pipes::default() })?;
        let stdin = proc.take_stdin()?;
        match stream_object(&self.storage, m, stdin, SinkMode::Strict, progress, self.keys(m)?).await {
            Ok(s) => match proc.wait().await {
                Ok(_) => Ok(s),
                Err(e) => Err(RestoreError::Restore {
                    target: url.display_target(),
                    message: format!("{e} (one transaction: nothing was committed)"),
                }),
            },
            Err(RestoreError::Decode { id, message }) => {
                // A reader that died first explains the broken stream better than the stream does.
                let stderr = proc.kill().await;
                if stderr.is_empty() {
                    Err(RestoreError::Decode { id, message })
                } else {
                    Err(RestoreError::Restore {
                        target: url.display_target(),
                        message: format!("{stderr} (one transaction: nothing was committed)"),
                    })
                }
            }
            Err(e) => {
                proc.kill().await;
                Err(e)
            }
        }
    }

    /// `--jobs N` needs a seekable file: decompress into the state dir, verified before use.
    async fn restore_parallel(
        &self,
        m: &Manifest,
        url: &DbUrl,
        opts: &RestoreOptions,
        progress: &Progress,
    ) -> Result<stream::Streamed, RestoreError> {
        let dir = self.config.daemon.state_dir.clone();
        let local = |what, message: String| RestoreError::Local { what, path: dir.clone(), message };
        crate::audit::private_dir(&dir).map_err(|e| local("cannot create state directory", e.to_string()))?;
        sweep_dumps(&dir);
        // The pid in the name lets a later restore tell a killed one's file from a running one's.
        let tmp = tempfile::Builder::new()
            .prefix(&format!("restore-{}-{}-", std::process::id(), m.id))
            .suffix(".dump")
            .tempfile_in(&dir)
            .map_err(|e| local("cannot create a temporary dump in", e.to_string()))?;
        let file = tmp.reopen().map_err(|e| local("cannot open the temporary dump in", e.to_string()))?;
        let streamed =
            stream_object(&self.storage, m, file, SinkMode::Strict, progress, self.keys(m)?).await?;
        if opts.clean {
            tracing::warn!(target = %url.display_target(), "--clean with --jobs is not one transaction: a failure part way leaves the target partly replaced");
        }
        let mut args: Vec<OsString> = vec![format!("--jobs={}", opts.jobs).into(), "--exit-on-error".into()];
        args.extend(option_args(opts));
        args.push(tmp.path().into());
        let proc = self.tools.spawn("pg_restore", Some(url), &args, Pipes::default())?;
        proc.wait()
            .await
            .map_err(|e| RestoreError::Restore { target: url.display_target(), message: e.to_string() })?;
        Ok(streamed)
    }
}

/// pg_restore's arguments for `--clean` and `--no-owner`.
/// Removes the decompressed (for an age snapshot, decrypted) dumps that a `restore --jobs`
/// killed outright left in the state directory: `restore-<pid>-….dump` whose pid is gone.
fn sweep_dumps(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("restore-").filter(|_| name.ends_with(".dump")) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else { continue };
        if pid as u32 == std::process::id() || crate::process::alive(pid) {
            continue;
        }
        match std::fs::remove_file(e.path()) {
            Ok(()) => {
                tracing::warn!(file = %e.path().display(), "removed the temporary dump of a restore that was killed")
            }
            Err(err) => {
                tracing::warn!(file = %e.path().display(), error = %err, "could not remove a killed restore's temporary dump")
            }
        }
    }
}

fn option_args(opts: &RestoreOptions) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    if opts.clean {
        args.extend(["--clean".into(), "--if-exists".into()]);
    }
    if opts.no_owner {
        args.extend(["--no-owner".into(), "--no-privileges".into()]);
    }
    if opts.no_subscriptions {
        args.push("--no-subscriptions".into());
    }
    args
}
