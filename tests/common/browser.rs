//! A real browser for the daemon's pages: Debian's Chromium, headless, as `scripts/test`
//! installs it (`scripts/lib/test-tools.sh`). `dump_dom` is the DOM after the page loaded;
//! `screenshot` saves what it shows. No driver: Chromium's own command-line modes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn chromium() -> PathBuf {
    let path = super::which("chromium");
    assert!(
        path.is_file(),
        "chromium is not installed: scripts/test installs it (apt_tool chromium chromium)"
    );
    path
}

/// Runs Chromium headless with `args` and returns its stdout; fails the test after a minute.
fn run(args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).unwrap();
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("chromium did not finish within a minute: {args:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "chromium {args:?}: {status}");
    reader.join().unwrap()
}

/// The DOM Chromium built from `url`, serialised.
pub fn dump_dom(url: &str) -> String {
    run(&["--dump-dom", url])
}

/// Saves a `width`×`height` screenshot of `url` to `file`.
pub fn screenshot(url: &str, file: &Path, width: u32, height: u32) {
    let _ = std::fs::remove_file(file);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    run(&[
        "--hide-scrollbars",
        &format!("--window-size={width},{height}"),
        &format!("--screenshot={}", file.display()),
        url,
    ]);
    let png = std::fs::read(file).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", file.display()));
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} is not a screenshot", file.display());
}

/// Where the tests keep what the browser saw: under `target/`.
pub fn saved(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A GET with extra headers; the status line, headers and body.
pub fn get(addr: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    s.write_all(format!("{req}\r\n").as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Reply { status, head: head.to_ascii_lowercase(), body: body.to_string() }
}

pub struct Reply {
    pub status: u16,
    /// The status line and headers, lower-cased.
    pub head: String,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<String> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        self.head.lines().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.trim().to_string())
    }
}
