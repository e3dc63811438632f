//! The command line: clap types whose doc comments are the help, converted
//! once into validated configurations so the rest of the code never sees
//! strings.
//!
//! `echod` with no subcommand serves; each tool is a subcommand with its own
//! argument struct in its own module.

use std::net::IpAddr;

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::server::ServerConfig;

/// RFC 862: "A server listens for TCP connections on TCP port 7" (and for
/// UDP datagrams on UDP port 7).
pub const RFC862_PORT: u16 = 7;

/// Default capacity of a connection's ring buffer, in bytes. It bounds the
/// memory one connection can hold (connections × capacity in all) and is
/// also the most the server reads from a socket in one call.
pub const DEFAULT_BUFFER: usize = 16 * 1024;

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

Talk to it:
  nc -N localhost 7007 < file       TCP: the file comes back, then EOF
  nc -u localhost 7007              UDP: each line comes back as a datagram";

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

    /// More log output: -v logs each connection, -vv every read and write.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Less log output: -q shows warnings and errors only, -qq errors only.
    #[arg(short, long, action = ArgAction::Count, global = true, conflicts_with = "verbose")]
    pub quiet: u8,
}

/// The tools that come with the server.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check any echo server, TCP or UDP, for the usual defects: line
    /// buffering, lost bytes on half-close, one client at a time, truncated
    /// datagrams, and more (`--list` shows each check).
    Check(crate::check::CheckArgs),
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
        }
    }
}

impl Cli {
    /// The log level the `-v`/`-q` counts ask for; info by default.
    pub fn log_level(&self) -> log::LevelFilter {
        use log::LevelFilter::*;
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
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
