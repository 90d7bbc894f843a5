//! `GET /`: this installation's status page. An overview table (one row per database, linked
//! to its section), banners when what the daemon holds is stale, then per database: the
//! snapshot timeline (chart, then the newest entries), the migration state with the daemon's
//! diagnosis, invalid indexes, repair runs and restore drills (`detail`). Read-only: no form,
//! no button, no script.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::html::{self, anchor, push, when};
use super::{chart, detail, Attempt, DbView, SnapPoint, StatusView, REFRESH_SECONDS};
use crate::units::human_bytes;

/// Entries of the snapshot list shown under the chart (the chart has every snapshot).
pub const LIST_ROWS: usize = 5;
/// The snapshot list older than this is stale.
const LIST_STALE: i64 = 300;

pub fn render(v: &StatusView) -> String {
    let mut out = String::with_capacity(4096 + v.databases.len() * 3072);
    html::head(&mut out, &format!("pgmedic · {}", v.instance), REFRESH_SECONDS);
    header(&mut out, v);
    banners(&mut out, v);
    overview(&mut out, v);
    for db in &v.databases {
        section(&mut out, db, v.now);
    }
    out.push_str("<footer class=m><p>Read-only: this page changes nothing. Snapshots, repairs and drills are started with the <code>pgmedic</code> command or by the daemon's schedules.</p></footer></body></html>\n");
    out
}

fn header(out: &mut String, v: &StatusView) {
    out.push_str("<header><h1>pgmedic <small>");
    push(out, &v.instance);
    if v.host != v.instance {
        out.push_str(" on ");
        push(out, &v.host);
    }
    out.push_str("</small></h1><p class=m>version ");
    push(out, &v.version);
    out.push_str(" · up since ");
    when(out, v.started_at, v.now);
    out.push_str(" · this page ");
    when(out, v.now, v.now);
    let _ = write!(out, ", reloads every {REFRESH_SECONDS}s · <a href=/fleet>fleet</a></p><p class=m>Times are UTC. Timelines: a blue bar per snapshot (its size), the yellow line its duration, red a failed attempt.</p></header>");
}

/// Why what the page shows may be out of date.
pub fn stale_reasons(v: &StatusView) -> Vec<String> {
    let mut out = Vec::new();
    if v.draining {
        out.push(
            "the daemon is shutting down: nothing on this page will change until it starts again".into(),
        );
    }
    match (v.listed_at, &v.list_error) {
        (None, None) => out.push("the snapshot list has not been read from storage yet".into()),
        (None, Some(e)) => out.push(format!("the storage could not be listed ({e}): no snapshot is shown")),
        (Some(at), Some(e)) => out.push(format!(
            "the storage could not be listed ({e}): the snapshot list is from {}",
            html::time(at)
        )),
        (Some(at), None) if (v.now - at).num_seconds() > LIST_STALE => {
            out.push(format!("stale: the snapshot list was read {}", html::ago(at, v.now)))
        }
        _ => {}
    }
    for db in &v.databases {
        if let Some(m) = &db.migrations {
            let limit = 3 * m.interval.as_secs() as i64 + 30;
            if (v.now - m.checked_at).num_seconds() > limit {
                out.push(format!(
                    "stale: the migrations of {} were last read {} (the watcher reads every {})",
                    db.name,
                    html::ago(m.checked_at, v.now),
                    crate::units::span(m.interval.as_secs() as i64)
                ));
            }
        }
    }
    out
}

fn banners(out: &mut String, v: &StatusView) {
    for why in stale_reasons(v) {
        out.push_str("<p class=banner>");
        push(out, &why);
        out.push_str("</p>");
    }
}

fn overview(out: &mut String, v: &StatusView) {
    out.push_str("<div class=w><table><thead><tr><th>database<th>last snapshot<th>next run<th>migrations<th>invalid indexes<th>drill</thead><tbody>");
    for db in &v.databases {
        out.push_str("<tr><td><a href=\"#db-");
        out.push_str(&anchor(&db.name));
        out.push_str("\">");
        push(out, &db.name);
        out.push_str("</a>");
        cell(out, last_snapshot(db, v.now));
        match db.next_run {
            Some(t) => {
                out.push_str("<td>");
                html::age(out, t, v.now);
            }
            None => out.push_str("<td class=m>—"),
        }
        cell(out, detail::migration_state(db));
        cell(
            out,
            match db.invalid_indexes.as_deref() {
                None => ("m", "?".into()),
                Some(ix) => (if ix.is_empty() { "ok" } else { "bad" }, ix.len().to_string()),
            },
        );
        cell(out, detail::drill_state(db, v.now));
    }
    out.push_str("</tbody></table></div>");
}

/// A table cell of a class and its (already escaped) content.
fn cell(out: &mut String, (class, inner): (&str, String)) {
    let _ = write!(out, "<td class={class}>{inner}");
}

/// The newest snapshot, or the failure that came after it.
fn last_snapshot(db: &DbView, now: DateTime<Utc>) -> (&'static str, String) {
    let newest = db.snapshots.last();
    let failed = db.attempts.iter().rev().find(|a| a.is_failure());
    let mut t = String::new();
    if let Some(f) = failed.filter(|f| newest.is_none_or(|n| n.finished_at < f.at)) {
        t.push_str("failed ");
        html::age(&mut t, f.at, now);
        return ("bad", t);
    }
    match newest {
        Some(n) => {
            html::age(&mut t, n.finished_at, now);
            ("ok", t)
        }
        None => ("warn", "none".into()),
    }
}

fn section(out: &mut String, db: &DbView, now: DateTime<Utc>) {
    out.push_str("<section id=\"db-");
    out.push_str(&anchor(&db.name));
    out.push_str("\"><h2>");
    push(out, &db.name);
    out.push_str("</h2><p class=m>");
    match &db.schedule {
        Some(s) => {
            out.push_str("schedule <code>");
            push(out, s);
            out.push_str("</code>");
        }
        None => out.push_str("no schedule"),
    }
    if let Some(r) = &db.running {
        out.push_str(" · <b>");
        push(out, r);
        out.push_str("</b>");
    }
    out.push_str("</p>");
    timeline(out, db, now);
    detail::migrations(out, db, now);
    detail::indexes(out, db);
    detail::repairs(out, db, now);
    detail::drills(out, db, now);
    out.push_str("</section>");
}

fn timeline(out: &mut String, db: &DbView, now: DateTime<Utc>) {
    let snaps: &[SnapPoint] = &db.snapshots;
    out.push_str("<h3>Snapshots</h3>");
    if snaps.is_empty() && db.attempts.is_empty() {
        out.push_str("<p class=warn>No snapshot in storage.</p>");
        return;
    }
    let label = format!("{}: {} snapshots", db.name, snaps.len());
    chart::render(out, snaps, &db.attempts, &label);
    caption(out, snaps, &db.attempts);
    out.push_str("<div class=w><table><thead><tr><th>taken<th>size<th>took<th>outcome</thead><tbody>");
    let shown = rows(snaps, &db.attempts);
    for row in &shown {
        match row {
            Row::Snap(s) => snap_row(out, s, now),
            Row::Attempt(a) => attempt_row(out, a, now),
        }
    }
    out.push_str("</tbody></table></div>");
    let more = snaps.len() + db.attempts.len() - shown.len();
    out.push_str("<p class=m>");
    if more > 0 {
        let _ = write!(out, "and {more} older; ");
    }
    out.push_str("ids: <code>pgmedic snapshots --db ");
    push(out, &db.name);
    out.push_str("</code></p>");
}

fn caption(out: &mut String, snaps: &[SnapPoint], attempts: &[Attempt]) {
    let Some((from, to)) = chart::range(snaps, attempts) else { return };
    let biggest = snaps.iter().map(|s| s.stored_bytes).max().unwrap_or(0);
    let longest = snaps.iter().map(SnapPoint::duration_seconds).fold(0.0, f64::max);
    let _ = write!(
        out,
        "<p class=m>{} to {} · largest {} · longest {}",
        html::short_time(from),
        html::short_time(to),
        human_bytes(biggest),
        html::seconds(longest)
    );
    let failed = attempts.iter().filter(|a| a.is_failure()).count();
    if failed > 0 {
        let _ = write!(out, " · <span class=bad>{failed} failed</span>");
    }
    out.push_str("</p>");
}

enum Row<'a> {
    Snap(&'a SnapPoint),
    Attempt(&'a Attempt),
}

/// The newest `LIST_ROWS` snapshots and attempts, newest first.
fn rows<'a>(snaps: &'a [SnapPoint], attempts: &'a [Attempt]) -> Vec<Row<'a>> {
    let mut all: Vec<(DateTime<Utc>, Row<'a>)> =
        snaps.iter().rev().take(LIST_ROWS).map(|s| (s.taken_at, Row::Snap(s))).collect();
    all.extend(attempts.iter().rev().take(LIST_ROWS).map(|a| (a.at, Row::Attempt(a))));
    all.sort_by_key(|r| std::cmp::Reverse(r.0));
    all.into_iter().take(LIST_ROWS).map(|(_, r)| r).collect()
}

fn snap_row(out: &mut String, s: &SnapPoint, now: DateTime<Utc>) {
    out.push_str("<tr><td>");
    when(out, s.taken_at, now);
    let _ = write!(
        out,
        "<td>{}<td>{}<td class=ok>ok · ",
        human_bytes(s.stored_bytes),
        html::seconds(s.duration_seconds())
    );
    push(out, &s.reason);
    if !s.full {
        out.push_str(" (scoped)");
    }
}

fn attempt_row(out: &mut String, a: &Attempt, now: DateTime<Utc>) {
    out.push_str("<tr><td>");
    when(out, a.at, now);
    let class = if a.is_failure() { "bad" } else { "m" };
    let _ = write!(out, "<td>—<td>{}<td class={class}>", html::seconds(a.duration_seconds));
    push(out, &a.outcome);
    if let Some(e) = &a.error {
        out.push_str(": ");
        push(out, &crate::redact::redact(e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::MigrationsView;

    fn view(now: DateTime<Utc>) -> StatusView {
        StatusView {
            instance: "i".into(),
            host: "h".into(),
            version: "0".into(),
            now,
            started_at: now,
            listed_at: Some(now),
            list_error: None,
            draining: false,
            databases: vec![DbView { name: "app".into(), ..DbView::default() }],
        }
    }

    #[test]
    fn stale_data_is_said_and_fresh_data_is_not() {
        let now = Utc::now();
        let mut v = view(now);
        v.databases[0].migrations = Some(MigrationsView {
            state: "ok".into(),
            failed: vec![],
            checked_at: now - chrono::Duration::seconds(20),
            error: None,
            interval: std::time::Duration::from_secs(30),
        });
        assert!(stale_reasons(&v).is_empty(), "{:?}", stale_reasons(&v));
        v.databases[0].migrations.as_mut().unwrap().checked_at = now - chrono::Duration::seconds(300);
        v.listed_at = Some(now - chrono::Duration::seconds(600));
        v.draining = true;
        let why = stale_reasons(&v).join("\n");
        assert!(why.contains("shutting down") && why.contains("snapshot list was read 10m ago"), "{why}");
        assert!(
            why.contains("migrations of app were last read 5m ago (the watcher reads every 30s)"),
            "{why}"
        );
        v.list_error = Some("storage down".into());
        let page = render(&v);
        assert!(page.contains("<p class=banner>the storage could not be listed (storage down)"), "{page}");
    }

    #[test]
    fn a_failed_snapshot_is_shown_escaped_and_the_page_has_no_script() {
        let now = Utc::now();
        let mut v = view(now);
        let error = "pg_dump: <script>alert(1)</script> password=hunter2".to_string();
        v.databases[0].attempts.push(Attempt {
            at: now,
            outcome: "failure".into(),
            error: Some(error),
            duration_seconds: 1.0,
        });
        let page = render(&v);
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{page}");
        assert!(!page.contains("<script") && !page.contains("hunter2"), "{page}");
        assert!(page.contains("<td class=bad>failed 0s ago"), "{page}");
    }
}
