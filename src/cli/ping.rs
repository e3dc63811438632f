//! `echod ping`'s command line, turned into a [`PingConfig`].

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::kit::duration::{parse_pause, parse_timeout};
use crate::kit::number::parse_within;
use crate::kit::target;
use crate::ping::PingConfig;
const EXAMPLES: &str = "\
Examples:
  echod ping localhost:7007                  5 TCP probes of 64 bytes, one a second
  echod ping --udp -c 20 -i 0.2 host:7       20 UDP probes, 5 a second
  echod ping -s 1400 -W 500ms host:7007      larger probes, 500 ms to answer each
  echod ping --connect-each -c 3 host:7007   time connect + echo + close each time

Exit status: 0 if any probe came back right, 1 if none did, 2 for usage
or setup errors (bad option, unknown host).";

/// The options of `echod ping` (the help text is on [`Command`](super::Command)).
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct PingArgs {
    /// The echo server (see [`target::resolve`] for the forms accepted).
    #[arg(value_name = "ADDR", value_parser = target::resolve, help = target::ADDR_HELP)]
    pub addr: SocketAddr,

    /// Probe over UDP instead of TCP.
    #[arg(short, long)]
    pub udp: bool,

    /// Number of probes to send (at most 1,000,000; Ctrl-C stops early
    /// and still prints the summary).
    #[arg(short, long, default_value_t = 5,
          value_parser = |t: &str| parse_within::<u64>(
              t, "a number of probes", 1..=1_000_000, ""))]
    pub count: u64,

    /// Bytes per probe, 1 to 16777216 (UDP: at most 65507).
    #[arg(short, long, default_value_t = 64,
          value_parser = |t: &str| parse_within::<u32>(
              t, "a number of bytes", 1..=16 << 20, " (16 MiB)"))]
    pub size: u32,

    /// Time between the starts of two probes (2, 0.5, 250ms; 0 to an
    /// hour).
    #[arg(short, long, default_value = "1", value_parser = parse_pause)]
    pub interval: Duration,

    /// Time each probe (and a TCP connect) may take before it counts as
    /// lost (1 ms to an hour).
    #[arg(short = 'W', long, default_value = "2", value_parser = parse_timeout)]
    pub timeout: Duration,

    /// TCP: open a new connection for every probe and time connect + echo +
    /// close, as echoping does.
    #[arg(long, conflicts_with = "udp")]
    pub connect_each: bool,
}

impl PingArgs {
    /// The validated configuration the tool runs on.
    pub fn to_config(&self) -> PingConfig {
        PingConfig {
            addr: self.addr,
            udp: self.udp,
            count: self.count,
            size: self.size,
            interval: self.interval,
            timeout: self.timeout,
            connect_each: self.connect_each,
        }
    }
}
