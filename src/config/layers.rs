//! The configuration's two layers, merged by the `config` crate: the TOML file, then one
//! override per `PGMEDIC_<SECTION>__<KEY>[__<KEY>…]` variable, set at its path (a numeric
//! segment indexes an array: `PGMEDIC_DATABASES__0__URL` sets `databases[0].url`). The merged
//! tree is deserialised into the raw structures, which reject unknown keys.
//!
//! Two checks stay here because the crate does not make them: a variable that indexes past
//! an array's end or into a scalar is refused naming the variable (the crate would pad the
//! array with empty entries), and the file's syntax error is reported by line and column
//! without quoting the line, which may hold a password.

use std::path::Path;

use ::config::{Config as Layers, File, FileFormat, Value, ValueKind};

use super::raw::RawConfig;
use super::ConfigError;

const ENV_PREFIX: &str = "PGMEDIC_";

/// One environment variable applied: its name, and the path it sets (`databases[0].url`).
struct Override {
    var: String,
    key: String,
}

/// The file and the environment, merged and deserialised.
pub fn load(text: &str, path: &Path, env: &[(String, String)]) -> Result<RawConfig, ConfigError> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Parse {
        path: path.to_path_buf(),
        message: parse_message(&e, text),
    })?;
    let root = toml::Value::Table(table);
    let mut builder = Layers::builder().add_source(File::from_str(text, FileFormat::Toml));
    let mut applied = Vec::new();
    for (var, value) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else { continue };
        if !rest.contains("__") {
            continue; // PGMEDIC_CONFIG, PGMEDIC_LOG and the like are not keys
        }
        let segments: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let env_err = |message: String| ConfigError::Env { var: var.clone(), message };
        let (key, holds_string) = resolve(&root, &segments).map_err(env_err)?;
        builder = builder
            .set_override(key.as_str(), env_value(value, holds_string))
            .map_err(|e| env_err(e.to_string()))?;
        applied.push(Override { var: var.clone(), key });
    }
    applied.sort_by(|a, b| a.var.cmp(&b.var));
    let merged = builder.build().map_err(|e| blame(e, &applied, path))?;
    merged.try_deserialize().map_err(|e| blame(e, &applied, path))
}

/// The path expression for `segments`, checked against the file; and whether the file holds a
/// string there (a value set over a string stays a string, e.g. a numeric database name).
fn resolve(root: &toml::Value, segments: &[String]) -> Result<(String, bool), String> {
    let mut key = String::new();
    let mut node = Some(root);
    let mut i = 0;
    while i < segments.len() {
        let seg = &segments[i];
        if seg.is_empty() {
            return Err("empty key segment (two `__` in a row?)".into());
        }
        let child = match node {
            Some(toml::Value::Table(t)) => t.get(seg),
            Some(_) => return Err(format!("`{}` is not a table", key.rsplit('.').next().unwrap_or(&key))),
            None => None,
        };
        key.push_str(&if key.is_empty() { seg.clone() } else { format!(".{seg}") });
        node = child;
        if let Some(toml::Value::Array(items)) = node {
            if i + 1 == segments.len() {
                break; // the whole array is replaced, e.g. allowed_uids = [..]
            }
            let index: usize = segments[i + 1].parse().map_err(|_| {
                format!("`{seg}` is an array: name an index, e.g. {}__0__…", seg.to_uppercase())
            })?;
            node = Some(
                items.get(index).ok_or(format!("`{seg}` has {} entries, no index {index}", items.len()))?,
            );
            key.push_str(&format!("[{index}]"));
            i += 1;
        }
        i += 1;
    }
    Ok((key, matches!(node, Some(toml::Value::String(_)))))
}

/// A TOML array or inline table when the text is one (`[1000, 1001]`); otherwise the text,
/// which the crate converts to the number or boolean the key expects.
fn env_value(value: &str, keep_string: bool) -> Value {
    let trimmed = value.trim_start();
    if !keep_string && (trimmed.starts_with('[') || trimmed.starts_with('{')) {
        if let Ok(mut t) = format!("v = {value}").parse::<toml::Table>() {
            if let Some(v) = t.remove("v") {
                return from_toml(v);
            }
        }
    }
    Value::new(None, ValueKind::String(value.to_string()))
}

fn from_toml(v: toml::Value) -> Value {
    let kind = match v {
        toml::Value::String(s) => ValueKind::String(s),
        toml::Value::Integer(i) => ValueKind::I64(i),
        toml::Value::Float(f) => ValueKind::Float(f),
        toml::Value::Boolean(b) => ValueKind::Boolean(b),
        toml::Value::Datetime(d) => ValueKind::String(d.to_string()),
        toml::Value::Array(a) => ValueKind::Array(a.into_iter().map(from_toml).collect()),
        toml::Value::Table(t) => ValueKind::Table(t.into_iter().map(|(k, v)| (k, from_toml(v))).collect()),
    };
    Value::new(None, kind)
}

/// The crate's error as pgmedic's: the variable at fault when the key is one an override set,
/// else the file; secrets in quoted values redacted either way.
fn blame(e: ::config::ConfigError, applied: &[Override], path: &Path) -> ConfigError {
    let message = crate::redact::redact(e.to_string().trim());
    let key = match &e {
        ::config::ConfigError::Type { key, .. } | ::config::ConfigError::At { key, .. } => key.clone(),
        _ => None,
    };
    if let Some(o) =
        key.and_then(|k| applied.iter().find(|o| k == o.key || k.starts_with(&format!("{}.", o.key))))
    {
        return ConfigError::Env { var: o.var.clone(), message };
    }
    let mut message = message;
    if !applied.is_empty() {
        let vars: Vec<&str> = applied.iter().map(|o| o.var.as_str()).collect();
        message.push_str(&format!(" (after environment overrides {})", vars.join(", ")));
    }
    ConfigError::Parse { path: path.to_path_buf(), message }
}

/// Where and what, without the offending line: toml's own text quotes the line, and the line
/// may hold a password (an unterminated `url = "postgresql://u:pw@…`). The message goes to
/// logs and to `status`, which every allowed socket peer can read.
fn parse_message(e: &toml::de::Error, text: &str) -> String {
    let message = crate::redact::redact(e.message().trim());
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map(|l| l.chars().count() + 1).unwrap_or(1);
            format!("TOML syntax error at line {line}, column {column}: {message}")
        }
        None => format!("TOML syntax error: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Step;

    const BASE: &str = "[daemon]\nallowed_uids = [7]\n[storage]\npath = \"snaps\"\n[[databases]]\nname = \"app\"\nurl = \"postgresql://app:pw@127.0.0.1/app\"\n";

    use super::super::load_for_test as load;

    #[test]
    fn an_index_past_the_end_or_into_a_scalar_names_the_variable() {
        let err = load(BASE, &[("PGMEDIC_DATABASES__3__URL", "postgresql://x@h/d")]).unwrap_err();
        assert!(
            err.contains("PGMEDIC_DATABASES__3__URL") && err.contains("has 1 entries, no index 3"),
            "{err}"
        );
        let err = load(BASE, &[("PGMEDIC_DATABASES__URL", "postgresql://x@h/d")]).unwrap_err();
        assert!(err.contains("is an array: name an index"), "{err}");
        let err = load(BASE, &[("PGMEDIC_STORAGE__PATH__DEEP", "x")]).unwrap_err();
        assert!(err.contains("`path` is not a table"), "{err}");
    }

    #[test]
    fn arrays_numbers_and_strings_from_the_environment() {
        let cfg = load(
            BASE,
            &[
                ("PGMEDIC_DAEMON__ALLOWED_UIDS", "[1000, 1001]"),
                ("PGMEDIC_DATABASES__0__NAME", "1234"),
                ("PGMEDIC_STORAGE__FORCE_PATH_STYLE", "true"),
                ("PGMEDIC_REHEARSE__TIMEOUT", "90s"),
            ],
        )
        .unwrap();
        assert_eq!(cfg.daemon.allowed_uids, vec![1000, 1001]);
        assert_eq!(cfg.databases[0].name, "1234", "a string in the file stays a string");
        assert_eq!(cfg.rehearse.timeout, std::time::Duration::from_secs(90), "a section the file lacks");
    }

    #[test]
    fn a_bad_override_names_the_variable_and_the_file_keeps_its_keys_case() {
        let err = load(BASE, &[("PGMEDIC_SNAPSHOT__COMPRESSION_LEVEL", "fast")]).unwrap_err();
        assert!(err.starts_with("environment variable PGMEDIC_SNAPSHOT__COMPRESSION_LEVEL:"), "{err}");
        let with_step = format!(
            "{BASE}[[playbooks]]\nname = \"p\"\nsteps = [ {{ command = [\"true\"], env = {{ NODE_ENV = \"production\" }} }} ]\n"
        );
        let cfg = load(&with_step, &[]).unwrap();
        let Step::Command { env, .. } = &cfg.playbooks[0].steps[0] else { panic!("a command step") };
        assert_eq!(env.get("NODE_ENV").map(String::as_str), Some("production"), "{env:?}");
    }
}
