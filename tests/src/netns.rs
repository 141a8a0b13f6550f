//! Network namespaces and veth pairs that a test creates and removes, for tests that need
//! hosts beside the guests (NAT egress, bridged uplinks). Uses `ip` from iproute2; needs root.
//!
//! [`Netns`] is deleted when dropped, with everything in it; a [`Veth`] pair is deleted when
//! dropped. Names carry the test process id so concurrent runs do not collide.

use std::io;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// Errors running `ip`.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("running `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
}

/// A number making names unique within the process.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A name `{prefix}{pid}x{n}`, at most 15 bytes (an interface name's limit) for short
/// prefixes.
fn unique_name(prefix: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

/// Runs a command and returns its output, an error when it fails.
pub fn run(program: &str, args: &[&str]) -> Result<Output, NetnsError> {
    let command = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| NetnsError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(NetnsError::Failed {
            command,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(output)
}

/// A network namespace, with its loopback up. Deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named after `tag` and the process.
    pub fn new(tag: &str) -> Result<Self, NetnsError> {
        let name = unique_name(&format!("vnb-{tag}-"));
        run("ip", &["netns", "add", &name])?;
        let netns = Netns { name };
        netns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `args` inside the namespace; an error when it fails.
    pub fn exec(&self, args: &[&str]) -> Result<Output, NetnsError> {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// A command that runs `program` inside the namespace (for long-running processes).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Whether `ip netns list` shows a namespace called `name`.
    pub fn exists(name: &str) -> Result<bool, NetnsError> {
        let out = run("ip", &["netns", "list"])?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|line| line.split_whitespace().next() == Some(name)))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// One end of a veth pair: its interface name and the namespace it is in (`None`: the host's).
#[derive(Debug, Clone)]
pub struct VethEnd {
    pub name: String,
    pub netns: Option<String>,
}

impl VethEnd {
    /// Runs `ip ARGS` where this end lives.
    fn ip(&self, args: &[&str]) -> Result<Output, NetnsError> {
        let mut full = Vec::new();
        if let Some(netns) = &self.netns {
            full.extend(["-n", netns.as_str()]);
        }
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Adds an address (`"192.0.2.1/24"`) to this end.
    pub fn add_address(&self, cidr: &str) -> Result<(), NetnsError> {
        self.ip(&["addr", "add", cidr, "dev", &self.name]).map(drop)
    }

    /// Sets this end's MTU.
    pub fn set_mtu(&self, mtu: u16) -> Result<(), NetnsError> {
        self.ip(&["link", "set", &self.name, "mtu", &mtu.to_string()])
            .map(drop)
    }
}

/// A veth pair, both ends up. Deleted on drop (deleting one end deletes both).
#[derive(Debug)]
pub struct Veth {
    pub a: VethEnd,
    pub b: VethEnd,
}

impl Veth {
    /// A pair with end `a` in namespace `ns_a` and end `b` in `ns_b` (`None`: the host's).
    pub fn new(ns_a: Option<&Netns>, ns_b: Option<&Netns>) -> Result<Self, NetnsError> {
        let a = VethEnd {
            name: unique_name("vnba"),
            netns: None,
        };
        let b = VethEnd {
            name: unique_name("vnbb"),
            netns: None,
        };
        run(
            "ip",
            &[
                "link", "add", &a.name, "type", "veth", "peer", "name", &b.name,
            ],
        )?;
        // From here on dropping the pair deletes the interfaces, wherever they are.
        let mut veth = Veth { a, b };
        for (end, netns) in [(&mut veth.a, ns_a), (&mut veth.b, ns_b)] {
            if let Some(netns) = netns {
                run("ip", &["link", "set", &end.name, "netns", netns.name()])?;
                end.netns = Some(netns.name().to_string());
            }
            end.ip(&["link", "set", &end.name, "up"])?;
        }
        Ok(veth)
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        // Gone already when its namespace was deleted first.
        let _ = self.a.ip(&["link", "del", &self.a.name]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_fit_an_interface_name() {
        let a = unique_name("vnba");
        let b = unique_name("vnba");
        assert_ne!(a, b);
        assert!(a.len() <= 15, "{a}");
    }
}
