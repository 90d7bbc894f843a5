//! One ephemeral PostgreSQL cluster: `initdb` into `scratch.dir/cluster-<pid>-<hex>/data`, then
//! `postgres` with a unix socket in a 0700 folder beside it and no TCP listener at all (or,
//! for a rehearsal whose tool cannot use a socket, one loopback port that asks every client
//! for a password), fsync off (nothing in it needs to survive a crash). The server runs in its own process group with
//! a parent-death signal, so it dies with pgmedic whatever kills pgmedic; what a dead pgmedic
//! left on disk (and the shared memory its server held) is removed by the next start.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::ScratchError;
use crate::config::DbUrl;
use crate::process::{self, Group};

/// The socket file is `.s.PGSQL.<port>`; with no TCP listener the number only names it.
const PORT: u16 = 5432;
const START_LIMIT: Duration = Duration::from_secs(60);

pub struct Cluster {
    root: PathBuf,
    server: Option<Group>,
    url: DbUrl,
    /// The loopback port, when the cluster listens on one.
    tcp_port: Option<u16>,
}

/// The user the server runs as: ourselves, or, as root (which initdb refuses), the state
/// directory's owner, or `postgres` where that owner is root too.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

fn run_as(state_dir: &Path) -> Result<Option<RunAs>, ScratchError> {
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    if let Ok(meta) = std::fs::metadata(state_dir) {
        if meta.uid() != 0 {
            return Ok(Some(RunAs { uid: meta.uid(), gid: meta.gid() }));
        }
    }
    let pw = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    if pw.is_null() {
        return Err(ScratchError::RunAs(format!(
            "pgmedic runs as root, which PostgreSQL's server refuses, and neither the state directory {} is owned by another user nor does a `postgres` user exist; run pgmedic as its own user or create one",
            state_dir.display()
        )));
    }
    Ok(Some(unsafe { RunAs { uid: (*pw).pw_uid, gid: (*pw).pw_gid } }))
}

fn chown(path: &Path, who: Option<RunAs>) -> Result<(), ScratchError> {
    let Some(who) = who else { return Ok(()) };
    std::os::unix::fs::chown(path, Some(who.uid), Some(who.gid)).map_err(|e| dir_err(path, e))
}

fn dir_err(path: &Path, e: std::io::Error) -> ScratchError {
    ScratchError::Dir { path: path.to_path_buf(), message: e.to_string() }
}

/// A 0700 folder (created when missing, its mode enforced when present), owned by `who`.
fn private_dir(path: &Path, who: Option<RunAs>) -> Result<(), ScratchError> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(|e| dir_err(path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(|e| dir_err(path, e))?;
    chown(path, who)
}

/// As root, the server user must be able to walk down to `dir`: say so now rather than let
/// initdb fail with a bare "permission denied".
fn reachable(dir: &Path, who: Option<RunAs>) -> Result<(), ScratchError> {
    let Some(who) = who else { return Ok(()) };
    for a in dir.ancestors().skip(1) {
        let Ok(m) = std::fs::metadata(a) else { continue };
        let mode = m.mode();
        let ok = if m.uid() == who.uid {
            mode & 0o100 != 0
        } else if m.gid() == who.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !ok {
            return Err(ScratchError::RunAs(format!(
                "the scratch server runs as uid {} (PostgreSQL refuses root), which cannot reach scratch.dir {}: {} is mode {:o} owned by uid {}; set scratch.dir to a folder that user can reach",
                who.uid,
                dir.display(),
                a.display(),
                mode & 0o7777,
                m.uid()
            )));
        }
    }
    Ok(())
}

fn server_command(program: PathBuf, who: Option<RunAs>) -> tokio::process::Command {
    let mut cmd = process::command(program);
    if let Some(w) = who {
        cmd.uid(w.uid).gid(w.gid);
    }
    let parent = std::process::id() as i32;
    // After the uid change (which would clear it): SIGKILL when pgmedic dies, however it dies.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(std::io::Error::other("pgmedic exited before its scratch server started"));
            }
            Ok(())
        });
    }
    cmd
}

impl Cluster {
    /// initdb and start a cluster of the binaries in `bin`, under `dir`; `loopback` also opens
    /// a port on 127.0.0.1 (password authentication only; the socket stays trust, 0700).
    pub async fn start(
        bin: &Path,
        dir: &Path,
        state_dir: &Path,
        loopback: bool,
    ) -> Result<Cluster, ScratchError> {
        let who = run_as(state_dir)?;
        reachable(dir, who)?;
        private_dir(dir, who)?;
        super::sweep::leftovers(dir);
        let root =
            dir.join(format!("cluster-{}-{}", std::process::id(), hex::encode(rand::random::<[u8; 4]>())));
        private_dir(&root, who)?;
        let socket = root.join("socket");
        private_dir(&socket, who)?;
        let tcp_port = if loopback { Some(free_port()?) } else { None };
        let port = tcp_port.unwrap_or(PORT);
        let mut cluster = Cluster { url: url_for(&socket, port)?, root, server: None, tcp_port };
        cluster.initdb(bin, who).await?;
        cluster.run(bin, who, &socket).await?;
        Ok(cluster)
    }

    pub fn url(&self) -> &DbUrl {
        &self.url
    }

    pub fn tcp_port(&self) -> Option<u16> {
        self.tcp_port
    }

    async fn initdb(&self, bin: &Path, who: Option<RunAs>) -> Result<(), ScratchError> {
        let data = self.root.join("data");
        let out = server_command(bin.join("initdb"), who)
            .args([
                "-U",
                "postgres",
                // The socket (0700, ours alone) trusts; a loopback port, when one is opened,
                // asks for the password generated for that rehearsal.
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
                "-D",
            ])
            .arg(&data)
            .stdin(Stdio::null())
            // A cancelled start must not leave initdb writing into a folder being removed.
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| ScratchError::Initdb(format!("cannot run {}: {e}", bin.join("initdb").display())))?;
        if !out.status.success() {
            let text = String::from_utf8_lossy(&out.stderr);
            return Err(ScratchError::Initdb(format!(
                "{} failed: {}",
                bin.join("initdb").display(),
                text.trim()
            )));
        }
        Ok(())
    }

    async fn run(&mut self, bin: &Path, who: Option<RunAs>, socket: &Path) -> Result<(), ScratchError> {
        let data = self.root.join("data");
        let log_path = self.root.join("server.log");
        let log = std::fs::File::create(&log_path).map_err(|e| dir_err(&log_path, e))?;
        chown(&log_path, who)?;
        let mut cmd = server_command(bin.join("postgres"), who);
        let port = self.tcp_port.unwrap_or(PORT);
        let listen = if self.tcp_port.is_some() { "listen_addresses=127.0.0.1" } else { "listen_addresses=" };
        cmd.arg("-D").arg(&data).arg("-k").arg(socket).args(["-p", &port.to_string()]);
        for setting in [
            listen,
            "password_encryption=scram-sha-256",
            "unix_socket_permissions=0700",
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
            "autovacuum=off",
            "max_connections=40",
            // Not wal_level=minimal: with it every CREATE DATABASE … TEMPLATE (a copy of the
            // baseline) and the schema's load take several times as long.
        ] {
            cmd.args(["-c", setting]);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        let group = Group::spawn(&mut cmd).map_err(|e| {
            ScratchError::Start(format!("cannot run {}: {e}", bin.join("postgres").display()))
        })?;
        self.server = Some(group);
        self.wait_ready(&data, &log_path).await
    }

    /// The postmaster writes `ready` on line 8 of postmaster.pid once it accepts connections.
    async fn wait_ready(&mut self, data: &Path, log: &Path) -> Result<(), ScratchError> {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            let pid_file = std::fs::read_to_string(data.join("postmaster.pid")).unwrap_or_default();
            if pid_file.lines().nth(7).is_some_and(|l| l.trim() == "ready") {
                return Ok(());
            }
            let exited = match self.server.as_mut() {
                Some(g) => g.child().try_wait().ok().flatten(),
                None => None,
            };
            if exited.is_some() || Instant::now() > deadline {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(5).collect();
                let what = if exited.is_some() { "exited" } else { "did not become ready in 60 s" };
                return Err(ScratchError::Start(format!(
                    "the scratch server {what}: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Immediate shutdown (nothing in it is kept), then the folder is removed.
    pub async fn stop(mut self) {
        if let Some(mut g) = self.server.take() {
            g.terminate_with(libc::SIGQUIT, Duration::from_secs(10)).await;
        }
        remove(&self.root);
    }
}

/// A loopback port nobody holds now (the kernel's pick, released for the server to take).
fn free_port() -> Result<u16, ScratchError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| ScratchError::Start(format!("cannot find a free loopback port: {e}")))
}

fn url_for(socket: &Path, port: u16) -> Result<DbUrl, ScratchError> {
    let text = format!("host={} port={port} user=postgres dbname=postgres sslmode=disable", socket.display());
    text.parse().map_err(|e| ScratchError::Start(format!("cannot address the scratch server's socket: {e}")))
}

pub(super) fn remove(root: &Path) {
    if let Err(e) = std::fs::remove_dir_all(root) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %root.display(), error = %e, "could not remove a scratch cluster's folder");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Not stopped in order (a failed start, a panic, a cancelled task): kill the group,
        // remove what we can; the next start of a pgmedic sweeps anything left.
        drop(self.server.take());
        remove(&self.root);
    }
}
