//! Receive-side backpressure bounds: how long, and how often, a receive queue without buffers
//! may hold the unicast frames sent to it (see [`super::tx::Progress::Stalled`]).
//!
//! Each receive queue has a waiting credit: a frame may wait while the queue's current dry
//! spell is shorter than the credit. A dry spell spends the credit; the credit grows back by
//! [`STALL_SHARE`] of the time that passes, up to [`STALL_MAX`]. A guest that stops reading
//! holds its senders for at most [`STALL_MAX`] once, and one that posts a buffer now and then
//! holds them for at most that share of the time: past it, frames to it are dropped at once, as
//! a switch port with a full ring does.

use std::time::{Duration, Instant};

/// Most a frame waits for its receiver's buffers.
pub const STALL_MAX: Duration = Duration::from_millis(50);
/// A receive queue may hold its senders one part in `STALL_SHARE` of the time: its credit grows
/// by the time that passes divided by this.
pub const STALL_SHARE: u32 = 4;

/// The waiting credit of one receive queue. Time is passed in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Starvation {
    /// Since when frames found no buffers (none while the queue takes frames).
    since: Option<Instant>,
    /// The waiting this queue may still cause, as of `at` less the dry spells since.
    credit: Duration,
    /// When `credit` last grew (none: a new queue, full credit).
    at: Option<Instant>,
}

impl Starvation {
    /// A frame found no buffers at `now`: whether it may wait.
    pub fn may_wait(&mut self, now: Instant) -> bool {
        let since = match self.since {
            Some(since) => since,
            None => {
                let earned = match self.at {
                    Some(at) => now.saturating_duration_since(at) / STALL_SHARE,
                    None => STALL_MAX,
                };
                self.credit = (self.credit + earned).min(STALL_MAX);
                self.at = Some(now);
                self.since = Some(now);
                now
            }
        };
        now.saturating_duration_since(since) < self.credit
    }

    /// Whether frames found no buffers since the last delivery.
    pub fn is_dry(&self) -> bool {
        self.since.is_some()
    }

    /// A frame was delivered at `now`: the dry spell, if any, ends and is paid for.
    pub fn fed(&mut self, now: Instant) {
        if let Some(since) = self.since.take() {
            let spent = now.saturating_duration_since(since);
            self.credit = self.credit.saturating_sub(spent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_dry_spell_holds_frames_for_at_most_stall_max() {
        let t0 = Instant::now();
        let mut s = Starvation::default();
        assert!(s.may_wait(t0));
        assert!(s.may_wait(t0 + STALL_MAX - ms(1)));
        assert!(!s.may_wait(t0 + STALL_MAX));
        assert!(!s.may_wait(t0 + ms(500)), "still dry: no more waiting");
        assert!(s.is_dry());
    }

    #[test]
    fn a_delivery_ends_the_spell_and_credit_grows_back_with_time() {
        let t0 = Instant::now();
        let mut s = Starvation::default();
        assert!(s.may_wait(t0));
        s.fed(t0 + ms(40));
        assert!(!s.is_dry());
        // 10 ms of credit left, and a quarter of the 40 ms that passed came back.
        let t1 = t0 + ms(40);
        assert!(s.may_wait(t1));
        assert!(s.may_wait(t1 + ms(19)));
        assert!(!s.may_wait(t1 + ms(20)));
        s.fed(t1 + ms(30));
        // Out of credit; 100 ms later a quarter of that came back.
        let t2 = t1 + ms(100);
        assert!(s.may_wait(t2));
        assert!(s.may_wait(t2 + ms(24)));
        assert!(!s.may_wait(t2 + ms(25)));
    }

    #[test]
    fn a_receiver_that_posts_a_buffer_now_and_then_holds_its_senders_a_bounded_share() {
        // A guest posting one buffer every 40 ms, frames always waiting for it.
        let t0 = Instant::now();
        let mut s = Starvation::default();
        let mut held = Duration::ZERO;
        let mut t = t0;
        for _ in 0..100 {
            let start = t;
            // The sender retries every millisecond until the buffer arrives or it may not wait.
            while t < start + ms(40) && s.may_wait(t) {
                t += ms(1);
            }
            held += t - start;
            t = start + ms(40);
            s.fed(t);
        }
        let elapsed = t - t0;
        assert!(
            held <= elapsed / STALL_SHARE + STALL_MAX + ms(100),
            "held {held:?} of {elapsed:?}"
        );
    }

    #[test]
    fn deliveries_without_a_dry_spell_change_nothing() {
        let t0 = Instant::now();
        let mut s = Starvation::default();
        s.fed(t0);
        assert_eq!(s, Starvation::default());
    }
}
