//! QEMU 7.2 TCG guests for end-to-end tests.
//!
//! [`GuestImage`] is what `scripts/build-guest` built: a Debian kernel and a busybox initramfs
//! whose /init prints `GUEST ` lines on the serial console and runs `/test.sh` when there is one.
//! [`GuestSpec`] describes one guest: its vhost-user NICs ([`NicSpec`]: socket, which side
//! listens, feature knobs, queue pairs) and its test script. [`Guest`] is the running QEMU, a
//! [`Process`]: wait for serial console lines, kill it, restart it; killed when dropped.
//!
//! Every guest runs with what a vhost-user NIC needs under TCG: guest memory in a shared memfd
//! bound to the guest by `-numa node,memdev=`, and `vectors=0` on every virtio-net-pci (QEMU 7.2
//! crashes under TCG when a vhost-user NIC starts with MSI-X vectors).

use std::io;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::e2e::workspace_root;
use crate::initramfs::{self, InitramfsError};
use crate::process::{Process, ProcessError};

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";

/// Errors running guests.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("running scripts/build-guest --print-dir")]
    LocateImage(#[source] io::Error),
    #[error("no guest image in {dir} (vmlinuz and initrd.gz)")]
    NoImage { dir: String },
    #[error("preparing the initramfs of guest {guest}")]
    Initramfs {
        guest: String,
        #[source]
        source: InitramfsError,
    },
    #[error(transparent)]
    Process(#[from] ProcessError),
}

/// The kernel and initramfs built by `scripts/build-guest`.
#[derive(Debug, Clone)]
pub struct GuestImage {
    kernel: PathBuf,
    initrd: PathBuf,
}

impl GuestImage {
    /// The image for the current `scripts/build-guest` (its output directory is keyed by the
    /// script's hash); an error when it has not been built.
    pub fn locate() -> Result<Self, QemuError> {
        let root = workspace_root();
        let out = Command::new(root.join("scripts/build-guest"))
            .arg("--print-dir")
            .output()
            .map_err(QemuError::LocateImage)?;
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let image = GuestImage {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.gz"),
        };
        if !out.status.success() || !image.kernel.is_file() || !image.initrd.is_file() {
            return Err(QemuError::NoImage {
                dir: dir.display().to_string(),
            });
        }
        Ok(image)
    }
}

/// Which side of a vhost-user socket listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketRole {
    /// The backend listens; QEMU connects and retries every second (`reconnect=1`).
    BackendListens,
    /// QEMU listens (`server=on,wait=off`); the backend connects.
    QemuListens,
}

/// A virtio-net feature the guest can be denied (a `virtio-net-pci` property set to `off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    MrgRxbuf,
    /// The device checksums what the guest sends (`csum`; TSO needs it).
    Csum,
    /// The guest accepts partially checksummed frames (`guest_csum`).
    GuestCsum,
    HostTso4,
    GuestTso4,
    HostTso6,
    GuestTso6,
}

impl Feature {
    fn property(self) -> &'static str {
        match self {
            Feature::MrgRxbuf => "mrg_rxbuf",
            Feature::Csum => "csum",
            Feature::GuestCsum => "guest_csum",
            Feature::HostTso4 => "host_tso4",
            Feature::GuestTso4 => "guest_tso4",
            Feature::HostTso6 => "host_tso6",
            Feature::GuestTso6 => "guest_tso6",
        }
    }
}

/// One vhost-user virtio-net NIC of a guest.
#[derive(Debug, Clone)]
pub struct NicSpec {
    pub socket: PathBuf,
    pub role: SocketRole,
    pub mac: String,
    /// Queue pairs; more than one turns `mq=on`.
    pub queue_pairs: u16,
    pub features_off: Vec<Feature>,
    /// `host_mtu`: the MTU the device reports to the guest.
    pub host_mtu: Option<u16>,
}

impl NicSpec {
    /// A NIC on `socket` with MAC `mac`, the backend listening, one queue pair, all features.
    pub fn new(socket: impl Into<PathBuf>, mac: &str) -> Self {
        NicSpec {
            socket: socket.into(),
            role: SocketRole::BackendListens,
            mac: mac.to_string(),
            queue_pairs: 1,
            features_off: Vec::new(),
            host_mtu: None,
        }
    }

    pub fn role(mut self, role: SocketRole) -> Self {
        self.role = role;
        self
    }

    pub fn queue_pairs(mut self, pairs: u16) -> Self {
        self.queue_pairs = pairs;
        self
    }

    pub fn without(mut self, features: &[Feature]) -> Self {
        self.features_off.extend_from_slice(features);
        self
    }

    pub fn host_mtu(mut self, mtu: u16) -> Self {
        self.host_mtu = Some(mtu);
        self
    }
}

/// One guest: its name (used in messages and file names), NICs and test script.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    pub name: String,
    pub nics: Vec<NicSpec>,
    /// The content of /test.sh; without it the guest prints `GUEST UP` and powers off.
    pub script: Option<String>,
    pub memory_mib: u32,
}

impl GuestSpec {
    /// A guest without NICs or script, with 256 MiB of memory.
    pub fn new(name: &str) -> Self {
        GuestSpec {
            name: name.to_string(),
            nics: Vec::new(),
            script: None,
            memory_mib: 256,
        }
    }

    pub fn nic(mut self, nic: NicSpec) -> Self {
        self.nics.push(nic);
        self
    }

    pub fn script(mut self, script: &str) -> Self {
        self.script = Some(script.to_string());
        self
    }
}

/// QEMU's command line for `spec`, booting `kernel` with `initrd`.
fn qemu_args(spec: &GuestSpec, kernel: &Path, initrd: &Path) -> Vec<String> {
    let mem = spec.memory_mib;
    let mut args: Vec<String> = [
        "-nodefaults",
        "-no-user-config",
        // One vCPU, but room for two: QEMU before 8.1 leaves out the guest's memory barriers
        // when the machine can only ever have one vCPU (commit c914d46, "Do not elide memory
        // barriers for !CF_PARALLEL in system mode"). The driver's "publish avail->idx, barrier,
        // read avail_event" then races the daemon's "write avail_event, barrier, read
        // avail->idx" on another host CPU, both miss, and the queue waits for a kick that never
        // comes. With maxcpus=2 multi-threaded TCG emits the barriers.
        "-accel",
        "tcg,thread=multi",
        "-smp",
        "1,maxcpus=2",
        "-m",
        &format!("{mem}M"),
        "-object",
        &format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
        "-numa",
        "node,memdev=mem",
        "-kernel",
        &kernel.display().to_string(),
        "-initrd",
        &initrd.display().to_string(),
        "-append",
        "console=ttyS0 quiet panic=-1 no_timer_check",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
    ]
    .map(String::from)
    .to_vec();
    if spec.nics.is_empty() {
        args.extend(["-nic", "none"].map(String::from));
    }
    for (i, nic) in spec.nics.iter().enumerate() {
        let socket = nic.socket.display();
        let chardev = match nic.role {
            SocketRole::BackendListens => format!("socket,id=chr{i},path={socket},reconnect=1"),
            SocketRole::QemuListens => format!("socket,id=chr{i},path={socket},server=on,wait=off"),
        };
        let mut netdev = format!("vhost-user,id=net{i},chardev=chr{i}");
        let mut device = format!("virtio-net-pci,netdev=net{i},mac={},vectors=0", nic.mac);
        if nic.queue_pairs > 1 {
            netdev.push_str(&format!(",queues={}", nic.queue_pairs));
            device.push_str(",mq=on");
        }
        for feature in &nic.features_off {
            device.push_str(&format!(",{}=off", feature.property()));
        }
        if let Some(mtu) = nic.host_mtu {
            device.push_str(&format!(",host_mtu={mtu}"));
        }
        args.extend([
            "-chardev".into(),
            chardev,
            "-netdev".into(),
            netdev,
            "-device".into(),
            device,
        ]);
    }
    args
}

/// A running QEMU guest: a [`Process`] whose stdout is the serial console. Killed when
/// dropped; [`Process::restart`] boots it again from scratch.
#[derive(Debug)]
pub struct Guest {
    process: Process,
}

impl Guest {
    /// Boots `spec` from `image`; `dir` holds the guest's initramfs copy.
    pub fn start(image: &GuestImage, spec: &GuestSpec, dir: &Path) -> Result<Self, QemuError> {
        let initrd = match &spec.script {
            None => image.initrd.clone(),
            Some(script) => {
                let path = dir.join(format!("{}-initrd", spec.name));
                initramfs::write_with_script(&image.initrd, script, &path).map_err(|source| {
                    QemuError::Initramfs {
                        guest: spec.name.clone(),
                        source,
                    }
                })?;
                path
            }
        };
        let process = Process::start(&spec.name, QEMU, qemu_args(spec, &image.kernel, &initrd))?;
        Ok(Guest { process })
    }
}

impl Deref for Guest {
    type Target = Process;

    fn deref(&self) -> &Process {
        &self.process
    }
}

impl DerefMut for Guest {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg_after<'a>(args: &'a [String], flag: &str, nth: usize) -> &'a str {
        let mut found = args
            .iter()
            .enumerate()
            .filter(|(_, a)| *a == flag)
            .map(|(i, _)| &args[i + 1]);
        found
            .nth(nth)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no {flag} #{nth} in {args:?}"))
    }

    #[test]
    fn guest_without_nics_has_no_network_and_shared_memory() {
        let args = qemu_args(&GuestSpec::new("vm0"), Path::new("/k"), Path::new("/i"));
        assert_eq!(arg_after(&args, "-nic", 0), "none");
        assert_eq!(arg_after(&args, "-accel", 0), "tcg,thread=multi");
        assert_eq!(arg_after(&args, "-smp", 0), "1,maxcpus=2");
        assert_eq!(
            arg_after(&args, "-object", 0),
            "memory-backend-memfd,id=mem,size=256M,share=on"
        );
        assert_eq!(arg_after(&args, "-numa", 0), "node,memdev=mem");
        assert_eq!(arg_after(&args, "-m", 0), "256M");
        assert_eq!(arg_after(&args, "-kernel", 0), "/k");
        assert_eq!(arg_after(&args, "-initrd", 0), "/i");
        assert!(!args.iter().any(|a| a == "-netdev"));
    }

    #[test]
    fn nics_in_both_roles_with_variants() {
        let spec = GuestSpec::new("vm0")
            .nic(NicSpec::new("/s/a.sock", "52:54:00:00:00:01"))
            .nic(
                NicSpec::new("/s/b.sock", "52:54:00:00:00:02")
                    .role(SocketRole::QemuListens)
                    .queue_pairs(2)
                    .without(&[Feature::MrgRxbuf, Feature::Csum, Feature::GuestTso4])
                    .host_mtu(9000),
            );
        let args = qemu_args(&spec, Path::new("/k"), Path::new("/i"));
        assert!(!args.iter().any(|a| a == "-nic"));
        let nic = |i| ["-chardev", "-netdev", "-device"].map(|flag| arg_after(&args, flag, i));
        assert_eq!(
            nic(0),
            [
                "socket,id=chr0,path=/s/a.sock,reconnect=1",
                "vhost-user,id=net0,chardev=chr0",
                "virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01,vectors=0",
            ]
        );
        assert_eq!(
            nic(1),
            [
                "socket,id=chr1,path=/s/b.sock,server=on,wait=off",
                "vhost-user,id=net1,chardev=chr1,queues=2",
                "virtio-net-pci,netdev=net1,mac=52:54:00:00:00:02,vectors=0,mq=on,\
                 mrg_rxbuf=off,csum=off,guest_tso4=off,host_mtu=9000",
            ]
        );
    }
}
