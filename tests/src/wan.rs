//! The "wan" of NAT tests: a network namespace the test creates, reached from the host (or
//! from the daemon's own namespace) through a veth pair (that side routes to it), holding the services guests reach through a NAT
//! network's gateway: an HTTP server (busybox httpd), a UDP echo service and a TCP sink that
//! checksums what it gets (socat), an iperf3 server, and dnsmasq answering the test names.
//! Nothing leaves the namespaces and loopback. The ping sockets of the side the wan is reached
//! from are allowed for the test (`net.ipv4.ping_group_range`); the host's setting is set back
//! when the wan is dropped.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::netns::{run, Netns, NetnsError, Veth};
use crate::process::{Process, ProcessError};

/// The address of the veth pair's end on the host's (or the daemon's namespace's) side.
pub const HOST_ADDR: &str = "198.51.100.1";
/// The wan host's address.
pub const WAN_ADDR: &str = "198.51.100.2";
/// The name dnsmasq answers with [`WAN_ADDR`].
pub const WAN_NAME: &str = "wan.test";
/// The page busybox httpd serves at `/index.html`.
pub const PAGE: &str = "hello from the wan\n";
/// The UDP echo port.
pub const ECHO_PORT: u16 = 7;
/// The TCP sink's port.
pub const SINK_PORT: u16 = 5000;

/// Errors setting up the wan.
#[derive(Debug, thiserror::Error)]
pub enum WanError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("writing {0}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("{0} does not answer")]
    NotReady(String),
}

/// The wan namespace and its services; removed when dropped.
#[derive(Debug)]
pub struct Wan {
    services: Vec<Process>,
    dir: PathBuf,
    ping_range: Option<String>,
    // Dropped after the services: the veth pair, then the namespace.
    _veth: Veth,
    netns: Netns,
}

impl Wan {
    /// Creates the namespace, reached from the host, and starts its services; `dir` holds
    /// their files.
    pub fn start(dir: &Path) -> Result<Self, WanError> {
        Self::start_from(dir, None)
    }

    /// [`Wan::start`], reached from namespace `side` (`None`: the host's) instead.
    pub fn start_from(dir: &Path, side: Option<&Netns>) -> Result<Self, WanError> {
        let netns = Netns::new("wan")?;
        let veth = Veth::new(side, Some(&netns))?;
        veth.a.add_address(&format!("{HOST_ADDR}/24"))?;
        veth.b.add_address(&format!("{WAN_ADDR}/24"))?;
        let dir = dir.join("wan");
        let io = |p: &Path, e| WanError::Io(p.to_path_buf(), e);
        let www = dir.join("www");
        fs::create_dir_all(&www).map_err(|e| io(&www, e))?;
        let page = www.join("index.html");
        fs::write(&page, PAGE).map_err(|e| io(&page, e))?;
        let allow_ping = ["sysctl", "-w", "net.ipv4.ping_group_range=0 2147483647"];
        // A namespace of the test's goes with the test: nothing to set back there.
        let old = match side {
            Some(side) => {
                side.exec(&allow_ping)?;
                None
            }
            None => {
                let old = run("sysctl", &["-n", "net.ipv4.ping_group_range"])
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().replace('\t', " "))
                    .ok();
                run(allow_ping[0], &allow_ping[1..])?;
                old
            }
        };
        let mut wan = Wan {
            services: Vec::new(),
            dir,
            ping_range: old,
            _veth: veth,
            netns,
        };
        let www = www.display().to_string();
        let sum = wan.dir.join("sink.sha256").display().to_string();
        let pid = wan.dir.join("dnsmasq.pid").display().to_string();
        wan.service(
            "httpd",
            &[
                "busybox",
                "httpd",
                "-f",
                "-p",
                &format!("{WAN_ADDR}:80"),
                "-h",
                &www,
            ],
        )?;
        wan.service(
            "udp-echo",
            &[
                "socat",
                &format!("UDP4-RECVFROM:{ECHO_PORT},bind={WAN_ADDR},fork"),
                "EXEC:cat",
            ],
        )?;
        wan.service(
            "sink",
            &[
                "sh",
                "-c",
                &format!(
                    "socat -u TCP4-LISTEN:{SINK_PORT},bind={WAN_ADDR},reuseaddr - | sha256sum > {sum}"
                ),
            ],
        )?;
        wan.service("iperf3", &["iperf3", "-s", "-B", WAN_ADDR])?;
        wan.service(
            "dnsmasq",
            &[
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                &format!("--listen-address={WAN_ADDR}"),
                &format!("--address=/{WAN_NAME}/{WAN_ADDR}"),
                &format!("--pid-file={pid}"),
                "--log-queries",
                "--log-facility=-",
            ],
        )?;
        wan.wait_tcp(80)?;
        wan.wait_tcp(5201)?;
        wan.wait_tcp(SINK_PORT)?;
        Ok(wan)
    }

    fn service(&mut self, name: &str, args: &[&str]) -> Result<(), WanError> {
        let mut full = vec!["netns".to_string(), "exec".into(), self.netns.name().into()];
        full.extend(args.iter().map(|a| a.to_string()));
        self.services.push(Process::start(name, "ip", full)?);
        Ok(())
    }

    /// Waits until something listens on TCP `port` of the wan host.
    fn wait_tcp(&self, port: u16) -> Result<(), WanError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // Looked up, not probed: the sink takes one connection and iperf3 logs a probe.
            let out = self
                .netns
                .exec(&["ss", "-Hltn", &format!("sport = :{port}")])?;
            if !out.stdout.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(WanError::NotReady(format!("{WAN_ADDR}:{port}")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The sha256 of what the sink received, once its sender closed (waits up to `timeout`).
    pub fn sink_sha256(&self, timeout: Duration) -> Option<String> {
        let path = self.dir.join("sink.sha256");
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(text) = fs::read_to_string(&path) {
                if let Some(sum) = text.split_whitespace().next() {
                    return Some(sum.to_string());
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        self.services.clear();
        if let Some(old) = &self.ping_range {
            let _ = run(
                "sysctl",
                &["-w", &format!("net.ipv4.ping_group_range={old}")],
            );
        }
    }
}
