//! A `pgmedic daemon` owned by one test: started on the test's config (its own socket and state
//! dir), spoken to over the real control socket, killed if the test ends first.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{wait_for, Pgmedic};

pub struct Daemon {
    child: Child,
    pub socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts the daemon and waits until its socket answers `status`.
    pub fn start(pgm: &Pgmedic) -> Daemon {
        Self::start_env(pgm, &[])
    }

    pub fn start_env(pgm: &Pgmedic, env: &[(&str, &str)]) -> Daemon {
        Self::start_in(pgm, env, None)
    }

    /// Started in `cwd` (`/`, as systemd starts it), else in the test's own directory.
    pub fn start_in(pgm: &Pgmedic, env: &[(&str, &str)], cwd: Option<&std::path::Path>) -> Daemon {
        let log = pgm.dir.path().join(format!("daemon-{:08x}.log", rand::random::<u32>()));
        let mut cmd = pgm.command(&["daemon"]);
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
        let mut d = Daemon { child, socket: pgm.dir.path().join("pgmedic.sock"), log };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("the daemon exited ({status}) at start:\n{}", d.log());
            }
            if d.try_request(r#"{"cmd":"status"}"#).is_some() {
                return d;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "the daemon did not answer:\n{}", d.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn try_request(&self, line: &str) -> Option<Value> {
        let mut s = UnixStream::connect(&self.socket).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(120))).ok()?;
        s.write_all(format!("{line}\n").as_bytes()).ok()?;
        let mut reply = String::new();
        BufReader::new(s).read_line(&mut reply).ok()?;
        serde_json::from_str(&reply).ok()
    }

    /// Sends one request line and returns the reply.
    pub fn request(&self, line: &str) -> Value {
        self.try_request(line).unwrap_or_else(|| panic!("no reply to {line}:\n{}", self.log()))
    }

    pub fn status(&self) -> Value {
        self.request(r#"{"cmd":"status"}"#)
    }

    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits for the daemon to exit; its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> i32 {
        let mut code = None;
        wait_for("the daemon to exit", limit, || {
            code = self.child.try_wait().unwrap().map(|s| s.code().unwrap_or(-1));
            code.is_some()
        });
        code.unwrap()
    }

    /// Waits until the daemon's log contains `text`.
    pub fn wait_log(&self, text: &str, limit: Duration) {
        wait_for(&format!("`{text}` in the daemon's log"), limit, || self.log().contains(text));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
