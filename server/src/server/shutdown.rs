//! Shutdown: how the server stops taking work and lets open sessions
//! finish (the grace period), cuts those still open when it runs out, or
//! stops at once; and the receipt it logs at the end.
//!
//! The phases: `Serving`; a first SIGTERM, SIGINT or SIGHUP (or no socket
//! left to serve) closes the listeners and UDP sockets and starts the
//! `Grace`; when it runs out, the sessions still open are closed from the
//! server (`Cutting`); the run ends once no connection is left. A second
//! signal, or the [`StopHandle`], stops at once.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use mio::Waker;

use super::config::Outcome;
use super::connection::CloseReason;
use super::signals::Request;
use super::{Server, Source, count, deregister_listener};

/// Asks a running server to stop, from any thread.
#[derive(Clone)]
pub struct StopHandle {
    pub(super) waker: Arc<Waker>,
    pub(super) requested: Arc<AtomicBool>,
}

impl StopHandle {
    /// Makes the server's `run` return soon (it closes its sockets as it
    /// returns).
    pub fn stop(&self) {
        self.requested.store(true, Ordering::SeqCst);
        // If waking fails the loop is gone already; nothing to stop.
        let _ = self.waker.wake();
    }
}

/// Serving, or how far a shutdown has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    Serving,
    /// Listeners closed; open sessions may finish until `cut_at`.
    Grace {
        cut_at: Instant,
        sessions: u64,
    },
    /// Sessions still open after the grace were told to close (FIN sent,
    /// reading to their EOF); the sweep drops any still draining after
    /// [`DRAIN_LIMIT`](super::connection::DRAIN_LIMIT), as it does for every close the server starts.
    Cutting {
        sessions: u64,
        cut: u64,
    },
}

impl Server {
    /// Listener `i` is broken (see [`Accepted::Broken`](super::listener::Accepted::Broken)): closes it, says so
    /// once, and serves on with what is left; with nothing left, drains the
    /// open sessions and ends with [`Outcome::NothingLeft`].
    pub(super) fn close_listener(&mut self, i: usize, err: &io::Error) {
        let Some(listener) = self.listeners.get_mut(i).and_then(Option::take) else {
            return;
        };
        let local = listener.local;
        deregister_listener(&self.poll, listener);
        let left = self.listeners.iter().flatten().count() + self.udp.len();
        if left > 0 {
            log::error!(
                "the listening socket on tcp {local} failed (accept: {err}) and is closed: no \
                 new connections are taken there, while open connections and the {} \
                 are still served. Restart echod (or its socket unit) to listen there again.",
                count(left as u64, "other socket")
            );
            return;
        }
        log::error!(
            "the listening socket on tcp {local} failed (accept: {err}) and is closed; it was \
             the last socket echod served, so it lets the open sessions finish (up to --grace) \
             and exits with status {}. Restart echod (or its socket unit) to serve again.",
            Outcome::NothingLeft.exit_status()
        );
        self.nothing_left = true;
        if self.phase == Phase::Serving {
            self.begin_shutdown(
                "no listening or UDP socket is left",
                "SIGTERM or SIGINT exits at once",
            );
        }
    }

    pub(super) fn on_signals(&mut self) {
        let Some(signals) = self.signals.as_mut() else {
            return;
        };
        let requests: Vec<Request> = signals.pending().collect();
        for request in requests {
            match request {
                Request::Report => log::info!("{}", self.stats()),
                Request::Stop(name) if self.phase == Phase::Serving => {
                    self.begin_shutdown(name, "send the signal again to exit at once");
                }
                Request::Stop(name) => {
                    let again = if self.nothing_left { "" } else { " again" };
                    log::info!("{name}{again}: exiting now, sessions still open are cut");
                    self.stop_requested.store(true, Ordering::SeqCst);
                }
            }
        }
    }

    /// The first stop signal, or no socket left to serve (`cause` says
    /// which, `at_once` how to cut the grace short): stop taking new work,
    /// let sessions finish.
    pub(super) fn begin_shutdown(&mut self, cause: &str, at_once: &str) {
        let sessions = self.connections.len() as u64;
        log::info!(
            "{cause}: shutting down: no new connections or datagrams; {} open, with {} s \
             to finish ({at_once})",
            count(sessions, "session"),
            self.grace.as_secs_f64()
        );
        for listener in self.listeners.iter_mut().filter_map(Option::take) {
            deregister_listener(&self.poll, listener);
        }
        // Dropping the UDP sockets closes them, which removes them from the
        // poll; a late event for their tokens finds nothing and is ignored.
        for mut socket in self.udp.drain(..) {
            // Replies already owed go out if the socket takes them now;
            // what it will not take is counted, not silently lost.
            socket.close();
            self.closed_udp.add(&socket.counters);
        }
        // Checked: `--grace 18446744073709551615` once panicked here with
        // "overflow when adding duration to instant" (issue 12). The grace
        // is at most MAX_GRACE, so this cannot fail; were it to, the grace
        // ends at once, which still drains the sessions (FIN, then EOF).
        let now = Instant::now();
        self.phase = Phase::Grace {
            cut_at: now.checked_add(self.grace).unwrap_or(now),
            sessions,
        };
    }

    /// How the run ends if it ends now; `at_once` for a stop that does not
    /// wait for the open sessions (a second signal, the [`StopHandle`]).
    /// A failure to serve outranks how the drain went.
    pub(super) fn outcome(&self, at_once: bool) -> Outcome {
        if self.nothing_left {
            Outcome::NothingLeft
        } else if at_once && !self.connections.is_empty() {
            Outcome::Forced
        } else if let Phase::Cutting { cut: 1.., .. } = self.phase {
            Outcome::Cut
        } else {
            Outcome::Finished
        }
    }

    pub(super) fn log_receipt(&self, outcome: Outcome) {
        let (sessions, cut) = match self.phase {
            Phase::Serving => (0, 0),
            Phase::Grace { sessions, .. } => (sessions, 0),
            Phase::Cutting { sessions, cut } => (sessions, cut),
        };
        let stats = self.stats();
        log::info!(
            "shutdown complete: {} of {} finished, {cut} cut after the grace period; tcp \
             bytes received {}, echoed {}; {outcome}; {stats}",
            sessions - cut,
            count(sessions, "session"),
            stats.tcp.bytes_in,
            stats.tcp.bytes_out,
        );
    }

    /// The grace period is over: close every session still open, with a
    /// FIN if it has every byte back (see `State::Draining`), with an RST
    /// if the server holds echo bytes it now throws away (see
    /// `Serving::abort`). Returns how many there were.
    pub(super) fn cut_all(&mut self) -> u64 {
        let now = self.clock.now();
        let mut cut = 0;
        for (key, conn) in self.connections.iter_mut() {
            if conn.state().in_session() {
                conn.close_from_server(key, CloseReason::Shutdown, &mut self.buffers, now);
                // It may have unread input, or be closed already, and no
                // new event will say so.
                self.ready.push(Source::Connection(key).token());
                cut += 1;
            }
        }
        log::info!(
            "grace period over: closing {} still open",
            count(cut, "session")
        );
        cut
    }

    /// Stopping at once (a second signal, or the [`StopHandle`]): every
    /// connection still open is closed now and counted, with an RST if it
    /// holds echo bytes or input unread (see `Connection::close_now`), so
    /// that none ends with a FIN claiming every byte came back. Listeners go first, so
    /// that a close does not accept anyone new.
    pub(super) fn close_all(&mut self) {
        self.listeners.clear();
        let keys: Vec<usize> = self.connections.iter().map(|(key, _)| key).collect();
        for key in keys {
            let Some(conn) = self.connections.get_mut(key) else {
                continue;
            };
            conn.close_now(key, CloseReason::Shutdown, &mut self.buffers);
            // Closing or closed now, with the reason it had if it was
            // closing already.
            let reason = conn.state().close_reason().unwrap_or(CloseReason::Shutdown);
            self.close(key, reason);
        }
    }
}
