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

mod connection;
mod listener;
mod udp;

pub use connection::{Buffers, CloseReason, Connection, Readiness, State, Stream, Turn};
pub use udp::{MAX_DATAGRAM, UdpCounters};

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::activation::{self, ActivationError};
use crate::net::{self, BindError, BindOptions, Transport, display_addr};
use listener::{Accepted, Listener};
use udp::UdpEcho;

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
    /// Set `SO_REUSEPORT`, so several processes can serve one port.
    pub reuse_port: bool,
    /// Serve the sockets a service manager passed (`LISTEN_FDS`, see
    /// [`crate::activation`]) instead of binding, when there are any.
    pub socket_activation: bool,
    /// Log every readiness event at trace level: the teaching trace.
    pub trace_events: bool,
}

impl Default for ServerConfig {
    /// Everything on loopback IPv4, a free port: what tests want.
    fn default() -> ServerConfig {
        ServerConfig {
            port: 0,
            bind: vec![IpAddr::from([127, 0, 0, 1])],
            tcp: true,
            udp: true,
            buffer: crate::cli::DEFAULT_BUFFER,
            reuse_port: false,
            socket_activation: false,
            trace_events: false,
        }
    }
}

/// The most addresses one server binds (each gets a TCP and a UDP token).
const MAX_BINDS: usize = 256;

// Fixed tokens sit at the top of the token space so that a slab key is a
// connection's token as it is. mio reserves none of these.
const WAKER: Token = Token(usize::MAX - 1);
const LISTENER_BASE: usize = usize::MAX - 1 - MAX_BINDS;
const UDP_BASE: usize = LISTENER_BASE - MAX_BINDS;

/// What a token stands for.
enum Source {
    Connection(usize),
    Listener(usize),
    Udp(usize),
    Waker,
}

impl Source {
    fn of(token: Token) -> Source {
        match token.0 {
            t if t == WAKER.0 => Source::Waker,
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
        })
    }
}

/// How long accepting pauses after the process ran out of descriptors:
/// long enough not to spin on EMFILE, short enough that clients waiting in
/// the backlog are taken soon after a connection closes.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

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
    /// The event loop could not be created.
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
    /// Sources that stopped early with readiness unused (see the module
    /// docs). Served after each batch of events.
    ready: Vec<Token>,
    /// Accepting pauses until then after running out of descriptors.
    accept_paused_until: Option<Instant>,
    waker: Arc<Waker>,
    stop_requested: Arc<AtomicBool>,
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
        let (listeners, udp) = bind_all(config)?;
        let mut server = Server {
            poll,
            listeners,
            udp,
            connections: Slab::new(),
            buffers: Buffers::new(config.buffer),
            datagram: vec![0; MAX_DATAGRAM].into_boxed_slice(),
            ready: Vec::new(),
            accept_paused_until: None,
            waker,
            stop_requested: Arc::new(AtomicBool::new(false)),
            trace_events: config.trace_events,
        };
        server.register_sockets().map_err(StartError::Poll)?;
        Ok(server)
    }

    fn register_sockets(&mut self) -> io::Result<()> {
        let registry = self.poll.registry();
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

    /// Runs the loop until stopped. Returns an error only if polling
    /// itself fails, which no client can cause.
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
                self.dispatch(token, Readiness::NONE);
            }
            self.run_timers();
            if self.stop_requested.load(Ordering::SeqCst) {
                log::info!("stopping");
                return Ok(());
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
                if udp.on_ready(readiness, &mut self.datagram) == Turn::Yield {
                    self.ready.push(token);
                }
            }
            // Only wakes the loop; the stop flag is checked after each turn.
            Source::Waker => {}
        }
    }

    fn on_connection(&mut self, key: usize, readiness: Readiness) {
        // The slab entry may be gone (closed earlier in this batch), or even
        // reused by a connection accepted since: then this event is merely
        // spurious for the new one, which costs a read that says WouldBlock.
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        match conn.on_ready(key, readiness, &mut self.buffers) {
            Turn::Wait => {}
            Turn::Yield => self.ready.push(Source::Connection(key).token()),
            Turn::Closed(reason) => self.close(key, reason),
        }
    }

    /// Accepts from listener `i` until the backlog is empty.
    fn accept(&mut self, i: usize) {
        if self.accept_paused_until.is_some() {
            return; // the timer retries every listener
        }
        loop {
            let Some(listener) = self.listeners.get(i) else {
                return;
            };
            match listener.accept() {
                Accepted::Connection(stream, peer) => self.add_connection(stream, peer),
                Accepted::Empty => return,
                Accepted::Lost(err) => {
                    log::debug!("a connection was lost before it was accepted: {err}");
                }
                Accepted::OutOfResources(err) => {
                    log::warn!(
                        "cannot accept connections: {err}; existing connections are still \
                         served, new ones wait in the backlog and are retried every {} ms",
                        ACCEPT_BACKOFF.as_millis()
                    );
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
            }
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
            log::warn!("could not register the connection from {peer}: {err}; dropping it");
            return;
        }
        log::debug!("connection {key}: accepted from {}", display_addr(peer));
        entry.insert(Connection::new(stream));
    }

    fn close(&mut self, key: usize, reason: CloseReason) {
        let conn = self.connections.remove(key);
        if log::log_enabled!(log::Level::Debug) {
            let peer = conn
                .stream()
                .peer_addr()
                .map(|p| display_addr(p).to_string())
                .unwrap_or_else(|_| "a peer now gone".to_string());
            log::debug!(
                "connection {key}: closed, {peer}, {:.3} s, {} bytes in, {} echoed: {reason}",
                conn.opened.elapsed().as_secs_f64(),
                conn.bytes_in,
                conn.bytes_out,
            );
        }
        // Dropping the stream closes the socket, which also removes it from
        // the poll: no deregister call needed.
    }

    /// How long `poll` may block: until the nearest timer, or forever.
    fn next_timeout(&self) -> Option<Duration> {
        self.accept_paused_until
            .map(|until| until.saturating_duration_since(Instant::now()))
    }

    fn run_timers(&mut self) {
        if let Some(until) = self.accept_paused_until
            && Instant::now() >= until
        {
            self.accept_paused_until = None;
            // No event will come for connections already in the backlog.
            for i in 0..self.listeners.len() {
                self.accept(i);
            }
        }
    }
}

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
        }
    }
}

/// Binds the listeners and UDP sockets for every configured address, or
/// takes them from the service manager when it passed some.
fn bind_all(config: &ServerConfig) -> Result<(Vec<Listener>, Vec<UdpEcho>), StartError> {
    if config.socket_activation
        && let Some(sockets) = activation::take().map_err(StartError::Activation)?
    {
        return serve_inherited(sockets, config);
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
        match bind_addrs(&addrs, config) {
            // The machine has no IPv6: serve IPv4 on all addresses instead.
            Err(StartError::Bind(err)) if !explicit && net::is_ipv6_unavailable(&err.source) => {
                log::debug!("IPv6 is unavailable ({}), serving IPv4 only", err.source);
                return bind_addrs(&[net::IPV4_ANY], config);
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
        .map(|(socket, local)| UdpEcho::new(socket, local))
        .collect();
    Ok((listeners, udp))
}

/// How often `--port 0` picks again when the chosen port is not free for
/// every socket.
const PORT_ZERO_ATTEMPTS: usize = 20;

fn bind_addrs(
    addrs: &[IpAddr],
    config: &ServerConfig,
) -> Result<(Vec<Listener>, Vec<UdpEcho>), StartError> {
    // With port 0 the kernel picks a port for the first socket; every other
    // socket uses that same port, so one number serves TCP and UDP.
    let mut port = config.port;
    let options = BindOptions {
        reuse_port: config.reuse_port,
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
            udp.push(UdpEcho::new(socket, local));
        }
    }
    Ok((listeners, udp))
}
