//! The epoch ticker: advances the engine's epoch every tick while module code runs, so that
//! call deadlines (counted in ticks from the call's start) hold, and sleeps parked otherwise.
//!
//! Every entry into a module (instantiation with `pol_init`, a judging call) holds a
//! [`Running`] guard. The ticker thread parks after [`IDLE_TICKS`] ticks in which it saw no
//! guard held; the first guard taken after that wakes it (one `unpark` per idle period, none
//! per call while it ticks). A parked ticker costs no wake-ups, so a daemon without policies,
//! or whose policies see no new flows, has no 1 ms timer running.
//!
//! A deadline cannot be missed while parked: the thread parks only after it set `parked` and
//! then still saw no guard, and a guard is counted before it looks at `parked` (both
//! sequentially consistent), so either the thread sees the guard or the guard sees the thread
//! parked and unparks it.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle, Thread};
use std::time::Duration;

use wasmtime::Engine;

/// Ticks without module code running after which the ticker parks.
pub const IDLE_TICKS: u32 = 100;

/// What the ticker thread and the guards share.
#[derive(Debug)]
struct Shared {
    engine: Engine,
    tick: Duration,
    /// Guards held.
    running: AtomicUsize,
    /// Whether the thread is parked or about to park.
    parked: AtomicBool,
    stop: AtomicBool,
    /// Epoch increments so far.
    ticks: AtomicU64,
    thread: OnceLock<Thread>,
}

/// The ticker thread of an engine; stops it when dropped.
#[derive(Debug)]
pub struct EpochTicker {
    handle: TickerHandle,
    thread: Option<JoinHandle<()>>,
}

/// A handle for taking [`Running`] guards.
#[derive(Clone, Debug)]
pub struct TickerHandle(Arc<Shared>);

/// Held while module code may run: the ticker ticks.
#[derive(Debug)]
pub struct Running<'a>(&'a Shared);

impl EpochTicker {
    /// Starts the ticker of `engine`, one epoch per `tick` while module code runs.
    pub fn start(engine: Engine, tick: Duration) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            engine,
            tick,
            running: AtomicUsize::new(0),
            parked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
            thread: OnceLock::new(),
        });
        let thread = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("policy-epoch".into())
                .spawn(move || run(&shared))?
        };
        let _ = shared.thread.set(thread.thread().clone());
        Ok(EpochTicker {
            handle: TickerHandle(shared),
            thread: Some(thread),
        })
    }

    /// A handle for the instances.
    pub fn handle(&self) -> &TickerHandle {
        &self.handle
    }

    /// Epoch increments so far.
    pub fn ticks(&self) -> u64 {
        self.handle.0.ticks.load(Ordering::Relaxed)
    }

    /// Whether the thread is parked (or about to park) for want of running module code.
    pub fn is_parked(&self) -> bool {
        self.handle.0.parked.load(Ordering::SeqCst)
    }
}

impl TickerHandle {
    /// Marks module code as running until the guard drops; wakes the ticker if it parked.
    pub fn running(&self) -> Running<'_> {
        let s = &*self.0;
        s.running.fetch_add(1, Ordering::SeqCst);
        if s.parked.load(Ordering::SeqCst) {
            if let Some(t) = s.thread.get() {
                t.unpark();
            }
        }
        Running(s)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The ticker thread.
fn run(s: &Shared) {
    let mut idle = 0u32;
    while !s.stop.load(Ordering::Relaxed) {
        if s.running.load(Ordering::SeqCst) > 0 {
            idle = 0;
        } else if idle < IDLE_TICKS {
            idle += 1;
        } else {
            s.parked.store(true, Ordering::SeqCst);
            if s.running.load(Ordering::SeqCst) == 0 && !s.stop.load(Ordering::SeqCst) {
                thread::park();
            }
            s.parked.store(false, Ordering::SeqCst);
            idle = 0;
            continue;
        }
        thread::sleep(s.tick);
        s.engine.increment_epoch();
        s.ticks.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        let s = &self.handle.0;
        s.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Waits up to 5 s for `cond`.
    fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            thread::sleep(Duration::from_millis(2));
        }
        false
    }

    #[test]
    fn ticks_only_while_module_code_runs() {
        let ticker = EpochTicker::start(Engine::default(), Duration::from_millis(1)).unwrap();
        assert!(wait_for(|| ticker.is_parked()), "parks when idle");
        let parked_at = ticker.ticks();
        thread::sleep(Duration::from_millis(50));
        assert_eq!(ticker.ticks(), parked_at, "no ticks while parked");
        {
            let _running = ticker.handle().running();
            assert!(
                wait_for(|| ticker.ticks() >= parked_at + 5),
                "a guard wakes it"
            );
            assert!(!ticker.is_parked());
        }
        assert!(wait_for(|| ticker.is_parked()), "parks again once idle");
    }
}
