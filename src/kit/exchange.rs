//! One echo at a time: send a message, wait (bounded) for the same bytes
//! back, and say how long it took or what went wrong.
//!
//! This is the request/response half of the tools: `echod ping` probes
//! with it and the interactive client sends each line with it. It runs a
//! small mio loop of its own: one socket, one `Poll`, and a deadline as
//! the poll timeout. A TCP message is written and read at the same time,
//! so one larger than the socket buffers cannot deadlock against a server
//! that echoes as it reads.
//!
//! After a TCP exchange fails (timeout, wrong bytes, closed), the stream
//! may still carry the rest of that echo, which would be taken for the
//! next one; so the connection is dropped and the next exchange connects
//! anew. Over UDP, answers to earlier messages that arrive late are
//! recognised (the last few messages are remembered) and skipped.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::{TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token};

use super::payload::{Difference, first_difference};
use super::target::{self, ConnectError};
use echod_server::net::Transport;

const SOCKET: Token = Token(0);

/// How many earlier UDP messages are remembered to recognise their late
/// answers. A few cover retries and a probe or two that timed out.
const REMEMBERED: usize = 8;

pub use echod_server::net::{MAX_UDP_PAYLOAD, interrupted, would_block};

/// Why an exchange did not bring the message back.
#[derive(Debug)]
pub enum ExchangeError {
    /// The TCP connection could not be made.
    Connect(ConnectError),
    /// The full echo did not come back in time.
    Timeout {
        /// Bytes of the echo received before the deadline.
        received: usize,
    },
    /// The echo came back different (wrong bytes, or a datagram of
    /// another length).
    Differs(Difference),
    /// The server closed the TCP connection before echoing everything.
    Closed {
        /// Bytes of the echo received before the close.
        received: usize,
    },
    /// The server's host says nothing listens on that UDP port.
    Refused,
    /// Another socket error.
    Io(io::Error),
}

impl fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExchangeError::Connect(err) => err.fmt(f),
            ExchangeError::Timeout { received: 0 } => f.write_str("timeout, no echo"),
            ExchangeError::Timeout { received } => {
                write!(f, "timeout after {received} bytes of the echo")
            }
            ExchangeError::Differs(difference) => write!(f, "mismatch: {difference}"),
            ExchangeError::Closed { received } => {
                write!(
                    f,
                    "server closed the connection after {received} bytes of the echo"
                )
            }
            ExchangeError::Refused => f.write_str("port unreachable: nothing listens there"),
            ExchangeError::Io(err) => write!(f, "error: {err}"),
        }
    }
}

impl std::error::Error for ExchangeError {}

impl From<io::Error> for ExchangeError {
    fn from(err: io::Error) -> ExchangeError {
        if err.kind() == io::ErrorKind::ConnectionRefused {
            ExchangeError::Refused
        } else {
            ExchangeError::Io(err)
        }
    }
}

/// A server to exchange messages with, over TCP or UDP.
pub struct Exchanger {
    addr: SocketAddr,
    transport: Transport,
    /// Time allowed for a TCP connect.
    connect_timeout: Duration,
    poll: Poll,
    events: Events,
    link: Link,
    /// Where echoes are read.
    buf: Vec<u8>,
    /// Earlier UDP messages whose answers may still arrive.
    recent: VecDeque<Vec<u8>>,
    /// Late or duplicate UDP answers skipped so far.
    pub late: u64,
}

enum Link {
    /// No TCP connection: the next exchange connects.
    Disconnected,
    Tcp(TcpStream),
    Udp(UdpSocket),
}

impl Exchanger {
    /// Prepares exchanges with `addr`. For TCP nothing is connected yet;
    /// call [`Exchanger::connect`] or let the first exchange do it.
    pub fn new(
        addr: SocketAddr,
        transport: Transport,
        connect_timeout: Duration,
    ) -> io::Result<Exchanger> {
        let poll = Poll::new()?;
        let mut exchanger = Exchanger {
            addr,
            transport,
            connect_timeout,
            poll,
            events: Events::with_capacity(8),
            link: Link::Disconnected,
            buf: vec![0; 64 * 1024],
            recent: VecDeque::with_capacity(REMEMBERED),
            late: 0,
        };
        if transport == Transport::Udp {
            let mut socket = target::udp_socket(addr)?;
            exchanger.poll.registry().register(
                &mut socket,
                SOCKET,
                Interest::READABLE | Interest::WRITABLE,
            )?;
            exchanger.link = Link::Udp(socket);
        }
        Ok(exchanger)
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the time the next TCP connects may take (`ping -w` shortens
    /// it as its deadline nears).
    pub fn set_connect_timeout(&mut self, timeout: Duration) {
        self.connect_timeout = timeout;
    }

    /// Makes the TCP connection now, if there is none (nothing for UDP).
    pub fn connect(&mut self) -> Result<(), ExchangeError> {
        if let Link::Disconnected = self.link {
            let mut stream =
                target::connect(self.addr, self.connect_timeout).map_err(ExchangeError::Connect)?;
            self.poll.registry().register(
                &mut stream,
                SOCKET,
                Interest::READABLE | Interest::WRITABLE,
            )?;
            self.link = Link::Tcp(stream);
        }
        Ok(())
    }

    /// Sends `message` and waits up to `timeout` for its echo; returns the
    /// round-trip time (from just before sending to the last byte back).
    pub fn round_trip(
        &mut self,
        message: &[u8],
        timeout: Duration,
    ) -> Result<Duration, ExchangeError> {
        let result = match self.transport {
            Transport::Tcp => self
                .connect()
                .and_then(|()| self.tcp_round_trip(message, timeout)),
            Transport::Udp => self.udp_round_trip(message, timeout),
        };
        if result.is_err() && self.transport == Transport::Tcp {
            // The stream may still hold part of this echo: start afresh.
            self.link = Link::Disconnected;
        }
        result
    }

    /// Closes a TCP connection the polite way: shuts down the sending side
    /// and waits (bounded) for the server's close, checking that nothing
    /// more comes back. Returns how long it took.
    pub fn close(&mut self, timeout: Duration) -> Result<Duration, ExchangeError> {
        let start = Instant::now();
        let deadline = start + timeout;
        let Link::Tcp(stream) = &mut self.link else {
            return Ok(Duration::ZERO);
        };
        stream.shutdown(Shutdown::Write)?;
        let result = loop {
            match stream.read(&mut self.buf) {
                Ok(0) => break Ok(start.elapsed()),
                Ok(n) => {
                    break Err(ExchangeError::Differs(Difference::Length {
                        sent: 0,
                        received: n,
                    }));
                }
                Err(err) if would_block(&err) => {
                    if !wait(&mut self.poll, &mut self.events, deadline)? {
                        break Err(ExchangeError::Timeout { received: 0 });
                    }
                }
                Err(err) if interrupted(&err) => {}
                Err(err) => break Err(err.into()),
            }
        };
        self.link = Link::Disconnected;
        result
    }

    fn tcp_round_trip(
        &mut self,
        message: &[u8],
        timeout: Duration,
    ) -> Result<Duration, ExchangeError> {
        let Link::Tcp(stream) = &mut self.link else {
            unreachable!("connect() made the TCP link");
        };
        let start = Instant::now();
        let deadline = start + timeout;
        let (poll, events) = (&mut self.poll, &mut self.events);
        send_and_check(stream, message, &mut self.buf, || {
            wait(poll, events, deadline)
        })?;
        Ok(start.elapsed())
    }

    fn udp_round_trip(
        &mut self,
        message: &[u8],
        timeout: Duration,
    ) -> Result<Duration, ExchangeError> {
        let Link::Udp(socket) = &mut self.link else {
            unreachable!("a UDP exchanger has a socket from new()");
        };
        let start = Instant::now();
        let deadline = start + timeout;
        loop {
            match socket.send(message) {
                Ok(_) => break,
                Err(err) if interrupted(&err) => {}
                Err(err) if would_block(&err) => {
                    if !wait(&mut self.poll, &mut self.events, deadline)? {
                        return Err(ExchangeError::Timeout { received: 0 });
                    }
                }
                Err(err) => return Err(err.into()),
            }
        }
        let result = loop {
            match socket.recv(&mut self.buf) {
                Ok(n) if &self.buf[..n] == message => break Ok(start.elapsed()),
                Ok(n) if self.recent.iter().any(|m| m[..] == self.buf[..n]) => {
                    self.late += 1;
                }
                Ok(n) if n != message.len() => {
                    break Err(ExchangeError::Differs(Difference::Length {
                        sent: message.len(),
                        received: n,
                    }));
                }
                Ok(n) => {
                    break Err(ExchangeError::Differs(first_difference(
                        message,
                        &self.buf[..n],
                    )));
                }
                Err(err) if interrupted(&err) => {}
                Err(err) if would_block(&err) => {
                    if !wait(&mut self.poll, &mut self.events, deadline)? {
                        break Err(ExchangeError::Timeout { received: 0 });
                    }
                }
                Err(err) => break Err(err.into()),
            }
        };
        // Remember it (once), so a late answer is not taken for another.
        if !self.recent.iter().any(|m| m[..] == *message) {
            if self.recent.len() == REMEMBERED {
                self.recent.pop_front();
            }
            self.recent.push_back(message.to_vec());
        }
        result
    }
}

/// Writes `message` to `stream` and reads its echo at the same time,
/// comparing as it comes; `wait` is called when neither direction can make
/// progress, and returns false once the deadline has passed.
///
/// Interrupted is retried at once: a signal cut the call short, the socket
/// is as ready as it was, and no new edge will come to say so.
fn send_and_check<S: Read + Write>(
    stream: &mut S,
    message: &[u8],
    buf: &mut [u8],
    mut wait: impl FnMut() -> io::Result<bool>,
) -> Result<(), ExchangeError> {
    let (mut written, mut received) = (0, 0);
    while received < message.len() {
        let mut blocked = true;
        if written < message.len() {
            match stream.write(&message[written..]) {
                Ok(n) => {
                    written += n;
                    blocked = false;
                }
                Err(err) if interrupted(&err) => blocked = false,
                Err(err) if would_block(&err) => {}
                Err(err) => return Err(err.into()),
            }
        }
        // Read no further than this message: anything past it is not
        // ours to take, and shows up as a mismatch next time.
        let want = (message.len() - received).min(buf.len());
        match stream.read(&mut buf[..want]) {
            Ok(0) => return Err(ExchangeError::Closed { received }),
            Ok(n) => {
                let expected = &message[received..received + n];
                if *expected != buf[..n] {
                    let difference = first_difference(expected, &buf[..n]);
                    return Err(ExchangeError::Differs(difference.at(received)));
                }
                received += n;
                blocked = false;
            }
            Err(err) if interrupted(&err) => blocked = false,
            Err(err) if would_block(&err) => {}
            Err(err) => return Err(err.into()),
        }
        if blocked && !wait()? {
            return Err(ExchangeError::Timeout { received });
        }
    }
    Ok(())
}

/// Polls until an event or `deadline`; false when the deadline passed.
/// Callers retry their reads and writes after any event: with edge
/// triggering the event only says something changed.
fn wait(poll: &mut Poll, events: &mut Events, deadline: Instant) -> io::Result<bool> {
    let now = Instant::now();
    if now >= deadline {
        return Ok(false);
    }
    match poll.poll(events, Some(deadline - now)) {
        Ok(()) => Ok(true),
        // A signal (Ctrl-C) arrived: let the caller look at its flags.
        Err(err) if err.kind() == io::ErrorKind::Interrupted => Ok(true),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, UdpSocket as StdUdp};
    use std::thread;

    #[test]
    fn tcp_echo_round_trips_and_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            io::copy(&mut conn.try_clone().unwrap(), &mut conn).unwrap();
        });
        let mut ex = Exchanger::new(addr, Transport::Tcp, Duration::from_secs(5)).unwrap();
        let message = crate::kit::payload::message(0, 1, 200_000);
        ex.round_trip(&message, Duration::from_secs(10)).unwrap();
        ex.close(Duration::from_secs(10)).unwrap();
        server.join().unwrap();
    }

    #[test]
    fn udp_late_answers_are_skipped_and_changes_caught() {
        let server = StdUdp::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let mut ex = Exchanger::new(addr, Transport::Udp, Duration::from_secs(5)).unwrap();
        let script = thread::spawn(move || {
            let mut buf = [0; 64];
            // First message: answered twice (the second is "late").
            let (n, peer) = server.recv_from(&mut buf).unwrap();
            server.send_to(&buf[..n], peer).unwrap();
            server.send_to(&buf[..n], peer).unwrap();
            // Second: answered with one byte changed.
            let (n, peer) = server.recv_from(&mut buf).unwrap();
            buf[1] ^= 0xff;
            server.send_to(&buf[..n], peer).unwrap();
        });
        ex.round_trip(b"one", Duration::from_secs(10)).unwrap();
        let err = ex.round_trip(b"two", Duration::from_secs(10)).unwrap_err();
        assert!(
            matches!(
                err,
                ExchangeError::Differs(Difference::Corrupt { offset: 1, .. })
            ),
            "{err}"
        );
        assert_eq!(ex.late, 1);
        script.join().unwrap();
    }

    /// A stream that echoes what is written to it, after answering the
    /// first write and the first read with Interrupted.
    struct InterruptedOnce {
        echo: VecDeque<u8>,
        write_interrupted: bool,
        read_interrupted: bool,
    }

    impl Write for InterruptedOnce {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if !self.write_interrupted {
                self.write_interrupted = true;
                return Err(io::ErrorKind::Interrupted.into());
            }
            self.echo.extend(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Read for InterruptedOnce {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if !self.read_interrupted {
                self.read_interrupted = true;
                return Err(io::ErrorKind::Interrupted.into());
            }
            if self.echo.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.echo.read(buf)
        }
    }

    /// Interrupted is retried, not waited on: the socket's readiness did
    /// not change, so no edge would come and the echo would time out
    /// although it is there to be read.
    #[test]
    fn interrupted_calls_are_retried_not_waited_on() {
        let mut stream = InterruptedOnce {
            echo: VecDeque::new(),
            write_interrupted: false,
            read_interrupted: false,
        };
        let mut buf = [0; 64];
        let mut waits = 0;
        // Waiting is what the bug did: here no edge ever comes, as on a
        // socket that was ready all along.
        let result = send_and_check(&mut stream, b"hello", &mut buf, || {
            waits += 1;
            Ok(false)
        });
        assert!(result.is_ok(), "{:?}", result.err());
        assert_eq!(waits, 0);
    }
}
