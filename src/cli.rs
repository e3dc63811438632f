//! The command line: clap types whose doc comments are the help, converted
//! once into validated configurations so the rest of the code never sees
//! strings.
//!
//! `echod` with no subcommand serves; each tool is a subcommand whose clap
//! struct is in a module of this one (`cli/ping.rs`, …) and becomes the
//! tool's configuration there. This is the only file that sees both the
//! server's types and the tools'; only `main.rs` imports it, and the tools
//! never do: they get their configuration, not the command line.

use std::ffi::OsString;
use std::net::IpAddr;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::kit::number::parse_within;
use echod_server::net::{self, RFC862_PORT};
use echod_server::server::{
    DEFAULT_BUFFER, DEFAULT_GRACE, DEFAULT_IDLE_TIMEOUT, DEFAULT_UDP_RATE, DEFAULT_UDP_RATE_TOTAL,
    GuardConfig, MAX_GRACE, MAX_IDLE_TIMEOUT, PortRange, ServerConfig,
};

pub mod bench;
pub mod check;
pub mod client;
pub mod ping;

/// The smallest `--buffer` accepted: below this, every echo costs more
/// system calls than it moves bytes.
pub const MIN_BUFFER: usize = 512;

/// The largest `--buffer` accepted (16 MiB): beyond this, memory per
/// connection stops being "bounded" in any useful sense.
pub const MAX_BUFFER: usize = 16 * 1024 * 1024;

/// The largest `--max-connections` accepted: Linux's ceiling on
/// `fs.nr_open` (`sysctl_nr_open_max` in fs/file.c: `INT_MAX` rounded down
/// to a multiple of 64), so no process can hold more descriptors, let alone
/// connections; a larger number is a typo, not a limit.
pub const MAX_CONNECTIONS: u64 = 2_147_483_584;

/// The largest `--udp-rate` and `--udp-rate-total` accepted: ten million
/// datagrams per second, some ten times what one core can echo (each
/// datagram is a `recvfrom` and a `sendto`); above it neither limit ever
/// bites, so 0 says "no limit" more plainly.
pub const MAX_UDP_RATE: u32 = 10_000_000;

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

Exit status: 0 after a stop in which every session finished, 1 when the server
cannot start, stops on an error or has no socket left to serve (the message
says why and what to do), 2 for a command-line mistake, 3 when the grace ran
out and sessions were cut, 4 when a second signal cut them.

SIGHUP stops gracefully like SIGTERM, unless it was ignored at start (nohup).

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
    Client(client::ClientArgs),
    /// Send probes and time their echoes, like ping; every echo is checked.
    ///
    /// Prints one line per probe (sequence, bytes, round-trip time, or what
    /// went wrong), then a summary: sent, received, loss, and the
    /// round-trip minimum, average, median, maximum and standard deviation.
    Ping(ping::PingArgs),
    /// Load an echo server and measure it, checking every echoed byte.
    ///
    /// Reports messages per second, MB/s, latency percentiles (p50, p90,
    /// p99, p99.9, max) and errors. Any error (a byte that came back wrong,
    /// a reset, a stalled connection, a failed connect, a lost datagram) is
    /// counted and makes the exit status 1.
    Bench(bench::BenchArgs),
    /// Check any echo server, TCP or UDP, for the usual defects: line
    /// buffering, lost bytes on half-close, one client at a time, truncated
    /// datagrams, and more (`--list` shows each check).
    Check(check::CheckArgs),
    /// Print the man page or shell completions for echod.
    Generate(crate::generate::GenerateArgs),
}

/// Options of the server (`echod` with no subcommand).
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Port to listen on, TCP and UDP alike (0 to 65535); 0 picks a free one.
    #[arg(short, long, env = "PORT", default_value_t = RFC862_PORT,
          value_parser = parse_port)]
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
    /// when full, the server stops reading from that client until it reads
    /// (512 to 16777216).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_BUFFER,
          value_parser = parse_buffer_size)]
    pub buffer: usize,

    /// Kernel buffer each connection gets per direction (4096 to
    /// 67108864); 0 keeps the kernel's autotuning.
    ///
    /// SO_RCVBUF and SO_SNDBUF (Linux doubles the size asked), with
    /// TCP_NOTSENT_LOWAT of 16 KiB. It bounds what a client that sends
    /// without reading holds in the kernel: about 0.5 MiB per connection
    /// with the default. Capped by the kernel at net.core.rmem_max and
    /// wmem_max. Autotuning (up to net.ipv4.tcp_rmem and tcp_wmem's
    /// maximum, several MiB per connection) suits bulk transfers over long
    /// fast paths, where the default limits throughput.
    #[arg(long, value_name = "BYTES", default_value_t = net::DEFAULT_SOCKET_BUFFER,
          value_parser = parse_socket_buffer)]
    pub socket_buffer: usize,

    /// Most connections open at once (1 to 2147483584); beyond it, new
    /// clients wait in the kernel's backlog until one closes.
    ///
    /// Default: the open-files limit
    /// (raised to its hard maximum at start) less 32 kept for the process
    /// and up to 128 for the pipes bulk streams are spliced through (one
    /// pipe, two descriptors, per 16 of the limit, at most 64 pipes).
    /// 2147483584 is Linux's ceiling on open files.
    #[arg(long, value_name = "N", value_parser = parse_max_connections)]
    pub max_connections: Option<u64>,

    /// Most connections open at once from one client (1 to 4294967295);
    /// default: a quarter of --max-connections.
    ///
    /// A client is one IPv4 address (also when seen as ::ffff:a.b.c.d),
    /// one IPv6 /64, or one whole link-local (fe80::/10) address. A
    /// connection over the limit is reset at once, so one host cannot take
    /// every slot. The default is at least 1; at --max-connections or above
    /// the limit never bites. Loopback clients are exempt unless
    /// --limit-loopback.
    #[arg(long, value_name = "N", value_parser = parse_max_connections_per_source)]
    pub max_connections_per_source: Option<u32>,

    /// Close a connection after this many seconds in which no byte moved
    /// either way (0 to 604800, a week); 0 never closes idle connections.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_IDLE_TIMEOUT.as_secs(),
          value_parser = parse_idle_timeout)]
    pub idle_timeout: u64,

    /// On SIGINT, SIGTERM or SIGHUP, let open sessions finish for up to
    /// this many seconds (0 to 86400, a day), then close the rest. A second
    /// signal exits at once.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_GRACE.as_secs(),
          value_parser = parse_grace)]
    pub grace: u64,

    /// UDP source ports to answer although they are refused by default,
    /// as comma-separated ports and ranges (7,19,1000-1023); for testing.
    ///
    /// By default
    /// echod does not answer datagrams from port 0, ports below 1024, or
    /// the ports of known reflectors (1900, 2049, 3702, 5353, 5683, 11211),
    /// so that two services cannot bounce a forged datagram between them
    /// for ever (CERT CA-1996-01). Ports go from 1 to 65535. For testing
    /// only.
    #[arg(long, value_name = "PORTS", value_delimiter = ',')]
    pub udp_allow_ports: Vec<PortRange>,

    /// UDP datagrams answered per second per source address (0 to
    /// 10000000); 0 turns the limit off.
    ///
    /// Per /64 for IPv6, per address for link-local, in bursts of as many;
    /// the rest are dropped, so echod makes a poor reflector. Loopback
    /// sources are exempt (see --limit-loopback). 0 is for load tests from
    /// another host.
    #[arg(long, value_name = "PPS", default_value_t = DEFAULT_UDP_RATE,
          value_parser = parse_udp_rate)]
    pub udp_rate: u32,

    /// UDP datagrams answered per second from all non-loopback sources
    /// together (0 to 10000000); 0 turns the budget off.
    ///
    /// On all the addresses echod serves, in bursts of as many, so that a
    /// flood forged from many addresses, each within --udp-rate, is bounded
    /// too; the rest are dropped and counted as "total rate".
    #[arg(long, value_name = "PPS", default_value_t = DEFAULT_UDP_RATE_TOTAL,
          value_parser = parse_udp_rate)]
    pub udp_rate_total: u32,

    /// Share the port with other echod processes started with
    /// --reuseport: run one per core to use every core.
    ///
    /// SO_REUSEPORT: the kernel spreads new connections and datagrams
    /// among them.
    #[arg(long)]
    pub reuseport: bool,

    /// Apply the per-source limits to loopback clients too (127.0.0.0/8,
    /// ::1).
    ///
    /// The limits are --udp-rate, --udp-rate-total and
    /// --max-connections-per-source. By default loopback clients are
    /// exempt: local tests and benchmarks come
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
    /// pipe with splice(2).
    ///
    /// By default (Linux only) a connection that
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
            socket_buffer: self.socket_buffer,
            max_connections: self
                .max_connections
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            max_connections_per_source: self
                .max_connections_per_source
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
    /// Parses the process's arguments; on a mistake prints clap's usage
    /// error and exits with status 2.
    pub fn parse_or_exit() -> Cli {
        Cli::try_parse_checked(std::env::args_os()).unwrap_or_else(|err| err.exit())
    }

    /// Parses `args` as clap does, and refuses server options given
    /// before a tool (`echod --port 9 ping HOST`): the tool does not serve,
    /// so they would be dropped without a word.
    pub fn try_parse_checked<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut command = Cli::with_tool_help();
        let matches = command.try_get_matches_from_mut(args)?;
        let cli = Cli::from_arg_matches(&matches).map_err(|err| err.format(&mut command))?;
        if let Some(tool) = matches.subcommand_name() {
            let given = server_flags_given(&command, &matches);
            if !given.is_empty() {
                let are = if given.len() == 1 {
                    "is an option"
                } else {
                    "are options"
                };
                let message = format!(
                    "{} {are} of the server, which `echod {tool}` does not run; leave them \
                     out (the server runs when no subcommand is given)",
                    given.join(" and "),
                );
                return Err(command.error(clap::error::ErrorKind::ArgumentConflict, message));
            }
        }
        Ok(cli)
    }

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

impl Cli {
    /// The command line as `echod generate` documents it: the one that
    /// parses, plus what only completions and man pages use. Values that
    /// are numbers, durations or addresses complete to nothing rather
    /// than to file names (clap_complete's default), and `check --only`
    /// completes to the check names, each with what it looks for.
    ///
    /// Parsing stays as it is: `check` refuses an unknown name with its
    /// own sentence, which a clap list of possible values would replace.
    pub fn documented() -> clap::Command {
        let command = Cli::with_tool_help().mut_subcommand("check", |check| {
            check.mut_arg("only", |only| only.value_parser(CheckNames))
        });
        with_value_hints(command)
    }
}

/// Whether the environment forbids colour, on a terminal too: `NO_COLOR`
/// set and not empty (<https://no-color.org>), or `TERM=dumb` (Emacs
/// shells, some CI logs: a terminal that shows escape codes as text).
/// The logger and clap's help and errors both ask this.
pub fn colour_forbidden(no_color: Option<OsString>, term: Option<OsString>) -> bool {
    no_color.is_some_and(|value| !value.is_empty()) || term.is_some_and(|value| value == "dumb")
}

/// What `-v` and `-q` do for each tool, in place of the server's words
/// (`-v` logs each connection, …), which the global flags would otherwise
/// carry into every tool's help.
const TOOL_LOGGING: &[(&str, &str)] = &[
    (
        "client",
        "More log output: -v logs the connection, the half-close, the server's close and \
         each datagram sent again; -vv also every read and write and each datagram's round \
         trip",
    ),
    (
        "ping",
        "More log output: -v logs the address the name resolved to, each failed probe's \
         full reason and late echoes skipped; -vv also each probe's round trip in microseconds",
    ),
    (
        "bench",
        "Accepted as by every echod command, but bench logs nothing more: its report \
         (--json for every figure) is all it prints",
    ),
    (
        "check",
        "Accepted as by every echod command, but check logs nothing more: its report \
         (--json for every figure, --list for what each check does) is all it prints",
    ),
    (
        "generate",
        "Accepted as by every echod command; generate logs nothing",
    ),
];

/// `-q` in a tool's help: the tools' messages and reports are not log
/// lines, so it never hides them.
const TOOL_QUIET: &str = "Less log output: -q shows warnings and errors only, -qq errors \
                          only; the tool's own messages and report always print";

impl Cli {
    /// The command with each tool's own words for `-v` and `-q` (see
    /// [`TOOL_LOGGING`]). The flags are global, defined once on `echod`;
    /// clap copies a global flag into a subcommand only where the
    /// subcommand has none of that name, so each tool gets its own copy,
    /// the same flag with its own help. Its count still reaches
    /// [`Cli::verbose`], as clap hands global values up.
    fn with_tool_help() -> clap::Command {
        let mut command = Cli::command();
        if colour_forbidden(std::env::var_os("NO_COLOR"), std::env::var_os("TERM")) {
            // clap's own detection (anstream's) already honours NO_COLOR
            // and TERM=dumb, but lets a CI variable override TERM=dumb.
            command = command.color(clap::ColorChoice::Never);
        }
        let global = |id: &str| {
            command
                .get_arguments()
                .find(|arg| arg.get_id() == id)
                .cloned()
                .expect("verbose and quiet are defined on Cli")
        };
        let (verbose, quiet) = (global("verbose"), global("quiet"));
        let mut command = command.clone();
        for &(tool, help) in TOOL_LOGGING {
            command = command.mut_subcommand(tool, |sub| {
                sub.arg(verbose.clone().help(help))
                    .arg(quiet.clone().help(TOOL_QUIET))
            });
        }
        command
    }
}

/// `check --only`'s values: any string parses, and the possible values
/// (for completions and the man page) are the names in [`CHECKS`].
///
/// [`CHECKS`]: crate::check::CHECKS
#[derive(Clone, Copy, Debug)]
struct CheckNames;

impl clap::builder::TypedValueParser for CheckNames {
    type Value = String;

    fn parse_ref(
        &self,
        command: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        clap::builder::StringValueParser::new().parse_ref(command, arg, value)
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(crate::check::CHECKS.iter().map(|check| {
            clap::builder::PossibleValue::new(check.name).help(check.reason)
        })))
    }
}

/// `command` and its subcommands with [`ValueHint::Other`] on every value
/// that has neither a hint nor possible values: no file names offered for
/// a count, a duration or an address.
///
/// [`ValueHint::Other`]: clap::ValueHint::Other
fn with_value_hints(mut command: clap::Command) -> clap::Command {
    let plain: Vec<clap::Id> = command
        .get_arguments()
        .filter(|arg| {
            arg.get_action().takes_values()
                && arg.get_value_hint() == clap::ValueHint::Unknown
                && arg.get_possible_values().is_empty()
        })
        .map(|arg| arg.get_id().clone())
        .collect();
    for id in plain {
        command = command.mut_arg(id, |arg| arg.value_hint(clap::ValueHint::Other));
    }
    let subcommands: Vec<String> = command
        .get_subcommands()
        .map(|sub| sub.get_name().to_string())
        .collect();
    for name in subcommands {
        command = command.mut_subcommand(name, with_value_hints);
    }
    command
}

/// The server's flags (`--port`, …) written on the command line, as typed
/// (the long form). The PORT variable does not count: it is set for a
/// whole environment, tools included.
fn server_flags_given(command: &clap::Command, matches: &ArgMatches) -> Vec<String> {
    let global = ["verbose", "quiet", "help", "version"];
    command
        .get_arguments()
        .filter(|arg| !global.contains(&arg.get_id().as_str()))
        .filter(|arg| matches.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine))
        .map(|arg| match arg.get_long() {
            Some(long) => format!("--{long}"),
            None => arg.get_id().to_string(),
        })
        .collect()
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

fn parse_port(text: &str) -> Result<u16, String> {
    parse_within(text, "a port number", 0..=u16::MAX, " (0 picks a free one)")
}

fn parse_buffer_size(text: &str) -> Result<usize, String> {
    parse_within(
        text,
        "a number of bytes",
        MIN_BUFFER..=MAX_BUFFER,
        " (16 MiB), such as 16384",
    )
}

fn parse_max_connections(text: &str) -> Result<u64, String> {
    parse_within(
        text,
        "a number of connections",
        1..=MAX_CONNECTIONS,
        " (Linux's ceiling on open files)",
    )
}

fn parse_idle_timeout(text: &str) -> Result<u64, String> {
    parse_within(
        text,
        "a number of seconds",
        0..=MAX_IDLE_TIMEOUT.as_secs(),
        " (a week); 0 never closes idle connections",
    )
}

fn parse_grace(text: &str) -> Result<u64, String> {
    parse_within(
        text,
        "a number of seconds",
        0..=MAX_GRACE.as_secs(),
        " (a day); 0 closes open sessions at once",
    )
}

/// Parses `--udp-rate` (and any other per-second datagram budget).
pub fn parse_udp_rate(text: &str) -> Result<u32, String> {
    parse_within(
        text,
        "a number of datagrams per second",
        0..=MAX_UDP_RATE,
        " (0 turns the limit off)",
    )
}

fn parse_socket_buffer(text: &str) -> Result<usize, String> {
    use net::{MAX_SOCKET_BUFFER, MIN_SOCKET_BUFFER};
    if text == "0" {
        return Ok(0);
    }
    parse_within(
        text,
        "a number of bytes",
        MIN_SOCKET_BUFFER..=MAX_SOCKET_BUFFER,
        " (64 MiB), such as 262144; or 0, which keeps the kernel's autotuning",
    )
}

fn parse_max_connections_per_source(text: &str) -> Result<u32, String> {
    parse_within(
        text,
        "a number of connections",
        1..=u32::MAX,
        " (at --max-connections or above it never bites)",
    )
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

    /// Parses `echod FLAG VALUE`: the server's config, or clap's error text.
    fn serve_with(flag: &str, value: &str) -> Result<ServerConfig, String> {
        // `--flag=value`, so a value such as -1 is not taken for a flag.
        Cli::try_parse_from(["echod", &format!("{flag}={value}")])
            .map(|cli| cli.server_config())
            .map_err(|err| {
                assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{err}");
                err.to_string()
            })
    }

    /// Every number the server takes: the smallest and largest accepted,
    /// and values just beyond, which are refused with a sentence that
    /// gives the range (clap then exits with status 2).
    #[test]
    fn every_server_number_has_a_range_given_when_refused() {
        let cases: &[(&str, &str, &str, &[&str], &str)] = &[
            (
                "--port",
                "0",
                "65535",
                &["65536", "-1", "seven"],
                "from 0 to 65535",
            ),
            (
                "--buffer",
                "512",
                "16777216",
                &["511", "16777217", "1e6"],
                "from 512 to 16777216",
            ),
            (
                "--max-connections",
                "1",
                "2147483584",
                &["0", "2147483585", "18446744073709551616"],
                "from 1 to 2147483584",
            ),
            (
                "--idle-timeout",
                "0",
                "604800",
                &["604801", "-1", "1.5"],
                "from 0 to 604800",
            ),
            (
                "--grace",
                "0",
                "86400",
                &["86401", "18446744073709551615", "-1", "NaN"],
                "from 0 to 86400",
            ),
            (
                "--udp-rate",
                "0",
                "10000000",
                &["10000001", "4294967296", "-5"],
                "from 0 to 10000000",
            ),
        ];
        for (flag, smallest, largest, beyond, range) in cases {
            for ok in [smallest, largest] {
                assert!(serve_with(flag, ok).is_ok(), "{flag} {ok} is refused");
            }
            for bad in *beyond {
                let err = serve_with(flag, bad).unwrap_err();
                assert!(
                    err.contains(&format!("'{bad}' is not")) && err.contains(range),
                    "{flag} {bad}: {err}"
                );
            }
        }
    }

    /// A tool, its flag, values accepted, values refused, and the words
    /// that give the range in the refusal.
    type ToolCase = (
        &'static str,
        &'static str,
        &'static [&'static str],
        &'static [&'static str],
        &'static str,
    );

    /// Every number and duration the tools take, as for the server: the
    /// ends of each range are accepted, one step beyond is refused with
    /// the range in the sentence.
    #[test]
    fn every_tool_number_has_a_range_given_when_refused() {
        let cases: &[ToolCase] = &[
            (
                "ping",
                "--count",
                &["1", "1000000"],
                &["0", "1000001"],
                "from 1 to 1000000",
            ),
            (
                "ping",
                "--size",
                &["1", "16777216"],
                &["0", "16777217"],
                "from 1 to 16777216",
            ),
            (
                "ping",
                "--interval",
                &["0", "3600"],
                &["3600.001", "-1", "inf"],
                "from 0 ms to 3600 s",
            ),
            (
                "ping",
                "--timeout",
                &["1ms", "60m"],
                &["0", "0.0009", "61m", "NaN"],
                "from 1 ms to 3600 s",
            ),
            (
                "client",
                "--timeout",
                &["0.001", "3600"],
                &["0", "1e300"],
                "from 1 ms to 3600 s",
            ),
            (
                "client",
                "--size",
                &["1", "65507"],
                &["0", "65508"],
                "from 1 to 65507",
            ),
            (
                "client",
                "--retries",
                &["0", "100"],
                &["101"],
                "from 0 to 100",
            ),
            (
                "client",
                "--window",
                &["1024", "268435456"],
                &["1023", "268435457"],
                "from 1024 to 268435456",
            ),
            (
                "bench",
                "--connections",
                &["1", "100000"],
                &["0", "100001"],
                "from 1 to 100000",
            ),
            (
                "bench",
                "--size",
                &["1", "67108864"],
                &["0", "67108865"],
                "from 1 to 67108864",
            ),
            (
                "bench",
                "--duration",
                &["1ms", "86400"],
                &["0", "86401"],
                "outside 1 ms to 1 day",
            ),
            (
                "bench",
                "--warmup",
                &["0", "3600"],
                &["3601", "-1"],
                "from 0 ms to 3600 s",
            ),
            (
                "bench",
                "--pipeline",
                &["1", "65536"],
                &["0", "65537"],
                "from 1 to 65536",
            ),
            (
                "bench",
                "--threads",
                &["1", "256"],
                &["0", "257"],
                "from 1 to 256",
            ),
            (
                "bench",
                "--timeout",
                &["1ms", "3600"],
                &["0", "3601"],
                "from 1 ms to 3600 s",
            ),
            (
                "bench",
                "--rate",
                &["0.01", "1000000000"],
                &["0.0099", "1e-300", "1000000001", "NaN"],
                "from 0.01 to 1000000000",
            ),
            (
                "check",
                "--timeout",
                &["0.01", "10ms", "250ms", "3600", "60m"],
                &["0.009", "9ms", "3600.1", "NaN"],
                "from 10 ms to 3600 s",
            ),
            (
                "check",
                "--clients",
                &["1", "1000"],
                &["0", "1001"],
                "from 1 to 1000",
            ),
        ];
        for (tool, flag, ok, beyond, range) in cases {
            let parse = |value: &str| {
                Cli::try_parse_from(["echod", tool, &format!("{flag}={value}"), "127.0.0.1:7"])
            };
            for value in *ok {
                assert!(parse(value).is_ok(), "{tool} {flag} {value} is refused");
            }
            for value in *beyond {
                let err = parse(value).unwrap_err();
                assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{err}");
                assert!(
                    err.to_string().contains(range),
                    "{tool} {flag} {value}: {err}"
                );
            }
        }
    }

    #[test]
    fn the_largest_durations_reach_the_config_as_given() {
        let config = serve_with("--grace", "86400").unwrap();
        assert_eq!(config.grace, MAX_GRACE);
        let config = serve_with("--idle-timeout", "604800").unwrap();
        assert_eq!(config.idle_timeout, Some(MAX_IDLE_TIMEOUT));
        let config = serve_with("--idle-timeout", "0").unwrap();
        assert_eq!(config.idle_timeout, None);
        let config = serve_with("--max-connections", "2147483584").unwrap();
        assert_eq!(config.max_connections, Some(2_147_483_584));
    }

    #[test]
    fn an_idle_timeout_fires_before_the_loop_clock_wraps() {
        // The loop's clock counts milliseconds in a u32 (server::clock):
        // an idle timeout at or past its wrap could never be reached.
        assert!(MAX_IDLE_TIMEOUT.as_millis() < u128::from(u32::MAX));
    }

    #[test]
    fn the_help_states_each_range() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for range in [
            "0 to 65535",
            "512 to 16777216",
            "1 to 2147483584",
            "0 to 604800",
            "0 to 86400",
            "0 to 10000000",
            "1 to 65535",
        ] {
            assert!(help.contains(range), "the help does not say {range:?}");
        }
    }

    #[test]
    fn socket_buffer_has_bounds_and_a_word_for_the_kernel() {
        assert_eq!(parse_socket_buffer("0"), Ok(0));
        assert_eq!(parse_socket_buffer("4096"), Ok(4096));
        assert_eq!(parse_socket_buffer("67108864"), Ok(64 << 20));
        for bad in ["4095", "67108865", "1", "lots", "-1"] {
            assert!(parse_socket_buffer(bad).is_err(), "{bad}");
        }
        let err = parse_socket_buffer("100").unwrap_err();
        assert!(err.contains("4096 to 67108864"), "{err}");
    }

    #[test]
    fn memory_and_per_source_flags_reach_the_config() {
        let config = Cli::try_parse_from(["echod"]).unwrap().serve.to_config();
        assert_eq!(config.socket_buffer, net::DEFAULT_SOCKET_BUFFER);
        assert_eq!(config.max_connections_per_source, None);
        let cli = Cli::try_parse_from([
            "echod",
            "--socket-buffer",
            "0",
            "--max-connections-per-source",
            "3",
        ])
        .unwrap();
        let config = cli.serve.to_config();
        assert_eq!(config.socket_buffer, 0);
        assert_eq!(config.max_connections_per_source, Some(3));
        assert!(Cli::try_parse_from(["echod", "--max-connections-per-source", "0"]).is_err());
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
    /// MAX_UDP_RATE, checked at parse time with the range in the message.
    #[test]
    fn udp_rates_have_a_range() {
        for flag in ["--udp-rate", "--udp-rate-total"] {
            let max = MAX_UDP_RATE.to_string();
            assert!(Cli::try_parse_from(["echod", flag, &max]).is_ok(), "{flag}");
            assert!(Cli::try_parse_from(["echod", flag, "0"]).is_ok(), "{flag}");
            for bad in ["10000001", "4294967296", "-1"] {
                let err = Cli::try_parse_from(["echod", &format!("{flag}={bad}")])
                    .unwrap_err()
                    .to_string();
                assert!(
                    err.contains("from 0 to 10000000 (0 turns the limit off)"),
                    "{flag} {bad}: {err}"
                );
            }
        }
    }

    #[test]
    fn no_color_counts_when_set_and_not_empty_and_a_dumb_terminal_gets_none() {
        let some = |text: &str| Some(OsString::from(text));
        assert!(!colour_forbidden(None, some("xterm-256color")));
        assert!(!colour_forbidden(some(""), some("xterm-256color")));
        assert!(colour_forbidden(some("1"), some("xterm-256color")));
        assert!(colour_forbidden(None, some("dumb")));
        assert!(!colour_forbidden(None, None));
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        Cli::documented().debug_assert();
    }

    /// The check names `generate` documents for `--only` are only a
    /// hint: any name still parses, for check to refuse in its words.
    #[test]
    fn the_documented_command_parses_as_the_real_one() {
        let only = |command: clap::Command| {
            command
                .try_get_matches_from(["echod", "check", "--only", "nonsense", "127.0.0.1:7"])
                .map(|m| m.subcommand().map(|(name, _)| name.to_string()))
        };
        use clap::CommandFactory;
        assert_eq!(only(Cli::command()).unwrap(), Some("check".into()));
        assert_eq!(only(Cli::documented()).unwrap(), Some("check".into()));
        let check = Cli::documented().find_subcommand("check").cloned().unwrap();
        let names: Vec<String> = check
            .get_arguments()
            .find(|arg| arg.get_id() == "only")
            .unwrap()
            .get_possible_values()
            .iter()
            .map(|value| value.get_name().to_string())
            .collect();
        assert!(names.contains(&"half-close".to_string()), "{names:?}");
    }

    /// `echod --port 9 --no-splice ping HOST` used to run ping and drop
    /// both flags without a word: a usage error now, naming them.
    #[test]
    fn server_flags_before_a_tool_are_refused_by_name() {
        let err =
            Cli::try_parse_checked(["echod", "--port", "9", "--no-splice", "ping", "127.0.0.1:1"])
                .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        let text = err.to_string();
        assert!(
            text.contains("--port and --no-splice are options of the server"),
            "{text}"
        );
        assert!(text.contains("`echod ping` does not run"), "{text}");
    }

    /// Each tool's -v and -q are its own copies of the global flags:
    /// their counts still set the log level, before or after the tool.
    #[test]
    fn verbosity_reaches_the_log_level_from_either_side_of_a_tool() {
        use log::LevelFilter::*;
        for (args, level) in [
            (&["echod", "ping", "-v", "127.0.0.1:1"][..], Debug),
            (&["echod", "-v", "ping", "127.0.0.1:1"], Debug),
            (&["echod", "client", "-vv", "127.0.0.1:1"], Trace),
            (&["echod", "check", "-q", "127.0.0.1:1"], Warn),
            (&["echod", "-qq", "bench", "127.0.0.1:1"], Error),
            (&["echod", "ping", "127.0.0.1:1"], Info),
        ] {
            let cli = Cli::try_parse_checked(args.iter().copied()).unwrap();
            assert_eq!(cli.log_level(), level, "{args:?}");
        }
        assert!(Cli::try_parse_checked(["echod", "ping", "-v", "-q", "127.0.0.1:1"]).is_err());
    }

    /// A tool's help says what -v logs for that tool, not the server.
    #[test]
    fn each_tool_says_what_v_logs_for_it() {
        let server = "-v logs each connection, -vv every read and write";
        let mut command = Cli::with_tool_help();
        let top = command.render_long_help().to_string();
        assert!(top.contains(server), "{top}");
        for &(tool, words) in TOOL_LOGGING {
            let help = command
                .find_subcommand_mut(tool)
                .unwrap()
                .render_long_help()
                .to_string();
            assert!(!help.contains(server), "echod {tool} --help: {help}");
            assert!(help.contains(words), "echod {tool} --help: {help}");
            assert!(help.contains(TOOL_QUIET), "echod {tool} --help: {help}");
        }
    }

    #[test]
    fn global_flags_and_the_server_alone_still_parse() {
        for args in [
            &["echod", "--port", "7007"][..],
            &["echod", "-v", "ping", "127.0.0.1:1"],
            &["echod", "-q", "check", "127.0.0.1:1"],
            &["echod", "ping", "-v", "127.0.0.1:1"],
        ] {
            let parsed = Cli::try_parse_checked(args.iter().copied());
            assert!(parsed.is_ok(), "{args:?}: {}", parsed.unwrap_err());
        }
    }
}
