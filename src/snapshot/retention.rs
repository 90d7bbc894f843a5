//! Retention: which complete snapshots to keep, per database. Buckets follow restic's rule (the
//! newest snapshot of each of the last N days, ISO weeks and months that have snapshots), so a
//! daemon that was down for a week does not lose its older dailies. Pre-repair snapshots are
//! kept for `keep_pre_repair_days`, and the newest snapshot is never deleted. Nor is the oldest
//! snapshot whose recorded migration rows are the newest one's: it is the schema diagnose compares
//! with to find what a migration that recorded nothing left behind, and a failure that writes no
//! row leaves every later snapshot with the same rows, so only the oldest predates it. Deletion
//! removes the manifest first, so a half-deleted snapshot is already invisible.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Datelike, Duration, Utc};
use serde::Serialize;

use super::{list, Manifest, SnapshotError};
use crate::config::Retention;
use crate::storage::Storage;

pub const PRE_REPAIR: &str = "pre-repair";

/// The calendar bucket (day, ISO week, month) a snapshot falls in.
type BucketKey = fn(&DateTime<Utc>) -> (i32, u32);

#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub id: String,
    pub database: String,
    pub taken_at: DateTime<Utc>,
    pub keep: bool,
    /// Why it is kept (empty when it goes).
    pub reasons: Vec<String>,
}

/// Decisions for `snapshots` (any order, any databases), newest first per database.
pub fn plan(snapshots: &[Manifest], policy: &Retention, now: DateTime<Utc>) -> Vec<Decision> {
    let mut by_db: BTreeMap<&str, Vec<&Manifest>> = BTreeMap::new();
    for m in snapshots {
        by_db.entry(m.database.as_str()).or_default().push(m);
    }
    let mut out = Vec::new();
    for (_, mut list) in by_db {
        list.sort_by(|a, b| (b.taken_at, &b.id).cmp(&(a.taken_at, &a.id)));
        // A scoped pre-repair snapshot is no snapshot of the database: it never counts toward
        // keep_last or a day's, week's or month's, and is kept by keep_pre_repair_days alone.
        let (full, scoped): (Vec<&Manifest>, Vec<&Manifest>) =
            list.into_iter().partition(|m| m.scope.is_full());
        out.extend(plan_one(&full, policy, now));
        out.extend(scoped.iter().map(|m| scoped_one(m, policy, now)));
    }
    out
}

fn scoped_one(m: &Manifest, policy: &Retention, now: DateTime<Utc>) -> Decision {
    let cutoff = now - Duration::days(policy.keep_pre_repair_days as i64);
    let reasons = if m.taken_at >= cutoff {
        vec![format!("scoped pre-repair within {} days", policy.keep_pre_repair_days)]
    } else {
        Vec::new()
    };
    Decision {
        id: m.id.clone(),
        database: m.database.clone(),
        taken_at: m.taken_at,
        keep: !reasons.is_empty(),
        reasons,
    }
}

fn plan_one(newest_first: &[&Manifest], policy: &Retention, now: DateTime<Utc>) -> Vec<Decision> {
    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); newest_first.len()];
    if let Some(first) = reasons.first_mut() {
        first.push("newest".into());
    }
    for (i, r) in reasons.iter_mut().enumerate().take(policy.keep_last as usize) {
        r.push(format!("last {}", i + 1));
    }
    let buckets: [(&str, u32, BucketKey); 3] = [
        ("daily", policy.keep_daily, |t| (t.year(), t.ordinal())),
        ("weekly", policy.keep_weekly, |t| (t.iso_week().year(), t.iso_week().week())),
        ("monthly", policy.keep_monthly, |t| (t.year(), t.month())),
    ];
    for (name, keep, key) in buckets {
        let mut last = None;
        let mut kept = 0;
        for (i, m) in newest_first.iter().enumerate() {
            let k = key(&m.taken_at);
            if kept < keep && last != Some(k) {
                reasons[i].push(format!("{name} {}", kept + 1));
                kept += 1;
            }
            last = Some(k);
        }
    }
    if let Some(i) = baseline_of_newest(newest_first) {
        reasons[i].push("oldest with the newest's migration rows (diagnose's baseline)".into());
    }
    let cutoff = now - Duration::days(policy.keep_pre_repair_days as i64);
    for (i, m) in newest_first.iter().enumerate() {
        if m.reason == PRE_REPAIR && m.taken_at >= cutoff {
            reasons[i].push(format!("pre-repair within {} days", policy.keep_pre_repair_days));
        }
    }
    newest_first
        .iter()
        .zip(reasons)
        .map(|(m, reasons)| Decision {
            id: m.id.clone(),
            database: m.database.clone(),
            taken_at: m.taken_at,
            keep: !reasons.is_empty(),
            reasons,
        })
        .collect()
}

/// The index of the oldest snapshot recording the same migration rows as the newest (none when
/// the newest recorded none, or is itself the oldest such).
fn baseline_of_newest(newest_first: &[&Manifest]) -> Option<usize> {
    fn rows(m: &Manifest) -> Option<(&String, &String, &Vec<serde_json::Value>)> {
        m.migrations.as_ref().map(|r| (&r.schema, &r.table, &r.rows))
    }
    let newest = rows(newest_first.first()?)?;
    let oldest = newest_first.iter().rposition(|m| rows(m) == Some(newest))?;
    (oldest > 0).then_some(oldest)
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub decisions: Vec<Decision>,
    /// Snapshots that could not be deleted, with why; prune went on past each.
    pub errors: Vec<String>,
}

/// Applies `policy` to the snapshots of `databases`; with `dry_run` deletes nothing. Only the
/// databases named are touched: another installation may share the prefix (README).
pub async fn prune(
    storage: &Arc<dyn Storage>,
    policy: &Retention,
    databases: &[&str],
    dry_run: bool,
) -> Result<PruneReport, SnapshotError> {
    let mut snapshots = Vec::new();
    for db in databases {
        snapshots.extend(list(storage, Some(db)).await?);
    }
    let decisions = plan(&snapshots, policy, Utc::now());
    let mut errors = Vec::new();
    if !dry_run {
        'snapshots: for d in decisions.iter().filter(|d| !d.keep) {
            let m = snapshots
                .iter()
                .find(|m| m.id == d.id && m.database == d.database)
                .expect("planned from this list");
            for key in m.keys() {
                // One snapshot that cannot be deleted (another user's files) stops only itself.
                if let Err(e) = storage.delete(&key).await {
                    tracing::warn!(id = %m.id, database = %m.database, error = %e, "could not prune this snapshot; going on with the others");
                    errors.push(format!("snapshot {} of {}: {e}", m.id, m.database));
                    continue 'snapshots;
                }
            }
            tracing::info!(id = %m.id, database = %m.database, "pruned snapshot");
        }
    }
    Ok(PruneReport { dry_run, decisions, errors })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Compression, FORMAT_VERSION};

    fn snap(days_ago: i64, hour: u32, reason: &str, now: DateTime<Utc>) -> Manifest {
        let t = (now - Duration::days(days_ago)).date_naive().and_hms_opt(hour, 0, 0).unwrap().and_utc();
        Manifest {
            format_version: FORMAT_VERSION,
            id: format!("{}-{reason}-000000", t.format("%Y%m%dT%H%M%SZ")),
            database: "app".into(),
            reason: reason.into(),
            trigger: "test".into(),
            taken_at: t,
            finished_at: t,
            host: String::new(),
            scope: Default::default(),
            scope_reason: None,
            instance: None,
            slot: None,
            pg_dump_version: String::new(),
            pg_bin_dir: None,
            server_version: String::new(),
            format: String::new(),
            compression: Compression { algorithm: "zstd".into(), level: 3 },
            object: "dump.zst".into(),
            raw_bytes: 0,
            stored_bytes: 0,
            sha256: String::new(),
            tables: None,
            globals: None,
            schema: None,
            migrations: None,
            encryption: None,
        }
    }

    fn policy(last: u32, daily: u32, weekly: u32, monthly: u32, pre: u32) -> Retention {
        Retention {
            keep_last: last,
            keep_daily: daily,
            keep_weekly: weekly,
            keep_monthly: monthly,
            keep_pre_repair_days: pre,
        }
    }

    fn kept(d: &[Decision]) -> Vec<String> {
        d.iter().filter(|d| d.keep).map(|d| d.id[..11].to_string()).collect()
    }

    #[test]
    fn daily_keeps_newest_of_each_day() {
        let now = DateTime::parse_from_rfc3339("2026-11-21T12:00:00Z").unwrap().with_timezone(&Utc);
        let snaps: Vec<Manifest> =
            (0..5).flat_map(|d| [snap(d, 3, "scheduled", now), snap(d, 9, "scheduled", now)]).collect();
        let d = plan(&snaps, &policy(0, 3, 0, 0, 0), now);
        assert_eq!(kept(&d), ["20261121T09", "20261120T09", "20261119T09"]);
        assert_eq!(d.iter().filter(|d| !d.keep).count(), 7);
    }

    #[test]
    fn newest_is_never_deleted_and_pre_repair_expires() {
        let now = DateTime::parse_from_rfc3339("2026-11-21T12:00:00Z").unwrap().with_timezone(&Utc);
        let snaps =
            vec![snap(40, 3, PRE_REPAIR, now), snap(10, 3, PRE_REPAIR, now), snap(1, 3, "scheduled", now)];
        let d = plan(&snaps, &policy(0, 0, 0, 0, 30), now);
        assert_eq!(kept(&d), ["20261120T03", "20261111T03"]);
    }

    #[test]
    fn weekly_and_monthly_buckets() {
        let now = DateTime::parse_from_rfc3339("2026-11-21T12:00:00Z").unwrap().with_timezone(&Utc);
        let snaps: Vec<Manifest> = (0..70).map(|d| snap(d, 3, "scheduled", now)).collect();
        let d = plan(&snaps, &policy(1, 0, 2, 3, 0), now);
        // newest; Sat 21 Nov (this ISO week) and Sun 15 Nov (last week); 21 Nov, 31 Oct, 30 Sep.
        assert_eq!(kept(&d), ["20261121T03", "20261115T03", "20261031T03", "20260930T03"]);
    }

    #[test]
    fn a_scoped_snapshot_counts_toward_nothing_but_its_pre_repair_days() {
        let now = DateTime::parse_from_rfc3339("2026-11-21T12:00:00Z").unwrap().with_timezone(&Utc);
        let scoped = |days, hour| {
            let mut m = snap(days, hour, PRE_REPAIR, now);
            m.scope = crate::snapshot::Scope::Tables(vec![]);
            m
        };
        let snaps =
            vec![snap(3, 3, "scheduled", now), snap(2, 3, "scheduled", now), scoped(1, 3), scoped(40, 3)];
        // keep_last 2: both scheduled ones, not the newer scoped one in their place; the scoped
        // one of yesterday stays for its pre-repair days, the one of 40 days ago goes.
        let d = plan(&snaps, &policy(2, 0, 0, 0, 30), now);
        assert_eq!(kept(&d), ["20261119T03", "20261118T03", "20261120T03"]);
        let old = d.iter().find(|d| d.id.starts_with("20261012")).unwrap();
        assert!(!old.keep, "{old:?}");
    }

    #[test]
    fn the_oldest_snapshot_with_the_newest_rows_is_kept() {
        let now = DateTime::parse_from_rfc3339("2026-11-21T12:00:00Z").unwrap().with_timezone(&Utc);
        let with_rows = |days, names: &[&str]| {
            let mut m = snap(days, 3, "scheduled", now);
            let rows = names.iter().map(|n| serde_json::json!({ "name": n })).collect();
            m.migrations = Some(crate::snapshot::MigrationRows {
                tool: "knex".into(),
                schema: "public".into(),
                table: "knex_migrations".into(),
                rows,
                logs_omitted: false,
            });
            m
        };
        // A deploy 6 days ago recorded b; a code migration c failed later and recorded nothing,
        // so every snapshot since has [a, b]: only the one of 6 days ago predates c's leftovers.
        let mut snaps = vec![with_rows(8, &["a"]), with_rows(7, &["a"])];
        snaps.extend((0..=6).map(|d| with_rows(d, &["a", "b"])));
        let d = plan(&snaps, &policy(2, 0, 0, 0, 0), now);
        assert_eq!(kept(&d), ["20261121T03", "20261120T03", "20261115T03"]);
        let why = &d.iter().find(|d| d.id.starts_with("20261115")).unwrap().reasons;
        assert_eq!(why, &["oldest with the newest's migration rows (diagnose's baseline)"]);
        // Without rows in the manifests nothing more is kept.
        let bare: Vec<Manifest> = (0..=6).map(|d| snap(d, 3, "scheduled", now)).collect();
        assert_eq!(kept(&plan(&bare, &policy(2, 0, 0, 0, 0), now)).len(), 2);
    }
}
