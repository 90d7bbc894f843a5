//! systemd's notify protocol (READY, STATUS, RELOADING, STOPPING, WATCHDOG, EXTEND_TIMEOUT)
//! through the `sd-notify` crate. Outside systemd (`$NOTIFY_SOCKET` unset) every call is a
//! no-op, and a failed send is logged, never fatal: systemd's view is advisory to the daemon.

use std::time::Duration;

pub use sd_notify::NotifyState;

/// Sends `states` if systemd is listening.
pub fn notify(states: &[NotifyState]) {
    let sent = match std::env::var_os("NOTIFY_SOCKET") {
        None => return,
        // sd-notify connects to a path; a socket in the abstract namespace (`@name`, as some
        // container managers hand out) is sent to here.
        Some(p) if p.as_encoded_bytes().starts_with(b"@") => {
            send_abstract(&p.as_encoded_bytes()[1..], states)
        }
        Some(_) => sd_notify::notify(states),
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

fn send_abstract(name: &[u8], states: &[NotifyState]) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let message: String = states.iter().map(|s| format!("{s}\n")).collect();
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    std::os::unix::net::UnixDatagram::unbound()?.send_to_addr(message.as_bytes(), &addr).map(|_| ())
}

/// Half of `WatchdogSec`, when systemd asked this process for keep-alives.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}
