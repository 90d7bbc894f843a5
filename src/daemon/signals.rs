//! The one place that owns OS signals. The daemon's are turned into events or shutdown; an
//! in-process CLI command only needs SIGINT/SIGTERM to cancel its work cleanly.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What a signal asks of the daemon's main loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalEvent {
    Reload,
    SnapshotAll,
    RepairAll,
}

/// SIGTERM/SIGINT cancel `shutdown`; SIGHUP, SIGUSR2 and SIGUSR1 become events. Runs until
/// `shutdown` is cancelled.
pub async fn listen(events: mpsc::Sender<SignalEvent>, shutdown: CancellationToken) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = term.recv() => { tracing::info!("SIGTERM: draining"); shutdown.cancel(); return Ok(()) }
            _ = int.recv() => { tracing::info!("SIGINT: draining"); shutdown.cancel(); return Ok(()) }
            _ = hup.recv() => SignalEvent::Reload,
            _ = usr1.recv() => SignalEvent::RepairAll,
            _ = usr2.recv() => SignalEvent::SnapshotAll,
        };
        if events.send(event).await.is_err() {
            return Ok(());
        }
    }
}

/// For in-process commands: cancels `token` on SIGINT or SIGTERM so an upload in flight is
/// aborted rather than left behind.
pub fn cancel_on_terminate(token: CancellationToken) {
    tokio::spawn(async move {
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
        else {
            return;
        };
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        tracing::warn!("interrupted: aborting the work in flight");
        token.cancel();
    });
}
