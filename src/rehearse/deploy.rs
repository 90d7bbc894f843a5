//! The deploy under rehearsal: any migration tool's command, argv without a shell, in its own
//! process group from a cleared environment plus every variable tools read for a connection
//! (`DATABASE_URL`, `DIRECT_URL`, `PG*`, Flyway's, Liquibase's, goose's) pointing at the scratch
//! database, in `rehearse_cwd`; a password only in that environment, never argv; killed with
//! its group at the timeout or on cancel. While it runs, a second session samples the
//! locks it holds on tables, so the report can say which tables a deploy locked and how.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio_postgres::config::Host;
use tokio_util::sync::CancellationToken;

use crate::config::DbUrl;
use crate::process::{self, Group, TERM_GRACE};

const OUTPUT_CAP: u64 = 256 * 1024;

pub struct Outcome {
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub output: String,
    pub seconds: f64,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub ended_at: chrono::DateTime<chrono::Utc>,
    pub samples: super::locks::Samples,
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// What the deploy connects with: the scratch database's address and the folder it runs in.
pub struct Target<'a> {
    pub url: &'a DbUrl,
    /// The ephemeral cluster's loopback port, when it opened one (JDBC tools).
    pub loopback: Option<u16>,
    pub cwd: &'a Path,
}

/// A libpq URI for `url` (one host), with its TLS settings; the password only when `secret`.
fn uri(url: &DbUrl, secret: bool) -> String {
    let cfg = url.pg_config();
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let (user, db) = (enc(url.user()), enc(url.dbname()));
    let pw = match (secret, url.password()) {
        (true, Some(p)) => format!(":{}", enc(p.expose())),
        _ => String::new(),
    };
    match cfg.get_hosts().first() {
        Some(Host::Unix(dir)) => {
            format!(
                "postgresql://{user}{pw}@localhost/{db}?host={}&port={port}",
                enc(&dir.display().to_string())
            )
        }
        other => {
            let h = match other {
                Some(Host::Tcp(h)) => h.clone(),
                _ => "localhost".into(),
            };
            let host = if h.contains(':') { format!("[{h}]") } else { h };
            let mut q: Vec<String> =
                tls_pairs(url).into_iter().map(|(k, v)| format!("{k}={}", enc(&v))).collect();
            if let Some(a) = cfg.get_hostaddrs().first() {
                q.push(format!("hostaddr={a}"));
            }
            let query = if q.is_empty() { String::new() } else { format!("?{}", q.join("&")) };
            format!("postgresql://{user}{pw}@{host}:{port}/{db}{query}")
        }
    }
}

/// libpq's TLS keys as pgmedic's own session applied them (defaults resolved). `prefer`, libpq's
/// default, is left unsaid: tools that cannot fall back (node-postgres reads it as "require")
/// would refuse a server without TLS that pgmedic and libpq reach.
fn tls_pairs(url: &DbUrl) -> Vec<(&'static str, String)> {
    let tls = url.tls().effective().unwrap_or_else(|_| url.tls().clone());
    tls.conninfo_pairs().into_iter().filter(|(k, v)| !(*k == "sslmode" && v == "prefer")).collect()
}

/// Every variable a migration tool reads for its connection, pointing at the scratch copy:
/// `DATABASE_URL` (and `DIRECT_URL`, `GOOSE_DBSTRING`), libpq's `PG*`, and with a loopback port
/// the JDBC tools' own. The password (a loopback's generated one, another server's) only here.
pub fn env_for(t: &Target<'_>) -> BTreeMap<String, String> {
    let (url, cfg) = (t.url, t.url.pg_config());
    let port = cfg.get_ports().first().copied().unwrap_or(5432).to_string();
    let database_url = uri(url, true);
    let mut env = BTreeMap::from([
        ("DATABASE_URL".to_string(), database_url.clone()),
        ("DIRECT_URL".into(), database_url.clone()),
        ("GOOSE_DRIVER".into(), "postgres".into()),
        ("GOOSE_DBSTRING".into(), database_url),
        ("PGPORT".into(), port.clone()),
        ("PGUSER".into(), url.user().to_string()),
        ("PGDATABASE".into(), url.dbname().to_string()),
    ]);
    let host = match cfg.get_hosts().first() {
        Some(Host::Unix(dir)) => dir.display().to_string(),
        Some(Host::Tcp(h)) => h.clone(),
        None => "localhost".into(),
    };
    env.insert("PGHOST".into(), host.clone());
    if let Some(a) = cfg.get_hostaddrs().first() {
        env.insert("PGHOSTADDR".into(), a.to_string());
    }
    for (k, v) in tls_pairs(url) {
        env.insert(format!("PG{}", k.to_uppercase()), v);
    }
    if let Some(pw) = url.password() {
        env.insert("PGPASSWORD".into(), pw.expose().to_string());
    }
    let jdbc_host = match (t.loopback, cfg.get_hosts().first()) {
        (Some(_), _) => Some(("127.0.0.1".to_string(), port)),
        (None, Some(Host::Tcp(h))) => Some((h.clone(), port)),
        _ => None,
    };
    if let Some((h, p)) = jdbc_host {
        let ssl = tls_pairs(url).into_iter().find(|(k, _)| *k == "sslmode").map(|(_, v)| v);
        let query = ssl.map(|m| format!("?sslmode={m}")).unwrap_or_default();
        let jdbc = format!("jdbc:postgresql://{h}:{p}/{}{query}", url.dbname());
        let pw = url.password().map(|p| p.expose().to_string()).unwrap_or_default();
        for (k, v) in [
            ("FLYWAY_URL", jdbc.clone()),
            ("FLYWAY_USER", url.user().to_string()),
            ("FLYWAY_PASSWORD", pw.clone()),
            ("LIQUIBASE_COMMAND_URL", jdbc),
            ("LIQUIBASE_COMMAND_USERNAME", url.user().to_string()),
            ("LIQUIBASE_COMMAND_PASSWORD", pw),
        ] {
            env.insert(k.into(), v);
        }
    }
    env
}

/// `{url}` in any argument becomes the scratch database's URI, without its password (argv is
/// world-readable in /proc; the tool finds the password in `PGPASSWORD`).
pub fn argv_for(argv: &[String], url: &DbUrl) -> Vec<String> {
    let public = uri(url, false);
    argv.iter().map(|a| a.replace("{url}", &public)).collect()
}

/// Whether the deploy is a JDBC tool (Liquibase, Flyway), which cannot use a unix socket.
pub fn needs_tcp(tool: &str, argv: &[String]) -> bool {
    let named = |s: &str| {
        let s = s.to_ascii_lowercase();
        s.contains("liquibase") || s.contains("flyway")
    };
    matches!(tool, "liquibase" | "flyway") || argv.iter().any(|a| named(a))
}

/// Runs `argv` against the target until it exits, `timeout` passes or `cancel` fires.
pub async fn run(
    argv: &[String],
    target: &Target<'_>,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<Outcome, String> {
    let argv = argv_for(argv, target.url);
    let mut cmd = process::command(&argv[0]);
    cmd.args(&argv[1..])
        .envs(env_for(target))
        .current_dir(target.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let url = target.url;
    let started = Instant::now();
    let mut group = Group::spawn(&mut cmd)
        .map_err(|e| format!("cannot start {} in {}: {e}", argv[0], target.cwd.display()))?;
    let child = group.child();
    let out = tokio::spawn(process::read_head(child.stdout.take().expect("piped"), OUTPUT_CAP));
    let err = tokio::spawn(process::read_head(child.stderr.take().expect("piped"), OUTPUT_CAP));
    let started_at = chrono::Utc::now();
    let sampler = CancellationToken::new();
    let samples = super::locks::start(url.clone(), sampler.clone()).await;
    let (status, timed_out) = tokio::select! {
        s = group.child().wait() => (s.ok(), false),
        _ = tokio::time::sleep(timeout) => { group.terminate(TERM_GRACE).await; (None, true) }
        _ = cancel.cancelled() => { group.terminate(TERM_GRACE).await; (None, false) }
    };
    group.kill().await;
    let ended_at = chrono::Utc::now();
    sampler.cancel();
    let (stdout, stderr) = (out.await.unwrap_or_default(), err.await.unwrap_or_default());
    Ok(Outcome {
        exit_code: status.and_then(|s| s.code()),
        timed_out,
        output: format!("{}{}", String::from_utf8_lossy(&stdout), String::from_utf8_lossy(&stderr)),
        seconds: started.elapsed().as_secs_f64(),
        started_at,
        ended_at,
        samples: samples.await.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deploy_gets_the_host_reached_its_tls_and_its_password_only_in_the_environment() {
        let url: DbUrl = "host=standby.example,primary.example port=5433,5434 user=app password=pw:1 dbname=shop sslmode=verify-full sslrootcert=/etc/ca.pem target_session_attrs=read-write"
            .parse()
            .unwrap();
        let reached = url.only_host(1).unwrap();
        let target = Target { url: &reached, loopback: None, cwd: Path::new("/") };
        let env = env_for(&target);
        assert_eq!((env["PGHOST"].as_str(), env["PGPORT"].as_str()), ("primary.example", "5434"));
        assert_eq!(
            (env["PGSSLMODE"].as_str(), env["PGSSLROOTCERT"].as_str()),
            ("verify-full", "/etc/ca.pem")
        );
        assert_eq!(env["PGPASSWORD"], "pw:1");
        assert_eq!(
            env["DATABASE_URL"],
            "postgresql://app:pw%3A1@primary.example:5434/shop?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem"
        );
        assert_eq!(env["DIRECT_URL"], env["DATABASE_URL"]);
        assert_eq!(env["FLYWAY_URL"], "jdbc:postgresql://primary.example:5434/shop?sslmode=verify-full");
        assert_eq!(env["LIQUIBASE_COMMAND_PASSWORD"], "pw:1");
        let argv = argv_for(&["migrate".into(), "-database".into(), "{url}".into(), "up".into()], &reached);
        assert_eq!(
            argv[2],
            "postgresql://app@primary.example:5434/shop?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem"
        );
        assert!(!argv.concat().contains("pw"), "no password in argv: {argv:?}");
    }

    #[test]
    fn a_socket_gets_a_url_every_driver_reads_and_libpqs_default_tls_is_left_unsaid() {
        let url: DbUrl = "host=/run/pgmedic/sock port=5432 user=app dbname=shop".parse().unwrap();
        let env = env_for(&Target { url: &url, loopback: None, cwd: Path::new("/") });
        assert_eq!(
            env["DATABASE_URL"],
            "postgresql://app@localhost/shop?host=%2Frun%2Fpgmedic%2Fsock&port=5432"
        );
        assert!(
            !env.contains_key("PGSSLMODE")
                && !env.contains_key("PGPASSWORD")
                && !env.contains_key("FLYWAY_URL"),
            "{env:?}"
        );
    }
}
