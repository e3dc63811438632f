//! `echod ping`'s command line, turned into a [`PingConfig`].

use std::time::Duration;

use clap::Args;

use crate::kit::duration::{MIN_TIMEOUT, parse_duration_within, parse_pause, parse_timeout};
use crate::kit::number::parse_within;
use crate::kit::target::{self, Family, Target};
use crate::ping::{DEFAULT_COUNT, MAX_COUNT, PingConfig};
const EXAMPLES: &str = "\
Examples:
  echod ping localhost:7007                  5 TCP probes of 64 bytes, one a second
  echod ping --udp -c 20 -i 0.2 host:7       20 UDP probes, 5 a second
  echod ping -s 1400 -W 500ms host:7007      larger probes, 500 ms to answer each
  echod ping --connect-each -c 3 host:7007   time connect + echo + close each time
  echod ping -w 10 -i 0.5 host:7007          probes for 10 s, whatever the count
  echod ping -6 localhost:7007               over IPv6 only
  echod ping --json -c 20 host:7 | jq .rtt_ms   the summary as one JSON line

Exit status: 0 if any probe came back right, 1 if none did, 2 for usage
or setup errors (bad option, unknown host).";

/// The options of `echod ping` (the help text is on [`Command`](super::Command)).
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct PingArgs {
    /// The echo server (see [`Target::parse`] for the forms accepted); its
    /// name is looked up when the run starts, in the family -4 or -6 asks
    /// for.
    #[arg(value_name = "ADDR", value_parser = Target::parse, help = target::ADDR_HELP)]
    pub addr: Target,

    /// Probe over UDP instead of TCP.
    #[arg(short, long)]
    pub udp: bool,

    /// Use IPv4 only: the name's first IPv4 address.
    #[arg(short = '4', long, conflicts_with = "ipv6")]
    pub ipv4: bool,

    /// Use IPv6 only: the name's first IPv6 address.
    #[arg(short = '6', long)]
    pub ipv6: bool,

    /// Number of probes to send: 5 by default, or with -w as many as the
    /// deadline leaves time for (at most 1,000,000; Ctrl-C stops early
    /// and still prints the summary).
    #[arg(short, long, value_name = "COUNT",
          value_parser = |t: &str| parse_within::<u64>(
              t, "a number of probes", 1..=MAX_COUNT, ""))]
    pub count: Option<u64>,

    /// Bytes per probe, 1 to 16777216 (UDP: at most 65507).
    #[arg(short, long, default_value_t = 64, value_name = "BYTES",
          value_parser = |t: &str| parse_within::<u32>(
              t, "a number of bytes", 1..=16 << 20, " (16 MiB)"))]
    pub size: u32,

    /// Time between the starts of two probes (2, 0.5, 250ms; 0 to an
    /// hour).
    #[arg(short, long, default_value = "1", value_name = "DURATION",
          value_parser = parse_pause)]
    pub interval: Duration,

    /// Time each probe (and a TCP connect) may take before it counts as
    /// lost (1 ms to an hour).
    #[arg(short = 'W', long, default_value = "2", value_name = "DURATION",
          value_parser = parse_timeout)]
    pub timeout: Duration,

    /// Stop after this long, however many probes are left, as ping -w
    /// does; a probe still waiting then counts as lost (10, 0.5, 250ms,
    /// 2m; 1 ms to a day).
    #[arg(short = 'w', long, value_name = "DURATION", value_parser = parse_deadline)]
    pub deadline: Option<Duration>,

    /// TCP: open a new connection for every probe and time connect + echo +
    /// close, as echoping does.
    #[arg(long, conflicts_with = "udp")]
    pub connect_each: bool,

    /// Print the summary as one line of JSON instead of text (sent,
    /// received, lost, round trips in ms, and each probe), for scripts.
    #[arg(long)]
    pub json: bool,
}

/// The longest `-w`: a day, as long as `bench --duration`; a monitoring
/// run may want hours, and a longer one is a typo more often than a plan.
const MAX_DEADLINE: Duration = Duration::from_secs(86_400);

/// `-w`: the tools' duration grammar, 1 ms to a day.
fn parse_deadline(text: &str) -> Result<Duration, String> {
    parse_duration_within(text, MIN_TIMEOUT, MAX_DEADLINE)
}

impl PingArgs {
    /// The validated configuration the tool runs on.
    pub fn to_config(&self) -> PingConfig {
        let family = match (self.ipv4, self.ipv6) {
            (true, _) => Some(Family::V4),
            (_, true) => Some(Family::V6),
            _ => None,
        };
        // ping(8)'s habit: -w without -c probes until the deadline.
        let count = match (self.count, self.deadline) {
            (Some(count), _) => count,
            (None, Some(_)) => MAX_COUNT,
            (None, None) => DEFAULT_COUNT,
        };
        PingConfig {
            target: self.addr.clone(),
            family,
            udp: self.udp,
            count,
            size: self.size,
            interval: self.interval,
            timeout: self.timeout,
            deadline: self.deadline,
            connect_each: self.connect_each,
            json: self.json,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::cli::{Cli, Command};
    use crate::ping::{DEFAULT_COUNT, MAX_COUNT, PingConfig};
    use clap::Parser;

    fn config(args: &[&str]) -> PingConfig {
        let cli = Cli::try_parse_from(["echod", "ping"].iter().chain(args)).unwrap();
        match cli.command {
            Some(Command::Ping(args)) => args.to_config(),
            other => panic!("not ping: {other:?}"),
        }
    }

    /// Five probes by default; -w alone probes until its deadline, as
    /// ping(8) does; -c with -w stops at whichever comes first.
    #[test]
    fn the_count_is_five_unless_a_deadline_alone_is_given() {
        assert_eq!(config(&["127.0.0.1:7"]).count, DEFAULT_COUNT);
        let alone = config(&["-w", "10", "127.0.0.1:7"]);
        assert_eq!(alone.count, MAX_COUNT);
        assert_eq!(alone.deadline, Some(std::time::Duration::from_secs(10)));
        assert_eq!(config(&["-w", "250ms", "-c", "3", "127.0.0.1:7"]).count, 3);
    }
}
