//! `echod bench`'s command line, turned into a [`BenchConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::bench::BenchConfig;
use crate::kit::duration::{parse_duration, parse_pause, parse_timeout};
use crate::kit::number::parse_within;
use crate::kit::target;
const EXAMPLES: &str = "\
Examples:
  echod bench localhost:7007                    10 connections, 64-byte messages, 10 s
  echod bench -c 100 -s 1024 -d 30 host:7007    100 connections of 1 KiB messages, 30 s
  echod bench --pipeline 16 host:7007           16 messages in flight per connection
  echod bench --rate 50000 -c 50 host:7007      open loop: 50,000 messages/s in all
  echod bench --udp -c 4 host:7007              UDP datagrams from 4 sockets
  echod bench --reconnect 1 host:7007           a new connection per message
  echod bench --json -d 5 host:7007 | jq .mb_per_s
  echod bench --csv seconds.csv host:7007       a row per second, for spreadsheets
  echod bench --hdr latency.hgrm host:7007      the latency histogram, for HdrHistogram

On a 2-core machine, pin the server and the bench to a core each:
  taskset -c 0 echod -p 7007 -b 127.0.0.1 &
  taskset -c 1 echod bench 127.0.0.1:7007

Memory: bench keeps, per connection, the message it is checking, a batch
to send and a record per message in flight; connections x (2 x size +
pipeline x 48 B + up to 64 KiB) may come to at most 4 GiB.

Exit status: 0 if every echo came back intact, 1 if any error was
counted (mismatch, reset, stall, failed connect, lost datagram), 2 for
usage or setup errors.";

/// The options of `echod bench` (the help text is on [`Command`](super::Command)).
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct BenchArgs {
    /// The echo server (see [`target::resolve`] for the forms accepted).
    #[arg(value_name = "ADDR", value_parser = target::resolve, help = target::ADDR_HELP)]
    pub addr: SocketAddr,

    /// Connections to open (UDP: sockets to send from), 1 to 100000.
    #[arg(short, long, default_value_t = 10,
          value_parser = |t: &str| parse_within::<u32>(
              t, "a number of connections", 1..=100_000, ""))]
    pub connections: u32,

    /// Bytes per message, 1 to 67108864 (UDP: at most 65507). Connections
    /// times size is bounded too: see --help's memory note.
    #[arg(short, long, default_value_t = 64, value_name = "BYTES",
          value_parser = |t: &str| parse_within::<u32>(
              t, "a number of bytes", 1..=64 << 20, " (64 MiB)"))]
    pub size: u32,

    /// How long to measure, after the warm-up (10, 2.5, 500ms, 1m; at most
    /// a day).
    #[arg(short, long, default_value = "10", value_parser = parse_bounded_duration)]
    pub duration: Duration,

    /// Load before measuring starts; its messages are not counted (its
    /// errors are); 0 to an hour.
    #[arg(long, default_value = "1", value_parser = parse_pause)]
    pub warmup: Duration,

    /// Messages in flight per connection, 1 to 65536.
    // No short flag: `-p` is the server's port, and `echod bench -p 7007
    // HOST` used to bench port 7 with a pipeline of 7007.
    #[arg(long, default_value_t = 1,
          value_parser = |t: &str| parse_within::<u32>(
              t, "a number of messages", 1..=65_536, ""))]
    pub pipeline: u32,

    /// Send UDP datagrams instead of TCP messages.
    #[arg(short, long)]
    pub udp: bool,

    /// Close each connection after this many messages and open a new one
    /// (1: a fresh connection per message, as inetd-style clients and
    /// health checks do), to measure connections per second and connect
    /// latency. TCP only (1 to 1000000000).
    #[arg(long, value_name = "MESSAGES", conflicts_with = "udp",
          value_parser = |t: &str| parse_within::<u64>(
              t, "a number of messages", 1..=1_000_000_000, ""))]
    pub reconnect: Option<u64>,

    /// Open loop: send this many messages per second in all, spread over
    /// the connections, and measure latency from when each was due
    /// (0.01 to 1000000000).
    #[arg(short, long, value_name = "MSGS_PER_S", value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Worker threads; connections are shared out among them (1 to 256).
    #[arg(short, long, default_value_t = 1,
          value_parser = |t: &str| parse_within::<u32>(
              t, "a number of threads", 1..=256, ""))]
    pub threads: u32,

    /// A connection with messages in flight and no echo for this long
    /// counts as stalled (a datagram as lost); also the connect timeout
    /// (1 ms to an hour).
    #[arg(short = 'W', long, default_value = "2", value_parser = parse_timeout)]
    pub timeout: Duration,

    /// Print one JSON object with the results on stdout, and no progress.
    #[arg(long)]
    pub json: bool,

    /// Write the measured window second by second to FILE as CSV: start_s,
    /// duration_s, messages, mb, errors, p50_us, p99_us.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,

    /// Write the latency histogram to FILE as HdrHistogram's percentile
    /// distribution (.hgrm, in milliseconds), which HdrHistogram's plotter
    /// and tools read.
    #[arg(long, value_name = "FILE")]
    pub hdr: Option<PathBuf>,
}

impl BenchArgs {
    /// The validated configuration the tool runs on.
    pub fn to_config(&self) -> BenchConfig {
        BenchConfig {
            addr: self.addr,
            connections: self.connections,
            size: self.size,
            duration: self.duration,
            warmup: self.warmup,
            pipeline: self.pipeline,
            udp: self.udp,
            reconnect: self.reconnect,
            rate: self.rate,
            threads: self.threads,
            timeout: self.timeout,
            json: self.json,
            csv: self.csv.clone(),
            hdr: self.hdr.clone(),
        }
    }
}

fn parse_bounded_duration(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d.is_zero() || d > Duration::from_secs(86_400) {
        return Err(format!(
            "'{text}' is outside 1 ms to 1 day; a benchmark always has an end"
        ));
    }
    Ok(d)
}

/// The lowest `--rate`: one message every 100 s in all. Slower is a
/// probe, which `echod ping` does better.
const MIN_RATE: f64 = 0.01;

/// The highest `--rate`: a billion messages per second, far beyond what
/// any one host can send; the bound keeps the schedule's arithmetic finite.
const MAX_RATE: f64 = 1e9;

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (MIN_RATE..=MAX_RATE).contains(&r) => Ok(r),
        _ => Err(format!(
            "'{text}' is not a rate from {MIN_RATE} to {MAX_RATE:.0} messages per second; \
             give one such as 10000"
        )),
    }
}
