//! Progress for long restores and verifies run from a terminal: bytes, rate and time left on
//! one stderr line, drawn by `indicatif` (rate-limited, cleared when done). Hidden when stderr
//! is not a terminal (services, pipes, tests) or the caller asked for JSON.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

const TEMPLATE: &str =
    "{msg}: {binary_bytes} / {binary_total_bytes} ({percent}%), {binary_bytes_per_sec}, {eta} left";

/// `None` when hidden: the restore and verify streams call `add` per chunk, and a hidden
/// counter then costs nothing at all.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A counter; it draws only when `show` and stderr is a terminal.
    pub fn start(label: String, total: u64, show: bool) -> Progress {
        if !(show && std::io::stderr().is_terminal()) {
            return Progress::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(2));
        bar.set_style(ProgressStyle::with_template(TEMPLATE).expect("a valid template"));
        bar.set_message(label);
        // Redrawn twice a second even while no bytes move, so a stall shows as a falling rate.
        bar.enable_steady_tick(Duration::from_millis(500));
        Progress { bar: Some(bar) }
    }

    pub fn hidden() -> Progress {
        Progress { bar: None }
    }

    pub fn add(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
