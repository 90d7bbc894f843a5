//! SIGHUP and the socket's `reload`: the configuration file is read again and, only if every
//! fallible step succeeded (loading, validating, opening storage, scheduling), replaces the
//! running one; databases added, removed or rescheduled take effect at once.

use std::sync::Arc;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::scheduler::{self, Scheduler};
use super::systemd::{self, NotifyState};
use super::webhook::Notifier;
use super::{build_runtime, lock, DaemonError, ReloadStatus, Shared};
use crate::config::Config;
use crate::storage;

/// Re-reads the file. Everything that can fail (loading, validating, opening storage,
/// scheduling) happens before the new configuration replaces the running one, so a failure
/// really does keep the old one; what comes after the swap cannot fail.
pub(super) async fn reload(
    shared: &Arc<Shared>,
    scheduler: &mut Scheduler,
    shutdown: &CancellationToken,
) -> ReloadStatus {
    systemd::notify(&[NotifyState::Reloading]);
    let result = async {
        let config = Config::load(&shared.config_path)?;
        let old = shared.current().config.clone();
        if config.daemon.socket != old.daemon.socket
            || config.daemon.metrics_listen != old.daemon.metrics_listen
        {
            tracing::warn!("daemon.socket and daemon.metrics_listen change only on restart");
        }
        let storage = storage::open(&config.storage).await?;
        if let Err(e) = scheduler.sync(shared, &config).await {
            // Put the old schedules back: the running configuration stays whole.
            let _ = scheduler.sync(shared, &old).await;
            return Err(e);
        }
        let notifier = Notifier::new(config.notify.clone(), shared.tasks.clone());
        shared.gate.set_limit(config.snapshot.max_concurrent);
        // A uid taken out of daemon.allowed_uids is refused from its next connection on.
        shared.peers.set(config.daemon.allowed_uids.clone());
        // A rotated or newly configured identity serves the next diagnose and rehearsal.
        crate::crypt::use_identity_file(
            config.storage.encryption.as_ref().and_then(|e| e.identity_file.clone()),
        );
        *shared.notifier.write().unwrap_or_else(|p| p.into_inner()) = notifier;
        *shared.runtime.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(build_runtime(config, storage));
        let added = shared.sync_workers();
        shared.sync_watchers(shutdown);
        shared.tasks.spawn(scheduler::catch_up(shared.clone(), added));
        Ok::<(), DaemonError>(())
    }
    .await;
    let status =
        ReloadStatus { at: Utc::now(), ok: result.is_ok(), error: result.err().map(|e| e.to_string()) };
    match &status.error {
        None => tracing::info!("configuration reloaded"),
        Some(e) => tracing::error!(error = %e, "reload failed; the running configuration stays"),
    }
    *lock(&shared.reload) = status.clone();
    let note = if status.ok { "reloaded" } else { "reload failed, old configuration kept" };
    systemd::notify(&[NotifyState::Ready, NotifyState::Status(note)]);
    status
}
