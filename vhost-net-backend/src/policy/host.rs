//! The policy host's control side: loads policy sets off the datapath (compile or cache,
//! canary instance, golden frames), publishes generations atomically, tracks faults and
//! quarantines, owns the maps and counters that outlive reloads, and lists counters.

use super::chain::{ChainEntry, FailMode, Generation, PolicySet, PolicySpec, Tier, MAX_ENTRIES};
use super::engine::{EngineConfig, EngineError, LoadPath, PolicyEngine};
use super::instance::{self, Fault, HostState, InstanceError, InstanceLimits, PolicyInstance};
use super::stats::{EntryShared, EntryStats, RuleCounters};
use super::worker::PolicyWorker;
use policy_sdk::abi::{ct, flag, FrameDesc, Verdict, HOOK_COUNT, OUT_GATEWAY};
use policy_sdk::frames::{self, Endpoint};
use policy_sdk::headers::describe;
use policy_sdk::manifest::MapSpec;
use policy_sdk::maps::MapTable;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};
use wasmtime::Linker;

/// Why a policy set was not published (the current generation stays).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The engine could not be set up.
    #[error("policy engine")]
    Engine(#[source] EngineError),
    /// A module did not load.
    #[error("policy `{0}`")]
    Module(String, #[source] EngineError),
    /// A module was quarantined earlier; load a changed module.
    #[error("policy `{0}`: this module is quarantined")]
    Quarantined(String),
    /// The canary instance could not be set up.
    #[error("policy `{0}`: canary instance")]
    Canary(String, #[source] InstanceError),
    /// The canary faulted on a golden frame.
    #[error("policy `{0}`: canary faulted on golden frame {1}")]
    Golden(String, usize, #[source] Fault),
    /// Two policies share a name, or a map is redeclared with another shape.
    #[error("policy `{0}`: {1}")]
    Invalid(String, &'static str),
    /// No policy by this name.
    #[error("no policy named `{0}`")]
    Unknown(String),
}

/// Host settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostConfig {
    /// Engine settings.
    pub engine: EngineConfig,
    /// Per-instance bounds.
    pub limits: InstanceLimits,
    /// Faults within `fault_window` that quarantine a module.
    pub fault_threshold: usize,
    /// The window for `fault_threshold`.
    pub fault_window: Duration,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            engine: EngineConfig::default(),
            limits: InstanceLimits::default(),
            fault_threshold: 5,
            fault_window: Duration::from_secs(10),
        }
    }
}

/// What a successful load did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadReport {
    /// The generation now published.
    pub generation: u64,
    /// How each new or changed policy's module was obtained (unchanged ones are reused).
    pub loaded: Vec<(String, LoadPath)>,
}

#[derive(Debug, Default)]
struct Control {
    /// Generations published before the current one, newest last.
    history: VecDeque<Arc<Generation>>,
    /// Fault times per policy name.
    faults: HashMap<String, VecDeque<Instant>>,
    /// Module hashes quarantined.
    quarantined: HashSet<[u8; 32]>,
}

const HISTORY: usize = 8;

/// (policy name, map or counter name): what host-owned state is kept by across reloads.
type OwnedName = (String, String);

#[derive(Debug)]
pub(super) struct HostInner {
    pub(super) engine: PolicyEngine,
    pub(super) linker: Linker<HostState>,
    pub(super) config: HostConfig,
    current: Mutex<Arc<Generation>>,
    current_id: AtomicU64,
    next_id: AtomicU64,
    control: Mutex<Control>,
    maps: Mutex<HashMap<OwnedName, Arc<Mutex<MapTable>>>>,
    counters: Mutex<HashMap<OwnedName, Arc<AtomicU64>>>,
    stats: Mutex<HashMap<String, Arc<EntryStats>>>,
    ports: RwLock<HashMap<u32, u32>>,
    clock: Instant,
}

/// The policy host: a cheap handle shared by the control plane and the workers.
#[derive(Clone, Debug)]
pub struct PolicyHost {
    pub(super) inner: Arc<HostInner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Frames every module must judge without fault before it is published, at each hook it
/// declares: ARP, DHCP, TCP, UDP, ICMP, IPv6, a runt, both directions.
fn golden_frames() -> Vec<(FrameDesc, Vec<u8>)> {
    let a = Endpoint::new([0x52, 0x54, 0, 0, 0, 0x10], [192, 168, 122, 10]);
    let b = Endpoint::new([0x52, 0x54, 0, 0, 0, 0x11], [192, 168, 122, 11]);
    let out = Endpoint::new([0x52, 0x54, 0, 0, 0, 1], [198, 51, 100, 7]);
    let guest = FrameDesc {
        flow_id: 1,
        ingress_port: 1,
        bridge_out: 2,
        ct_state: ct::NEW,
        flags: flag::FROM_GUEST | flag::TO_GUEST,
        ..FrameDesc::ZERO
    };
    let inbound = FrameDesc {
        ingress_port: 0,
        bridge_out: 1,
        flags: flag::TO_GUEST,
        ..guest
    };
    let egress = FrameDesc {
        bridge_out: OUT_GATEWAY,
        flags: flag::FROM_GUEST,
        ..guest
    };
    let untracked = FrameDesc {
        flow_id: 0,
        ct_state: ct::UNTRACKED,
        ..guest
    };
    [
        (untracked, frames::arp_request(a, b.ip)),
        (guest, frames::dhcp_request(a.mac)),
        (guest, frames::tcp4(a, b, 40000, 22, frames::TCP_SYN)),
        (egress, frames::udp4(a, out, 40000, 53, b"q")),
        (egress, frames::ping4(a, out)),
        (inbound, frames::tcp4(out, a, 443, 40000, frames::TCP_SYN)),
        (
            FrameDesc {
                ct_state: ct::ESTABLISHED | ct::REPLY,
                ..inbound
            },
            frames::tcp4(out, a, 443, 40000, frames::TCP_ACK),
        ),
        (guest, frames::udp6(a.mac, [0xfe; 16], [0xfd; 16], 1, 2)),
        (untracked, vec![0xff; 9]),
    ]
    .into_iter()
    .map(|(base, bytes)| (describe(&bytes, base), bytes))
    .collect()
}

impl PolicyHost {
    /// A host with no policies (generation 0 accepts everything).
    pub fn new(config: HostConfig) -> Result<Self, LoadError> {
        let engine = PolicyEngine::new(config.engine.clone()).map_err(LoadError::Engine)?;
        let linker = instance::linker(engine.engine())
            .map_err(|e| LoadError::Engine(EngineError::Config(e.into_boxed_dyn_error())))?;
        let inner = HostInner {
            engine,
            linker,
            config,
            current: Mutex::new(Arc::new(Generation::new(0, Vec::new()))),
            current_id: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            control: Mutex::default(),
            maps: Mutex::default(),
            counters: Mutex::default(),
            stats: Mutex::default(),
            ports: RwLock::default(),
            clock: Instant::now(),
        };
        Ok(PolicyHost {
            inner: Arc::new(inner),
        })
    }

    /// The engine (load counts, compile cache).
    pub fn engine(&self) -> &PolicyEngine {
        &self.inner.engine
    }

    /// A worker for one datapath thread.
    pub fn worker(&self) -> PolicyWorker {
        PolicyWorker::new(self.clone())
    }

    /// Id of the published generation.
    pub fn generation_id(&self) -> u64 {
        self.inner.current_id.load(Ordering::Acquire)
    }

    /// The published generation.
    pub fn generation(&self) -> Arc<Generation> {
        lock(&self.inner.current).clone()
    }

    /// Records that `port` is in `network` (redirect and mirror targets of a network's
    /// policies must be in the frame's network).
    pub fn set_port_network(&self, port: u32, network: Option<u32>) {
        let mut ports = self
            .inner
            .ports
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match network {
            Some(n) => ports.insert(port, n),
            None => ports.remove(&port),
        };
    }

    pub(super) fn port_network(&self, port: u32) -> Option<u32> {
        self.inner
            .ports
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&port)
            .copied()
    }

    /// Publishes `set`: policies whose module, configuration and fail mode are unchanged keep
    /// their entry (and rule counters); the others are loaded (a config-only change reuses the
    /// compiled module) and pass a canary first. On error nothing changes.
    pub fn apply(&self, set: PolicySet) -> Result<LoadReport, LoadError> {
        let mut control = lock(&self.inner.control);
        self.apply_locked(&mut control, set)
    }

    /// Adds or replaces policy `spec.name` in `tier`'s chain (at its end when new).
    pub fn load(&self, tier: Tier, spec: PolicySpec) -> Result<LoadReport, LoadError> {
        let mut control = lock(&self.inner.control);
        let mut set = self.generation().set();
        let found = set.chain_mut(tier).iter_mut().find(|s| s.name == spec.name);
        match found {
            Some(s) => *s = spec,
            None => {
                if set.specs().any(|(_, s)| s.name == spec.name) {
                    return Err(LoadError::Invalid(spec.name, "loaded in another chain"));
                }
                set.chain_mut(tier).push(spec);
            }
        }
        self.apply_locked(&mut control, set)
    }

    /// Removes policy `name`.
    pub fn unload(&self, name: &str) -> Result<LoadReport, LoadError> {
        let mut control = lock(&self.inner.control);
        let mut set = self.generation().set();
        let before = set.specs().count();
        set.operator.retain(|s| s.name != name);
        for chain in set.networks.values_mut() {
            chain.retain(|s| s.name != name);
        }
        set.networks.retain(|_, c| !c.is_empty());
        if set.specs().count() == before {
            return Err(LoadError::Unknown(name.to_owned()));
        }
        self.apply_locked(&mut control, set)
    }

    fn apply_locked(&self, control: &mut Control, set: PolicySet) -> Result<LoadReport, LoadError> {
        let current = self.generation();
        let mut names = HashSet::new();
        let mut entries = Vec::new();
        let mut loaded = Vec::new();
        for (tier, spec) in set.specs() {
            if !names.insert(spec.name.clone()) {
                return Err(LoadError::Invalid(
                    spec.name.clone(),
                    "two policies with this name",
                ));
            }
            let same = current
                .entries
                .iter()
                .find(|e| e.tier == tier && e.spec == *spec && e.module.is_some());
            if let Some(e) = same {
                entries.push(e.clone());
                continue;
            }
            let (entry, path) = self.build_entry(control, tier, spec)?;
            loaded.push((spec.name.clone(), path));
            entries.push(Arc::new(entry));
        }
        if entries.len() > MAX_ENTRIES {
            return Err(LoadError::Invalid(String::new(), "more than 255 policies"));
        }
        let id = self.publish(control, entries);
        self.inner.engine.prune_cache();
        tracing::info!(
            generation = id,
            loaded = loaded.len(),
            "published policy generation"
        );
        Ok(LoadReport {
            generation: id,
            loaded,
        })
    }

    fn publish(&self, control: &mut Control, entries: Vec<Arc<ChainEntry>>) -> u64 {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let generation = Arc::new(Generation::new(id, entries));
        let old = std::mem::replace(&mut *lock(&self.inner.current), generation);
        self.inner.current_id.store(id, Ordering::Release);
        control.history.push_back(old);
        if control.history.len() > HISTORY {
            control.history.pop_front();
        }
        id
    }

    fn shared(
        &self,
        spec: &PolicySpec,
        maps: &[(String, u32, u32, u32)],
        counters: &[String],
    ) -> Result<EntryShared, LoadError> {
        let mut map_reg = lock(&self.inner.maps);
        let mut tables = Vec::new();
        for (name, key_size, value_size, max_entries) in maps {
            let shape = MapSpec {
                name,
                key_size: *key_size,
                value_size: *value_size,
                max_entries: *max_entries,
            };
            let key = (spec.name.clone(), name.clone());
            let table = map_reg
                .entry(key)
                .or_insert_with(|| Arc::new(Mutex::new(MapTable::new(&shape))));
            if !lock(table).has_shape(&shape) {
                return Err(LoadError::Invalid(
                    spec.name.clone(),
                    "a map changed its shape; unload the policy first",
                ));
            }
            tables.push(table.clone());
        }
        let mut counter_reg = lock(&self.inner.counters);
        let counters = counters
            .iter()
            .map(|c| {
                counter_reg
                    .entry((spec.name.clone(), c.clone()))
                    .or_default()
                    .clone()
            })
            .collect();
        let stats = lock(&self.inner.stats)
            .entry(spec.name.clone())
            .or_default()
            .clone();
        Ok(EntryShared {
            name: spec.name.clone(),
            maps: tables,
            counters,
            log_bucket: Mutex::new(instance::log_bucket(self.now_ns())),
            stats,
        })
    }

    fn build_entry(
        &self,
        control: &Control,
        tier: Tier,
        spec: &PolicySpec,
    ) -> Result<(ChainEntry, LoadPath), LoadError> {
        let name = || spec.name.clone();
        let (module, path) = self
            .inner
            .engine
            .load(&spec.wasm)
            .map_err(|e| LoadError::Module(name(), e))?;
        if control.quarantined.contains(&module.hash) {
            return Err(LoadError::Quarantined(name()));
        }
        let m = &module.manifest;
        let shared = Arc::new(self.shared(spec, &m.maps, &m.counters)?);
        // The canary checks behaviour, not speed: its calls get the set-up deadline.
        let limits = self.inner.config.limits;
        let canary_limits = InstanceLimits {
            deadline_ticks: limits.init_deadline_ticks,
            ..limits
        };
        let (mut canary, record) = PolicyInstance::new(
            &self.inner.linker,
            self.inner.engine.ticker().handle(),
            &module,
            shared.clone(),
            canary_limits,
            spec.config.as_bytes(),
            true,
        )
        .map_err(|e| LoadError::Canary(name(), e))?;
        for hook in 0..HOOK_COUNT {
            if m.hooks & (1 << hook) == 0 {
                continue;
            }
            for (i, (desc, bytes)) in golden_frames().into_iter().enumerate() {
                let desc = FrameDesc { hook, ..desc };
                let mut out = [Verdict::CONTINUE];
                for per_frame in [false, true] {
                    canary
                        .judge(0, per_frame, &[desc], &[&bytes], &mut out)
                        .map_err(|f| LoadError::Golden(name(), i, f))?;
                }
            }
        }
        let record = record.unwrap_or_default();
        let entry = ChainEntry {
            spec: spec.clone(),
            tier,
            hooks: m.hooks,
            module: Some(module),
            shared,
            rules: record.rules,
            rule_counters: RuleCounters::default(),
            rate_classes: record
                .rate_classes
                .into_iter()
                .map(|(c, (p, b))| (c, p, b))
                .collect(),
        };
        Ok((entry, path))
    }

    /// Nanoseconds since the host started (the clock fault windows and logs use).
    pub fn now_ns(&self) -> u64 {
        self.inner.clock.elapsed().as_nanos() as u64
    }

    /// Records a fault of `entry` in generation `generation`; after `fault_threshold` faults
    /// within `fault_window` the module is quarantined: the host rolls back to the last
    /// generation without it, or, if none, replaces it with its fail mode.
    pub(super) fn report_fault(&self, generation: u64, entry: &ChainEntry) {
        let mut control = lock(&self.inner.control);
        let now = Instant::now();
        let window = self.inner.config.fault_window;
        let times = control.faults.entry(entry.spec.name.clone()).or_default();
        times.push_back(now);
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            times.pop_front();
        }
        if times.len() < self.inner.config.fault_threshold || generation != self.generation_id() {
            return;
        }
        times.clear();
        let Some(module) = entry.module.as_ref() else {
            return;
        };
        let hash = module.hash;
        control.quarantined.insert(hash);
        EntryStats::bump(&entry.shared.stats.quarantines);
        let has_bad = |g: &Generation| {
            g.entries
                .iter()
                .any(|e| e.module.as_ref().is_some_and(|m| m.hash == hash))
        };
        let good = control
            .history
            .iter()
            .rev()
            .find(|g| g.id != 0 && !has_bad(g))
            .cloned();
        let entries = match good {
            Some(g) => g.entries.clone(),
            None => {
                let current = self.generation();
                current
                    .entries
                    .iter()
                    .map(
                        |e| match e.module.as_ref().is_some_and(|m| m.hash == hash) {
                            true => Arc::new(ChainEntry {
                                spec: e.spec.clone(),
                                tier: e.tier,
                                module: None,
                                shared: e.shared.clone(),
                                rules: e.rules.clone(),
                                rule_counters: RuleCounters::default(),
                                rate_classes: Vec::new(),
                                hooks: e.hooks,
                            }),
                            false => e.clone(),
                        },
                    )
                    .collect()
            }
        };
        let id = self.publish(&mut control, entries);
        tracing::error!(policy = %entry.spec.name, generation = id, "policy quarantined after repeated faults; rolled back");
    }

    /// Writes `key` -> `value` into map `map` of policy `policy` (e.g. DHCP leases).
    pub fn map_update(
        &self,
        policy: &str,
        map: &str,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), LoadError> {
        let table = lock(&self.inner.maps)
            .get(&(policy.to_owned(), map.to_owned()))
            .cloned()
            .ok_or_else(|| LoadError::Unknown(format!("{policy}/{map}")))?;
        let code = lock(&table).update(key, value);
        match code {
            0 => Ok(()),
            _ => Err(LoadError::Invalid(
                policy.to_owned(),
                "map update refused (size or full)",
            )),
        }
    }

    /// Per-policy and per-rule counters in the `iptables -L -nv` style.
    pub fn render_list(&self) -> String {
        let g = self.generation();
        let mut out = String::new();
        let _ = writeln!(out, "generation {}", g.id);
        for e in &g.entries {
            let s = &e.shared.stats;
            let tier = match e.tier {
                Tier::Operator => "operator".to_owned(),
                Tier::Network(n) => format!("network {n}"),
            };
            let state = if e.module.is_some() {
                ""
            } else {
                " QUARANTINED"
            };
            let ld = |c: &AtomicU64| c.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "\nPolicy {} ({tier}, fail {}{state}): {} frames, {} calls, {} traps, {} timeouts, {} fail-mode frames",
                e.spec.name,
                e.spec.fail_mode,
                ld(&s.frames),
                ld(&s.calls),
                ld(&s.traps),
                ld(&s.timeouts),
                ld(&s.fail_applied),
            );
            let _ = writeln!(out, " {:>6} {:>10} {:>10}  rule", "id", "pkts", "bytes");
            for (id, text) in &e.rules {
                let (p, b) = e.rule_counters.get(*id);
                let _ = writeln!(out, " {id:>6} {p:>10} {b:>10}  {text}");
            }
        }
        out
    }

    /// The fail mode of the published policy `name`.
    pub fn fail_mode(&self, name: &str) -> Option<FailMode> {
        self.generation()
            .entries
            .iter()
            .find(|e| e.spec.name == name)
            .map(|e| e.spec.fail_mode)
    }

    /// Stats of policy `name` (kept across reloads).
    pub fn stats(&self, name: &str) -> Option<Arc<EntryStats>> {
        lock(&self.inner.stats).get(name).cloned()
    }
}
