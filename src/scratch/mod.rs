//! pgmedic's throw-away servers: where a failed migration is replayed on its baseline, where
//! every drafted repair is proven before it touches the database, and (later) where rehearsals
//! and restore drills run. `scratch.server` chooses: `ephemeral` (the default) is a private
//! cluster this module starts from the host's own server binaries of the source's major and
//! removes when done; `source` is the source database's own server (opt-in only); a URL is
//! another server the operator provides. Nothing here ever creates anything on the source's
//! server unless the operator said `source`.

mod binaries;
mod cluster;
mod sweep;

use std::path::{Path, PathBuf};

use tokio_postgres::Client;

use crate::config::{DatabaseConfig, DbUrl, ScratchConfig, ScratchServer};
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
    #[error(transparent)]
    Db(#[from] DbError),
}

/// A server for scratch databases, held for as long as they are needed.
pub struct Server {
    admin: DbUrl,
    cluster: Option<cluster::Cluster>,
    label: String,
}

impl Server {
    /// The scratch server for `db` (whose server's major an ephemeral cluster matches).
    pub async fn open(
        cfg: &ScratchConfig,
        state_dir: &Path,
        db: &DatabaseConfig,
        pg_bin_dirs: &[PathBuf],
    ) -> Result<Server, ScratchError> {
        match &cfg.server {
            ScratchServer::Source => {
                Ok(Server { admin: db.url.clone(), cluster: None, label: "source".into() })
            }
            ScratchServer::Url(url) => {
                Ok(Server { admin: url.clone(), cluster: None, label: url.redacted() })
            }
            ScratchServer::Ephemeral => {
                let major = pg::connect(&db.url).await?.server_major().await?;
                let own: Vec<PathBuf> =
                    db.pg_bin_dir.iter().cloned().chain(pg_bin_dirs.iter().cloned()).collect();
                Self::ephemeral(&cfg.dir, state_dir, &own, major).await
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
        let bin = binaries::locate(bin_dirs, major).await?;
        let started = std::time::Instant::now();
        let c = cluster::Cluster::start(&bin, dir, state_dir).await?;
        tracing::debug!(major, elapsed_ms = started.elapsed().as_millis() as u64, "scratch cluster started");
        Ok(Server { admin: c.url().clone(), cluster: Some(c), label: "ephemeral".into() })
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
        let rows = source
            .query("SELECT rolname::text FROM pg_roles WHERE rolname !~ '^pg_' ORDER BY 1", &[])
            .await
            .map_err(|e| DbError::Query {
                target: "the source".into(),
                what: "list roles",
                message: pg::error_text(&e),
            })?;
        let admin = pg::connect(&self.admin).await?;
        let have: Vec<String> = admin
            .client()
            .query("SELECT rolname::text FROM pg_roles", &[])
            .await
            .map_err(|e| admin.err("list the scratch server's roles", e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let create: String = rows
            .iter()
            .map(|r| r.get::<_, String>(0))
            .filter(|r| !have.contains(r))
            .map(|r| format!("CREATE ROLE {} NOLOGIN;", pg::quote_ident(&r)))
            .collect();
        if !create.is_empty() {
            admin
                .client()
                .batch_execute(&create)
                .await
                .map_err(|e| admin.err("create the source's roles", e))?;
        }
        Ok(())
    }

    /// Stops and removes an ephemeral cluster; nothing to do for another server.
    pub async fn close(mut self) {
        if let Some(c) = self.cluster.take() {
            c.stop().await;
        }
    }
}
