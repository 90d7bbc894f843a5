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
    /// database → (schedule text, cron job id)
    jobs: HashMap<String, (String, Uuid)>,
}

fn err(e: impl std::fmt::Display) -> DaemonError {
    DaemonError::Scheduler(e.to_string())
}

pub fn scheduled_job(trigger: &str) -> Job {
    Job { reason: "scheduled".into(), trigger: trigger.into(), scheduled: true }
}

impl Scheduler {
    pub async fn start() -> Result<Scheduler, DaemonError> {
        let inner = JobScheduler::new().await.map_err(err)?;
        inner.start().await.map_err(err)?;
        Ok(Scheduler { inner, jobs: HashMap::new() })
    }

    /// Makes the cron jobs match `cfg` (called before a reloaded configuration goes live):
    /// added, removed and rescheduled databases take effect here, without a restart.
    pub async fn sync(&mut self, shared: &Arc<Shared>, cfg: &Config) -> Result<(), DaemonError> {
        let wanted: HashMap<String, String> = cfg
            .databases
            .iter()
            .filter_map(|d| d.schedule.as_ref().map(|s| (d.name.clone(), s.as_str().to_string())))
            .collect();
        let stale: Vec<String> = self
            .jobs
            .iter()
            .filter(|(db, (s, _))| wanted.get(*db) != Some(s))
            .map(|(db, _)| db.clone())
            .collect();
        for db in stale {
            if let Some((_, id)) = self.jobs.remove(&db) {
                self.inner.remove(&id).await.map_err(err)?;
            }
        }
        for (db, schedule) in wanted {
            if self.jobs.contains_key(&db) {
                continue;
            }
            let (name, shared2) = (db.clone(), shared.clone());
            let job = CronJob::new_async(schedule.as_str(), move |_, _| {
                let (name, shared) = (name.clone(), shared2.clone());
                Box::pin(async move {
                    let _ = shared.request(&name, scheduled_job("schedule"), None);
                })
            })
            .map_err(|e| DaemonError::Scheduler(format!("database {db}: schedule `{schedule}`: {e}")))?;
            let id = self.inner.add(job).await.map_err(err)?;
            tracing::info!(database = %db, schedule = %schedule, "scheduled");
            self.jobs.insert(db, (schedule, id));
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
            Ok(list) => list.last().map(|m| m.taken_at),
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
