//! The `vhost-net-backend` daemon as a child process of a test: built once per test binary
//! (`cargo build --release`), started with a command line, SIGKILLed and restarted at will, and
//! killed when dropped.

use std::fs;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use crate::e2e::workspace_root;
use crate::process::{Process, ProcessError};

/// The daemon's package and binary.
const PACKAGE: &str = "vhost-net-backend";

/// Errors building or running the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("building the daemon: {0}")]
    Build(String),
    #[error("the daemon does not listen on {socket} after {timeout:?}")]
    NotListening { socket: String, timeout: Duration },
    #[error("the daemon exited while starting")]
    Exited,
    #[error(transparent)]
    Process(#[from] ProcessError),
}

/// The daemon binary, built on first use from the workspace's sources in release mode (the
/// datapath should not be what bounds the guests' traffic).
pub fn binary() -> Result<&'static Path, DaemonError> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(build)
        .as_deref()
        .map_err(|e| DaemonError::Build(e.clone()))
}

fn build() -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = workspace_root();
    let out = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            PACKAGE,
            "--bin",
            PACKAGE,
        ])
        .output()
        .map_err(|e| format!("running cargo: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    Ok(target.join("release").join(PACKAGE))
}

/// A running daemon. Killed when dropped.
#[derive(Debug)]
pub struct Daemon {
    process: Process,
}

impl Daemon {
    /// Starts the daemon with `args` (e.g. `--socket PATH` per port).
    pub fn start<S: AsRef<str>>(args: &[S]) -> Result<Self, DaemonError> {
        let binary = binary()?.display().to_string();
        let args = args.iter().map(|a| a.as_ref().to_string()).collect();
        Ok(Daemon {
            process: Process::start("daemon", &binary, args)?,
        })
    }

    /// Starts the daemon with `args` inside network namespace `netns` (its uplinks and host
    /// interfaces live there; its unix sockets are paths as usual).
    pub fn start_in_netns<S: AsRef<str>>(netns: &str, args: &[S]) -> Result<Self, DaemonError> {
        let binary = binary()?.display().to_string();
        let mut full = vec!["netns".to_string(), "exec".into(), netns.into(), binary];
        full.extend(args.iter().map(|a| a.as_ref().to_string()));
        Ok(Daemon {
            process: Process::start("daemon", "ip", full)?,
        })
    }

    /// Waits until the daemon listens on each of `sockets`.
    pub fn wait_listening(
        &mut self,
        sockets: &[&Path],
        timeout: Duration,
    ) -> Result<(), DaemonError> {
        let deadline = Instant::now() + timeout;
        for socket in sockets {
            while !is_listening_in(self.process.pid(), socket) {
                if !self.process.is_running()? {
                    return Err(DaemonError::Exited);
                }
                if Instant::now() >= deadline {
                    return Err(DaemonError::NotListening {
                        socket: socket.display().to_string(),
                        timeout,
                    });
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }
}

impl Deref for Daemon {
    type Target = Process;

    fn deref(&self) -> &Process {
        &self.process
    }
}

impl DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

/// Whether a unix socket bound to `path` is listening, from /proc/net/unix (a stale socket file
/// left by a killed daemon does not count).
pub fn is_listening(path: &Path) -> bool {
    is_listening_in_table("/proc/net/unix", path)
}

/// [`is_listening`] in the network namespace of process `pid` (unix sockets are listed per
/// namespace).
pub fn is_listening_in(pid: u32, path: &Path) -> bool {
    is_listening_in_table(&format!("/proc/{pid}/net/unix"), path)
}

fn is_listening_in_table(table: &str, path: &Path) -> bool {
    /// `__SO_ACCEPTCON`: the socket listens.
    const ACCEPTCON: &str = "00010000";
    let Ok(table) = fs::read_to_string(table) else {
        return false;
    };
    let path = path.to_string_lossy();
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() >= 8 && fields[3] == ACCEPTCON && fields[7] == path
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn a_listening_socket_is_seen_and_a_stale_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        assert!(!is_listening(&path));
        let listener = UnixListener::bind(&path).unwrap();
        assert!(is_listening(&path));
        drop(listener);
        assert!(path.exists(), "the socket file stays");
        assert!(!is_listening(&path));
    }
}
