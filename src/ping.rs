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

use crate::kit::exchange::{ExchangeError, Exchanger};
use crate::kit::payload;
use crate::kit::target;
use crate::kit::tool::{self, EXIT_FAILED, EXIT_OK};

/// What `echod ping` is to do: its command line, validated (by `cli.rs`).
#[derive(Clone, Debug)]
pub struct PingConfig {
    /// The echo server.
    pub addr: SocketAddr,

    /// Probe over UDP instead of TCP.
    pub udp: bool,

    /// Number of probes to send (at most 1,000,000; Ctrl-C stops early
    /// and still prints the summary).
    pub count: u64,

    /// Bytes per probe, 1 to 16777216 (UDP: at most 65507).
    pub size: u32,

    /// Time between the starts of two probes (2, 0.5, 250ms; 0 to an
    /// hour).
    pub interval: Duration,

    /// Time each probe (and a TCP connect) may take before it counts as
    /// lost (1 ms to an hour).
    pub timeout: Duration,

    /// TCP: open a new connection for every probe and time connect + echo +
    /// close, as echoping does.
    pub connect_each: bool,
}

/// What one probe found.
enum Probe {
    Echoed(Duration),
    Failed(ExchangeError),
}

/// Runs `echod ping` and returns its exit status.
pub fn run(config: &PingConfig) -> ExitCode {
    let size = config.size as usize;
    let transport = tool::transport(config.udp);
    if let Err(status) = tool::check_udp_size("ping", "probe", transport, size) {
        return status;
    }
    let mut exchanger = match tool::exchanger("ping", config.addr, transport, config.timeout) {
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
    let _ = writeln!(
        out,
        "ECHO {} over {transport}: {size} bytes per probe{what}",
        config.addr
    );

    let mut rtts = Vec::new();
    let mut sent = 0;
    let mut told_connect = false;
    let started = Instant::now();
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
        if seq > 1 && !tool::sleep_until(due, &interrupted) {
            break;
        }
        let message = payload::message(0, seq, size);
        sent += 1;
        let probe = probe(&mut exchanger, config, &message);
        let line = match &probe {
            Probe::Echoed(rtt) => {
                rtts.push(*rtt);
                format!(
                    "{size} bytes from {}: seq={seq} time={:.3} ms",
                    config.addr,
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
                eprintln!("echod ping: {}", target::udp_refused(config.addr));
                told_connect = true;
                format!("seq={seq} {}", ExchangeError::Refused)
            }
            Probe::Failed(err) => format!("seq={seq} {err}"),
        };
        if writeln!(out, "{line}").is_err() {
            return ExitCode::from(EXIT_OK); // stdout closed: stop quietly
        }
        if interrupted.load(Ordering::SeqCst) {
            break;
        }
    }
    if !config.connect_each {
        let _ = exchanger.close(config.timeout);
    }
    let _ = write!(
        out,
        "{}",
        summary(config.addr, sent, &rtts, exchanger.late, started.elapsed())
    );
    let _ = out.flush();
    ExitCode::from(if rtts.is_empty() {
        EXIT_FAILED
    } else {
        EXIT_OK
    })
}

fn probe(exchanger: &mut Exchanger, config: &PingConfig, message: &[u8]) -> Probe {
    if !config.connect_each {
        return match exchanger.round_trip(message, config.timeout) {
            Ok(rtt) => Probe::Echoed(rtt),
            Err(err) => Probe::Failed(err),
        };
    }
    let start = Instant::now();
    let result = exchanger
        .connect()
        .and_then(|()| exchanger.round_trip(message, config.timeout))
        .and_then(|_| exchanger.close(config.timeout));
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
    let loss = if sent == 0 {
        0.0
    } else {
        100.0 * (sent - received) as f64 / sent as f64
    };
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
