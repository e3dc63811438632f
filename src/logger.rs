//! The binary's logger: one line per record on stderr, such as
//!
//! ```text
//! 2026-12-04T08:32:37.123Z INFO  [echod_server::server] listening on tcp 127.0.0.1:7
//! ```
//!
//! (UTC time with milliseconds, level, `[target]`, message), the level in
//! colour when stderr is a terminal, `NO_COLOR` is not set and `TERM` is not
//! `dumb`.
//!
//! A line that cannot be written is dropped, never a panic. The server logs
//! as it drains, and that is when stderr goes away: a terminal that hangs
//! up makes its tty return EIO before SIGHUP is even delivered, and a pipe
//! whose reader exited returns EPIPE (Rust ignores SIGPIPE). `eprintln!`
//! panics on either, which killed echod (exit 101) and every session with
//! it; simple_logger, used before, writes with `eprintln!`.

use std::io::{self, IsTerminal, Write};

use log::{Level, LevelFilter, Log, Metadata, Record};
use time::OffsetDateTime;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;

/// RFC 3339 in UTC with milliseconds, as simple_logger printed it, so the
/// lines people and scripts read did not change.
const TIMESTAMP: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// Logs to stderr, ignoring write errors.
pub struct StderrLogger {
    level: LevelFilter,
    colours: bool,
}

impl StderrLogger {
    /// A logger for records up to `level`, with colours if stderr is a
    /// terminal, `NO_COLOR` is not set and `TERM` is not `dumb`.
    pub fn new(level: LevelFilter) -> StderrLogger {
        StderrLogger {
            level,
            colours: io::stderr().is_terminal()
                && !echod::cli::colour_forbidden(
                    std::env::var_os("NO_COLOR"),
                    std::env::var_os("TERM"),
                ),
        }
    }

    /// The line for `record` at `now`, newline included.
    fn line(&self, record: &Record<'_>, now: OffsetDateTime) -> String {
        // Formatting a date in the years an OffsetDateTime holds cannot
        // fail; were it to, the line goes out without a time.
        let time = now.format(TIMESTAMP).unwrap_or_default();
        let level = format!("{:<5}", record.level());
        let level = match colour(record.level()) {
            Some(sgr) if self.colours => format!("\x1b[{sgr}m{level}\x1b[0m"),
            _ => level,
        };
        let target = if record.target().is_empty() {
            record.module_path().unwrap_or_default()
        } else {
            record.target()
        };
        format!("{time} {level} [{target}] {}\n", record.args())
    }
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = self.line(record, OffsetDateTime::now_utc());
        // One write of the whole line (stderr is unbuffered), so lines do
        // not interleave. An error means nobody can read it (see the
        // module docs): the line is lost, the server goes on.
        let _ = io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = io::stderr().flush();
    }
}

/// The SGR colour code (ECMA-48) of each level, the ones simple_logger
/// used: red, yellow, cyan, magenta; trace in the terminal's own colour.
fn colour(level: Level) -> Option<u8> {
    match level {
        Level::Error => Some(31),
        Level::Warn => Some(33),
        Level::Info => Some(36),
        Level::Debug => Some(35),
        Level::Trace => None,
    }
}

/// Installs the logger for records up to `level`. If a logger is set
/// already there is nobody to tell, so the program carries on with it.
pub fn init(level: LevelFilter) {
    let logger: &'static StderrLogger = Box::leak(Box::new(StderrLogger::new(level)));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(colours: bool, level: Level, message: &str) -> String {
        let logger = StderrLogger {
            level: LevelFilter::Trace,
            colours,
        };
        let now = OffsetDateTime::from_unix_timestamp_nanos(1_796_373_157_123_456_789).unwrap();
        logger.line(
            &Record::builder()
                .level(level)
                .target("echod::server")
                .args(format_args!("{message}"))
                .build(),
            now,
        )
    }

    #[test]
    fn a_line_has_the_utc_time_in_milliseconds_level_target_and_message() {
        assert_eq!(
            line(false, Level::Info, "listening on tcp 127.0.0.1:7"),
            "2026-12-04T08:32:37.123Z INFO  [echod::server] listening on tcp 127.0.0.1:7\n"
        );
    }

    #[test]
    fn colours_paint_the_level_only() {
        assert_eq!(
            line(true, Level::Error, "x"),
            "2026-12-04T08:32:37.123Z \x1b[31mERROR\x1b[0m [echod::server] x\n"
        );
        assert_eq!(
            line(true, Level::Trace, "x"),
            "2026-12-04T08:32:37.123Z TRACE [echod::server] x\n"
        );
    }
}
