//! What the tools share besides addresses:
//! exit statuses, how a failure is told, and Ctrl-C.

use std::fmt;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::exchange::{Exchanger, MAX_UDP_PAYLOAD};
use echod_server::net::Transport;

/// Everything sent came back right.
pub const EXIT_OK: u8 = 0;
/// The echo was wrong, incomplete, lost, or the server could not be
/// reached.
pub const EXIT_FAILED: u8 = 1;
/// The tool could not start: bad usage, an unknown host, no sockets.
/// (clap also exits with 2 for usage errors.)
pub const EXIT_SETUP: u8 = 2;

/// Prints `echod TOOL: MESSAGE` on stderr and returns `code`.
pub fn fail(tool: &str, code: u8, message: &str) -> ExitCode {
    eprintln!("echod {tool}: {message}");
    ExitCode::from(code)
}

/// Makes Ctrl-C (SIGINT) and SIGTERM set the returned flag instead of
/// ending the process, so a tool can stop and still print its summary.
/// A second signal ends the process at once, as people expect.
pub fn on_interrupt() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Registration only fails for signals that cannot be caught; these
        // two can, and without it Ctrl-C simply ends the tool.
        let _ = signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&flag));
        let _ = signal_hook::flag::register(signal, Arc::clone(&flag));
    }
    flag
}

/// Sleeps until `when`, waking early if `interrupted` is set; returns
/// false if it was.
pub fn sleep_until(when: Instant, interrupted: &AtomicBool) -> bool {
    // Short naps so Ctrl-C is noticed quickly; the sleep is bounded by
    // `when` in any case.
    const NAP: Duration = Duration::from_millis(50);
    loop {
        if interrupted.load(Ordering::SeqCst) {
            return false;
        }
        let now = Instant::now();
        if now >= when {
            return true;
        }
        std::thread::sleep((when - now).min(NAP));
    }
}

/// What to say when a TCP server sent no `what` (message, probe) back
/// whole. The likeliest cause: a server that echoes only whole lines (one
/// that reads with `readline`), waiting for a newline that the tools'
/// binary payloads do not end with. `echod check`'s `unbuffered` check
/// tells line buffering from a server that echoes nothing at all.
pub fn nothing_echoed_hint(what: &str, addr: impl fmt::Display) -> String {
    format!(
        "no {what} came back whole from {addr}: {what}s are binary and do not end in a \
         newline, so a server that echoes only whole lines holds them back; run \
         `echod check {addr} --only echo unbuffered` to see whether it does"
    )
}

/// The transport a tool's `--udp` flag asks for.
pub fn transport(udp: bool) -> Transport {
    if udp { Transport::Udp } else { Transport::Tcp }
}

/// An [`Exchanger`] for `tool`, or (after saying why on stderr) the exit
/// status when its socket cannot be made.
pub fn exchanger(
    tool: &str,
    addr: SocketAddr,
    transport: Transport,
    timeout: Duration,
) -> Result<Exchanger, ExitCode> {
    Exchanger::new(addr, transport, timeout).map_err(|err| {
        fail(
            tool,
            EXIT_SETUP,
            &format!("could not set up a {transport} socket: {err}"),
        )
    })
}

/// Refuses (exit 2, with a sentence) a UDP `what` larger than a datagram
/// holds; anything goes over TCP.
pub fn check_udp_size(
    tool: &str,
    what: &str,
    transport: Transport,
    size: usize,
) -> Result<(), ExitCode> {
    if transport == Transport::Udp && size > MAX_UDP_PAYLOAD {
        return Err(fail(
            tool,
            EXIT_SETUP,
            &format!(
                "a UDP {what} holds at most {MAX_UDP_PAYLOAD} bytes, not {size}; choose a \
                 smaller --size"
            ),
        ));
    }
    Ok(())
}
