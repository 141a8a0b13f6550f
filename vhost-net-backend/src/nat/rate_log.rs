//! Logging of what guests can trigger, rate-limited so that a guest cannot flood the log.

use bridge_core::time::{Duration, Instant};
use tracing::warn;

/// Lines per window.
const BURST: u32 = 10;
/// The window.
const WINDOW: Duration = Duration::from_secs(60);

/// At most [`BURST`] warnings per minute; the number suppressed is logged with the next one.
#[derive(Debug, Default)]
pub struct RateLimited {
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl RateLimited {
    /// Logs the message `line` builds, unless the window's lines are spent. Returns whether it
    /// was logged.
    pub fn warn(&mut self, now: Instant, line: impl FnOnce() -> String) {
        if self.window_start.is_none_or(|s| now >= s + WINDOW) {
            self.window_start = Some(now);
            self.logged = 0;
        }
        if self.logged >= BURST {
            self.suppressed += 1;
            return;
        }
        self.logged += 1;
        let suppressed = std::mem::take(&mut self.suppressed);
        if suppressed > 0 {
            warn!(suppressed, "{}", line());
        } else {
            warn!("{}", line());
        }
    }
}
