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
//! 3. Serve the ready queue: connections (and sockets) that stopped early
//!    on purpose, with readiness left unused, get another turn. Without
//!    this an edge-triggered loop stalls them forever.
//! 4. Timers: retry accepting after descriptor exhaustion, close idle
//!    connections, end a shutdown's grace period. There is no timer
//!    thread: the nearest deadline is the next poll's timeout.

mod clock;
mod connection;
pub mod extras;
mod listener;
mod signals;
mod sources;
pub mod stats;
mod udp;

pub use clock::Millis;
pub use connection::{Buffers, CloseReason, Connection, Readiness, State, Stream, Turn};
pub use extras::splice::{MAX_PIPES, SPARE_PIPES, pipes_for};
pub use extras::udp_guard::{DEFAULT_UDP_RATE, DEFAULT_UDP_RATE_TOTAL, GuardConfig, PortRange};
pub use udp::{MAX_DATAGRAM, UdpCounters};

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::net::{self, BindError, BindOptions, Transport, display_addr};
use clock::Clock;
use extras::activation::{self, ActivationError};
use listener::{Accepted, Listener};
use signals::{Request, Signals};
use sources::{Admission, SourceLimit};
use stats::{Stats, TcpStats};
use udp::{EchoSocket, UdpEcho};

/// Default capacity of a connection's ring buffer, in bytes. It bounds the
/// memory one connection can hold (connections × capacity in all) and is
/// also the most the server reads from a socket in one call. 64 KiB moved
/// a one-connection stream with about 1.6× less server CPU per byte than
/// 16 KiB (32 KiB: 1.5×, 128 KiB: 1.1×; see benches/run.sh), and an idle
/// connection holds no ring, so only connections with bytes pending pay.
pub const DEFAULT_BUFFER: usize = 64 * 1024;

/// Default `--idle-timeout`: five minutes without a byte either way. Long
/// enough for a person typing into `nc`, short enough that abandoned or
/// hostile idle connections do not hold descriptors for long.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Default `--grace`: how long a shutdown lets sessions finish.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// The longest `--idle-timeout` accepted: a week. Longer than any pause a
/// person or a keepalive makes, and far below the 49.7 days after which the
/// loop's millisecond clock wraps (see `server::clock`), past which an idle
/// timeout could never fire.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(7 * 86_400);

/// The longest `--grace` accepted: a day. A shutdown exists to end; a drain
/// longer than a day is a hang, and service managers kill long before it
/// (systemd's default `TimeoutStopSec=` is 90 s).
pub const MAX_GRACE: Duration = Duration::from_secs(86_400);

/// What the server is asked to do; built from the command line by
/// the `echod` command line, or directly by tests.
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
    /// Bytes asked for each of `SO_RCVBUF` and `SO_SNDBUF` of accepted
    /// connections, set once on the listeners (see
    /// [`crate::net::set_connection_options`]); 0 keeps the kernel's
    /// autotuning.
    pub socket_buffer: usize,
    /// Most connections open at once; `None` derives it from the
    /// open-files limit (see [`default_max_connections`]).
    pub max_connections: Option<usize>,
    /// Most connections open at once from one source (an IPv4 address or
    /// an IPv6 /64; see [`crate::net::SourceKey`]); one more is reset.
    /// `None`: a quarter of the connection limit, at least 1. Loopback
    /// sources are exempt unless `limit_loopback`.
    pub max_connections_per_source: Option<usize>,
    /// Close a connection after this long without progress; `None` never.
    /// At most [`MAX_IDLE_TIMEOUT`]: longer is
    /// taken as that.
    pub idle_timeout: Option<Duration>,
    /// How long a shutdown waits for open sessions to finish. At most
    /// [`MAX_GRACE`]: longer is taken as that.
    pub grace: Duration,
    /// Handle SIGINT, SIGTERM, SIGHUP (graceful shutdown) and SIGUSR1
    /// (counters). Off for servers embedded in another program, such as
    /// tests.
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
    /// [`activation`]) instead of binding, when there are any.
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
            buffer: DEFAULT_BUFFER,
            socket_buffer: net::DEFAULT_SOCKET_BUFFER,
            max_connections: None,
            max_connections_per_source: None,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            grace: DEFAULT_GRACE,
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

/// How many accepts one listener makes per turn before the loop serves
/// everything else, as `READS_PER_TURN` bounds one connection's reads. Each
/// accepted connection costs a few system calls (accept4, setsockopt,
/// epoll_ctl), so a crowd connecting at once is taken in turns of 64 while
/// open connections keep being echoed; and an accept error that comes back
/// on every call can cost one turn's budget, never the whole loop. A
/// listener that spends its budget goes on the ready queue: the clients
/// still in its backlog bring no new edge.
const ACCEPTS_PER_TURN: usize = 64;

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

/// How a run of the server ended; `main` makes it the exit status (see
/// [`EXIT_STATUSES`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped, and every session open at the stop finished by itself.
    Finished,
    /// Every listener and UDP socket failed, so nothing was left to serve;
    /// the sessions open then were drained as in a shutdown.
    NothingLeft,
    /// The shutdown's grace ran out, and sessions still open were cut.
    Cut,
    /// Stopped at once (a second signal, or [`StopHandle::stop`]) while
    /// sessions were open; they were cut.
    Forced,
}

impl Outcome {
    /// The exit status of the `echod` process that ended this way.
    pub const fn exit_status(self) -> u8 {
        match self {
            Outcome::Finished => 0,
            Outcome::NothingLeft => 1,
            Outcome::Cut => 3,
            Outcome::Forced => 4,
        }
    }
}

impl std::fmt::Display for Outcome {
    /// "exit status 3: ..." for the last log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let meaning = match self {
            Outcome::Finished => "every session finished",
            Outcome::NothingLeft => "no listening or UDP socket was left to serve",
            Outcome::Cut => "the grace period ran out and sessions were cut",
            Outcome::Forced => "stopped at once, and the sessions still open were cut",
        };
        write!(f, "exit status {}: {meaning}", self.exit_status())
    }
}

/// Every exit status of `echod` serving, with its meaning: the man page's
/// EXIT STATUS section (the subcommands' pages give their own).
pub const EXIT_STATUSES: &[(u8, &str)] = &[
    (
        Outcome::Finished.exit_status(),
        "Stopped by SIGTERM, SIGINT or SIGHUP, and every open session finished within the \
         grace period.",
    ),
    (
        Outcome::NothingLeft.exit_status(),
        "The server could not start (the message says why and what to do), polling failed, \
         or every listening and UDP socket failed while serving, so that nothing was left to \
         serve (the open sessions were let finish first, as in a shutdown).",
    ),
    (2, "A mistake on the command line."),
    (
        Outcome::Cut.exit_status(),
        "Stopped by a signal, but the grace period (--grace) ran out and the sessions still \
         open were cut.",
    ),
    (
        Outcome::Forced.exit_status(),
        "Stopped at once by a second signal during the grace period; the sessions still open \
         were cut.",
    ),
];

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
    /// Listener `i` has token `Source::Listener(i)` for good: one that
    /// failed is `None`, so the others keep their tokens.
    listeners: Vec<Option<Listener>>,
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
            connections: Slab::new(),
            buffers: Buffers::new(config.buffer).splicing(config.splice),
            datagram: vec![0; MAX_DATAGRAM].into_boxed_slice(),
            closed_udp: UdpCounters::default(),
            ready: Vec::new(),
            accept_pause: AcceptPause::No,
            out_of_descriptors: false,
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
                let outcome = self.outcome(true);
                let open = self.connections.len() as u64;
                // Closed here rather than dropped with the server, so that
                // one holding echo bytes is reset (see `Connection::abort`).
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
            Source::Listener(i) => {
                if let Some(Some(listener)) = self.listeners.get_mut(i) {
                    listener.queued = false;
                }
            }
            Source::Waker | Source::Signals => {}
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
    /// limit is reached, descriptors run out, or [`ACCEPTS_PER_TURN`] are
    /// spent (then it goes on the ready queue). Called by its events and,
    /// with no event, from the ready queue and after a pause.
    fn accept(&mut self, i: usize) {
        if self.accept_pause != AcceptPause::No {
            return; // a close or the retry timer accepts again
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
                    if self.out_of_descriptors {
                        self.out_of_descriptors = false;
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
                Accepted::Broken(err) => {
                    self.close_listener(i, &err);
                    return;
                }
            }
        }
        // The budget is spent and more clients may be waiting.
        if let Some(Some(listener)) = self.listeners.get_mut(i)
            && !listener.queued
        {
            listener.queued = true;
            self.ready.push(Source::Listener(i).token());
        }
    }

    /// Listener `i` is broken (see [`Accepted::Broken`]): closes it, says so
    /// once, and serves on with what is left; with nothing left, drains the
    /// open sessions and ends with [`Outcome::NothingLeft`].
    fn close_listener(&mut self, i: usize, err: &io::Error) {
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
        // triggering there is nothing to toggle (see DESIGN, "Register once").
        let interest = CONNECTION_INTEREST;
        if let Err(err) =
            self.poll
                .registry()
                .register(&mut stream, Source::Connection(key).token(), interest)
        {
            self.stats.refused += 1;
            log::warn!("could not register the connection from {peer}: {err}; dropping it");
            if let Some(source) = source {
                self.per_source.forget(source);
            }
            return;
        }
        log::debug!("connection {key}: accepted from {}", display_addr(peer));
        self.stats.accepted += 1;
        self.stats.active += 1;
        if let Some(source) = source {
            self.per_source.serving(key, source);
        }
        entry.insert(Connection::new(stream).accepted_at(self.clock.now()));
    }

    /// Resets a connection whose source has the most connections
    /// `--max-connections-per-source` allows: `SO_LINGER` 0, then close,
    /// makes the kernel send an RST (socket(7)), so the client learns at
    /// once rather than after a timeout, and nothing lingers in TIME_WAIT.
    /// The first refusal of an episode is a warning; the rest are counted.
    fn refuse_over_source_limit(
        &mut self,
        stream: TcpStream,
        peer: SocketAddr,
        source: net::SourceKey,
        first: bool,
    ) {
        self.stats.source_limited += 1;
        if let Err(err) = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)) {
            // Closed without it, the client gets a FIN instead: still told.
            log::debug!("could not set SO_LINGER for {}: {err}", display_addr(peer));
        }
        drop(stream);
        if first {
            log::warn!(
                "{source} has {} open, the most --max-connections-per-source allows: its \
                 new connections are reset until all of its connections have closed \
                 (counted as \"source limit\"). If it is one host of many behind a NAT or \
                 proxy, raise --max-connections-per-source.",
                count(u64::from(self.per_source.limit()), "connection")
            );
        } else {
            log::debug!(
                "connection from {} reset: over its source's limit",
                display_addr(peer)
            );
        }
    }

    fn close(&mut self, key: usize, reason: CloseReason) {
        let mut conn = self.connections.remove(key);
        // Uncounts it from its source if it was counted (not loopback, or
        // --limit-loopback); with no source counted this is one test.
        self.per_source.closed(key);
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
            // an error, not an EOF (see `Connection::abort`).
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
    fn begin_shutdown(&mut self, cause: &str, at_once: &str) {
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
    fn outcome(&self, at_once: bool) -> Outcome {
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

    fn log_receipt(&self, outcome: Outcome) {
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

    /// The grace period is over: close every session still open, with a
    /// FIN if it has every byte back (see `State::Draining`), with an RST
    /// if the server holds echo bytes it now throws away (see
    /// `Connection::abort`). Returns how many there were.
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

    /// Stopping at once (a second signal, or the [`StopHandle`]): every
    /// connection still open is closed now and counted, with an RST if it
    /// holds echo bytes (see `Connection::begin_close`), so that none ends
    /// with a FIN claiming every byte came back. Listeners go first, so
    /// that a close does not accept anyone new.
    fn close_all(&mut self) {
        self.listeners.clear();
        let keys: Vec<usize> = self.connections.iter().map(|(key, _)| key).collect();
        for key in keys {
            let Some(conn) = self.connections.get_mut(key) else {
                continue;
            };
            conn.begin_close(key, CloseReason::Shutdown, &mut self.buffers);
            let reason = match conn.state() {
                State::Draining(reason) | State::Closed(reason) => reason,
                State::Open | State::Flushing => CloseReason::Shutdown,
            };
            self.close(key, reason);
        }
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
    let connections = net::ConnectionOptions {
        socket_buffer: config.socket_buffer,
    };
    let listeners: Vec<Listener> = served
        .tcp
        .into_iter()
        .map(|(socket, local)| Listener::new(socket, local))
        .collect();
    // These listeners are listening already: the options reach the
    // connections whose handshake comes after this (see
    // `net::set_connection_options`). A service manager can set the same
    // on the socket unit (NoDelay=, ReceiveBuffer=, SendBuffer=) so that
    // the connection that started echod has them too.
    for listener in &listeners {
        if let Err(err) = net::set_connection_options(&listener.socket, connections) {
            log::warn!(
                "could not set TCP_NODELAY, SO_OOBINLINE and the socket buffer sizes on the tcp socket \
                 {} passed by the service manager: {err}. Its connections are served with \
                 the kernel's defaults (set NoDelay=, ReceiveBuffer= and SendBuffer= in \
                 the .socket unit instead).",
                listener.local
            );
        }
    }
    report_socket_buffers(&listeners, config.socket_buffer);
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
        connections: net::ConnectionOptions {
            socket_buffer: config.socket_buffer,
        },
    };
    let mut listeners = Vec::new();
    let mut udp = Vec::new();
    for &ip in addrs {
        if config.tcp {
            let socket = net::bind_tcp(SocketAddr::new(ip, port), options)?;
            let local = socket.local_addr().map_err(StartError::Poll)?;
            port = local.port();
            listeners.push(Listener::new(socket, local));
        }
        if config.udp {
            let socket = net::bind_udp(SocketAddr::new(ip, port), options)?;
            let local = socket.local_addr().map_err(StartError::Poll)?;
            port = local.port();
            udp.push(echo_socket(socket, local, guard)?);
        }
    }
    report_socket_buffers(&listeners, config.socket_buffer);
    Ok((listeners, udp))
}

/// Says what socket buffers accepted connections will get (the first
/// listener's, which they inherit), and warns when the kernel granted less
/// than `--socket-buffer` asked: then the memory bound is lower than asked,
/// and throughput may be too.
fn report_socket_buffers(listeners: &[Listener], asked: usize) {
    let Some(listener) = listeners.first() else {
        return;
    };
    if asked == 0 {
        log::debug!("accepted connections keep the kernel's socket buffer autotuning");
        return;
    }
    match net::buffer_sizes(&listener.socket) {
        // Linux grants twice what is asked (socket(7)), up to twice
        // net.core.rmem_max / wmem_max. A stock kernel caps the default
        // (212,992, so 425,984 granted): still bounded, so only a size the
        // operator chose is worth a warning.
        Ok((recv, send)) if recv < 2 * asked || send < 2 * asked => {
            let level = if asked == net::DEFAULT_SOCKET_BUFFER {
                log::Level::Info
            } else {
                log::Level::Warn
            };
            log::log!(
                level,
                "--socket-buffer {asked}: the kernel granted socket buffers of {recv} bytes \
                 to receive and {send} to send, where it grants twice what is asked; it caps \
                 them at twice net.core.rmem_max and net.core.wmem_max, which sysctl can \
                 raise"
            );
        }
        Ok((recv, send)) => log::debug!(
            "accepted connections get socket buffers of {recv} bytes to receive and {send} \
             to send (--socket-buffer {asked}, doubled by the kernel)"
        ),
        Err(err) => log::debug!("could not read the socket buffer sizes back: {err}"),
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
