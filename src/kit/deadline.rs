//! Deadlines: the moment by which a step must be done, and the socket
//! timeout that keeps a blocking call within it.

use std::io;
use std::time::{Duration, Instant};

/// The shortest timeout given to a socket, the shortest a tool accepts:
/// std refuses a zero timeout, and a millisecond is enough to collect what
/// has already arrived.
pub const MIN_WAIT: Duration = super::duration::MIN_TIMEOUT;

/// The moment by which something must be done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(Instant);

impl Deadline {
    /// `wait` from now.
    pub fn after(wait: Duration) -> Deadline {
        Deadline(Instant::now() + wait)
    }

    /// The time left, zero once passed.
    pub fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// True once the moment has come.
    pub fn passed(self) -> bool {
        Instant::now() >= self.0
    }

    /// The earlier of the two.
    pub fn min(self, other: Deadline) -> Deadline {
        std::cmp::min(self, other)
    }

    /// The moment itself.
    pub fn instant(self) -> Instant {
        self.0
    }

    /// A socket timeout for a call that must end by this deadline: `None`
    /// when it has passed (the caller should not make the call).
    pub fn socket_timeout(self) -> Option<Duration> {
        let left = self.remaining();
        (!left.is_zero()).then(|| left.max(MIN_WAIT))
    }
}

/// The error a call makes when its deadline passed before it could start.
pub fn out_of_time() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the time for this step ran out")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passed_deadline_gives_no_socket_timeout() {
        let past = Deadline::after(Duration::ZERO);
        assert_eq!(past.socket_timeout(), None);
        assert!(past.passed());
        let later = Deadline::after(Duration::from_secs(60));
        assert!(later.socket_timeout().unwrap() > Duration::from_secs(59));
        assert_eq!(past.min(later), past);
    }
}
