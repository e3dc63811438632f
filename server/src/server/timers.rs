//! Timers, without a timer thread: the nearest deadline (an accept retry
//! after descriptor exhaustion, the end of a shutdown's grace, the next
//! sweep for idle and draining connections) is the next poll's timeout,
//! and after each turn the loop runs whatever has come due.

use std::time::{Duration, Instant};

use super::connection::Due;
use super::shutdown::Phase;
use super::{Accepting, CloseReason, Server, Source};

/// How often connections are checked for idleness and for draining too
/// long. Idle timeouts are whole seconds, so a check a second is precise
/// enough, and costs one pass over the slab.
pub(super) const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl Server {
    /// How long `poll` may block: until the nearest timer, or forever.
    pub(super) fn next_timeout(&self) -> Option<Duration> {
        let mut next: Option<Instant> = None;
        let mut consider = |at: Instant| next = Some(next.map_or(at, |n| n.min(at)));
        if let Accepting::OutOfDescriptors { retry_at } = self.accepting {
            consider(retry_at);
        }
        match self.phase {
            Phase::Serving => {}
            Phase::Grace { cut_at, .. } => consider(cut_at),
            Phase::Cutting { .. } => {}
        }
        if self.needs_sweeping() {
            consider(self.next_sweep);
        }
        next.map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Whether any connection may need closing by time: idle timeouts are
    /// on, or a shutdown is under way (draining connections are bounded).
    fn needs_sweeping(&self) -> bool {
        !self.connections.is_empty()
            && (self.idle_timeout.is_some() || self.phase != Phase::Serving)
    }

    pub(super) fn run_timers(&mut self) {
        let now = Instant::now();
        if let Accepting::OutOfDescriptors { retry_at } = self.accepting
            && now >= retry_at
        {
            self.accept_all(Accepting::Retrying);
        }
        if let Phase::Grace { cut_at, sessions } = self.phase
            && now >= cut_at
        {
            let cut = self.cut_all();
            self.phase = Phase::Cutting { sessions, cut };
        }
        if self.needs_sweeping() && now >= self.next_sweep {
            self.next_sweep = now + SWEEP_EVERY;
            self.sweep();
        }
    }

    /// Closes connections idle for `--idle-timeout`, and those that have
    /// been draining for longer than [`DRAIN_LIMIT`](super::connection::DRAIN_LIMIT).
    fn sweep(&mut self) {
        let now = self.clock.now();
        let mut expired = Vec::new();
        for (key, conn) in self.connections.iter_mut() {
            match conn.due(now, self.idle_timeout) {
                Due::Nothing => {}
                Due::Idle(quiet) => {
                    log::debug!("connection {key}: idle for {} s, closing", quiet.as_secs());
                    conn.close_from_server(key, CloseReason::Idle, &mut self.buffers, now);
                    // It may have unread input, or be closed already, and
                    // no new event will say so.
                    self.ready.push(Source::Connection(key).token());
                }
                Due::Remove(reason) => expired.push((key, reason)),
            }
        }
        for (key, reason) in expired {
            self.close(key, reason);
        }
    }
}
