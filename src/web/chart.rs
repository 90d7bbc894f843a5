//! The snapshot timeline as an inline SVG: one bar per complete snapshot at the time it was
//! taken (its height the stored size), a line through the durations, and a red mark for each
//! snapshot the daemon tried and failed (grey when it was skipped). Integer coordinates in a
//! fixed view box stretched to the page's width keep it a kilobyte or two for a hundred
//! snapshots; the scales are said in the caption beside it, in HTML.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::{Attempt, SnapPoint};

const W: i64 = 600;
const H: i64 = 60;
/// Room left above the tallest bar and beside the ends.
const PAD: i64 = 3;

/// Where on the x axis `t` falls between `from` and `to`.
fn x(t: DateTime<Utc>, from: DateTime<Utc>, span_ms: i64) -> i64 {
    let ms = (t - from).num_milliseconds().clamp(0, span_ms);
    PAD + ms * (W - 2 * PAD) / span_ms.max(1)
}

/// A height in `0..=H-PAD` for `v` of `max`.
fn y(v: f64, max: f64) -> i64 {
    if max <= 0.0 {
        return H;
    }
    H - ((v / max) * (H - PAD) as f64).round() as i64
}

/// The time range the chart covers: the first point to the last (an hour either side of one).
pub fn range(snaps: &[SnapPoint], attempts: &[Attempt]) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let times = snaps.iter().map(|s| s.taken_at).chain(attempts.iter().map(|a| a.at));
    let (lo, hi) = times.fold(None, |acc: Option<(DateTime<Utc>, DateTime<Utc>)>, t| match acc {
        None => Some((t, t)),
        Some((lo, hi)) => Some((lo.min(t), hi.max(t))),
    })?;
    if hi - lo < chrono::Duration::minutes(2) {
        let hour = chrono::Duration::hours(1);
        return Some((lo - hour, hi + hour));
    }
    Some((lo, hi))
}

/// The `<svg>` for `snaps` (oldest first) and the failed or skipped `attempts`; empty when
/// there is nothing to draw.
pub fn render(out: &mut String, snaps: &[SnapPoint], attempts: &[Attempt], label: &str) {
    let Some((from, to)) = range(snaps, attempts) else { return };
    let span = (to - from).num_milliseconds();
    let max_size = snaps.iter().map(|s| s.stored_bytes).max().unwrap_or(0) as f64;
    let max_secs = snaps.iter().map(SnapPoint::duration_seconds).fold(0.0, f64::max);
    let _ = write!(out, "<svg viewBox=\"0 0 {W} {H}\" preserveAspectRatio=none role=img aria-label=\"");
    super::html::push(out, label);
    out.push_str("\">");
    if !snaps.is_empty() {
        let xs: Vec<i64> = snaps.iter().map(|s| x(s.taken_at, from, span)).collect();
        // Bars up from the base, the next one's base reached from the last one's top by a
        // relative move: `v-h0 m dx h0 v-h1 …` (a few bytes a bar).
        out.push_str("<path stroke=#0969da stroke-width=3 vector-effect=non-scaling-stroke d=\"");
        let _ = write!(out, "M{} {H}", xs[0]);
        let mut last = 0;
        for (i, s) in snaps.iter().enumerate() {
            let h = H - y(s.stored_bytes as f64, max_size).min(H - 1);
            if i > 0 {
                let _ = write!(out, "m{} {last}", xs[i] - xs[i - 1]);
            }
            let _ = write!(out, "v-{h}");
            last = h;
        }
        // The durations as one line of relative steps.
        out.push_str("\"/><path fill=none stroke=#bf8700 vector-effect=non-scaling-stroke d=\"");
        let ys: Vec<i64> = snaps.iter().map(|s| y(s.duration_seconds(), max_secs)).collect();
        let _ = write!(out, "M{} {}", xs[0], ys[0]);
        for i in 1..snaps.len() {
            let _ =
                write!(out, "{}{} {}", if i == 1 { "l" } else { " " }, xs[i] - xs[i - 1], ys[i] - ys[i - 1]);
        }
        out.push_str("\"/>");
    }
    for (colour, failed) in [("#cf222e", true), ("#8c959f", false)] {
        let marks: Vec<&Attempt> = attempts.iter().filter(|a| a.is_failure() == failed).collect();
        if marks.is_empty() {
            continue;
        }
        let _ = write!(
            out,
            "<path stroke={colour} stroke-width=2 stroke-dasharray=4 vector-effect=non-scaling-stroke d=\""
        );
        for a in marks {
            let _ = write!(out, "M{} 0V{H}", x(a.at, from, span));
        }
        out.push_str("\"/>");
    }
    out.push_str("</svg>");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(minutes: i64, bytes: u64, secs: i64) -> SnapPoint {
        let t0: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let taken_at = t0 + chrono::Duration::minutes(minutes);
        SnapPoint {
            id: format!("s{minutes}"),
            taken_at,
            finished_at: taken_at + chrono::Duration::seconds(secs),
            stored_bytes: bytes,
            reason: "scheduled".into(),
            full: true,
        }
    }

    #[test]
    fn bars_span_the_width_and_the_largest_reaches_the_top() {
        let snaps = [snap(0, 100, 1), snap(60, 400, 4), snap(120, 200, 2)];
        let mut out = String::new();
        render(&mut out, &snaps, &[], "three <snapshots>");
        let h = |v: f64| H - y(v, 400.0);
        // From the left edge up, to the middle (full height: the largest), to the right edge.
        let bars = format!(
            "d=\"M{PAD} {H}v-{}m{} {}v-{}m{} {}v-{}\"",
            h(100.0),
            W / 2 - PAD,
            h(100.0),
            H - PAD,
            W / 2 - PAD,
            H - PAD,
            h(200.0)
        );
        assert!(out.contains(&bars), "{bars}\n{out}");
        let line = format!(
            "d=\"M{PAD} {}l{} {} {} {}\"",
            y(1.0, 4.0),
            W / 2 - PAD,
            PAD - y(1.0, 4.0),
            W / 2 - PAD,
            y(2.0, 4.0) - PAD
        );
        assert!(out.contains(&line), "{line}\n{out}");
        assert!(out.contains("aria-label=\"three &lt;snapshots&gt;\""), "{out}");
    }

    #[test]
    fn failures_are_marked_and_nothing_is_drawn_without_points() {
        let at = snap(30, 0, 0).taken_at;
        let attempts = [Attempt { at, outcome: "failure".into(), error: None, duration_seconds: 1.0 }];
        let mut out = String::new();
        render(&mut out, &[snap(0, 10, 1), snap(60, 10, 1)], &attempts, "x");
        assert!(out.contains("stroke=#cf222e") && out.contains(&format!("M{} 0V{H}", W / 2)), "{out}");
        let mut empty = String::new();
        render(&mut empty, &[], &[], "x");
        assert!(empty.is_empty());
    }
}
