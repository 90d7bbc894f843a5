//! Copies of the baseline on pgmedic's scratch server: the baseline snapshot's schema text
//! loaded once into a template database, then one fresh copy per replay or proof
//! (`CREATE DATABASE … TEMPLATE`, a file copy). Every copy gets the migrations' search path, so
//! names resolve as they did for the tool. Nothing here touches the source database but for
//! reading its role names (a private cluster needs them for `OWNER TO` and policies).

use std::path::{Path, PathBuf};

use tokio_postgres::Client;

use crate::config::{DatabaseConfig, ScratchConfig};
use crate::pg::{self, scratch::Purpose, scratch::Scratch, PgTools, Session};
use crate::scratch::Server;
use crate::sql::shape::Exclude;

/// What opening a lab needs from the configuration.
#[derive(Clone, Copy)]
pub struct Env<'a> {
    pub scratch: &'a ScratchConfig,
    pub state_dir: &'a Path,
    pub pg_bin_dir: &'a [PathBuf],
    pub tools: &'a PgTools,
}

pub struct Lab {
    server: Server,
    base: Scratch,
    copies: Vec<Scratch>,
    /// The template was handed out by `last`.
    spent: bool,
    pub search_path: String,
    pub exclude: Exclude,
}

impl Lab {
    /// Starts (or reaches) the scratch server and loads `schema_text` into its template.
    pub async fn open(
        env: Env<'_>,
        db: &DatabaseConfig,
        source: &Client,
        schema_text: &str,
        search_path: &str,
        exclude: Exclude,
    ) -> Result<Lab, String> {
        // Schemas only: the RAM-backed folder when the host has one.
        let cfg = crate::config::ScratchConfig {
            dir: crate::scratch::schema_dir(env.scratch),
            ..env.scratch.clone()
        };
        let server =
            Server::open(&cfg, env.state_dir, db, env.pg_bin_dir).await.map_err(|e| e.to_string())?;
        if !server.is_ephemeral() {
            // What an earlier run left when it was killed; never a live one.
            if let Err(e) = pg::scratch::sweep(server.admin()).await {
                tracing::warn!(error = %e, "could not clear scratch databases left by killed runs");
            }
        }
        match Self::load(server, source, schema_text).await {
            Ok((server, base)) => Ok(Lab {
                server,
                base,
                copies: Vec::new(),
                spent: false,
                search_path: search_path.to_string(),
                exclude,
            }),
            Err(e) => Err(e),
        }
    }

    async fn load(server: Server, source: &Client, schema_text: &str) -> Result<(Server, Scratch), String> {
        if let Err(e) = server.adopt_roles(source).await {
            server.close().await;
            return Err(e.to_string());
        }
        let base = match Scratch::create(server.admin(), Purpose::Baseline).await {
            Ok(b) => b,
            Err(e) => {
                server.close().await;
                return Err(format!("cannot create a scratch database for the baseline: {e}"));
            }
        };
        if let Err(e) = sql_load(&base, schema_text).await {
            let _ = base.drop().await;
            server.close().await;
            return Err(e);
        }
        Ok((server, base))
    }

    /// `ephemeral`, `source` or the server's URL without its password.
    pub fn server_label(&self) -> &str {
        self.server.label()
    }

    /// The template itself, for the last use (one copy fewer: each is a copy of every file of
    /// the schema); no copy can be made after this.
    pub async fn last(&mut self) -> Result<Session, String> {
        self.spent = true;
        let session = pg::connect(&self.base.url).await.map_err(|e| e.to_string())?;
        crate::sql::catalog::set_search_path(session.client(), &self.search_path)
            .await
            .map_err(|e| pg::error_text(&e))?;
        Ok(session)
    }

    /// A fresh copy of the baseline, with a session on it.
    pub async fn copy(&mut self) -> Result<Session, String> {
        if self.spent {
            return Err("the baseline's template was used up".into());
        }
        let made = Scratch::create_from(self.server.admin(), Purpose::Baseline, self.base.name())
            .await
            .map_err(|e| format!("cannot copy the baseline on the scratch server: {e}"))?;
        let session = pg::connect(&made.url).await.map_err(|e| e.to_string())?;
        self.copies.push(made);
        crate::sql::catalog::set_search_path(session.client(), &self.search_path)
            .await
            .map_err(|e| pg::error_text(&e))?;
        Ok(session)
    }

    /// Drops every copy and the template (on a server of the operator's), stops a private one.
    pub async fn close(self) {
        if !self.server.is_ephemeral() {
            for s in self.copies.iter().chain(std::iter::once(&self.base)) {
                if let Err(e) = s.drop().await {
                    tracing::warn!(database = %s.name(), error = %e, "could not drop a scratch database");
                }
            }
        }
        drop(self.copies);
        drop(self.base);
        self.server.close().await;
    }
}

/// pg_dump's schema text as SQL for the server: its `\\restrict`/`\\unrestrict` client lines
/// dropped (see `sql_load`).
pub fn server_sql(schema_text: &str) -> String {
    schema_text
        .lines()
        .filter(|l| !(l.starts_with("\\restrict ") || l.starts_with("\\unrestrict ")))
        .flat_map(|l| [l, "\n"])
        .collect()
}

/// The stored schema text sent to the server as SQL, never through psql: a forged
/// `schema.sql.zst` must not be able to run a client meta-command (`\!`) on this host. pg_dump's
/// own `\restrict`/`\unrestrict` lines are the only client lines it writes; they are dropped,
/// and anything else is the server's to parse (a stray `\!` is a syntax error there).
async fn sql_load(base: &Scratch, schema_text: &str) -> Result<(), String> {
    let sql = server_sql(schema_text);
    let session = pg::connect(&base.url).await.map_err(|e| e.to_string())?;
    session.client().batch_execute(&sql).await.map_err(|e| {
        format!("the baseline schema does not load into a scratch database: {}", pg::error_text(&e))
    })
}
