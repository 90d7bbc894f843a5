//! Restore drills: each snapshot's manifest records its tables' rows as pg_dump streamed them
//! (awkward values, empty tables, partitions, inheritance, large objects, PostgreSQL 15 and 18);
//! `pgmedic drill` restores the newest snapshot on the ephemeral scratch server and compares
//! (local and S3); a damaged object or a table missing from the copy fails it; the daemon drills
//! on its schedule, exports the outcome as metrics and sends `drill_failed`.

mod common;

use std::time::Duration;

use common::cluster::Cluster;
use common::*;

const DATA: &str = r#"
CREATE TABLE plain (id int, note text);
INSERT INTO plain SELECT g, CASE WHEN g % 3 = 0 THEN E'line\none\ttab \\ back' ELSE 'x' END FROM generate_series(1, 1500) g;
CREATE TABLE empty (id int);
CREATE SCHEMA "Odd Schema";
CREATE TABLE "Odd Schema"."we.ird" (v text);
INSERT INTO "Odd Schema"."we.ird" VALUES (E'\\.'), (E'a\nb'), ('');
CREATE TABLE parted (id int) PARTITION BY RANGE (id);
CREATE TABLE parted_lo PARTITION OF parted FOR VALUES FROM (0) TO (100);
CREATE TABLE parted_hi PARTITION OF parted FOR VALUES FROM (100) TO (1000);
INSERT INTO parted SELECT generate_series(0, 299);
CREATE TABLE parent (id int);
CREATE TABLE child () INHERITS (parent);
INSERT INTO parent VALUES (1), (2);
INSERT INTO child VALUES (3);
SELECT lo_from_bytea(0, repeat('blob ', 100000)::bytea);
CREATE MATERIALIZED VIEW mv AS SELECT * FROM plain;
"#;

/// The manifest's `tables` as `schema.table=rows`, sorted.
fn recorded(m: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = m["tables"]
        .as_array()
        .unwrap_or_else(|| panic!("the manifest records row counts: {m:#}"))
        .iter()
        .map(|t| format!("{}.{}={}", t["schema"].as_str().unwrap(), t["table"].as_str().unwrap(), t["rows"]))
        .collect();
    out.sort();
    out
}

const EXPECTED: [&str; 8] = [
    "Odd Schema.we.ird=3",
    "public.child=1",
    "public.empty=0",
    "public.parent=2",
    "public.parted_hi=200",
    "public.parted_lo=100",
    "public.plain=1500",
    "public.mv=1500",
];

fn expected() -> Vec<String> {
    // A materialized view's rows are not table data: pg_dump refreshes it on restore.
    let mut e: Vec<String> =
        EXPECTED.iter().filter(|t| !t.starts_with("public.mv")).map(|t| t.to_string()).collect();
    e.sort();
    e
}

#[test]
fn the_manifest_records_every_tables_rows_as_dumped_on_15_and_18() {
    let db = TestDb::new("drows");
    db.sql(DATA);
    let pgm = Pgmedic::new(Backend::Local, &[("app", &db.url())], "", "");
    assert_eq!(recorded(&pgm.snapshot("app")), expected());

    let pg18 = Cluster::pg18();
    pg18.sql("postgres", "CREATE DATABASE app");
    pg18.sql("app", DATA);
    let tail = format!(
        "\n[[databases]]\nname = \"app\"\nurl = \"{}\"\npg_bin_dir = \"{}\"\n",
        pg18.url("app"),
        pg18.bin.display()
    );
    let pgm = Pgmedic::custom(Backend::Local, "", "", "", &tail);
    let m = pgm.snapshot("app");
    assert!(m["pg_dump_version"].as_str().unwrap().contains(") 18."), "{m:#}");
    assert_eq!(recorded(&m), expected(), "archive version 1.16");
}

fn manifest_path(pgm: &Pgmedic, id: &str) -> std::path::PathBuf {
    pgm.snapshots_dir().join("app").join(id).join("manifest.json")
}

#[test]
fn a_drill_passes_then_fails_on_a_missing_table_and_on_a_damaged_object() {
    let db = TestDb::new("dlocal");
    db.sql(DATA);
    let pgm = Pgmedic::new(Backend::Local, &[("app", &db.url())], "", "");
    let id = pgm.snapshot("app")["id"].as_str().unwrap().to_string();
    let run = pgm.run(&["drill", "--db", "app", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let r = run.json();
    assert_eq!((r["ok"].as_bool(), r["snapshot_id"].as_str()), (Some(true), Some(id.as_str())), "{r:#}");
    assert_eq!(
        (r["scratch_server"].as_str(), r["tables"].as_u64(), r["rows"].as_u64()),
        (Some("ephemeral"), Some(7), Some(1806)),
        "{r:#}"
    );
    let deep = pgm.run(&["verify", &id, "--deep", "--json"]);
    assert_eq!(deep.code, 0, "{}", deep.stderr);
    assert_eq!(
        deep.json()["deep"]["rows"]["mismatches"],
        serde_json::json!([]),
        "verify --deep compares too"
    );

    // The manifest says a table was dumped that the copy lacks, and another held more rows.
    let path = manifest_path(&pgm, &id);
    let original = std::fs::read_to_string(&path).unwrap();
    let mut m: serde_json::Value = serde_json::from_str(&original).unwrap();
    m["tables"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"schema": "public", "table": "ghost", "rows": 3}));
    for t in m["tables"].as_array_mut().unwrap() {
        if t["table"] == "plain" {
            t["rows"] = serde_json::json!(1501);
        }
    }
    std::fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();
    let run = pgm.run(&["drill", "--db", "app", "--json"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("public.ghost: missing from the restored copy (3 rows dumped)"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("public.plain: 1501 rows dumped, 1500 restored"), "{}", run.stderr);
    let deep = pgm.run(&["verify", &id, "--deep"]);
    assert_eq!(deep.code, 1, "verify --deep fails the same comparison: {}", deep.stdout);
    assert!(deep.stderr.contains("public.ghost: missing"), "{}", deep.stderr);
    std::fs::write(&path, original).unwrap();

    // One flipped byte in the stored object.
    let object = pgm.snapshots_dir().join("app").join(&id).join("dump.zst");
    let mut bytes = std::fs::read(&object).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    std::fs::write(&object, bytes).unwrap();
    let run = pgm.run(&["drill", "--db", "app", "--json"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.json()["ok"], false);
    assert!(run.stderr.contains("does not match its manifest"), "{}", run.stderr);
}

#[test]
fn a_drill_passes_on_s3() {
    let db = TestDb::new("ds3");
    db.sql(DATA);
    let s3 = S3Server::start();
    let tail = format!("\n[[databases]]\nname = \"app\"\nurl = \"{}\"\n", db.url());
    let pgm = Pgmedic::custom(Backend::S3(&s3), "", "", "", &tail);
    pgm.snapshot("app");
    let run = pgm.run(&["drill", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!((run.json()["ok"].as_bool(), run.json()["tables"].as_u64()), (Some(true), Some(7)));
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}{{database=\"app\"}} ")))
        .map(|v| v.trim().parse().unwrap())
}

#[test]
fn the_daemon_drills_on_schedule_exports_the_outcome_and_announces_a_failure() {
    let db = TestDb::new("ddaemon");
    db.sql("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 10)");
    let (hook, received) = webhook("/drill");
    let tail = format!(
        "\n[[databases]]\nname = \"app\"\nurl = \"{}\"\ndrill = \"*/1 * * * * *\"\n\n[[notify]]\nwebhook = \"{hook}\"\n",
        db.url()
    );
    let pgm = Pgmedic::custom(Backend::Local, "metrics_listen = \"127.0.0.1:0\"\n", "", "", &tail);
    let id = pgm.snapshot("app")["id"].as_str().unwrap().to_string();
    let daemon = Daemon::start(&pgm);
    let addr = daemon.status()["metrics_listen"].as_str().unwrap().to_string();
    assert_eq!(daemon.status()["databases"]["app"]["drill_schedule"], "*/1 * * * * *");
    wait_for("a scheduled drill to pass", Duration::from_secs(60), || {
        daemon.status()["databases"]["app"]["last_drill"]["ok"] == true
    });
    let metrics = http_get(&addr, "/metrics");
    let passed =
        metric(&metrics, "pgmedic_restore_drill_last_success_timestamp_seconds").expect("set by the drill");
    assert!(metric(&metrics, "pgmedic_restore_drill_duration_seconds").unwrap() > 0.0, "{metrics}");
    assert_eq!(metric(&metrics, "pgmedic_restore_drill_last_ok"), Some(1.0));

    let object = pgm.snapshots_dir().join("app").join(&id).join("dump.zst");
    let mut bytes = std::fs::read(&object).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    std::fs::write(&object, bytes).unwrap();
    let event = received.join().unwrap();
    assert!(event.contains("\"event\":\"drill_failed\"") && event.contains(&id), "{event}");
    let status = daemon.status();
    let last = &status["databases"]["app"]["last_drill"];
    assert_eq!(last["ok"], false, "{status:#}");
    let metrics = http_get(&addr, "/metrics");
    assert_eq!(metric(&metrics, "pgmedic_restore_drill_last_ok"), Some(0.0), "{metrics}");
    let still = metric(&metrics, "pgmedic_restore_drill_last_success_timestamp_seconds").unwrap();
    assert_eq!(still, passed, "a failed drill leaves the last success where it was");
}
