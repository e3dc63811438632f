//! The loop's coarse clock: milliseconds since the server started, in a
//! `u32`, read once per turn of the loop.
//!
//! Each connection keeps two timestamps (accepted, last progress); as
//! `Instant`s they would cost 32 bytes per connection, as `Millis` 8.
//! Differences use wrapping arithmetic, so they stay right for spans under
//! 49 days (2^32 ms), far beyond any idle timeout.

use std::time::{Duration, Instant};

/// A point on the loop's clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Millis(u32);

impl Millis {
    /// The server's start.
    pub const ZERO: Millis = Millis(0);

    /// The point `span` after this one (wrapping, as the clock does).
    #[cfg(test)]
    pub fn after(self, span: Duration) -> Millis {
        Millis(self.0.wrapping_add(span.as_millis() as u32))
    }

    /// How long after `earlier` this is.
    pub fn since(self, earlier: Millis) -> Duration {
        Duration::from_millis(u64::from(self.0.wrapping_sub(earlier.0)))
    }
}

/// Reads the time once per loop turn.
pub struct Clock {
    epoch: Instant,
    now: Millis,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Clock {
        Clock {
            epoch: Instant::now(),
            now: Millis::ZERO,
        }
    }

    /// Reads the time; call once after each poll returns.
    pub fn tick(&mut self) -> Millis {
        // Truncation is the point: the clock wraps every 49 days and only
        // differences are used.
        self.now = Millis(self.epoch.elapsed().as_millis() as u32);
        self.now
    }

    /// The time read by the last `tick`.
    pub fn now(&self) -> Millis {
        self.now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_survive_the_wrap() {
        let before = Millis(u32::MAX - 5);
        let after = Millis(10);
        assert_eq!(after.since(before), Duration::from_millis(16));
    }
}
