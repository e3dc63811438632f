//! `Server`: the one event loop. It owns the `Poll`, the listeners, the UDP
//! sockets and the slab of connections, and it is the only place that
//! matches on tokens.
//!
//! One turn of the loop:
//!
//! 1. `poll` for events, with a zero timeout if connections are waiting in
//!    the ready queue, else until the nearest timer (or forever).
//! 2. Dispatch each event by token: a listener accepts until WouldBlock (or
//!    its budget is spent), a UDP socket echoes datagrams, a connection
//!    moves bytes.
//! 3. Serve the ready queue (`ready.rs`): connections (and sockets) that
//!    stopped early on purpose, with readiness left unused, get another
//!    turn. Without this an edge-triggered loop stalls them forever.
//! 4. Timers: retry accepting after descriptor exhaustion, close idle
//!    connections, end a shutdown's grace period. There is no timer
//!    thread: the nearest deadline is the next poll's timeout.
//!
//! What the loop asks a connection is asked of the connection
//! ([`Connection::serve`], [`Connection::due`], [`State::in_session`]): the
//! loop never writes a connection's fields (apart from the source it is
//! counted against, set at accept) or reads its state machine from
//! outside.

mod bind;
mod buffers;
mod clock;
mod config;
mod connection;
pub mod extras;
mod listener;
mod ready;
mod shutdown;
mod signals;
mod sources;
pub mod stats;
mod timers;
mod udp;

pub use bind::{DescriptorBudget, MAX_PIPES, RESERVED_DESCRIPTORS, descriptor_budget, pipes_for};
pub use buffers::Buffers;
pub use clock::Millis;
pub use config::{
    DEFAULT_BUFFER, DEFAULT_GRACE, DEFAULT_IDLE_TIMEOUT, EXIT_STATUSES, MAX_GRACE,
    MAX_IDLE_TIMEOUT, Outcome, ServerConfig, StartError,
};
pub use connection::{CloseReason, Connection, Due, Pending, State, Stream};
pub use extras::splice::SPARE_PIPES;
pub use extras::udp_guard::{DEFAULT_UDP_RATE, DEFAULT_UDP_RATE_TOTAL, GuardConfig, PortRange};
pub use shutdown::StopHandle;
pub use stats::{Stats, TcpStats};
pub use udp::UdpCounters;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::net::{MAX_DATAGRAM, Readiness, display_addr, interrupted};
use clock::Clock;
use extras::udp_guard::UdpGuard;
use listener::{Accepted, Accepting, Listener};
use ready::ReadyQueue;
use shutdown::Phase;
use signals::Signals;
use sources::{Admission, SourceLimit};
use timers::SWEEP_EVERY;
use udp::UdpEcho;

/// The most addresses one server binds (each gets a TCP and a UDP token).
const MAX_BINDS: usize = 256;

// Fixed tokens sit at the top of the token space so that a slab key is a
// connection's token as it is. mio reserves none of these.
const WAKER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
// Listener i is LISTENER_BASE + 1 + i, so the highest stays below SIGNALS.
const LISTENER_BASE: usize = SIGNALS.0 - 1 - MAX_BINDS;
const UDP_BASE: usize = LISTENER_BASE - MAX_BINDS;

/// What a token stands for.
enum Source {
    Connection(usize),
    Listener(usize),
    Udp(usize),
    Waker,
    Signals,
}

impl Source {
    fn of(token: Token) -> Source {
        match token.0 {
            t if t == WAKER.0 => Source::Waker,
            t if t == SIGNALS.0 => Source::Signals,
            t if t > LISTENER_BASE => Source::Listener(t - LISTENER_BASE - 1),
            t if t > UDP_BASE => Source::Udp(t - UDP_BASE - 1),
            key => Source::Connection(key),
        }
    }

    fn token(&self) -> Token {
        Token(match *self {
            Source::Connection(key) => key,
            Source::Listener(i) => LISTENER_BASE + 1 + i,
            Source::Udp(i) => UDP_BASE + 1 + i,
            Source::Waker => WAKER.0,
            Source::Signals => SIGNALS.0,
        })
    }
}

/// How long accepting pauses after the process ran out of descriptors:
/// long enough not to spin on EMFILE, short enough that clients waiting in
/// the backlog are taken soon after a connection closes.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The connection limit is warned about at most this often; it is counted
/// every time.
const LIMIT_WARN_EVERY: Duration = Duration::from_secs(60);

/// Events taken from the kernel per `poll` call.
const EVENTS_PER_POLL: usize = 1024;

/// How many accepts one listener makes per turn before the loop serves
/// everything else, as `READS_PER_TURN` bounds one connection's reads. Each
/// accepted connection costs a few system calls (accept4, epoll_ctl), so a crowd connecting at once is taken in turns of 64 while
/// open connections keep being echoed; and an accept error that comes back
/// on every call can cost one turn's budget, never the whole loop. A
/// listener that spends its budget goes on the ready queue: the clients
/// still in its backlog bring no new edge.
const ACCEPTS_PER_TURN: usize = 64;

/// The outcome of one turn of [`Connection::on_ready`] (and of a UDP
/// socket's): what the loop does next with the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Turn {
    /// Nothing more can be done until the next event.
    Wait,
    /// The turn's budget ran out with readiness left unused (there may be
    /// more to read, or not): serve it again before the loop blocks in poll.
    Yield,
    /// The connection is finished; remove it.
    Closed(CloseReason),
}

/// The echo server: one thread, one `Poll`.
pub struct Server {
    poll: Poll,
    /// Listener `i` has token `Source::Listener(i)` for good: one that
    /// failed is `None`, so the others keep their tokens.
    listeners: Vec<Option<Listener>>,
    udp: Vec<UdpEcho>,
    /// Which datagrams go unanswered: one for all the UDP sockets, so its
    /// rates bound the server's replies, not each socket's.
    udp_guard: UdpGuard,
    /// Connections by token; a slab reuses keys of closed connections.
    connections: Slab<Connection<TcpStream>>,
    buffers: Buffers,
    /// Where datagrams are received; one per loop.
    datagram: Box<[u8]>,
    /// Counters of UDP sockets already closed by a shutdown.
    closed_udp: UdpCounters,
    /// Sources that stopped early with readiness unused (see the module
    /// docs). Served after each batch of events.
    ready: ReadyQueue,
    /// Whether the listeners are accepted from, and if not, why.
    accepting: Accepting,
    /// When the connection limit was last warned about.
    limit_warned_at: Option<Instant>,
    max_connections: usize,
    /// Connections open per source, and `--max-connections-per-source`.
    per_source: SourceLimit,
    idle_timeout: Option<Duration>,
    grace: Duration,
    clock: Clock,
    next_sweep: Instant,
    phase: Phase,
    stats: TcpStats,
    signals: Option<Signals>,
    waker: Arc<Waker>,
    stop_requested: Arc<AtomicBool>,
    /// Every listener and UDP socket failed: the shutdown under way ends
    /// in [`Outcome::NothingLeft`].
    nothing_left: bool,
    /// Log each readiness event (`--trace-events`). A plain bool, checked
    /// before anything is formatted, so the trace costs nothing when off.
    trace_events: bool,
}

impl Server {
    /// Binds every socket the configuration asks for and registers them
    /// on a new poll. Nothing is served until [`Server::run`].
    pub fn bind(config: &ServerConfig) -> Result<Server, StartError> {
        if !config.tcp && !config.udp {
            return Err(StartError::NothingToServe);
        }
        let poll = Poll::new().map_err(StartError::Poll)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(StartError::Poll)?);
        let (listeners, udp) = bind::bind_all(config)?;
        // Raise the open-files limit whether or not --max-connections was
        // given: a limit set by hand needs the descriptors just as much.
        let budget = descriptor_budget();
        let max_connections = config.max_connections.unwrap_or(budget.max_connections);
        let per_source = config
            .max_connections_per_source
            .unwrap_or(max_connections / 4);
        let signals = if config.signals {
            Some(Signals::new().map_err(StartError::Poll)?)
        } else {
            None
        };
        let mut server = Server {
            poll,
            listeners: listeners.into_iter().map(Some).collect(),
            udp,
            udp_guard: bind::udp_guard(config),
            connections: Slab::new(),
            buffers: Buffers::new(config.buffer).splicing(config.splice, budget.pipes),
            datagram: vec![0; MAX_DATAGRAM].into_boxed_slice(),
            closed_udp: UdpCounters::default(),
            ready: ReadyQueue::default(),
            accepting: Accepting::Yes,
            limit_warned_at: None,
            max_connections,
            per_source: SourceLimit::new(per_source, config.limit_loopback),
            // The command line refuses more; a config built in code is
            // held to the same bounds, so no deadline computed from them
            // can overflow an Instant or outlive the loop's clock.
            idle_timeout: config.idle_timeout.map(|idle| idle.min(MAX_IDLE_TIMEOUT)),
            grace: config.grace.min(MAX_GRACE),
            clock: Clock::new(),
            next_sweep: Instant::now() + SWEEP_EVERY,
            phase: Phase::Serving,
            stats: TcpStats::default(),
            signals,
            waker,
            stop_requested: Arc::new(AtomicBool::new(false)),
            nothing_left: false,
            trace_events: config.trace_events,
        };
        server.register_sockets().map_err(StartError::Poll)?;
        log::debug!(
            "serving at most {max_connections} connections, {} per source{}, {} bytes of \
             buffer each",
            server.per_source.limit(),
            if config.limit_loopback {
                ""
            } else {
                " (loopback exempt)"
            },
            config.buffer
        );
        Ok(server)
    }

    fn register_sockets(&mut self) -> io::Result<()> {
        let registry = self.poll.registry();
        if let Some(signals) = self.signals.as_mut() {
            registry.register(signals.source_mut(), SIGNALS, Interest::READABLE)?;
        }
        for (i, listener) in self.listeners.iter_mut().enumerate() {
            let Some(listener) = listener else { continue };
            registry.register(
                &mut listener.socket,
                Source::Listener(i).token(),
                Interest::READABLE,
            )?;
            log::info!("listening on tcp {}", listener.local);
        }
        for (i, udp) in self.udp.iter_mut().enumerate() {
            let local = udp.local_addr();
            registry.register(
                udp.socket_mut(),
                Source::Udp(i).token(),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            log::info!("listening on udp {local}");
        }
        Ok(())
    }

    /// The TCP addresses being served, with their real ports.
    pub fn tcp_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().flatten().map(|l| l.local).collect()
    }

    /// The UDP addresses being served, with their real ports.
    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.udp.iter().map(UdpEcho::local_addr).collect()
    }

    /// A handle that stops [`Server::run`] from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            waker: Arc::clone(&self.waker),
            requested: Arc::clone(&self.stop_requested),
        }
    }

    /// Runs the loop until stopped: by the [`StopHandle`], by the end of a
    /// graceful shutdown (after a signal, or once no socket is left to
    /// serve), or by a second signal; says which. Returns an error only if
    /// polling itself fails, which no client can cause.
    pub fn run(mut self) -> io::Result<Outcome> {
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        let mut queued = Vec::new();
        loop {
            let timeout = if self.ready.is_empty() {
                self.next_timeout()
            } else {
                Some(Duration::ZERO)
            };
            if let Err(err) = self.poll.poll(&mut events, timeout) {
                if interrupted(&err) {
                    continue;
                }
                return Err(err);
            }
            self.clock.tick();
            if self.trace_events {
                let n = events.iter().count();
                log::trace!("poll returned {n} event{}", if n == 1 { "" } else { "s" });
            }
            for event in events.iter() {
                if self.trace_events {
                    trace_event(event);
                }
                self.dispatch(event.token(), Readiness::of(event));
            }
            // Serve what stopped early. Taking into a second vector keeps
            // both allocations, and anything that yields again goes back
            // on `self.ready` for the next turn, after fresh events.
            self.ready.take(&mut queued);
            for token in queued.drain(..) {
                if self.trace_events {
                    log::trace!(
                        "token {} ({}): again, from the ready queue",
                        token.0,
                        Source::of(token)
                    );
                }
                self.ready.serving(token);
                self.dispatch(token, Readiness::NONE);
            }
            self.run_timers();
            if self.stop_requested.load(Ordering::SeqCst) {
                let outcome = self.outcome(true);
                let open = self.connections.len() as u64;
                // Closed here rather than dropped with the server, so that
                // one holding echo bytes is reset (see `Serving::abort`).
                self.close_all();
                log::info!(
                    "stopping at once, {} cut; {outcome}; {}",
                    count(open, "session"),
                    self.stats()
                );
                return Ok(outcome);
            }
            if self.phase != Phase::Serving && self.connections.is_empty() {
                let outcome = self.outcome(false);
                self.log_receipt(outcome);
                return Ok(outcome);
            }
        }
    }

    fn dispatch(&mut self, token: Token, readiness: Readiness) {
        match Source::of(token) {
            Source::Connection(key) => self.on_connection(key, readiness),
            Source::Listener(i) => self.accept(i),
            Source::Udp(i) => {
                let Some(udp) = self.udp.get_mut(i) else {
                    return;
                };
                let turn = udp.on_ready(readiness, &mut self.datagram, &mut self.udp_guard);
                if turn == Turn::Yield {
                    self.ready.push(token);
                }
            }
            // Only wakes the loop; the stop flag is checked after each turn.
            Source::Waker => {}
            Source::Signals => self.on_signals(),
        }
    }

    fn on_connection(&mut self, key: usize, readiness: Readiness) {
        // The slab entry may be gone: a connection closed after it was put
        // on the ready queue. Its key may even be reused by a connection
        // accepted since; the queued turn is then merely spurious for the
        // new one, and costs nothing (it brings no readiness). Events for
        // closed sockets do not come: closing removes them from the poll.
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        match conn.serve(key, readiness, &mut self.buffers, self.clock.now()) {
            Turn::Wait => {}
            Turn::Yield => self.ready.push(Source::Connection(key).token()),
            Turn::Closed(reason) => self.close(key, reason),
        }
    }

    /// Accepts from listener `i` until the backlog is empty, the connection
    /// limit is reached, descriptors run out, or [`ACCEPTS_PER_TURN`] are
    /// spent (then it goes on the ready queue). Called by its events and,
    /// with no event, from the ready queue and after a pause.
    fn accept(&mut self, i: usize) {
        if !self.accepting.may_accept() {
            return;
        }
        for _ in 0..ACCEPTS_PER_TURN {
            if self.connections.len() >= self.max_connections {
                self.pause_at_limit();
                return;
            }
            // None once it failed: a late event or queued turn finds nothing.
            let Some(Some(listener)) = self.listeners.get_mut(i) else {
                return;
            };
            match listener.accept() {
                Accepted::Connection(stream, peer) => {
                    if self.accepting == Accepting::Retrying {
                        self.accepting = Accepting::Yes;
                        log::info!("accepting connections again");
                    }
                    self.add_connection(stream, peer);
                }
                Accepted::Empty => return,
                Accepted::Interrupted => {}
                Accepted::Lost(err) => {
                    self.stats.refused += 1;
                    log::debug!("a connection was lost before it was accepted: {err}");
                }
                Accepted::OutOfResources(err) => {
                    if self.accepting != Accepting::Retrying {
                        log::warn!(
                            "cannot accept connections: {err}. Open connections are still \
                             served; new ones wait in the backlog and are retried every {} ms. \
                             Raise the open-files limit (ulimit -n) or lower --max-connections.",
                            ACCEPT_BACKOFF.as_millis()
                        );
                    } else {
                        log::debug!("accept retry failed: {err}");
                    }
                    self.accepting = Accepting::OutOfDescriptors {
                        retry_at: Instant::now() + ACCEPT_BACKOFF,
                    };
                    return;
                }
                Accepted::Broken(err) => {
                    self.close_listener(i, &err);
                    return;
                }
            }
        }
        // The budget is spent and more clients may be waiting.
        self.ready.push(Source::Listener(i).token());
    }

    fn pause_at_limit(&mut self) {
        self.accepting = Accepting::AtLimit;
        self.stats.limit_reached += 1;
        let now = Instant::now();
        if self
            .limit_warned_at
            .is_none_or(|at| now.duration_since(at) >= LIMIT_WARN_EVERY)
        {
            self.limit_warned_at = Some(now);
            log::warn!(
                "{} connections are open, the most --max-connections allows; new clients \
                 wait in the backlog until one closes",
                self.max_connections
            );
        } else {
            log::debug!("connection limit reached");
        }
    }

    /// Accepts on every listener: after a pause ends, no event will come
    /// for the clients already waiting in the backlogs (edge-triggered).
    /// `again`: how accepting goes on.
    fn accept_all(&mut self, again: Accepting) {
        self.accepting = again;
        for i in 0..self.listeners.len() {
            self.accept(i);
        }
    }

    fn add_connection(&mut self, mut stream: TcpStream, peer: SocketAddr) {
        // No setsockopt here: TCP_NODELAY and the buffer sizes were set on
        // the listener, and Linux copies them to every socket it accepts
        // (see `net::set_connection_options`).

        // One source may hold at most --max-connections-per-source: a
        // connection over it is reset before it costs a registration.
        let source = match self.per_source.admit(peer.ip()) {
            Admission::Exempt => None,
            Admission::Counted(source) => Some(source),
            Admission::Refused { source, first } => {
                self.refuse_over_source_limit(stream, peer, source, first);
                return;
            }
        };
        let entry = self.connections.vacant_entry();
        let key = entry.key();
        // Registered once for both directions and never again: with edge
        // triggering there is nothing to toggle (docs/how-it-works.md, "The
        // shape").
        let interest = CONNECTION_INTEREST;
        if let Err(err) =
            self.poll
                .registry()
                .register(&mut stream, Source::Connection(key).token(), interest)
        {
            self.stats.refused += 1;
            log::warn!("could not register the connection from {peer}: {err}; dropping it");
            if let Some(source) = source {
                self.per_source.closed(source);
            }
            return;
        }
        log::debug!("connection {key}: accepted from {}", display_addr(peer));
        self.stats.accepted += 1;
        self.stats.active += 1;
        let mut conn = Connection::new(stream).accepted_at(self.clock.now());
        conn.source = source;
        entry.insert(conn);
    }

    fn close(&mut self, key: usize, reason: CloseReason) {
        let mut conn = self.connections.remove(key);
        // Uncounts it from its source if it was counted (not loopback, or
        // --limit-loopback); an exempt one has none: one test.
        if let Some(source) = conn.source {
            self.per_source.closed(source);
        }
        // Its pipe goes back to the pool (or is closed, if bytes are left
        // in it) rather than staying attached to a connection now gone.
        conn.release(&mut self.buffers);
        let reset = conn.reset_by_server();
        self.stats
            .closed(reason, conn.bytes_in, conn.bytes_out, reset);
        if log::log_enabled!(log::Level::Debug) {
            let peer = conn
                .stream()
                .peer_addr()
                .map(|p| display_addr(p).to_string())
                .unwrap_or_else(|_| "peer address gone (see the accepted line)".to_string());
            // A reset says so, with the bytes it threw away: the client saw
            // an error, not an EOF (see `Serving::abort`).
            let (ended, discarded) = if reset {
                (
                    "reset by the server",
                    format!(", {} discarded", conn.unechoed()),
                )
            } else {
                ("closed", String::new())
            };
            log::debug!(
                "connection {key}: {ended}, {peer}, {:.3} s, {} bytes in, {} echoed{discarded}: \
                 {reason}",
                self.clock.now().since(conn.opened).as_secs_f64(),
                conn.bytes_in,
                conn.bytes_out,
            );
        }
        // Dropping the stream closes the socket, which also removes it from
        // the poll: no deregister call needed.
        drop(conn);
        if self.accepting == Accepting::AtLimit {
            self.accept_all(Accepting::Yes);
        }
    }
}

/// Takes a listener off the poll and closes it. Closing alone is not enough
/// where another process holds the same socket (the service manager, under
/// socket activation): epoll forgets a registration only once every
/// descriptor of the socket is closed (epoll(7), "Questions and answers",
/// Q6), so its events would keep waking the loop.
fn deregister_listener(poll: &Poll, mut listener: Listener) {
    if let Err(err) = poll.registry().deregister(&mut listener.socket) {
        log::debug!("could not take tcp {} off the poll: {err}", listener.local);
    }
}

/// What a connection is registered for, once. PRIORITY (`EPOLLPRI`): TCP
/// urgent data arrived, and a read will stop short at it (see
/// `Readiness::priority`); without it that short read would pass for
/// "drained" and the bytes behind the mark would wait for an edge that
/// never comes.
#[cfg(any(target_os = "linux", target_os = "android"))]
const CONNECTION_INTEREST: Interest = Interest::READABLE
    .add(Interest::WRITABLE)
    .add(Interest::PRIORITY);
/// Elsewhere mio has no PRIORITY interest.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const CONNECTION_INTEREST: Interest = Interest::READABLE.add(Interest::WRITABLE);

/// One line for one readiness event, with every flag mio reports: what a
/// learner should see to understand edge-triggered readiness.
fn trace_event(event: &mio::event::Event) {
    let flags = [
        (event.is_readable(), "readable"),
        (event.is_writable(), "writable"),
        (event.is_read_closed(), "read-closed"),
        (event.is_write_closed(), "write-closed"),
        (event.is_error(), "error"),
        (event.is_priority(), "priority"),
    ];
    let names: Vec<&str> = flags.iter().filter(|f| f.0).map(|f| f.1).collect();
    let token = event.token();
    log::trace!(
        "token {} ({}): {}",
        token.0,
        Source::of(token),
        names.join(" ")
    );
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Connection(key) => write!(f, "connection {key}"),
            Source::Listener(i) => write!(f, "tcp listener {i}"),
            Source::Udp(i) => write!(f, "udp socket {i}"),
            Source::Waker => f.write_str("waker"),
            Source::Signals => f.write_str("signals"),
        }
    }
}

/// "1 session", "2 sessions": counts in log lines read as sentences.
fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 12): a grace too long for the clock panicked
    /// when the shutdown computed its deadline. The command line refuses
    /// such a value now; a config built in code is held to the maximum.
    #[test]
    fn durations_too_long_for_the_clock_are_held_to_their_maximum() {
        let config = ServerConfig {
            grace: Duration::MAX,
            idle_timeout: Some(Duration::MAX),
            ..ServerConfig::default()
        };
        let mut server = Server::bind(&config).expect("binds on loopback");
        assert_eq!(server.grace, MAX_GRACE);
        assert_eq!(server.idle_timeout, Some(MAX_IDLE_TIMEOUT));
        server.begin_shutdown("SIGTERM", "send the signal again to exit at once");
        assert!(matches!(server.phase, Phase::Grace { .. }));
    }

    /// Every fixed token decodes to what it was made from, and none of
    /// them collide (the highest listener's token once equalled a fixed one).
    #[test]
    fn tokens_round_trip_without_collisions() {
        let mut seen = std::collections::HashSet::new();
        let sources = (0..MAX_BINDS)
            .flat_map(|i| [Source::Listener(i), Source::Udp(i)])
            .chain([Source::Waker, Source::Signals, Source::Connection(0)]);
        for source in sources {
            let token = source.token();
            assert!(seen.insert(token), "{source} shares token {}", token.0);
            assert_eq!(Source::of(token).token(), token, "{source}");
            assert_eq!(Source::of(token).to_string(), source.to_string());
        }
    }
}
