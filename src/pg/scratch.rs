//! Scratch databases pgmedic makes for itself: a rehearsal's copy (`pgmedic_rehearse_<hex>`),
//! `verify --deep`'s restore (`pgmedic_verify_<hex>`) and diagnose's baseline schema
//! (`pgmedic_baseline_<hex>`). Each is labelled with its purpose and the host and pid that made
//! it (a database comment, its heartbeat renewed every 30 s while it lives) and dropped by its
//! maker when done; one whose maker died (kill -9, the OOM killer) is swept by the next run
//! that makes one on that server. The scratch of a maker alive on this host is never dropped,
//! however long it runs; one made on another host only when its heartbeat stopped ten minutes
//! ago. One that cannot be dropped (another role's) is logged and passed over.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::{CancellationToken, DropGuard};

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

/// How often a live scratch's label is renewed, and how long a silent one made on another host
/// is left alone.
const BEAT: Duration = Duration::from_secs(30);
const SILENT: Duration = Duration::from_secs(600);

pub struct Scratch {
    /// A session on the server's maintenance database, to create and drop the scratch one.
    admin: Arc<pg::Session>,
    pub url: DbUrl,
    /// Stops the heartbeat when the scratch is dropped, kept, or this value goes away.
    beat: std::sync::Mutex<Option<DropGuard>>,
}

fn label(purpose: Purpose, started: DateTime<Utc>) -> String {
    format!(
        "pgmedic {} host={} pid={} started={} beat={}",
        purpose.as_str(),
        crate::snapshot::hostname(),
        std::process::id(),
        started.to_rfc3339(),
        Utc::now().to_rfc3339()
    )
}

async fn set_label(admin: &pg::Session, name: &str, text: &str) -> Result<(), DbError> {
    let comment =
        format!("COMMENT ON DATABASE {} IS {}", pg::quote_ident(name), crate::sql::names::literal(text));
    admin.client().batch_execute(&comment).await.map_err(|e| admin.err("label the scratch database", e))
}

/// Renews the label every `BEAT` until cancelled; a failed renewal is retried at the next one.
fn heartbeat(admin: Arc<pg::Session>, name: String, purpose: Purpose, started: DateTime<Utc>) -> DropGuard {
    let stop = CancellationToken::new();
    let guard = stop.clone().drop_guard();
    tokio::spawn(async move {
        loop {
            // Biased, and checked again: a beat must never be sent after keep() relabelled the
            // database as the operator's (a later sweep would take it for an ended run's).
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(BEAT) => {}
            }
            if stop.is_cancelled() {
                break;
            }
            if let Err(e) = set_label(&admin, &name, &label(purpose, started)).await {
                tracing::debug!(database = %name, error = %e, "scratch heartbeat not renewed");
            }
        }
    });
    guard
}

/// A label's parts; `None` for any comment pgmedic did not write.
struct Label {
    host: String,
    pid: i32,
    /// The last heartbeat (the start, for labels written before heartbeats).
    beat: DateTime<Utc>,
}

fn parse_label(text: &str) -> Option<Label> {
    let mut words = text.split_whitespace();
    if words.next()? != "pgmedic" {
        return None;
    }
    let _purpose = Purpose::parse(words.next()?)?;
    let field = |k: &str| text.split_whitespace().find_map(|w| w.strip_prefix(k)).map(str::to_string);
    let started: DateTime<Utc> = field("started=")?.parse().ok()?;
    Some(Label {
        host: field("host=")?,
        pid: field("pid=")?.parse().ok()?,
        beat: field("beat=").and_then(|b| b.parse().ok()).unwrap_or(started),
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
        let started = Utc::now();
        set_label(&admin, &name, &label(purpose, started)).await?;
        let admin = Arc::new(admin);
        let beat = heartbeat(Arc::clone(&admin), name.clone(), purpose, started);
        Ok(Scratch { url: server.with_dbname(&name), admin, beat: std::sync::Mutex::new(Some(beat)) })
    }

    pub fn name(&self) -> &str {
        self.url.dbname()
    }

    /// Marks it kept (`--keep`): its label no longer parses, so no sweep ever drops it; the
    /// operator drops it by name.
    pub async fn keep(&self) -> Result<(), DbError> {
        self.stop_beat();
        let label = format!(
            "pgmedic kept by the operator's --keep; drop it by hand (host={} pid={})",
            crate::snapshot::hostname(),
            std::process::id()
        );
        set_label(&self.admin, self.name(), &label).await
    }

    fn stop_beat(&self) {
        if let Ok(mut b) = self.beat.lock() {
            b.take();
        }
    }

    pub async fn drop(&self) -> Result<(), DbError> {
        self.stop_beat();
        self.admin.drop_database(self.name()).await
    }
}

/// Drops the scratch databases on `server` whose run is over: made on this host by a process that
/// is gone, or on another host and silent for ten minutes. One that cannot be dropped is logged
/// and left. Returns the names of those dropped.
pub async fn sweep(server: &DbUrl) -> Result<Vec<String>, DbError> {
    let admin = pg::connect(server).await?;
    let q = "SELECT datname::text, coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database WHERE datname LIKE $1";
    let pattern = "pgmedic\\_%".to_string();
    let rows =
        admin.client().query(q, &[&pattern]).await.map_err(|e| admin.err("list scratch databases", e))?;
    let me = crate::snapshot::hostname();
    let silent = chrono::Duration::from_std(SILENT).unwrap_or(chrono::Duration::MAX);
    let mut dropped = Vec::new();
    for r in rows {
        let (name, comment): (String, String) = (r.get(0), r.get(1));
        let over = match parse_label(&comment) {
            Some(l) if l.host == me => !crate::process::alive(l.pid),
            Some(l) => Utc::now() - l.beat > silent,
            None => false,
        };
        if !over {
            continue;
        }
        match admin.drop_database(&name).await {
            Ok(()) => {
                tracing::info!(database = %name, "dropped a scratch database whose run ended without cleaning up");
                dropped.push(name);
            }
            Err(e) => {
                tracing::warn!(database = %name, error = %e, "could not drop a scratch database left by an ended run; passing over it (drop it by hand)");
            }
        }
    }
    Ok(dropped)
}
