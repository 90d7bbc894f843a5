//! Cron triggers. tokio-cron-scheduler fires each database's schedule (6 fields, UTC); a firing
//! only enqueues a job for the database's worker. Also owns the start-up catch-up: a database
//! whose newest snapshot is older than one schedule period gets one snapshot at once.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use tokio_cron_scheduler::{Job as CronJob, JobScheduler};
use uuid::Uuid;

use super::worker::Job;
use super::{DaemonError, Shared};
use crate::config::Config;
use crate::snapshot;

pub struct Scheduler {
    inner: JobScheduler,
    /// database (or database + DRILL) → (schedule text, cron job id)
    jobs: HashMap<String, (String, Uuid)>,
}

fn err(e: impl std::fmt::Display) -> DaemonError {
    DaemonError::Scheduler(e.to_string())
}

/// A drill's job key: the database's name and this suffix (no database name holds a NUL).
const DRILL: &str = "\u{0}drill";

/// The cron job for `key`: a database's snapshot (enqueued on its worker) or its drill (run on
/// the daemon's tracker).
fn cron_job(shared: &Arc<Shared>, key: &str, schedule: &str) -> Result<CronJob, DaemonError> {
    let drill = key.strip_suffix(DRILL).map(str::to_string);
    let (name, shared2) = (key.to_string(), shared.clone());
    CronJob::new_async(schedule, move |_, _| {
        let (name, shared, drill) = (name.clone(), shared2.clone(), drill.clone());
        Box::pin(async move {
            match drill {
                Some(db) => {
                    let tasks = shared.tasks.clone();
                    tasks.spawn(super::drills::run(shared, db));
                }
                None => {
                    let mut job = scheduled_job("schedule");
                    let cfg = shared.current().config.clone();
                    job.slot = cfg
                        .database(&name)
                        .and_then(|d| d.schedule.as_ref())
                        .and_then(|s| s.slot_of(Utc::now()));
                    let _ = shared.request(&name, job, None);
                }
            }
        })
    })
    .map_err(|e| {
        let what = if key.ends_with(DRILL) { "drill" } else { "schedule" };
        DaemonError::Scheduler(format!("database {}: {what} `{schedule}`: {e}", key.trim_end_matches(DRILL)))
    })
}

pub fn scheduled_job(trigger: &str) -> Job {
    Job::new("scheduled", trigger, true)
}

impl Scheduler {
    pub async fn start() -> Result<Scheduler, DaemonError> {
        let inner = JobScheduler::new().await.map_err(err)?;
        inner.start().await.map_err(err)?;
        Ok(Scheduler { inner, jobs: HashMap::new() })
    }

    /// Makes the cron jobs match `cfg` (called before a reloaded configuration goes live):
    /// added, removed and rescheduled databases (snapshots and drills) take effect here,
    /// without a restart.
    pub async fn sync(&mut self, shared: &Arc<Shared>, cfg: &Config) -> Result<(), DaemonError> {
        let mut wanted: HashMap<String, String> = HashMap::new();
        for d in &cfg.databases {
            if let Some(s) = &d.schedule {
                wanted.insert(d.name.clone(), s.as_str().to_string());
            }
            if let Some(s) = &d.drill {
                wanted.insert(format!("{}{DRILL}", d.name), s.as_str().to_string());
            }
        }
        let stale: Vec<String> = self
            .jobs
            .iter()
            .filter(|(key, (s, _))| wanted.get(*key) != Some(s))
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            if let Some((_, id)) = self.jobs.remove(&key) {
                self.inner.remove(&id).await.map_err(err)?;
            }
        }
        for (key, schedule) in wanted {
            if self.jobs.contains_key(&key) {
                continue;
            }
            let job = cron_job(shared, &key, &schedule)?;
            let id = self.inner.add(job).await.map_err(err)?;
            tracing::info!(job = %key, schedule = %schedule, "scheduled");
            self.jobs.insert(key, (schedule, id));
        }
        Ok(())
    }

    pub async fn stop(mut self) {
        if let Err(e) = self.inner.shutdown().await {
            tracing::warn!(error = %e, "scheduler did not stop cleanly");
        }
    }
}

/// Runs missed schedules once: a database whose newest complete snapshot is older than one
/// period (or that has none) gets one snapshot now, however many runs were missed.
pub async fn catch_up(shared: Arc<Shared>, databases: Vec<String>) {
    let rt = shared.current();
    let now = Utc::now();
    for name in databases {
        let Some(db) = rt.config.database(&name) else { continue };
        let Some(period) = db.schedule.as_ref().and_then(|s| s.period_after(now)) else { continue };
        let newest = match snapshot::list(&rt.snapshotter.storage, Some(&name)).await {
            Ok(list) => list.iter().filter(|m| m.scope.is_full()).last().map(|m| m.taken_at),
            Err(e) => {
                tracing::warn!(database = %name, error = %e, "cannot list snapshots to look for missed runs");
                continue;
            }
        };
        if newest.is_none_or(|t| now - t > period) {
            tracing::info!(database = %name, newest = ?newest, "a scheduled run was missed: snapshotting now");
            let _ = shared.request(&name, scheduled_job("catch-up"), None);
        } else {
            tracing::info!(database = %name, newest = ?newest, "no scheduled run was missed");
        }
    }
}
