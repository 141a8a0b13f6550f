//! One instance of a policy module in its own store: the host imports, the I/O area, and
//! bounded calls (epoch deadline, memory limit). Each worker owns its instances; the host
//! runs a canary instance before publishing.

use super::epoch::TickerHandle;
use super::module::PolicyModule;
use super::stats::EntryShared;
use bridge_core::policy::TokenBucket;
use policy_sdk::abi::{
    cap, io_off, level, status, FrameDesc, Verdict, CONFIG_MAX, DESC_SIZE, IMPORT_MODULE,
    MAX_BATCH, SNAPSHOT_LEN, VERDICT_SIZE,
};
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use wasmtime::{
    Caller, Engine, Linker, Memory, Store, StoreLimits, StoreLimitsBuilder, Trap, TypedFunc,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why an instance could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// The module asks for more memory than the host allows.
    #[error("module asks for {asked} pages of memory, the limit is {limit}")]
    MemoryRequest {
        /// Pages asked for in the manifest.
        asked: u32,
        /// Pages allowed.
        limit: u32,
    },
    /// The configuration is larger than the I/O area holds.
    #[error("configuration is {0} bytes, the limit is {CONFIG_MAX}")]
    ConfigTooLarge(usize),
    /// Instantiation failed (link error, memory limit, start trap).
    #[error("cannot instantiate the module")]
    Instantiate(#[source] BoxError),
    /// `pol_io` returned an area outside the module's memory.
    #[error("the I/O area is outside the module's memory")]
    IoBounds,
    /// A call during set-up faulted.
    #[error("setting up the module faulted: {0}")]
    Setup(Fault),
    /// `pol_init` refused the configuration.
    #[error("the module refused its configuration (status {0})")]
    Refused(i32),
}

/// How a call into a module failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    /// The module trapped.
    #[error("trap: {0}")]
    Trap(String),
    /// The call ran past its epoch deadline.
    #[error("deadline exceeded")]
    Timeout,
    /// The module returned a negative status or judged the wrong number of frames.
    #[error("bad return value {0}")]
    Status(i32),
    /// A verdict with an undefined action or flags.
    #[error("invalid verdict")]
    BadVerdict,
}

impl Fault {
    fn from_error(e: wasmtime::Error) -> Fault {
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => Fault::Timeout,
            Some(t) => Fault::Trap(t.to_string()),
            None => Fault::Trap(e.to_string()),
        }
    }
}

/// Per-instance bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstanceLimits {
    /// Linear memory cap, in 64 KiB pages.
    pub memory_pages: u32,
    /// Epoch ticks a call may run.
    pub deadline_ticks: u64,
    /// Epoch ticks instantiation and `pol_init` may run.
    pub init_deadline_ticks: u64,
}

impl Default for InstanceLimits {
    fn default() -> Self {
        InstanceLimits {
            memory_pages: 256,
            deadline_ticks: 50,
            init_deadline_ticks: 1000,
        }
    }
}

/// What a module declared while `pol_init` ran on the canary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InitRecord {
    /// Rule id -> description.
    pub rules: BTreeMap<u32, String>,
    /// Rate class id -> (packets/s, bytes/s).
    pub rate_classes: BTreeMap<u16, (u64, u64)>,
}

/// A store's host-side state.
#[derive(Debug)]
pub struct HostState {
    limits: StoreLimits,
    shared: Arc<EntryShared>,
    memory: Option<Memory>,
    now_ns: u64,
    caps: u32,
    frames: Vec<Vec<u8>>,
    frame_count: usize,
    init: Option<InitRecord>,
}

fn range(mem_len: usize, ptr: u32, len: u32) -> Option<Range<usize>> {
    let start = ptr as usize;
    let end = start.checked_add(len as usize)?;
    (end <= mem_len).then_some(start..end)
}

/// Runs `f` over the module memory and host state; `DENIED` before the memory is known.
fn with_memory(
    caller: &mut Caller<'_, HostState>,
    f: impl FnOnce(&mut [u8], &mut HostState) -> i32,
) -> i32 {
    let Some(memory) = caller.data().memory else {
        return status::DENIED;
    };
    let (mem, state) = memory.data_and_store_mut(caller);
    f(mem, state)
}

#[derive(Clone, Copy)]
enum MapOp {
    Lookup,
    Update,
    Delete,
}

/// A map import: the key and value are `(pointer, length)` in the module's memory.
fn map_op(
    c: &mut Caller<'_, HostState>,
    map: u32,
    key: (u32, u32),
    value: (u32, u32),
    op: MapOp,
) -> i32 {
    with_memory(c, |mem, st| {
        let (Some(k), Some(v)) = (
            range(mem.len(), key.0, key.1),
            range(mem.len(), value.0, value.1),
        ) else {
            return status::BOUNDS;
        };
        let Some(table) = st.shared.maps.get(map as usize) else {
            return status::INVALID;
        };
        let key = mem[k].to_vec();
        let mut table = table.lock().unwrap_or_else(PoisonError::into_inner);
        match op {
            MapOp::Lookup => table.lookup(&key, &mut mem[v]),
            MapOp::Update => table.update(&key, &mem[v]),
            MapOp::Delete => table.delete(&key),
        }
    })
}

/// The `"pol"` imports.
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut l = Linker::new(engine);
    l.func_wrap(
        IMPORT_MODULE,
        "log",
        |mut c: Caller<'_, HostState>, lvl: i32, ptr: u32, len: u32| {
            with_memory(&mut c, |mem, st| {
                let Some(r) = range(mem.len(), ptr, len.min(512)) else {
                    return status::BOUNDS;
                };
                st.shared
                    .module_log(st.now_ns, lvl, &String::from_utf8_lossy(&mem[r]));
                status::OK
            });
        },
    )?;
    l.func_wrap(
        IMPORT_MODULE,
        "counter_add",
        |c: Caller<'_, HostState>, id: u32, delta: u64| {
            if let Some(counter) = c.data().shared.counters.get(id as usize) {
                counter.fetch_add(delta, Ordering::Relaxed);
            }
        },
    )?;
    l.func_wrap(
        IMPORT_MODULE,
        "map_lookup",
        |mut c: Caller<'_, HostState>, map: u32, kp: u32, kl: u32, vp: u32, vl: u32| {
            map_op(&mut c, map, (kp, kl), (vp, vl), MapOp::Lookup)
        },
    )?;
    l.func_wrap(
        IMPORT_MODULE,
        "map_update",
        |mut c: Caller<'_, HostState>, map: u32, kp: u32, kl: u32, vp: u32, vl: u32| {
            map_op(&mut c, map, (kp, kl), (vp, vl), MapOp::Update)
        },
    )?;
    l.func_wrap(
        IMPORT_MODULE,
        "map_delete",
        |mut c: Caller<'_, HostState>, map: u32, kp: u32, kl: u32| {
            map_op(&mut c, map, (kp, kl), (0, 0), MapOp::Delete)
        },
    )?;
    l.func_wrap(IMPORT_MODULE, "now_ns", |c: Caller<'_, HostState>| -> u64 {
        c.data().now_ns
    })?;
    l.func_wrap(
        IMPORT_MODULE,
        "frame_read",
        |mut c: Caller<'_, HostState>, idx: u32, off: u32, dst: u32, len: u32| -> i32 {
            with_memory(&mut c, |mem, st| {
                if st.caps & cap::FRAME_READ == 0 {
                    return status::DENIED;
                }
                if idx as usize >= st.frame_count {
                    return status::INVALID;
                }
                let Some(src) = st.frames[idx as usize].get(off as usize..) else {
                    return status::BOUNDS;
                };
                let n = src.len().min(len as usize);
                let Some(d) = range(mem.len(), dst, n as u32) else {
                    return status::BOUNDS;
                };
                mem[d].copy_from_slice(&src[..n]);
                n as i32
            })
        },
    )?;
    l.func_wrap(
        IMPORT_MODULE,
        "rule_describe",
        |mut c: Caller<'_, HostState>, id: u32, ptr: u32, len: u32| -> i32 {
            with_memory(&mut c, |mem, st| {
                let Some(r) = range(mem.len(), ptr, len.min(256)) else {
                    return status::BOUNDS;
                };
                if let Some(rec) = st.init.as_mut() {
                    rec.rules
                        .insert(id, String::from_utf8_lossy(&mem[r]).into_owned());
                }
                status::OK
            })
        },
    )?;
    l.func_wrap(
        IMPORT_MODULE,
        "rate_class",
        |mut c: Caller<'_, HostState>, id: u32, pps: u64, bps: u64| -> i32 {
            let Ok(id @ 1..) = u16::try_from(id) else {
                return status::INVALID;
            };
            if let Some(rec) = c.data_mut().init.as_mut() {
                rec.rate_classes.insert(id, (pps, bps));
            }
            status::OK
        },
    )?;
    Ok(l)
}

/// A ready instance: initialised with its configuration.
pub struct PolicyInstance {
    store: Store<HostState>,
    memory: Memory,
    io: usize,
    on_new_flow: TypedFunc<u32, i32>,
    on_frames: Option<TypedFunc<u32, i32>>,
    deadline_ticks: u64,
    /// Keeps the epoch ticking during calls.
    ticker: TickerHandle,
}

impl std::fmt::Debug for PolicyInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyInstance")
            .field("io", &self.io)
            .field("deadline_ticks", &self.deadline_ticks)
            .finish_non_exhaustive()
    }
}

impl PolicyInstance {
    /// Instantiates `module`, runs `pol_init` over `config` under the deadline (`ticker`
    /// ticking). With `record`, what `pol_init` declares (rules, rate classes) is returned.
    pub fn new(
        linker: &Linker<HostState>,
        ticker: &TickerHandle,
        module: &PolicyModule,
        shared: Arc<EntryShared>,
        limits: InstanceLimits,
        config: &[u8],
        record: bool,
    ) -> Result<(Self, Option<InitRecord>), InstanceError> {
        if module.manifest.memory_pages > limits.memory_pages {
            return Err(InstanceError::MemoryRequest {
                asked: module.manifest.memory_pages,
                limit: limits.memory_pages,
            });
        }
        if config.len() > CONFIG_MAX {
            return Err(InstanceError::ConfigTooLarge(config.len()));
        }
        let state = HostState {
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_pages as usize * 65536)
                .instances(1)
                .memories(1)
                .tables(4)
                .table_elements(100_000)
                .build(),
            shared,
            memory: None,
            now_ns: 0,
            caps: module.manifest.caps,
            frames: Vec::new(),
            frame_count: 0,
            init: record.then(InitRecord::default),
        };
        let running = ticker.running();
        let mut store = Store::new(linker.engine(), state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(limits.init_deadline_ticks);
        let instance = linker
            .instantiate(&mut store, &module.module)
            .map_err(|e| InstanceError::Instantiate(e.into_boxed_dyn_error()))?;
        let inst_err = |e: wasmtime::Error| InstanceError::Instantiate(e.into_boxed_dyn_error());
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or(InstanceError::IoBounds)?;
        store.data_mut().memory = Some(memory);
        let pol_io = instance
            .get_typed_func::<(), u32>(&mut store, "pol_io")
            .map_err(inst_err)?;
        let pol_init = instance
            .get_typed_func::<u32, i32>(&mut store, "pol_init")
            .map_err(inst_err)?;
        let on_new_flow = instance
            .get_typed_func::<u32, i32>(&mut store, "pol_on_new_flow")
            .map_err(inst_err)?;
        let on_frames = match module.has_on_frames {
            true => Some(
                instance
                    .get_typed_func::<u32, i32>(&mut store, "pol_on_frames")
                    .map_err(inst_err)?,
            ),
            false => None,
        };
        store.set_epoch_deadline(limits.init_deadline_ticks);
        let io = pol_io
            .call(&mut store, ())
            .map_err(|e| InstanceError::Setup(Fault::from_error(e)))? as usize;
        if range(memory.data_size(&store), io as u32, io_off::SIZE as u32).is_none()
            || io > u32::MAX as usize
        {
            return Err(InstanceError::IoBounds);
        }
        memory.data_mut(&mut store)[io + io_off::CONFIG..][..config.len()].copy_from_slice(config);
        store.set_epoch_deadline(limits.init_deadline_ticks);
        let code = pol_init
            .call(&mut store, config.len() as u32)
            .map_err(|e| InstanceError::Setup(Fault::from_error(e)))?;
        if code < 0 {
            return Err(InstanceError::Refused(code));
        }
        drop(running);
        let record = store.data_mut().init.take();
        let inst = PolicyInstance {
            store,
            memory,
            io,
            on_new_flow,
            on_frames,
            deadline_ticks: limits.deadline_ticks,
            ticker: ticker.clone(),
        };
        Ok((inst, record))
    }

    /// Judges up to [`MAX_BATCH`] frames: `descs[i]` describes `frames[i]`; verdicts go to
    /// `out[..descs.len()]`. `per_frame` calls `pol_on_frames` (or `pol_on_new_flow` when the
    /// module has none).
    pub fn judge(
        &mut self,
        now_ns: u64,
        per_frame: bool,
        descs: &[FrameDesc],
        frames: &[&[u8]],
        out: &mut [Verdict],
    ) -> Result<(), Fault> {
        let n = descs.len().min(MAX_BATCH).min(frames.len()).min(out.len());
        let st = self.store.data_mut();
        st.now_ns = now_ns;
        if st.caps & cap::FRAME_READ != 0 {
            st.frames.resize_with(n.max(st.frames.len()), Vec::new);
            for (buf, f) in st.frames.iter_mut().zip(frames) {
                buf.clear();
                buf.extend_from_slice(f);
            }
            st.frame_count = n;
        }
        let mem = self.memory.data_mut(&mut self.store);
        let io = &mut mem[self.io..self.io + io_off::SIZE];
        io[io_off::COUNT..io_off::COUNT + 4].copy_from_slice(&(n as u32).to_le_bytes());
        io[io_off::NOW_NS..io_off::NOW_NS + 8].copy_from_slice(&now_ns.to_le_bytes());
        for i in 0..n {
            let d = io_off::DESC + i * DESC_SIZE;
            io[d..d + DESC_SIZE].copy_from_slice(&descs[i].encode());
            let snap = usize::from(descs[i].snap_len)
                .min(SNAPSHOT_LEN)
                .min(frames[i].len());
            let s = io_off::SNAP + i * SNAPSHOT_LEN;
            io[s..s + snap].copy_from_slice(&frames[i][..snap]);
        }
        let func = match (per_frame, &self.on_frames) {
            (true, Some(f)) => f,
            _ => &self.on_new_flow,
        };
        let running = self.ticker.running();
        self.store.set_epoch_deadline(self.deadline_ticks);
        let judged = func.call(&mut self.store, n as u32);
        drop(running);
        let judged = judged.map_err(Fault::from_error)?;
        if judged != n as i32 {
            return Err(Fault::Status(judged));
        }
        let mem = self.memory.data(&self.store);
        for (i, v) in out.iter_mut().enumerate().take(n) {
            let at = self.io + io_off::VERDICT + i * VERDICT_SIZE;
            let mut b = [0u8; VERDICT_SIZE];
            b.copy_from_slice(&mem[at..at + VERDICT_SIZE]);
            *v = Verdict::decode(&b);
            if !v.is_valid() {
                return Err(Fault::BadVerdict);
            }
        }
        Ok(())
    }
}

/// Rate limit for module log lines: this many per second, per module.
pub const MODULE_LOG_PER_S: u64 = 10;

impl EntryShared {
    /// Emits a module log line if its rate allows, else counts it as suppressed.
    fn module_log(&self, now_ns: u64, lvl: i32, msg: &str) {
        let allowed = self
            .log_bucket
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(now_ns, 1);
        if !allowed {
            self.stats.logs_suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let name = &self.name;
        match lvl {
            level::ERROR => tracing::error!(policy = %name, "{msg}"),
            level::WARN => tracing::warn!(policy = %name, "{msg}"),
            level::INFO => tracing::info!(policy = %name, "{msg}"),
            _ => tracing::debug!(policy = %name, "{msg}"),
        }
    }
}

/// A fresh log limiter.
pub fn log_bucket(now_ns: u64) -> TokenBucket {
    TokenBucket::new(MODULE_LOG_PER_S, now_ns)
}
