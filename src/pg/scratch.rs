//! Scratch databases pgmedic makes for itself: a rehearsal's copy (`pgmedic_rehearse_<hex>`),
//! `verify --deep`'s restore (`pgmedic_verify_<hex>`) and diagnose's baseline schema
//! (`pgmedic_baseline_<hex>`). Each is labelled with its purpose and the host and pid that made
//! it (a database comment) and dropped by its maker when done; one whose maker died (kill -9,
//! the OOM killer) is swept by the next run that makes one on that server. A rehearsal's is
//! also swept when older than its bounded lifetime, whoever made it; a verify's or a baseline's
//! only when its maker is known dead, since a deep verify may rightly run for hours.

use chrono::{DateTime, Utc};

use crate::config::DbUrl;
use crate::pg::{self, DbError};

/// What a scratch database is for; its name is `pgmedic_<purpose>_<hex>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Rehearse,
    Verify,
    Baseline,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Rehearse => "rehearse",
            Purpose::Verify => "verify",
            Purpose::Baseline => "baseline",
        }
    }

    fn parse(word: &str) -> Option<Purpose> {
        [Purpose::Rehearse, Purpose::Verify, Purpose::Baseline].into_iter().find(|p| p.as_str() == word)
    }
}

pub struct Scratch {
    /// A session on the server's maintenance database, to create and drop the scratch one.
    admin: pg::Session,
    pub url: DbUrl,
}

fn label(purpose: Purpose) -> String {
    format!(
        "pgmedic {} host={} pid={} started={}",
        purpose.as_str(),
        crate::snapshot::hostname(),
        std::process::id(),
        Utc::now().to_rfc3339()
    )
}

/// A label's parts; `None` for any comment pgmedic did not write.
struct Label {
    purpose: Purpose,
    host: String,
    pid: i32,
    started: DateTime<Utc>,
}

fn parse_label(text: &str) -> Option<Label> {
    let mut words = text.split_whitespace();
    if words.next()? != "pgmedic" {
        return None;
    }
    let purpose = Purpose::parse(words.next()?)?;
    let field = |k: &str| text.split_whitespace().find_map(|w| w.strip_prefix(k)).map(str::to_string);
    Some(Label {
        purpose,
        host: field("host=")?,
        pid: field("pid=")?.parse().ok()?,
        started: field("started=")?.parse().ok()?,
    })
}

impl Scratch {
    /// Creates a new scratch database on the server of `server` (its own database is not touched).
    pub async fn create(server: &DbUrl, purpose: Purpose) -> Result<Scratch, DbError> {
        Self::create_from(server, purpose, "template0").await
    }

    /// A scratch database copied from `template` (no session may be connected to it).
    pub async fn create_from(server: &DbUrl, purpose: Purpose, template: &str) -> Result<Scratch, DbError> {
        let admin = pg::connect(server).await?;
        let name = format!("pgmedic_{}_{}", purpose.as_str(), hex::encode(rand::random::<[u8; 4]>()));
        let q = pg::quote_ident(&name);
        // Two statements: CREATE DATABASE cannot share a (implicit) transaction.
        let create = format!("CREATE DATABASE {q} TEMPLATE {}", pg::quote_ident(template));
        admin
            .client()
            .batch_execute(&create)
            .await
            .map_err(|e| admin.err("create the scratch database", e))?;
        let comment = format!("COMMENT ON DATABASE {q} IS {}", crate::sql::names::literal(&label(purpose)));
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

    /// Marks it kept (`--keep`): its label no longer parses, so no sweep ever drops it; the
    /// operator drops it by name.
    pub async fn keep(&self) -> Result<(), DbError> {
        let q = pg::quote_ident(self.name());
        let label =
            format!("pgmedic kept by the operator's --keep; drop it by hand ({})", label(Purpose::Rehearse));
        let comment = format!("COMMENT ON DATABASE {q} IS {}", crate::sql::names::literal(&label));
        self.admin
            .client()
            .batch_execute(&comment)
            .await
            .map_err(|e| self.admin.err("mark the scratch database kept", e))
    }

    pub async fn drop(&self) -> Result<(), DbError> {
        self.admin.drop_database(self.name()).await
    }
}

/// Drops the scratch databases on `server` whose run is over: made on this host by a process that
/// is gone, or a rehearsal's older than `stale` whoever made it. Returns their names.
pub async fn sweep(server: &DbUrl, stale: std::time::Duration) -> Result<Vec<String>, DbError> {
    let admin = pg::connect(server).await?;
    let q = "SELECT datname::text, coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database WHERE datname LIKE $1";
    let pattern = "pgmedic\\_%".to_string();
    let rows =
        admin.client().query(q, &[&pattern]).await.map_err(|e| admin.err("list scratch databases", e))?;
    let me = crate::snapshot::hostname();
    let stale = chrono::Duration::from_std(stale).unwrap_or(chrono::Duration::MAX);
    let mut dropped = Vec::new();
    for r in rows {
        let (name, comment): (String, String) = (r.get(0), r.get(1));
        let over = match parse_label(&comment) {
            Some(l) => {
                (l.host == me && !crate::process::alive(l.pid))
                    || (l.purpose == Purpose::Rehearse && Utc::now() - l.started > stale)
            }
            None => false,
        };
        if over {
            admin.drop_database(&name).await?;
            tracing::info!(database = %name, "dropped a scratch database whose run ended without cleaning up");
            dropped.push(name);
        }
    }
    Ok(dropped)
}
