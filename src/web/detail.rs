//! The parts of a database's section below its timeline: the migration state with the
//! daemon's diagnosis of each failed migration (statements and verdicts, the stopping point,
//! the drafted playbooks), invalid indexes, repair runs from the audit trail with each step and
//! the SQL it ran, and the last restore drill. Texts are redacted again as they are written:
//! an audit line written by an older version must not bring a secret to the page.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::html::{self, push, when};
use super::{DbView, Diagnosis};
use crate::audit::{RunRecord, StepRecord};
use crate::diagnose::{Draft, Report};
use crate::redact::redact;

/// Captured output shown per repair step (the audit keeps it whole).
const OUTPUT_SHOWN: usize = 2000;

/// A serialisable enum's word (`not_applied`, `half_applied`).
fn word<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

fn pre(out: &mut String, text: &str) {
    out.push_str("<pre>");
    push(out, &redact(text));
    out.push_str("</pre>");
}

/// The migration state: a class and its (escaped) text.
pub fn migration_state(db: &DbView) -> (&'static str, String) {
    match &db.migrations {
        None => ("m", "not watched".into()),
        Some(m) if m.state == "ok" => ("ok", "ok".into()),
        Some(m) => {
            let mut t = html::escape(&m.state);
            for f in &m.failed {
                t.push(' ');
                push(&mut t, f);
            }
            ("bad", t)
        }
    }
}

/// The last drill: a class and its text.
pub fn drill_state(db: &DbView, now: DateTime<Utc>) -> (&'static str, String) {
    let mut t = String::new();
    match (&db.drill, db.drill_running) {
        (_, true) => ("m", "running".into()),
        (Some(d), _) => {
            t.push_str(if d.ok { "passed " } else { "failed " });
            html::age(&mut t, d.started_at, now);
            (if d.ok { "ok" } else { "bad" }, t)
        }
        (None, _) if db.drill_schedule.is_some() => ("m", "none yet".into()),
        (None, _) => ("m", "—".into()),
    }
}

fn span(out: &mut String, (class, inner): (&str, String)) {
    let _ = write!(out, "<span class={class}>{inner}</span>");
}

pub fn migrations(out: &mut String, db: &DbView, now: DateTime<Utc>) {
    // Not watched: the overview says so, and a page of fifty databases has no room to repeat it.
    let Some(m) = &db.migrations else { return };
    out.push_str("<h3>Migrations</h3><p>");
    span(out, migration_state(db));
    out.push_str(" <span class=m>· read ");
    when(out, m.checked_at, now);
    out.push_str("</span>");
    if let Some(e) = &m.error {
        out.push_str(" <span class=warn>");
        push(out, &redact(e));
        out.push_str("</span>");
    }
    out.push_str("</p>");
    for d in &db.diagnoses {
        diagnosis(out, d, now);
    }
}

fn diagnosis(out: &mut String, d: &Diagnosis, now: DateTime<Utc>) {
    match d {
        Diagnosis::Running { migration, since } => {
            out.push_str("<p class=m>diagnosing <b>");
            push(out, migration);
            out.push_str("</b> since ");
            when(out, *since, now);
            out.push_str("…</p>");
        }
        Diagnosis::Failed { migration, at, error } => {
            out.push_str("<p class=warn>the diagnosis of <b>");
            push(out, migration);
            out.push_str("</b> failed ");
            when(out, *at, now);
            out.push_str(": ");
            push(out, &redact(error));
            out.push_str("</p>");
        }
        Diagnosis::Done { at, report } => report_html(out, report, *at, now),
    }
}

fn report_html(out: &mut String, r: &Report, at: DateTime<Utc>, now: DateTime<Utc>) {
    out.push_str("<div class=diag><p><b class=bad>");
    push(out, &r.migration);
    out.push_str("</b> ");
    push(out, &word(&r.status));
    if let Some(t) = r.started_at {
        out.push_str(", started ");
        when(out, t, now);
    }
    out.push_str(" <span class=m>· diagnosed ");
    when(out, at, now);
    out.push_str("</span></p>");
    if let Some(log) = &r.log {
        let first: Vec<&str> = log.lines().take(6).collect();
        pre(out, &first.join("\n"));
    }
    if let Some(w) = &r.wait {
        out.push_str("<p class=warn>");
        push(out, w);
        out.push_str("</p>");
    }
    out.push_str("<p>");
    push(out, &stopping_point(r));
    out.push_str("</p>");
    if let Some(e) = &r.file_error {
        out.push_str("<p class=warn>");
        push(out, e);
        out.push_str("</p>");
    }
    statements(out, r);
    for t in &r.created_tables {
        out.push_str("<p class=m>created table <code>");
        push(out, &t.table);
        let _ = write!(out, "</code>: {} row(s)</p>", t.rows.map_or("?".to_string(), |n| n.to_string()));
    }
    draft(out, "finish", &r.playbooks.finish);
    draft(out, "undo", &r.playbooks.undo);
    out.push_str("</div>");
}

/// Where the migration stopped, and what says so.
pub fn stopping_point(r: &Report) -> String {
    let n = r.statements.len();
    let proof = match word(&r.proof).as_str() {
        "replay" => "proven by replaying its statements on the baseline",
        "catalog" => "judged by the catalog checks alone",
        _ => "no proof",
    };
    let at = match (r.stopped_after, r.stopped_range, r.failed_statement) {
        (Some(k), _, Some(f)) => format!("stopped after statement {k} of {n}; statement {f} failed"),
        (Some(k), _, None) => format!("stopped after statement {k} of {n}"),
        (None, Some([lo, hi]), _) => {
            format!("stopped after statement {lo} to {hi} of {n} (no visible trace tells which)")
        }
        (None, None, Some(f)) => format!("statement {f} of {n} failed"),
        (None, None, None) => format!("stopping point unknown ({n} statement(s))"),
    };
    format!("{at}: {proof}")
}

fn statements(out: &mut String, r: &Report) {
    if r.statements.is_empty() {
        return;
    }
    out.push_str("<div class=w><table><thead><tr><th>#<th>verdict<th>statement<th>why</thead><tbody>");
    for s in &r.statements {
        let v = word(&s.verdict);
        let class = match v.as_str() {
            "applied" => "ok",
            "not_applied" => "bad",
            _ => "warn",
        };
        let _ = write!(out, "<tr><td>{}<td class={class}>{}<td><code>", s.index, s.verdict.words());
        push(out, &s.sql);
        out.push_str("</code><td class=m>");
        push(out, &s.reason);
    }
    out.push_str("</tbody></table></div>");
}

fn draft(out: &mut String, kind: &str, d: &Draft) {
    let _ = write!(out, "<details><summary>drafted {kind} playbook");
    match (&d.toml, &d.why) {
        (Some(toml), _) => {
            out.push_str("</summary>");
            pre(out, toml);
            if let Some(sql) = d.script.as_ref().or(d.sql.as_ref()) {
                pre(out, sql);
            }
            for n in &d.notes {
                out.push_str("<p class=m>");
                push(out, n);
                out.push_str("</p>");
            }
        }
        (None, why) => {
            out.push_str(": cannot be drafted</summary><p class=m>");
            push(out, why.as_deref().unwrap_or(""));
            out.push_str("</p>");
        }
    }
    out.push_str("</details>");
}

pub fn indexes(out: &mut String, db: &DbView) {
    let Some(ix) = db.invalid_indexes.as_deref().filter(|i| !i.is_empty()) else { return };
    out.push_str("<h3>Invalid indexes</h3><div class=w><table><thead><tr><th>index<th>table<th>definition</thead><tbody>");
    for i in ix {
        out.push_str("<tr><td class=bad>");
        push(out, &format!("{}.{}", i.schema, i.index));
        out.push_str("<td>");
        push(out, &i.table);
        out.push_str("<td><code>");
        push(out, &i.definition);
        out.push_str("</code>");
    }
    out.push_str("</tbody></table></div><p class=m>A failed or killed index build left them: <code>DROP INDEX CONCURRENTLY</code> or <code>REINDEX INDEX CONCURRENTLY</code>.</p>");
}

pub fn repairs(out: &mut String, db: &DbView, now: DateTime<Utc>) {
    if db.repairs.is_empty() {
        return;
    }
    out.push_str("<h3>Repairs</h3>");
    for (i, run) in db.repairs.iter().enumerate() {
        repair(out, run, i == 0, now);
    }
    if db.repairs_more > 0 {
        let _ = write!(out, "<p class=m>and {} older: <code>pgmedic audit --db ", db.repairs_more);
        push(out, &db.name);
        out.push_str("</code></p>");
    }
}

fn repair(out: &mut String, run: &RunRecord, open: bool, now: DateTime<Utc>) {
    out.push_str(if open { "<details open><summary>" } else { "<details><summary>" });
    when(out, run.started_at, now);
    out.push_str(" · ");
    push(out, run.playbook.as_deref().unwrap_or("no playbook"));
    if let Some(m) = &run.migration {
        out.push_str(" for ");
        push(out, m);
    }
    let class = match run.outcome.as_str() {
        "succeeded" | "noop" => "ok",
        "dry_run" | "started" | "running" => "m",
        _ => "bad",
    };
    let _ = write!(out, " · <span class={class}>{}</span>", html::escape(&run.outcome));
    if run.dry_run {
        out.push_str(" (dry run)");
    }
    out.push_str("</summary><p class=m>run ");
    push(out, &run.run_id);
    out.push_str(" · trigger ");
    push(out, &run.trigger);
    out.push_str(" · pre-repair snapshot ");
    push(out, run.snapshot_id.as_deref().unwrap_or("none"));
    out.push_str("</p>");
    if let Some(e) = &run.error {
        out.push_str("<p class=bad>");
        push(out, &redact(e));
        out.push_str("</p>");
    }
    out.push_str("<ol>");
    for s in &run.steps {
        step(out, s);
    }
    out.push_str("</ol></details>");
}

fn step(out: &mut String, s: &StepRecord) {
    let class = match s.outcome.as_str() {
        "ok" => "ok",
        "failed" => "bad",
        _ => "m",
    };
    out.push_str("<li><b>");
    push(out, &s.kind);
    let _ = write!(out, "</b> <span class={class}>{}</span>", html::escape(&s.outcome));
    let p = &s.params;
    let text = |k: &str| p.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let shown = text("sql").or_else(|| text("assert_sql")).or_else(|| {
        p.get("command")
            .and_then(|c| c.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(" "))
    });
    match (shown, text("sql_file"), text("resolve")) {
        (Some(sql), _, _) => pre(out, &sql),
        (None, Some(file), _) => {
            out.push_str(" <code>");
            push(out, &file);
            out.push_str("</code>");
        }
        (None, None, Some(how)) => {
            out.push_str(" as ");
            push(out, &how);
        }
        _ => {}
    }
    if !s.output.trim().is_empty() {
        let cut: String = s.output.chars().take(OUTPUT_SHOWN).collect();
        pre(out, &cut);
    }
    if let Some(e) = &s.error {
        out.push_str("<p class=bad>");
        push(out, &redact(e));
        out.push_str("</p>");
    }
}

pub fn drills(out: &mut String, db: &DbView, now: DateTime<Utc>) {
    if db.drill.is_none() && db.drill_schedule.is_none() && !db.drill_running {
        return;
    }
    out.push_str("<h3>Restore drills</h3><p>");
    if let Some(s) = &db.drill_schedule {
        out.push_str("<span class=m>schedule <code>");
        push(out, s);
        out.push_str("</code>");
        if let Some(t) = db.drill_next {
            out.push_str(", next ");
            when(out, t, now);
        }
        out.push_str("</span> ");
    }
    if db.drill_running {
        out.push_str("<b>a drill is running</b> ");
    }
    let Some(d) = &db.drill else {
        out.push_str("no drill yet</p>");
        return;
    };
    span(out, drill_state(db, now));
    let _ = write!(
        out,
        " on snapshot <code>{}</code>: {} table(s), {} row(s) as dumped, took {}",
        html::escape(d.snapshot_id.as_deref().unwrap_or("-")),
        d.tables,
        d.rows,
        html::seconds(d.duration_seconds)
    );
    if let Some(s) = &d.scratch_server {
        out.push_str(" on the ");
        push(out, s);
        out.push_str(" scratch server");
    }
    out.push_str("</p>");
    if let Some(e) = &d.error {
        out.push_str("<p class=bad>");
        push(out, &redact(e));
        out.push_str("</p>");
    }
}
