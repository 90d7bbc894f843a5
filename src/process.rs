//! External processes as typed values: every child pgmedic starts (pg_dump and friends, a
//! playbook's `command`) runs in its own process group, from a cleared environment, and is
//! killed as a group — on timeout, on cancel, and when its value is dropped — so nothing it
//! started in the background outlives it, and no secret of the daemon's environment reaches it.

use std::ffi::OsStr;
use std::time::Duration;

use tokio::process::{Child, Command};

/// Variables a child keeps from pgmedic's environment; everything else (AWS keys, tokens,
/// `PGPASSWORD`) is left behind. `LC_*` are kept too; `LD_LIBRARY_PATH` because client tools in
/// a `pg_bin_dir` of their own may need it to find their libpq.
const ALLOWED_ENV: [&str; 9] =
    ["PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH"];

/// How long a group gets between SIGTERM and SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(5);

/// A command with a cleared environment (plus the allowlist) in a new process group.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear().envs(allowed_env()).process_group(0);
    cmd
}

/// The allowlisted part of this process's environment.
pub fn allowed_env() -> Vec<(String, String)> {
    std::env::vars().filter(|(k, _)| ALLOWED_ENV.contains(&k.as_str()) || k.starts_with("LC_")).collect()
}

/// A running child and its process group, killed (SIGKILL to the group) when dropped.
pub struct Group {
    child: Child,
    pgid: Option<i32>,
}

impl Group {
    pub fn spawn(cmd: &mut Command) -> std::io::Result<Group> {
        let child = cmd.spawn()?;
        // process_group(0): the child's pid is its group's id.
        let pgid = child.id().map(|p| p as i32);
        Ok(Group { child, pgid })
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    fn signal(&self, sig: i32) {
        if let Some(pgid) = self.pgid {
            // The group may already be gone (ESRCH): nothing to do then.
            unsafe { libc::killpg(pgid, sig) };
        }
    }

    /// SIGKILL to the whole group, then reaps the leader.
    pub async fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait().await;
        self.pgid = None;
    }

    /// SIGTERM to the group, `grace` to exit, then SIGKILL to whatever is left of it.
    pub async fn terminate(&mut self, grace: Duration) {
        self.terminate_with(libc::SIGTERM, grace).await
    }

    /// `sig` to the group (a server's own shutdown signal), `grace` to exit, then SIGKILL.
    pub async fn terminate_with(&mut self, sig: i32, grace: Duration) {
        self.signal(sig);
        let _ = tokio::time::timeout(grace, self.child.wait()).await;
        self.signal(libc::SIGKILL);
        let _ = self.child.wait().await;
        self.pgid = None;
    }

    /// Waits for the leader; background members of the group are then killed, so that a
    /// finished step leaves nothing running behind it.
    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        let status = self.child.wait().await;
        self.signal(libc::SIGKILL);
        self.pgid = None;
        status
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
        // Reap the leader if it has already exited; tokio reaps it later otherwise.
        let _ = self.child.try_wait();
    }
}

/// Whether process `pid` exists (signal 0 checks existence only; EPERM still means it does).
pub fn alive(pid: i32) -> bool {
    unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() == libc::EPERM }
}

/// The first `cap` bytes of a child's output; the rest is read and dropped so the child never
/// blocks on a full pipe.
pub async fn read_head(mut r: impl tokio::io::AsyncRead + Unpin, cap: u64) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let _ = (&mut r).take(cap).read_to_end(&mut head).await;
    let _ = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
    head
}
