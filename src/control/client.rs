//! Talking to a running daemon from the CLI: one request, one reply.

use std::path::Path;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::UnixStream;
use tokio_util::codec::{Framed, LinesCodec};

use super::protocol::Request;
use super::server::ControlError;

/// Connects when a daemon answers at `path`; `None` when there is no socket or nobody listens.
pub async fn try_connect(path: &Path) -> Option<UnixStream> {
    match tokio::time::timeout(Duration::from_secs(2), UnixStream::connect(path)).await {
        Ok(Ok(s)) => Some(s),
        _ => None,
    }
}

/// Sends `req` and returns the reply's body (without `ok`); an error reply becomes an error.
pub async fn call(stream: UnixStream, path: &Path, req: &Request) -> Result<Value, ControlError> {
    let io = |e: String| ControlError::Connect { path: path.to_path_buf(), message: e };
    let mut framed = Framed::new(stream, LinesCodec::new_with_max_length(64 * 1024 * 1024));
    let line = serde_json::to_string(req).expect("requests serialise");
    framed.send(line).await.map_err(|e| io(e.to_string()))?;
    let reply = match framed.next().await {
        Some(Ok(l)) => l,
        Some(Err(e)) => return Err(io(e.to_string())),
        None => return Err(io("the daemon closed the connection without replying".into())),
    };
    let mut v: Value = serde_json::from_str(&reply).map_err(|e| io(format!("unreadable reply: {e}")))?;
    if v["ok"] == Value::Bool(true) {
        if let Some(m) = v.as_object_mut() {
            m.remove("ok");
        }
        return Ok(v);
    }
    Err(ControlError::Remote {
        code: v["error"]["code"].as_str().unwrap_or("unknown").to_string(),
        message: v["error"]["message"].as_str().unwrap_or("no message").to_string(),
    })
}
