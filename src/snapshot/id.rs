//! Snapshot ids: `20261121T031500Z-<reason>-<6 hex>`, so that sorting ids sorts by time.

use chrono::{DateTime, NaiveDateTime, Utc};

const MAX_REASON: usize = 32;

pub fn new_id(at: DateTime<Utc>, reason: &str) -> String {
    format!("{}-{}-{:06x}", at.format("%Y%m%dT%H%M%SZ"), slug(reason), rand::random::<u32>() & 0xff_ffff)
}

/// Lowercase letters, digits and single dashes; "manual" when nothing is left.
pub fn slug(reason: &str) -> String {
    let mut out = String::new();
    for c in reason.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
        if out.len() >= MAX_REASON {
            break;
        }
    }
    let out = out.trim_matches('-').to_string();
    if out.is_empty() {
        "manual".into()
    } else {
        out
    }
}

/// The time encoded in an id, if it is one.
pub fn time_of(id: &str) -> Option<DateTime<Utc>> {
    let stamp = id.get(..16)?;
    NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ").ok().map(|t| t.and_utc())
}

/// Ids are used as storage path segments: refuse anything that could escape one.
pub fn is_valid(id: &str) -> bool {
    time_of(id).is_some() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_parse_back() {
        let t = DateTime::parse_from_rfc3339("2026-11-21T03:15:00Z").unwrap().with_timezone(&Utc);
        let id = new_id(t, "Pre Repair!");
        assert!(id.starts_with("20261121T031500Z-pre-repair-"), "{id}");
        assert_eq!(id.len(), "20261121T031500Z-pre-repair-".len() + 6);
        assert_eq!(time_of(&id), Some(t));
        assert!(is_valid(&id));
        assert!(!is_valid("../../etc"));
        assert_eq!(slug("  "), "manual");
    }
}
