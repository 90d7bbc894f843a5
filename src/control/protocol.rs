//! The control socket's wire format: one JSON object per line each way. Requests are
//! `{"cmd": "...", ...}`; replies are `{"ok": true, ...}` or
//! `{"ok": false, "error": {"code": "...", "message": "..."}}`.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The longest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    Snapshot {
        #[serde(default)]
        db: Option<String>,
        #[serde(default)]
        reason: Option<String>,
        /// Reply only once the snapshots are done (the CLI waits; scripts may not).
        #[serde(default = "yes")]
        wait: bool,
    },
    Snapshots {
        #[serde(default)]
        db: Option<String>,
    },
    Reload,
    Repair {
        #[serde(default)]
        db: Option<String>,
        #[serde(default)]
        playbook: Option<String>,
        #[serde(default)]
        dry_run: bool,
    },
    /// Rehearse the configured `rehearse_command` on a scratch copy (never an arbitrary
    /// command: socket peers run only what the configuration names).
    Rehearse {
        #[serde(default)]
        db: Option<String>,
        #[serde(default)]
        snapshot: Option<String>,
        #[serde(default)]
        fresh: bool,
    },
    /// A restore drill of the database's newest snapshot, now (waits for its report).
    Drill {
        #[serde(default)]
        db: Option<String>,
    },
}

/// One request line; the error says why it is not one.
pub fn parse(line: &str) -> Result<Request, String> {
    serde_json::from_str::<Request>(line).map_err(|e| format!("not a pgmedic request: {e}"))
}

fn yes() -> bool {
    true
}

/// Error codes a client can act on.
pub mod code {
    pub const BAD_REQUEST: &str = "bad_request";
    pub const TOO_LARGE: &str = "too_large";
    pub const TIMEOUT: &str = "timeout";
    pub const FORBIDDEN: &str = "forbidden";
    pub const UNKNOWN_DATABASE: &str = "unknown_database";
    pub const FAILED: &str = "failed";
    pub const SHUTTING_DOWN: &str = "shutting_down";
}

pub fn ok(mut body: Value) -> Value {
    match body.as_object_mut() {
        Some(map) => {
            map.insert("ok".into(), Value::Bool(true));
            body
        }
        None => json!({ "ok": true, "result": body }),
    }
}

pub fn err(code: &str, message: impl Into<String>) -> Value {
    json!({ "ok": false, "error": { "code": code, "message": message.into() } })
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::parse;

    const SAMPLES: &[&str] = &[
        r#"{"cmd":"status"}"#,
        r#"{"cmd":"snapshot","db":"app","wait":false}"#,
        r#"{"cmd":"repair","db":"app","playbook":"p","dry_run":true}"#,
        r#"{"cmd":"rehearse","db":"app","snapshot":"x","fresh":true}"#,
        r#"{"cmd":"drill","db":"app"}"#,
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        #[test]
        fn mutated_requests_never_panic(which in 0usize..5, at in 0usize..80, junk in "\\PC{0,8}", cut in 0usize..80) {
            let mut line = SAMPLES[which].to_string();
            let at = line.char_indices().map(|(i, _)| i).nth(at).unwrap_or(line.len());
            line.insert_str(at, &junk);
            let cut = line.char_indices().map(|(i, _)| i).nth(cut).unwrap_or(line.len());
            line.truncate(cut);
            let _ = parse(&line);
        }

        #[test]
        fn arbitrary_text_never_panics(line in "\\PC{0,300}") {
            let _ = parse(&line);
        }
    }
}
