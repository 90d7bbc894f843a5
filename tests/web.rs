//! The operator's view in a real browser (Debian's headless Chromium): the daemon's status
//! page with a failed Prisma migration diagnosed, an invalid index, a restore drill and then the
//! repair with its SQL, behind the listener's token and without a secret of the configuration;
//! the fleet of three daemons sharing one storage, one killed (silent, then down) and one
//! stopped (down at once), in the browser and `pgmedic fleet --json`, their heartbeats never
//! taken for a database; and the page for 50 databases of 100 snapshots, timed and weighed.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::browser::{self, get};
use common::prisma::{self, FAILED};
use common::*;

const MINUTE: Duration = Duration::from_secs(60);
const TOKEN: &str = "page-token-7f3a9c2e5b1d4e6f";
const SECRETS: [&str; 3] = ["PAGE-SECRET-pw", "T0KEN-PAGE-SECRET", TOKEN];

fn bearer() -> (&'static str, String) {
    ("Authorization", format!("Bearer {TOKEN}"))
}

fn page(addr: &str, path: &str) -> browser::Reply {
    let (k, v) = bearer();
    let r = get(addr, path, &[(k, &v)]);
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    r
}

/// The first table row holding `needle`: from `<tr>` to its `</tr>` (the browser's DOM) or to
/// the next row or the table's end (the daemon's own HTML, which leaves them implied).
fn row<'a>(html: &'a str, needle: &str) -> &'a str {
    html.split("<tr>")
        .skip(1)
        .map(|r| {
            let end = [r.find("</tr>"), r.find("</table>")].into_iter().flatten().min().unwrap_or(r.len());
            &r[..end]
        })
        .find(|r| r.contains(needle))
        .unwrap_or_else(|| panic!("no row with {needle}:\n{html}"))
}

fn assert_no_secret(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{what} shows the secret {s}");
    }
}

/// A table whose unique index build fails on duplicates: an invalid index stays behind.
fn invalid_index(db: &TestDb) {
    db.sql("CREATE TABLE emails (addr text); INSERT INTO emails VALUES ('a@x'), ('a@x')");
    let out = std::process::Command::new("psql")
        .args(["-h", PG_HOST, "-U", "postgres", "-d", &db.name, "-Xqc"])
        .arg("CREATE UNIQUE INDEX CONCURRENTLY emails_addr_key ON emails (addr)")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the build fails on the duplicates");
}

fn status_config(shop: &TestDb, events: &TestDb, ledger: &TestDb, hook: &str) -> Pgmedic {
    let url = |db: &TestDb| format!("postgresql://postgres:PAGE-SECRET-pw@{PG_HOST}:{PG_PORT}/{}", db.name);
    let tail = format!(
        "\n[[databases]]\nname = \"shop\"\nurl = \"{}\"\nschedule = \"0 0 3 * * *\"\n[databases.migrations]\ndir = \"{}\"\nwatch_interval = \"1s\"\n\
         \n[[databases]]\nname = \"events\"\nurl = \"{}\"\n\
         \n[[databases]]\nname = \"ledger\"\nurl = \"{}\"\ndrill = \"0 0 5 * * 0\"\n\
         \n[[playbooks]]\nname = \"finish-plugin-credential\"\ndatabase = \"shop\"\nmatch = {{ migration = \"*_add_plugin_credential_model\" }}\n\
         steps = [ {{ sql = '''{}''' }}, {{ resolve = \"applied\" }} ]\n\
         \n[[notify]]\nwebhook = \"{hook}\"\n",
        url(shop),
        prisma::fixture("migrations").display(),
        url(events),
        url(ledger),
        prisma::HOTFIX.trim(),
    );
    let pgm = Pgmedic::custom(Backend::Local, "", "", "", &tail);
    let token = pgm.dir.path().join("http.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let daemon = format!(
        "metrics_listen = \"127.0.0.1:0\"\ninstance = \"pager-host\"\nheartbeat_interval = \"1s\"\nhttp_token_file = \"{}\"\n",
        token.display()
    );
    pgm.write_config(&pgm.render(Backend::Local, &daemon, "", "", &tail));
    pgm
}

fn the_token_guards_the_pages_and_metrics_but_not_healthz(addr: &str) {
    for path in ["/", "/fleet", "/metrics"] {
        let r = get(addr, path, &[]);
        assert_eq!(r.status, 401, "{path} needs the token: {}", r.body);
        assert!(r.head.contains("www-authenticate: basic realm=\"pgmedic\""), "{}", r.head);
        let wrong = get(addr, path, &[("Authorization", "Bearer page-token-7f3a9c2e5b1d4e6e")]);
        assert_eq!(wrong.status, 401, "{path}");
    }
    assert_eq!(get(addr, "/healthz", &[]).status, 200, "/healthz stays open");
    assert!(page(addr, "/metrics").body.contains("pgmedic_build_info"));
}

#[test]
fn the_status_page_shows_the_diagnosis_the_invalid_index_the_drill_and_the_repair_sql() {
    let shop = prisma::p3009();
    let events = TestDb::new("events");
    invalid_index(&events);
    let ledger = TestDb::new("ledger");
    ledger.sql("CREATE TABLE entries (id int); INSERT INTO entries SELECT generate_series(1, 50)");
    let (hook, _received) = webhook_event("/hooks/T0KEN-PAGE-SECRET", "never_sent");
    let pgm = status_config(&shop, &events, &ledger, &hook);
    let daemon = Daemon::start(&pgm);
    let addr = daemon.status()["metrics_listen"].as_str().unwrap().to_string();
    the_token_guards_the_pages_and_metrics_but_not_healthz(&addr);

    let taken = daemon.request(r#"{"cmd":"snapshot","reason":"before-the-page"}"#);
    assert_eq!(taken["ok"], true, "{taken}");
    let drill = daemon.request(r#"{"cmd":"drill","db":"ledger"}"#);
    assert_eq!(drill["drill"]["ok"], true, "{drill}");
    // Computed once by the watcher when it saw the failure, then held.
    wait_for("the daemon's diagnosis on the page", MINUTE, || {
        let body = page(&addr, "/").body;
        assert!(!body.contains("the diagnosis of"), "the diagnosis failed:\n{body}\n{}", daemon.log());
        body.contains("· diagnosed")
    });

    let url = format!("http://pgmedic:{TOKEN}@{addr}/");
    let dom = browser::dump_dom(&url);
    assert!(dom.contains(FAILED), "{dom}");
    let created = row(&dom, "CREATE TABLE \"PluginCredential\"");
    assert!(created.contains(">applied<"), "the table was created: {created}");
    let fk = row(&dom, "ADD CONSTRAINT \"PluginCredential_userId_fkey\"");
    assert!(fk.contains(">not applied<"), "the foreign key failed: {fk}");
    assert!(dom.contains("drafted finish playbook") && dom.contains("drafted undo playbook"), "{dom}");
    let index = row(&dom, "public.emails_addr_key");
    assert!(index.contains("CREATE UNIQUE INDEX emails_addr_key"), "{index}");
    let ledger_row = row(&dom, "href=\"#db-ledger\"");
    assert!(ledger_row.contains("<td class=\"ok\">passed "), "the drill passed: {ledger_row}");
    assert_eq!(dom.matches("<svg").count(), 3, "a timeline per database");
    assert!(
        !dom.contains("<script") && !dom.contains("<form") && !dom.contains("<button"),
        "read-only, no script"
    );
    assert_no_secret("the page", &dom);
    browser::screenshot(&url, &browser::saved("status-page.png"), 1100, 1700);

    let repaired = pgm.run(&["repair", "--db", "shop", "--json"]);
    assert_eq!(repaired.code, 0, "{repaired:?}");
    wait_for("the migration ok on the page", MINUTE, || {
        row(&page(&addr, "/").body, "href=\"#db-shop\"").contains("<td class=ok>ok<td")
    });
    let dom = browser::dump_dom(&url);
    let run = dom.split("<details open=\"\">").nth(1).expect("the newest repair run, open");
    assert!(run.contains("finish-plugin-credential") && run.contains(">succeeded<"), "{run}");
    assert!(run.contains("ADD CONSTRAINT \"PluginCredential_userId_fkey\""), "the step's SQL: {run}");
    assert!(!dom.contains("· diagnosed"), "the diagnosis goes with the failure");
    assert_no_secret("the page after the repair", &dom);
    browser::screenshot(&url, &browser::saved("status-page-repaired.png"), 1100, 1700);

    let file = pgm.snapshots_dir().join("_pgmedic/hosts/pager-host.json");
    let beat = || std::fs::read_to_string(&file).unwrap_or_default();
    let doc = || serde_json::from_str::<serde_json::Value>(&beat()).unwrap_or_default();
    wait_for("a heartbeat with the repair", MINUTE, || {
        doc()["databases"]["shop"]["last_repair"]["outcome"] == "succeeded"
    });
    let doc = doc();
    assert_eq!(doc["state"], "running");
    assert_eq!(doc["databases"]["events"]["invalid_indexes"], 1, "{doc:#}");
    assert_eq!(doc["databases"]["ledger"]["last_drill"]["ok"], true, "{doc:#}");
    assert!(doc["databases"]["shop"]["last_snapshot"]["id"].is_string(), "{doc:#}");
    assert_no_secret("the heartbeat", &beat());
}

/// One installation of the fleet: its own database, socket and state, the shared storage.
fn member(instance: &str, storage: &Path, db: &TestDb, metrics: bool) -> Pgmedic {
    let listen = if metrics { "metrics_listen = \"127.0.0.1:0\"\n" } else { "" };
    let daemon = format!("instance = \"{instance}\"\nheartbeat_interval = \"1s\"\n{listen}");
    let tail = format!("\n[[databases]]\nname = \"{instance}_app\"\nurl = \"{}\"\n", db.url());
    let pgm = Pgmedic::custom(Backend::Local, &daemon, "", "", &tail);
    let text = std::fs::read_to_string(&pgm.config).unwrap();
    pgm.write_config(
        &text.replace(&pgm.snapshots_dir().display().to_string(), &storage.display().to_string()),
    );
    pgm
}

/// `pgmedic fleet --json`: each host's state and why.
fn fleet(pgm: &Pgmedic) -> BTreeMap<String, (String, String)> {
    let run = pgm.run(&["fleet", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let hosts = run.json()["hosts"].as_array().unwrap().clone();
    hosts
        .iter()
        .map(|h| {
            let why = h["why"].as_str().unwrap_or("").to_string();
            (h["instance"].as_str().unwrap().to_string(), (h["state"].as_str().unwrap().to_string(), why))
        })
        .collect()
}

fn state(pgm: &Pgmedic, instance: &str) -> (String, String) {
    fleet(pgm).get(instance).cloned().unwrap_or_default()
}

#[test]
fn the_fleet_shows_three_daemons_on_one_storage_and_the_stopped_one_down() {
    let storage = tempfile::tempdir().unwrap();
    let dbs = [TestDb::new("alpha"), TestDb::new("bravo"), TestDb::new("charlie")];
    let a = member("alpha", storage.path(), &dbs[0], true);
    let b = member("bravo", storage.path(), &dbs[1], false);
    let c = member("charlie", storage.path(), &dbs[2], false);
    let da = Daemon::start(&a);
    let mut db_ = Daemon::start(&b);
    let mut dc = Daemon::start(&c);
    wait_for("three hosts up", MINUTE, || fleet(&a).values().filter(|(s, _)| s == "up").count() == 3);

    // Killed: no last word; silent for three of its 1 s intervals, it is down.
    dc.signal(libc::SIGKILL);
    dc.wait_exit(MINUTE);
    wait_for("charlie down once silent", MINUTE, || state(&a, "charlie").0 == "down");
    assert!(state(&a, "charlie").1.contains("no heartbeat for"), "{:?}", state(&a, "charlie"));
    let _dc = Daemon::start(&c);
    wait_for("charlie up again", MINUTE, || state(&a, "charlie").0 == "up");
    // Stopped: its last heartbeat says so, and it is down at once.
    db_.signal(libc::SIGTERM);
    assert_eq!(db_.wait_exit(MINUTE), 0);
    let (s, why) = state(&a, "bravo");
    assert!(s == "down" && why.contains("stopped at"), "{s}: {why}");

    let run = c.run(&["fleet", "--json"]);
    let hosts = run.json()["hosts"].clone();
    let states: Vec<(&str, &str)> = hosts
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["instance"].as_str().unwrap(), h["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [("alpha", "up"), ("bravo", "down"), ("charlie", "up")], "{hosts:#}");
    assert_eq!(hosts[0]["heartbeat"]["databases"]["alpha_app"]["migrations"], serde_json::Value::Null);
    let human = a.run(&["fleet"]);
    assert!(human.code == 0 && human.stdout.contains("bravo: stopped at"), "{human:?}");

    let addr = da.status()["metrics_listen"].as_str().unwrap().to_string();
    let url = format!("http://{addr}/fleet");
    let dom = browser::dump_dom(&url);
    for (host, up) in [("alpha", true), ("bravo", false), ("charlie", true)] {
        let r = row(&dom, &format!("href=\"#host-{host}\""));
        assert!(r.contains(if up { ">up<" } else { ">down<" }), "{host}: {r}");
    }
    assert!(dom.contains("(this one)") && dom.contains("bravo_app"), "{dom}");
    browser::screenshot(&url, &browser::saved("fleet.png"), 1100, 900);
    heartbeats_are_never_snapshots(&a, storage.path());
}

/// `_pgmedic/` holds the heartbeats (and here a manifest-shaped forgery): no listing, prune or
/// lookup takes it for a database.
fn heartbeats_are_never_snapshots(a: &Pgmedic, storage: &Path) {
    let real = a.snapshot("alpha_app");
    let id = real["id"].as_str().unwrap();
    let mut forged = real.clone();
    forged["database"] = "_pgmedic".into();
    let dir = storage.join("_pgmedic").join(id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("manifest.json"), forged.to_string()).unwrap();
    let listed: Vec<String> = a
        .run(&["snapshots", "--json"])
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["database"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, ["alpha_app"]);
    let pruned = a.run(&["prune", "--json"]);
    assert_eq!(pruned.code, 0, "{pruned:?}");
    assert!(!pruned.stdout.contains("_pgmedic"), "{pruned:?}");
    assert!(dir.join("manifest.json").exists() && storage.join("_pgmedic/hosts/alpha.json").exists());
    let verify = a.run(&["verify", id, "--json"]);
    assert_eq!(verify.code, 0, "the id finds the real snapshot, not the forgery: {verify:?}");
}

/// 50 databases of 100 snapshots each: the manifests a real snapshot wrote, copied under each
/// database at its own times and sizes.
fn fifty_by_a_hundred(pgm: &Pgmedic) {
    let real = pgm.snapshot("db00");
    let t0 = chrono::Utc::now() - chrono::Duration::days(100);
    for d in 0..50 {
        for s in 0..100i64 {
            let taken = t0 + chrono::Duration::hours(24 * s + d);
            let id = format!("{}-scheduled-{:06x}", taken.format("%Y%m%dT%H%M%SZ"), d * 1000 + s);
            let mut m = real.clone();
            m["id"] = id.clone().into();
            m["reason"] = "scheduled".into();
            m["database"] = format!("db{d:02}").into();
            m["taken_at"] = taken.to_rfc3339().into();
            m["finished_at"] = (taken + chrono::Duration::seconds(20 + s % 17)).to_rfc3339().into();
            m["stored_bytes"] = (1_000_000 + 7_919 * s * (d + 1)).into();
            let dir = pgm.snapshots_dir().join(format!("db{d:02}")).join(&id);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("manifest.json"), m.to_string()).unwrap();
        }
    }
}

fn server_ms(r: &browser::Reply) -> f64 {
    let t = r.header("server-timing").expect("a Server-Timing header");
    t.split("dur=").nth(1).unwrap().parse().unwrap()
}

#[test]
fn fifty_databases_of_a_hundred_snapshots_render_under_200_ms_and_150_kb() {
    let db = TestDb::new("fifty");
    let tail: String = (0..50)
        .map(|d| {
            format!(
                "\n[[databases]]\nname = \"db{d:02}\"\nurl = \"{}\"\nschedule = \"0 0 3 * * *\"\n",
                db.url()
            )
        })
        .collect();
    let pgm = Pgmedic::custom(Backend::Local, "metrics_listen = \"127.0.0.1:0\"\n", "", "", &tail);
    fifty_by_a_hundred(&pgm);
    let daemon = Daemon::start(&pgm);
    let addr = daemon.status()["metrics_listen"].as_str().unwrap().to_string();
    wait_for("the 5,001 snapshots listed", MINUTE, || {
        get(&addr, "/", &[]).body.matches("and 95 older;").count() == 49
    });
    let mut server = Vec::new();
    let mut client = Vec::new();
    let mut bytes = 0;
    for _ in 0..9 {
        let started = Instant::now();
        let r = get(&addr, "/", &[]);
        client.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(r.status, 200);
        server.push(server_ms(&r));
        bytes = r.body.len();
        std::fs::write(browser::saved("fifty-databases.html"), &r.body).unwrap();
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (server, client) = (median(&mut server), median(&mut client));
    eprintln!("status page, 50 databases x 100 snapshots: {bytes} bytes ({:.1} KB), median of 9: {server:.1} ms server-side, {client:.1} ms at the client", bytes as f64 / 1024.0);
    assert!(server < 200.0, "{server} ms");
    assert!(bytes < 150 * 1024, "{bytes} bytes");
    let dom = browser::dump_dom(&format!("http://{addr}/"));
    assert_eq!(dom.matches("<svg").count(), 50);
    assert_eq!(dom.matches("<section").count(), 50);
}
