//! Reading a failure: the SQLSTATE in the tool's log (or inferred from the words a driver
//! adapter writes instead of a code), and the live backends still running a migration's
//! statements (a killed migrator's statement goes on, and may commit, after its client died).

use tokio_postgres::Client;

/// Words Prisma's driver adapters write in place of the code, and the code they stand for.
const INFERRED: &[(&str, &str)] = &[
    ("No such table", "42P01"),
    ("does not exist", "42P01"),
    ("No such column", "42703"),
    ("already exists", "42P07"),
    ("Unique constraint failed", "23505"),
    ("Foreign key constraint violated", "23503"),
    ("Null constraint violation", "23502"),
    ("lock timeout", "55P03"),
    ("canceling statement due to statement timeout", "57014"),
    ("deadlock detected", "40P01"),
];

/// `(code, where it came from)`: the log's own code first, then the inferred one.
pub fn sqlstate(log: &str) -> Option<(String, String)> {
    let code_after = |marker: &str| {
        let at = log.find(marker)? + marker.len();
        let code: String = log[at..].chars().take(5).collect();
        (code.len() == 5 && code.chars().all(|c| c.is_ascii_alphanumeric())).then_some(code)
    };
    for marker in ["Database error code: ", "SqlState(E", "SQLSTATE ", "SQLSTATE: "] {
        if let Some(code) = code_after(marker) {
            return Some((code, "the log".into()));
        }
    }
    INFERRED.iter().find(|(words, _)| log.contains(words)).map(|(words, code)| {
        (code.to_string(), format!("inferred from the log's \"{words}\" (the driver adapter gives no code)"))
    })
}

/// Failures that may pass when the same statement runs again: lock and statement timeouts,
/// serialization failures and deadlocks, a server shutting down, too many connections, a lost
/// connection.
pub fn transient(code: &str) -> bool {
    matches!(code, "55P03" | "57014" | "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "53300")
        || code.starts_with("08")
}

fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Backends of this database (not ours) whose current query holds one of the statements.
pub async fn running_backends(c: &Client, statements: &[&str]) -> Result<Vec<String>, tokio_postgres::Error> {
    let q = "SELECT pid, coalesce(application_name, ''), coalesce(client_addr::text, 'local'), state, query, \
                    coalesce(now() - query_start, interval '0')::text \
             FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend' \
               AND state IS DISTINCT FROM 'idle'";
    let needles: Vec<String> = statements.iter().map(|s| squash(s)).filter(|s| !s.is_empty()).collect();
    let mut out = Vec::new();
    for r in c.query(q, &[]).await? {
        let query = squash(r.get::<_, String>(4).as_str());
        let prefix = |n: &String| n.chars().take(80).collect::<String>();
        if needles.iter().any(|n| query.contains(&prefix(n))) {
            let (pid, app, addr, state, age): (i32, String, String, String, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(5));
            out.push(format!("pid {pid} ({app}@{addr}, {state} for {age})"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn codes_from_logs() {
        let rust_engine = "Migration name: x\n\nDatabase error code: 42P01\n\nDatabase error:\nERROR: relation \"Users\" does not exist";
        assert_eq!(super::sqlstate(rust_engine).unwrap().0, "42P01");
        let adapter = "external connector error\nNo such table: Users\n   0: sql_schema_connector";
        let (code, from) = super::sqlstate(adapter).unwrap();
        assert_eq!(code, "42P01");
        assert!(from.contains("No such table"), "{from}");
        assert!(super::sqlstate("something else").is_none());
    }
}
