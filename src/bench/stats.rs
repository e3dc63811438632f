//! What a benchmark counts, how counts from several threads are merged, and
//! the two ways they are reported: text for people, one JSON object for
//! scripts.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::timeline::{Interval, LATENCY_MAX_NS};

/// Significant decimal digits the histogram keeps (0.1 % resolution):
/// hdrhistogram's usual choice, a few hundred KiB per histogram.
const LATENCY_DIGITS: u8 = 3;

/// Everything wrong that a benchmark counts; any of it fails the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Errors {
    /// Echoes that differed from what was sent (including a message of
    /// another connection or sequence, and datagrams of another length).
    pub mismatches: u64,
    /// Connections reset or closed by the server while messages were in
    /// flight or the run was going on.
    pub resets: u64,
    /// TCP connections with messages in flight and no echo for `--timeout`.
    pub stalls: u64,
    /// Connection attempts that failed or timed out.
    pub connect_failures: u64,
    /// UDP datagrams whose echo did not come back within `--timeout`.
    pub lost: u64,
}

impl Errors {
    /// All errors together.
    pub fn total(&self) -> u64 {
        self.mismatches + self.resets + self.stalls + self.connect_failures + self.lost
    }

    fn add(&mut self, other: &Errors) {
        self.mismatches += other.mismatches;
        self.resets += other.resets;
        self.stalls += other.stalls;
        self.connect_failures += other.connect_failures;
        self.lost += other.lost;
    }
}

/// The counts of one worker, or of all of them merged.
#[derive(Clone, Debug)]
pub struct Stats {
    /// Messages echoed intact after the warm-up.
    pub messages: u64,
    /// Payload bytes of those messages (each way).
    pub bytes: u64,
    /// Latency of each of those messages, in nanoseconds.
    pub latency: Histogram<u64>,
    /// TCP connections made after the warm-up.
    pub connections: u64,
    /// How long each of those took to connect (from the nonblocking
    /// `connect` to the handshake's end), in nanoseconds.
    pub connect: Histogram<u64>,
    /// Errors, warm-up included: a wrong echo is never forgiven.
    pub errors: Errors,
    /// UDP echoes that came back after they were counted lost, or twice.
    pub late: u64,
    /// The messages of the second now running, for the time series (a
    /// worker hands it to the [`Timeline`](super::timeline::Timeline)
    /// each second; merging leaves it out).
    pub second: Interval,
}

/// An empty latency histogram, in nanoseconds.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_NS, LATENCY_DIGITS)
        .expect("the histogram bounds are valid constants")
}

/// `latency` as a histogram value: nanoseconds, at least 1 (the lowest
/// value the histogram holds).
fn nanos(latency: Duration) -> u64 {
    u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1)
}

impl Default for Stats {
    fn default() -> Stats {
        Stats::new()
    }
}

impl Stats {
    /// Empty counts.
    pub fn new() -> Stats {
        Stats {
            messages: 0,
            bytes: 0,
            latency: latency_histogram(),
            connections: 0,
            connect: latency_histogram(),
            errors: Errors::default(),
            late: 0,
            second: Interval::default(),
        }
    }

    /// Counts one message echoed intact after `latency`.
    pub fn echoed(&mut self, size: usize, latency: Duration) {
        self.messages += 1;
        self.bytes += size as u64;
        self.latency.saturating_record(nanos(latency));
        self.second.echoed(size, nanos(latency));
    }

    /// Counts one connection made after `latency`.
    pub fn connected(&mut self, latency: Duration) {
        self.connections += 1;
        self.connect.saturating_record(nanos(latency));
    }

    /// Forgets the messages, connections and latencies (at the end of the
    /// warm-up); errors are kept.
    pub fn end_warmup(&mut self) {
        self.messages = 0;
        self.bytes = 0;
        self.latency.reset();
        self.connections = 0;
        self.connect.reset();
        self.second.reset();
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &Stats) {
        self.messages += other.messages;
        self.bytes += other.bytes;
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        self.connections += other.connections;
        let _ = self.connect.add(&other.connect);
        self.errors.add(&other.errors);
        self.late += other.late;
    }
}

/// What was run, for the report's heading and the JSON object.
#[derive(Clone, Debug)]
pub struct Setup {
    /// The server.
    pub addr: String,
    /// "tcp" or "udp".
    pub transport: &'static str,
    /// Connections open at once, `-c` (UDP: sockets).
    pub concurrency: usize,
    /// Bytes per message.
    pub size: usize,
    /// Messages in flight per connection.
    pub pipeline: usize,
    /// Messages per connection before a new one is opened, if any.
    pub reconnect: Option<u64>,
    /// Total messages per second asked for, if open loop.
    pub rate: Option<f64>,
    /// Worker threads.
    pub threads: usize,
}

/// How the measured window went, beside the counts.
#[derive(Clone, Debug, Default)]
pub struct Window {
    /// How long it lasted (shorter than `--duration` when stopped early).
    pub measured: Duration,
    /// Ended early by Ctrl-C (SIGINT) or SIGTERM.
    pub interrupted: bool,
    /// Its seconds, the last one perhaps partial.
    pub seconds: Vec<super::timeline::Summary>,
}

/// Latency percentiles in microseconds.
fn percentile_us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn ms(us: f64) -> String {
    format!("{:.3} ms", us / 1000.0)
}

/// `h`'s percentiles for people: "p50 … p90 … p99 … p99.9 … max …".
fn percentiles_text(h: &Histogram<u64>) -> String {
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        ms(percentile_us(h, 0.5)),
        ms(percentile_us(h, 0.9)),
        ms(percentile_us(h, 0.99)),
        ms(percentile_us(h, 0.999)),
        ms(h.max() as f64 / 1000.0)
    )
}

/// `h`'s percentiles for scripts, in microseconds; null if it is empty.
fn percentiles_json(h: &Histogram<u64>) -> serde_json::Value {
    if h.is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::json!({
        "p50": percentile_us(h, 0.5),
        "p90": percentile_us(h, 0.9),
        "p99": percentile_us(h, 0.99),
        "p99_9": percentile_us(h, 0.999),
        "max": h.max() as f64 / 1000.0,
        "mean": h.mean() / 1000.0,
    })
}

/// The report for people.
pub fn text(setup: &Setup, stats: &Stats, window: &Window) -> String {
    let secs = window.measured.as_secs_f64().max(f64::MIN_POSITIVE);
    let h = &stats.latency;
    let mut out = String::new();
    let mode = match setup.rate {
        Some(rate) => format!("open loop at {rate} messages/s"),
        None => "closed loop".to_string(),
    };
    let reconnect = match setup.reconnect {
        Some(1) => ", a new connection per message".to_string(),
        Some(n) => format!(", a new connection every {n} messages"),
        None => String::new(),
    };
    let _ = writeln!(
        out,
        "{} over {}: {} connection(s){reconnect}, {}-byte messages, pipeline {}, {mode}, {} \
         thread(s)",
        setup.addr, setup.transport, setup.concurrency, setup.size, setup.pipeline, setup.threads
    );
    let _ = writeln!(
        out,
        "  measured   {:.2} s, {} messages echoed intact",
        secs, stats.messages
    );
    let _ = writeln!(
        out,
        "  rate       {:.0} messages/s, {:.2} MB/s each way",
        stats.messages as f64 / secs,
        stats.bytes as f64 / secs / 1e6
    );
    if stats.messages > 0 {
        let _ = writeln!(out, "  latency    {}", percentiles_text(h));
    }
    if stats.connections > 0 {
        let _ = writeln!(
            out,
            "  connects   {} made, {:.0} connections/s; connect {}",
            stats.connections,
            stats.connections as f64 / secs,
            percentiles_text(&stats.connect)
        );
    }
    let e = &stats.errors;
    let _ = writeln!(
        out,
        "  errors     {} (mismatches {}, resets {}, stalls {}, failed connects {}, lost datagrams {})",
        e.total(),
        e.mismatches,
        e.resets,
        e.stalls,
        e.connect_failures,
        e.lost
    );
    if stats.late > 0 {
        let _ = writeln!(
            out,
            "  late       {} late or duplicate datagrams",
            stats.late
        );
    }
    out
}

/// The report for scripts: one JSON object (latencies in microseconds).
pub fn json(setup: &Setup, stats: &Stats, window: &Window) -> serde_json::Value {
    let secs = window.measured.as_secs_f64().max(f64::MIN_POSITIVE);
    // The messages' percentiles, with the connects' as "connect" (null
    // when no connection was made in the window); null if neither.
    let latency = match percentiles_json(&stats.latency) {
        _ if stats.messages == 0 && stats.connections == 0 => serde_json::Value::Null,
        serde_json::Value::Object(mut keys) => {
            keys.insert("connect".into(), percentiles_json(&stats.connect));
            serde_json::Value::Object(keys)
        }
        _ => serde_json::json!({ "connect": percentiles_json(&stats.connect) }),
    };
    let e = &stats.errors;
    serde_json::json!({
        "addr": setup.addr,
        "transport": setup.transport,
        "concurrency": setup.concurrency,
        "connections": stats.connections,
        "connections_per_s": stats.connections as f64 / secs,
        "reconnect": setup.reconnect,
        "size": setup.size,
        "pipeline": setup.pipeline,
        "rate": setup.rate,
        "threads": setup.threads,
        "duration_s": secs,
        "messages": stats.messages,
        "bytes": stats.bytes,
        "messages_per_s": stats.messages as f64 / secs,
        "mb_per_s": stats.bytes as f64 / secs / 1e6,
        "latency_us": latency,
        "errors": e.total(),
        "mismatches": e.mismatches,
        "resets": e.resets,
        "stalls": e.stalls,
        "connect_failures": e.connect_failures,
        "lost": e.lost,
        "late": stats.late,
        "interrupted": window.interrupted,
        "intervals": super::timeline::json(&window.seconds, window.measured),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_adds_counts_and_latencies() {
        let mut a = Stats::new();
        a.echoed(64, Duration::from_micros(100));
        a.errors.stalls = 1;
        let mut b = Stats::new();
        b.echoed(64, Duration::from_micros(300));
        b.errors.mismatches = 2;
        a.merge(&b);
        assert_eq!(a.messages, 2);
        assert_eq!(a.bytes, 128);
        assert_eq!(a.errors.total(), 3);
        assert_eq!(a.latency.len(), 2);
    }

    #[test]
    fn warmup_forgets_messages_but_not_errors() {
        let mut s = Stats::new();
        s.echoed(64, Duration::from_micros(100));
        s.errors.resets = 1;
        s.end_warmup();
        assert_eq!(s.messages, 0);
        assert_eq!(s.latency.len(), 0);
        assert_eq!(s.errors.resets, 1);
    }

    #[test]
    fn json_has_the_fields_scripts_read() {
        let setup = Setup {
            addr: "127.0.0.1:7".into(),
            transport: "tcp",
            concurrency: 1,
            size: 64,
            pipeline: 1,
            reconnect: None,
            rate: None,
            threads: 1,
        };
        let mut s = Stats::new();
        s.echoed(64, Duration::from_micros(100));
        let window = Window {
            measured: Duration::from_secs(1),
            ..Window::default()
        };
        let v = json(&setup, &s, &window);
        assert_eq!(v["messages"], 1);
        assert_eq!(v["errors"], 0);
        assert_eq!(v["mb_per_s"], 64.0 / 1e6);
        assert!(v["latency_us"]["p99"].as_f64().unwrap() > 99.0);
    }
}
