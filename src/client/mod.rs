//! `echod client ADDR`: standard input to the server, its echo to standard
//! output, checked byte for byte.
//!
//! Three modes:
//!
//! - **TCP stream** (the default when stdin is not a terminal): stdin and
//!   the echo flow at the same time on a small mio loop ([`run_tcp`]). At
//!   stdin's end the client shuts down its sending side, as RFC 862 and the
//!   Protohackers smoke test expect, and it ends when the server closes.
//!   The bytes in flight are kept in an [`InFlight`] window, which both
//!   checks the echo and bounds memory: stdin is not read while the window
//!   is full, so a multi-gigabyte input needs no more than the window.
//! - **UDP** (`--udp`): stdin is cut into datagrams, each sent and awaited
//!   in turn, resent on timeout ([`run_udp`]).
//! - **Interactive** (stdin is a terminal, or `-i`): line by line with
//!   round-trip times, in [`interactive`].
//!
//! Stdin is read by a thread: it may be a regular file, which epoll cannot
//! watch, and making a shared stdin nonblocking would change it for every
//! other process using it (the shell, after we exit). The thread hands
//! chunks over a bounded channel and wakes the loop with a `mio::Waker`.

pub mod interactive;

use std::io::{self, IsTerminal, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::kit::duration::seconds;
use crate::kit::exchange::ExchangeError;
use crate::kit::target;
use crate::kit::tool::{self, EXIT_FAILED, EXIT_OK, EXIT_SETUP};
use crate::kit::verify::InFlight;
use echod_server::net::Readiness;
use echod_server::net::Transport;

/// What `echod client` is to do: its command line, validated (by `cli.rs`).
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The echo server.
    pub addr: SocketAddr,

    /// Send stdin as UDP datagrams instead of a TCP stream.
    pub udp: bool,

    /// Line mode: a prompt, each line sent and its echo shown with the
    /// round-trip time; Q, quit or Ctrl-D ends. The default when stdin is
    /// a terminal.
    pub interactive: bool,

    /// TCP: do not compare the echo with what was sent (counts are still
    /// checked). Datagrams and lines are always compared.
    pub no_verify: bool,

    /// UDP: the most bytes of stdin per datagram (at most 65,507). The
    /// default fits one Ethernet frame.
    pub size: u32,

    /// Time to connect, and the longest silence while an echo is awaited
    /// (2, 0.5, 250ms; 1 ms to an hour). UDP: time each datagram has to
    /// come back.
    pub timeout: Duration,

    /// UDP: how often a datagram is resent when its echo does not come
    /// back in time, before it counts as lost (0 to 100).
    pub retries: u32,

    /// TCP: the most bytes sent and not yet echoed; stdin waits while this
    /// many are in flight. It bounds the client's memory (1024 to
    /// 268435456, 256 MiB).
    pub window: u32,
}

/// Default bytes in flight over TCP: enough to keep a loopback or LAN
/// connection busy (its socket buffers hold a few MiB), small next to any
/// machine's memory.
pub const DEFAULT_WINDOW: u32 = 4 * 1024 * 1024;

/// Bytes stdin is read in, per chunk.
const CHUNK: usize = 64 * 1024;

/// Chunks that may wait between the stdin thread and the loop. With
/// [`CHUNK`] and the window this bounds the client's memory.
const QUEUED_CHUNKS: usize = 4;

/// Runs `echod client` and returns its exit status.
pub fn run(config: &ClientConfig) -> ExitCode {
    if config.interactive || io::stdin().is_terminal() {
        return interactive::run(config);
    }
    if config.udp {
        return run_udp(config);
    }
    match run_tcp(config) {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(failure) => failure.report(),
    }
}

/// Why a TCP run ended badly, with the exit status it earns.
#[derive(Debug)]
pub enum Failure {
    /// Could not start (no poll, unreadable stdin): exit 2.
    Setup(String),
    /// The echo went wrong or the server could not be reached: exit 1.
    Echo(String),
}

impl Failure {
    fn report(&self) -> ExitCode {
        match self {
            Failure::Setup(text) => tool::fail("client", EXIT_SETUP, text),
            Failure::Echo(text) => tool::fail("client", EXIT_FAILED, text),
        }
    }
}

/// One chunk of stdin on its way to the socket, and how much of it the
/// socket took so far.
struct Pending {
    data: Vec<u8>,
    written: usize,
}

impl Pending {
    fn rest(&self) -> &[u8] {
        &self.data[self.written..]
    }
}

/// What the stdin thread hands the loop.
enum Input {
    Data(Vec<u8>),
    End,
    Error(io::Error),
}

/// Where stdin is: still being read, or finished.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Reading,
    Ended,
}

const SOCKET: Token = Token(0);
const STDIN: Token = Token(1);

/// Reads stdin on a thread into a bounded channel; each message wakes the
/// loop. The thread ends at EOF, on an error, or when the loop is gone.
fn spawn_input(waker: Arc<Waker>) -> Receiver<Input> {
    let (tx, rx) = mpsc::sync_channel(QUEUED_CHUNKS);
    std::thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        loop {
            let mut chunk = vec![0; CHUNK];
            let message = match stdin.read(&mut chunk) {
                Ok(0) => Input::End,
                Ok(n) => {
                    chunk.truncate(n);
                    Input::Data(chunk)
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => Input::Error(err),
            };
            let last = !matches!(message, Input::Data(_));
            // A send fails only when the loop has finished: stop reading.
            if tx.send(message).is_err() || waker.wake().is_err() || last {
                return;
            }
        }
    });
    rx
}

/// The TCP stream mode: stdin to the server and the echo to stdout at the
/// same time, checked as it comes.
pub fn run_tcp(config: &ClientConfig) -> Result<(), Failure> {
    let setup = |err: io::Error| Failure::Setup(format!("could not set up the event loop: {err}"));
    let mut poll = Poll::new().map_err(setup)?;
    let waker = Arc::new(Waker::new(poll.registry(), STDIN).map_err(setup)?);
    let mut stream = target::connect(config.addr, config.timeout)
        .map_err(|err| Failure::Echo(err.to_string()))?;
    match stream.local_addr() {
        Ok(local) => log::debug!("connected to {} from {local}", config.addr),
        Err(_) => log::debug!("connected to {}", config.addr),
    }
    poll.registry()
        .register(&mut stream, SOCKET, Interest::READABLE | Interest::WRITABLE)
        .map_err(setup)?;
    // The loop keeps its own reference to the waker: if the thread's were
    // the last, its exit would close the eventfd, and closing a descriptor
    // drops its pending events from epoll, so the last wake-up (stdin's
    // end) could be lost.
    let input = spawn_input(Arc::clone(&waker));
    let mut session = Session {
        stream,
        verify: !config.no_verify,
        flight: InFlight::with_capacity(config.window as usize),
        pending: None,
        source: Source::Reading,
        write_shut: false,
        send_error: None,
        // Ready both ways until a call says otherwise: a call that cannot
        // proceed costs one WouldBlock, waiting for an event that already
        // came costs forever.
        ready: Readiness {
            readable: true,
            writable: true,
            ..Readiness::NONE
        },
        sent: 0,
        received: 0,
        last_echo: Instant::now(),
        buf: vec![0; CHUNK],
    };
    let mut events = Events::with_capacity(16);
    let mut out = io::stdout().lock();
    loop {
        let progress = session.take_input(&input)?
            | session.send()?
            | session.finish_sending()?
            | match session.receive(&mut out)? {
                Received::Some => true,
                Received::Nothing => false,
                Received::End => break,
            };
        if progress {
            continue; // readiness may be left: use it before polling
        }
        let timeout = session.awaiting_echo().then(|| {
            (session.last_echo + config.timeout).saturating_duration_since(Instant::now())
        });
        match poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(Failure::Echo(format!("the event loop failed: {err}"))),
        }
        for event in events.iter() {
            if event.token() == SOCKET {
                session.ready.add(Readiness::of(event));
            }
            // STDIN: the waker; the next turn takes the chunk.
        }
        if events.is_empty()
            && session.awaiting_echo()
            && session.last_echo.elapsed() >= config.timeout
        {
            return Err(session.silence(config));
        }
    }
    match out.flush() {
        Err(err) if err.kind() != io::ErrorKind::BrokenPipe => Err(stdout_failure(&err)),
        _ => Ok(()),
    }
}

/// The state of one TCP client run.
struct Session {
    stream: TcpStream,
    verify: bool,
    /// Bytes sent and not yet echoed (only kept when verifying).
    flight: InFlight,
    pending: Option<Pending>,
    source: Source,
    /// The sending side is shut down (stdin ended, all of it sent).
    write_shut: bool,
    /// Sending failed (the server reset or went away); the echo is read
    /// to its end before this is reported.
    send_error: Option<io::Error>,
    /// Remembered readiness: true until a call says WouldBlock.
    ready: Readiness,
    sent: u64,
    received: u64,
    last_echo: Instant,
    buf: Vec<u8>,
}

/// What one turn of reading found.
enum Received {
    Some,
    Nothing,
    End,
}

impl Session {
    /// True while the server owes us bytes or its close.
    fn awaiting_echo(&self) -> bool {
        self.received < self.sent || self.write_shut
    }

    /// Takes the next chunk of stdin when the last one is sent.
    fn take_input(&mut self, input: &Receiver<Input>) -> Result<bool, Failure> {
        if self.pending.is_some() || self.source == Source::Ended {
            return Ok(false);
        }
        match input.try_recv() {
            Ok(Input::Data(data)) => {
                self.pending = Some(Pending { data, written: 0 });
                Ok(true)
            }
            Ok(Input::End) | Err(TryRecvError::Disconnected) => {
                self.source = Source::Ended;
                Ok(true)
            }
            Ok(Input::Error(err)) => Err(Failure::Setup(format!(
                "could not read standard input: {err}; {} bytes of it were sent",
                self.sent
            ))),
            Err(TryRecvError::Empty) => Ok(false),
        }
    }

    /// Writes the pending chunk, as far as the socket and the window allow.
    fn send(&mut self) -> Result<bool, Failure> {
        let mut progress = false;
        while self.ready.writable && self.send_error.is_none() {
            let Some(pending) = &mut self.pending else {
                break;
            };
            let room = if self.verify {
                self.flight.room()
            } else {
                usize::MAX
            };
            let rest = pending.rest();
            let chunk = &rest[..rest.len().min(room)];
            if chunk.is_empty() {
                break; // window full: wait for echoes
            }
            match self.stream.write(chunk) {
                Ok(n) => {
                    if self.verify {
                        self.flight.sent_bytes(&chunk[..n]);
                    }
                    pending.written += n;
                    self.sent += n as u64;
                    log::trace!("sent {n} bytes ({} in all)", self.sent);
                    if pending.rest().is_empty() {
                        self.pending = None;
                    }
                    progress = true;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => self.ready.writable = false,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    // Read what the server still echoed before saying
                    // anything: the offset where the echo stops is what
                    // the user needs (see `receive`).
                    self.send_error = Some(err);
                    return Ok(true);
                }
            }
        }
        Ok(progress)
    }

    /// At stdin's end, once everything is sent, shuts down the sending
    /// side: the server reads EOF, echoes what is left and closes.
    fn finish_sending(&mut self) -> Result<bool, Failure> {
        if self.write_shut
            || self.source != Source::Ended
            || self.pending.is_some()
            || self.send_error.is_some()
        {
            return Ok(false);
        }
        self.stream
            .shutdown(Shutdown::Write)
            .map_err(|err| self.broken("finishing", &err))?;
        self.write_shut = true;
        self.last_echo = Instant::now(); // the server's close is awaited from now
        log::debug!(
            "standard input ended after {} bytes, all sent: sending side shut down, \
             awaiting the rest of the echo ({} bytes) and the server's close",
            self.sent,
            self.sent - self.received
        );
        Ok(true)
    }

    /// Reads the echo, checks it and copies it to `out`.
    fn receive(&mut self, out: &mut impl Write) -> Result<Received, Failure> {
        // A bounded burst, so sending gets its turn while a fast server
        // keeps the socket readable.
        const READS_PER_TURN: usize = 16;
        let mut progress = Received::Nothing;
        for _ in 0..READS_PER_TURN {
            // After a failed send the socket is dead: read on regardless
            // of readiness, to the end of what the server echoed.
            if !self.ready.readable && self.send_error.is_none() {
                break;
            }
            let n = match self.stream.read(&mut self.buf) {
                Ok(0) => return self.on_close().map(|()| Received::End),
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    if let Some(err) = self.send_error.take() {
                        return Err(self.broken("sending", &err));
                    }
                    self.ready.readable = false;
                    break;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    let doing = if self.send_error.is_some() {
                        "sending"
                    } else {
                        "receiving"
                    };
                    return Err(self.broken(doing, &err));
                }
            };
            let echo = &self.buf[..n];
            if self.verify {
                let before = self.flight.echoed();
                if let Err(err) = self.flight.check(echo) {
                    // Show the good bytes before the bad one, then stop.
                    let good = (self.flight.echoed() - before) as usize;
                    let _ = out.write_all(&echo[..good]).and_then(|()| out.flush());
                    return Err(Failure::Echo(err.to_string()));
                }
            } else if self.received + n as u64 > self.sent {
                return Err(Failure::Echo(format!(
                    "the server sent {} byte(s) more than it was sent, starting at byte \
                     offset {}",
                    self.received + n as u64 - self.sent,
                    self.sent
                )));
            }
            self.received += n as u64;
            self.last_echo = Instant::now();
            log::trace!("received {n} bytes of echo ({} in all)", self.received);
            match out.write_all(echo) {
                Ok(()) => {}
                // A closed stdout (`| head`): nobody wants the rest.
                Err(err) if err.kind() == io::ErrorKind::BrokenPipe => return Ok(Received::End),
                Err(err) => return Err(stdout_failure(&err)),
            }
            progress = Received::Some;
        }
        Ok(progress)
    }

    /// The server closed its side: fine if everything came back and
    /// everything was sent, else the echo is truncated.
    fn on_close(&self) -> Result<(), Failure> {
        log::debug!(
            "the server closed its side after echoing {} of the {} bytes sent",
            self.received,
            self.sent
        );
        if self.verify
            && let Some(err) = self.flight.at_end()
        {
            return Err(Failure::Echo(err.to_string()));
        }
        if self.received < self.sent {
            return Err(Failure::Echo(format!(
                "the echo is truncated at byte offset {}: the server closed the connection \
                 after echoing {} of the {} bytes sent",
                self.received, self.received, self.sent
            )));
        }
        if !self.write_shut {
            return Err(Failure::Echo(format!(
                "the server closed the connection after {} bytes, before the end of the \
                 input was sent",
                self.sent
            )));
        }
        Ok(())
    }

    /// The server said nothing for `--timeout` while it owed bytes or its
    /// close: which of the two it owed says what is wrong.
    fn silence(&self, config: &ClientConfig) -> Failure {
        let waited = seconds(config.timeout);
        if self.write_shut && self.received == self.sent {
            // Everything came back; only the close is missing. RFC 862's
            // TCP service ends when the client's half does (and `check`
            // calls this the same way): a server that keeps its side open
            // makes `nc -N` and scripts wait for ever.
            return Failure::Echo(format!(
                "all {} bytes came back, but the server did not close its side within \
                 {waited} after the client shut down its own: it ignores half-close, so \
                 clients that wait for the end of the echo wait for ever (the echo on \
                 stdout is complete; `echod check --only half-close` tells more)",
                self.sent
            ));
        }
        Failure::Echo(format!(
            "no echo from {} for {waited} with {} bytes sent and not yet echoed; the server \
             may be stuck or overloaded (allow longer with --timeout)",
            config.addr,
            self.sent - self.received
        ))
    }

    fn broken(&self, doing: &str, err: &io::Error) -> Failure {
        let what = match err.kind() {
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
                "the server reset the connection".to_string()
            }
            _ => format!("the connection failed ({err})"),
        };
        Failure::Echo(format!(
            "{what} while {doing}, after {} bytes sent and {} echoed",
            self.sent, self.received
        ))
    }
}

/// Writing the echo failed for a reason other than a closed stdout.
fn stdout_failure(err: &io::Error) -> Failure {
    Failure::Setup(format!(
        "could not write the echo to standard output: {err}"
    ))
}

/// The UDP mode: stdin cut into datagrams of exactly `--size` bytes (the
/// last one shorter), each sent and its echo awaited in turn, resent up to
/// `--retries` times.
///
/// A datagram is filled from as many reads as it takes, not one read each
/// as nc does: reads follow the pipe and stdin's 8 KiB buffer, so their
/// sizes would shape the datagrams (1472 × 5 and 832 with the default
/// size), and a loss report could not name a predictable byte range.
pub fn run_udp(config: &ClientConfig) -> ExitCode {
    let mut exchanger = match tool::exchanger("client", config.addr, Transport::Udp, config.timeout)
    {
        Ok(ex) => ex,
        Err(status) => return status,
    };
    let mut stdin = io::stdin().lock();
    let mut out = io::stdout().lock();
    let mut datagram = vec![0; config.size as usize];
    let (mut count, mut offset, mut lost, mut wrong, mut resent) = (0u64, 0u64, 0u64, 0u64, 0u64);
    loop {
        let n = match fill(&mut stdin, &mut datagram) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) => {
                return tool::fail(
                    "client",
                    EXIT_SETUP,
                    &format!("could not read standard input: {err}"),
                );
            }
        };
        count += 1;
        let message = &datagram[..n];
        let range = format!("bytes {offset}..{} of the input", offset + n as u64);
        log::trace!("datagram {count} ({range}): {n} bytes sent");
        let mut tries = 0;
        let outcome = loop {
            tries += 1;
            match exchanger.round_trip(message, config.timeout) {
                Err(ExchangeError::Timeout { .. }) if tries <= config.retries => {
                    resent += 1;
                    log::debug!(
                        "datagram {count} ({range}): no echo within {}, sending it again",
                        seconds(config.timeout)
                    );
                }
                other => break other,
            }
        };
        match outcome {
            Ok(rtt) => match out.write_all(message) {
                Ok(()) => log::trace!(
                    "datagram {count} echoed intact in {:.3} ms",
                    rtt.as_secs_f64() * 1000.0
                ),
                Err(err) if err.kind() == io::ErrorKind::BrokenPipe => {
                    return ExitCode::from(EXIT_OK);
                }
                Err(err) => return stdout_failure(&err).report(),
            },
            Err(ExchangeError::Timeout { .. }) => {
                lost += 1;
                let sent = match tries {
                    1 => "sent once".to_string(),
                    n => format!("sent {n} times"),
                };
                eprintln!(
                    "echod client: datagram {count} ({range}) was lost: no echo within {}, \
                     {sent}",
                    seconds(config.timeout)
                );
            }
            Err(ExchangeError::Refused) => {
                return tool::fail("client", EXIT_FAILED, &target::udp_refused(config.addr));
            }
            Err(err) => {
                wrong += 1;
                eprintln!("echod client: datagram {count} ({range}) came back wrong: {err}");
            }
        }
        offset += n as u64;
    }
    let _ = out.flush();
    if resent > 0 {
        eprintln!("echod client: {resent} datagram(s) were resent after a timeout");
    }
    if lost + wrong > 0 {
        return tool::fail(
            "client",
            EXIT_FAILED,
            &format!(
                "{lost} of {count} datagrams were lost and {wrong} came back wrong; their \
                 bytes are missing from the output"
            ),
        );
    }
    ExitCode::from(EXIT_OK)
}

/// Reads into `buf` until it is full or the input ends; returns how many
/// bytes it holds (0 at the end of the input). Unlike `read_exact`, a
/// short last piece is kept, not an error.
fn fill(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out at most `step` bytes per read, as a pipe
    /// or a buffered stdin does.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn datagrams_are_filled_across_reads_and_the_last_is_shorter() {
        let data: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
        let mut input = Trickle {
            data: &data,
            step: 300,
        };
        let mut buf = vec![0; 1000];
        let mut sizes = Vec::new();
        let mut joined = Vec::new();
        loop {
            let n = fill(&mut input, &mut buf).unwrap();
            if n == 0 {
                break;
            }
            sizes.push(n);
            joined.extend_from_slice(&buf[..n]);
        }
        assert_eq!(sizes, [1000, 1000, 500]);
        assert_eq!(joined, data);
    }
}
