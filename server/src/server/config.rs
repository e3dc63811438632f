//! What the server is asked to do, and how a run of it ends: the
//! configuration with its defaults and bounds, the reasons it cannot start,
//! and the outcomes `main` turns into exit statuses.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use super::extras::activation::ActivationError;
use super::extras::udp_guard::GuardConfig;
use crate::net::{self, BindError};

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
    /// open-files limit (see `bind::descriptor_budget`).
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
    /// [`super::extras::activation`]) instead of binding, when there are any.
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
    /// Stopped at once (a second signal, or `StopHandle::stop`) while
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
