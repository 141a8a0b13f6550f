//! The host sockets a NAT network opens and closes while it runs (DNS queries, flows, port
//! forwards), as one event-manager subscriber sees them: each socket is watched under a
//! [`Token`] naming what it belongs to. Sockets are opened while other subscribers run, so
//! registrations wait here and are applied with that subscriber's `EventOps` after each round
//! of events; a closed socket stays open until it is unwatched, so its descriptor number is not
//! reused while epoll still knows it.

use std::os::fd::{AsRawFd, RawFd};

use event_manager::{EventOps, EventSet, Events};
use tracing::warn;

/// What a watched socket belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A DNS query to an upstream resolver.
    Dns,
    /// A TCP flow's host socket.
    Tcp,
    /// A UDP flow's host socket.
    Udp,
    /// An ICMP echo flow's ping socket.
    Icmp,
    /// A port forward's listening socket.
    Forward,
}

impl Kind {
    const ALL: [Kind; 5] = [Kind::Dns, Kind::Tcp, Kind::Udp, Kind::Icmp, Kind::Forward];
}

/// A watched socket's kind and its index among those of its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    /// What it belongs to.
    pub kind: Kind,
    /// Its slot.
    pub index: u32,
}

const INDEX_BITS: u32 = 28;

impl Token {
    /// The token of slot `index` (below 2^28) of `kind`.
    pub fn new(kind: Kind, index: usize) -> Self {
        Token {
            kind,
            index: index as u32 & ((1 << INDEX_BITS) - 1),
        }
    }

    fn encode(self) -> u32 {
        let kind = Kind::ALL.iter().position(|&k| k == self.kind).unwrap_or(0) as u32;
        kind << INDEX_BITS | self.index
    }

    /// The token carried as epoll data, if it is one.
    pub fn decode(data: u32) -> Option<Self> {
        let kind = *Kind::ALL.get((data >> INDEX_BITS) as usize)?;
        Some(Token {
            kind,
            index: data & ((1 << INDEX_BITS) - 1),
        })
    }
}

/// A closed socket waiting to be unwatched.
type Retired = Box<dyn AsRawFd + Send>;

/// Pending changes to the watched sockets.
#[derive(Default)]
pub struct Registry {
    add: Vec<(RawFd, Token)>,
    retired: Vec<Retired>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("add", &self.add)
            .field("retired", &self.retired.len())
            .finish()
    }
}

impl Registry {
    /// Watches `fd` (edge-triggered, readable and writable) under `token`. The caller keeps the
    /// socket open until it hands it to [`Registry::retire`].
    pub fn watch(&mut self, fd: &impl AsRawFd, token: Token) {
        self.add.push((fd.as_raw_fd(), token));
    }

    /// Unwatches a socket, then closes it.
    pub fn retire(&mut self, socket: impl AsRawFd + Send + 'static) {
        self.retired.push(Box::new(socket));
    }

    /// Applies the pending changes with the socket subscriber's `ops`.
    pub fn apply(&mut self, ops: &mut EventOps) {
        let set = EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED;
        for (fd, token) in self.add.drain(..) {
            if let Err(e) = ops.add(Events::with_data_raw(fd, token.encode(), set)) {
                warn!(error = ?e, ?token, "a host socket cannot be watched");
            }
        }
        for socket in self.retired.drain(..) {
            // Fails for a socket that was never watched; it closes all the same.
            let _ = ops.remove(Events::empty_raw(socket.as_raw_fd()));
        }
    }

    /// Whether changes are pending.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.retired.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for kind in Kind::ALL {
            for index in [0, 1, 12345, (1 << INDEX_BITS) - 1] {
                let t = Token::new(kind, index);
                assert_eq!(Token::decode(t.encode()), Some(t));
            }
        }
        assert_eq!(Token::decode(u32::MAX), None);
    }
}
