//! Sizes and spans of time as people read them, shared by every report and refusal.

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A span of seconds as people read it: `45s`, `3m 10s`, `2h 5m`, `3d 4h`.
pub fn span(seconds: i64) -> String {
    let s = seconds.unsigned_abs();
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) if sec == 0 => format!("{m}m"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn spans_read_as_people_say_them() {
        let cases =
            [(0, "0s"), (45, "45s"), (60, "1m"), (190, "3m 10s"), (7500, "2h 5m"), (273_600, "3d 4h")];
        for (secs, text) in cases {
            assert_eq!(super::span(secs), text);
        }
    }
}
