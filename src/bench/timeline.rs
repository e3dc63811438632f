//! The measured window second by second: `"intervals"` in `--json`, and
//! `--csv FILE`.
//!
//! Each worker counts the second it is in ([`Interval`], kept in its
//! [`Stats`](super::stats::Stats)) and hands it to the shared [`Timeline`]
//! when the second is over. Seconds are counted from the end of the
//! warm-up; echoes that arrive after the window (the drain) count in its
//! last second, so the intervals add up to the totals. Once every worker
//! has moved past a second, its latencies are reduced to the percentiles
//! shown and the histogram is dropped, so a day-long run holds a few
//! numbers per second, not a histogram per second.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

/// The slowest latency a histogram of the bench tells apart from
/// "slower", the totals' and each interval's: one minute, in nanoseconds.
/// Slower echoes are recorded as one minute.
pub(super) const LATENCY_MAX_NS: u64 = 60_000_000_000;

/// Significant digits of an interval's latencies: two (1 %) are plenty for
/// a time series, and make each histogram a tenth of the totals' size.
const INTERVAL_DIGITS: u8 = 2;

/// What happened in one second: of one worker, or of all merged.
#[derive(Clone, Debug)]
pub struct Interval {
    /// Messages echoed intact.
    pub messages: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Errors counted (of every kind).
    pub errors: u64,
    /// Their latencies, in nanoseconds.
    pub latency: Histogram<u64>,
}

impl Default for Interval {
    fn default() -> Interval {
        Interval {
            messages: 0,
            bytes: 0,
            errors: 0,
            latency: Histogram::new_with_bounds(1, LATENCY_MAX_NS, INTERVAL_DIGITS)
                .expect("the histogram bounds are valid constants"),
        }
    }
}

impl Interval {
    /// Counts one message of `size` bytes echoed after `ns` nanoseconds.
    pub fn echoed(&mut self, size: usize, ns: u64) {
        self.messages += 1;
        self.bytes += size as u64;
        self.latency.saturating_record(ns);
    }

    /// Back to nothing, keeping the histogram's memory.
    pub fn reset(&mut self) {
        self.messages = 0;
        self.bytes = 0;
        self.errors = 0;
        self.latency.reset();
    }

    fn merge(&mut self, other: &Interval) {
        self.messages += other.messages;
        self.bytes += other.bytes;
        self.errors += other.errors;
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency.add(&other.latency);
    }

    fn summary(&self) -> Summary {
        let at = |q| (!self.latency.is_empty()).then(|| self.latency.value_at_quantile(q));
        Summary {
            messages: self.messages,
            bytes: self.bytes,
            errors: self.errors,
            p50_ns: at(0.5),
            p99_ns: at(0.99),
        }
    }
}

/// One second as reported: counts, and the percentiles of its latencies
/// (`None` when no message came back in it).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    /// Messages echoed intact.
    pub messages: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Errors counted.
    pub errors: u64,
    /// Median latency, in nanoseconds.
    pub p50_ns: Option<u64>,
    /// 99th percentile latency, in nanoseconds.
    pub p99_ns: Option<u64>,
}

/// A worker that has finished: every second is past for it.
pub const FINISHED: u64 = u64::MAX;

/// The seconds of the measured window, filled in by the workers.
#[derive(Debug, Default)]
pub struct Timeline {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Seconds some worker may still add to, merged so far.
    open: BTreeMap<u64, Interval>,
    /// Seconds every worker is past, reduced to what is reported.
    closed: BTreeMap<u64, Summary>,
    /// Per worker, the second it is in: it adds nothing earlier.
    current: Vec<u64>,
}

impl Timeline {
    /// A timeline for `workers` worker threads.
    pub fn new(workers: usize) -> Timeline {
        Timeline {
            inner: Mutex::new(Inner {
                current: vec![0; workers],
                ..Inner::default()
            }),
        }
    }

    /// Worker `worker` adds what it counted in `second` and is now in
    /// second `now_in` ([`FINISHED`] when done).
    pub fn add(&self, worker: usize, second: u64, counted: &Interval, now_in: u64) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.open.entry(second).or_default().merge(counted);
        if let Some(current) = inner.current.get_mut(worker) {
            *current = now_in;
        }
        // Seconds before the one the slowest worker is in are complete.
        let complete = inner.current.iter().copied().min().unwrap_or(FINISHED);
        while let Some(entry) = inner.open.first_entry() {
            if *entry.key() >= complete {
                break;
            }
            let (second, interval) = entry.remove_entry();
            inner.closed.insert(second, interval.summary());
        }
    }

    /// The window's `count` seconds, once the workers are done; a second
    /// nobody added to is all zeros.
    pub fn seconds(&self, count: u64) -> Vec<Summary> {
        let Ok(mut inner) = self.inner.lock() else {
            return Vec::new();
        };
        let open = std::mem::take(&mut inner.open);
        for (second, interval) in open {
            inner.closed.insert(second, interval.summary());
        }
        (0..count)
            .map(|second| inner.closed.get(&second).copied().unwrap_or_default())
            .collect()
    }
}

/// Whole seconds `d` reaches into: 1.0 s is one, 1.2 s two.
pub fn seconds_begun(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// How long second `index` of a window `measured` long lasted: 1 s, or
/// less for the last one.
fn length(index: u64, measured: Duration) -> f64 {
    (measured.as_secs_f64() - index as f64).clamp(0.0, 1.0)
}

fn us(ns: Option<u64>) -> Option<f64> {
    ns.map(|ns| ns as f64 / 1000.0)
}

/// The intervals for `--json`: one object per second.
pub fn json(seconds: &[Summary], measured: Duration) -> serde_json::Value {
    let entries = seconds.iter().zip(0u64..).map(|(s, i)| {
        serde_json::json!({
            "start_s": i,
            "duration_s": length(i, measured),
            "messages": s.messages,
            "mb": s.bytes as f64 / 1e6,
            "errors": s.errors,
            "p50_us": us(s.p50_ns),
            "p99_us": us(s.p99_ns),
        })
    });
    serde_json::Value::Array(entries.collect())
}

/// The intervals for `--csv`: a header, then a row per second (the
/// percentiles empty when no message came back in it).
pub fn csv(seconds: &[Summary], measured: Duration) -> String {
    let mut out = String::from("start_s,duration_s,messages,mb,errors,p50_us,p99_us\n");
    let cell = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or_default();
    for (s, i) in seconds.iter().zip(0u64..) {
        let _ = writeln!(
            out,
            "{i},{:.3},{},{:.6},{},{},{}",
            length(i, measured),
            s.messages,
            s.bytes as f64 / 1e6,
            s.errors,
            cell(us(s.p50_ns)),
            cell(us(s.p99_ns))
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(messages: u64, ns: u64) -> Interval {
        let mut i = Interval::default();
        for _ in 0..messages {
            i.echoed(64, ns);
        }
        i
    }

    #[test]
    fn a_second_closes_once_every_worker_is_past_it() {
        let timeline = Timeline::new(2);
        timeline.add(0, 0, &one(3, 1000), 1);
        // Worker 1 is still in second 0: it stays open.
        assert!(timeline.inner.lock().unwrap().closed.is_empty());
        timeline.add(1, 0, &one(2, 3000), 1);
        let inner = timeline.inner.lock().unwrap();
        assert_eq!(inner.closed[&0].messages, 5);
        assert!(inner.open.is_empty());
        drop(inner);
        // A last partial second, and one nobody counted in.
        timeline.add(0, 2, &one(1, 2000), FINISHED);
        let seconds = timeline.seconds(4);
        assert_eq!(seconds.len(), 4);
        assert_eq!(seconds[1], Summary::default());
        assert_eq!(seconds[2].messages, 1);
        assert_eq!(seconds[3], Summary::default());
    }

    #[test]
    fn csv_and_json_say_the_same() {
        let seconds = [one(2, 1_000_000).summary(), Summary::default()];
        let measured = Duration::from_millis(1500);
        assert_eq!(
            csv(&seconds, measured),
            "start_s,duration_s,messages,mb,errors,p50_us,p99_us\n\
             0,1.000,2,0.000128,0,1003.519,1003.519\n\
             1,0.500,0,0.000000,0,,\n"
        );
        let v = json(&seconds, measured);
        assert_eq!(v[1]["duration_s"], 0.5);
        // 1 ms as two significant digits keep it: the top of its bucket.
        assert_eq!(v[0]["p99_us"], 1003.519);
        assert_eq!(v[1]["p50_us"], serde_json::Value::Null);
    }

    #[test]
    fn seconds_begun_counts_a_partial_second() {
        assert_eq!(seconds_begun(Duration::ZERO), 0);
        assert_eq!(seconds_begun(Duration::from_secs(1)), 1);
        assert_eq!(seconds_begun(Duration::from_millis(1001)), 2);
    }
}
