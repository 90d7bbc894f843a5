//! Progress for long restores and verifies run from a terminal: bytes, rate and time left on
//! one stderr line. Silent when stderr is not a terminal (services, pipes, tests).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

pub struct Progress {
    done: Arc<AtomicU64>,
    ticker: Option<JoinHandle<()>>,
}

impl Progress {
    /// A counter; it draws only when `show` and stderr is a terminal.
    pub fn start(label: String, total: u64, show: bool) -> Progress {
        let done = Arc::new(AtomicU64::new(0));
        let ticker = (show && std::io::stderr().is_terminal()).then(|| {
            let done = done.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let mut tick = tokio::time::interval(Duration::from_millis(500));
                loop {
                    tick.tick().await;
                    draw(&label, done.load(Ordering::Relaxed), total, started.elapsed());
                }
            })
        });
        Progress { done, ticker }
    }

    pub fn hidden() -> Progress {
        Progress { done: Arc::new(AtomicU64::new(0)), ticker: None }
    }

    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(t) = self.ticker.take() {
            t.abort();
            eprint!("\r\x1b[2K");
        }
    }
}

fn draw(label: &str, done: u64, total: u64, elapsed: Duration) {
    let rate = done as f64 / elapsed.as_secs_f64().max(0.001);
    let left = if rate > 0.0 && total > done { ((total - done) as f64 / rate) as u64 } else { 0 };
    let pct = (done * 100).checked_div(total).unwrap_or(100);
    eprint!(
        "\r\x1b[2K{label}: {} / {} ({pct}%), {}/s, {} left",
        crate::cli::human_bytes(done),
        crate::cli::human_bytes(total),
        crate::cli::human_bytes(rate as u64),
        humantime::format_duration(Duration::from_secs(left)),
    );
    let _ = std::io::stderr().flush();
}
