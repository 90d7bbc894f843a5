//! The operations kit: the Prometheus alert rules pass the real `promtool` (their unit tests
//! fire and stay quiet where they should), and every metric they use is one the daemon exports.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn promtool(args: &[&str]) -> (bool, String) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("promtool: scripts/test installs it (Debian's prometheus package)");
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn the_alert_rules_pass_promtools_check_and_their_unit_tests() {
    let (ok, out) = promtool(&["check", "rules", "alerts.yml"]);
    assert!(ok && out.contains("SUCCESS: 9 rules found"), "{out}");
    let (ok, out) = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(ok, "{out}");
}

#[test]
fn every_metric_the_alerts_use_is_exported() {
    let db = TestDb::new("opsmetrics");
    let tail =
        format!("\n[[databases]]\nname = \"app\"\nurl = \"{}\"\nschedule = \"0 0 * * * *\"\ndrill = \"0 0 5 * * 0\"\n", db.url());
    let pgm = Pgmedic::custom(Backend::Local, "metrics_listen = \"127.0.0.1:0\"\n", "", "", &tail);
    let daemon = Daemon::start(&pgm);
    let addr = daemon.status()["metrics_listen"].as_str().unwrap().to_string();
    // Prometheus asks for OpenMetrics; the rules must find their metrics there.
    let metrics = http_get_accept(&addr, "/metrics", "application/openmetrics-text;version=1.0.0");
    let rules =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yml"))
            .unwrap();
    let used: std::collections::BTreeSet<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("pgmedic_"))
        .collect();
    assert!(used.len() >= 7, "{used:?}");
    for name in used {
        // Declared (a counter's TYPE line names it without `_total`); a metric of what is not
        // set up here, such as a watcher's, is declared without samples.
        let family = name.strip_suffix("_total").unwrap_or(name);
        let declared = metrics.contains(&format!("# TYPE {family} "));
        let sampled =
            metrics.lines().any(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with(['{', ' '])));
        assert!(declared && (sampled || family == name), "{name} is not exported:\n{metrics}");
    }
    assert!(metrics.ends_with("# EOF\n"), "an OpenMetrics exposition ends with # EOF: {metrics}");
    // Any other client gets the classic text format, which the real promtool lints clean.
    let classic = http_get(&addr, "/metrics");
    let body = classic.split_once("\r\n\r\n").unwrap().1;
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(lint.stdin.as_mut().unwrap(), body.as_bytes()).unwrap();
    let lint = lint.wait_with_output().unwrap();
    assert!(
        lint.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    assert!(
        body.contains("# TYPE pgmedic_repairs_total counter\n")
            && body.contains("# TYPE pgmedic_build_info gauge\n"),
        "{body}"
    );
    assert!(metrics.contains("pgmedic_snapshot_schedule_period_seconds{database=\"app\"} 3600"), "{metrics}");
    assert!(
        metrics.contains("pgmedic_repairs_total{database=\"app\",outcome=\"interrupted\"} 0"),
        "{metrics}"
    );
}

#[test]
fn the_grafana_dashboard_queries_only_exported_metrics() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/pgmedic.json"))
            .unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_string())
        })
        .collect();
    assert!(exprs.len() >= 8, "{exprs:?}");
    let exported = [
        "pgmedic_snapshot_last_success_timestamp_seconds",
        "pgmedic_snapshot_schedule_period_seconds",
        "pgmedic_migrations_failed",
        "pgmedic_snapshot_last_duration_seconds",
        "pgmedic_snapshot_last_size_bytes",
        "pgmedic_snapshots_total",
        "pgmedic_snapshots_running",
        "pgmedic_snapshots_waiting",
        "pgmedic_snapshot_queue_depth",
        "pgmedic_repairs_total",
        "pgmedic_uptime_seconds",
        "pgmedic_config_last_reload_success",
        "pgmedic_build_info",
        "pgmedic_restore_drill_last_success_timestamp_seconds",
        "pgmedic_restore_drill_duration_seconds",
        "pgmedic_restore_drill_last_ok",
    ];
    for e in exprs.iter().chain(std::iter::once(&text)) {
        for w in
            e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("pgmedic_"))
        {
            assert!(exported.contains(&w), "{w} in the dashboard is not a metric pgmedic exports");
        }
    }
    // Each of those is really exported: the alerts test starts a daemon; here the list is checked
    // against the exporter's source, which names every metric once.
    let source =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/daemon/metrics.rs")).unwrap();
    for name in exported {
        // Counters and info metrics are declared without the suffix the encoder adds.
        let declared = name.strip_suffix("_total").or(name.strip_suffix("_info")).unwrap_or(name);
        assert!(source.contains(&format!("\"{declared}\"")), "{name}");
    }
}

#[test]
fn completions_and_the_man_page_come_from_the_cli_definition() {
    let bin = env!("CARGO_BIN_EXE_pgmedic");
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out =
            Command::new(bin).args(["completions", shell]).env_remove("PGMEDIC_CONFIG").output().unwrap();
        assert!(out.status.success(), "{shell}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        for sub in ["diagnose", "rehearse", "lint", "restore"] {
            assert!(text.contains(sub), "{shell} completion lacks {sub}");
        }
        if shell == "bash" {
            let file = dir.path().join("pgmedic.bash");
            std::fs::write(&file, &text).unwrap();
            assert!(Command::new("bash").arg("-n").arg(&file).status().unwrap().success(), "bash parses it");
        }
    }
    let man = Command::new(bin).arg("man").env_remove("PGMEDIC_CONFIG").output().unwrap();
    assert!(man.status.success());
    let roff = String::from_utf8(man.stdout).unwrap();
    assert!(
        roff.contains(".TH pgmedic 1") && roff.contains("rehearse") && roff.contains("diagnose"),
        "{roff}"
    );
}
