//! Scratch databases for rehearsals: named `pgmedic_rehearse_<hex>`, labelled with the host and
//! pid that made them (a database comment), dropped when the rehearsal ends, and swept at the
//! next rehearsal when the process that made them died (killed mid-deploy) or they are old.

use chrono::{DateTime, Utc};

use crate::config::DbUrl;
use crate::pg::{self, DbError};

pub const PREFIX: &str = "pgmedic_rehearse_";

pub struct Scratch {
    /// A session on the server's maintenance database, to create and drop the scratch one.
    admin: pg::Session,
    pub url: DbUrl,
}

fn label() -> String {
    format!(
        "pgmedic rehearse host={} pid={} started={}",
        crate::snapshot::hostname(),
        std::process::id(),
        Utc::now().to_rfc3339()
    )
}

/// `host=… pid=… started=…` back into its parts.
fn parse_label(text: &str) -> Option<(String, i32, DateTime<Utc>)> {
    let field = |k: &str| text.split_whitespace().find_map(|w| w.strip_prefix(k)).map(str::to_string);
    Some((field("host=")?, field("pid=")?.parse().ok()?, field("started=")?.parse().ok()?))
}

fn alive(pid: i32) -> bool {
    // Signal 0 checks existence only; EPERM still means the process exists.
    unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() == libc::EPERM }
}

impl Scratch {
    /// Creates a new scratch database on the server of `server` (its own database is not touched).
    pub async fn create(server: &DbUrl) -> Result<Scratch, DbError> {
        let admin = pg::connect(server).await?;
        let name = format!("{PREFIX}{}", hex::encode(rand::random::<[u8; 4]>()));
        let q = pg::quote_ident(&name);
        // Two statements: CREATE DATABASE cannot share a (implicit) transaction.
        let create = format!("CREATE DATABASE {q} TEMPLATE template0");
        admin
            .client()
            .batch_execute(&create)
            .await
            .map_err(|e| admin.err("create the scratch database", e))?;
        let comment = format!("COMMENT ON DATABASE {q} IS {}", crate::sql::names::literal(&label()));
        admin
            .client()
            .batch_execute(&comment)
            .await
            .map_err(|e| admin.err("label the scratch database", e))?;
        Ok(Scratch { url: server.with_dbname(&name), admin })
    }

    pub fn name(&self) -> &str {
        self.url.dbname()
    }

    pub async fn drop(&self) -> Result<(), DbError> {
        self.admin.drop_database(self.name()).await
    }
}

/// Drops scratch databases whose rehearsal is over: made on this host by a process that is gone,
/// or older than `stale` whoever made them. Returns their names.
pub async fn sweep(server: &DbUrl, stale: std::time::Duration) -> Result<Vec<String>, DbError> {
    let admin = pg::connect(server).await?;
    let q = "SELECT datname::text, coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database WHERE datname LIKE $1";
    let pattern = format!("{}%", PREFIX.replace('_', "\\_"));
    let rows =
        admin.client().query(q, &[&pattern]).await.map_err(|e| admin.err("list scratch databases", e))?;
    let me = crate::snapshot::hostname();
    let stale = chrono::Duration::from_std(stale).unwrap_or(chrono::Duration::MAX);
    let mut dropped = Vec::new();
    for r in rows {
        let (name, comment): (String, String) = (r.get(0), r.get(1));
        let over = match parse_label(&comment) {
            Some((host, pid, started)) => (host == me && !alive(pid)) || Utc::now() - started > stale,
            None => false,
        };
        if over {
            admin.drop_database(&name).await?;
            tracing::info!(database = %name, "dropped the scratch database of a rehearsal that ended without cleaning up");
            dropped.push(name);
        }
    }
    Ok(dropped)
}
