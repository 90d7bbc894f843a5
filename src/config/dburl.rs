//! Database connection strings, parsed once and kept with their password apart: the password
//! only ever reaches PostgreSQL through a connection or a 0600 passfile, never argv or a log.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use std::time::Duration;

use tokio_postgres::config::{
    ChannelBinding, Host, LoadBalanceHosts, SslMode, SslNegotiation, TargetSessionAttrs,
};

/// Where libpq looks when a URL names no host (Debian's default socket directory).
const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// A value that must not be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// A PostgreSQL connection target: libpq URL or `key=value` string.
#[derive(Clone)]
pub struct DbUrl {
    config: tokio_postgres::Config,
    tls: super::tls::TlsSettings,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DbUrlError(String);

impl FromStr for DbUrl {
    type Err = DbUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (rest, tls) = super::tls::split(s.trim()).map_err(DbUrlError)?;
        let mut config = tokio_postgres::Config::from_str(&rest)
            // tokio-postgres echoes the offending text, which may hold the password.
            .map_err(|e| DbUrlError(redact_message(&e.to_string(), s)))?;
        config.ssl_mode(match tls.mode {
            super::tls::SslMode::Disable => SslMode::Disable,
            super::tls::SslMode::Allow | super::tls::SslMode::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        });
        if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
            config.host_path(DEFAULT_SOCKET_DIR);
        }
        // A session that holds a lock through a long dump must notice a dead peer in minutes,
        // not the kernel's two hours; a URL's own keepalive settings win.
        if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
            config.keepalives_idle(Duration::from_secs(30));
        }
        if config.get_keepalives_interval().is_none() {
            config.keepalives_interval(Duration::from_secs(10));
        }
        if config.get_keepalives_retries().is_none() {
            config.keepalives_retries(3);
        }
        if config.get_user().is_none() {
            config.user(current_user().as_str());
        }
        if config.get_dbname().is_none() {
            let user = config.get_user().unwrap_or_default().to_string();
            config.dbname(&user);
        }
        Ok(DbUrl { config, tls })
    }
}

fn redact_message(message: &str, source: &str) -> String {
    match password_text(source) {
        Some(pw) if !pw.is_empty() => message.replace(pw, "***"),
        _ => message.to_string(),
    }
}

/// The password as written in a URL's userinfo or a `password=` pair, found without parsing
/// the rest (which is what failed).
fn password_text(source: &str) -> Option<&str> {
    if let Some((_, rest)) = source.split_once("://") {
        let authority = rest.split(['/', '?']).next().unwrap_or(rest);
        let userinfo = authority.rsplit_once('@')?.0;
        return userinfo.split_once(':').map(|(_, pw)| pw);
    }
    let start = source.find("password=")? + "password=".len();
    source[start..].split_whitespace().next()
}

fn current_user() -> String {
    std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "postgres".into())
}

impl DbUrl {
    pub fn dbname(&self) -> &str {
        self.config.get_dbname().unwrap_or_default()
    }

    pub fn user(&self) -> &str {
        self.config.get_user().unwrap_or_default()
    }

    pub fn password(&self) -> Option<Secret> {
        self.config.get_password().map(|p| Secret(String::from_utf8_lossy(p).into_owned()))
    }

    /// The same server and credentials, another database.
    pub fn with_dbname(&self, dbname: &str) -> DbUrl {
        let mut config = self.config.clone();
        config.dbname(dbname);
        DbUrl { config, tls: self.tls.clone() }
    }

    /// How many servers the URL names (a `host` list, or `hostaddr`s without names).
    pub fn host_count(&self) -> usize {
        self.config.get_hosts().len().max(self.config.get_hostaddrs().len())
    }

    /// The `i`-th of several servers alone (its `hostaddr` and port with it) and every other
    /// setting kept: for a client that must reach exactly the server pgmedic reached.
    pub fn only_host(&self, i: usize) -> Option<DbUrl> {
        let c = &self.config;
        if i >= self.host_count() {
            return None;
        }
        let mut n = tokio_postgres::Config::new();
        match c.get_hosts().get(i) {
            Some(Host::Tcp(h)) => {
                n.host(h);
            }
            Some(Host::Unix(p)) => {
                n.host_path(p);
            }
            None => {}
        }
        if let Some(a) = c.get_hostaddrs().get(i) {
            n.hostaddr(*a);
        }
        let ports = c.get_ports();
        if let Some(p) = ports.get(i).or(ports.first()) {
            n.port(*p);
        }
        n.user(self.user()).dbname(self.dbname());
        if let Some(p) = c.get_password() {
            n.password(p);
        }
        if let Some(o) = c.get_options() {
            n.options(o);
        }
        if let Some(a) = c.get_application_name() {
            n.application_name(a);
        }
        if let Some(t) = c.get_connect_timeout() {
            n.connect_timeout(*t);
        }
        if let Some(t) = c.get_tcp_user_timeout() {
            n.tcp_user_timeout(*t);
        }
        n.keepalives(c.get_keepalives()).keepalives_idle(c.get_keepalives_idle());
        if let Some(v) = c.get_keepalives_interval() {
            n.keepalives_interval(v);
        }
        if let Some(v) = c.get_keepalives_retries() {
            n.keepalives_retries(v);
        }
        n.ssl_mode(c.get_ssl_mode()).ssl_negotiation(c.get_ssl_negotiation());
        n.channel_binding(c.get_channel_binding());
        Some(DbUrl { config: n, tls: self.tls.clone() })
    }

    /// Whether a session must land on a primary (`target_session_attrs=read-write`).
    pub fn wants_read_write(&self) -> bool {
        self.config.get_target_session_attrs() == TargetSessionAttrs::ReadWrite
    }

    /// The same server and database, another role (no password: the socket trusts it).
    pub fn with_user(&self, user: &str) -> DbUrl {
        let mut config = self.config.clone();
        config.user(user);
        DbUrl { config, tls: self.tls.clone() }
    }

    pub fn tls(&self) -> &super::tls::TlsSettings {
        &self.tls
    }

    pub fn pg_config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// A libpq `key=value` string without the password, for pg_dump and friends: every setting
    /// pgmedic's own session used (hosts and `hostaddr`, `target_session_attrs`,
    /// `load_balance_hosts`, `channel_binding`, timeouts, keepalives, TLS), so the tool reaches
    /// the server pgmedic's session reached. Settings left at libpq's default are not written.
    pub fn conninfo(&self) -> String {
        let c = &self.config;
        let mut parts = Vec::new();
        let list = |items: Vec<String>| items.join(",");
        if !c.get_hosts().is_empty() {
            parts.push(kv("host", &list(c.get_hosts().iter().map(host_text).collect())));
        }
        if !c.get_hostaddrs().is_empty() {
            parts.push(kv("hostaddr", &list(c.get_hostaddrs().iter().map(|a| a.to_string()).collect())));
        }
        if !c.get_ports().is_empty() {
            parts.push(kv("port", &list(c.get_ports().iter().map(u16::to_string).collect())));
        }
        parts.push(kv("user", self.user()));
        parts.push(kv("dbname", self.dbname()));
        for (k, v) in [("options", c.get_options()), ("application_name", c.get_application_name())] {
            if let Some(v) = v {
                parts.push(kv(k, v));
            }
        }
        if let Some(t) = c.get_connect_timeout() {
            parts.push(kv("connect_timeout", &t.as_secs().max(1).to_string()));
        }
        if let Some(t) = c.get_tcp_user_timeout() {
            parts.push(kv("tcp_user_timeout", &t.as_millis().to_string()));
        }
        parts.extend(self.keepalive_pairs());
        parts.extend(self.routing_pairs());
        // The files libpq's defaults resolve to, as pgmedic's session used them; when they
        // cannot be resolved the tool resolves them itself, and fails the same way.
        let tls = self.tls.effective().unwrap_or_else(|_| self.tls.clone());
        for (k, v) in tls.conninfo_pairs() {
            parts.push(kv(k, &v));
        }
        parts.join(" ")
    }

    fn keepalive_pairs(&self) -> Vec<String> {
        let c = &self.config;
        if !c.get_keepalives() {
            return vec![kv("keepalives", "0")];
        }
        let mut out = vec![kv("keepalives_idle", &c.get_keepalives_idle().as_secs().max(1).to_string())];
        if let Some(i) = c.get_keepalives_interval() {
            out.push(kv("keepalives_interval", &i.as_secs().max(1).to_string()));
        }
        if let Some(r) = c.get_keepalives_retries() {
            out.push(kv("keepalives_count", &r.to_string())); // libpq's name for it
        }
        out
    }

    /// Which of several servers to use and how to authenticate to it.
    fn routing_pairs(&self) -> Vec<String> {
        let c = &self.config;
        let mut out = Vec::new();
        match c.get_target_session_attrs() {
            TargetSessionAttrs::ReadWrite => out.push(kv("target_session_attrs", "read-write")),
            TargetSessionAttrs::ReadOnly => out.push(kv("target_session_attrs", "read-only")),
            _ => {}
        }
        if c.get_load_balance_hosts() == LoadBalanceHosts::Random {
            out.push(kv("load_balance_hosts", "random"));
        }
        match c.get_channel_binding() {
            ChannelBinding::Disable => out.push(kv("channel_binding", "disable")),
            ChannelBinding::Require => out.push(kv("channel_binding", "require")),
            _ => {}
        }
        if c.get_ssl_negotiation() == SslNegotiation::Direct {
            out.push(kv("sslnegotiation", "direct"));
        }
        out
    }

    /// `postgresql://user:***@host:port/db`, safe for logs and check-config.
    pub fn redacted(&self) -> String {
        let c = &self.config;
        let pw = if c.get_password().is_some() { ":***" } else { "" };
        let host = c.get_hosts().first().map(host_text).unwrap_or_default();
        let port = c.get_ports().first().map(|p| format!(":{p}")).unwrap_or_default();
        if host.starts_with('/') {
            format!("postgresql://{}{pw}@/{}?host={host}{port}", self.user(), self.dbname())
        } else {
            format!("postgresql://{}{pw}@{host}{port}/{}", self.user(), self.dbname())
        }
    }

    /// A short `host:port/db` name for messages.
    pub fn display_target(&self) -> String {
        let host = self.config.get_hosts().first().map(host_text).unwrap_or_default();
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        format!("{host}:{port}/{}", self.dbname())
    }
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

fn host_text(h: &Host) -> String {
    match h {
        Host::Tcp(name) => name.clone(),
        Host::Unix(path) => PathBuf::from(path).display().to_string(),
    }
}

/// Quotes a libpq conninfo value: single quotes, with `\` and `'` escaped.
fn kv(key: &str, value: &str) -> String {
    let escaped = value.replace('\\', "\\\\").replace('\'', "\\'");
    format!("{key}='{escaped}'")
}

/// The line for a libpq passfile that matches any host, port, database and user.
pub fn passfile_line(password: &Secret) -> String {
    let escaped = password.expose().replace('\\', "\\\\").replace(':', "\\:");
    format!("*:*:*:*:{escaped}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_password_is_kept_apart() {
        let u: DbUrl = "postgresql://app:s3cr%3At@db.example:6432/shop".parse().unwrap();
        assert_eq!(u.password().unwrap().expose(), "s3cr:t");
        assert!(!u.conninfo().contains("s3cr"));
        assert_eq!(u.redacted(), "postgresql://app:***@db.example:6432/shop");
        assert!(!format!("{u:?}").contains("s3cr"));
        assert_eq!(passfile_line(&u.password().unwrap()), "*:*:*:*:s3cr\\:t\n");
    }

    #[test]
    fn the_tools_get_every_setting() {
        let u: DbUrl = "postgresql://app:pw@db1:5432,db2:5433/shop?hostaddr=10.0.0.1,10.0.0.2&target_session_attrs=read-write&load_balance_hosts=random&channel_binding=require&connect_timeout=7&keepalives_idle=60"
            .parse()
            .unwrap();
        let c = u.conninfo();
        for want in [
            "host='db1,db2'",
            "hostaddr='10.0.0.1,10.0.0.2'",
            "port='5432,5433'",
            "target_session_attrs='read-write'",
            "load_balance_hosts='random'",
            "channel_binding='require'",
            "connect_timeout='7'",
            "keepalives_idle='60'",
        ] {
            assert!(c.contains(want), "{want} missing from {c}");
        }
        assert!(!c.contains("pw"), "{c}");
    }

    #[test]
    fn socket_url_without_host() {
        let u: DbUrl = "postgresql://pgmedic@/app?host=/var/run/postgresql".parse().unwrap();
        assert_eq!(u.dbname(), "app");
        assert!(u.conninfo().contains("host='/var/run/postgresql'"));
        assert_eq!(u.with_dbname("other").dbname(), "other");
    }

    #[test]
    fn bad_url_error_hides_password() {
        let err = "postgresql://u:hunter2@h/db?bogus=1".parse::<DbUrl>().unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
