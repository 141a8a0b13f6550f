//! The [`Policy`] trait a module implements, the batch loop the ABI exports run, and
//! [`export_policy!`](crate::export_policy) which turns a `Policy` impl into a module.

use crate::abi::{IoArea, Verdict, MAX_BATCH};
use crate::config::ConfigError;
use crate::headers::Frame;
use crate::manifest::Manifest;

/// A policy: configuration in, verdicts out.
///
/// The host calls it in batches; the SDK runs the loop, so an implementation judges one frame
/// at a time. Verdicts from `on_new_flow` are cached in the flow's conntrack entry unless they
/// carry [`crate::abi::vflag::NO_CACHE`]; frames of such flows come to `on_frame`.
pub trait Policy: Sized + 'static {
    /// What the module declares (stored in the `pol_manifest` section).
    const MANIFEST: Manifest<'static>;

    /// Builds the policy from its configuration text. An error refuses the load (the previous
    /// generation stays in force).
    fn init(config: &[u8]) -> Result<Self, ConfigError>;

    /// Judges a frame that opens a flow or belongs to none.
    fn on_new_flow(&mut self, frame: &Frame<'_>) -> Verdict;

    /// Judges a frame of a flow whose verdict was not cached. Defaults to `on_new_flow`.
    fn on_frame(&mut self, frame: &Frame<'_>) -> Verdict {
        self.on_new_flow(frame)
    }
}

/// Runs `policy` over the first `n` descriptors of `io` (clamped to [`MAX_BATCH`]), writing one
/// verdict per frame: the loop behind `pol_on_new_flow` (`per_frame == false`) and
/// `pol_on_frames` (`per_frame == true`). Returns the number judged.
pub fn judge_batch<P: Policy>(policy: &mut P, io: &mut IoArea, n: u32, per_frame: bool) -> i32 {
    let n = (n as usize).min(MAX_BATCH);
    for i in 0..n {
        let frame = Frame::new(&io.desc[i], &io.snap[i], i as u32);
        io.verdict[i] = if per_frame {
            policy.on_frame(&frame)
        } else {
            policy.on_new_flow(&frame)
        };
    }
    n as i32
}

/// Runs `P::init` over `len` bytes of the I/O area's config, logging a refusal.
pub fn init_from<P: Policy>(io: &IoArea, len: u32) -> Result<P, i32> {
    let cfg = io
        .config
        .get(..len as usize)
        .ok_or(crate::abi::status::BOUNDS)?;
    P::init(cfg).map_err(|e| {
        log_config_error(&e);
        crate::abi::status::INVALID
    })
}

fn log_config_error(e: &ConfigError) {
    let mut buf = [0u8; 128];
    let mut w = crate::fmt::BufWriter::new(&mut buf);
    let _ = core::fmt::Write::write_fmt(&mut w, format_args!("{e}"));
    crate::hostcall::log(crate::abi::level::ERROR, w.as_str());
}

#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
pub use cell::ModuleState;

#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
mod cell {
    use super::{init_from, judge_batch, Policy};
    use crate::abi::{IoArea, ABI_VERSION};
    use core::cell::UnsafeCell;

    /// The I/O area, a static of its own: all zero, so it costs the module file nothing.
    struct IoCell(UnsafeCell<IoArea>);

    // SAFETY: see `ModuleState`: no threads, no re-entrancy.
    unsafe impl Sync for IoCell {}

    static IO: IoCell = IoCell(UnsafeCell::new(IoArea::ZERO));

    /// A module's policy, in static memory, beside the SDK's I/O area.
    ///
    /// Sound because a `wasm32` module without the atomics feature is single-threaded and the
    /// host never calls an export while another runs (host imports do not call back), so at
    /// most one reference from the methods below is live at a time.
    #[derive(Debug)]
    pub struct ModuleState<P> {
        policy: UnsafeCell<Option<P>>,
    }

    // SAFETY: see the type's doc: no threads, no re-entrancy.
    unsafe impl<P> Sync for ModuleState<P> {}

    impl<P: Policy> Default for ModuleState<P> {
        fn default() -> Self {
            Self::new()
        }
    }

    impl<P: Policy> ModuleState<P> {
        /// Empty state: no policy until `pol_init`.
        pub const fn new() -> Self {
            ModuleState {
                policy: UnsafeCell::new(None),
            }
        }

        /// `pol_io`: the I/O area's address in linear memory.
        pub fn io_ptr(&self) -> u32 {
            IO.0.get() as usize as u32
        }

        /// `pol_init(len)`.
        pub fn init(&self, len: u32) -> i32 {
            // SAFETY: single-threaded, not re-entered (type doc); no other reference is live.
            let (io, policy) = unsafe { (&mut *IO.0.get(), &mut *self.policy.get()) };
            io.header.abi_version = ABI_VERSION;
            match init_from::<P>(io, len) {
                Ok(p) => {
                    *policy = Some(p);
                    0
                }
                Err(code) => code,
            }
        }

        /// `pol_on_new_flow(n)` and `pol_on_frames(n)`.
        pub fn judge(&self, n: u32, per_frame: bool) -> i32 {
            // SAFETY: single-threaded, not re-entered (type doc); no other reference is live.
            let (io, policy) = unsafe { (&mut *IO.0.get(), &mut *self.policy.get()) };
            match policy {
                Some(p) => judge_batch(p, io, n, per_frame),
                None => crate::abi::status::DENIED,
            }
        }
    }
}

/// Exports a [`Policy`] impl as a policy module: the ABI marker, the manifest section, the
/// I/O area and the `pol_*` entry points. Expands to nothing on targets other than `wasm32`,
/// so the policy's logic stays testable natively with [`crate::testing`].
///
/// A module crate may `#![deny(unsafe_code)]`: the generated exports carry the `allow` that
/// `no_mangle` and `link_section` need (`forbid` cannot be relaxed, so it cannot be used).
#[macro_export]
macro_rules! export_policy {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            const MANIFEST_LEN: usize =
                $crate::manifest::encoded_len(&<$ty as $crate::Policy>::MANIFEST);
            #[allow(unsafe_code)]
            #[link_section = "pol_manifest"]
            #[used]
            static MANIFEST: [u8; MANIFEST_LEN] =
                $crate::manifest::encode::<MANIFEST_LEN>(&<$ty as $crate::Policy>::MANIFEST);
            static STATE: $crate::export::ModuleState<$ty> = $crate::export::ModuleState::new();

            #[allow(unsafe_code)]
            #[no_mangle]
            extern "C" fn policy_abi_v1() {}
            #[allow(unsafe_code)]
            #[no_mangle]
            extern "C" fn pol_io() -> u32 {
                STATE.io_ptr()
            }
            #[allow(unsafe_code)]
            #[no_mangle]
            extern "C" fn pol_init(len: u32) -> i32 {
                STATE.init(len)
            }
            #[allow(unsafe_code)]
            #[no_mangle]
            extern "C" fn pol_on_new_flow(n: u32) -> i32 {
                STATE.judge(n, false)
            }
            #[allow(unsafe_code)]
            #[no_mangle]
            extern "C" fn pol_on_frames(n: u32) -> i32 {
                STATE.judge(n, true)
            }
        };
    };
}
