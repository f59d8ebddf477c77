//! `halyard-server`: the network side of the broker. Listeners accept TCP connections; each connection is one
//! task (`connection`) that drives a sans-IO protocol state machine (`protocol`), which calls into
//! `halyard-core` for sessions, routing and retained messages.
//!
//! Not here: broker state (core), packet bytes (codec), configuration loading (core), the CLI (binary).

mod connection;
pub mod io;
mod listener;
pub mod protocol;

pub use listener::{start, Server, ServerError};
