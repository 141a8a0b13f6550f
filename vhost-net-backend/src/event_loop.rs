//! The daemon's event loops (housekeeping, control socket): rust-vmm's event-manager with one
//! subscriber per source, run until a stop eventfd is signalled.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use tracing::warn;
use vmm_sys_util::eventfd::EventFd;

/// A boxed subscriber that can move to the loop's thread.
pub type Subscriber = Box<dyn MutEventSubscriber + Send>;

/// Ends the loop when its eventfd is signalled.
struct Stopper {
    stop: Arc<EventFd>,
    stopped: Arc<AtomicBool>,
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

/// Runs `subscribers` until `stop` is signalled.
pub fn run(stop: Arc<EventFd>, subscribers: Vec<Subscriber>) -> Result<(), event_manager::Error> {
    let mut manager = EventManager::<Subscriber>::new()?;
    let stopped = Arc::new(AtomicBool::new(false));
    for s in subscribers {
        manager.add_subscriber(s);
    }
    manager.add_subscriber(Box::new(Stopper {
        stop,
        stopped: Arc::clone(&stopped),
    }));
    while !stopped.load(Ordering::Relaxed) {
        manager.run()?;
    }
    Ok(())
}
