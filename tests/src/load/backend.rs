//! The device under test as a child process serving one vhost-user socket per port: the
//! `vhost-net-backend` daemon (ports on one isolated network: the learning bridge), or DPDK
//! testpmd's vhost PMD in io-forward mode (port 2k's frames go out of port 2k+1 and back: no
//! learning, no lookup), the reference device. Its output goes to a log file in its scratch
//! directory; it is stopped when dropped.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::daemon::is_listening;
use crate::testpmd::{eal_args_for_new_instance, TESTPMD};

/// Errors starting a backend.
#[derive(Debug, Error)]
pub enum BackendError {
    /// Its scratch directory, config or log could not be written.
    #[error("setting up {0}")]
    Setup(&'static str, #[source] io::Error),
    /// It could not be started.
    #[error("starting {program}")]
    Spawn {
        /// The program.
        program: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// It exited or did not listen in time.
    #[error("{name} did not listen on {socket} within {timeout:?}; its log:\n{log}")]
    NotReady {
        /// Which backend.
        name: &'static str,
        /// The socket.
        socket: String,
        /// How long it had.
        timeout: Duration,
        /// The end of its log.
        log: String,
    },
}

/// Which device and how it is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Device {
    /// The daemon binary at this path, with `policy` lines (TOML `[[policy]]` tables) added to
    /// its configuration.
    Daemon {
        /// The binary.
        binary: PathBuf,
        /// Extra configuration (policies), appended as is.
        extra_config: String,
        /// Microseconds its workers poll dry queues before they sleep (`--poll-us`; 0: none).
        poll_us: u32,
    },
    /// testpmd, io-forward, one forwarding core; `tso` keeps the TSO features on (`tso=1`).
    Testpmd {
        /// Whether TSO is offered.
        tso: bool,
    },
}

/// Where a backend runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpus {
    /// testpmd's main thread (it sleeps while forwarding).
    pub main: usize,
    /// The datapath: the whole daemon, or testpmd's forwarding core.
    pub datapath: usize,
}

/// A running backend.
#[derive(Debug)]
pub struct Backend {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    sockets: Vec<PathBuf>,
    control: Option<PathBuf>,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl Backend {
    /// Starts `device` with `ports` ports and waits until it listens on every socket. With
    /// `cpus`, the datapath runs on `cpus.datapath` (the whole daemon; testpmd's forwarding
    /// core) and testpmd's main thread, which sleeps, on `cpus.main`.
    pub fn start(
        device: &Device,
        ports: usize,
        cpus: Option<Cpus>,
    ) -> Result<Backend, BackendError> {
        let dir = tempfile::Builder::new()
            .prefix("vnb-bench-")
            .tempdir()
            .map_err(|e| BackendError::Setup("a scratch directory", e))?;
        let sockets: Vec<PathBuf> = (0..ports)
            .map(|i| dir.path().join(format!("p{i}.sock")))
            .collect();
        let log = dir.path().join("backend.log");
        let control =
            matches!(device, Device::Daemon { .. }).then(|| dir.path().join("control.sock"));
        let (name, mut command) = match device {
            Device::Daemon {
                binary,
                extra_config,
                poll_us,
            } => {
                let config = dir.path().join("bench.toml");
                fs::write(&config, daemon_config(&sockets, extra_config))
                    .map_err(|e| BackendError::Setup("the daemon's configuration", e))?;
                let mut c = match cpus {
                    Some(cpus) => {
                        let mut c = Command::new("taskset");
                        c.arg("-c").arg(cpus.datapath.to_string()).arg(binary);
                        c
                    }
                    None => Command::new(binary),
                };
                // Its own control socket and state directory: a bench never meets a daemon
                // that runs on this machine (the default control socket would be in use).
                c.arg("--config")
                    .arg(&config)
                    .arg("--control")
                    .args(&control)
                    .arg("--state-dir")
                    .arg(dir.path().join("state"))
                    .env("RUST_LOG", "warn");
                if *poll_us > 0 {
                    c.arg("--poll-us").arg(poll_us.to_string());
                }
                ("vhost-net-backend", c)
            }
            Device::Testpmd { tso } => {
                let mut c = Command::new(TESTPMD);
                c.args(testpmd_args(&sockets, *tso, cpus));
                ("testpmd", c)
            }
        };
        let out = File::create(&log).map_err(|e| BackendError::Setup("the log", e))?;
        let err = out
            .try_clone()
            .map_err(|e| BackendError::Setup("the log", e))?;
        let program = format!("{command:?}");
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| BackendError::Spawn { program, source })?;
        let stdin = child.stdin.take();
        let mut backend = Backend {
            name,
            child,
            stdin,
            sockets,
            control,
            log,
            dir,
        };
        backend.wait_listening(Duration::from_secs(60))?;
        Ok(backend)
    }

    /// Which backend this is.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its sockets, one per port.
    pub fn sockets(&self) -> &[PathBuf] {
        &self.sockets
    }

    /// The daemon's control socket (testpmd has none).
    pub fn control(&self) -> Option<&Path> {
        self.control.as_deref()
    }

    /// Its scratch directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let mut out = String::new();
        for line in &lines[lines.len().saturating_sub(20)..] {
            let _ = writeln!(out, "  {line}");
        }
        out
    }

    fn wait_listening(&mut self, timeout: Duration) -> Result<(), BackendError> {
        let deadline = Instant::now() + timeout;
        for socket in &self.sockets {
            while !is_listening(socket) {
                let exited = !matches!(self.child.try_wait(), Ok(None));
                if exited || Instant::now() >= deadline {
                    return Err(BackendError::NotReady {
                        name: self.name,
                        socket: socket.display().to_string(),
                        timeout,
                        log: self.log_tail(),
                    });
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // testpmd quits on a line on its standard input and cleans up; the daemon is killed.
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"\n");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.name == "testpmd" && Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The daemon's configuration: one isolated network (a learning bridge) with a port per socket.
fn daemon_config(sockets: &[PathBuf], extra: &str) -> String {
    let mut toml = String::from("[[network]]\nname = \"bench\"\nmode = \"isolated\"\n");
    for s in sockets {
        let _ = write!(
            toml,
            "\n[[port]]\nsocket = \"{}\"\nnetwork = \"bench\"\n",
            s.display()
        );
    }
    toml.push_str(extra);
    toml
}

/// testpmd's command line: no PCI, no hugepages, a vhost port per socket, io-forward on one
/// core, non-interactive (it runs until a line arrives on its standard input).
fn testpmd_args(sockets: &[PathBuf], tso: bool, cpus: Option<Cpus>) -> Vec<String> {
    let cpus = cpus.unwrap_or(Cpus {
        main: 0,
        datapath: 1,
    });
    let mut args = eal_args_for_new_instance(cpus.main, cpus.datapath, 1024);
    for (i, s) in sockets.iter().enumerate() {
        args.push("--vdev".into());
        args.push(format!(
            "net_vhost{i},iface={},queues=1,tso={}",
            s.display(),
            u8::from(tso)
        ));
    }
    args.extend(
        [
            "--",
            "--forward-mode=io",
            "--nb-cores=1",
            "--total-num-mbufs=32768",
        ]
        .map(String::from),
    );
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_config_has_an_isolated_network_and_a_port_per_socket() {
        let sockets = [PathBuf::from("/x/p0.sock"), PathBuf::from("/x/p1.sock")];
        let text = daemon_config(&sockets, "");
        assert!(text.contains("mode = \"isolated\""));
        assert_eq!(text.matches("[[port]]").count(), 2);
        assert!(text.contains("socket = \"/x/p1.sock\""));
    }

    #[test]
    fn testpmd_forwards_on_the_last_cpu_with_a_vhost_port_per_socket() {
        let sockets = [PathBuf::from("/x/p0.sock"), PathBuf::from("/x/p1.sock")];
        let args = testpmd_args(
            &sockets,
            true,
            Some(Cpus {
                main: 0,
                datapath: 1,
            }),
        );
        assert_eq!(args[..2], ["-l", "0,1"]);
        assert!(args.contains(&"net_vhost1,iface=/x/p1.sock,queues=1,tso=1".to_string()));
        assert!(args.contains(&"--forward-mode=io".to_string()));
    }
}
