//! Serving one connection: read a request, dispatch it, write the reply, until the frontend
//! goes away, breaks the protocol, or the port is stopped.

use std::os::unix::net::UnixStream;

use tracing::{info, warn};
use vmm_sys_util::eventfd::EventFd;

use super::device::Device;
use super::session::{Response, Session};
use super::wire::{self, WireError};
use crate::sys::{self, Readiness};

/// Why a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The frontend closed it or broke the protocol: wait for (or make) the next connection.
    Disconnected,
    /// `stop` was signalled.
    Stopped,
}

/// Serves `stream` until it ends. The device is reset when it does (fresh state for the next
/// connection).
pub fn serve(stream: &UnixStream, device: &Device, stop: &EventFd) -> End {
    let mut session = Session::new(device);
    loop {
        match sys::wait_readable(stream, stop, -1) {
            Ok(Readiness::Stopped) => return End::Stopped,
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "waiting on the vhost-user socket failed");
                return End::Disconnected;
            }
        }
        let msg = match wire::read_message(stream) {
            Ok(msg) => msg,
            Err(WireError::Disconnected) => {
                info!("frontend disconnected");
                return End::Disconnected;
            }
            Err(e) => {
                warn!(error = %e, "closing the vhost-user connection");
                return End::Disconnected;
            }
        };
        let header = msg.header;
        match session.handle(msg) {
            Ok(Response::None) => {}
            Ok(Response::Reply(h, body)) => {
                if let Err(e) = wire::write_message(stream, &h, &body) {
                    warn!(error = %e, request = header.request, "replying failed");
                    return End::Disconnected;
                }
            }
            Err(e) => {
                warn!(error = %e, "closing the vhost-user connection");
                return End::Disconnected;
            }
        }
    }
}
