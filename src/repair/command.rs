//! `command` steps: argv without a shell, a working directory, the step's own environment on
//! top of a cleared one (see `process`), a timeout after which the whole process group gets
//! SIGTERM and then SIGKILL; stdout and stderr are captured (capped) for the audit. Whatever the
//! command left running in its group when it exits is killed too.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use super::StepFailure;
use crate::audit::OUTPUT_CAP;
use crate::process::{self, Group, TERM_GRACE};

pub async fn run(
    argv: &[String],
    cwd: Option<&PathBuf>,
    env: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<String, StepFailure> {
    let mut cmd = process::command(&argv[0]);
    cmd.args(&argv[1..]).envs(env).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let mut group =
        Group::spawn(&mut cmd).map_err(|e| StepFailure(format!("cannot start {}: {e}", argv[0])))?;
    let child = group.child();
    let out = tokio::spawn(process::read_head(child.stdout.take().expect("piped"), OUTPUT_CAP as u64));
    let err = tokio::spawn(process::read_head(child.stderr.take().expect("piped"), OUTPUT_CAP as u64));
    let status = match tokio::time::timeout(timeout, group.child().wait()).await {
        Ok(status) => status,
        Err(_) => {
            group.terminate(TERM_GRACE).await;
            return Err(StepFailure(format!(
                "{} timed out after {} and was killed (with its process group)",
                argv[0],
                humantime::format_duration(timeout)
            )));
        }
    };
    // Background members of the group do not outlive the step; killing them also closes
    // the pipes they inherited, so the readers below reach end of file.
    group.kill().await;
    let (stdout, stderr) = (out.await.unwrap_or_default(), err.await.unwrap_or_default());
    let output = format!("{}{}", String::from_utf8_lossy(&stdout), String::from_utf8_lossy(&stderr));
    match status {
        Ok(s) if s.success() => Ok(output),
        Ok(s) => Err(StepFailure(format!("{} exited with {s}: {}", argv[0], output.trim()))),
        Err(e) => Err(StepFailure(format!("{}: {e}", argv[0]))),
    }
}
