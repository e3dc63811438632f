//! The command line: clap types whose doc comments are the help, converted
//! once into validated configurations so the rest of the code never sees
//! strings.
//!
//! `echod` with no subcommand serves; each tool is a subcommand with its own
//! argument struct in its own module.

use std::net::IpAddr;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::server::{
    DEFAULT_UDP_RATE, DEFAULT_UDP_RATE_TOTAL, GuardConfig, PortRange, ServerConfig,
};

/// RFC 862: "A server listens for TCP connections on TCP port 7" (and for
/// UDP datagrams on UDP port 7).
pub const RFC862_PORT: u16 = 7;

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

/// The smallest `--buffer` accepted: below this, every echo costs more
/// system calls than it moves bytes.
pub const MIN_BUFFER: usize = 512;

/// The largest `--buffer` accepted (16 MiB): beyond this, memory per
/// connection stops being "bounded" in any useful sense.
pub const MAX_BUFFER: usize = 16 * 1024 * 1024;

const EXAMPLES: &str = "\
Examples:
  echod --port 7007                 serve TCP and UDP echo on port 7007, IPv4 and IPv6
  echod -p 7007 -b 127.0.0.1 -v     loopback only, log every connection
  echod -p 0                        pick a free port (the log line shows which)
  PORT=7007 echod --no-udp          TCP only, port taken from the environment
  kill -USR1 $(pidof echod)         log the counters (connections, bytes, datagrams)
  kill -TERM $(pidof echod)         stop gracefully: sessions get --grace seconds to finish

Talk to it:
  nc -N localhost 7007 < file       TCP: the file comes back, then EOF
  nc -u localhost 7007              UDP: each line comes back as a datagram

Exit status: 0 after a clean stop, 1 when the server cannot start or stops on
an error (the message says why and what to do), 2 for a command-line mistake.

Under systemd, echod serves the sockets of its .socket unit (LISTEN_FDS);
see contrib/systemd/. Man page and completions: echod generate --help.";

/// An RFC 862 echo service for TCP and UDP on one single-threaded event loop.
///
/// Every byte a TCP client sends comes back to it in order; when the client
/// shuts down its sending side, the server sends what is still pending and
/// closes. Every UDP datagram (0 to 65,507 bytes) goes back to its sender
/// unchanged.
#[derive(Debug, Parser)]
#[command(name = "echod", version, after_help = EXAMPLES)]
pub struct Cli {
    /// A tool to run instead of the server.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// How to serve (used when no subcommand is given).
    #[command(flatten)]
    pub serve: ServeArgs,

    /// More log output: -v logs each connection, -vv every read and write,
    /// -vvv also every readiness event (as --trace-events).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Less log output: -q shows warnings and errors only, -qq errors only.
    #[arg(short, long, action = ArgAction::Count, global = true, conflicts_with = "verbose")]
    pub quiet: u8,
}

/// The tools that come with the server.
#[derive(Debug, Subcommand)]
pub enum Command {
    // The doc comments here are the help texts (clap takes a variant's
    // over its struct's).
    /// Send stdin to an echo server and print what comes back, checking it.
    ///
    /// Over TCP, stdin and the echo flow at the same time; at the end of
    /// stdin the sending side is shut down and the client waits for the
    /// server to close. The echo is compared with what was sent: at the
    /// first difference, or if it comes back short or too long, the client
    /// says at which byte offset and exits with status 1.
    Client(crate::client::ClientArgs),
    /// Send probes and time their echoes, like ping; every echo is checked.
    ///
    /// Prints one line per probe (sequence, bytes, round-trip time, or what
    /// went wrong), then a summary: sent, received, loss, and the
    /// round-trip minimum, average, median, maximum and standard deviation.
    Ping(crate::ping::PingArgs),
    /// Load an echo server and measure it, checking every echoed byte.
    ///
    /// Reports messages per second, MB/s, latency percentiles (p50, p90,
    /// p99, p99.9, max) and errors. Any error (a byte that came back wrong,
    /// a reset, a stalled connection, a failed connect, a lost datagram) is
    /// counted and makes the exit status 1.
    Bench(crate::bench::BenchArgs),
    /// Check any echo server, TCP or UDP, for the usual defects: line
    /// buffering, lost bytes on half-close, one client at a time, truncated
    /// datagrams, and more (`--list` shows each check).
    Check(crate::check::CheckArgs),
    /// Print the man page or shell completions for echod.
    Generate(crate::generate::GenerateArgs),
}

/// Options of the server (`echod` with no subcommand).
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Port to listen on, TCP and UDP alike; 0 picks a free one.
    #[arg(short, long, env = "PORT", default_value_t = RFC862_PORT)]
    pub port: u16,

    /// Address to listen on; repeat for several. The default `::` accepts
    /// IPv4 and IPv6 alike, falling back to 0.0.0.0 where IPv6 is off.
    #[arg(short, long = "bind", value_name = "ADDR", value_parser = parse_bind_addr)]
    pub bind: Vec<IpAddr>,

    /// Serve TCP only.
    #[arg(long, conflicts_with = "no_tcp")]
    pub no_udp: bool,

    /// Serve UDP only.
    #[arg(long)]
    pub no_tcp: bool,

    /// Bytes a connection may hold that its client has not yet read back;
    /// when full, the server stops reading from that client until it reads.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_BUFFER,
          value_parser = parse_buffer_size)]
    pub buffer: usize,

    /// Most connections open at once; beyond it, new clients wait in the
    /// kernel's backlog until one closes. Default: the open-files limit
    /// (raised to its hard maximum at start) less 32 kept for the process
    /// and up to 128 for the pipes bulk streams are spliced through (one
    /// pipe, two descriptors, per 16 of the limit, at most 64 pipes).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,

    /// Close a connection after this many seconds in which no byte moved
    /// either way; 0 never closes idle connections.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_IDLE_TIMEOUT.as_secs())]
    pub idle_timeout: u64,

    /// On SIGINT or SIGTERM, let open sessions finish for up to this many
    /// seconds, then close the rest. A second signal exits at once.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_GRACE.as_secs())]
    pub grace: u64,

    /// UDP source ports to answer although they are refused by default,
    /// as comma-separated ports and ranges (7,19,1000-1023). By default
    /// echod does not answer datagrams from port 0, ports below 1024, or
    /// the ports of known reflectors (1900, 2049, 3702, 5353, 5683, 11211),
    /// so that two services cannot bounce a forged datagram between them
    /// for ever (CERT CA-1996-01). For testing only.
    #[arg(long, value_name = "PORTS", value_delimiter = ',')]
    pub udp_allow_ports: Vec<PortRange>,

    /// UDP datagrams answered per second per source address (per /64 for
    /// IPv6), in bursts of as many; the rest are dropped, so echod makes a
    /// poor reflector. Loopback sources are exempt (see --limit-loopback).
    /// 0 turns the limit off (for load tests from another host); at most
    /// 4294967295.
    #[arg(long, value_name = "PPS", default_value_t = DEFAULT_UDP_RATE,
          value_parser = parse_udp_rate)]
    pub udp_rate: u32,

    /// UDP datagrams answered per second from all non-loopback sources
    /// together, in bursts of as many, so that a flood forged from many
    /// addresses, each within --udp-rate, is bounded too; the rest are
    /// dropped and counted as "total rate". 0 turns the budget off; at
    /// most 4294967295.
    #[arg(long, value_name = "PPS", default_value_t = DEFAULT_UDP_RATE_TOTAL,
          value_parser = parse_udp_rate)]
    pub udp_rate_total: u32,

    /// Share the port with other echod processes started with
    /// --reuseport (SO_REUSEPORT): the kernel spreads new connections and
    /// datagrams among them. Run one per core to use every core.
    #[arg(long)]
    pub reuseport: bool,

    /// Apply the per-source limits (--udp-rate, --udp-rate-total, and the
    /// per-source connection limit) to loopback clients too (127.0.0.0/8,
    /// ::1). By default they are exempt: local tests and benchmarks come
    /// from there, and Linux drops loopback sources arriving from another
    /// interface. UDP applies them anyway when it finds route_localnet on
    /// at start (it says so), since loopback sources can then come from
    /// other hosts.
    #[arg(long)]
    pub limit_loopback: bool,

    /// Trace the event loop at work: log every readiness event ("token 5
    /// (connection 5): readable writable") next to each read, write and
    /// state change (implies -vv; same as -vvv).
    #[arg(long, conflicts_with = "quiet")]
    pub trace_events: bool,

    /// Echo every connection by copying through a buffer, never through a
    /// pipe with splice(2). By default (Linux only) a connection that
    /// streams in bulk is echoed socket → pipe → socket without its bytes
    /// being copied through echod: less CPU per byte. Turn it off to compare.
    #[arg(long)]
    pub no_splice: bool,
}

impl ServeArgs {
    /// Turns the parsed flags into the server's configuration.
    pub fn to_config(&self) -> ServerConfig {
        ServerConfig {
            port: self.port,
            bind: self.bind.clone(),
            tcp: !self.no_tcp,
            udp: !self.no_udp,
            buffer: self.buffer,
            max_connections: self
                .max_connections
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            idle_timeout: match self.idle_timeout {
                0 => None,
                secs => Some(Duration::from_secs(secs)),
            },
            grace: Duration::from_secs(self.grace),
            signals: true,
            udp_guard: GuardConfig {
                allow_ports: self.udp_allow_ports.clone(),
                rate: self.udp_rate,
                rate_total: self.udp_rate_total,
                // ServerConfig::limit_loopback below; the server adds
                // route_localnet when it starts.
                limit_loopback: false,
            },
            reuse_port: self.reuseport,
            limit_loopback: self.limit_loopback,
            // Started by systemd (or systemd-socket-activate) with sockets
            // passed: serve those. LISTEN_PID makes sure they are ours.
            socket_activation: true,
            trace_events: self.trace_events,
            splice: !self.no_splice,
        }
    }
}

impl Cli {
    /// The server's configuration: the serve flags, and `-vvv` turning
    /// the event trace on.
    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            trace_events: self.trace_events(),
            ..self.serve.to_config()
        }
    }

    /// Whether every readiness event is logged (`--trace-events`, `-vvv`).
    pub fn trace_events(&self) -> bool {
        self.serve.trace_events || self.verbose >= 3
    }

    /// The log level the `-v`/`-q` counts ask for; info by default.
    pub fn log_level(&self) -> log::LevelFilter {
        use log::LevelFilter::*;
        if self.trace_events() {
            return Trace;
        }
        match (self.verbose, self.quiet) {
            (0, 0) => Info,
            (1, _) => Debug,
            (_, 0) => Trace,
            (_, 1) => Warn,
            (_, _) => Error,
        }
    }
}

fn parse_bind_addr(text: &str) -> Result<IpAddr, String> {
    // Accept "[::1]" as well as "::1": people copy addresses from URLs.
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse().map_err(|_| {
        format!(
            "'{text}' is not an IP address; give an address such as 127.0.0.1, ::1, \
             0.0.0.0 (all IPv4) or :: (all IPv4 and IPv6), and the port with --port"
        )
    })
}

fn parse_buffer_size(text: &str) -> Result<usize, String> {
    let n: usize = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number of bytes, such as 16384"))?;
    if (MIN_BUFFER..=MAX_BUFFER).contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "{n} bytes is outside the accepted range {MIN_BUFFER} to {MAX_BUFFER}"
        ))
    }
}

fn parse_udp_rate(text: &str) -> Result<u32, String> {
    text.parse().map_err(|_| {
        format!(
            "'{text}' is not a number of datagrams per second from 0 (no limit) to {}, \
             such as {DEFAULT_UDP_RATE}",
            u32::MAX
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_accepts_bracketed_ipv6() {
        assert_eq!(parse_bind_addr("[::1]"), Ok("::1".parse().unwrap()));
        assert_eq!(
            parse_bind_addr("127.0.0.1"),
            Ok("127.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn bind_rejects_names_and_ports_with_a_sentence() {
        let err = parse_bind_addr("localhost").unwrap_err();
        assert!(err.contains("'localhost' is not an IP address"), "{err}");
        assert!(parse_bind_addr("127.0.0.1:7").is_err());
    }

    #[test]
    fn buffer_has_bounds() {
        assert_eq!(parse_buffer_size("16384"), Ok(16384));
        assert!(parse_buffer_size("0").is_err());
        assert!(parse_buffer_size("lots").is_err());
    }

    #[test]
    fn udp_guard_flags_reach_the_config() {
        let cli = Cli::try_parse_from([
            "echod",
            "--udp-allow-ports",
            "7,1000-1023",
            "--udp-allow-ports",
            "19",
            "--udp-rate",
            "10",
            "--udp-rate-total",
            "30",
        ])
        .unwrap();
        let guard = cli.serve.to_config().udp_guard;
        let allowed: Vec<String> = guard.allow_ports.iter().map(|r| r.to_string()).collect();
        assert_eq!(allowed, ["7", "1000-1023", "19"]);
        assert_eq!(guard.rate, 10);
        assert_eq!(guard.rate_total, 30);
    }

    #[test]
    fn udp_guard_defaults_are_the_documented_ones() {
        let cli = Cli::try_parse_from(["echod"]).unwrap();
        assert_eq!(cli.serve.to_config().udp_guard, GuardConfig::default());
        assert_eq!(GuardConfig::default().rate, DEFAULT_UDP_RATE);
        assert_eq!(GuardConfig::default().rate_total, DEFAULT_UDP_RATE_TOTAL);
        assert!(!GuardConfig::default().limit_loopback);
        assert!(GuardConfig::default().allow_ports.is_empty());
    }

    #[test]
    fn udp_rate_rejects_words_with_a_sentence() {
        let err = parse_udp_rate("fast").unwrap_err();
        assert!(err.contains("'fast' is not a number of datagrams per second"));
        assert_eq!(parse_udp_rate("0"), Ok(0));
    }

    /// The documented range of --udp-rate and --udp-rate-total: 0 to
    /// u32::MAX, checked at parse time with the range in the message.
    #[test]
    fn udp_rates_have_a_range() {
        for flag in ["--udp-rate", "--udp-rate-total"] {
            let max = u32::MAX.to_string();
            assert!(Cli::try_parse_from(["echod", flag, &max]).is_ok(), "{flag}");
            assert!(Cli::try_parse_from(["echod", flag, "0"]).is_ok(), "{flag}");
            for bad in ["4294967296", "-1"] {
                let err = Cli::try_parse_from(["echod", &format!("{flag}={bad}")])
                    .unwrap_err()
                    .to_string();
                assert!(
                    err.contains("from 0 (no limit) to 4294967295"),
                    "{flag} {bad}: {err}"
                );
            }
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
