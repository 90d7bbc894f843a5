//! pgmedic's throw-away servers: where a failed migration is replayed on its baseline, where
//! every drafted repair is proven before it touches the database, and (later) where rehearsals
//! and restore drills run. `scratch.server` chooses: `ephemeral` (the default) is a private
//! cluster this module starts from the host's own server binaries of the source's major and
//! removes when done; `source` is the source database's own server (opt-in only); a URL is
//! another server the operator provides. Nothing here ever creates anything on the source's
//! server unless the operator said `source`.

mod binaries;
mod cluster;
mod roles;
mod sweep;

use std::path::{Path, PathBuf};

use tokio_postgres::Client;

use crate::config::{DatabaseConfig, DbUrl, ScratchConfig, ScratchServer, Secret};
use crate::pg::{self, DbError};

pub use sweep::leftovers;

#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    #[error("no PostgreSQL {major} server binaries (initdb and postgres) for pgmedic's scratch server; looked in: {looked}; install the PostgreSQL {major} server (e.g. the postgresql-{major} package) or name its bin folder in snapshot.pg_bin_dir or the database's pg_bin_dir, or set scratch.server = \"source\" (scratch databases on the source's own server) or to the URL of another PostgreSQL {major} server")]
    NoServer { major: u32, looked: String },
    #[error("scratch.dir {path}: {message}")]
    Dir { path: PathBuf, message: String },
    #[error("cannot create the scratch cluster: {0}")]
    Initdb(String),
    #[error("cannot start the scratch server: {0}")]
    Start(String),
    #[error("cannot start the scratch server: {0}")]
    RunAs(String),
    #[error("scratch.dir {path} has {free} free; restoring snapshot {snapshot} needs 1.2 × its raw size of {raw} = {need}: free space there or set scratch.dir to a larger volume")]
    Room { path: PathBuf, free: String, snapshot: String, raw: String, need: String },
    #[error(transparent)]
    Db(#[from] DbError),
}

impl ScratchError {
    /// Not a failure of anything that ran: pgmedic declined to start (no room).
    pub fn is_refusal(&self) -> bool {
        matches!(self, ScratchError::Room { .. })
    }
}

/// How the deploy (a client pgmedic does not control) reaches an ephemeral cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The 0700 unix socket only (libpq, node-postgres, lib/pq, sqlx…).
    Socket,
    /// Also a 127.0.0.1 port with a generated password (JDBC: Liquibase, Flyway).
    Loopback,
}

/// Where a client connects to one scratch database, and with what password (if any).
#[derive(Clone)]
pub struct Login {
    pub url: DbUrl,
    /// The port on 127.0.0.1 of an ephemeral cluster's loopback listener.
    pub loopback: Option<u16>,
}

/// A server for scratch databases, held for as long as they are needed.
pub struct Server {
    admin: DbUrl,
    cluster: Option<cluster::Cluster>,
    label: String,
    /// Generated for this cluster's loopback port; never leaves the child's environment.
    password: Option<Secret>,
}

impl Server {
    /// The scratch server for `db` (whose server's major an ephemeral cluster matches).
    pub async fn open(
        cfg: &ScratchConfig,
        state_dir: &Path,
        db: &DatabaseConfig,
        pg_bin_dirs: &[PathBuf],
    ) -> Result<Server, ScratchError> {
        Self::open_with(&cfg.server, cfg, state_dir, db, pg_bin_dirs, Access::Socket, None).await
    }

    /// The scratch server `choice` (the configured one, or `rehearse.target`); an ephemeral
    /// cluster of `major` (the source's own when None, asked of the source) reached per `access`.
    pub async fn open_with(
        choice: &ScratchServer,
        cfg: &ScratchConfig,
        state_dir: &Path,
        db: &DatabaseConfig,
        pg_bin_dirs: &[PathBuf],
        access: Access,
        major: Option<u32>,
    ) -> Result<Server, ScratchError> {
        match choice {
            ScratchServer::Source => {
                Ok(Server { admin: db.url.clone(), cluster: None, label: "source".into(), password: None })
            }
            ScratchServer::Url(url) => {
                Ok(Server { admin: url.clone(), cluster: None, label: url.redacted(), password: None })
            }
            ScratchServer::Ephemeral => {
                let major = match major {
                    Some(m) => m,
                    None => pg::connect(&db.url).await?.server_major().await?,
                };
                let own: Vec<PathBuf> =
                    db.pg_bin_dir.iter().cloned().chain(pg_bin_dirs.iter().cloned()).collect();
                Self::start(&cfg.dir, state_dir, &own, major, access).await
            }
        }
    }

    /// A private cluster of `major`, under `dir`.
    pub async fn ephemeral(
        dir: &Path,
        state_dir: &Path,
        bin_dirs: &[PathBuf],
        major: u32,
    ) -> Result<Server, ScratchError> {
        Self::start(dir, state_dir, bin_dirs, major, Access::Socket).await
    }

    async fn start(
        dir: &Path,
        state_dir: &Path,
        bin_dirs: &[PathBuf],
        major: u32,
        access: Access,
    ) -> Result<Server, ScratchError> {
        let bin = binaries::locate(bin_dirs, major).await?;
        let started = std::time::Instant::now();
        let c = cluster::Cluster::start(&bin, dir, state_dir, access == Access::Loopback).await?;
        tracing::debug!(major, elapsed_ms = started.elapsed().as_millis() as u64, "scratch cluster started");
        let password =
            (access == Access::Loopback).then(|| Secret::new(hex::encode(rand::random::<[u8; 18]>())));
        Ok(Server { admin: c.url().clone(), cluster: Some(c), label: "ephemeral".into(), password })
    }

    /// Refuses before anything starts when `dir` (where an ephemeral cluster would restore
    /// `raw_bytes` of snapshot `id`) has less than 1.2 × that free; other servers are not measured.
    pub fn check_room(
        choice: &ScratchServer,
        cfg: &ScratchConfig,
        id: &str,
        raw_bytes: u64,
    ) -> Result<(), ScratchError> {
        if !matches!(choice, ScratchServer::Ephemeral) {
            return Ok(());
        }
        let Some(free) = free_bytes(&cfg.dir) else { return Ok(()) };
        let need = raw_bytes.saturating_mul(6) / 5;
        if free < need {
            let size = crate::units::human_bytes;
            return Err(ScratchError::Room {
                path: cfg.dir.clone(),
                free: size(free),
                snapshot: id.into(),
                raw: size(raw_bytes),
                need: size(need),
            });
        }
        Ok(())
    }

    /// Where a client (the deploy) reaches database `dbname` as `user`: an ephemeral cluster's
    /// socket, or its loopback port with the generated password (the role made to log in with
    /// it); another server with the credentials pgmedic itself uses there.
    pub async fn login(&self, dbname: &str, user: &str) -> Result<Login, ScratchError> {
        let Some(c) = &self.cluster else {
            return Ok(Login { url: reached(&self.admin.with_dbname(dbname)).await?, loopback: None });
        };
        let admin = pg::connect(&self.admin).await?;
        roles::allow_login(&admin, user, self.password.as_ref().map(Secret::expose)).await?;
        let url = match (c.tcp_port(), &self.password) {
            (Some(port), Some(pw)) => format!(
                "host=127.0.0.1 port={port} user={} password={} dbname={} sslmode=disable",
                conn_value(user),
                conn_value(pw.expose()),
                conn_value(dbname)
            ),
            _ => return Ok(Login { url: self.admin.with_dbname(dbname).with_user(user), loopback: None }),
        };
        let url =
            url.parse().map_err(|e| ScratchError::Start(format!("cannot address the loopback port: {e}")))?;
        Ok(Login { url, loopback: c.tcp_port() })
    }

    /// Where scratch databases are created (its maintenance database).
    pub fn admin(&self) -> &DbUrl {
        &self.admin
    }

    /// `ephemeral`, `source`, or the URL without its password.
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn is_ephemeral(&self) -> bool {
        self.cluster.is_some()
    }

    /// The source's roles, created (NOLOGIN, no password) on a private cluster, so that a
    /// schema's `OWNER TO`, `GRANT` and policies load as they are. Never on any other server.
    pub async fn adopt_roles(&self, source: &Client) -> Result<(), ScratchError> {
        if !self.is_ephemeral() {
            return Ok(());
        }
        roles::adopt(&pg::connect(&self.admin).await?, source).await
    }

    /// Stops and removes an ephemeral cluster; nothing to do for another server.
    pub async fn close(mut self) {
        if let Some(c) = self.cluster.take() {
            c.stop().await;
        }
    }
}

/// The one server of `url`'s host list a session reaches (the first that answers, and is a
/// primary where `target_session_attrs=read-write` asks for one), alone: a tool given the
/// whole list might choose another, or a standby.
async fn reached(url: &DbUrl) -> Result<DbUrl, ScratchError> {
    if url.host_count() <= 1 {
        return Ok(url.clone());
    }
    let mut last = None;
    for i in 0..url.host_count() {
        let Some(one) = url.only_host(i) else { continue };
        match pg::connect(&one).await {
            Ok(s) => {
                if url.wants_read_write() && s.is_in_recovery().await.unwrap_or(true) {
                    continue;
                }
                return Ok(one);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => ScratchError::Db(e),
        None => ScratchError::Start(format!("no server of {} is a primary", url.redacted())),
    })
}

/// Free bytes for an unprivileged writer on the volume of `dir` (or its nearest existing parent).
/// The folder of a cluster that holds schemas only: `schema_dir`, else (auto) a folder of this
/// user's in `/dev/shm` when that has 1 GiB free (creating a schema's hundreds of files there
/// is several times faster than on disk, and nothing in it needs to survive), else `dir`.
pub fn schema_dir(cfg: &ScratchConfig) -> PathBuf {
    if let Some(d) = &cfg.schema_dir {
        return d.clone();
    }
    let shm = Path::new("/dev/shm");
    match free_bytes(shm) {
        Some(free) if shm.is_dir() && free >= 1 << 30 => {
            shm.join(format!("pgmedic-scratch-{}", unsafe { libc::geteuid() }))
        }
        _ => cfg.dir.clone(),
    }
}

fn free_bytes(dir: &Path) -> Option<u64> {
    let existing = dir.ancestors().find(|a| a.exists())?;
    let c = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// A libpq `key=value` value, quoted.
fn conn_value(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}
