//! The probe's toolkit: blocking sockets where every call is bounded by a
//! [`Deadline`], payloads that can be regenerated to verify an echo without
//! keeping a copy, and the record of what came back ([`Received`]) with the
//! first wrong offset.
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

/// How much is written or read per system call.
pub const CHUNK: usize = 64 * 1024;

/// The shortest timeout given to a socket: std refuses a zero timeout, and
/// a millisecond is enough to collect what has already arrived.
const MIN_WAIT: Duration = Duration::from_millis(1);

/// The moment by which something must be done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(Instant);

impl Deadline {
    /// `wait` from now.
    pub fn after(wait: Duration) -> Deadline {
        Deadline(Instant::now() + wait)
    }

    /// The time left, zero once passed.
    pub fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// True once the moment has come.
    pub fn passed(self) -> bool {
        Instant::now() >= self.0
    }

    /// The earlier of the two.
    pub fn min(self, other: Deadline) -> Deadline {
        std::cmp::min(self, other)
    }

    /// The moment itself.
    pub fn instant(self) -> Instant {
        self.0
    }

    /// A socket timeout for a call that must end by this deadline: `None`
    /// when it has passed (the caller should not make the call).
    fn socket_timeout(self) -> Option<Duration> {
        let left = self.remaining();
        (!left.is_zero()).then(|| left.max(MIN_WAIT))
    }
}

/// The error a call makes when its deadline passed before it could start.
fn out_of_time() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the time for this step ran out")
}

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

/// Opens a TCP connection, giving up at `deadline`, with `TCP_NODELAY` set
/// so that small probes are sent at once rather than coalesced.
pub fn connect(addr: SocketAddr, deadline: Deadline) -> io::Result<TcpStream> {
    let wait = deadline.socket_timeout().ok_or_else(out_of_time)?;
    let stream = TcpStream::connect_timeout(&addr, wait)?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Makes the next close of `stream` send a reset (RST) instead of a FIN,
/// as a crashed or impatient client does: `SO_LINGER` with a zero timeout.
pub fn reset_on_close(stream: &TcpStream) -> io::Result<()> {
    socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO))
}

/// What a check sends. Random payloads are generated on the fly from a seed
/// (and regenerated to verify the echo), so tens of MiB cost no memory.
#[derive(Clone, Copy, Debug)]
pub enum Payload<'a> {
    /// These bytes.
    Bytes(&'a [u8]),
    /// `len` pseudo-random bytes from `seed`, none of them a newline: a
    /// server that waits for a newline gets none.
    Random {
        /// Chooses the sequence; different clients use different seeds.
        seed: u64,
        /// How many bytes.
        len: u64,
    },
}

impl<'a> Payload<'a> {
    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Payload::Bytes(bytes) => bytes.len() as u64,
            Payload::Random { len, .. } => *len,
        }
    }

    /// True for an empty payload.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its bytes from the start, as a reader.
    pub fn reader(&self) -> PayloadReader<'a> {
        match *self {
            Payload::Bytes(bytes) => PayloadReader::Bytes(bytes),
            Payload::Random { seed, len } => PayloadReader::Random { seed, at: 0, len },
        }
    }

    /// The payload as a vector (for small payloads and tests).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut all = Vec::new();
        // Reading from a payload cannot fail.
        let _ = self.reader().read_to_end(&mut all);
        all
    }
}

/// The bytes of a [`Payload`], in order.
#[derive(Debug)]
pub enum PayloadReader<'a> {
    /// What is left of a byte slice.
    Bytes(&'a [u8]),
    /// Pseudo-random bytes: each 8-byte word is a hash of the seed and its
    /// index, so any part can be made without the ones before it, a word
    /// at a time.
    Random {
        /// Chooses the sequence.
        seed: u64,
        /// Offset of the next byte.
        at: u64,
        /// Length of the whole payload.
        len: u64,
    },
}

/// SplitMix64's finaliser: a well-mixed 64-bit hash of `x`.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl Read for PayloadReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            PayloadReader::Bytes(bytes) => bytes.read(buf),
            PayloadReader::Random { seed, at, len } => {
                let left = usize::try_from(*len - *at).unwrap_or(usize::MAX);
                let n = buf.len().min(left);
                let mut filled = 0;
                while filled < n {
                    let pos = *at + filled as u64;
                    let word = mix(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (pos / 8));
                    let from = (pos % 8) as usize;
                    let take = (8 - from).min(n - filled);
                    buf[filled..filled + take]
                        .copy_from_slice(&word.to_le_bytes()[from..from + take]);
                    filled += take;
                }
                for byte in &mut buf[..n] {
                    if *byte == b'\n' {
                        *byte = b'.';
                    }
                }
                *at += n as u64;
                Ok(n)
            }
        }
    }
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

/// The first byte that came back different from what was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// Its offset from the start of the payload.
    pub offset: u64,
    /// What was sent there.
    pub sent: u8,
    /// What came back.
    pub got: u8,
}

/// Compares what comes back, piece by piece, with what was sent.
#[derive(Debug)]
pub struct Verifier<'a> {
    expected: PayloadReader<'a>,
    /// Bytes compared so far (those beyond the payload are `extra`).
    matched_len: u64,
    /// Bytes that came back beyond the end of the payload.
    extra: u64,
    mismatch: Option<Mismatch>,
    last: Option<u8>,
    scratch: Vec<u8>,
}

impl<'a> Verifier<'a> {
    /// A verifier expecting `payload`.
    pub fn new(payload: Payload<'a>) -> Verifier<'a> {
        Verifier {
            expected: payload.reader(),
            matched_len: 0,
            extra: 0,
            mismatch: None,
            last: None,
            scratch: Vec::new(),
        }
    }

    /// Takes the next bytes that came back.
    pub fn push(&mut self, got: &[u8]) {
        if got.is_empty() {
            return;
        }
        self.last = got.last().copied();
        self.scratch.resize(got.len(), 0);
        let mut filled = 0;
        while filled < got.len() {
            // Reading from a payload cannot fail.
            match self.expected.read(&mut self.scratch[filled..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => filled += n,
            }
        }
        // Slices compare at memcmp speed; the byte is searched only once
        // they differ.
        if self.mismatch.is_none()
            && got[..filled] != self.scratch[..filled]
            && let Some(i) = (0..filled).find(|&i| got[i] != self.scratch[i])
        {
            self.mismatch = Some(Mismatch {
                offset: self.matched_len + i as u64,
                sent: self.scratch[i],
                got: got[i],
            });
        }
        self.matched_len += filled as u64;
        self.extra += (got.len() - filled) as u64;
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.matched_len + self.extra
    }

    /// The record of everything received, now that receiving ended.
    pub fn finish(&self, end: RecvEnd, first_at: Option<Instant>) -> Received {
        Received {
            bytes: self.received(),
            extra: self.extra,
            mismatch: self.mismatch,
            last: self.last,
            first_at,
            ended_at: Instant::now(),
            end,
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
    verifier.finish(end, first_at)
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
    verifier.finish(end, None)
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

/// A UDP socket on an ephemeral port of `target`'s family; connected to
/// `target` when `connected`, so that the kernel reports "port unreachable"
/// as ECONNREFUSED and drops datagrams from anyone else.
pub fn udp_socket(target: SocketAddr, connected: bool) -> io::Result<UdpSocket> {
    let local: SocketAddr = if target.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local)?;
    if connected {
        socket.connect(target)?;
    }
    Ok(socket)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_payloads_read_the_same_in_any_pieces() {
        let payload = Payload::Random { seed: 9, len: 1001 };
        let whole = payload.to_vec();
        let mut reader = payload.reader();
        let mut pieces = Vec::new();
        for size in [1, 3, 8, 13, 64, 1000].iter().cycle().take(100) {
            let mut buf = vec![0; *size];
            let n = reader.read(&mut buf).unwrap();
            pieces.extend_from_slice(&buf[..n]);
        }
        assert_eq!(pieces, whole);
    }

    #[test]
    fn random_payloads_repeat_and_have_no_newline() {
        let payload = Payload::Random {
            seed: 7,
            len: 100_000,
        };
        let a = payload.to_vec();
        assert_eq!(a.len(), 100_000);
        assert_eq!(a, payload.to_vec());
        assert!(!a.contains(&b'\n'));
        let other = Payload::Random {
            seed: 8,
            len: 100_000,
        }
        .to_vec();
        assert_ne!(a, other);
    }

    #[test]
    fn verifier_finds_the_first_wrong_offset_across_pieces() {
        let sent = Payload::Random { seed: 1, len: 1000 };
        let mut back = sent.to_vec();
        back[700] ^= 0xff;
        back[900] ^= 0xff;
        let mut verifier = Verifier::new(sent);
        for piece in back.chunks(333) {
            verifier.push(piece);
        }
        let mismatch = verifier.mismatch.unwrap();
        assert_eq!(mismatch.offset, 700);
        assert_eq!(mismatch.got, mismatch.sent ^ 0xff);
        assert_eq!(verifier.received(), 1000);
        assert_eq!(verifier.extra, 0);
    }

    #[test]
    fn verifier_counts_bytes_beyond_the_payload() {
        let mut verifier = Verifier::new(Payload::Bytes(b"abc"));
        verifier.push(b"ab");
        verifier.push(b"cde");
        assert_eq!(verifier.mismatch, None);
        assert_eq!(verifier.received(), 5);
        assert_eq!(verifier.extra, 2);
        assert_eq!(verifier.last, Some(b'e'));
    }

    #[test]
    fn a_passed_deadline_gives_no_socket_timeout() {
        let past = Deadline::after(Duration::ZERO);
        assert_eq!(past.socket_timeout(), None);
        assert!(past.passed());
        let later = Deadline::after(Duration::from_secs(60));
        assert!(later.socket_timeout().unwrap() > Duration::from_secs(59));
        assert_eq!(past.min(later), past);
    }
}
