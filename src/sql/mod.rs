//! SQL understanding, shared by `diagnose`, the `finish` and `undo` steps (and later `lint`):
//! migration files parsed with PostgreSQL's own parser into statements and their catalog
//! effects, each effect judged against the live catalog, idempotent and inverse rewrites, schema
//! dumps compared object by object, what a migration names (`describe`), and a whole schema as
//! the catalog describes it (`shape`), which the replay and the repairs' proofs compare, and which
//! tables' rows statements may change (`writes`), which scopes a pre-repair snapshot.

pub mod catalog;
pub mod describe;
pub mod names;
pub mod parse;
pub mod refs;
pub mod rewrite;
pub mod schema;
pub mod shape;
pub mod writes;

pub use catalog::{Judged, Verdict};
pub use names::ObjName;
pub use parse::{Effect, Statement};
pub use schema::{Baseline, Change};

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("PostgreSQL's parser rejects it{}: {message}", line.map(|l| format!(" at line {l}")).unwrap_or_default())]
    Parse { message: String, line: Option<usize> },
}
