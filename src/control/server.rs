//! The daemon's control socket: a Unix stream socket created 0660 (under a umask, never chmod
//! after bind), peers checked by uid, one JSON request per line with a size cap and a read
//! timeout. A bad client gets an error reply and is dropped; nobody else notices.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::{Framed, LinesCodec, LinesCodecError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::protocol::{code, err, Request, MAX_REQUEST};

const READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "control socket {path}: another pgmedic daemon is answering there; stop it or set daemon.socket"
    )]
    InUse { path: PathBuf },
    #[error("control socket {path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("cannot reach the pgmedic daemon at {path}: {message}")]
    Connect { path: PathBuf, message: String },
    #[error("the pgmedic daemon answered with an error ({code}): {message}")]
    Remote { code: String, message: String },
}

/// Who may talk to the daemon: shared with the daemon, which replaces the list on reload.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    allowed_uids: Arc<std::sync::RwLock<Vec<u32>>>,
}

impl Peers {
    pub fn new(allowed_uids: Vec<u32>) -> Peers {
        Peers { allowed_uids: Arc::new(std::sync::RwLock::new(allowed_uids)) }
    }

    /// The reloaded configuration's list, for every connection from now on.
    pub fn set(&self, allowed_uids: Vec<u32>) {
        *self.allowed_uids.write().unwrap_or_else(|p| p.into_inner()) = allowed_uids;
    }

    fn allows(&self, uid: u32) -> bool {
        uid == 0
            || uid == unsafe { libc::geteuid() }
            || self.allowed_uids.read().unwrap_or_else(|p| p.into_inner()).contains(&uid)
    }
}

/// Handles one request from a peer (uid given) and returns the reply.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(&self, req: Request, uid: u32) -> Value;
}

/// Binds `path`, replacing a stale socket from a killed daemon but never a live one.
pub async fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let io = |message: String| ControlError::Io { path: path.to_path_buf(), message };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io(format!("cannot create its directory: {e}")))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).await.is_ok() {
                return Err(ControlError::InUse { path: path.to_path_buf() });
            }
            tracing::warn!(socket = %path.display(), "replacing a stale control socket left by a daemon that died");
            std::fs::remove_file(path).map_err(|e| io(format!("cannot remove the stale socket: {e}")))?;
        }
        Ok(_) => return Err(io("exists and is not a socket; remove it or set daemon.socket".into())),
        Err(_) => {}
    }
    // The socket's mode comes from the umask at bind time: 0660 from the start, no window.
    let old = unsafe { libc::umask(0o117) };
    let bound = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    bound.map_err(|e| io(format!("cannot bind: {e}")))
}

/// Serves until `shutdown`; each connection runs on its own task, on `tasks`, so that a
/// request being answered when shutdown comes (a repair) is finished and replied to.
pub async fn serve(
    listener: UnixListener,
    peers: Peers,
    handler: Arc<dyn Handler>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (peers, handler, shutdown) = (peers.clone(), handler.clone(), shutdown.clone());
        tasks.spawn(async move { connection(stream, peers, handler, shutdown).await });
    }
}

async fn connection(
    stream: UnixStream,
    peers: Peers,
    handler: Arc<dyn Handler>,
    shutdown: CancellationToken,
) {
    let uid = match stream.peer_cred() {
        Ok(c) => c.uid(),
        Err(e) => return tracing::warn!(error = %e, "control socket: cannot read the peer's credentials"),
    };
    let mut framed = Framed::new(stream, LinesCodec::new_with_max_length(MAX_REQUEST));
    if !peers.allows(uid) {
        tracing::warn!(uid, "control socket: refused a peer whose uid is not allowed");
        // Take (and ignore) its request first, so the refusal arrives as the reply to it rather
        // than as a reset in the middle of its write.
        let _ = tokio::time::timeout(READ_TIMEOUT, framed.next()).await;
        let reply = err(
            code::FORBIDDEN,
            format!("uid {uid} may not use this daemon (add it to daemon.allowed_uids)"),
        );
        let _ = framed.send(reply.to_string()).await;
        return;
    }
    loop {
        let line = tokio::select! {
            _ = shutdown.cancelled() => return,
            line = tokio::time::timeout(READ_TIMEOUT, framed.next()) => line,
        };
        let reply = match line {
            Err(_) => {
                let _ =
                    framed.send(err(code::TIMEOUT, "no complete request line within 10s").to_string()).await;
                return;
            }
            Ok(None) => return,
            Ok(Some(Err(LinesCodecError::MaxLineLengthExceeded))) => {
                let msg = format!("request longer than {MAX_REQUEST} bytes");
                let _ = framed.send(err(code::TOO_LARGE, msg).to_string()).await;
                return;
            }
            Ok(Some(Err(LinesCodecError::Io(e)))) if e.kind() == std::io::ErrorKind::InvalidData => {
                let _ = framed.send(err(code::BAD_REQUEST, "request is not UTF-8 text").to_string()).await;
                return;
            }
            Ok(Some(Err(LinesCodecError::Io(_)))) => return,
            Ok(Some(Ok(line))) => match super::protocol::parse(&line) {
                Ok(req) => handler.handle(req, uid).await,
                Err(e) => err(code::BAD_REQUEST, e),
            },
        };
        if framed.send(reply.to_string()).await.is_err() {
            return;
        }
    }
}
