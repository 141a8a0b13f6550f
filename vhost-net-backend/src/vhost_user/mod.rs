//! The vhost-user protocol layer, owned by this project (see docs/decisions.md): framing on
//! the `vhost` crate's message types, a per-connection dispatcher, and the memory table.

pub mod device;
pub mod memory;
pub mod server;
pub mod session;
pub mod wire;
