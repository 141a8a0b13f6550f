//! DPDK testpmd, the program and its EAL options, shared by the load generator's reference
//! backend ([`crate::load::backend`], testpmd's vhost PMD) and by [`VirtioUser`]: testpmd as a
//! vhost-user *frontend*, one virtio-user port (DPDK's `net_virtio_user`) on a socket the
//! daemon listens on, or one testpmd listens on (`server=1`, the daemon connecting), forwarding
//! in a chosen mode and printing its port statistics every second.
//!
//! No hugepages: `--no-huge` memory is anonymous memfd-backed memory, which virtio-user passes
//! to the backend by file descriptor like hugepage files.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::process::{Process, ProcessError};

/// Where Debian's dpdk-dev installs testpmd.
pub const TESTPMD: &str = "dpdk-testpmd";

/// Whether testpmd is installed here (it can be started; `--help` exits at once).
pub fn installed() -> bool {
    std::process::Command::new(TESTPMD)
        .arg("--help")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}

/// Distinguishes testpmd instances of one process (DPDK's runtime directory).
static INSTANCE: AtomicUsize = AtomicUsize::new(0);

/// A file prefix (DPDK's runtime directory name) no other testpmd on this machine uses.
fn file_prefix() -> String {
    let instance = INSTANCE.fetch_add(1, Ordering::Relaxed);
    format!("vnb-{}-{instance}", std::process::id())
}

/// DPDK's runtime directory for `prefix` (files it leaves when killed).
fn runtime_dir(prefix: &str) -> PathBuf {
    let base = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !is_root() => PathBuf::from(dir),
        _ => PathBuf::from("/var/run"),
    };
    base.join("dpdk").join(prefix)
}

fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
}

/// EAL options: main lcore `main`, forwarding lcore `datapath`, no PCI, no hugepages, `mem_mb`
/// of memory, errors only, and `prefix` as the runtime directory name.
fn eal_args(main: usize, datapath: usize, mem_mb: u32, prefix: &str) -> Vec<String> {
    vec![
        "-l".to_string(),
        format!("{main},{datapath}"),
        "--no-pci".into(),
        "--no-huge".into(),
        "-m".into(),
        mem_mb.to_string(),
        "--file-prefix".into(),
        prefix.to_string(),
        "--log-level".into(),
        "lib.eal:error".into(),
    ]
}

/// EAL options for a new testpmd instance (see [`eal_args`]).
pub fn eal_args_for_new_instance(main: usize, datapath: usize, mem_mb: u32) -> Vec<String> {
    eal_args(main, datapath, mem_mb, &file_prefix())
}

/// Errors running testpmd as a frontend.
#[derive(Debug, Error)]
pub enum TestpmdError {
    /// It could not be started, or it exited.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// Its counters did not get there in time.
    #[error("testpmd's port counters stayed at {last:?} for {timeout:?}")]
    Counters {
        /// The last counters it printed.
        last: Option<PortCounters>,
        /// How long it had.
        timeout: Duration,
    },
}

/// Who listens on the vhost-user socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The daemon listens; testpmd connects.
    Daemon,
    /// testpmd listens (`server=1`); the daemon connects.
    Testpmd,
}

/// The counters of testpmd's port 0, from its periodic statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortCounters {
    /// Frames it received from the backend.
    pub rx_packets: u64,
    /// Frames it sent to the backend.
    pub tx_packets: u64,
}

/// testpmd with one virtio-user port.
#[derive(Debug)]
pub struct VirtioUser {
    process: Process,
    prefix: String,
}

impl VirtioUser {
    /// Starts testpmd with a virtio-user port with address `mac` on `socket`, forwarding in
    /// `mode` (`macswap`, `rxonly`, ...), and waits until it forwards.
    pub fn start(
        socket: &Path,
        listener: Listener,
        mac: [u8; 6],
        mode: &str,
    ) -> Result<VirtioUser, TestpmdError> {
        let prefix = file_prefix();
        let mut args = eal_args(0, 1, 256, &prefix);
        let mac = mac.map(|b| format!("{b:02x}")).join(":");
        let server = u8::from(listener == Listener::Testpmd);
        args.push("--vdev".into());
        args.push(format!(
            "net_virtio_user0,path={},queues=1,mac={mac},server={server}",
            socket.display()
        ));
        args.extend([
            "--".to_string(),
            format!("--forward-mode={mode}"),
            "--nb-cores=1".into(),
            "--total-num-mbufs=4096".into(),
            "--stats-period=1".into(),
        ]);
        let process = Process::start("testpmd", TESTPMD, args)?;
        let mut pmd = VirtioUser { process, prefix };
        // Forwarding has started once the first statistics are printed.
        pmd.process
            .expect("NIC statistics for port 0", Duration::from_secs(60))?;
        Ok(pmd)
    }

    /// The counters it printed last.
    pub fn counters(&self) -> Option<PortCounters> {
        let last = |prefix: &str| {
            let line = self.process.lines_with(prefix).pop()?;
            line[prefix.len()..].split_whitespace().next()?.parse().ok()
        };
        Some(PortCounters {
            rx_packets: last("RX-packets:")?,
            tx_packets: last("TX-packets:")?,
        })
    }

    /// Waits until its counters satisfy `done`; returns them.
    pub fn wait_counters(
        &self,
        timeout: Duration,
        done: impl Fn(&PortCounters) -> bool,
    ) -> Result<PortCounters, TestpmdError> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.counters();
            match last {
                Some(c) if done(&c) => return Ok(c),
                _ if Instant::now() >= deadline => {
                    return Err(TestpmdError::Counters { last, timeout });
                }
                _ => thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

impl Drop for VirtioUser {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = fs::remove_dir_all(runtime_dir(&self.prefix));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eal_options_have_no_pci_no_hugepages_and_the_prefix() {
        let args = eal_args(0, 1, 256, "p");
        assert_eq!(args[..2], ["-l", "0,1"]);
        for a in ["--no-pci", "--no-huge"] {
            assert!(args.contains(&a.to_string()));
        }
        assert!(args.windows(2).any(|w| w == ["--file-prefix", "p"]));
        assert_ne!(file_prefix(), file_prefix(), "one prefix per instance");
    }
}
