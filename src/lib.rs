//! pgmedic: compressed pg_dump snapshots streamed to S3-compatible or local storage, verified
//! restores, and (in later modules) migration watching and repair for PostgreSQL hosts.
//!
//! The binary is a thin shell over [`cli::main`]; the modules below are the architecture:
//! `config` (one validated configuration), `storage` (local and S3 backends), `snapshot`
//! (taking, listing, pruning), `restore` (restore and verify), `pg` (PostgreSQL access),
//! `daemon` (schedules, workers, signals, metrics) and `control` (its socket, both ends),
//! `watch` and `repair` (migration tables and playbooks), `audit`, `fleet` (the heartbeats of
//! every installation sharing the storage), `web` (the read-only status pages the daemon
//! serves), and two leaves: `process` (children in their own process group) and `redact`
//! (secrets out of text).

pub mod audit;
pub mod cli;
pub mod config;
pub mod control;
pub mod crypt;
pub mod daemon;
pub mod diagnose;
pub mod fleet;
pub mod lint;
pub mod pg;
pub mod process;
pub mod redact;
pub mod rehearse;
pub mod repair;
pub mod restore;
pub mod scratch;
pub mod snapshot;
pub mod sql;
pub mod storage;
pub mod units;
pub mod watch;
pub mod web;

pub use config::Config;
pub use restore::{RestoreOptions, Restorer};
pub use snapshot::{Manifest, Request, Snapshotter};
