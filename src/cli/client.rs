//! `echod client`'s command line, turned into a [`ClientConfig`].

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::client::{ClientConfig, DEFAULT_WINDOW};
use crate::kit::duration::parse_timeout;
use crate::kit::exchange::MAX_UDP_PAYLOAD;
use crate::kit::number::parse_within;
use crate::kit::target;
const EXAMPLES: &str = "\
Examples:
  echod client localhost:7007 < file > copy     the echo of file; exit 1 if it differs
  echo hello | echod client 127.0.0.1:7007      prints hello
  echod client localhost:7007                   on a terminal: line by line, with timings
  echod client --udp -s 512 host:7 < file       file as 512-byte datagrams
  printf 'a\\nQ\\n' | echod client -i host:7007  line mode from a pipe; Q ends

Exit status: 0 if everything came back intact, 1 if the echo differed,
was cut short, was lost or the server could not be reached, 2 for usage
or setup errors (bad option, unknown host, unreadable stdin).";

/// The options of `echod client` (the help text is on [`Command`](super::Command)).
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct ClientArgs {
    /// The echo server (see [`target::resolve`] for the forms accepted).
    #[arg(value_name = "ADDR", value_parser = target::resolve, help = target::ADDR_HELP)]
    pub addr: SocketAddr,

    /// Send stdin as UDP datagrams instead of a TCP stream.
    #[arg(short, long)]
    pub udp: bool,

    /// Line mode: a prompt, each line sent and its echo shown with the
    /// round-trip time; Q, quit or Ctrl-D ends. The default when stdin is
    /// a terminal.
    #[arg(short, long)]
    pub interactive: bool,

    /// TCP: do not compare the echo with what was sent (counts are still
    /// checked). Datagrams and lines are always compared.
    #[arg(long)]
    pub no_verify: bool,

    /// UDP: the most bytes of stdin per datagram (at most 65,507). The
    /// default fits one Ethernet frame.
    #[arg(short, long, default_value_t = 1472, value_name = "BYTES",
          value_parser = |t: &str| parse_within::<u32>(
              t, "a number of bytes", 1..=MAX_UDP_PAYLOAD as u32, ""))]
    pub size: u32,

    /// Time to connect, and the longest silence while an echo is awaited
    /// (2, 0.5, 250ms; 1 ms to an hour). UDP: time each datagram has to
    /// come back.
    #[arg(short = 'W', long, default_value = "2", value_parser = parse_timeout)]
    pub timeout: Duration,

    /// UDP: how often a datagram is resent when its echo does not come
    /// back in time, before it counts as lost (0 to 100).
    #[arg(long, default_value_t = 2,
          value_parser = |t: &str| parse_within::<u32>(
              t, "a number of retries", 0..=100, ""))]
    pub retries: u32,

    /// TCP: the most bytes sent and not yet echoed; stdin waits while this
    /// many are in flight. It bounds the client's memory (1024 to
    /// 268435456, 256 MiB).
    #[arg(long, default_value_t = DEFAULT_WINDOW, value_name = "BYTES",
          value_parser = |t: &str| parse_within::<u32>(
              t, "a number of bytes", 1024..=256 << 20, " (256 MiB)"))]
    pub window: u32,
}

impl ClientArgs {
    /// The validated configuration the tool runs on.
    pub fn to_config(&self) -> ClientConfig {
        ClientConfig {
            addr: self.addr,
            udp: self.udp,
            interactive: self.interactive,
            no_verify: self.no_verify,
            size: self.size,
            timeout: self.timeout,
            retries: self.retries,
            window: self.window,
        }
    }
}
