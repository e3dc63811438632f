//! `echod check`'s command line, turned into a [`Request`].

use std::time::Duration;

use clap::Args;

use crate::check::{CHECKS, CheckConfig, DEFAULT_CLIENTS, MAX_CLIENTS, Request, select};
use crate::kit::duration::{MAX_TOOL_WAIT, parse_duration_within};
use crate::kit::number::parse_within;
use crate::kit::target::Target;
use echod_server::net::Transport;

const CHECK_HELP: &str = "\
Examples:
  echod check localhost:7007                   every TCP check (IPv4 and IPv6 if the name has both)
  echod check -u 127.0.0.1:7007                the UDP checks
  echod check [::1]:7 --only echo half-close   two checks only
  echod check --list                           each check, the defect it looks for, its rule
  echod check host:7 --json | jq .summary      one JSON object, for scripts and CI
  echod check host:7 --junit check.xml         a JUnit XML report too, for CI
  echod check --strict 127.0.0.1:7007          the checks a server may skip, too

Exit status:
  0  every check that ran passed (skipped ones do not count)
  1  at least one check failed
  2  the command line was wrong, the name did not resolve, the server could not be reached,
     or the --junit file could not be written";

/// Options of `echod check`.
#[derive(Debug, Args)]
#[command(after_help = CHECK_HELP)]
pub struct CheckArgs {
    /// The server: HOST:PORT, or HOST alone for port 7; an IPv6 address in
    /// brackets, as in `[::1]:7007`. A name with both IPv4 and IPv6
    /// addresses is checked on one of each.
    #[arg(value_name = "ADDR")]
    pub addr: Option<String>,

    /// Check the UDP service instead of TCP.
    #[arg(short, long)]
    pub udp: bool,

    /// Run only the named checks (see --list), separated by spaces or commas.
    #[arg(long, value_name = "NAME", num_args = 1.., value_delimiter = ',')]
    pub only: Vec<String>,

    /// List the checks, with what each looks for and the rule it tests,
    /// and exit.
    #[arg(long)]
    pub list: bool,

    /// How many clients the concurrency check connects at once (1 to 1000).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CLIENTS as u16,
          value_parser = |t: &str| parse_within::<u16>(
              t, "a number of clients", 1..=MAX_CLIENTS as u16, ""))]
    pub clients: u16,

    /// How long a check waits for the server before it fails (5, 0.5,
    /// 250ms; 10 ms to an hour). A check in steps gives each step this long
    /// (--list shows how many); slow-drip takes 2 s more by design, and
    /// eof-with-queued-output 1.5 s (its pause and slow reads).
    #[arg(short = 'W', long, value_name = "SECS", default_value = "5", value_parser = parse_timeout)]
    pub timeout: Duration,

    /// Add the checks a server may reasonably skip: urgent data (MSG_OOB)
    /// echoed inline (TCP); with --udp, the reply coming from the address
    /// the datagram was sent to when the server listens on a wildcard
    /// address (from the server's host), and no answer to a datagram from
    /// a service port such as chargen's (CERT CA-1996-01; needs root).
    #[arg(long)]
    pub strict: bool,

    /// Also write a JUnit XML report to FILE (one test case per check), for
    /// CI systems.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<std::path::PathBuf>,

    /// Print one JSON object with every result and figure, on one line,
    /// instead of lines (`| jq .` shows it indented).
    #[arg(long)]
    pub json: bool,
}

/// The shortest `--timeout` (0.01 s, as check has always taken): shorter
/// waits would fail on scheduling delays rather than on defects.
const MIN_CHECK_TIMEOUT: Duration = Duration::from_millis(10);

/// `--timeout`: the tools' duration grammar, 10 ms to an hour.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    parse_duration_within(text, MIN_CHECK_TIMEOUT, MAX_TOOL_WAIT)
}

impl CheckArgs {
    /// Validates the flags into a configuration: the target parsed, the
    /// checks chosen. The error is a sentence for the user.
    pub fn to_config(&self) -> Result<CheckConfig, String> {
        let mut only = self.only.clone();
        // `--only a b ADDR` reads ADDR as a name too: take it back.
        let addr = match &self.addr {
            Some(addr) => addr.clone(),
            None => match only.pop() {
                Some(last) if !CHECKS.iter().any(|c| c.name == last) => last,
                _ => {
                    return Err(
                        "give the address of the server to check, such as localhost:7007".into(),
                    );
                }
            },
        };
        let transport = if self.udp {
            Transport::Udp
        } else {
            Transport::Tcp
        };
        if !self.only.is_empty() && only.is_empty() {
            return Err(format!(
                "--only needs at least one check name before the address '{addr}'; \
                 `echod check --list` shows them"
            ));
        }
        Ok(CheckConfig {
            target: Target::parse(&addr)?,
            transport,
            checks: select(transport, &only, self.strict)?,
            clients: usize::from(self.clients),
            timeout: self.timeout,
        })
    }

    /// What was asked: the list, or a validated run.
    pub fn to_request(&self) -> Result<Request, String> {
        if self.list {
            return Ok(Request::List);
        }
        Ok(Request::Run {
            config: self.to_config()?,
            json: self.json,
            junit: self.junit.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_takes_the_tools_durations_within_bounds() {
        assert_eq!(parse_timeout("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_timeout("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_timeout("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("soon").is_err());
    }
}
