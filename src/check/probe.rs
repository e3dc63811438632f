//! The probe's blocking I/O, on the tools' kit ([`crate::kit`]): sending and
//! receiving where every call is bounded by a [`Deadline`], verified as it
//! arrives, and the record of what came back ([`Received`]) with the first
//! wrong offset.
//!
//! A probe is a client, so it uses plain blocking `std::net` sockets with
//! timeouts: each read and write is given the time left before the check's
//! deadline, and gives up when it is spent. Sending and receiving at the
//! same time (needed as soon as a payload is larger than the socket
//! buffers, or the two sides deadlock) uses one scoped thread for the
//! writer, see [`exchange`].

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::kit::deadline::{Deadline, MIN_WAIT};
use crate::kit::payload::Payload;
use crate::kit::verify::{Mismatch, Verifier};

/// How much is written or read per system call.
pub const CHUNK: usize = 64 * 1024;

/// True for the errors a socket timeout produces (Linux says EAGAIN, which
/// std reports as WouldBlock; other systems say TimedOut).
pub fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// True for the errors that mean the peer reset the connection.
pub fn is_reset(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// Makes the next close of `stream` send a reset (RST) instead of a FIN,
/// as a crashed or impatient client does: `SO_LINGER` with a zero timeout.
pub fn reset_on_close(stream: &TcpStream) -> io::Result<()> {
    socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO))
}

/// How sending ended.
#[derive(Debug)]
pub enum SendEnd {
    /// Everything was sent.
    Done,
    /// The server stopped taking bytes: no write made progress for the
    /// stall time (see [`send`]).
    Stalled,
    /// The deadline passed first.
    TimedOut,
    /// A write failed (reset, broken pipe, …).
    Failed(io::Error),
}

/// What [`send`] achieved.
#[derive(Debug)]
pub struct Sent {
    /// Bytes the kernel took from us.
    pub bytes: u64,
    /// Why sending stopped.
    pub end: SendEnd,
}

/// Writes `payload` to `stream` until it is all sent, the deadline passes,
/// a write fails, or — when `stall` is given — no write makes progress for
/// that long (the server stopped reading and every buffer between is full).
pub fn send(
    mut stream: &TcpStream,
    payload: Payload<'_>,
    deadline: Deadline,
    stall: Option<Duration>,
) -> Sent {
    let mut source = payload.reader();
    let mut buf = vec![0; CHUNK];
    let mut bytes = 0;
    loop {
        // Reading from a payload cannot fail.
        let n = source.read(&mut buf).unwrap_or(0);
        if n == 0 {
            return Sent {
                bytes,
                end: SendEnd::Done,
            };
        }
        let mut chunk = &buf[..n];
        while !chunk.is_empty() {
            let Some(mut wait) = deadline.socket_timeout() else {
                return Sent {
                    bytes,
                    end: SendEnd::TimedOut,
                };
            };
            if let Some(stall) = stall {
                wait = wait.min(stall.max(MIN_WAIT));
            }
            if let Err(err) = stream.set_write_timeout(Some(wait)) {
                return Sent {
                    bytes,
                    end: SendEnd::Failed(err),
                };
            }
            match stream.write(chunk) {
                Ok(0) => {
                    return Sent {
                        bytes,
                        end: SendEnd::Failed(io::ErrorKind::WriteZero.into()),
                    };
                }
                Ok(k) => {
                    bytes += k as u64;
                    chunk = &chunk[k..];
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if is_timeout(&err) => {
                    let end = if stall.is_some() && !deadline.passed() {
                        SendEnd::Stalled
                    } else {
                        SendEnd::TimedOut
                    };
                    return Sent { bytes, end };
                }
                Err(err) => {
                    return Sent {
                        bytes,
                        end: SendEnd::Failed(err),
                    };
                }
            }
        }
    }
}

/// How receiving ended.
#[derive(Debug)]
pub enum RecvEnd {
    /// The bytes asked for arrived (EOF was not waited for).
    Complete,
    /// The server closed its side (FIN).
    Eof,
    /// The server reset the connection.
    Reset,
    /// The deadline passed first.
    TimedOut,
    /// Another error.
    Failed(io::Error),
}

/// What came back on one connection.
#[derive(Debug)]
pub struct Received {
    /// Bytes received.
    pub bytes: u64,
    /// Of those, bytes beyond the end of what was sent.
    pub extra: u64,
    /// The first byte that differs from what was sent, if any.
    pub mismatch: Option<Mismatch>,
    /// The last byte received, if any: a shortfall right after a newline
    /// points at line buffering.
    pub last: Option<u8>,
    /// When the first byte arrived.
    pub first_at: Option<Instant>,
    /// When receiving ended.
    pub ended_at: Instant,
    /// Why receiving ended.
    pub end: RecvEnd,
}

impl Received {
    /// The record of everything `verifier` received, now that receiving
    /// ended.
    pub fn new(verifier: &Verifier<'_>, end: RecvEnd, first_at: Option<Instant>) -> Received {
        Received {
            bytes: verifier.received(),
            extra: verifier.extra(),
            mismatch: verifier.mismatch(),
            last: verifier.last(),
            first_at,
            ended_at: Instant::now(),
            end,
        }
    }

    /// True when every byte came back exactly and nothing more.
    pub fn exact(&self, sent: u64) -> bool {
        self.bytes == sent && self.extra == 0 && self.mismatch.is_none()
    }
}

/// How long [`receive`] reads.
#[derive(Clone, Copy, Debug)]
pub enum Until {
    /// Until the verifier has this many bytes (no more are read, so the
    /// stream can be used again).
    Count(u64),
    /// Until the server closes its side (or resets, or time runs out).
    Eof,
}

/// Reads from `stream`, comparing with `verifier`, until `until` is met,
/// the connection ends, or `deadline` passes.
pub fn receive(
    mut stream: &TcpStream,
    verifier: &mut Verifier<'_>,
    until: Until,
    deadline: Deadline,
) -> Received {
    let mut buf = vec![0; CHUNK];
    let mut first_at = None;
    let end = loop {
        let want = match until {
            Until::Count(n) => {
                let left = n.saturating_sub(verifier.received());
                if left == 0 {
                    break RecvEnd::Complete;
                }
                usize::try_from(left).unwrap_or(CHUNK).min(CHUNK)
            }
            Until::Eof => CHUNK,
        };
        let Some(wait) = deadline.socket_timeout() else {
            break RecvEnd::TimedOut;
        };
        if let Err(err) = stream.set_read_timeout(Some(wait)) {
            break RecvEnd::Failed(err);
        }
        match stream.read(&mut buf[..want]) {
            Ok(0) => break RecvEnd::Eof,
            Ok(n) => {
                first_at.get_or_insert_with(Instant::now);
                verifier.push(&buf[..n]);
            }
            Err(err) => {
                if let Some(end) = classify_read_error(err) {
                    break end;
                }
            }
        }
    };
    Received::new(verifier, end, first_at)
}

/// Takes what has already arrived on `stream`, up to `count` bytes in all
/// for `verifier`, without waiting: for when a deadline has passed but
/// echoes that came in the meantime should still count.
pub fn receive_ready(stream: &TcpStream, verifier: &mut Verifier<'_>, count: u64) -> Received {
    let mut buf = vec![0; CHUNK];
    let end = match stream.set_nonblocking(true) {
        Err(err) => RecvEnd::Failed(err),
        Ok(()) => loop {
            let left = count.saturating_sub(verifier.received());
            if left == 0 {
                break RecvEnd::Complete;
            }
            let want = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
            match (&*stream).read(&mut buf[..want]) {
                Ok(0) => break RecvEnd::Eof,
                Ok(n) => verifier.push(&buf[..n]),
                Err(err) => {
                    if let Some(end) = classify_read_error(err) {
                        break end;
                    }
                }
            }
        },
    };
    // Back to blocking for whoever uses the stream next; if that fails,
    // their reads fail with a clear error of their own.
    let _ = stream.set_nonblocking(false);
    Received::new(verifier, end, None)
}

/// How a read error ends receiving; `None` for Interrupted (read again).
pub fn classify_read_error(err: io::Error) -> Option<RecvEnd> {
    if err.kind() == io::ErrorKind::Interrupted {
        None
    } else if is_timeout(&err) {
        Some(RecvEnd::TimedOut)
    } else if is_reset(&err) {
        Some(RecvEnd::Reset)
    } else {
        Some(RecvEnd::Failed(err))
    }
}

/// Sends `payload` and receives its echo at the same time: a scoped thread
/// writes (then shuts down the write side if `half_close`) while this one
/// reads. When reading ends before the writer is done, the socket is shut
/// down so the writer stops at once instead of at the deadline; otherwise
/// the stream can still be used.
pub fn exchange(
    stream: &TcpStream,
    payload: Payload<'_>,
    half_close: bool,
    until: Until,
    deadline: Deadline,
) -> (Sent, Received) {
    let writer_done = AtomicBool::new(false);
    thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let mut sent = send(stream, payload, deadline, None);
            if half_close && matches!(sent.end, SendEnd::Done) {
                if let Err(err) = stream.shutdown(Shutdown::Write) {
                    sent.end = SendEnd::Failed(err);
                }
            }
            writer_done.store(true, Ordering::SeqCst);
            sent
        });
        let mut verifier = Verifier::new(payload);
        let received = receive(stream, &mut verifier, until, deadline);
        let finished = match received.end {
            RecvEnd::Complete | RecvEnd::Eof => received.bytes >= payload.len(),
            _ => false,
        };
        if !finished && !writer_done.load(Ordering::SeqCst) {
            // Reading is over but the writer may be stuck on a full socket:
            // shutting the socket down makes its write fail at once. The
            // exchange is over either way, so an error here changes nothing.
            let _ = stream.shutdown(Shutdown::Both);
        }
        let sent = writer.join().unwrap_or_else(|_| Sent {
            bytes: 0,
            end: SendEnd::Failed(io::Error::other("the sending thread failed")),
        });
        (sent, received)
    })
}

/// Sends `line` and receives its echo (without waiting for EOF, so the
/// stream stays usable): the round trip most checks start or end with.
pub fn echo_line(stream: &TcpStream, line: &[u8], deadline: Deadline) -> Received {
    let len = line.len() as u64;
    exchange(
        stream,
        Payload::Bytes(line),
        false,
        Until::Count(len),
        deadline,
    )
    .1
}

/// Receives one datagram into `buf`, waiting until `deadline`: `Ok(None)`
/// when none came. Once the deadline has passed it still takes a datagram
/// that is already there, without waiting.
pub fn recv_datagram(
    socket: &UdpSocket,
    buf: &mut [u8],
    deadline: Deadline,
) -> io::Result<Option<(usize, SocketAddr)>> {
    loop {
        let Some(wait) = deadline.socket_timeout() else {
            socket.set_nonblocking(true)?;
            let got = socket.recv_from(buf);
            socket.set_nonblocking(false)?;
            return match got {
                Ok(got) => Ok(Some(got)),
                Err(err) if is_timeout(&err) || err.kind() == io::ErrorKind::Interrupted => {
                    Ok(None)
                }
                Err(err) => Err(err),
            };
        };
        socket.set_read_timeout(Some(wait))?;
        match socket.recv_from(buf) {
            Ok(got) => return Ok(Some(got)),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) if is_timeout(&err) => return Ok(None),
            Err(err) => return Err(err),
        }
    }
}
