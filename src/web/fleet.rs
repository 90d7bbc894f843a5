//! `GET /fleet`: every installation sharing this storage, from their heartbeats (see `fleet`):
//! one row per host, up or down and why, then each host's databases with their last snapshot,
//! migration state, last repair and last drill.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::html::{self, anchor, push, when};
use super::REFRESH_SECONDS;
use crate::fleet::{DbBeat, Host};
use crate::units::human_bytes;

/// What the fleet page shows.
pub struct FleetView<'a> {
    /// This installation, to mark its own row.
    pub instance: &'a str,
    pub location: &'a str,
    pub now: DateTime<Utc>,
    /// The heartbeats, or why they could not be listed.
    pub hosts: Result<&'a [Host], String>,
}

pub fn render(v: &FleetView) -> String {
    let mut out = String::with_capacity(8192);
    html::head(&mut out, "pgmedic fleet", REFRESH_SECONDS);
    out.push_str("<header><h1>pgmedic <small>fleet</small></h1><p class=m>every installation whose daemon writes its heartbeat to ");
    push(&mut out, v.location);
    out.push_str(" · this page ");
    when(&mut out, v.now, v.now);
    let _ = write!(out, ", reloads every {REFRESH_SECONDS}s · <a href=/>this installation</a></p></header>");
    let hosts = match &v.hosts {
        Ok(h) => *h,
        Err(e) => {
            out.push_str("<p class=banner>");
            push(&mut out, e);
            out.push_str("</p></body></html>\n");
            return out;
        }
    };
    if hosts.is_empty() {
        out.push_str(
            "<p class=banner>No heartbeat under the storage's <code>_pgmedic/hosts/</code> yet.</p>",
        );
    }
    overview(&mut out, hosts, v);
    for h in hosts {
        host(&mut out, h, v.now);
    }
    out.push_str("</body></html>\n");
    out
}

fn state(out: &mut String, h: &Host) {
    let class = if h.is_up() { "ok" } else { "bad" };
    let _ = write!(out, "<span class={class}>{}</span>", h.state);
}

fn overview(out: &mut String, hosts: &[Host], v: &FleetView) {
    out.push_str("<div class=w><table><thead><tr><th>instance<th>state<th>host<th>last heartbeat<th>version<th>databases<th>needs attention</thead><tbody>");
    for h in hosts {
        out.push_str("<tr><td><a href=\"#host-");
        out.push_str(&anchor(&h.instance));
        out.push_str("\">");
        push(out, &h.instance);
        out.push_str("</a>");
        if h.instance == v.instance {
            out.push_str(" <small>(this one)</small>");
        }
        out.push_str("<td>");
        state(out, h);
        let Some(b) = &h.heartbeat else {
            out.push_str("<td colspan=5 class=m>");
            push(out, h.why.as_deref().unwrap_or(""));
            continue;
        };
        out.push_str("<td>");
        push(out, &b.host);
        out.push_str("<td>");
        when(out, b.written_at, v.now);
        out.push_str(" <small>");
        push(out, &html::ago(b.written_at, v.now));
        out.push_str("</small><td>");
        push(out, &b.version);
        let _ = write!(out, "<td>{}<td>", b.databases.len());
        let trouble = crate::fleet::trouble(b);
        if trouble.is_empty() {
            out.push_str("<span class=ok>nothing</span>");
        }
        for (i, t) in trouble.iter().enumerate() {
            out.push_str(if i == 0 { "<span class=bad>" } else { "<br><span class=bad>" });
            push(out, t);
            out.push_str("</span>");
        }
    }
    out.push_str("</tbody></table></div>");
}

fn host(out: &mut String, h: &Host, now: DateTime<Utc>) {
    out.push_str("<section id=\"host-");
    out.push_str(&anchor(&h.instance));
    out.push_str("\"><h2>");
    push(out, &h.instance);
    out.push(' ');
    state(out, h);
    out.push_str("</h2>");
    if let Some(why) = &h.why {
        out.push_str("<p class=warn>");
        push(out, why);
        out.push_str("</p>");
    }
    let Some(b) = &h.heartbeat else {
        out.push_str("</section>");
        return;
    };
    out.push_str("<p class=m>");
    push(out, &b.host);
    let _ = write!(out, " · pid {} · up since ", b.pid);
    when(out, b.started_at, now);
    let _ = write!(out, " · heartbeat every {}s</p>", b.interval_seconds);
    out.push_str("<div class=w><table><thead><tr><th>database<th>last snapshot<th>next run<th>migrations<th>invalid indexes<th>last repair<th>last drill</thead><tbody>");
    for (name, db) in &b.databases {
        out.push_str("<tr><td>");
        push(out, name);
        database(out, db, now);
    }
    out.push_str("</tbody></table></div></section>");
}

fn database(out: &mut String, db: &DbBeat, now: DateTime<Utc>) {
    out.push_str("<td>");
    match &db.last_snapshot {
        Some(s) => {
            when(out, s.finished_at, now);
            let _ = write!(out, " <span class=m>{}</span>", human_bytes(s.stored_bytes));
        }
        None => out.push_str("<span class=warn>none</span>"),
    }
    if let Some(f) = db.last_failure.as_ref().filter(|f| f.outcome == "failure") {
        if db.last_snapshot.as_ref().is_none_or(|s| s.finished_at < f.at) {
            out.push_str("<br><span class=bad>failed</span> ");
            when(out, f.at, now);
        }
    }
    out.push_str("<td>");
    if let Some(t) = db.next_run {
        when(out, t, now);
    }
    out.push_str("<td>");
    match &db.migrations {
        None => out.push_str("<span class=m>not watched</span>"),
        Some(m) => {
            let class = if m.state == "ok" { "ok" } else { "bad" };
            let _ = write!(out, "<span class={class}>{}</span>", html::escape(&m.state));
            for f in &m.failed {
                out.push(' ');
                push(out, f);
            }
        }
    }
    let class = if db.invalid_indexes > 0 { "bad" } else { "ok" };
    let _ = write!(out, "<td class={class}>{}<td>", db.invalid_indexes);
    if let Some(r) = &db.last_repair {
        push(out, &r.outcome);
        if let Some(t) = r.at {
            out.push(' ');
            when(out, t, now);
        }
    }
    out.push_str("<td>");
    if let Some(d) = &db.last_drill {
        out.push_str(if d.ok { "<span class=ok>passed</span> " } else { "<span class=bad>failed</span> " });
        when(out, d.at, now);
    }
}
