//! The daemon's event loops (housekeeping, uplinks, control socket, metrics): rust-vmm's
//! event-manager with one subscriber per source, run until a stop eventfd is signalled; and the
//! buffered non-blocking reads and writes their connections share.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use tracing::warn;
use vmm_sys_util::eventfd::EventFd;

/// A boxed subscriber that can move to the loop's thread.
pub type Subscriber = Box<dyn MutEventSubscriber + Send>;

/// Ends an event loop when its eventfd is signalled: add it to the loop's subscribers and check
/// the flag from [`Stopper::stopped`] after each run.
#[derive(Debug)]
pub struct Stopper {
    stop: Arc<EventFd>,
    stopped: Arc<AtomicBool>,
}

impl Stopper {
    /// A stopper watching `stop`.
    pub fn new(stop: Arc<EventFd>) -> Self {
        Stopper {
            stop,
            stopped: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Set once `stop` was signalled.
    pub fn stopped(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stopped)
    }
}

impl MutEventSubscriber for Stopper {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&*self.stop, EventSet::IN)) {
            warn!(error = ?e, "the stop eventfd cannot be watched");
        }
    }
}

/// Runs `subscriber` until `stop` is signalled.
fn run(stop: Arc<EventFd>, subscriber: Subscriber) -> Result<(), event_manager::Error> {
    let mut manager = EventManager::<Subscriber>::new()?;
    manager.add_subscriber(subscriber);
    let stopper = Stopper::new(stop);
    let stopped = stopper.stopped();
    manager.add_subscriber(Box::new(stopper));
    while !stopped.load(Ordering::Relaxed) {
        manager.run()?;
    }
    Ok(())
}

/// An event loop on a thread of its own, serving one subscriber until it is dropped.
#[derive(Debug)]
pub struct LoopThread {
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl LoopThread {
    /// Runs `subscriber` on a new thread named `name` (a failed loop is logged).
    pub fn spawn(name: &str, subscriber: Subscriber) -> io::Result<LoopThread> {
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let loop_stop = Arc::clone(&stop);
        let thread = thread::Builder::new().name(name.into()).spawn(move || {
            if let Err(e) = run(loop_stop, subscriber) {
                warn!(error = ?e, "the {} loop failed", thread::current().name().unwrap_or("?"));
            }
        })?;
        Ok(LoopThread {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for LoopThread {
    /// Stops the loop and waits for its thread.
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads what a non-blocking `stream` has into `input`, up to a little over `limit` bytes.
/// Returns whether the peer closed its side (or the stream failed).
pub fn read_available(stream: &mut impl Read, input: &mut Vec<u8>, limit: usize) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                input.extend_from_slice(&buf[..n]);
                if input.len() > limit {
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

/// Writes what a non-blocking `stream` takes of `output`. Returns false when the stream
/// failed.
pub fn write_pending(stream: &mut impl Write, output: &mut Vec<u8>) -> bool {
    while !output.is_empty() {
        match stream.write(output) {
            Ok(0) => return false,
            Ok(n) => {
                output.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}
