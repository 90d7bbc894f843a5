//! `command` steps: argv without a shell, a working directory, extra environment, a timeout
//! after which the process is killed; stdout and stderr are captured (capped) for the audit.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::StepFailure;
use crate::audit::OUTPUT_CAP;

pub async fn run(
    argv: &[String],
    cwd: Option<&PathBuf>,
    env: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<String, StepFailure> {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn().map_err(|e| StepFailure(format!("cannot start {}: {e}", argv[0])))?;
    let (mut out, mut err) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
    let capture = async { tokio::join!(keep_head(&mut out), keep_head(&mut err)) };
    let waited = tokio::time::timeout(timeout, async { tokio::join!(child.wait(), capture) }).await;
    let (status, (stdout, stderr)) = match waited {
        Ok(r) => r,
        Err(_) => {
            let _ = child.kill().await;
            return Err(StepFailure(format!(
                "{} timed out after {} and was killed",
                argv[0],
                humantime::format_duration(timeout)
            )));
        }
    };
    let output = format!("{}{}", String::from_utf8_lossy(&stdout), String::from_utf8_lossy(&stderr));
    match status {
        Ok(s) if s.success() => Ok(output),
        Ok(s) => Err(StepFailure(format!("{} exited with {s}: {}", argv[0], output.trim()))),
        Err(e) => Err(StepFailure(format!("{}: {e}", argv[0]))),
    }
}

/// The first OUTPUT_CAP bytes; the rest is read and dropped so the command never blocks on a
/// full pipe.
async fn keep_head(r: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    let mut head = Vec::new();
    let _ = r.take(OUTPUT_CAP as u64).read_to_end(&mut head).await;
    let _ = tokio::io::copy(r, &mut tokio::io::sink()).await;
    head
}
