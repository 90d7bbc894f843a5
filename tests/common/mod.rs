//! The integration-test harness: a throw-away PostgreSQL database per test, a real S3 protocol
//! server (moto, started by `scripts/s3_server.py` on a port the kernel picks) with a bucket per
//! test, and a runner for the `pgmedic` binary with its own config and state directory.
#![allow(dead_code)]

pub mod browser;
pub mod cluster;
mod daemon;
pub mod js;
pub mod migrate;
pub mod prisma;
pub mod prisma_cli;
pub mod proxy;
mod s3;
#[allow(unused_imports)]
pub use daemon::Daemon;
#[allow(unused_imports)] // not every test binary checks checksums
pub use s3::{composite_crc32, S3Server};

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const PG_HOST: &str = "127.0.0.1";
pub const PG_PORT: &str = "5432";

pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{:08x}", rand::random::<u32>())
}

/// Runs SQL through psql as the superuser; panics with psql's stderr on failure.
pub fn psql(db: &str, sql: &str) -> String {
    run_psql(db, &["-XAtq", "-c", sql])
}

pub fn psql_file(db: &str, file: &Path) {
    run_psql(db, &["-Xq", "-f", &file.display().to_string()]);
}

fn run_psql(db: &str, args: &[&str]) -> String {
    let out = Command::new("psql")
        .args(["-h", PG_HOST, "-p", PG_PORT, "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1"])
        .args(args)
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql on {db} failed: {}\nargs: {args:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A database that exists for one test and is dropped after it.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    pub fn new(label: &str) -> TestDb {
        let name = unique(&format!("pgm_{label}"));
        psql("postgres", &format!("CREATE DATABASE {name}"));
        TestDb { name }
    }

    /// A name for a database the test expects pgmedic to create; dropped after the test.
    pub fn reserved(label: &str) -> TestDb {
        TestDb { name: unique(&format!("pgm_{label}")) }
    }

    pub fn url(&self) -> String {
        format!("postgresql://postgres@{PG_HOST}:{PG_PORT}/{}", self.name)
    }

    pub fn sql(&self, sql: &str) -> String {
        psql(&self.name, sql)
    }

    pub fn exists(&self) -> bool {
        psql("postgres", &format!("SELECT count(*) FROM pg_database WHERE datname = '{}'", self.name)) == "1"
    }

    /// A plain-text pg_dump of everything, for comparing two databases.
    pub fn plain_dump(&self) -> String {
        let out = Command::new("pg_dump")
            .args(["-h", PG_HOST, "-p", PG_PORT, "-U", "postgres", "--no-password", "-d", &self.name])
            .output()
            .expect("pg_dump runs");
        assert!(out.status.success(), "pg_dump {}: {}", self.name, String::from_utf8_lossy(&out.stderr));
        // pg_dump 15.14+ writes a random key in \restrict lines: not part of the data.
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args(["-h", PG_HOST, "-U", "postgres", "-d", "postgres", "-Xqc"])
            .arg(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
            .output();
    }
}

pub enum Backend<'a> {
    Local,
    S3(&'a S3Server),
}

/// One pgmedic configuration in a temporary directory, and a way to run the binary with it.
pub struct Pgmedic {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\n--- stdout\n{}\n--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

impl Pgmedic {
    /// A config for `dbs` (name, url) on `backend`, with extra lines for [storage] and [snapshot].
    pub fn new(backend: Backend, dbs: &[(&str, &str)], storage_extra: &str, snapshot_extra: &str) -> Pgmedic {
        let databases: String = dbs
            .iter()
            .map(|(name, url)| format!("\n[[databases]]\nname = \"{name}\"\nurl = \"{url}\"\n"))
            .collect();
        Self::custom(backend, "", storage_extra, snapshot_extra, &databases)
    }

    /// Full control: extra lines for [daemon], [storage] and [snapshot], then `tail` verbatim
    /// (the `[[databases]]` and `[[notify]]` entries).
    pub fn custom(
        backend: Backend,
        daemon_extra: &str,
        storage_extra: &str,
        snapshot_extra: &str,
        tail: &str,
    ) -> Pgmedic {
        let dir = tempfile::tempdir().unwrap();
        // As root the scratch server runs as `postgres`, which must be able to walk down to
        // scratch.dir: the folder may be traversed (not listed) by others.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
        let config = dir.path().join("pgmedic.toml");
        let pgm = Pgmedic { dir, config };
        pgm.write_config(&pgm.render(backend, daemon_extra, storage_extra, snapshot_extra, tail));
        pgm
    }

    pub fn render(
        &self,
        backend: Backend,
        daemon_extra: &str,
        storage_extra: &str,
        snapshot_extra: &str,
        tail: &str,
    ) -> String {
        let storage = match backend {
            Backend::Local => format!("backend = \"local\"\npath = \"{}\"\n", self.snapshots_dir().display()),
            Backend::S3(s) => format!(
                "backend = \"s3\"\nbucket = \"{}\"\nprefix = \"test/prod\"\nendpoint = \"{}\"\nforce_path_style = true\n",
                s.bucket, s.endpoint
            ),
        };
        format!(
            "[daemon]\nstate_dir = \"{}\"\nsocket = \"{}\"\n{daemon_extra}\n[storage]\n{storage}{storage_extra}\n\n[snapshot]\ncompression_level = 3\n{snapshot_extra}\n[scratch]\ndir = \"{}\"\n{tail}",
            self.dir.path().join("state").display(),
            self.dir.path().join("pgmedic.sock").display(),
            self.scratch_dir().display(),
        )
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text).unwrap();
    }

    /// Where the ephemeral scratch clusters of this configuration live.
    pub fn scratch_dir(&self) -> PathBuf {
        self.dir.path().join("scratch")
    }

    pub fn snapshots_dir(&self) -> PathBuf {
        self.dir.path().join("snapshots")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgmedic"));
        cmd.arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("PGMEDIC_CONFIG")
            .env("PGMEDIC_LOG", "info")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null());
        for (k, _) in std::env::vars() {
            if k.starts_with("PGMEDIC_") && k != "PGMEDIC_LOG" && k != "PGMEDIC_TEST_PYTHON" {
                cmd.env_remove(k);
            }
        }
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_env(args, &[])
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out: Output = cmd.output().expect("pgmedic runs");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Snapshot ids listed by `snapshots --json`, oldest first.
    pub fn snapshot_ids(&self) -> Vec<String> {
        let run = self.run(&["snapshots", "--json"]);
        assert_eq!(run.code, 0, "{run:?}");
        run.json().as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect()
    }

    pub fn snapshot(&self, db: &str) -> serde_json::Value {
        let run = self.run(&["snapshot", "--db", db, "--json"]);
        assert_eq!(run.code, 0, "{run:?}");
        run.json()
    }
}

/// A pg_bin_dir whose pg_dump waits, after dumping, until the test opens the gate; the rest of
/// the tools are the real ones. Lets a test act while an upload is provably in flight. The gate
/// is a file every waiting pg_dump looks for (a snapshot runs two: the data and the schema),
/// so one `open` lets them all go.
pub struct GatedTools {
    pub dir: tempfile::TempDir,
    pub gate: PathBuf,
}

impl GatedTools {
    pub fn new() -> GatedTools {
        let dir = tempfile::tempdir().unwrap();
        let gate = dir.path().join("gate");
        // The wait ends at the gate, or when pgmedic (its parent) is gone or the test has
        // removed the folder: a wrapper must never outlive its test.
        let script = format!(
            "#!/bin/sh\ncase \"$1\" in --version) exec pg_dump --version;; esac\npg_dump \"$@\"\nstatus=$?\nparent=$PPID\nwhile [ ! -e '{}' ]; do\n  [ -d '{}' ] && kill -0 \"$parent\" 2>/dev/null || exit 1\n  sleep 0.05\ndone\nexit $status\n",
            gate.display(),
            dir.path().display()
        );
        let path = dir.path().join("pg_dump");
        std::fs::write(&path, script).unwrap();
        Command::new("chmod").arg("755").arg(&path).status().unwrap();
        for tool in ["pg_dumpall", "pg_restore", "psql"] {
            let real = which(tool);
            std::os::unix::fs::symlink(real, dir.path().join(tool)).unwrap();
        }
        GatedTools { dir, gate }
    }

    pub fn snapshot_extra(&self) -> String {
        format!("pg_bin_dir = \"{}\"\n", self.dir.path().display())
    }

    /// Lets the waiting pg_dump wrappers exit.
    pub fn open(&self) {
        std::fs::write(&self.gate, b"go\n").unwrap();
    }

    /// The wrappers of this gate still running (their command line names its folder).
    pub fn waiting(&self) -> usize {
        let me = self.dir.path().display().to_string();
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()))
            .filter(|e| {
                std::fs::read(e.path().join("cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&me))
            })
            .count()
    }
}

/// Every file under `dir`, at any depth (none when it does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p))
            } else {
                out.push(p)
            }
        }
    }
    out
}

/// A pg_bin_dir whose pg_dump sleeps `secs` before dumping: a slow database.
pub fn slow_tools(secs: f32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let script = format!("#!/bin/sh\ncase \"$1\" in --version) exec pg_dump --version;; esac\nsleep {secs}\nexec pg_dump \"$@\"\n");
    let path = dir.path().join("pg_dump");
    std::fs::write(&path, script).unwrap();
    Command::new("chmod").arg("755").arg(&path).status().unwrap();
    for tool in ["pg_dumpall", "pg_restore", "psql"] {
        std::os::unix::fs::symlink(which(tool), dir.path().join(tool)).unwrap();
    }
    dir
}

/// The real tools' directory, as an override for a config that names a gated one.
pub fn real_bin_dir() -> (&'static str, String) {
    ("PGMEDIC_SNAPSHOT__PG_BIN_DIR", which("pg_dump").parent().unwrap().display().to_string())
}

pub fn which(tool: &str) -> PathBuf {
    let out = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().unwrap();
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Waits for `cond`, checking every 20 ms, failing the test after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fills `db` with a table of hard-to-compress rows, about `mib` MiB of dump.
pub fn fill_random(db: &TestDb, mib: u32) {
    let rows = mib * 1024 * 1024 / 300;
    db.sql(&format!(
        "CREATE TABLE filler(id int PRIMARY KEY, payload text); \
         INSERT INTO filler SELECT i, string_agg(md5(random()::text), '') FROM generate_series(1, {rows}) i, generate_series(1, 8) j GROUP BY i"
    ));
}

/// A webhook receiver on a loopback port the kernel picks: the URL to configure (with `path`),
/// and the one request it receives, head and body, after answering it 204.
pub fn webhook(path: &str) -> (String, std::thread::JoinHandle<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}{path}", listener.local_addr().unwrap());
    (url, std::thread::spawn(move || receive(&listener)))
}

/// The same, answering requests until one's body names `event` (`"event":"<event>"`): that one.
pub fn webhook_event(path: &str, event: &str) -> (String, std::thread::JoinHandle<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}{path}", listener.local_addr().unwrap());
    let wanted = format!("\"event\":\"{event}\"");
    let handle = std::thread::spawn(move || loop {
        let req = receive(&listener);
        if req.contains(&wanted) {
            return req;
        }
    });
    (url, handle)
}

fn receive(listener: &std::net::TcpListener) -> String {
    use std::io::{Read, Write};
    {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = conn.read(&mut buf) {
            req.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&req).to_string();
            let complete = text.split_once("\r\n\r\n").is_some_and(|(head, body)| {
                let len = head.lines().find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
                });
                body.len() >= len.unwrap_or(0)
            });
            if n == 0 || complete {
                break;
            }
        }
        let _ = conn.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n");
        String::from_utf8_lossy(&req).to_string()
    }
}

/// A datagram socket that listens as systemd does for `NOTIFY_SOCKET` messages.
pub struct NotifyListener {
    pub path: PathBuf,
    heard: std::sync::Arc<std::sync::Mutex<String>>,
}

impl NotifyListener {
    pub fn bind(path: PathBuf) -> NotifyListener {
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let heard = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = heard.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                sink.lock().unwrap().push_str(&format!("{}\n", String::from_utf8_lossy(&buf[..n])));
            }
        });
        NotifyListener { path, heard }
    }

    pub fn saw(&self, text: &str) -> bool {
        self.heard.lock().unwrap().contains(text)
    }

    pub fn all(&self) -> String {
        self.heard.lock().unwrap().clone()
    }
}

/// A plain HTTP/1.1 GET (the metrics listener), the whole reply as text.
pub fn http_get(addr: &str, path: &str) -> String {
    http_get_accept(addr, path, "*/*")
}

/// The same, with an Accept header (Prometheus asks for OpenMetrics this way).
pub fn http_get_accept(addr: &str, path: &str, accept: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
