//! The source's roles on a private cluster: each created with the source's attributes
//! (superuser, createdb, createrole, replication, bypassrls, inherit) and memberships, so that a
//! snapshot's `OWNER TO`, `GRANT` and policies restore as they are and a deploy that creates an
//! extension or grants to a group behaves as it would at home. None can log in except the one
//! a rehearsal's deploy connects as; none has the source's password.

use tokio_postgres::Client;

use super::ScratchError;
use crate::pg::{self, DbError, Session};

const ROLES: &str =
    "SELECT rolname::text, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls \
    FROM pg_roles WHERE rolname !~ '^pg_' ORDER BY 1";
const MEMBERS: &str = "SELECT r.rolname::text, m.rolname::text FROM pg_auth_members a \
    JOIN pg_roles r ON r.oid = a.roleid JOIN pg_roles m ON m.oid = a.member \
    WHERE r.rolname !~ '^pg_' AND m.rolname !~ '^pg_' ORDER BY 1, 2";

fn source_err(what: &'static str, e: tokio_postgres::Error) -> ScratchError {
    ScratchError::Db(DbError::Query { target: "the source".into(), what, message: pg::error_text(&e) })
}

/// Creates on `admin` (a private cluster) each role of `source` it lacks, then the memberships.
pub async fn adopt(admin: &Session, source: &Client) -> Result<(), ScratchError> {
    let roles = source.query(ROLES, &[]).await.map_err(|e| source_err("list roles", e))?;
    let members = source.query(MEMBERS, &[]).await.map_err(|e| source_err("list role memberships", e))?;
    let have: Vec<String> = admin
        .client()
        .query("SELECT rolname::text FROM pg_roles", &[])
        .await
        .map_err(|e| admin.err("list the scratch server's roles", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut sql = String::new();
    for r in &roles {
        let name: String = r.get(0);
        if have.contains(&name) {
            continue;
        }
        let flag = |i: usize, yes: &str, no: &str| {
            if r.get::<_, bool>(i) {
                yes.to_string()
            } else {
                no.to_string()
            }
        };
        sql += &format!(
            "CREATE ROLE {} NOLOGIN {} {} {} {} {} {};\n",
            pg::quote_ident(&name),
            flag(1, "SUPERUSER", "NOSUPERUSER"),
            flag(2, "INHERIT", "NOINHERIT"),
            flag(3, "CREATEROLE", "NOCREATEROLE"),
            flag(4, "CREATEDB", "NOCREATEDB"),
            flag(5, "REPLICATION", "NOREPLICATION"),
            flag(6, "BYPASSRLS", "NOBYPASSRLS"),
        );
    }
    if !sql.is_empty() {
        admin.client().batch_execute(&sql).await.map_err(|e| admin.err("create the source's roles", e))?;
    }
    for m in &members {
        let (role, member): (String, String) = (m.get(0), m.get(1));
        let grant = format!("GRANT {} TO {}", pg::quote_ident(&role), pg::quote_ident(&member));
        // One that already exists (the cluster's own, a second run) is not a failure.
        if let Err(e) = admin.client().batch_execute(&grant).await {
            tracing::debug!(role = %role, member = %member, error = %pg::error_text(&e), "membership not copied to the scratch server");
        }
    }
    Ok(())
}

/// Lets `user` log in (over the socket, which trusts; over the loopback port with `password`).
pub async fn allow_login(admin: &Session, user: &str, password: Option<&str>) -> Result<(), ScratchError> {
    let exists = admin
        .client()
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&user])
        .await
        .map_err(|e| admin.err("look up the deploy's role", e))?
        .is_some();
    let q = pg::quote_ident(user);
    let mut sql =
        if exists { format!("ALTER ROLE {q} LOGIN") } else { format!("CREATE ROLE {q} LOGIN SUPERUSER") };
    if let Some(pw) = password {
        sql += &format!(" PASSWORD {}", crate::sql::names::literal(pw));
    }
    admin.client().batch_execute(&sql).await.map_err(|e| admin.err("let the deploy's role log in", e))?;
    Ok(())
}
