//! `echod ping ADDR`: round-trip probes, one line each, then a summary,
//! like ping(8) and echoping(1), but every echo is checked byte for byte.
//!
//! Each probe's payload is [`payload::message`] for its sequence number,
//! so a late echo of an earlier probe is named as such rather than taken
//! for the current one. Over TCP the probes share one connection, unless
//! `--connect-each` measures connect + echo + close per probe.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::kit::duration::MIN_TIMEOUT;
use crate::kit::exchange::{ExchangeError, Exchanger};
use crate::kit::payload;
use crate::kit::target::{self, Family, Target};
use crate::kit::tool::{self, EXIT_FAILED, EXIT_OK, EXIT_SETUP};
use echod_server::net::Transport;

/// Probes sent when neither `-c` nor `-w` is given: five, a few seconds'
/// look, not ping(8)'s endless run.
pub const DEFAULT_COUNT: u64 = 5;

/// The most probes one run sends (`-c`, and `-w` alone).
pub const MAX_COUNT: u64 = 1_000_000;

/// What `echod ping` is to do: its command line, validated (by `cli.rs`).
#[derive(Clone, Debug)]
pub struct PingConfig {
    /// The echo server, looked up when the run starts.
    pub target: Target,

    /// The address family to use (`-4`, `-6`), or the resolver's first
    /// address whatever its family.
    pub family: Option<Family>,

    /// Probe over UDP instead of TCP.
    pub udp: bool,

    /// Number of probes to send (at most [`MAX_COUNT`]; Ctrl-C stops
    /// early and still prints the summary).
    pub count: u64,

    /// Bytes per probe, 1 to 16777216 (UDP: at most 65507).
    pub size: u32,

    /// Time between the starts of two probes (2, 0.5, 250ms; 0 to an
    /// hour).
    pub interval: Duration,

    /// Time each probe (and a TCP connect) may take before it counts as
    /// lost (1 ms to an hour).
    pub timeout: Duration,

    /// Stop this long after the start, whatever the count (`-w`).
    pub deadline: Option<Duration>,

    /// TCP: open a new connection for every probe and time connect + echo +
    /// close, as echoping does.
    pub connect_each: bool,

    /// Print the summary as one JSON line instead of text.
    pub json: bool,
}

/// What one probe found.
enum Probe {
    Echoed(Duration),
    Failed(ExchangeError),
}

/// One probe as the JSON summary gives it.
struct Record {
    seq: u64,
    /// The round trip, or what went wrong.
    outcome: Result<Duration, String>,
}

/// Runs `echod ping` and returns its exit status.
pub fn run(config: &PingConfig) -> ExitCode {
    let size = config.size as usize;
    let transport = tool::transport(config.udp);
    if let Err(status) = tool::check_udp_size("ping", "probe", transport, size) {
        return status;
    }
    let addr = match target::resolve_in(&config.target, config.family) {
        Ok(addr) => addr,
        Err(err) => return tool::fail("ping", EXIT_SETUP, &err),
    };
    log::debug!("{} is {addr}", config.target);
    let mut exchanger = match tool::exchanger("ping", addr, transport, config.timeout) {
        Ok(ex) => ex,
        Err(status) => return status,
    };
    let interrupted = tool::on_interrupt();
    let mut out = io::stdout().lock();
    let what = if config.connect_each {
        " (connect + echo + close)"
    } else {
        ""
    };
    if !config.json {
        let _ = writeln!(
            out,
            "ECHO {addr} over {transport}: {size} bytes per probe{what}"
        );
    }

    let mut rtts = Vec::new();
    let mut records = Vec::new();
    let mut sent = 0;
    let mut all_timed_out = true;
    let mut told_connect = false;
    let started = Instant::now();
    let clock = Clock {
        timeout: config.timeout,
        end: config.deadline.and_then(|d| started.checked_add(d)),
    };
    for seq in 1..=config.count {
        // Checked, though --count and --interval bound it to 1,000,000
        // hours: a due time past what the clock can hold ends the run.
        let Some(due) = u32::try_from(seq - 1)
            .ok()
            .and_then(|n| config.interval.checked_mul(n))
            .and_then(|after| started.checked_add(after))
        else {
            break;
        };
        if let Some(end) = clock.end
            && due >= end
        {
            // The next probe would start at or after the deadline: as
            // ping(8), the run lasts until the deadline all the same.
            tool::sleep_until(end, &interrupted);
            break;
        }
        if seq > 1 && !tool::sleep_until(due, &interrupted) {
            break;
        }
        let message = payload::message(0, seq, size);
        sent += 1;
        let late = exchanger.late;
        let probe = probe(&mut exchanger, config, &clock, &message);
        if exchanger.late > late {
            log::debug!(
                "seq={seq}: skipped {} late or duplicate echo(es) of earlier probes",
                exchanger.late - late
            );
        }
        match &probe {
            Probe::Echoed(rtt) => log::trace!(
                "seq={seq}: {size} bytes sent, all back intact in {} µs",
                rtt.as_micros()
            ),
            // The short line below names the failure; this is all of it.
            Probe::Failed(err) => log::debug!("seq={seq}: {err}"),
        }
        if !matches!(probe, Probe::Failed(ExchangeError::Timeout { received: 0 })) {
            all_timed_out = false;
        }
        let line = match &probe {
            Probe::Echoed(rtt) => {
                rtts.push(*rtt);
                format!(
                    "{size} bytes from {addr}: seq={seq} time={:.3} ms",
                    millis(*rtt)
                )
            }
            Probe::Failed(ExchangeError::Connect(err)) => {
                // The full sentence once, on stderr; a short line each time.
                if !told_connect {
                    eprintln!("echod ping: {err}");
                    told_connect = true;
                }
                format!("seq={seq} could not connect: {}", short_error(&err.source))
            }
            Probe::Failed(ExchangeError::Refused) if !told_connect => {
                eprintln!("echod ping: {}", target::udp_refused(addr));
                told_connect = true;
                format!("seq={seq} {}", ExchangeError::Refused)
            }
            Probe::Failed(err @ ExchangeError::Timeout { .. }) if clock.is_over() => {
                format!("seq={seq} {err} before the -w deadline")
            }
            Probe::Failed(err) => format!("seq={seq} {err}"),
        };
        if config.json {
            records.push(Record {
                seq,
                outcome: match probe {
                    Probe::Echoed(rtt) => Ok(rtt),
                    // The line without its "seq=N ".
                    Probe::Failed(_) => Err(line
                        .split_once(' ')
                        .map_or(line.as_str(), |(_, rest)| rest)
                        .to_string()),
                },
            });
        } else if writeln!(out, "{line}").is_err() {
            return ExitCode::from(EXIT_OK); // stdout closed: stop quietly
        }
        if interrupted.load(Ordering::SeqCst) || clock.is_over() {
            break;
        }
    }
    if !config.connect_each {
        let _ = exchanger.close(clock.wait());
    }
    let took = started.elapsed();
    let text = if config.json {
        let summary = Summary {
            addr,
            transport: transport.to_string(),
            size,
            sent,
            rtts: &rtts,
            late: exchanger.late,
            took,
            interrupted: interrupted.load(Ordering::SeqCst),
        };
        format!("{}\n", json(&summary, &records))
    } else {
        summary(addr, sent, &rtts, exchanger.late, took)
    };
    let _ = write!(out, "{text}");
    let _ = out.flush();
    // Over UDP a datagram is never held back for a newline: no hint.
    if sent > 0 && all_timed_out && transport == Transport::Tcp {
        eprintln!(
            "echod ping: {}",
            tool::nothing_echoed_hint("probe", &config.target)
        );
    }
    ExitCode::from(if rtts.is_empty() {
        EXIT_FAILED
    } else {
        EXIT_OK
    })
}

/// The time the run has left: each wait is `--timeout`, cut short by the
/// `-w` deadline.
struct Clock {
    timeout: Duration,
    end: Option<Instant>,
}

impl Clock {
    /// How long the next step (connect, echo, close) may wait. Never zero:
    /// a zero connect timeout is an error, not "give up at once".
    fn wait(&self) -> Duration {
        match self.end {
            None => self.timeout,
            Some(end) => self
                .timeout
                .min(end.saturating_duration_since(Instant::now()))
                .max(MIN_TIMEOUT),
        }
    }

    /// Whether the `-w` deadline has passed.
    fn is_over(&self) -> bool {
        self.end.is_some_and(|end| Instant::now() >= end)
    }
}

fn probe(exchanger: &mut Exchanger, config: &PingConfig, clock: &Clock, message: &[u8]) -> Probe {
    exchanger.set_connect_timeout(clock.wait());
    if !config.connect_each {
        return match exchanger.round_trip(message, clock.wait()) {
            Ok(rtt) => Probe::Echoed(rtt),
            Err(err) => Probe::Failed(err),
        };
    }
    let start = Instant::now();
    let result = exchanger
        .connect()
        .and_then(|()| exchanger.round_trip(message, clock.wait()))
        .and_then(|_| exchanger.close(clock.wait()));
    match result {
        Ok(_) => Probe::Echoed(start.elapsed()),
        Err(err) => Probe::Failed(err),
    }
}

fn short_error(err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::TimedOut => "connect timed out".into(),
        _ => err.to_string(),
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The closing lines, in ping's shape.
fn summary(addr: SocketAddr, sent: u64, rtts: &[Duration], late: u64, took: Duration) -> String {
    let received = rtts.len() as u64;
    let loss = loss_percent(sent, received);
    let mut text = format!(
        "\n--- {addr} echo statistics ---\n{sent} probes sent, {received} echoed intact, \
         {loss:.0}% loss, time {:.0} ms\n",
        millis(took)
    );
    if late > 0 {
        text += &format!("{late} late or duplicate echoes skipped\n");
    }
    if let Some(stats) = RttStats::of(rtts) {
        text += &format!(
            "rtt min/avg/median/max/stddev = {:.3}/{:.3}/{:.3}/{:.3}/{:.3} ms\n",
            stats.min, stats.avg, stats.median, stats.max, stats.stddev
        );
    }
    text
}

/// What the JSON summary reports besides the probes.
struct Summary<'a> {
    addr: SocketAddr,
    transport: String,
    size: usize,
    sent: u64,
    rtts: &'a [Duration],
    late: u64,
    took: Duration,
    interrupted: bool,
}

/// The summary for scripts: one JSON object, times in milliseconds, as
/// `bench --json` gives one line (`jq` for people).
fn json(summary: &Summary<'_>, records: &[Record]) -> serde_json::Value {
    let received = summary.rtts.len() as u64;
    let rtt = RttStats::of(summary.rtts).map_or(serde_json::Value::Null, |s| {
        serde_json::json!({
            "min": s.min,
            "avg": s.avg,
            "median": s.median,
            "max": s.max,
            "stddev": s.stddev,
        })
    });
    let probes: Vec<serde_json::Value> = records
        .iter()
        .map(|record| match &record.outcome {
            Ok(rtt) => serde_json::json!({ "seq": record.seq, "rtt_ms": millis(*rtt) }),
            Err(error) => serde_json::json!({ "seq": record.seq, "error": error }),
        })
        .collect();
    serde_json::json!({
        "addr": summary.addr.to_string(),
        "transport": summary.transport,
        "size": summary.size,
        "sent": summary.sent,
        "received": received,
        "lost": summary.sent - received,
        "loss_percent": loss_percent(summary.sent, received),
        "late": summary.late,
        "time_ms": millis(summary.took),
        "interrupted": summary.interrupted,
        "rtt_ms": rtt,
        "probes": probes,
    })
}

fn loss_percent(sent: u64, received: u64) -> f64 {
    if sent == 0 {
        0.0
    } else {
        100.0 * (sent - received) as f64 / sent as f64
    }
}

/// Round-trip statistics in milliseconds.
#[derive(Debug, PartialEq)]
struct RttStats {
    min: f64,
    avg: f64,
    median: f64,
    max: f64,
    stddev: f64,
}

impl RttStats {
    fn of(rtts: &[Duration]) -> Option<RttStats> {
        if rtts.is_empty() {
            return None;
        }
        let mut ms: Vec<f64> = rtts.iter().map(|d| millis(*d)).collect();
        ms.sort_by(f64::total_cmp);
        let n = ms.len();
        let avg = ms.iter().sum::<f64>() / n as f64;
        let median = if n % 2 == 1 {
            ms[n / 2]
        } else {
            (ms[n / 2 - 1] + ms[n / 2]) / 2.0
        };
        let variance = ms.iter().map(|x| (x - avg).powi(2)).sum::<f64>() / n as f64;
        Some(RttStats {
            min: ms[0],
            avg,
            median,
            max: ms[n - 1],
            stddev: variance.sqrt(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_of_round_trips() {
        let rtts: Vec<Duration> = [1, 2, 3, 4]
            .iter()
            .map(|&ms| Duration::from_millis(ms))
            .collect();
        let stats = RttStats::of(&rtts).unwrap();
        assert_eq!(stats.min, 1.0);
        assert_eq!(stats.max, 4.0);
        assert_eq!(stats.avg, 2.5);
        assert_eq!(stats.median, 2.5);
        assert!((stats.stddev - 1.118).abs() < 0.001);
        assert_eq!(RttStats::of(&[]), None);
    }

    #[test]
    fn summary_counts_loss() {
        let addr = "127.0.0.1:7".parse().unwrap();
        let text = summary(addr, 4, &[Duration::from_millis(1)], 0, Duration::ZERO);
        assert!(
            text.contains("4 probes sent, 1 echoed intact, 75% loss"),
            "{text}"
        );
        let text = summary(addr, 2, &[], 0, Duration::ZERO);
        assert!(text.contains("100% loss"), "{text}");
        assert!(!text.contains("rtt"), "{text}");
    }
}
