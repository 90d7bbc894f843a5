//! The control socket: how operators and the CLI drive a running daemon. The server side
//! checks who is asking and survives any input; the client side is what `pgmedic status` and
//! `pgmedic snapshot` use when a daemon answers.

pub mod client;
pub mod protocol;
pub mod server;

pub use protocol::Request;
pub use server::{ControlError, Handler, Peers};
