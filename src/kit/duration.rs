//! The one duration grammar of the tools: `2`, `0.5` or `1.5s` are
//! seconds, `250ms` milliseconds, `2m` minutes; and durations written back
//! in the unit people read best.

use std::time::Duration;

/// A duration in the unit people read best: `250 ms`, `1.5 s`.
pub fn seconds(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{} s", d.as_secs_f64())
    }
}

/// Parses a duration for the command line: `2`, `0.5` or `1.5s` are
/// seconds, `250ms` milliseconds, `2m` minutes.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let value: f64 = number.trim().parse().map_err(|_| {
        format!("'{text}' is not a duration; write seconds (2, 0.5, 1.5s), 250ms or 2m")
    })?;
    if !value.is_finite() || value < 0.0 || value * scale > 365.0 * 86_400.0 {
        return Err(format!(
            "'{text}' is not a usable duration; give a positive number of seconds"
        ));
    }
    // Finite, not negative and at most a year: from_secs_f64 cannot panic.
    Ok(Duration::from_secs_f64(value * scale))
}

/// The shortest timeout the tools accept: a zero timeout would mean
/// "never wait" (the socket calls refuse it), not "wait very little".
pub const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// The longest timeout, interval or warm-up the tools accept: an hour. An
/// echo not back within an hour is lost by any measure, and a longer
/// number is far more likely a slip of the keyboard than a plan.
pub const MAX_TOOL_WAIT: Duration = Duration::from_secs(3600);

/// [`parse_duration`] within `min..=max`; the error gives the range.
pub fn parse_duration_within(text: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    match parse_duration(text) {
        Ok(d) if (min..=max).contains(&d) => Ok(d),
        _ => Err(format!(
            "'{text}' is not a duration from {} to {}; write seconds (2, 0.5, 1.5s), 250ms or 2m",
            seconds(min),
            seconds(max)
        )),
    }
}

/// A tool's `--timeout`: [`MIN_TIMEOUT`] to [`MAX_TOOL_WAIT`].
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    parse_duration_within(text, MIN_TIMEOUT, MAX_TOOL_WAIT)
}

/// A pause that may be zero (`ping --interval`, `bench --warmup`): up to
/// [`MAX_TOOL_WAIT`].
pub fn parse_pause(text: &str) -> Result<Duration, String> {
    parse_duration_within(text, Duration::ZERO, MAX_TOOL_WAIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_several_units() {
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1").is_err());
        assert_eq!(seconds(Duration::from_millis(250)), "250 ms");
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5 s");
    }

    #[test]
    fn durations_that_would_panic_are_sentences() {
        // Duration::from_secs_f64 panics on these; parse_duration must
        // refuse them first.
        for text in [
            "NaN",
            "inf",
            "-inf",
            "1e300",
            "-0.5",
            "1e19",
            "18446744073709551616",
        ] {
            let err = parse_duration(text).unwrap_err();
            assert!(err.starts_with(&format!("'{text}' is not")), "{err}");
        }
    }

    #[test]
    fn tool_timeouts_go_from_a_millisecond_to_an_hour() {
        assert_eq!(parse_timeout("1ms"), Ok(MIN_TIMEOUT));
        assert_eq!(parse_timeout("3600"), Ok(MAX_TOOL_WAIT));
        assert_eq!(parse_timeout("60m"), Ok(MAX_TOOL_WAIT));
        for beyond in ["0", "0.0009", "3600.001", "61m", "NaN"] {
            let err = parse_timeout(beyond).unwrap_err();
            assert!(
                err.contains("is not a duration from 1 ms to 3600 s"),
                "{beyond}: {err}"
            );
        }
        assert_eq!(parse_pause("0"), Ok(Duration::ZERO));
        assert_eq!(parse_pause("3600"), Ok(MAX_TOOL_WAIT));
        let err = parse_pause("3601").unwrap_err();
        assert!(
            err.contains("is not a duration from 0 ms to 3600 s"),
            "{err}"
        );
    }
}
