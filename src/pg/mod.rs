//! Everything that talks to PostgreSQL: the SQL client (connections, the few catalogue queries
//! pgmedic needs, advisory locks) and the client tools as typed processes.

mod client;
pub mod locate;
pub mod scratch;
mod tls;
mod tools;

pub use client::{connect, error_text, quote_ident, DbError, Session};
pub use tools::{PgTools, Pipes, ToolError};
