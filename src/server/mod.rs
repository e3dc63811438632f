//! `Server`: the one event loop. It owns the `Poll`, the listeners, the UDP
//! sockets and the slab of connections, and it is the only place that
//! matches on tokens.
//!
//! One turn of the loop:
//!
//! 1. `poll` for events, with a zero timeout if connections are waiting in
//!    the ready queue, else until the nearest timer (or forever).
//! 2. Dispatch each event by token: a listener accepts until WouldBlock, a
//!    UDP socket echoes datagrams, a connection moves bytes.
//! 3. Serve the ready queue: connections (and sockets) that stopped early
//!    on purpose, with readiness left unused, get another turn. Without
//!    this an edge-triggered loop stalls them forever.
//! 4. Timers: retry accepting after descriptor exhaustion, close idle
//!    connections, end a shutdown's grace period. There is no timer
//!    thread: the nearest deadline is the next poll's timeout.

mod clock;
mod connection;
mod listener;
mod pipe;
mod signals;
mod udp;
mod udp_guard;

pub use clock::Millis;
pub use connection::{Buffers, CloseReason, Connection, Readiness, State, Stream, Turn};
pub use pipe::{MAX_PIPES, SPARE_PIPES, pipes_for};
pub use udp::{MAX_DATAGRAM, UdpCounters};
pub use udp_guard::{DEFAULT_UDP_RATE, DEFAULT_UDP_RATE_TOTAL, GuardConfig, PortRange};

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::activation::{self, ActivationError};
use crate::net::{self, BindError, BindOptions, Transport, display_addr};
use crate::stats::{Stats, TcpStats};
use clock::Clock;
use listener::{Accepted, Listener};
use signals::{Request, Signals};
use udp::{EchoSocket, UdpEcho};

/// What the server is asked to do; built from the command line by
/// [`crate::cli`], or directly by tests.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Port for TCP and UDP; 0 picks a free one (the same for both).
    pub port: u16,
    /// Addresses to serve; empty means dual-stack `::` (or `0.0.0.0`).
    pub bind: Vec<IpAddr>,
    /// Serve TCP.
    pub tcp: bool,
    /// Serve UDP.
    pub udp: bool,
    /// Capacity of each connection's ring, in bytes.
    pub buffer: usize,
    /// Most connections open at once; `None` derives it from the
    /// open-files limit (see [`default_max_connections`]).
    pub max_connections: Option<usize>,
    /// Close a connection after this long without progress; `None` never.
    pub idle_timeout: Option<Duration>,
    /// How long a shutdown waits for open sessions to finish.
    pub grace: Duration,
    /// Handle SIGINT, SIGTERM (graceful shutdown) and SIGUSR1 (counters).
    /// Off for servers embedded in another program, such as tests.
    pub signals: bool,
    /// Which datagrams UDP does not answer (CERT CA-1996-01, rate limit).
    pub udp_guard: GuardConfig,
    /// Set `SO_REUSEPORT`, so several processes can serve one port.
    pub reuse_port: bool,
    /// Apply the per-source limits to loopback sources too (see
    /// [`crate::net::is_loopback`]); by default they are exempt. For UDP
    /// also the total budget; and UDP holds loopback to its limits anyway
    /// when `route_localnet` is on (see [`GuardConfig::limit_loopback`]).
    pub limit_loopback: bool,
    /// Serve the sockets a service manager passed (`LISTEN_FDS`, see
    /// [`crate::activation`]) instead of binding, when there are any.
    pub socket_activation: bool,
    /// Log every readiness event at trace level: the teaching trace.
    pub trace_events: bool,
    /// Echo bulk connections through a pipe with `splice(2)` (Linux only;
    /// elsewhere ignored).
    pub splice: bool,
}

impl Default for ServerConfig {
    /// Everything on loopback IPv4, a free port, no signal handling: what
    /// tests want.
    fn default() -> ServerConfig {
        ServerConfig {
            port: 0,
            bind: vec![IpAddr::from([127, 0, 0, 1])],
            tcp: true,
            udp: true,
            buffer: crate::cli::DEFAULT_BUFFER,
            max_connections: None,
            idle_timeout: Some(crate::cli::DEFAULT_IDLE_TIMEOUT),
            grace: crate::cli::DEFAULT_GRACE,
            signals: false,
            udp_guard: GuardConfig::default(),
            reuse_port: false,
            limit_loopback: false,
            socket_activation: false,
            trace_events: false,
            splice: true,
        }
    }
}

/// Descriptors kept free for everything that is not a connection or a
/// pipe: the listeners and UDP sockets, the poll, the waker, the signal
/// pipe, stdio, and slack for a log file or a library that opens one. The
/// pipes bulk connections are spliced through get their own share, see
/// [`pipes_for`].
pub const RESERVED_DESCRIPTORS: u64 = 32;

/// Raises the soft open-files limit to the hard limit (servers need many
/// descriptors; the soft limit is often 1,024) and returns the connection
/// limit that leaves [`RESERVED_DESCRIPTORS`] and the pipes' descriptors free.
pub fn default_max_connections() -> usize {
    let soft = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => {
            log::debug!("open-files limit raised to {soft} (the hard limit)");
            soft
        }
        Err(err) => {
            let soft = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
            log::debug!("open-files limit stays {soft}: raising it failed: {err}");
            soft
        }
    };
    let pipes = 2 * pipes_for(soft) as u64;
    usize::try_from(soft.saturating_sub(RESERVED_DESCRIPTORS + pipes).max(1)).unwrap_or(usize::MAX)
}

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

/// How often connections are checked for idleness and for draining too
/// long. Idle timeouts are whole seconds, so a check a second is precise
/// enough, and costs one pass over the slab.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// How long a connection the server closes may take to send its EOF
/// after the server's FIN (see `State::Draining`) before it is closed
/// regardless (checked by the once-a-second sweep, so up to a second more).
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// The connection limit is warned about at most this often; it is counted
/// every time.
const LIMIT_WARN_EVERY: Duration = Duration::from_secs(60);

/// Events taken from the kernel per `poll` call.
const EVENTS_PER_POLL: usize = 1024;

/// Asks a running server to stop, from any thread.
#[derive(Clone)]
pub struct StopHandle {
    waker: Arc<Waker>,
    requested: Arc<AtomicBool>,
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

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    /// A socket could not be bound.
    Bind(BindError),
    /// The sockets passed by a service manager cannot be served.
    Activation(ActivationError),
    /// The event loop (or its signal handlers) could not be set up.
    Poll(io::Error),
    /// Both TCP and UDP were turned off.
    NothingToServe,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Bind(err) => err.fmt(f),
            StartError::Activation(err) => err.fmt(f),
            StartError::Poll(err) => write!(
                f,
                "could not create the event loop ({err}); the system may be out of \
                 file descriptors or memory"
            ),
            StartError::NothingToServe => f.write_str(
                "there is nothing to serve with both --no-tcp and --no-udp; drop one of them",
            ),
        }
    }
}

impl std::error::Error for StartError {}

impl From<BindError> for StartError {
    fn from(err: BindError) -> StartError {
        StartError::Bind(err)
    }
}

/// The echo server: one thread, one `Poll`.
pub struct Server {
    poll: Poll,
    listeners: Vec<Listener>,
    udp: Vec<UdpEcho>,
    /// Connections by token; a slab reuses keys of closed connections.
    connections: Slab<Connection<TcpStream>>,
    buffers: Buffers,
    /// Where datagrams are received; one per loop.
    datagram: Box<[u8]>,
    /// Counters of UDP sockets already closed by a shutdown.
    closed_udp: UdpCounters,
    /// Sources that stopped early with readiness unused (see the module
    /// docs). Served after each batch of events.
    ready: Vec<Token>,
    /// Why accepting is paused, if it is.
    accept_pause: AcceptPause,
    /// True from the first EMFILE until an accept succeeds again, so the
    /// warning is given once per episode rather than per retry.
    out_of_descriptors: bool,
    /// When the connection limit was last warned about.
    limit_warned_at: Option<Instant>,
    max_connections: usize,
    idle_timeout: Option<Duration>,
    grace: Duration,
    clock: Clock,
    next_sweep: Instant,
    phase: Phase,
    stats: TcpStats,
    signals: Option<Signals>,
    waker: Arc<Waker>,
    stop_requested: Arc<AtomicBool>,
    /// Log each readiness event (`--trace-events`). A plain bool, checked
    /// before anything is formatted, so the trace costs nothing when off.
    trace_events: bool,
}

/// Why the listeners are not being accepted from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AcceptPause {
    /// Accepting.
    No,
    /// `--max-connections` are open: clients wait in the kernel's backlog
    /// until one closes.
    AtLimit,
    /// The process or system ran out of descriptors: retry then.
    OutOfDescriptors { retry_at: Instant },
}

/// Serving, or how far a shutdown has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Serving,
    /// Listeners closed; open sessions may finish until `cut_at`.
    Grace {
        cut_at: Instant,
        sessions: u64,
    },
    /// Sessions still open after the grace were told to close (FIN sent,
    /// reading to their EOF); the sweep drops any still draining after
    /// [`DRAIN_LIMIT`], as it does for every close the server starts.
    Cutting {
        sessions: u64,
        cut: u64,
    },
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
        let guard = udp_guard_config(config, Path::new(net::IPV4_CONF));
        let (listeners, udp) = bind_all(config, &guard)?;
        // Raise the open-files limit whether or not --max-connections was
        // given: a limit set by hand needs the descriptors just as much.
        let derived = default_max_connections();
        let max_connections = config.max_connections.unwrap_or(derived);
        let signals = if config.signals {
            Some(Signals::new().map_err(StartError::Poll)?)
        } else {
            None
        };
        let mut server = Server {
            poll,
            listeners,
            udp,
            connections: Slab::new(),
            buffers: Buffers::new(config.buffer).splicing(config.splice),
            datagram: vec![0; MAX_DATAGRAM].into_boxed_slice(),
            closed_udp: UdpCounters::default(),
            ready: Vec::new(),
            accept_pause: AcceptPause::No,
            out_of_descriptors: false,
            limit_warned_at: None,
            max_connections,
            idle_timeout: config.idle_timeout,
            grace: config.grace,
            clock: Clock::new(),
            next_sweep: Instant::now() + SWEEP_EVERY,
            phase: Phase::Serving,
            stats: TcpStats::default(),
            signals,
            waker,
            stop_requested: Arc::new(AtomicBool::new(false)),
            trace_events: config.trace_events,
        };
        server.register_sockets().map_err(StartError::Poll)?;
        log::debug!(
            "serving at most {max_connections} connections, {} bytes of buffer each",
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
        self.listeners.iter().map(|l| l.local).collect()
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
    /// graceful shutdown, or by a second SIGINT/SIGTERM. Returns an error
    /// only if polling itself fails, which no client can cause.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        let mut queued = Vec::new();
        loop {
            let timeout = if self.ready.is_empty() {
                self.next_timeout()
            } else {
                Some(Duration::ZERO)
            };
            if let Err(err) = self.poll.poll(&mut events, timeout) {
                if err.kind() == io::ErrorKind::Interrupted {
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
            // Serve what stopped early. Swapping with a second vector keeps
            // both allocations, and anything that yields again goes into
            // `self.ready` for the next turn, after fresh events.
            std::mem::swap(&mut queued, &mut self.ready);
            for token in queued.drain(..) {
                if self.trace_events {
                    log::trace!(
                        "token {} ({}): again, from the ready queue",
                        token.0,
                        Source::of(token)
                    );
                }
                self.unmark_queued(token);
                self.dispatch(token, Readiness::NONE);
            }
            self.run_timers();
            if self.stop_requested.load(Ordering::SeqCst) {
                log::info!("stopping at once; {}", self.stats());
                return Ok(());
            }
            if self.phase != Phase::Serving && self.connections.is_empty() {
                self.log_receipt();
                return Ok(());
            }
        }
    }

    /// The counters, with the bytes of connections still open added in.
    pub fn stats(&self) -> Stats {
        let mut tcp = self.stats;
        tcp.spliced = self.buffers.pipes.spliced;
        tcp.splice_fallbacks = self.buffers.pipes.fallbacks;
        for (_, conn) in &self.connections {
            tcp.bytes_in += conn.bytes_in;
            tcp.bytes_out += conn.bytes_out;
        }
        let mut udp = UdpCounters::default();
        for socket in &self.udp {
            udp.add(&socket.counters);
        }
        udp.add(&self.closed_udp);
        Stats { tcp, udp }
    }

    fn dispatch(&mut self, token: Token, readiness: Readiness) {
        match Source::of(token) {
            Source::Connection(key) => self.on_connection(key, readiness),
            Source::Listener(i) => self.accept(i),
            Source::Udp(i) => {
                let Some(udp) = self.udp.get_mut(i) else {
                    return;
                };
                if udp.on_ready(readiness, &mut self.datagram) == Turn::Yield && !udp.queued {
                    udp.queued = true;
                    self.ready.push(token);
                }
            }
            // Only wakes the loop; the stop flag is checked after each turn.
            Source::Waker => {}
            Source::Signals => self.on_signals(),
        }
    }

    /// A source taken off the ready queue may be queued again.
    fn unmark_queued(&mut self, token: Token) {
        match Source::of(token) {
            Source::Connection(key) => {
                if let Some(conn) = self.connections.get_mut(key) {
                    conn.queued = false;
                }
            }
            Source::Udp(i) => {
                if let Some(udp) = self.udp.get_mut(i) {
                    udp.queued = false;
                }
            }
            Source::Listener(_) | Source::Waker | Source::Signals => {}
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
        let moved = conn.bytes_moved();
        let turn = conn.on_ready(key, readiness, &mut self.buffers);
        // Progress postpones the idle timeout; but a connection the server
        // is closing stays bounded however much its peer still sends.
        if conn.bytes_moved() != moved && !matches!(conn.state(), State::Draining(_)) {
            conn.active = self.clock.now();
        }
        match turn {
            Turn::Wait => {}
            Turn::Yield => enqueue(&mut self.ready, key, conn),
            Turn::Closed(reason) => self.close(key, reason),
        }
    }

    /// Accepts from listener `i` until the backlog is empty, the connection
    /// limit is reached, or descriptors run out.
    fn accept(&mut self, i: usize) {
        if self.accept_pause != AcceptPause::No {
            return; // a close or the retry timer accepts again
        }
        loop {
            if self.connections.len() >= self.max_connections {
                self.pause_at_limit();
                return;
            }
            let Some(listener) = self.listeners.get(i) else {
                return;
            };
            match listener.accept() {
                Accepted::Connection(stream, peer) => {
                    if self.out_of_descriptors {
                        self.out_of_descriptors = false;
                        log::info!("accepting connections again");
                    }
                    self.add_connection(stream, peer);
                }
                Accepted::Empty => return,
                Accepted::Lost(err) => {
                    self.stats.refused += 1;
                    log::debug!("a connection was lost before it was accepted: {err}");
                }
                Accepted::OutOfResources(err) => {
                    if !self.out_of_descriptors {
                        self.out_of_descriptors = true;
                        log::warn!(
                            "cannot accept connections: {err}. Open connections are still \
                             served; new ones wait in the backlog and are retried every {} ms. \
                             Raise the open-files limit (ulimit -n) or lower --max-connections.",
                            ACCEPT_BACKOFF.as_millis()
                        );
                    } else {
                        log::debug!("accept retry failed: {err}");
                    }
                    self.accept_pause = AcceptPause::OutOfDescriptors {
                        retry_at: Instant::now() + ACCEPT_BACKOFF,
                    };
                    return;
                }
            }
        }
    }

    fn pause_at_limit(&mut self) {
        self.accept_pause = AcceptPause::AtLimit;
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
    fn accept_all(&mut self) {
        self.accept_pause = AcceptPause::No;
        for i in 0..self.listeners.len() {
            self.accept(i);
        }
    }

    fn add_connection(&mut self, mut stream: TcpStream, peer: SocketAddr) {
        // An echo is latency-bound: send each echo at once rather than
        // waiting to coalesce it with more (Nagle's algorithm).
        if let Err(err) = stream.set_nodelay(true) {
            log::debug!(
                "could not set TCP_NODELAY for {}: {err}",
                display_addr(peer)
            );
        }
        let entry = self.connections.vacant_entry();
        let key = entry.key();
        // Registered once for both directions and never again: with edge
        // triggering there is nothing to toggle (see DESIGN, "Register once").
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(err) =
            self.poll
                .registry()
                .register(&mut stream, Source::Connection(key).token(), interest)
        {
            self.stats.refused += 1;
            log::warn!("could not register the connection from {peer}: {err}; dropping it");
            return;
        }
        log::debug!("connection {key}: accepted from {}", display_addr(peer));
        self.stats.accepted += 1;
        self.stats.active += 1;
        entry.insert(Connection::new(stream).accepted_at(self.clock.now()));
    }

    fn close(&mut self, key: usize, reason: CloseReason) {
        let mut conn = self.connections.remove(key);
        // Its pipe goes back to the pool (or is closed, if bytes are left
        // in it) rather than staying attached to a connection now gone.
        conn.release(&mut self.buffers);
        self.stats.closed(reason, conn.bytes_in, conn.bytes_out);
        if log::log_enabled!(log::Level::Debug) {
            let peer = conn
                .stream()
                .peer_addr()
                .map(|p| display_addr(p).to_string())
                .unwrap_or_else(|_| "peer address gone (see the accepted line)".to_string());
            log::debug!(
                "connection {key}: closed, {peer}, {:.3} s, {} bytes in, {} echoed: {reason}",
                self.clock.now().since(conn.opened).as_secs_f64(),
                conn.bytes_in,
                conn.bytes_out,
            );
        }
        // Dropping the stream closes the socket, which also removes it from
        // the poll: no deregister call needed.
        drop(conn);
        if self.accept_pause == AcceptPause::AtLimit {
            self.accept_all();
        }
    }

    fn on_signals(&mut self) {
        let Some(signals) = self.signals.as_mut() else {
            return;
        };
        let requests: Vec<Request> = signals.pending().collect();
        for request in requests {
            match request {
                Request::Report => log::info!("{}", self.stats()),
                Request::Stop(name) if self.phase == Phase::Serving => self.begin_shutdown(name),
                Request::Stop(name) => {
                    log::info!("{name} again: exiting now, sessions still open are cut");
                    self.stop_requested.store(true, Ordering::SeqCst);
                }
            }
        }
    }

    /// First SIGINT/SIGTERM: stop taking new work, let sessions finish.
    fn begin_shutdown(&mut self, signal: &str) {
        let sessions = self.connections.len() as u64;
        log::info!(
            "{signal}: shutting down: no new connections or datagrams; {} open, with {} s \
             to finish (send the signal again to exit at once)",
            count(sessions, "session"),
            self.grace.as_secs_f64()
        );
        // Dropping the sockets closes them, which removes them from the
        // poll; a late event for their tokens finds nothing and is ignored.
        self.listeners.clear();
        for mut socket in self.udp.drain(..) {
            // Replies already owed go out if the socket takes them now;
            // what it will not take is counted, not silently lost.
            socket.close();
            self.closed_udp.add(&socket.counters);
        }
        self.phase = Phase::Grace {
            cut_at: Instant::now() + self.grace,
            sessions,
        };
    }

    fn log_receipt(&self) {
        let (sessions, cut) = match self.phase {
            Phase::Serving => (0, 0),
            Phase::Grace { sessions, .. } => (sessions, 0),
            Phase::Cutting { sessions, cut } => (sessions, cut),
        };
        let stats = self.stats();
        log::info!(
            "shutdown complete: {} of {} finished, {cut} cut after the grace period; tcp \
             bytes received {}, echoed {}; {stats}",
            sessions - cut,
            count(sessions, "session"),
            stats.tcp.bytes_in,
            stats.tcp.bytes_out,
        );
    }

    /// How long `poll` may block: until the nearest timer, or forever.
    fn next_timeout(&self) -> Option<Duration> {
        let mut next: Option<Instant> = None;
        let mut consider = |at: Instant| next = Some(next.map_or(at, |n| n.min(at)));
        if let AcceptPause::OutOfDescriptors { retry_at } = self.accept_pause {
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

    fn run_timers(&mut self) {
        let now = Instant::now();
        if let AcceptPause::OutOfDescriptors { retry_at } = self.accept_pause
            && now >= retry_at
        {
            self.accept_all();
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

    /// The grace period is over: close every session still open, without
    /// an RST (see `State::Draining`). Returns how many there were.
    fn cut_all(&mut self) -> u64 {
        let now = self.clock.now();
        let mut cut = 0;
        for (key, conn) in self.connections.iter_mut() {
            if let State::Open | State::Flushing = conn.state() {
                let reason = CloseReason::Shutdown;
                close_from_server(key, conn, reason, now, &mut self.buffers, &mut self.ready);
                cut += 1;
            }
        }
        log::info!(
            "grace period over: closing {} still open",
            count(cut, "session")
        );
        cut
    }

    /// Closes connections idle for `--idle-timeout`, and those that have
    /// been draining for longer than [`DRAIN_LIMIT`].
    fn sweep(&mut self) {
        let now = self.clock.now();
        let mut expired = Vec::new();
        for (key, conn) in self.connections.iter_mut() {
            let quiet = now.since(conn.active);
            match conn.state() {
                State::Open | State::Flushing => {
                    if self.idle_timeout.is_some_and(|limit| quiet >= limit) {
                        log::debug!("connection {key}: idle for {} s, closing", quiet.as_secs());
                        let reason = CloseReason::Idle;
                        close_from_server(
                            key,
                            conn,
                            reason,
                            now,
                            &mut self.buffers,
                            &mut self.ready,
                        );
                    }
                }
                State::Draining(reason) if quiet >= DRAIN_LIMIT => expired.push((key, reason)),
                State::Draining(_) => {}
                State::Closed(reason) => expired.push((key, reason)),
            }
        }
        for (key, reason) in expired {
            self.close(key, reason);
        }
    }
}

/// One line for one readiness event, with every flag mio reports: what a
/// learner should see to understand edge-triggered readiness.
/// Puts a connection on the ready queue, once at most: one that yields to
/// an event while already waiting there must not get two turns.
fn enqueue(ready: &mut Vec<Token>, key: usize, conn: &mut Connection<TcpStream>) {
    if !conn.queued {
        conn.queued = true;
        ready.push(Source::Connection(key).token());
    }
}

/// Starts a close the server decided on (idle, shutdown); the drain limit
/// counts from `now`. The connection is queued: it may have unread input,
/// or be closed already, and no new event will say so.
fn close_from_server(
    key: usize,
    conn: &mut Connection<TcpStream>,
    reason: CloseReason,
    now: Millis,
    bufs: &mut Buffers,
    ready: &mut Vec<Token>,
) {
    conn.begin_close(key, reason, bufs);
    conn.active = now;
    enqueue(ready, key, conn);
}

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

/// The UDP guard's settings as served: `--limit-loopback` holds loopback
/// sources to the rates, and so does `route_localnet` found on at start in
/// `ipv4_conf` (normally [`net::IPV4_CONF`]; then loopback sources may
/// come from another host), which is said once.
fn udp_guard_config(config: &ServerConfig, ipv4_conf: &Path) -> GuardConfig {
    let mut guard = config.udp_guard.clone();
    guard.limit_loopback |= config.limit_loopback;
    if config.udp && !guard.limit_loopback {
        let on = net::route_localnet(ipv4_conf);
        if !on.is_empty() {
            log::info!(
                "route_localnet is on ({} in {}), so datagrams with a loopback source can come \
                 from other hosts: --udp-rate and --udp-rate-total hold loopback sources too",
                on.join(", "),
                ipv4_conf.display()
            );
            guard.limit_loopback = true;
        }
    }
    guard
}

/// Binds the listeners and UDP sockets for every configured address, or
/// takes them from the service manager when it passed some.
fn bind_all(
    config: &ServerConfig,
    guard: &GuardConfig,
) -> Result<(Vec<Listener>, Vec<UdpEcho>), StartError> {
    if config.socket_activation
        && let Some(sockets) = activation::take().map_err(StartError::Activation)?
    {
        return serve_inherited(sockets, config, guard);
    }
    let explicit = !config.bind.is_empty();
    let addrs = if explicit {
        config.bind.clone()
    } else {
        vec![net::DUAL_STACK_ANY]
    };
    if addrs.len() > MAX_BINDS {
        return Err(StartError::Bind(BindError {
            transport: Transport::Tcp,
            addr: SocketAddr::new(addrs[MAX_BINDS], config.port),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("at most {MAX_BINDS} addresses can be served"),
            ),
        }));
    }
    let mut attempt = 1;
    loop {
        match bind_addrs(&addrs, config, guard) {
            // The machine has no IPv6: serve IPv4 on all addresses instead.
            Err(StartError::Bind(err)) if !explicit && net::is_ipv6_unavailable(&err.source) => {
                log::debug!("IPv6 is unavailable ({}), serving IPv4 only", err.source);
                return bind_addrs(&[net::IPV4_ANY], config, guard);
            }
            // With port 0, the port the kernel picked for TCP may be taken
            // for UDP (or on another address): pick again.
            Err(StartError::Bind(err))
                if config.port == 0
                    && err.source.kind() == io::ErrorKind::AddrInUse
                    && attempt < PORT_ZERO_ATTEMPTS =>
            {
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Wraps the sockets a service manager passed for the loop. `--port`,
/// `--bind` and `--reuseport` do not apply (the manager bound them);
/// `--no-tcp` and `--no-udp` still turn a transport off.
fn serve_inherited(
    sockets: Vec<activation::Socket>,
    config: &ServerConfig,
    guard: &GuardConfig,
) -> Result<(Vec<Listener>, Vec<UdpEcho>), StartError> {
    let served = activation::sort(sockets, config.tcp, config.udp, MAX_BINDS)
        .map_err(StartError::Activation)?;
    let listeners = served
        .tcp
        .into_iter()
        .map(|(socket, local)| Listener { socket, local })
        .collect();
    let udp = served
        .udp
        .into_iter()
        .map(|(socket, local)| {
            // The manager bound it with its own buffer sizes: made larger
            // here if they are smaller, as a bound socket's are.
            net::enlarge_udp_buffers(socket2::SockRef::from(&socket), local);
            echo_socket(socket, local, guard)
        })
        .collect::<Result<_, _>>()?;
    Ok((listeners, udp))
}

/// How often `--port 0` picks again when the chosen port is not free for
/// every socket.
const PORT_ZERO_ATTEMPTS: usize = 20;

/// Wraps a bound UDP socket for the loop, with the options its control
/// messages need.
fn echo_socket(
    socket: mio::net::UdpSocket,
    local: SocketAddr,
    guard: &GuardConfig,
) -> Result<UdpEcho, StartError> {
    let socket = EchoSocket::new(socket, local).map_err(|source| BindError {
        transport: Transport::Udp,
        addr: local,
        source,
    })?;
    Ok(UdpEcho::new(socket, local, guard))
}

fn bind_addrs(
    addrs: &[IpAddr],
    config: &ServerConfig,
    guard: &GuardConfig,
) -> Result<(Vec<Listener>, Vec<UdpEcho>), StartError> {
    // With port 0 the kernel picks a port for the first socket; every other
    // socket uses that same port, so one number serves TCP and UDP.
    let mut port = config.port;
    let options = BindOptions {
        reuse_port: config.reuse_port,
        ipv6_only: addrs.iter().any(IpAddr::is_ipv4),
    };
    let mut listeners = Vec::new();
    let mut udp = Vec::new();
    for &ip in addrs {
        if config.tcp {
            let socket = net::bind_tcp(SocketAddr::new(ip, port), options)?;
            let local = socket.local_addr().map_err(StartError::Poll)?;
            port = local.port();
            listeners.push(Listener { socket, local });
        }
        if config.udp {
            let socket = net::bind_udp(SocketAddr::new(ip, port), options)?;
            let local = socket.local_addr().map_err(StartError::Poll)?;
            port = local.port();
            udp.push(echo_socket(socket, local, guard)?);
        }
    }
    Ok((listeners, udp))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Loopback is exempt from the UDP rates unless --limit-loopback, or
    /// route_localnet is on for any interface (here a directory made to
    /// look like /proc/sys/net/ipv4/conf).
    #[test]
    fn route_localnet_or_the_flag_holds_loopback_to_the_udp_rates() {
        let conf = std::env::temp_dir().join(format!("echod-ipv4-conf-{}", std::process::id()));
        std::fs::create_dir_all(conf.join("eth0")).unwrap();
        let set = |value: &str| std::fs::write(conf.join("eth0/route_localnet"), value).unwrap();
        let default = ServerConfig::default();
        let flagged = ServerConfig {
            limit_loopback: true,
            ..ServerConfig::default()
        };
        set("0\n");
        assert!(!udp_guard_config(&default, &conf).limit_loopback);
        assert!(udp_guard_config(&flagged, &conf).limit_loopback);
        set("1\n");
        let limited = udp_guard_config(&default, &conf).limit_loopback;
        std::fs::remove_dir_all(&conf).unwrap();
        assert!(limited);
    }
}
