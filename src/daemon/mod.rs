//! The long-running service: wiring of the control socket, the scheduler, one snapshot worker
//! per database behind a daemon-wide limit, migration watchers, metrics and the status pages,
//! the heartbeat, webhooks and systemd, plus reload. Every task the daemon starts is spawned on one `TaskTracker`, so shutdown
//! (`shutdown`) waits for what is in flight — a repair above all — before the process exits.
//! Shutdown is passed in as a token; `signals` is the only place that touches OS signals.

mod api;
mod auth;
mod board;
mod catalog;
mod diagnoses;
pub mod drills;
mod gate;
mod heartbeat;
mod http;
mod metrics;
mod reload;
mod repairs;
mod scheduler;
mod shutdown;
pub mod signals;
mod systemd;
mod views;
mod watcher;
pub mod webhook;
mod worker;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError};
use crate::control::{self, ControlError, Peers};
use crate::pg::PgTools;
use crate::snapshot::Snapshotter;
use crate::storage::{self, StorageError};

use board::Board;
use scheduler::Scheduler;
use signals::SignalEvent;
use systemd::NotifyState;
use webhook::Notifier;
use worker::{Enqueued, Job, Outcome, Worker};

/// Migration watchers reading at once: each read is one short connection, so a hundred watched
/// databases cost the server at most this many of its connections.
const WATCH_CONNECTIONS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("cannot listen for metrics on {addr}: {message} (daemon.metrics_listen)")]
    Metrics { addr: SocketAddr, message: String },
    #[error("scheduler: {0}")]
    Scheduler(String),
    #[error("cannot install signal handlers: {0}")]
    Signals(String),
}

/// What can change on reload: the configuration and what is built from it.
pub struct Runtime {
    pub config: Arc<Config>,
    pub snapshotter: Snapshotter,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReloadStatus {
    pub at: DateTime<Utc>,
    pub ok: bool,
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("database `{0}` is not in the configuration")]
    UnknownDatabase(String),
    #[error("the daemon is shutting down")]
    ShuttingDown,
}

/// State every task of the daemon shares.
pub struct Shared {
    runtime: RwLock<Arc<Runtime>>,
    /// Who may use the control socket (`daemon.allowed_uids`), replaced on reload.
    pub peers: Peers,
    pub board: Board,
    workers: Mutex<BTreeMap<String, Worker>>,
    watchers: Mutex<BTreeMap<String, CancellationToken>>,
    notifier: RwLock<Notifier>,
    reload: Mutex<ReloadStatus>,
    pub started_at: DateTime<Utc>,
    config_path: PathBuf,
    abort: CancellationToken,
    /// Cancelled when the drain starts: jobs still waiting for a slot give up.
    pub(crate) draining: CancellationToken,
    closing: AtomicBool,
    metrics_addr: Option<SocketAddr>,
    /// Every task the daemon starts; shutdown waits for them.
    pub tasks: TaskTracker,
    /// The daemon-wide limit on snapshots at once.
    pub gate: Arc<gate::Gate>,
    /// Bounds the watchers' connections to the servers.
    pub watch_slots: tokio::sync::Semaphore,
    /// Repair runs in progress (shutdown waits for them and tells systemd how long).
    pub repairs_running: AtomicUsize,
    /// The snapshot list and audit runs the status page and the heartbeat read.
    pub catalog: catalog::Catalog,
    /// Diagnoses for the status page, one at a time (each may start a scratch server).
    pub diagnose_slots: tokio::sync::Semaphore,
}

/// Work for the main loop from the control socket.
enum MainEvent {
    Reload(oneshot::Sender<ReloadStatus>),
}

fn build_runtime(config: Config, storage: Arc<dyn storage::Storage>) -> Runtime {
    let snapshotter = Snapshotter {
        storage,
        tools: PgTools::new(config.snapshot.pg_bin_dir.clone()),
        cfg: config.snapshot.clone(),
    };
    Runtime { config: Arc::new(config), snapshotter }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub fn current(&self) -> Arc<Runtime> {
        self.runtime.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn notifier(&self) -> Notifier {
        self.notifier.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn reload_status(&self) -> ReloadStatus {
        lock(&self.reload).clone()
    }

    /// Hands `job` to the database's worker (or joins the job it has).
    pub fn request(
        &self,
        db: &str,
        job: Job,
        waiter: Option<oneshot::Sender<Outcome>>,
    ) -> Result<Enqueued, RequestError> {
        let workers = lock(&self.workers);
        if self.closing.load(Ordering::SeqCst) {
            return Err(RequestError::ShuttingDown);
        }
        let w = workers.get(db).ok_or_else(|| RequestError::UnknownDatabase(db.into()))?;
        let trigger = job.trigger.clone();
        let queued = w.enqueue(job, waiter).ok_or(RequestError::ShuttingDown)?;
        let depth = u32::from(w.is_queued());
        self.board.update(db, |s| {
            s.queued = depth;
            if queued == Enqueued::Coalesced {
                s.coalesced_total += 1;
            }
        });
        tracing::info!(database = %db, trigger = %trigger, outcome = ?queued, "snapshot requested");
        Ok(queued)
    }

    /// One worker per configured database: new ones start, removed ones finish and go.
    /// Returns the names that are new.
    fn sync_workers(self: &Arc<Self>) -> Vec<String> {
        let names: Vec<String> = self.current().config.databases.iter().map(|d| d.name.clone()).collect();
        let mut workers = lock(&self.workers);
        let removed: Vec<String> = workers.keys().filter(|k| !names.contains(k)).cloned().collect();
        for name in removed {
            if let Some(w) = workers.remove(&name) {
                w.close();
                self.tasks.spawn(w.join());
            }
        }
        let mut added = Vec::new();
        for name in &names {
            if !workers.contains_key(name) {
                workers.insert(name.clone(), Worker::spawn(name.clone(), self.clone(), self.abort.clone()));
                added.push(name.clone());
            }
        }
        drop(workers);
        self.board.retain(&names);
        for name in &names {
            self.board.update(name, |_| {}); // metrics start at zero, not absent
        }
        added
    }

    /// One watcher per database: its migrations table where it has a `[databases.migrations]`
    /// section, its invalid indexes in every case.
    fn sync_watchers(self: &Arc<Self>, shutdown: &CancellationToken) {
        let cfg = self.current().config.clone();
        let wanted: Vec<String> = cfg.databases.iter().map(|d| d.name.clone()).collect();
        let mut watchers = lock(&self.watchers);
        watchers.retain(|name, token| {
            let keep = wanted.contains(name);
            if !keep {
                token.cancel();
            }
            keep
        });
        for name in wanted {
            if let std::collections::btree_map::Entry::Vacant(slot) = watchers.entry(name) {
                let token = shutdown.child_token();
                self.tasks.spawn(watcher::supervise(self.clone(), slot.key().clone(), token.clone()));
                slot.insert(token);
            }
        }
    }

    fn take_workers(&self) -> Vec<Worker> {
        std::mem::take(&mut *lock(&self.workers)).into_values().collect()
    }
}

impl Shared {
    fn new(
        config_path: PathBuf,
        config: Config,
        storage: Arc<dyn storage::Storage>,
        metrics_addr: Option<SocketAddr>,
    ) -> Arc<Shared> {
        let tasks = TaskTracker::new();
        Arc::new(Shared {
            notifier: RwLock::new(Notifier::new(config.notify.clone(), tasks.clone())),
            gate: gate::Gate::new(config.snapshot.max_concurrent),
            peers: Peers::new(config.daemon.allowed_uids.clone()),
            runtime: RwLock::new(Arc::new(build_runtime(config, storage))),
            board: Board::default(),
            workers: Mutex::new(BTreeMap::new()),
            watchers: Mutex::new(BTreeMap::new()),
            reload: Mutex::new(ReloadStatus { at: Utc::now(), ok: true, error: None }),
            started_at: Utc::now(),
            config_path,
            abort: CancellationToken::new(),
            draining: CancellationToken::new(),
            closing: AtomicBool::new(false),
            metrics_addr,
            tasks,
            watch_slots: tokio::sync::Semaphore::new(WATCH_CONNECTIONS),
            repairs_running: AtomicUsize::new(0),
            catalog: catalog::Catalog::default(),
            diagnose_slots: tokio::sync::Semaphore::new(1),
        })
    }
}

/// Runs the daemon until `shutdown` is cancelled (by SIGTERM/SIGINT or the caller), then
/// drains: an in-flight snapshot gets `daemon.shutdown_timeout` to finish before it is aborted.
pub async fn run(
    config_path: PathBuf,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    let storage = storage::open(&config.storage).await?;
    let socket = config.daemon.socket.clone();
    let listener = control::server::bind(&socket).await?;
    let metrics = match config.daemon.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| DaemonError::Metrics { addr, message: e.to_string() })?,
        ),
        None => None,
    };
    let metrics_addr = metrics.as_ref().and_then(|l| l.local_addr().ok());
    if metrics_addr.is_some_and(|a| !a.ip().is_loopback()) && config.daemon.http_token.is_none() {
        tracing::warn!(addr = ?metrics_addr, "daemon.metrics_listen is not a loopback address and daemon.http_token_file is not set: the status pages and metrics are open to whoever reaches it; set a token, or listen on 127.0.0.1 and use an SSH tunnel");
    }
    let shared = Shared::new(config_path, config, storage, metrics_addr);
    let peers = shared.peers.clone();
    shutdown::report_interrupted_runs(&shared).await;
    let names = shared.sync_workers();
    shared.sync_watchers(&shutdown);
    let mut scheduler = Scheduler::start().await?;
    scheduler.sync(&shared, &shared.current().config.clone()).await?;

    let (signal_tx, mut signal_rx) = mpsc::channel(8);
    let signal_task = shared.tasks.spawn(signals::listen(signal_tx, shutdown.clone()));
    let (main_tx, mut main_rx) = mpsc::channel(8);
    let api = Arc::new(api::Api { shared: shared.clone(), main: main_tx });
    let serve = control::server::serve(listener, peers, api, shutdown.clone(), shared.tasks.clone());
    shared.tasks.spawn(serve);
    if let Some(l) = metrics {
        tracing::info!(addr = ?metrics_addr, "metrics listening");
        shared.tasks.spawn(http::serve(l, shared.clone(), shutdown.clone()));
    }
    shared.tasks.spawn(scheduler::catch_up(shared.clone(), names));
    shared.tasks.spawn(heartbeat::run(shared.clone(), shutdown.clone()));
    tracing::info!(socket = %socket.display(), pid = std::process::id(), "pgmedic daemon ready");
    let status = format!("watching {} database(s)", shared.current().config.databases.len());
    systemd::notify(&[NotifyState::Ready, NotifyState::Status(&status)]);

    let mut watchdog = systemd::watchdog_interval().map(tokio::time::interval);
    loop {
        let tick = async {
            match watchdog.as_mut() {
                Some(i) => i.tick().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(ev) = signal_rx.recv() => on_signal(ev, &shared, &mut scheduler, &shutdown).await,
            Some(MainEvent::Reload(reply)) = main_rx.recv() => {
                let _ = reply.send(reload::reload(&shared, &mut scheduler, &shutdown).await);
            }
            _ = tick => systemd::notify(&[NotifyState::Watchdog]),
        }
    }
    if let Ok(Err(e)) = signal_task.await {
        return Err(DaemonError::Signals(e.to_string()));
    }
    shutdown::drain(shared.clone(), scheduler).await;
    // The fleet sees this installation stopped, not silent.
    heartbeat::stopped(&shared).await;
    let _ = std::fs::remove_file(&socket);
    tracing::info!("pgmedic daemon stopped");
    Ok(())
}

async fn on_signal(
    ev: SignalEvent,
    shared: &Arc<Shared>,
    scheduler: &mut Scheduler,
    shutdown: &CancellationToken,
) {
    match ev {
        SignalEvent::Reload => {
            reload::reload(shared, scheduler, shutdown).await;
        }
        SignalEvent::SnapshotAll => {
            for db in shared.current().config.databases.iter() {
                let job = Job::new("signal", "signal:SIGUSR2", false);
                if let Err(e) = shared.request(&db.name, job, None) {
                    tracing::warn!(database = %db.name, error = %e, "SIGUSR2 snapshot not queued");
                }
            }
        }
        SignalEvent::RepairAll => repair_all(shared),
    }
}

/// SIGUSR1: a repair for every database whose watcher has seen a failed migration.
fn repair_all(shared: &Arc<Shared>) {
    let failing: Vec<String> = (shared.board.get().into_iter())
        .filter(|(_, s)| s.migrations.as_ref().is_some_and(|m| !m.failed.is_empty()))
        .map(|(name, _)| name)
        .collect();
    tracing::info!(databases = ?failing, "SIGUSR1: repairing every database with a failed migration");
    for database in failing {
        let shared = shared.clone();
        let req = crate::repair::RunRequest {
            database,
            playbook: None,
            dry_run: false,
            trigger: "signal:SIGUSR1".into(),
            requested_by: "signal".into(),
        };
        let tasks = shared.tasks.clone();
        tasks.spawn(async move {
            if let Err(e) = shared.repair(req).await {
                tracing::error!(error = %e, "repair could not run");
            }
        });
    }
}
