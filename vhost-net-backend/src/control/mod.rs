//! The control API: a unix socket (JSON lines, permissions 0600 by default) and the views and
//! changes it offers; the CLI subcommands (`show`, `fdb`, `stats`, `queues`, `leases`,
//! `conntrack`, `nat-stats`, `policy ...`, `port add|remove`, `forward ...`, `capture`) are its
//! client.
//!
//! | module | what it holds |
//! |---|---|
//! | [`protocol`] | [`Request`](protocol::Request), [`Response`](protocol::Response) and the view types (`--json` prints them) |
//! | [`server`] | [`Server`](server::Server): the socket on its own event-manager loop |
//! | [`handler`] | carrying out a request against the [`Daemon`](crate::Daemon) |
//! | [`views`] | the views the daemon holds the data of: `show`, `fdb`, `stats`, `queues` |
//! | [`hooks`] | where the gateway, conntrack, the policy host and uplinks plug in their views |
//! | [`client`] | [`Client`](client::Client), blocking, for the CLI |
//! | [`capture_client`] | the client end of `capture`: pcapng to a file or standard output, or a line per frame |
//! | [`render`] | the views as text tables |

pub mod capture_client;
pub mod client;
pub mod handler;
pub mod hooks;
pub mod protocol;
pub mod render;
pub mod server;
pub mod views;

pub use server::{default_socket_path, Server};
