//! The daemon's answers to control-socket requests: status, snapshots on demand (waiting for
//! the worker when asked to), the snapshot list, and reload (carried out by the main loop).

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::worker::{Job, Outcome};
use super::{MainEvent, RequestError, Shared};
use crate::control::protocol::{code, err, ok};
use crate::control::{Handler, Request};
use crate::snapshot;

pub struct Api {
    pub shared: Arc<Shared>,
    pub main: mpsc::Sender<MainEvent>,
}

#[async_trait]
impl Handler for Api {
    async fn handle(&self, req: Request, uid: u32) -> Value {
        match req {
            Request::Status => ok(self.status()),
            Request::Snapshots { db } => {
                let rt = self.shared.current();
                match snapshot::list(&rt.snapshotter.storage, db.as_deref()).await {
                    Ok(list) => ok(json!({ "snapshots": list })),
                    Err(e) => err(code::FAILED, e.to_string()),
                }
            }
            Request::Snapshot { db, reason, wait } => self.snapshot(db, reason, wait, uid).await,
            Request::Repair { db, playbook, dry_run } => self.repair(db, playbook, dry_run, uid).await,
            Request::Rehearse { db, snapshot, fresh } => self.rehearse(db, snapshot, fresh, uid).await,
            Request::Drill { db } => self.drill(db).await,
            Request::Reload => {
                let (tx, rx) = oneshot::channel();
                if self.main.send(MainEvent::Reload(tx)).await.is_err() {
                    return err(code::SHUTTING_DOWN, "the daemon is shutting down");
                }
                match rx.await {
                    Ok(s) if s.ok => ok(json!({ "reload": s })),
                    Ok(s) => err(
                        code::FAILED,
                        format!(
                            "reload failed, the running configuration stays: {}",
                            s.error.unwrap_or_default()
                        ),
                    ),
                    Err(_) => err(code::SHUTTING_DOWN, "the daemon is shutting down"),
                }
            }
        }
    }
}

impl Api {
    /// Runs on the daemon's tracker; the drain cancels it (its scratch database is dropped).
    async fn rehearse(&self, db: Option<String>, snapshot: Option<String>, fresh: bool, uid: u32) -> Value {
        let rt = self.shared.current();
        let cfg = rt.config.clone();
        let d = match (db, cfg.databases.as_slice()) {
            (Some(d), _) => match cfg.database(&d) {
                Some(d) => d.clone(),
                None => {
                    return err(code::UNKNOWN_DATABASE, format!("database `{d}` is not in the configuration"))
                }
            },
            (None, [only]) => only.clone(),
            (None, _) => {
                return err(code::BAD_REQUEST, "several databases are configured: name one with \"db\"")
            }
        };
        // A fresh snapshot is the database's worker's, under the daemon's snapshot limit, like
        // any other: taken in the rehearsal itself it would run beside the worker's.
        let snapshot = match (fresh, snapshot) {
            (true, _) => match self.fresh_snapshot(&d.name, uid).await {
                Ok(id) => Some(id),
                Err(reply) => return reply,
            },
            (false, named) => named,
        };
        let rehearser = crate::rehearse::Rehearser { config: cfg, storage: rt.snapshotter.storage.clone() };
        let opts = crate::rehearse::Options { snapshot, fresh: false, keep: false, command: Vec::new() };
        let cancel = self.shared.draining.clone();
        let name = d.name.clone();
        let run = self.shared.tasks.spawn(async move { rehearser.rehearse(&d, &opts, &cancel).await });
        match run.await {
            Ok(Ok(report)) => {
                if report.source_changed {
                    let detail = crate::rehearse::touched_detail(&report);
                    self.shared.notifier().send("rehearse_touched_source", &name, detail);
                }
                ok(json!({ "rehearsal": report }))
            }
            Ok(Err(e)) => err(code::FAILED, e.to_string()),
            Err(e) => err(code::FAILED, format!("the rehearsal task failed: {e}")),
        }
    }

    /// A drill now, on the daemon (its outcome in status, metrics and webhooks as a scheduled one's).
    async fn drill(&self, db: Option<String>) -> Value {
        let cfg = self.shared.current().config.clone();
        let name = match (db, cfg.databases.as_slice()) {
            (Some(d), _) if cfg.database(&d).is_some() => d,
            (Some(d), _) => {
                return err(code::UNKNOWN_DATABASE, format!("database `{d}` is not in the configuration"))
            }
            (None, [only]) => only.name.clone(),
            (None, _) => {
                return err(code::BAD_REQUEST, "several databases are configured: name one with \"db\"")
            }
        };
        match super::drills::run(self.shared.clone(), name.clone()).await {
            Some(report) => ok(json!({ "drill": report })),
            None => err(code::FAILED, format!("a restore drill of {name} is already running")),
        }
    }

    /// A snapshot for a rehearsal, queued on the database's worker and waited for: its id.
    async fn fresh_snapshot(&self, db: &str, uid: u32) -> Result<String, Value> {
        let (tx, rx) = oneshot::channel::<Outcome>();
        let job = Job::new("rehearse", format!("socket:uid={uid}"), false);
        match self.shared.request(db, job, Some(tx)) {
            Ok(_) => {}
            Err(e @ RequestError::UnknownDatabase(_)) => {
                return Err(err(code::UNKNOWN_DATABASE, e.to_string()))
            }
            Err(e) => return Err(err(code::SHUTTING_DOWN, e.to_string())),
        }
        match rx.await {
            Ok(Ok(m)) => Ok(m.id),
            Ok(Err(e)) => Err(err(code::FAILED, format!("the fresh snapshot of {db} failed: {e}"))),
            Err(_) => Err(err(code::SHUTTING_DOWN, "the worker stopped before the fresh snapshot finished")),
        }
    }

    async fn repair(&self, db: Option<String>, playbook: Option<String>, dry_run: bool, uid: u32) -> Value {
        let cfg = self.shared.current().config.clone();
        let names: Vec<String> = match db {
            Some(d) if cfg.database(&d).is_none() => {
                return err(code::UNKNOWN_DATABASE, format!("database `{d}` is not in the configuration"))
            }
            Some(d) => vec![d],
            None => cfg.databases.iter().map(|d| d.name.clone()).collect(),
        };
        let mut runs = Vec::new();
        for database in names {
            let req = crate::repair::RunRequest {
                database,
                playbook: playbook.clone(),
                dry_run,
                trigger: "socket".into(),
                requested_by: format!("socket:uid={uid}"),
            };
            match self.shared.repair(req).await {
                Ok(rec) => runs.push(rec),
                Err(e) => return err(code::FAILED, e),
            }
        }
        ok(json!({ "runs": runs }))
    }

    fn status(&self) -> Value {
        let rt = self.shared.current();
        let now = chrono::Utc::now();
        let mut dbs = serde_json::Map::new();
        for (name, mut s) in self.shared.board.get() {
            let schedule = rt.config.database(&name).and_then(|d| d.schedule.clone());
            s.schedule = schedule.as_ref().map(|s| s.as_str().to_string());
            s.next_run = schedule.and_then(|s| s.next_after(now));
            s.drill_schedule =
                rt.config.database(&name).and_then(|d| d.drill.as_ref()).map(|s| s.as_str().to_string());
            dbs.insert(name, serde_json::to_value(s).unwrap_or_default());
        }
        for db in &rt.config.databases {
            dbs.entry(db.name.clone())
                .or_insert_with(|| json!({ "schedule": db.schedule.as_ref().map(|s| s.as_str()) }));
        }
        let (running, waiting, limit) = self.shared.gate.counts();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "started_at": self.shared.started_at,
            "uptime_seconds": (now - self.shared.started_at).num_seconds(),
            "config": self.shared.config_path,
            "storage": rt.snapshotter.storage.location(),
            "metrics_listen": self.shared.metrics_addr.map(|a| a.to_string()),
            "last_reload": self.shared.reload_status(),
            "snapshots": { "running": running, "waiting": waiting, "max_concurrent": limit },
            "repairs_running": self.shared.repairs_running.load(std::sync::atomic::Ordering::SeqCst),
            "databases": dbs,
        })
    }

    async fn snapshot(&self, db: Option<String>, reason: Option<String>, wait: bool, uid: u32) -> Value {
        let names: Vec<String> = match db {
            Some(d) => vec![d],
            None => self.shared.current().config.databases.iter().map(|d| d.name.clone()).collect(),
        };
        let reason = reason.unwrap_or_else(|| "manual".into());
        let mut pending = Vec::new();
        let mut queued = Vec::new();
        for name in names {
            let (tx, rx) = oneshot::channel::<Outcome>();
            let job = Job::new(reason.clone(), format!("socket:uid={uid}"), false);
            match self.shared.request(&name, job, wait.then_some(tx)) {
                Ok(q) => {
                    queued.push(json!({ "database": name, "queued": q }));
                    pending.push((name, rx));
                }
                Err(e @ RequestError::UnknownDatabase(_)) => {
                    return err(code::UNKNOWN_DATABASE, e.to_string())
                }
                Err(e) => return err(code::SHUTTING_DOWN, e.to_string()),
            }
        }
        if !wait {
            return ok(json!({ "queued": queued }));
        }
        let mut taken = Vec::new();
        let mut failed = Vec::new();
        for (name, rx) in pending {
            match rx.await {
                Ok(Ok(m)) => taken.push(m),
                Ok(Err(e)) => failed.push(format!("{name}: {e}")),
                Err(_) => failed.push(format!("{name}: the worker stopped before finishing")),
            }
        }
        if failed.is_empty() {
            ok(json!({ "snapshots": taken }))
        } else {
            err(code::FAILED, format!("snapshot failed for {}", failed.join("; ")))
        }
    }
}
