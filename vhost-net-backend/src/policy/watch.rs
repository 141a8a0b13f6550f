//! Policy sets from a file, and hot reload when it (or a module or config it names)
//! changes: polled, so editors that replace files by renaming are seen too.
//!
//! ```toml
//! [[policy]]
//! name = "anti-spoof"
//! module = "clean_traffic.wasm"      # relative to the file's directory
//! config = "port 3 mac 52:54:00:00:00:03 ip 192.168.122.10"
//! fail_mode = "baseline"             # closed (default) | open | baseline
//!
//! [[policy]]
//! name = "tenant-7-sg"
//! network = 7                        # a network's chain; without it, the operator chain
//! module = "security_group.wasm"
//! config_file = "sg-7.conf"
//! ```

use super::chain::{FailMode, PolicySet, PolicySpec, Tier};
use super::engine::content_hash;
use super::host::{LoadError, LoadReport, PolicyHost};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Why a policy file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// A file could not be read.
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    /// The policy file is not valid TOML of the expected shape.
    #[error("bad policy file {0}")]
    Parse(PathBuf, #[source] toml::de::Error),
    /// A policy gives both or neither of `config` and `config_file`.
    #[error("policy `{0}`: give at most one of `config` and `config_file`")]
    Config(String),
    /// The host refused the set.
    #[error("policy set refused")]
    Load(#[source] LoadError),
    /// The watcher thread could not start.
    #[error("cannot start the policy file watcher")]
    Spawn(#[source] std::io::Error),
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    name: String,
    module: PathBuf,
    #[serde(default)]
    config: Option<String>,
    #[serde(default)]
    config_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "fail_mode")]
    fail_mode: FailMode,
    #[serde(default)]
    network: Option<u32>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    policy: Vec<FileEntry>,
}

fn fail_mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<FailMode, D::Error> {
    let s = <String as serde::Deserialize>::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

fn read(path: &Path) -> Result<Vec<u8>, WatchError> {
    std::fs::read(path).map_err(|e| WatchError::Read(path.to_owned(), e))
}

/// Reads a policy file and every module and config file it names.
pub fn read_policy_file(path: &Path) -> Result<PolicySet, WatchError> {
    let text = String::from_utf8_lossy(&read(path)?).into_owned();
    let file: PolicyFile =
        toml::from_str(&text).map_err(|e| WatchError::Parse(path.to_owned(), e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut set = PolicySet::default();
    for p in file.policy {
        let config = match (p.config, p.config_file) {
            (Some(c), None) => c,
            (None, Some(f)) => String::from_utf8_lossy(&read(&dir.join(f))?).into_owned(),
            (None, None) => String::new(),
            (Some(_), Some(_)) => return Err(WatchError::Config(p.name)),
        };
        let tier = p.network.map_or(Tier::Operator, Tier::Network);
        let spec = PolicySpec {
            name: p.name,
            wasm: read(&dir.join(&p.module))?.into(),
            config,
            fail_mode: p.fail_mode,
        };
        set.chain_mut(tier).push(spec);
    }
    Ok(set)
}

/// Applies a policy file when its content (or that of a file it names) changes.
#[derive(Debug)]
pub struct PolicyFileWatch {
    path: PathBuf,
    last: Option<[u8; 32]>,
}

impl PolicyFileWatch {
    /// A watch on `path`; the first [`poll`](Self::poll) applies it.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        PolicyFileWatch {
            path: path.into(),
            last: None,
        }
    }

    /// Reads the file set; if it differs from what was last applied, applies it. `Ok(None)`:
    /// nothing changed. A refused set is not retried until the files change again.
    pub fn poll(&mut self, host: &PolicyHost) -> Result<Option<LoadReport>, WatchError> {
        let set = read_policy_file(&self.path)?;
        let mut all = Vec::new();
        for (tier, s) in set.specs() {
            all.extend_from_slice(
                format!("{tier:?}\0{}\0{:?}\0{}\0", s.name, s.fail_mode, s.config).as_bytes(),
            );
            all.extend_from_slice(&content_hash(&s.wasm));
        }
        let hash = content_hash(&all);
        if self.last == Some(hash) {
            return Ok(None);
        }
        self.last = Some(hash);
        host.apply(set).map(Some).map_err(WatchError::Load)
    }
}

/// A thread that polls a [`PolicyFileWatch`]; stops when dropped.
#[derive(Debug)]
pub struct WatchThread {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl WatchThread {
    /// Polls `path` every `interval`, applying changes to `host` and logging refusals.
    pub fn spawn(
        host: PolicyHost,
        path: impl Into<PathBuf>,
        interval: Duration,
    ) -> Result<Self, WatchError> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut watch = PolicyFileWatch::new(path);
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("policy-watch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    match watch.poll(&host) {
                        Ok(Some(r)) => {
                            tracing::info!(generation = r.generation, "policy file applied")
                        }
                        Ok(None) => {}
                        Err(e) => tracing::error!(error = %e, "policy file not applied"),
                    }
                    std::thread::sleep(interval);
                }
            })
            .map_err(WatchError::Spawn)?;
        Ok(WatchThread {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for WatchThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
