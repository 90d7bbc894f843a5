//! The TLS part of a connection string, kept by pgmedic itself: libpq's `sslmode` (all six
//! values, where tokio-postgres knows three), `sslrootcert`, `sslcert` and `sslkey`. They are
//! taken out before the rest is parsed, used for pgmedic's own sessions, and passed on to the
//! client tools unchanged.

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

impl TlsSettings {
    /// libpq verifies the chain for verify-ca and verify-full, and for `require` when a root
    /// certificate is given; the host name only for verify-full.
    pub fn verifies_chain(&self) -> bool {
        matches!(self.mode, SslMode::VerifyCa | SslMode::VerifyFull)
            || (self.mode == SslMode::Require && self.root_cert.is_some())
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
        assert!(tls.verifies_chain());
    }

    #[test]
    fn keyword_strings_too() {
        let (rest, tls) = split("host=db sslmode = 'verify-ca' dbname='my app' sslkey=/k.pem").unwrap();
        assert_eq!(rest, "host=db dbname='my app'");
        assert_eq!((tls.mode, tls.client_key.is_some()), (SslMode::VerifyCa, true));
        assert!(split("host=db sslmode=sometimes").unwrap_err().contains("sslmode `sometimes`"));
        assert!(!split("host=db").unwrap().1.verifies_chain());
    }
}
