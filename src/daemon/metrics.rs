//! What `/metrics` says: every metric the daemon exports, read from the board and the gate at
//! scrape time. A scraper that accepts OpenMetrics (Prometheus does) gets it from
//! `prometheus-client`; any other client (curl, `promtool check metrics`, agents that speak only
//! the classic format) gets the Prometheus text format 0.0.4, which prometheus-client does not
//! write: that short encoder stays here. The values live in the daemon's own state, so one
//! collector builds the families per scrape instead of keeping a second copy in metric objects.

use std::collections::BTreeMap;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::board::DbStatus;
use super::Shared;

type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Clone, Copy)]
enum Num {
    Int(u64),
    Float(f64),
}

/// One metric family: a counter's name is given without `_total`, which the encoder adds.
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    rows: Vec<(Labels, Num)>,
}

#[derive(Debug)]
struct Scrape(Vec<Family>);

/// The daemon's state now: OpenMetrics when `openmetrics`, else the classic text format.
pub fn render(shared: &Shared, openmetrics: bool) -> String {
    let families = families(shared);
    if !openmetrics {
        return classic(&families);
    }
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(families)));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String");
    out
}

/// The Prometheus text format 0.0.4: a counter's family is named with its `_total`, an info
/// metric is a gauge named with its `_info`, and there is no `# EOF`.
fn classic(families: &[Family]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for f in families {
        let (name, kind) = match f.kind {
            MetricType::Counter => (format!("{}_total", f.name), "counter"),
            MetricType::Info => (format!("{}_info", f.name), "gauge"),
            _ => (f.name.to_string(), "gauge"),
        };
        let help = f.help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in &f.rows {
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
            let labels = if labels.is_empty() { String::new() } else { format!("{{{}}}", labels.join(",")) };
            let value = match value {
                Num::Int(n) => n.to_string(),
                Num::Float(x) => x.to_string(),
            };
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    }
    out
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            let mut metric = encoder.encode_descriptor(f.name, f.help, None, f.kind)?;
            for (labels, value) in &f.rows {
                match f.kind {
                    // An info metric's labels are its value: `pgmedic_build_info{version=…} 1`.
                    MetricType::Info => metric.encode_info(labels)?,
                    // No labels: `name 1`, not `name{} 1`.
                    _ if labels.is_empty() => sample(&mut metric, &f.kind, *value)?,
                    _ => sample(&mut metric.encode_family(labels)?, &f.kind, *value)?,
                }
            }
        }
        Ok(())
    }
}

fn sample(m: &mut MetricEncoder, kind: &MetricType, value: Num) -> Result<(), std::fmt::Error> {
    match (kind, value) {
        (MetricType::Counter, Num::Int(n)) => m.encode_counter::<NoLabelSet, _, f64>(&n, None),
        (MetricType::Counter, Num::Float(x)) => m.encode_counter::<NoLabelSet, _, f64>(&x, None),
        (_, Num::Int(n)) => m.encode_gauge(&(n as i64)),
        (_, Num::Float(x)) => m.encode_gauge(&x),
    }
}

fn family(name: &'static str, kind: MetricType, help: &'static str, rows: Vec<(Labels, Num)>) -> Family {
    Family { name, help, kind, rows }
}

fn db(name: &str) -> Labels {
    vec![("database", name.to_string())]
}

fn seconds(t: chrono::DateTime<chrono::Utc>) -> Num {
    Num::Float(t.timestamp_millis() as f64 / 1000.0)
}

/// The daemon-wide families, then the per-database ones.
fn families(shared: &Shared) -> Vec<Family> {
    let uptime = (chrono::Utc::now() - shared.started_at).num_milliseconds() as f64 / 1000.0;
    let (running, waiting, limit) = shared.gate.counts();
    let mut out = vec![
        Family {
            name: "pgmedic_build",
            help: "pgmedic's version.",
            kind: MetricType::Info,
            rows: vec![(vec![("version", env!("CARGO_PKG_VERSION").to_string())], Num::Int(1))],
        },
        family(
            "pgmedic_uptime_seconds",
            MetricType::Gauge,
            "Seconds since the daemon started.",
            vec![(vec![], Num::Float(uptime))],
        ),
        family(
            "pgmedic_config_last_reload_success",
            MetricType::Gauge,
            "1 when the last reload (or start) loaded the configuration.",
            vec![(vec![], Num::Int(shared.reload_status().ok as u64))],
        ),
        family(
            "pgmedic_snapshots_running",
            MetricType::Gauge,
            "Snapshots running now, across databases (at most snapshot.max_concurrent).",
            vec![(vec![], Num::Int(running as u64))],
        ),
        family(
            "pgmedic_snapshots_waiting",
            MetricType::Gauge,
            "Snapshots waiting for a slot under snapshot.max_concurrent.",
            vec![(vec![], Num::Int(waiting as u64))],
        ),
        family(
            "pgmedic_snapshots_max_concurrent",
            MetricType::Gauge,
            "snapshot.max_concurrent.",
            vec![(vec![], Num::Int(limit as u64))],
        ),
    ];
    out.extend(per_database(&shared.board.get()));
    out.push(schedule_periods(shared));
    out.push(drills_scheduled(shared));
    out
}

/// 1 for each database with a drill schedule: the alert on missing drills needs to know which.
fn drills_scheduled(shared: &Shared) -> Family {
    let rows = shared
        .current()
        .config
        .databases
        .iter()
        .filter(|d| d.drill.is_some())
        .map(|d| (db(&d.name), Num::Int(1)))
        .collect();
    family(
        "pgmedic_restore_drill_scheduled",
        MetricType::Gauge,
        "1 when the database has a restore drill schedule.",
        rows,
    )
}

fn per_database(board: &BTreeMap<String, DbStatus>) -> Vec<Family> {
    let rows = |f: &dyn Fn(&DbStatus) -> Option<Num>| -> Vec<(Labels, Num)> {
        board.iter().filter_map(|(name, s)| f(s).map(|v| (db(name), v))).collect()
    };
    let outcomes = board.iter().flat_map(|(name, s)| {
        [
            ("success", s.snapshots_success_total),
            ("failure", s.snapshots_failure_total),
            ("skipped", s.snapshots_skipped_total),
        ]
        .map(|(o, n)| (vec![("database", name.clone()), ("outcome", o.to_string())], Num::Int(n)))
    });
    vec![
        family(
            "pgmedic_snapshot_last_success_timestamp_seconds",
            MetricType::Gauge,
            "When the last successful snapshot finished.",
            rows(&|s| s.last_success_at.map(seconds)),
        ),
        family(
            "pgmedic_snapshot_last_duration_seconds",
            MetricType::Gauge,
            "Duration of the last snapshot, successful or not.",
            rows(&|s| s.last_snapshot.as_ref().map(|l| Num::Float(l.duration_seconds))),
        ),
        family(
            "pgmedic_snapshot_last_size_bytes",
            MetricType::Gauge,
            "Stored size of the last successful snapshot.",
            rows(&|s| s.last_snapshot.as_ref().and_then(|l| l.stored_bytes).map(Num::Int)),
        ),
        family(
            "pgmedic_snapshots",
            MetricType::Counter,
            "Snapshots finished, by outcome.",
            outcomes.collect(),
        ),
        family(
            "pgmedic_snapshot_triggers_coalesced",
            MetricType::Counter,
            "Triggers that joined a snapshot already queued or running.",
            rows(&|s| Some(Num::Int(s.coalesced_total))),
        ),
        family(
            "pgmedic_snapshot_queue_depth",
            MetricType::Gauge,
            "Snapshots waiting for the database's worker.",
            rows(&|s| Some(Num::Int(u64::from(s.queued)))),
        ),
        family(
            "pgmedic_migrations_failed",
            MetricType::Gauge,
            "Failed migrations seen by the watcher (0 when healthy).",
            rows(&|s| s.migrations.as_ref().map(|m| Num::Int(m.failed.len() as u64))),
        ),
        family(
            "pgmedic_repairs",
            MetricType::Counter,
            "Repair runs finished, by outcome (interrupted: closed at the next start).",
            repairs(board),
        ),
        family(
            "pgmedic_invalid_indexes",
            MetricType::Gauge,
            "Invalid indexes (indisvalid = false) that no index build is working on.",
            rows(&|s| s.invalid_indexes.as_ref().map(|v| Num::Int(v.len() as u64))),
        ),
        family(
            "pgmedic_restore_drill_last_success_timestamp_seconds",
            MetricType::Gauge,
            "When the last successful restore drill finished.",
            rows(&|s| s.last_drill_success_at.map(seconds)),
        ),
        family(
            "pgmedic_restore_drill_duration_seconds",
            MetricType::Gauge,
            "How long the last successful restore drill took.",
            rows(&|s| s.last_drill_success_seconds.map(Num::Float)),
        ),
        family(
            "pgmedic_restore_drill_last_ok",
            MetricType::Gauge,
            "1 when the last restore drill passed, 0 when it failed.",
            rows(&|s| s.last_drill.as_ref().map(|d| Num::Int(d.ok as u64))),
        ),
        family(
            "pgmedic_snapshot_running",
            MetricType::Gauge,
            "1 while a snapshot of the database runs.",
            rows(&|s| Some(Num::Int(s.running.is_some() as u64))),
        ),
    ]
}

/// The outcomes alerts watch exist from the start at 0: increase() sees their first run.
fn repairs(board: &BTreeMap<String, DbStatus>) -> Vec<(Labels, Num)> {
    let mut rows = Vec::new();
    for (name, s) in board {
        let mut counts = s.repairs_total.clone();
        for o in ["succeeded", "failed", "refused", "snapshot_failed", "interrupted"] {
            counts.entry(o.to_string()).or_default();
        }
        rows.extend(
            counts.into_iter().map(|(o, n)| (vec![("database", name.clone()), ("outcome", o)], Num::Int(n))),
        );
    }
    rows
}

fn schedule_periods(shared: &Shared) -> Family {
    let now = chrono::Utc::now();
    let rows = shared
        .current()
        .config
        .databases
        .iter()
        .filter_map(|d| {
            let period = d.schedule.as_ref()?.period_after(now)?;
            Some((db(&d.name), Num::Int(period.num_seconds().max(0) as u64)))
        })
        .collect();
    family(
        "pgmedic_snapshot_schedule_period_seconds",
        MetricType::Gauge,
        "Seconds between two scheduled snapshots (for staleness alerts).",
        rows,
    )
}
