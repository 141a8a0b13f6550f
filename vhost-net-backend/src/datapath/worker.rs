//! A port's datapath thread: waits on its guest's TX kick eventfds, its device's wake eventfd
//! (ring changes) and its stop eventfd, and runs TX batches to completion, round robin over the
//! queues that have work.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use tracing::error;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::tx::{self, TxScratch};
use super::Datapath;
use crate::port::Port;
use crate::vhu_net;

const TOKEN_STOP: u64 = u64::MAX;
const TOKEN_WAKE: u64 = u64::MAX - 1;

/// The kick eventfds the worker waits on, by ring index.
struct Kicks {
    epoll: Epoll,
    fds: Vec<Option<Arc<EventFd>>>,
}

impl Kicks {
    /// Follows the rings' state: waits on the kick fd of every running TX ring. Marks each
    /// running ring as having work, to pick up buffers posted before its kick fd was watched.
    fn resync(&mut self, port: &Port, pending: &mut [bool]) -> io::Result<()> {
        for (i, slot) in self.fds.iter_mut().enumerate() {
            if vhu_net::is_rx_queue(i) {
                continue;
            }
            let current = port
                .device()
                .vring(i)
                .filter(|v| v.is_running())
                .and_then(|v| v.kick().cloned());
            let same = matches!((&*slot, &current), (Some(a), Some(b)) if Arc::ptr_eq(a, b));
            if !same {
                if let Some(old) = slot.take() {
                    self.epoll.ctl(
                        ControlOperation::Delete,
                        old.as_raw_fd(),
                        EpollEvent::default(),
                    )?;
                }
                if let Some(new) = &current {
                    let ev = EpollEvent::new(EventSet::IN, i as u64);
                    self.epoll.ctl(ControlOperation::Add, new.as_raw_fd(), ev)?;
                }
                *slot = current.clone();
            }
            pending[i] = current.is_some();
        }
        Ok(())
    }
}

/// Runs `port`'s datapath until the port is stopped.
pub fn run(dp: Arc<Datapath>, port: Arc<Port>) {
    if let Err(e) = serve(&dp, &port) {
        error!(port = %port.config().socket.display(), error = %e, "datapath worker failed");
    }
}

fn serve(dp: &Datapath, port: &Port) -> io::Result<()> {
    let epoll = Epoll::new()?;
    let add = |fd: i32, token: u64| {
        epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        )
    };
    add(port.stop_fd().as_raw_fd(), TOKEN_STOP)?;
    add(port.device().wake_fd().as_raw_fd(), TOKEN_WAKE)?;
    let queues = port.device().queue_count();
    let mut kicks = Kicks {
        epoll,
        fds: vec![None; queues],
    };
    let mut pending = vec![false; queues];
    let mut scratch = TxScratch::default();
    let mut events = [EpollEvent::default(); 32];
    kicks.resync(port, &mut pending)?;
    loop {
        let timeout = if pending.contains(&true) { 0 } else { -1 };
        let n = match kicks.epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for ev in &events[..n] {
            match ev.data() {
                TOKEN_STOP => return Ok(()),
                TOKEN_WAKE => {
                    // Reading resets the counter; a failure means it was already zero.
                    let _ = port.device().wake_fd().read();
                    kicks.resync(port, &mut pending)?;
                }
                ring => {
                    let ring = ring as usize;
                    if let Some(Some(kick)) = kicks.fds.get(ring) {
                        let _ = kick.read();
                        pending[ring] = true;
                    }
                }
            }
        }
        for (ring, work) in pending.iter_mut().enumerate() {
            if *work {
                *work = tx::run_batch(dp, port, ring, &mut scratch);
            }
        }
    }
}
