//! An HA pair, as operators run one: a primary and its streaming standby (`pg_basebackup -R`),
//! both on this machine, a pgmedic daemon beside each pointed at its own server, one shared
//! storage. Only the primary's daemon snapshots and repairs; after the primary is stopped and the
//! standby promoted, the other daemon takes over at its next due run. Every scheduled run is
//! taken once, by one of them: storage is the shared truth.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::cluster::Cluster;
use common::prisma::{fixture, FAILED};
use common::*;

const MINUTE: Duration = Duration::from_secs(60);
/// Every 5 seconds: a run a small snapshot finishes well within, even on a loaded machine.
const EVERY: &str = "*/5 * * * * *";

fn config(pgm: &Pgmedic, instance: &str, url: &str, storage: &std::path::Path) -> String {
    let tail = format!(
        "\n[[databases]]\nname = \"app\"\nurl = \"{url}\"\nschedule = \"{EVERY}\"\n[databases.migrations]\ndir = \"{}\"\non_failure = \"repair\"\nwatch_interval = \"1s\"\n\
         \n[[playbooks]]\nname = \"back\"\nsteps = [ {{ resolve = \"rolled-back\" }} ]\n",
        fixture("migrations").display()
    );
    pgm.render(Backend::Local, &format!("instance = \"{instance}\"\n"), "", "", &tail).replace(
        &format!("path = \"{}\"", pgm.snapshots_dir().display()),
        &format!("path = \"{}\"", storage.display()),
    )
}

/// Scheduled snapshots in the shared storage: slot → the instances that took it.
fn slots(pgm: &Pgmedic) -> BTreeMap<DateTime<Utc>, Vec<String>> {
    let mut out: BTreeMap<DateTime<Utc>, Vec<String>> = BTreeMap::new();
    for m in pgm.run(&["snapshots", "--json"]).json().as_array().unwrap() {
        if let Some(slot) = m["slot"].as_str() {
            out.entry(slot.parse().unwrap())
                .or_default()
                .push(m["instance"].as_str().unwrap_or("?").to_string());
        }
    }
    out
}

fn taken_by(pgm: &Pgmedic, who: &str, after: DateTime<Utc>) -> usize {
    slots(pgm).iter().filter(|(t, by)| **t > after && by.iter().any(|b| b == who)).count()
}

#[test]
fn an_ha_pair_snapshots_and_repairs_once_and_the_standby_takes_over_after_promotion() {
    let primary = Cluster::pg15();
    primary.sql("postgres", "CREATE DATABASE app");
    primary.sql_file("app", &fixture("database.sql"));
    let standby = primary.standby();
    wait_for("the fixture on the standby", MINUTE, || {
        standby.sql("postgres", "SELECT count(*) FROM pg_database WHERE datname = 'app'") == "1"
    });
    let (a, b) = (Pgmedic::new(Backend::Local, &[], "", ""), Pgmedic::new(Backend::Local, &[], "", ""));
    let shared = a.snapshots_dir();
    a.write_config(&config(&a, "a", &primary.url("app"), &shared));
    b.write_config(&config(&b, "b", &standby.url("app"), &shared));
    let start = Utc::now();
    let da = Daemon::start(&a);
    let db = Daemon::start(&b);

    // The failed migration is repaired once, by the primary's daemon; the standby's sees a standby.
    wait_for("the primary's repair", MINUTE, || {
        da.status()["databases"]["app"]["last_repair"]["outcome"] == "succeeded"
    });
    let failed = format!("SELECT count(*) FROM _prisma_migrations WHERE migration_name = '{FAILED}' AND rolled_back_at IS NULL");
    assert_eq!(primary.sql("app", &failed), "0");
    wait_for("the standby's watcher", MINUTE, || {
        db.status()["databases"]["app"]["migrations"]["state"] == "standby"
    });
    assert!(db.status()["databases"]["app"]["last_repair"].is_null(), "{}", db.status());

    wait_for("two scheduled runs of the primary's daemon", MINUTE, || taken_by(&a, "a", start) >= 2);
    let status = db.status()["databases"]["app"].clone();
    assert!(status["snapshots_skipped_total"].as_u64().unwrap() >= 2, "{status}");
    assert!(status["last_skipped"].as_str().unwrap().contains("standby"), "{status}");
    assert_eq!(status["snapshots_failure_total"], 0, "{status}");
    assert!(
        status["last_success_at"].is_string(),
        "storage holds the primary's snapshot: not stale {status}"
    );

    // Failover: the primary goes away, the standby is promoted.
    let stopped = Utc::now();
    drop(primary);
    standby.promote();
    let promoted = Utc::now();
    wait_for("two scheduled runs of the promoted side's daemon", MINUTE, || taken_by(&b, "b", promoted) >= 2);
    drop(da);
    drop(db);

    let all = slots(&a);
    let every = chrono::Duration::seconds(5);
    let (first, last) = (*all.keys().next().unwrap(), *all.keys().last().unwrap());
    let mut due = first;
    while due <= last {
        let by = all.get(&due).cloned().unwrap_or_default();
        assert!(by.len() <= 1, "the run due at {due} was taken twice: {by:?} in {all:?}");
        // Without a primary (stopped, not yet promoted) a run may go untaken; never otherwise.
        let no_primary = due > stopped - every && due <= promoted;
        if !no_primary {
            let want = if due < stopped { "a" } else { "b" };
            assert_eq!(by, [want], "the run due at {due}: {all:?}");
        }
        due += every;
    }
}
