//! The two socket roles of a port: listen (and accept again after every disconnect), or
//! connect to a socket the VMM listens on (and reconnect with backoff when it goes away).

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{debug, info, warn};
use vmm_sys_util::eventfd::EventFd;

use crate::config::SocketRole;
use crate::sys::{self, Readiness};

/// First wait before reconnecting (connect role).
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest wait between reconnect attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Errors setting up a socket.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another process serves the path.
    #[error("{0} is in use by another process")]
    InUse(PathBuf),
    /// The path exists and is not a socket.
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// Removing a stale socket failed.
    #[error("removing the stale socket {path} failed")]
    RemoveStale {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Binding failed.
    #[error("binding {path} failed")]
    Bind {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Where a port's connections come from.
#[derive(Debug)]
pub struct Endpoint {
    path: PathBuf,
    listener: Option<UnixListener>,
    backoff: Duration,
}

impl Endpoint {
    /// Sets up the socket for `role`: a listener bound to `path` (replacing a stale socket
    /// left by a crashed daemon), or nothing yet for the connect role.
    pub fn new(path: &Path, role: SocketRole) -> Result<Self, SocketError> {
        let listener = match role {
            SocketRole::Listen => Some(bind(path)?),
            SocketRole::Connect => None,
        };
        Ok(Endpoint {
            path: path.to_path_buf(),
            listener,
            backoff: BACKOFF_MIN,
        })
    }

    /// Waits for the next connection; `None` once `stop` is signalled.
    pub fn next(&mut self, stop: &EventFd) -> Option<UnixStream> {
        match &self.listener {
            Some(listener) => accept(listener, &self.path, stop),
            None => self.connect(stop),
        }
    }

    fn connect(&mut self, stop: &EventFd) -> Option<UnixStream> {
        let mut logged = false;
        loop {
            match UnixStream::connect(&self.path) {
                Ok(stream) => {
                    info!(path = %self.path.display(), "connected to the frontend");
                    self.backoff = BACKOFF_MIN;
                    return Some(stream);
                }
                Err(e) if !logged => {
                    info!(path = %self.path.display(), error = %e, "frontend not there yet; retrying");
                    logged = true;
                }
                Err(e) => debug!(path = %self.path.display(), error = %e, "connect failed"),
            }
            if !sleep_unless_stopped(stop, self.backoff) {
                return None;
            }
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Waits a moment before the next connection attempt after a disconnect (connect role),
    /// so that a frontend that drops connections at once is not hammered. `false` if stopped.
    pub fn pause_after_disconnect(&self, stop: &EventFd) -> bool {
        self.listener.is_some() || sleep_unless_stopped(stop, BACKOFF_MIN)
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if self.listener.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn sleep_unless_stopped(stop: &EventFd, d: Duration) -> bool {
    // Waiting on `stop` alone: the same fd twice, readable only when stopped.
    let ms = i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
    !matches!(
        sys::wait_readable(stop, stop, ms),
        Ok(Readiness::Stopped) | Err(_)
    )
}

fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(SocketError::NotASocket(path.to_path_buf()));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(SocketError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(|source| SocketError::RemoveStale {
            path: path.to_path_buf(),
            source,
        })?;
    }
    UnixListener::bind(path).map_err(|source| SocketError::Bind {
        path: path.to_path_buf(),
        source,
    })
}

fn accept(listener: &UnixListener, path: &Path, stop: &EventFd) -> Option<UnixStream> {
    loop {
        match sys::wait_readable(listener, stop, -1) {
            Ok(Readiness::Stopped) => return None,
            Ok(_) => {}
            Err(e) => {
                warn!(path = %path.display(), error = %e, "waiting for a connection failed");
                return None;
            }
        }
        match listener.accept() {
            Ok((stream, _)) => {
                info!(path = %path.display(), "frontend connected");
                return Some(stream);
            }
            Err(e) => warn!(path = %path.display(), error = %e, "accept failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;
    use vmm_sys_util::tempdir::TempDir;

    #[test]
    fn listen_accepts_again_and_replaces_stale_sockets() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("vm.sock");
        // A stale socket file (no one listening).
        drop(UnixListener::bind(&path).unwrap());
        let stop = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut ep = Endpoint::new(&path, SocketRole::Listen).unwrap();
        assert!(matches!(
            Endpoint::new(&path, SocketRole::Listen),
            Err(SocketError::InUse(_))
        ));
        for _ in 0..2 {
            let client = UnixStream::connect(&path).unwrap();
            let served = ep.next(&stop).unwrap();
            drop((client, served));
        }
        stop.write(1).unwrap();
        assert!(ep.next(&stop).is_none());
        drop(ep);
        assert!(!path.exists(), "the socket is removed when the port goes");
    }

    #[test]
    fn not_a_socket_is_refused() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("file");
        std::fs::write(&path, b"x").unwrap();
        assert!(matches!(
            Endpoint::new(&path, SocketRole::Listen),
            Err(SocketError::NotASocket(_))
        ));
    }

    #[test]
    fn connect_retries_until_the_frontend_listens() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("qemu.sock");
        let stop = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut ep = Endpoint::new(&path, SocketRole::Connect).unwrap();
        let p = path.clone();
        let server = thread::spawn(move || {
            thread::sleep(Duration::from_millis(200));
            let l = UnixListener::bind(&p).unwrap();
            l.accept().unwrap()
        });
        let stream = ep.next(&stop).unwrap();
        let (peer, _) = server.join().unwrap();
        drop((stream, peer));
        // Stopped while retrying.
        std::fs::remove_file(&path).unwrap();
        stop.write(1).unwrap();
        assert!(ep.next(&stop).is_none());
    }
}
