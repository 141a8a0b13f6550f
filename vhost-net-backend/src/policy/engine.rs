//! The wasmtime engine for policies: configuration (epoch interruption), its epoch ticker,
//! and compilation off the datapath with a cache by content hash, in memory and (optionally)
//! on disk as precompiled artifacts.

use super::epoch::EpochTicker;
use super::module::{ModuleError, PolicyModule};
use super::precompiled;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use wasmtime::{Config, Engine, Module, OptLevel};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why the engine could not be built or a module not loaded.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// wasmtime refused the configuration.
    #[error("cannot configure wasmtime")]
    Config(#[source] BoxError),
    /// The epoch ticker thread could not start.
    #[error("cannot start the epoch ticker")]
    Ticker(#[source] io::Error),
    /// The module is larger than the limit.
    #[error("module is {size} bytes, the limit is {limit}")]
    TooLarge {
        /// Module size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The module does not compile.
    #[error("module does not compile")]
    Compile(#[source] BoxError),
    /// The module does not fit the policy ABI.
    #[error("module does not fit the policy ABI")]
    Abi(#[source] ModuleError),
    /// The precompiled-module cache directory could not be made.
    #[error("cannot create the module cache directory {0}")]
    CacheDir(PathBuf, #[source] io::Error),
}

/// Engine settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Largest module accepted, bytes.
    pub max_module_bytes: usize,
    /// Where precompiled modules are kept across restarts (`None`: memory only).
    pub cache_dir: Option<PathBuf>,
    /// Epoch tick; call deadlines are counted in ticks.
    pub epoch_tick: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_module_bytes: 4 << 20,
            cache_dir: None,
            epoch_tick: Duration::from_millis(1),
        }
    }
}

/// How a module was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadPath {
    /// From the in-memory cache (same bytes loaded before).
    Cached,
    /// Deserialized from a precompiled artifact on disk.
    Precompiled,
    /// Compiled now.
    Compiled,
}

/// Counts of module loads by path.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// In-memory cache hits.
    pub cached: AtomicU64,
    /// Precompiled artifacts deserialized.
    pub precompiled: AtomicU64,
    /// Modules compiled.
    pub compiled: AtomicU64,
}

/// The policy engine: one per daemon.
#[derive(Debug)]
pub struct PolicyEngine {
    engine: Engine,
    config: EngineConfig,
    cache: Mutex<HashMap<[u8; 32], Arc<PolicyModule>>>,
    stats: EngineStats,
    ticker: EpochTicker,
}

fn boxed(e: wasmtime::Error) -> BoxError {
    e.into_boxed_dyn_error()
}

/// SHA-256 of `bytes`.
pub fn content_hash(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn hex(hash: &[u8; 32]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

impl PolicyEngine {
    /// Builds the engine and starts its epoch ticker (parked until module code runs).
    pub fn new(config: EngineConfig) -> Result<Self, EngineError> {
        let mut wasm = Config::new();
        wasm.epoch_interruption(true)
            .cranelift_opt_level(OptLevel::Speed);
        let engine = Engine::new(&wasm).map_err(|e| EngineError::Config(boxed(e)))?;
        if let Some(dir) = &config.cache_dir {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| EngineError::CacheDir(dir.clone(), e))?;
        }
        let ticker =
            EpochTicker::start(engine.clone(), config.epoch_tick).map_err(EngineError::Ticker)?;
        Ok(PolicyEngine {
            engine,
            config,
            cache: Mutex::default(),
            stats: EngineStats::default(),
            ticker,
        })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The epoch ticker (it ticks while module code runs).
    pub fn ticker(&self) -> &EpochTicker {
        &self.ticker
    }

    /// The settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Load counts.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Compiles (or finds in a cache) and checks a module. Runs on the caller's thread: call
    /// it off the datapath.
    pub fn load(&self, wasm: &[u8]) -> Result<(Arc<PolicyModule>, LoadPath), EngineError> {
        let limit = self.config.max_module_bytes;
        if wasm.len() > limit {
            return Err(EngineError::TooLarge {
                size: wasm.len(),
                limit,
            });
        }
        let hash = content_hash(wasm);
        if let Some(m) = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&hash)
        {
            self.stats.cached.fetch_add(1, Ordering::Relaxed);
            return Ok((m.clone(), LoadPath::Cached));
        }
        let artifact = self
            .config
            .cache_dir
            .as_ref()
            .map(|d| d.join(format!("{}.cwasm", hex(&hash))));
        let from_disk = artifact
            .as_ref()
            .filter(|p| p.is_file())
            .and_then(|p| precompiled::load(&self.engine, p).ok());
        let (module, path) = match from_disk {
            Some(m) => {
                self.stats.precompiled.fetch_add(1, Ordering::Relaxed);
                (m, LoadPath::Precompiled)
            }
            None => {
                let m =
                    Module::new(&self.engine, wasm).map_err(|e| EngineError::Compile(boxed(e)))?;
                self.stats.compiled.fetch_add(1, Ordering::Relaxed);
                if let Some(p) = &artifact {
                    self.store_artifact(&m, p);
                }
                (m, LoadPath::Compiled)
            }
        };
        let checked = Arc::new(PolicyModule::check(module, wasm, hash).map_err(EngineError::Abi)?);
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(hash, checked.clone());
        Ok((checked, path))
    }

    /// Writes a precompiled artifact (to a temporary name, then renamed into place). A failure
    /// only costs a compile next time, so it is logged, not returned.
    fn store_artifact(&self, module: &Module, path: &std::path::Path) {
        let tmp = path.with_extension("tmp");
        let result = module
            .serialize()
            .map_err(|e| io::Error::other(e.to_string()))
            .and_then(|bytes| fs::write(&tmp, bytes))
            .and_then(|()| fs::rename(&tmp, path));
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "cannot store a precompiled policy module");
        }
    }

    /// Drops in-memory cache entries no generation uses any more.
    pub fn prune_cache(&self) {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, m| Arc::strong_count(m) > 1);
    }
}
