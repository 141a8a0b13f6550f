//! The datapath workers: a thread per port, or a fixed pool of them sharing the ports. A worker
//! waits on its ports' TX kick eventfds, their devices' wake eventfds (ring changes) and its
//! inbox, and runs TX batches to completion, round robin over the queues that have work. In a
//! pool, kicks that arrive while a worker works are taken in the same wake-up, so it sleeps and
//! is preempted less often than a thread per port, and an idle port costs no thread.
//!
//! A queue whose frame waits for a receiver's buffers ([`Progress::Stalled`]) is run again when
//! that receiver's guest kicks its receive queue (watched edge-triggered, never read: the
//! eventfd belongs to the receiver's rings) or after [`STALL_POLL`], whichever comes first.
//! The receiver is asked to kick (EVENT_IDX `avail_event`) only when a frame starts waiting.
//!
//! A queue waiting for a kick is also looked at every [`KICK_CHECK`]: chains found there, with no
//! kick in its eventfd either, missed their kick (a driver or hypervisor without the memory barrier
//! between publishing the available index and reading `avail_event`, as QEMU before 8.1 under TCG
//! with one vCPU). The queue is served and the miss logged, instead of the guest's transmissions
//! stopping for good.
//!
//! Optionally a worker polls: once its queues run dry it keeps looking at them, kicks off, for
//! a while before it turns kicks back on and sleeps. Guests then rarely kick and frames wait
//! less for a wake-up, for CPU time spent looking.

use std::collections::BTreeMap;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::AsRawFd;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bridge_core::PortId;
use tracing::{error, warn};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::tx::{self, Progress, Stall, TxScratch};
use super::Datapath;
use crate::port::Port;
use crate::{sys, vhu_net};

/// How often a stalled queue is tried again without a kick from its receiver.
pub const STALL_POLL: Duration = Duration::from_millis(1);

/// How often the queues that wait for a kick are looked at for chains that came without one.
const KICK_CHECK: Duration = Duration::from_secs(1);

/// Busy passes of a worker serving one port between two looks at its fds: its queue has work
/// of its own, and what else comes (commands, ring changes) can wait a few batches. A pool
/// worker looks on every pass (a pass runs every queue with work, and a kick may be for any).
const BUSY_PASSES: u32 = 8;

/// The inbox's token; any other token is a port's slot (high half) and what fired (low half).
const TOKEN_INBOX: u64 = u64::MAX;
/// The low half of a port's token for its device's wake eventfd; below it, a TX queue's index.
const KIND_WAKE: u64 = u32::MAX as u64;
/// Tokens of receivers' kick eventfds watched for stalled queues: this plus the watch's index.
const TOKEN_STALL: u64 = 1 << 62;

/// What a worker is asked to do.
enum Command {
    /// Serve this port.
    Add(Arc<Port>),
    /// Stop serving this port, then answer.
    Remove(PortId, Sender<()>),
}

/// A worker thread as the pool sees it.
struct Handle {
    inbox: Sender<Command>,
    wake: Arc<EventFd>,
    thread: JoinHandle<()>,
}

/// The datapath's worker threads, and which port each serves.
#[derive(Debug)]
pub struct Workers {
    dp: Arc<Datapath>,
    poll: Duration,
    /// A fixed pool of workers shared by the ports; without it, each port has its own.
    pool: bool,
    state: Mutex<PoolState>,
}

struct PoolState {
    workers: Vec<Option<Handle>>,
    /// The worker serving each port.
    serving: BTreeMap<PortId, usize>,
}

impl std::fmt::Debug for PoolState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolState")
            .field("workers", &self.workers.len())
            .field("serving", &self.serving)
            .finish()
    }
}

impl Workers {
    /// Workers on `dp`, each polling its dry queues for `poll` (if not zero) before it sleeps:
    /// a pool of `pool` workers started now that share the ports, or (`None`) a worker per
    /// port, started with it.
    pub fn start(
        dp: &Arc<Datapath>,
        pool: Option<NonZeroUsize>,
        poll: Duration,
    ) -> io::Result<Self> {
        let workers = Workers {
            dp: Arc::clone(dp),
            poll,
            pool: pool.is_some(),
            state: Mutex::new(PoolState {
                workers: Vec::new(),
                serving: BTreeMap::new(),
            }),
        };
        for i in 0..pool.map_or(0, NonZeroUsize::get) {
            let handle = workers.spawn(format!("datapath{i}"))?;
            workers.lock().workers.push(Some(handle));
        }
        Ok(workers)
    }

    fn spawn(&self, name: String) -> io::Result<Handle> {
        let (inbox, commands) = mpsc::channel();
        let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let (dp, w, poll) = (Arc::clone(&self.dp), Arc::clone(&wake), self.poll);
        let thread = thread::Builder::new().name(name).spawn(move || {
            if let Err(e) = serve(&dp, &w, &commands, poll) {
                error!(error = %e, "datapath worker failed");
            }
        })?;
        Ok(Handle {
            inbox,
            wake,
            thread,
        })
    }

    /// Gives `port` to a worker: its own, or the pool's worker serving the fewest ports.
    pub fn add(&self, port: Arc<Port>) -> io::Result<()> {
        let mut state = self.lock();
        let w = if self.pool {
            let mut load = vec![0usize; state.workers.len()];
            for &w in state.serving.values() {
                load[w] += 1;
            }
            let Some(w) = (0..load.len()).min_by_key(|&w| load[w]) else {
                return Ok(());
            };
            w
        } else {
            let handle = self.spawn(format!("port{}-dp", port.id().0))?;
            let w = vacant(&mut state.workers);
            state.workers[w] = Some(handle);
            w
        };
        state.serving.insert(port.id(), w);
        if let Some(h) = &state.workers[w] {
            h.send(Command::Add(port));
        }
        Ok(())
    }

    /// Takes port `id` from its worker (a worker of its own ends): once this returns, no
    /// worker touches its rings.
    pub fn remove(&self, id: PortId) {
        let (done, own) = {
            let mut state = self.lock();
            let Some(w) = state.serving.remove(&id) else {
                return;
            };
            let (done, answer) = mpsc::channel();
            if let Some(h) = &state.workers[w] {
                h.send(Command::Remove(id, done));
            }
            let own = if self.pool {
                None
            } else {
                state.workers[w].take()
            };
            (answer, own)
        };
        // An error means the worker ended, and with it its hold on the port.
        let _ = done.recv();
        if let Some(h) = own {
            h.stop();
        }
    }

    /// Ends the workers (after their ports were removed).
    pub fn stop(&self) {
        let workers = std::mem::take(&mut self.lock().workers);
        for w in workers.into_iter().flatten() {
            w.stop();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Workers {
    /// Ends the workers also when the daemon never started (a later start-up step failed).
    fn drop(&mut self) {
        self.stop();
    }
}

impl Handle {
    fn send(&self, command: Command) {
        // A failed send means the worker ended; a failed write, that a wake-up is pending.
        let _ = self.inbox.send(command);
        let _ = self.wake.write(1);
    }

    fn stop(self) {
        // A closed inbox ends the worker.
        drop(self.inbox);
        let _ = self.wake.write(1);
        let _ = self.thread.join();
    }
}

/// One transmit queue as the worker tracks it.
#[derive(Default)]
struct TxQueue {
    /// Its kick eventfd, watched (level-triggered, read on wakeup).
    kick: Option<Arc<EventFd>>,
    /// Whether it has work.
    pending: bool,
    /// Whether it ran dry with its kicks left off: the worker polls it.
    polled: bool,
    /// The frame it waits with, if any.
    stall: Option<Stall>,
    /// The watch of the receiver's kick eventfd for its last stall (an index in
    /// `Worker::watches`).
    watch: Option<usize>,
    /// Times it was found with chains but no kick ([`KICK_CHECK`]).
    missed: u64,
}

/// A port a worker serves.
struct Served {
    port: Arc<Port>,
    queues: Vec<TxQueue>,
}

/// A receiver's kick eventfd, watched for the queues whose frames waited for it.
struct StallWatch {
    kick: Arc<EventFd>,
    /// The queues (slot, index) watching it.
    queues: Vec<(usize, usize)>,
}

struct Worker<'a> {
    dp: &'a Datapath,
    /// How long dry queues are polled before the worker sleeps (zero: not at all).
    poll: Duration,
    epoll: Epoll,
    /// The ports served, by slot (a slot is reused once its port is removed).
    slots: Vec<Option<Served>>,
    /// Stall watches, by index (reused once free).
    watches: Vec<Option<StallWatch>>,
}

fn same(a: &Option<Arc<EventFd>>, b: &Option<Arc<EventFd>>) -> bool {
    matches!((a, b), (Some(a), Some(b)) if Arc::ptr_eq(a, b))
}

/// The index of an empty entry of `v`, pushed at the end if there is none.
fn vacant<T>(v: &mut Vec<Option<T>>) -> usize {
    v.iter().position(Option::is_none).unwrap_or_else(|| {
        v.push(None);
        v.len() - 1
    })
}

fn port_token(slot: usize, kind: u64) -> u64 {
    ((slot as u64) << 32) | kind
}

impl Worker<'_> {
    fn watch(&self, fd: &EventFd, token: u64, edge: bool) -> io::Result<()> {
        let events = if edge {
            EventSet::IN | EventSet::EDGE_TRIGGERED
        } else {
            EventSet::IN
        };
        let ev = EpollEvent::new(events, token);
        self.epoll.ctl(ControlOperation::Add, fd.as_raw_fd(), ev)
    }

    fn unwatch(&self, fd: &EventFd) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Delete,
            fd.as_raw_fd(),
            EpollEvent::default(),
        )
    }

    /// Starts serving `port` in a free slot.
    fn add(&mut self, port: Arc<Port>) -> io::Result<()> {
        let slot = vacant(&mut self.slots);
        self.watch(port.device().wake_fd(), port_token(slot, KIND_WAKE), false)?;
        let queues = (0..port.device().queue_count())
            .map(|_| TxQueue::default())
            .collect();
        self.slots[slot] = Some(Served { port, queues });
        self.resync(slot)
    }

    /// Stops serving port `id`: forgets its fds, its stalls and the port.
    fn remove(&mut self, id: PortId) -> io::Result<()> {
        let Some(slot) = self
            .slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.port.id() == id))
        else {
            return Ok(());
        };
        for i in 0..self.queue_count(slot) {
            self.end_stall_watch(slot, i)?;
            if let Some(kick) = self.queue(slot, i).kick.take() {
                self.unwatch(&kick)?;
            }
        }
        if let Some(s) = self.slots[slot].take() {
            self.unwatch(s.port.device().wake_fd())?;
        }
        Ok(())
    }

    fn queue_count(&self, slot: usize) -> usize {
        self.slots[slot].as_ref().map_or(0, |s| s.queues.len())
    }

    /// Queue `i` of the port in `slot` (which holds a port).
    fn queue(&mut self, slot: usize, i: usize) -> &mut TxQueue {
        let served = self.slots[slot].as_mut().expect("a served slot");
        &mut served.queues[i]
    }

    /// Follows the rings' state of the port in `slot`: watches the kick fd of every running TX
    /// ring and forgets the stalls of rings that changed. Marks each running ring as having
    /// work, to pick up buffers posted before its kick fd was watched.
    fn resync(&mut self, slot: usize) -> io::Result<()> {
        let Some(port) = self.slots[slot].as_ref().map(|s| Arc::clone(&s.port)) else {
            return Ok(());
        };
        for i in 0..self.queue_count(slot) {
            if vhu_net::is_rx_queue(i) {
                continue;
            }
            let current = port
                .device()
                .vring(i)
                .filter(|v| v.is_running())
                .and_then(|v| v.kick().cloned());
            if !same(&self.queue(slot, i).kick, &current) {
                if let Some(old) = self.queue(slot, i).kick.take() {
                    self.unwatch(&old)?;
                }
                if let Some(new) = &current {
                    self.watch(new, port_token(slot, i as u64), false)?;
                }
                let q = self.queue(slot, i);
                q.kick = current.clone();
                q.stall = None;
                q.polled = false;
                self.end_stall_watch(slot, i)?;
            }
            self.queue(slot, i).pending = current.is_some();
        }
        Ok(())
    }

    /// Runs one batch on queue `i` of the port in `slot` and records how it ended. The
    /// receiver's kick eventfd stays watched after the wait (until another one is needed): that
    /// receiver asked to kick only while a frame waited for it, and the next wait needs no
    /// system call to set up.
    fn run(&mut self, slot: usize, i: usize, scratch: &mut TxScratch) -> io::Result<()> {
        let Some(served) = self.slots[slot].as_mut() else {
            return Ok(());
        };
        let retry = served.queues[i].stall.take();
        let poll = !self.poll.is_zero();
        match tx::run_batch(self.dp, &served.port, i, scratch, retry, poll) {
            Progress::Idle => {
                served.queues[i].pending = false;
                served.queues[i].polled = poll;
            }
            Progress::More => served.queues[i].pending = true,
            Progress::Stalled(stall) => {
                served.queues[i].pending = false;
                // It waits for its receiver, not for its guest.
                served.queues[i].polled = false;
                served.queues[i].stall = Some(stall);
                let kick = self.receiver_kick(&stall);
                let current = self.queue(slot, i).watch;
                let watched = current.and_then(|w| self.watches[w].as_ref());
                if !same(&watched.map(|w| Arc::clone(&w.kick)), &kick) {
                    self.end_stall_watch(slot, i)?;
                    if let Some(k) = kick {
                        self.start_stall_watch(slot, i, k)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The kick eventfd of the receive queue `stall` waits for.
    fn receiver_kick(&self, stall: &Stall) -> Option<Arc<EventFd>> {
        let ports = self.dp.ports();
        let port = tx::guest_port(&ports, stall.waiting.dst)?;
        let vring = port.device().vring(stall.waiting.ring)?;
        vring.kick().cloned()
    }

    /// Has queue `i` of `slot` watch `kick`, with the other queues that watch it already.
    fn start_stall_watch(&mut self, slot: usize, i: usize, kick: Arc<EventFd>) -> io::Result<()> {
        let found = self
            .watches
            .iter()
            .position(|w| w.as_ref().is_some_and(|w| Arc::ptr_eq(&w.kick, &kick)));
        let w = match found {
            Some(w) => w,
            None => {
                let w = vacant(&mut self.watches);
                self.watch(&kick, TOKEN_STALL + w as u64, true)?;
                let queues = Vec::new();
                self.watches[w] = Some(StallWatch { kick, queues });
                w
            }
        };
        if let Some(watch) = self.watches[w].as_mut() {
            watch.queues.push((slot, i));
        }
        self.queue(slot, i).watch = Some(w);
        Ok(())
    }

    /// Ends queue `i` of `slot`'s stall watch; the eventfd is unwatched once no queue uses it.
    fn end_stall_watch(&mut self, slot: usize, i: usize) -> io::Result<()> {
        let Some(w) = self.queue(slot, i).watch.take() else {
            return Ok(());
        };
        let Some(watch) = self.watches[w].as_mut() else {
            return Ok(());
        };
        watch.queues.retain(|&q| q != (slot, i));
        if watch.queues.is_empty() {
            if let Some(watch) = self.watches[w].take() {
                self.unwatch(&watch.kick)?;
            }
        }
        Ok(())
    }

    /// Marks the queues of stall watch `w` as having work.
    fn stall_kicked(&mut self, w: usize) {
        let Some(watch) = self.watches.get(w).and_then(Option::as_ref) else {
            return;
        };
        for &(slot, i) in &watch.queues {
            if let Some(s) = self.slots[slot].as_mut() {
                s.queues[i].pending = true;
            }
        }
    }

    /// An event of the port in `slot`: a TX kick or its device's wake.
    fn port_event(&mut self, slot: usize, kind: u64) -> io::Result<()> {
        let Some(served) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return Ok(());
        };
        if kind == KIND_WAKE {
            // Reading resets the counter; a failure means it was already zero.
            let _ = served.port.device().wake_fd().read();
            return self.resync(slot);
        }
        if let Some(q) = served.queues.get_mut(kind as usize) {
            if let Some(kick) = &q.kick {
                let _ = kick.read();
                q.pending = true;
            }
        }
        Ok(())
    }

    /// Takes the inbox's commands; false once the pool closed it.
    fn commands(&mut self, inbox: &Receiver<Command>) -> io::Result<bool> {
        loop {
            match inbox.try_recv() {
                Ok(Command::Add(port)) => self.add(port)?,
                Ok(Command::Remove(id, done)) => {
                    self.remove(id)?;
                    let _ = done.send(());
                }
                Err(TryRecvError::Empty) => return Ok(true),
                Err(TryRecvError::Disconnected) => return Ok(false),
            }
        }
    }

    /// Looks at the polled queues: those with chains have work.
    fn look(&mut self) {
        for s in self.slots.iter_mut().flatten() {
            for (i, q) in s.queues.iter_mut().enumerate() {
                if q.polled && !q.pending {
                    q.pending = s.port.device().vring(i).is_some_and(|mut v| v.has_avail());
                }
            }
        }
    }

    /// Stops polling: kicks go back on; a queue with chains that arrived meanwhile has work.
    fn stop_polling(&mut self) {
        for s in self.slots.iter_mut().flatten() {
            for (i, q) in s.queues.iter_mut().enumerate() {
                if std::mem::take(&mut q.polled) {
                    let vring = s.port.device().vring(i);
                    q.pending |= vring.is_some_and(|mut v| v.ask_for_buffers());
                }
            }
        }
    }

    /// Looks at the queues that wait for a kick: one with chains missed it, and has work.
    fn missed_kicks(&mut self) {
        for s in self.slots.iter_mut().flatten() {
            for (i, q) in s.queues.iter_mut().enumerate() {
                let waiting = q.kick.is_some() && !q.pending && !q.polled && q.stall.is_none();
                if !waiting || !s.port.device().vring(i).is_some_and(|mut v| v.has_avail()) {
                    continue;
                }
                q.pending = true;
                // A kick that came after the worker's last wait is no miss (taken here).
                if let Some(kick) = q.kick.as_ref().filter(|k| sys::is_readable(&***k)) {
                    let _ = kick.read();
                    continue;
                }
                q.missed += 1;
                // Logged at the 1st, 2nd, 4th, 8th... miss of a queue.
                if q.missed.is_power_of_two() {
                    warn!(
                        port = s.port.id().0,
                        queue = i,
                        missed = q.missed,
                        "a transmit queue had frames but no kick; serving it (the guest's \
                         notification lacks a memory barrier: QEMU before 8.1 under TCG needs \
                         -smp 1,maxcpus=2)"
                    );
                }
            }
        }
    }

    fn any_queue(&self, f: impl Fn(&TxQueue) -> bool) -> bool {
        self.slots.iter().flatten().any(|s| s.queues.iter().any(&f))
    }
}

/// Serves the ports the inbox gives until the pool closes it.
fn serve(
    dp: &Datapath,
    wake: &EventFd,
    inbox: &Receiver<Command>,
    poll: Duration,
) -> io::Result<()> {
    let mut w = Worker {
        dp,
        poll,
        epoll: Epoll::new()?,
        slots: Vec::new(),
        watches: Vec::new(),
    };
    w.watch(wake, TOKEN_INBOX, false)?;
    let mut scratch = TxScratch::default();
    let mut events = [EpollEvent::default(); 64];
    let mut last_poll = Instant::now();
    let mut last_check = last_poll;
    // While its queues are dry and polled: when the worker stops polling them.
    let mut polling_until = None;
    // Busy passes since the fds were last looked at.
    let mut unlooked = 0;
    loop {
        let stalled = w.any_queue(|q| q.stall.is_some());
        let mut busy = w.any_queue(|q| q.pending);
        if busy {
            polling_until = None;
        } else if w.any_queue(|q| q.polled) {
            let now = Instant::now();
            let until = *polling_until.get_or_insert(now + w.poll);
            if now < until {
                w.look();
                busy = true;
            } else {
                polling_until = None;
                w.stop_polling();
                busy = w.any_queue(|q| q.pending);
            }
        }
        let timeout = if busy {
            0
        } else if stalled {
            STALL_POLL.as_millis() as i32
        } else {
            KICK_CHECK.as_millis() as i32
        };
        let n = if busy && w.slots.len() == 1 && unlooked < BUSY_PASSES {
            unlooked += 1;
            0
        } else {
            unlooked = 0;
            match w.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        // The clock, read once for the timed looks below (not on a busy pass without stalls).
        let now = (stalled || !busy).then(Instant::now);
        if let Some(now) = now.filter(|_| stalled) {
            // The poll: stalled queues try again every STALL_POLL, however busy the others are
            // (a waiting frame must reach its deadline even if its receiver never kicks).
            if now.saturating_duration_since(last_poll) >= STALL_POLL {
                last_poll = now;
                for s in w.slots.iter_mut().flatten() {
                    for q in &mut s.queues {
                        q.pending |= q.stall.is_some();
                    }
                }
            }
        }
        for ev in &events[..n] {
            match ev.data() {
                TOKEN_INBOX => {
                    // Reading resets the counter; a failure means it was already zero.
                    let _ = wake.read();
                    if !w.commands(inbox)? {
                        return Ok(());
                    }
                }
                token if token >= TOKEN_STALL => w.stall_kicked((token - TOKEN_STALL) as usize),
                token => w.port_event((token >> 32) as usize, token & KIND_WAKE)?,
            }
        }
        if let Some(now) = now.filter(|_| !busy) {
            // After the kicks that woke the worker were taken: only a queue without one counts.
            if now.saturating_duration_since(last_check) >= KICK_CHECK {
                last_check = now;
                w.missed_kicks();
            }
        }
        for slot in 0..w.slots.len() {
            for i in 0..w.queue_count(slot) {
                if w.slots[slot].as_ref().is_some_and(|s| s.queues[i].pending) {
                    w.run(slot, i, &mut scratch)?;
                }
            }
        }
    }
}
