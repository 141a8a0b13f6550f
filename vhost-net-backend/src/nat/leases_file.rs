//! The leases file of a NAT network's DHCP server, in dnsmasq's format: read at start, and
//! rewritten atomically (a temporary file renamed over it) whenever the bound leases change, so
//! a guest keeps its address across a daemon restart.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bridge_core::gateway::leases::{self, LeaseFileError, LeaseRecord};

/// Errors reading or writing a leases file.
#[derive(Debug, thiserror::Error)]
pub enum LeasesFileError {
    /// The file could not be read.
    #[error("reading {0}")]
    Read(PathBuf, #[source] io::Error),
    /// The file does not parse.
    #[error("parsing {0}")]
    Parse(PathBuf, #[source] LeaseFileError),
    /// The file could not be written.
    #[error("writing {0}")]
    Write(PathBuf, #[source] io::Error),
}

/// Where a network's leases are kept when the configuration names no file:
/// `<state_dir>/<network>.leases`, in the configured state directory or else
/// [`default_state_dir`].
pub fn default_path(state_dir: Option<&Path>, network: &str) -> PathBuf {
    let dir = state_dir.map_or_else(default_state_dir, Path::to_path_buf);
    dir.join(format!("{network}.leases"))
}

/// The daemon's state directory when the configuration names none:
/// `/var/lib/vhost-net-backend` for root, else under `$XDG_STATE_HOME` (or `~/.local/state`)
/// `/vhost-net-backend`.
pub fn default_state_dir() -> PathBuf {
    if is_root() {
        PathBuf::from("/var/lib/vhost-net-backend")
    } else if let Some(state) = std::env::var_os("XDG_STATE_HOME").filter(|s| !s.is_empty()) {
        PathBuf::from(state).join("vhost-net-backend")
    } else if let Some(home) = std::env::var_os("HOME").filter(|s| !s.is_empty()) {
        PathBuf::from(home).join(".local/state/vhost-net-backend")
    } else {
        std::env::temp_dir().join("vhost-net-backend")
    }
}

fn is_root() -> bool {
    // /proc/self is owned by the process's effective user.
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The records saved in `path`; none when there is no file yet.
pub fn load(path: &Path) -> Result<Vec<LeaseRecord>, LeasesFileError> {
    match fs::read_to_string(path) {
        Ok(text) => leases::decode(&text).map_err(|e| LeasesFileError::Parse(path.into(), e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(LeasesFileError::Read(path.into(), e)),
    }
}

/// Replaces `path` with `records`: written to a temporary file beside it, synced, and renamed
/// over it, so a reader (or a crash) sees the old file or the new one, never a part.
pub fn store(path: &Path, records: &[LeaseRecord]) -> Result<(), LeasesFileError> {
    let fail = |e| LeasesFileError::Write(path.into(), e);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(fail)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    let mut file = fs::File::create(&tmp).map_err(fail)?;
    file.write_all(leases::encode(records).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(fail)?;
    fs::rename(&tmp, path).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bridge_core::wire::{EthernetAddress, Ipv4Address};

    #[test]
    fn records_survive_a_store_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/default.leases");
        assert!(load(&path).unwrap().is_empty(), "no file: no leases");
        let records = vec![
            LeaseRecord {
                expires: 1_700_003_600,
                mac: EthernetAddress([0x52, 0x54, 0, 0, 0, 1]),
                ip: Ipv4Address::new(192, 168, 122, 2),
                hostname: Some("alpha".into()),
            },
            LeaseRecord {
                expires: 1_700_003_601,
                mac: EthernetAddress([0x52, 0x54, 0, 0, 0, 2]),
                ip: Ipv4Address::new(192, 168, 122, 3),
                hostname: None,
            },
        ];
        store(&path, &records).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "1700003600 52:54:00:00:00:01 192.168.122.2 alpha *\n\
             1700003601 52:54:00:00:00:02 192.168.122.3 * *\n"
        );
        assert_eq!(load(&path).unwrap(), records);
        store(&path, &records[1..]).unwrap();
        assert_eq!(load(&path).unwrap(), records[1..]);
        assert!(!dir.path().join("sub/default.leases.new").exists());
    }

    #[test]
    fn a_corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.leases");
        fs::write(&path, "garbage\n").unwrap();
        assert!(matches!(load(&path), Err(LeasesFileError::Parse(..))));
    }

    #[test]
    fn the_default_path_is_named_after_the_network_in_the_state_dir() {
        assert!(default_path(None, "default").ends_with("vhost-net-backend/default.leases"));
        assert_eq!(
            default_path(Some(Path::new("/tmp/state")), "nat1"),
            Path::new("/tmp/state/nat1.leases")
        );
    }
}
