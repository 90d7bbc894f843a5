//! HTML text, safely: the one escape function every value of the pages goes through, the
//! shared head (style sheet, refresh, no scripts) and the small formatting helpers for times
//! and sizes the pages share.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

/// `text` escaped for HTML element content and double- or single-quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    push(&mut out, text);
    out
}

/// Appends `text` to `out`, escaped (see `escape`).
pub fn push(out: &mut String, text: &str) {
    let mut last = 0;
    for (i, b) in text.bytes().enumerate() {
        let rep = match b {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            b'\'' => "&#39;",
            _ => continue,
        };
        out.push_str(&text[last..i]);
        out.push_str(rep);
        last = i + 1;
    }
    out.push_str(&text[last..]);
}

/// An id attribute's value for a database or host name: letters, digits, `-` and `_` kept,
/// anything else as `.XX` (names are already restricted by validation; this is the guard).
pub fn anchor(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 3);
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
            out.push(c);
        } else {
            let _ = write!(out, ".{:02x}", c as u32);
        }
    }
    out
}

/// `2026-01-02 03:04 UTC`.
pub fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// `2026-01-02 03:04`: the pages say once that their times are UTC.
pub fn short_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M").to_string()
}

/// `3h 5m ago` (or `in 2m` for a time ahead of `now`).
pub fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let s = (now - t).num_seconds();
    if s < 0 {
        format!("in {}", crate::units::span(-s))
    } else {
        format!("{} ago", crate::units::span(s))
    }
}

/// A time as `2026-01-02 03:04` (UTC, which the page says once). No hover title: a phone
/// has no hover, and a page of fifty databases holds hundreds of times.
pub fn when(out: &mut String, t: DateTime<Utc>, _now: DateTime<Utc>) {
    out.push_str(&short_time(t));
}

/// How long ago (or how soon) `t` is, as the overviews show it: `3h 5m ago`, `in 2m`.
pub fn age(out: &mut String, t: DateTime<Utc>, now: DateTime<Utc>) {
    out.push_str(&ago(t, now));
}

/// Seconds as `12.3s`, `4m 10s`.
pub fn seconds(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        crate::units::span(s.round() as i64)
    }
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;max-width:68rem;padding:0 .6rem;color:#1b1f24;background:#fff}\
h1{font-size:1.3rem;margin:.6rem 0 .2rem}h2{font-size:1.1rem;margin:0;padding:.3rem 0}h3{font-size:.95rem;margin:.7rem 0 .2rem}\
small,.m{color:#57606a}section{border-top:2px solid #d0d7de;margin:1rem 0;padding-top:.3rem}\
table{border-collapse:collapse;width:100%;font-size:.9em}.w{overflow-x:auto}\
td,th{border-bottom:1px solid #e6e9ec;padding:.2rem .35rem;text-align:left;vertical-align:top}\
code,pre{font:12px/1.35 ui-monospace,monospace}pre{background:#f6f8fa;padding:.4rem;overflow-x:auto;white-space:pre-wrap;word-break:break-all;margin:.2rem 0}\
.ok{color:#1a7f37}.bad{color:#cf222e;font-weight:600}.warn{color:#9a6700}\
.banner{background:#fff8c5;border:1px solid #d4a72c;padding:.4rem .6rem;margin:.5rem 0}\
svg{width:100%;height:5rem;background:#f6f8fa}summary{cursor:pointer}\
@media(prefers-color-scheme:dark){body{background:#0d1117;color:#e6edf3}pre,svg{background:#161b22}\
td,th{border-color:#30363d}small,.m{color:#8b949e}.banner{background:#3b2e00;border-color:#9a6700}}";

/// The document up to `<body>`: no script, no external resource; refreshes itself.
pub fn head(out: &mut String, title: &str, refresh_seconds: u32) {
    out.push_str("<!doctype html><html lang=en><head><meta charset=utf-8>");
    out.push_str("<meta name=viewport content=\"width=device-width,initial-scale=1\">");
    let _ = write!(out, "<meta http-equiv=refresh content={refresh_seconds}>");
    out.push_str("<meta name=robots content=noindex><title>");
    push(out, title);
    out.push_str("</title><style>");
    out.push_str(STYLE);
    out.push_str("</style></head><body>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_every_special_character_and_keeps_the_rest() {
        assert_eq!(escape("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
        assert_eq!(escape("plain ünïcode — text"), "plain ünïcode — text");
        assert_eq!(escape(""), "");
        assert_eq!(escape("&amp;"), "&amp;amp;", "escaping is not idempotent: text is text");
        assert_eq!(
            escape("</script><script>alert(1)</script>"),
            "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;"
        );
    }

    #[test]
    fn anchors_keep_names_and_encode_the_rest() {
        assert_eq!(anchor("app_db-1"), "app_db-1");
        assert_eq!(anchor("a b\"<"), "a.20b.22.3c");
    }

    proptest::proptest! {
        /// Whatever the text, the escaped form has no markup character left bare.
        #[test]
        fn escaped_text_never_holds_markup(text in "\\PC{0,64}") {
            let e = escape(&text);
            proptest::prop_assert!(!e.contains(['<', '>', '"', '\'']));
            proptest::prop_assert!(e.split('&').skip(1).all(|rest| ["amp;", "lt;", "gt;", "quot;", "#39;"].iter().any(|x| rest.starts_with(x))));
        }
    }
}
