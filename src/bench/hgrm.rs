//! `--hdr FILE`: the latency histogram as HdrHistogram's percentile
//! distribution (`.hgrm`), the text that HdrHistogram's
//! `outputPercentileDistribution`, `HistogramLogProcessor` and wrk2 print,
//! and that the HdrHistogram plotter and other tools read.
//!
//! The layout is the Java original's, to the column: a header, one row
//! per percentile step (value, percentile, count at or below the value,
//! 1/(1-percentile), which the last row leaves out), then the `#[Mean`,
//! `#[Max` and `#[Buckets` footer lines. Values are in milliseconds, as
//! wrk2 writes them; the histogram holds nanoseconds.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// Percentile steps per halving of the distance to 100 %: the Java
/// library's default, so rows fall at the same percentiles as its output.
const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// Histogram units (nanoseconds) per printed unit (a millisecond).
const NANOS_PER_MS: f64 = 1e6;

/// `h` (nanoseconds) as an `.hgrm` percentile distribution in
/// milliseconds.
pub fn percentile_distribution(h: &Histogram<u64>) -> String {
    // Decimals as the Java original prints them: the histogram's
    // significant digits.
    let digits = usize::from(h.sigfig());
    let mut out = String::new();
    let _ = write!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    // An empty histogram has no rows, as in the original.
    for step in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
        total += step.count_since_last_iteration();
        let value = step.value_iterated_to() as f64 / NANOS_PER_MS;
        let quantile = step.quantile_iterated_to();
        if quantile < 1.0 {
            let _ = writeln!(
                out,
                "{value:>12.digits$} {quantile:>2.12} {total:>10} {:>14.2}",
                1.0 / (1.0 - quantile)
            );
        } else {
            let _ = writeln!(out, "{value:>12.digits$} {quantile:>2.12} {total:>10}");
        }
    }
    let (mean, stdev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (
            h.mean() / NANOS_PER_MS,
            h.stdev() / NANOS_PER_MS,
            h.max() as f64 / NANOS_PER_MS,
        )
    };
    let _ = writeln!(
        out,
        "#[Mean    = {mean:>12.digits$}, StdDeviation   = {stdev:>12.digits$}]"
    );
    let _ = writeln!(
        out,
        "#[Max     = {max:>12.digits$}, Total count    = {:>12}]",
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        sub_buckets(h.sigfig())
    );
    out
}

/// The sub-buckets per bucket of a histogram that keeps `sigfig` digits:
/// the smallest power of two that holds 2 × 10^sigfig values at unit
/// resolution (HdrHistogram's own formula; the crate does not expose it).
fn sub_buckets(sigfig: u8) -> u64 {
    (2 * 10u64.pow(u32::from(sigfig))).next_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_footer_in_the_java_layout() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let text = percentile_distribution(&h);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines[1], "");
        // First row: the lowest value, percentile 0, one value at or below.
        assert_eq!(
            lines[2],
            "       0.001 0.000000000000          1           1.00"
        );
        // The last row is 100 %, without the 1/(1-p) column.
        let last = lines[lines.len() - 4];
        assert!(last.ends_with(" 1.000000000000       1000"), "{last}");
        assert_eq!(
            lines[lines.len() - 3],
            "#[Mean    =        0.501, StdDeviation   =        0.289]"
        );
        assert_eq!(
            lines[lines.len() - 2],
            "#[Max     =        1.000, Total count    =         1000]"
        );
        assert!(lines[lines.len() - 1].ends_with("SubBuckets     =         2048]"));
    }
}
