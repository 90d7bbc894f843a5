//! Masking secrets in text that reaches logs and audit records: step parameters, captured
//! command output, configuration errors. Each detector finds the byte ranges of secret values
//! (a URL's password, libpq `password=` pairs quoted or not, SQL `PASSWORD` literals in every
//! quoting form, `-u user:pw`, `Authorization:` headers, `*SECRET*=`/`*TOKEN*=` assignments, and
//! the row values PostgreSQL quotes in its errors: `Key (email)=(…)`, `Failing row contains (…)`);
//! the ranges are then replaced by `***`. Detection is by form, not by value, so a secret
//! printed in a form not listed here is not caught: keep commands quiet about secrets.

use std::ops::Range;

const MASK: &str = "***";
/// Assignment names whose value is a secret (`AWS_SECRET_ACCESS_KEY=…`, `GITHUB_TOKEN=…`).
const SECRET_NAMES: [&str; 7] =
    ["SECRET", "TOKEN", "PASSWORD", "PASSWD", "API_KEY", "ACCESS_KEY", "PRIVATE_KEY"];
const AUTH_SCHEMES: [&str; 6] = ["bearer", "basic", "token", "digest", "negotiate", "apikey"];

/// `text` with every secret value found replaced by `***`.
pub fn redact(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let b = lower.as_bytes();
    let mut ranges = Vec::new();
    url_passwords(text, &mut ranges);
    password_values(b, &mut ranges);
    user_options(b, &mut ranges);
    authorization(b, &mut ranges);
    secret_assignments(text.as_bytes(), &mut ranges);
    row_values(b, &mut ranges);
    apply(text, ranges)
}

fn apply(text: &str, mut ranges: Vec<Range<usize>>) -> String {
    ranges.retain(|r| r.start < r.end && text.is_char_boundary(r.start) && text.is_char_boundary(r.end));
    ranges.sort_by_key(|r| r.start);
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for r in ranges {
        if r.end <= pos {
            continue;
        }
        let start = r.start.max(pos);
        out.push_str(&text[pos..start]);
        if start == r.start {
            out.push_str(MASK);
        }
        pos = r.end;
    }
    out.push_str(&text[pos..]);
    out
}

/// `scheme://user:PASSWORD@host`.
fn url_passwords(text: &str, out: &mut Vec<Range<usize>>) {
    let mut from = 0;
    while let Some(i) = text[from..].find("://") {
        let start = from + i + 3;
        let end = text[start..]
            .find(|c: char| c == '/' || c == '?' || c.is_whitespace() || c == '"' || c == '\'')
            .map(|e| start + e)
            .unwrap_or(text.len());
        if let Some(at) = text[start..end].rfind('@') {
            if let Some(colon) = text[start..start + at].find(':') {
                out.push(start + colon + 1..start + at);
            }
        }
        from = end.max(start);
    }
}

fn skip_spaces(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
        i += 1;
    }
    i
}

/// The value starting at `i`: quoted (`'…'` or `"…"`, backslash escapes) or bare; the range
/// excludes the quotes.
fn value_at(b: &[u8], i: usize) -> Range<usize> {
    match b.get(i) {
        Some(&q) if q == b'\'' || q == b'"' => {
            let mut j = i + 1;
            while j < b.len() && b[j] != q {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            i + 1..j.min(b.len())
        }
        _ => {
            let stop = |c: u8| c.is_ascii_whitespace() || b"&,;\"')}".contains(&c);
            let end = b[i..].iter().position(|&c| stop(c)).map(|e| i + e).unwrap_or(b.len());
            i..end
        }
    }
}

/// SQL literal at `i`: `'…'` (doubled quotes), `E'…'` (backslash escapes) or `$tag$…$tag$`.
fn sql_literal_at(b: &[u8], i: usize) -> Option<Range<usize>> {
    match b.get(i)? {
        b'\'' => {
            let mut j = i + 1;
            while j < b.len() {
                if b[j] == b'\'' {
                    if b.get(j + 1) == Some(&b'\'') {
                        j += 2;
                        continue;
                    }
                    break;
                }
                j += 1;
            }
            Some(i + 1..j.min(b.len()))
        }
        b'e' if b.get(i + 1) == Some(&b'\'') => Some(value_at(b, i + 1)),
        b'$' => {
            let close = b[i + 1..].iter().position(|&c| c == b'$')? + i + 1;
            let tag = &b[i..=close];
            let body = close + 1;
            let end =
                b[body..].windows(tag.len()).position(|w| w == tag).map(|p| body + p).unwrap_or(b.len());
            Some(body..end)
        }
        _ => None,
    }
}

/// `password=…`, `password = '…'`, `"password": "…"`, and SQL `PASSWORD '…'` in all forms.
fn password_values(b: &[u8], out: &mut Vec<Range<usize>>) {
    for word in [&b"password"[..], &b"passwd"[..]] {
        let mut from = 0;
        while let Some(p) = find(b, word, from) {
            let mut i = p + word.len();
            from = i;
            if matches!(b.get(i), Some(b'"') | Some(b'\'')) && matches!(b.get(i + 1), Some(b':') | Some(b'='))
            {
                i += 1; // a quoted key: "password": "…"
            }
            let j = skip_spaces(b, i);
            match b.get(j) {
                Some(b'=') | Some(b':') => out.push(value_at(b, skip_spaces(b, j + 1))),
                _ if j > i => out.extend(sql_literal_at(b, j)),
                _ => {}
            }
        }
    }
}

/// curl's `-u user:pw`, `--user user:pw`, `--user=user:pw`: the part after the colon.
fn user_options(b: &[u8], out: &mut Vec<Range<usize>>) {
    for opt in [&b"-u "[..], &b"--user "[..], &b"--user="[..]] {
        let mut from = 0;
        while let Some(p) = find(b, opt, from) {
            from = p + opt.len();
            let boundary = p == 0 || b[p - 1].is_ascii_whitespace() || b[p - 1] == b'"' || b[p - 1] == b'\'';
            let v = value_at(b, skip_spaces(b, from));
            if let Some(c) = boundary.then(|| b[v.clone()].iter().position(|&c| c == b':')).flatten() {
                out.push(v.start + c + 1..v.end);
            }
        }
    }
}

/// `Authorization: Bearer …` (any scheme) and `Authorization: <token>`.
fn authorization(b: &[u8], out: &mut Vec<Range<usize>>) {
    let mut from = 0;
    while let Some(p) = find(b, b"authorization", from) {
        from = p + "authorization".len();
        let mut i = from;
        if matches!(b.get(i), Some(b'"') | Some(b'\'')) {
            i += 1;
        }
        let j = skip_spaces(b, i);
        if !matches!(b.get(j), Some(b':') | Some(b'=')) {
            continue;
        }
        let mut k = skip_spaces(b, j + 1);
        if matches!(b.get(k), Some(b'"') | Some(b'\'')) {
            k += 1;
        }
        let first = value_at(b, k);
        if AUTH_SCHEMES.iter().any(|s| b[first.clone()] == *s.as_bytes()) {
            out.push(value_at(b, skip_spaces(b, first.end)));
        } else {
            out.push(first);
        }
    }
}

/// The values inside `Key (cols)=(VALUES)` and `Failing row contains (VALUES)`: a server error's
/// DETAIL quotes the customer's data (an email, a card number) in these forms.
fn row_values(b: &[u8], out: &mut Vec<Range<usize>>) {
    for (pattern, after) in [("key (", ")=("), ("failing row contains (", "")] {
        let mut from = 0;
        while let Some(i) = find(b, pattern.as_bytes(), from) {
            let mut open = i + pattern.len();
            if !after.is_empty() {
                let Some(j) = find(b, after.as_bytes(), open) else { break };
                // The columns' list must not run past the line.
                if b[open..j].contains(&b'\n') {
                    from = open;
                    continue;
                }
                open = j + after.len();
            }
            let (mut depth, mut end) = (1usize, open);
            while end < b.len() && b[end] != b'\n' {
                match b[end] {
                    b'(' => depth += 1,
                    b')' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
                end += 1;
            }
            out.push(open..end);
            from = end.max(open);
        }
    }
}

/// `NAME=value` where NAME looks like it holds a secret (`AWS_SECRET_ACCESS_KEY=…`).
fn secret_assignments(b: &[u8], out: &mut Vec<Range<usize>>) {
    for eq in b.iter().enumerate().filter_map(|(i, c)| (*c == b'=').then_some(i)) {
        let start = b[..eq]
            .iter()
            .rposition(|&c| !(c.is_ascii_alphanumeric() || c == b'_'))
            .map(|p| p + 1)
            .unwrap_or(0);
        let name = String::from_utf8_lossy(&b[start..eq]).to_ascii_uppercase();
        if !name.is_empty() && SECRET_NAMES.iter().any(|s| name.contains(s)) {
            out.push(value_at(b, eq + 1));
        }
    }
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|p| p + from)
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn every_form_the_review_found() {
        let cases = [
            ("psql postgresql://app:s3cret@db:5432/x", "psql postgresql://app:***@db:5432/x"),
            ("host=db password=hunter2 user=x", "host=db password=*** user=x"),
            ("CREATE ROLE a PASSWORD 'pw''; x'", "CREATE ROLE a PASSWORD '***'"),
            ("ALTER ROLE a PASSWORD E'p\\'w'", "ALTER ROLE a PASSWORD E'***'"),
            ("ALTER ROLE a PASSWORD  'pw'", "ALTER ROLE a PASSWORD  '***'"),
            ("ALTER ROLE a PASSWORD $$pw$$ VALID", "ALTER ROLE a PASSWORD $$***$$ VALID"),
            ("ALTER ROLE a PASSWORD $x$p$w$x$;", "ALTER ROLE a PASSWORD $x$***$x$;"),
            ("host=db password = 'p w\\'x' user=a", "host=db password = '***' user=a"),
            ("psql \"host=db password=x dbname=a\"", "psql \"host=db password=*** dbname=a\""),
            ("curl -u admin:pw https://x", "curl -u admin:*** https://x"),
            ("curl --user=admin:pw x", "curl --user=admin:*** x"),
            ("-H 'Authorization: Bearer abc.def' x", "-H 'Authorization: Bearer ***' x"),
            ("authorization=tok123 next", "authorization=*** next"),
            ("AWS_SECRET_ACCESS_KEY=abc/def\nPATH=/bin", "AWS_SECRET_ACCESS_KEY=***\nPATH=/bin"),
            ("PGPASSWORD=x psql", "PGPASSWORD=*** psql"),
            ("{\"password\": \"pw\"}", "{\"password\": \"***\"}"),
            ("https://hooks.example.com/T0", "https://hooks.example.com/T0"),
            ("the password is wrong", "the password is wrong"),
            (
                "DETAIL: Key (email)=(alice@example.com) already exists.",
                "DETAIL: Key (email)=(***) already exists.",
            ),
            ("Key (a, b)=(1, f(x)) is duplicated", "Key (a, b)=(***) is duplicated"),
            ("Failing row contains (7, 4111 1111, null).", "Failing row contains (***)."),
            ("a key (not a detail) here", "a key (not a detail) here"),
        ];
        for (input, want) in cases {
            assert_eq!(redact(input), want, "redacting {input:?}");
        }
    }
}
