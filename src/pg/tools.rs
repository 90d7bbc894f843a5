//! pg_dump, pg_dumpall, pg_restore and psql as typed values. A running tool lives in its own
//! process group (killed as a group when its value is dropped), starts from a cleared
//! environment, its stderr is kept (capped) for the error, and the password reaches it only
//! through a 0600 passfile that lives as long as the process: never argv, never a log.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

use crate::config::{passfile_line, DbUrl};
use crate::process::{self, Group};

const STDERR_CAP: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error(
        "cannot start {tool} ({path}): {source}; install the PostgreSQL client tools or set snapshot.pg_bin_dir"
    )]
    Spawn { tool: &'static str, path: String, source: std::io::Error },
    #[error("{tool} failed ({status}) on {target}: {stderr}")]
    Failed { tool: &'static str, status: String, target: String, stderr: String },
    #[error("{tool}: {message}")]
    Io { tool: &'static str, message: String },
    #[error(transparent)]
    Locate(#[from] super::locate::LocateError),
}

#[derive(Debug, Clone, Default)]
pub struct PgTools {
    /// The folder chosen for one server; before a choice, the first configured one (or PATH).
    bin_dir: Option<PathBuf>,
    /// `snapshot.pg_bin_dir`, searched first when choosing.
    configured: Vec<PathBuf>,
}

/// Which of the tool's standard streams the caller wants.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pipes {
    pub stdin: bool,
    pub stdout: bool,
}

impl PgTools {
    pub fn new(configured: Vec<PathBuf>) -> Self {
        PgTools { bin_dir: configured.first().cloned(), configured }
    }

    /// The tools for a server of major `need`: the database's own folder first, then the
    /// configured ones, the standard places and PATH (see `locate`).
    pub async fn for_server(&self, own: Option<&Path>, need: u32) -> Result<PgTools, ToolError> {
        let configured: Vec<PathBuf> =
            own.map(Path::to_path_buf).into_iter().chain(self.configured.iter().cloned()).collect();
        let dir = super::locate::locate(&configured, need).await?;
        Ok(PgTools { bin_dir: Some(dir), configured: self.configured.clone() })
    }

    /// The folder in use (for status and messages).
    pub fn bin_dir(&self) -> Option<&Path> {
        self.bin_dir.as_deref()
    }

    fn program(&self, tool: &str) -> PathBuf {
        match &self.bin_dir {
            Some(dir) => dir.join(tool),
            None => PathBuf::from(tool),
        }
    }

    /// Starts `tool` against `url` (passed as `--dbname=<conninfo without password>`), or
    /// against no database (`pg_restore --list`).
    pub fn spawn(
        &self,
        tool: &'static str,
        url: Option<&DbUrl>,
        args: &[OsString],
        pipes: Pipes,
    ) -> Result<Running, ToolError> {
        let passfile = match url.and_then(DbUrl::password) {
            Some(pw) => Some(write_passfile(tool, &passfile_line(&pw))?),
            None => None,
        };
        let program = self.program(tool);
        // A cleared environment: no PG* variable steers the tool away from what pgmedic's own
        // session saw, and no secret of the daemon's reaches it.
        let mut cmd = process::command(&program);
        if let Some(url) = url {
            cmd.arg(format!("--dbname={}", url.conninfo())).arg("--no-password");
        }
        cmd.args(args)
            .env("PGAPPNAME", "pgmedic")
            .stdin(if pipes.stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(if pipes.stdout { Stdio::piped() } else { Stdio::null() })
            .stderr(Stdio::piped());
        if let Some(f) = &passfile {
            cmd.env("PGPASSFILE", f.path());
        }
        let mut group = Group::spawn(&mut cmd).map_err(|source| ToolError::Spawn {
            tool,
            path: program.display().to_string(),
            source,
        })?;
        let stderr = group.child().stderr.take().map(|mut s| {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let _ = (&mut s).take(STDERR_CAP as u64).read_to_end(&mut buf).await;
                // Keep draining so the tool never blocks on a full stderr pipe.
                let _ = tokio::io::copy(&mut s, &mut tokio::io::sink()).await;
                String::from_utf8_lossy(&buf).trim().to_string()
            })
        });
        let target = url.map(DbUrl::display_target).unwrap_or_else(|| "its input".into());
        Ok(Running { tool, target, group, stderr, _passfile: passfile })
    }

    /// `<tool> --version`, recorded in manifests.
    pub async fn version(&self, tool: &'static str) -> Result<String, ToolError> {
        let program = self.program(tool);
        let out = process::command(&program)
            .arg("--version")
            .output()
            .await
            .map_err(|source| ToolError::Spawn { tool, path: program.display().to_string(), source })?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

fn write_passfile(tool: &'static str, line: &str) -> Result<tempfile::NamedTempFile, ToolError> {
    let io = |e: std::io::Error| ToolError::Io { tool, message: format!("cannot write a passfile: {e}") };
    // NamedTempFile is created 0600.
    let mut f = tempfile::Builder::new().prefix(".pgmedic-pgpass-").tempfile().map_err(io)?;
    f.write_all(line.as_bytes()).map_err(io)?;
    f.flush().map_err(io)?;
    Ok(f)
}

/// A running PostgreSQL client tool.
pub struct Running {
    tool: &'static str,
    target: String,
    group: Group,
    stderr: Option<JoinHandle<String>>,
    _passfile: Option<tempfile::NamedTempFile>,
}

impl Running {
    /// The tool's stdout as a blocking file, for a pipeline thread.
    pub fn take_stdout(&mut self) -> Result<File, ToolError> {
        let out = self
            .group
            .child()
            .stdout
            .take()
            .ok_or(ToolError::Io { tool: self.tool, message: "no stdout pipe".into() })?;
        let fd =
            out.into_owned_fd().map_err(|e| ToolError::Io { tool: self.tool, message: e.to_string() })?;
        Ok(File::from(fd))
    }

    /// The tool's stdin as a blocking file, for a pipeline thread.
    pub fn take_stdin(&mut self) -> Result<File, ToolError> {
        let inp = self
            .group
            .child()
            .stdin
            .take()
            .ok_or(ToolError::Io { tool: self.tool, message: "no stdin pipe".into() })?;
        let fd =
            inp.into_owned_fd().map_err(|e| ToolError::Io { tool: self.tool, message: e.to_string() })?;
        Ok(File::from(fd))
    }

    pub fn take_async_stdout(&mut self) -> Option<tokio::process::ChildStdout> {
        self.group.child().stdout.take()
    }

    /// Waits for exit; a non-zero status becomes an error carrying stderr.
    pub async fn wait(mut self) -> Result<String, ToolError> {
        let status =
            self.group.wait().await.map_err(|e| ToolError::Io { tool: self.tool, message: e.to_string() })?;
        let stderr = self.take_stderr().await;
        check(self.tool, &self.target, status, stderr)
    }

    /// Stops the tool now (SIGKILL to its group), reaps it, and returns what it had said on
    /// stderr.
    pub async fn kill(mut self) -> String {
        self.group.kill().await;
        self.take_stderr().await
    }

    async fn take_stderr(&mut self) -> String {
        match self.stderr.take() {
            Some(h) => h.await.unwrap_or_default(),
            None => String::new(),
        }
    }
}

fn check(tool: &'static str, target: &str, status: ExitStatus, stderr: String) -> Result<String, ToolError> {
    if status.success() {
        return Ok(stderr);
    }
    let status = match (status.code(), std::os::unix::process::ExitStatusExt::signal(&status)) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    };
    let stderr = if stderr.is_empty() { "(no output on stderr)".to_string() } else { stderr };
    Err(ToolError::Failed { tool, status, target: target.to_string(), stderr })
}
