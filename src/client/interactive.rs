//! `echod client` in line mode: a prompt, each line sent, its echo shown
//! with the round-trip time, as the seeds' clients do, but each echo is
//! checked and timed.
//!
//! Used when stdin is a terminal, or with `-i` (then lines may come from a
//! pipe: handy for scripts). `Q`, `quit` or end of input (Ctrl-D) ends.
//! The prompt and notes go to stderr, the echoes to stdout, so
//! `echod client -i ADDR < lines > echoes` keeps the echoes apart.

use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use super::ClientConfig;
use crate::kit::duration::seconds;
use crate::kit::exchange::{ExchangeError, MAX_UDP_PAYLOAD};
use crate::kit::tool::{self, EXIT_FAILED, EXIT_OK, EXIT_SETUP};
use echod_server::net::Transport;

/// The prompt, on stderr.
const PROMPT: &str = "echod> ";

/// The longest line sent as one message; longer lines are sent in pieces
/// of this size. A UDP datagram holds no more.
const MAX_LINE: usize = MAX_UDP_PAYLOAD;

/// True for the words that end the session (`Q`, as in the seeds, and `quit`).
fn is_quit(line: &[u8]) -> bool {
    let word = line.trim_ascii();
    word.eq_ignore_ascii_case(b"q") || word.eq_ignore_ascii_case(b"quit")
}

/// Runs the line mode; returns 0 if every line came back intact.
pub fn run(args: &ClientConfig) -> ExitCode {
    let transport = tool::transport(args.udp);
    let mut exchanger = match tool::exchanger("client", args.addr, transport, args.timeout) {
        Ok(ex) => ex,
        Err(status) => return status,
    };
    if let Err(err) = exchanger.connect() {
        return tool::fail("client", EXIT_FAILED, &err.to_string());
    }
    let terminal = io::stdin().is_terminal();
    if terminal {
        eprintln!(
            "Connected to {} over {transport}. Each line you type is sent and its echo \
             shown with the round-trip time; Q, quit or Ctrl-D ends.",
            args.addr
        );
    }
    let mut stdin = io::stdin().lock();
    let mut out = io::stdout().lock();
    let (mut lines, mut failed) = (0u64, 0u64);
    let mut line = Vec::new();
    loop {
        if terminal {
            eprint!("{PROMPT}");
        }
        line.clear();
        match (&mut stdin)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
        {
            Ok(0) => break,
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                return tool::fail(
                    "client",
                    EXIT_SETUP,
                    &format!("could not read standard input: {err}"),
                );
            }
        }
        if is_quit(&line) {
            break;
        }
        lines += 1;
        let shown = String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(&line));
        let shown = shown.trim_end_matches('\r');
        let written = match exchanger.round_trip(&line, args.timeout) {
            Ok(rtt) => writeln!(
                out,
                "echo {} bytes in {:.3} ms: {shown}",
                line.len(),
                rtt.as_secs_f64() * 1000.0
            ),
            Err(err) => {
                failed += 1;
                let _ = out.flush();
                eprintln!(
                    "echod client: line {lines}: {}",
                    describe(&err, transport, args.timeout)
                );
                Ok(())
            }
        };
        if written.and_then(|()| out.flush()).is_err() {
            return ExitCode::from(EXIT_OK); // stdout closed: stop quietly
        }
    }
    let closed = exchanger.close(args.timeout);
    if let Err(err) = closed {
        failed += 1;
        eprintln!("echod client: closing the connection: {err}");
    }
    if failed > 0 {
        return tool::fail(
            "client",
            EXIT_FAILED,
            &format!("{failed} of {lines} lines did not come back intact"),
        );
    }
    ExitCode::from(EXIT_OK)
}

/// What went wrong with a line; over TCP the next line uses a new
/// connection (see `Exchanger::round_trip`).
fn describe(err: &ExchangeError, transport: Transport, timeout: Duration) -> String {
    let next = match transport {
        Transport::Tcp => "; the next line is sent on a new connection",
        Transport::Udp => "",
    };
    match err {
        ExchangeError::Timeout { .. } => {
            format!("{err} within {}{next}", seconds(timeout))
        }
        ExchangeError::Connect(_) | ExchangeError::Refused => err.to_string(),
        other => format!("{other}{next}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quit_words() {
        assert!(is_quit(b"Q\n"));
        assert!(is_quit(b"quit\r\n"));
        assert!(is_quit(b"  q "));
        assert!(!is_quit(b"Quite\n"));
        assert!(!is_quit(b"\n"));
    }
}
