//! systemd's notify protocol (READY, STATUS, RELOADING, STOPPING, WATCHDOG) over
//! `$NOTIFY_SOCKET`. Outside systemd every call is a no-op.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `state` (e.g. "READY=1\nSTATUS=…") if systemd is listening; errors are logged, never fatal.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let sock = match UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => return tracing::debug!(error = %e, "sd_notify: no socket"),
    };
    let path = path.to_string_lossy().into_owned();
    let sent = if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Half of `WatchdogSec`, when systemd asked this process for keep-alives.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}
