//! The TLS part of a connection string, kept by pgmedic itself: libpq's `sslmode` (all six
//! values, where tokio-postgres knows three), `sslrootcert`, `sslcert` and `sslkey`. They are
//! taken out before the rest is parsed. `effective` applies libpq's defaults exactly
//! (`~/.postgresql/root.crt`, `postgresql.crt`, `postgresql.key`, found through `$HOME` and
//! then the password database), and the same resolved files go to pgmedic's own sessions and to
//! the client tools.

use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    Allow,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(v: &str) -> Result<SslMode, String> {
        Ok(match v {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode `{other}` is not one of disable, allow, prefer, require, verify-ca, verify-full"
                ))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// libpq's message when verification needs a root certificate that is not there.
const NO_ROOT_HINT: &str = "Either provide the file, use the system's trusted roots with sslrootcert=system, or change sslmode to disable server certificate verification.";

impl TlsSettings {
    /// The settings as libpq applies them: `sslrootcert` defaults to `~/.postgresql/root.crt`
    /// and counts only if that file exists (then the chain is verified in every mode that
    /// encrypts, as libpq does); `sslcert`/`sslkey` default to `~/.postgresql/postgresql.crt`
    /// and `.key` and count only if the certificate exists. Errors are libpq's: verify-ca and
    /// verify-full need a root certificate.
    pub fn effective(&self) -> Result<TlsSettings, String> {
        let home = home_dir().map(|h| h.join(".postgresql"));
        let verifies = matches!(self.mode, SslMode::VerifyCa | SslMode::VerifyFull);
        let root = self.root_cert.clone().or_else(|| home.as_ref().map(|h| h.join("root.crt")));
        let root_cert = match root {
            Some(p) if p.as_os_str() == "system" => {
                if self.mode != SslMode::VerifyFull {
                    return Err("sslrootcert=system needs sslmode=verify-full (as libpq requires)".into());
                }
                Some(p)
            }
            Some(p) if p.exists() => Some(p),
            Some(p) if verifies => {
                return Err(format!(
                    "root certificate file \"{}\" does not exist\n{NO_ROOT_HINT}",
                    p.display()
                ))
            }
            None if verifies => {
                return Err(format!(
                    "could not get home directory to locate root certificate file\n{NO_ROOT_HINT}"
                ))
            }
            _ => None,
        };
        let cert = self.client_cert.clone().or_else(|| home.as_ref().map(|h| h.join("postgresql.crt")));
        let (client_cert, client_key) = match cert.filter(|c| c.exists()) {
            Some(c) => {
                let key = self.client_key.clone().or_else(|| home.as_ref().map(|h| h.join("postgresql.key")));
                (Some(c), key)
            }
            None => (None, None),
        };
        Ok(TlsSettings { mode: self.mode, root_cert, client_cert, client_key })
    }

    /// Whether the server's chain is checked: on effective settings, whenever a root
    /// certificate is there and the connection encrypts.
    pub fn verifies_chain(&self) -> bool {
        self.mode != SslMode::Disable && self.root_cert.is_some()
    }

    pub fn uses_system_roots(&self) -> bool {
        self.root_cert.as_ref().is_some_and(|p| p.as_os_str() == "system")
    }

    /// `key='value'` pairs for a libpq conninfo (empty for the defaults).
    pub fn conninfo_pairs(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("sslmode", self.mode.as_str().to_string())];
        for (k, v) in
            [("sslrootcert", &self.root_cert), ("sslcert", &self.client_cert), ("sslkey", &self.client_key)]
        {
            if let Some(p) = v {
                out.push((k, p.display().to_string()));
            }
        }
        out
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "sslmode" => self.mode = SslMode::parse(value)?,
            "sslrootcert" => self.root_cert = Some(PathBuf::from(value)),
            "sslcert" => self.client_cert = Some(PathBuf::from(value)),
            "sslkey" => self.client_key = Some(PathBuf::from(value)),
            _ => unreachable!("only TLS keys are set"),
        }
        Ok(())
    }
}

/// libpq's home: `$HOME`, else the password database's entry for the effective uid.
fn home_dir() -> Option<PathBuf> {
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(h));
    }
    let pw = unsafe { libc::getpwuid(libc::geteuid()) };
    if pw.is_null() {
        return None;
    }
    let dir = unsafe { std::ffi::CStr::from_ptr((*pw).pw_dir) };
    Some(PathBuf::from(dir.to_string_lossy().into_owned()))
}

const KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Splits the TLS keys out of a URL's query or a `key=value` string; returns the rest.
pub fn split(conn: &str) -> Result<(String, TlsSettings), String> {
    let mut tls = TlsSettings::default();
    if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        let Some((base, query)) = conn.split_once('?') else { return Ok((conn.to_string(), tls)) };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if KEYS.contains(&k) {
                let v: String = url::form_urlencoded::parse(format!("v={v}").as_bytes())
                    .map(|(_, v)| v.into_owned())
                    .collect();
                tls.set(k, &v)?;
            } else {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
        return Ok((rest, tls));
    }
    let mut kept = Vec::new();
    for (k, raw, v) in pairs(conn)? {
        if KEYS.contains(&k.as_str()) {
            tls.set(&k, &v)?;
        } else {
            kept.push(raw);
        }
    }
    Ok((kept.join(" "), tls))
}

/// `key=value` pairs of a libpq keyword string: (key, the pair as written, the unquoted value).
fn pairs(conn: &str) -> Result<Vec<(String, String, String)>, String> {
    let chars: Vec<char> = conn.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < chars.len() {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let start = i;
        while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
            i += 1;
        }
        let key: String = chars[start..i].iter().collect();
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if key.is_empty() {
            break;
        }
        if i >= chars.len() || chars[i] != '=' {
            return Err(format!("`{key}` has no value (write key=value)"));
        }
        i += 1;
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < chars.len() && chars[i] == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    i += 1;
                }
                value.push(chars[i]);
                i += 1;
            }
            i += 1;
        } else {
            while i < chars.len() && !chars[i].is_whitespace() {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    i += 1;
                }
                value.push(chars[i]);
                i += 1;
            }
        }
        let raw: String = chars[start..i.min(chars.len())].iter().collect();
        out.push((key, raw, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_query_keys_are_taken_out() {
        let (rest, tls) = split(
            "postgresql://u:p@db/app?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgresql://u:p@db/app?application_name=x");
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert.as_deref(), Some(std::path::Path::new("/etc/ca.pem")));
    }

    #[test]
    fn keyword_strings_too() {
        let (rest, tls) = split("host=db sslmode = 'verify-ca' dbname='my app' sslkey=/k.pem").unwrap();
        assert_eq!(rest, "host=db dbname='my app'");
        assert_eq!((tls.mode, tls.client_key.is_some()), (SslMode::VerifyCa, true));
        assert!(split("host=db sslmode=sometimes").unwrap_err().contains("sslmode `sometimes`"));
        assert!(split("host=db").unwrap().1.root_cert.is_none());
    }
}
