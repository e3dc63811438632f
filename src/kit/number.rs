//! Whole numbers from the command line, within a range the error gives.

use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;

/// Parses a whole number within `range` for a flag. Whatever is wrong with
/// `text` (a word, a sign, too many digits, out of range), the error is one
/// sentence that gives the range, so nobody has to guess it. In clap
/// closures, name `T` (`parse_within::<u32>`), for an integer range left to
/// inference is an `i32`, and clap then panics when the field, of another
/// type, is read.
pub fn parse_within<T>(
    text: &str,
    what: &str,
    range: RangeInclusive<T>,
    note: &str,
) -> Result<T, String>
where
    T: FromStr + PartialOrd + fmt::Display,
{
    match text.parse::<T>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(format!(
            "'{text}' is not {what} from {} to {}{note}",
            range.start(),
            range.end()
        )),
    }
}
