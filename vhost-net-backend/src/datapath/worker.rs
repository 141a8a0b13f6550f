//! A port's datapath thread: waits on its guest's TX kick eventfds, its device's wake eventfd
//! (ring changes) and its stop eventfd, and runs TX batches to completion, round robin over the
//! queues that have work.
//!
//! A queue whose frame waits for a receiver's buffers ([`Progress::Stalled`]) is run again when
//! that receiver's guest kicks its receive queue (watched edge-triggered, never read: the
//! eventfd belongs to the receiver's rings) or after [`STALL_POLL`], whichever comes first.
//! The receiver is asked to kick (EVENT_IDX `avail_event`) only when a frame starts waiting.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::error;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::tx::{self, Progress, Stall, TxScratch};
use super::Datapath;
use crate::port::Port;
use crate::vhu_net;

const TOKEN_STOP: u64 = u64::MAX;
const TOKEN_WAKE: u64 = u64::MAX - 1;
/// Tokens of receivers' kick eventfds watched for a stalled queue: this plus the queue index.
const TOKEN_STALL: u64 = 1 << 32;
/// How often a stalled queue is tried again without a kick from its receiver.
pub const STALL_POLL: Duration = Duration::from_millis(1);

/// One transmit queue as the worker tracks it.
#[derive(Default)]
struct TxQueue {
    /// Its kick eventfd, watched (level-triggered, read on wakeup).
    kick: Option<Arc<EventFd>>,
    /// Whether it has work.
    pending: bool,
    /// The frame it waits with, if any.
    stall: Option<Stall>,
    /// The receiver's kick eventfd watched for its last stall.
    stall_kick: Option<Arc<EventFd>>,
}

struct Worker<'a> {
    dp: &'a Datapath,
    port: &'a Port,
    epoll: Epoll,
    queues: Vec<TxQueue>,
}

fn same(a: &Option<Arc<EventFd>>, b: &Option<Arc<EventFd>>) -> bool {
    matches!((a, b), (Some(a), Some(b)) if Arc::ptr_eq(a, b))
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

    /// Follows the rings' state: watches the kick fd of every running TX ring and forgets the
    /// stalls of rings that changed. Marks each running ring as having work, to pick up buffers
    /// posted before its kick fd was watched.
    fn resync(&mut self) -> io::Result<()> {
        for i in 0..self.queues.len() {
            if vhu_net::is_rx_queue(i) {
                continue;
            }
            let current = self
                .port
                .device()
                .vring(i)
                .filter(|v| v.is_running())
                .and_then(|v| v.kick().cloned());
            if !same(&self.queues[i].kick, &current) {
                if let Some(old) = self.queues[i].kick.take() {
                    self.unwatch(&old)?;
                }
                if let Some(new) = &current {
                    self.watch(new, i as u64, false)?;
                }
                self.queues[i].kick = current.clone();
                self.queues[i].stall = None;
                self.end_stall_watch(i)?;
            }
            self.queues[i].pending = current.is_some();
        }
        Ok(())
    }

    /// Runs one batch on queue `i` and records how it ended. The receiver's kick eventfd stays
    /// watched after the wait (until another one is needed): that receiver asked to kick only
    /// while a frame waited for it, and the next wait needs no system call to set up.
    fn run(&mut self, i: usize, scratch: &mut TxScratch) -> io::Result<()> {
        let retry = self.queues[i].stall.take();
        match tx::run_batch(self.dp, self.port, i, scratch, retry) {
            Progress::Idle => self.queues[i].pending = false,
            Progress::More => self.queues[i].pending = true,
            Progress::Stalled(stall) => {
                self.queues[i].pending = false;
                self.queues[i].stall = Some(stall);
                let kick = self.receiver_kick(&stall);
                if !same(&self.queues[i].stall_kick, &kick) {
                    self.end_stall_watch(i)?;
                    if let Some(k) = &kick {
                        // Another queue of this port may watch the same eventfd already; then
                        // this one is tried again on the poll.
                        if self.watch(k, TOKEN_STALL + i as u64, true).is_ok() {
                            self.queues[i].stall_kick = kick;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The kick eventfd of the receive queue `stall` waits for.
    fn receiver_kick(&self, stall: &Stall) -> Option<Arc<EventFd>> {
        let ports = self.dp.ports();
        let port = tx::guest_port(&ports, stall.dst)?;
        let vring = port.device().vring(stall.ring)?;
        vring.kick().cloned()
    }

    fn end_stall_watch(&mut self, i: usize) -> io::Result<()> {
        match self.queues[i].stall_kick.take() {
            Some(k) => self.unwatch(&k),
            None => Ok(()),
        }
    }
}

/// Runs `port`'s datapath until the port is stopped.
pub fn run(dp: Arc<Datapath>, port: Arc<Port>) {
    if let Err(e) = serve(&dp, &port) {
        error!(port = %port.config().socket.display(), error = %e, "datapath worker failed");
    }
}

fn serve(dp: &Datapath, port: &Port) -> io::Result<()> {
    let mut w = Worker {
        dp,
        port,
        epoll: Epoll::new()?,
        queues: (0..port.device().queue_count())
            .map(|_| TxQueue::default())
            .collect(),
    };
    w.watch(port.stop_fd(), TOKEN_STOP, false)?;
    w.watch(port.device().wake_fd(), TOKEN_WAKE, false)?;
    let mut scratch = TxScratch::default();
    let mut events = [EpollEvent::default(); 32];
    let mut last_poll = Instant::now();
    w.resync()?;
    loop {
        let stalled = w.queues.iter().any(|q| q.stall.is_some());
        let timeout = if w.queues.iter().any(|q| q.pending) {
            0
        } else if stalled {
            STALL_POLL.as_millis() as i32
        } else {
            -1
        };
        let n = match w.epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if stalled {
            // The poll: stalled queues try again every STALL_POLL, however busy the others are
            // (a waiting frame must reach its deadline even if its receiver never kicks).
            let now = Instant::now();
            if now.saturating_duration_since(last_poll) >= STALL_POLL {
                last_poll = now;
                for q in &mut w.queues {
                    q.pending |= q.stall.is_some();
                }
            }
        }
        for ev in &events[..n] {
            match ev.data() {
                TOKEN_STOP => return Ok(()),
                TOKEN_WAKE => {
                    // Reading resets the counter; a failure means it was already zero.
                    let _ = port.device().wake_fd().read();
                    w.resync()?;
                }
                token if token >= TOKEN_STALL => {
                    if let Some(q) = w.queues.get_mut((token - TOKEN_STALL) as usize) {
                        q.pending = true;
                    }
                }
                ring => {
                    if let Some(q) = w.queues.get_mut(ring as usize) {
                        if let Some(kick) = &q.kick {
                            let _ = kick.read();
                            q.pending = true;
                        }
                    }
                }
            }
        }
        for i in 0..w.queues.len() {
            if w.queues[i].pending {
                w.run(i, &mut scratch)?;
            }
        }
    }
}
