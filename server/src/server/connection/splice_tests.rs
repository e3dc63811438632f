//! The pipe path over a real socket pair and real pipes (Linux): the
//! kernel's own `splice`, with the test as the peer deciding when to read,
//! so the moments that matter (EOF with bytes in the pipe, a pool with no
//! pipe left) happen on cue rather than by timing.

use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use socket2::SockRef;

use super::super::MAX_PIPES;
use super::test_readiness::{BOTH, WRITABLE};
use super::*;

/// The server's end of a socket pair (or, where the test needs what only
/// TCP has, of a TCP connection), nonblocking.
struct Pair<S = UnixStream>(S);

impl<S: Read> Read for Pair<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<S: Write> Write for Pair<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<S: Read + Write + AsFd> Stream for Pair<S> {
    fn shutdown_write(&self) -> io::Result<()> {
        SockRef::from(&self.0).shutdown(Shutdown::Write)
    }
    fn reset_on_close(&self) -> io::Result<()> {
        SockRef::from(&self.0).set_linger(Some(std::time::Duration::ZERO))
    }
    fn splice_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.0.as_fd())
    }
}

/// A connection over one end of a socket pair, and the peer's end.
fn pair() -> (Connection<Pair>, UnixStream) {
    let (ours, peer) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    peer.set_nonblocking(true).unwrap();
    (Connection::new(Pair(ours)), peer)
}

/// Everything the peer can read now, without blocking.
fn take_all(peer: &mut impl Read) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0; 1 << 16];
    loop {
        match peer.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return out,
            Err(err) => panic!("peer read: {err}"),
        }
    }
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A connection whose socket takes at most about `capacity` bytes before
/// a send is short, with `payload` and the peer's FIN waiting to be read,
/// served once: it reads a full buffer, becomes bulk and takes a pipe.
fn bulk_with_backlog(bufs: &mut Buffers, payload: &[u8]) -> (Connection<Pair>, UnixStream) {
    let (mut c, mut peer) = pair();
    SockRef::from(&c.stream.0)
        .set_send_buffer_size(bufs.ring_capacity())
        .unwrap();
    peer.write_all(payload).unwrap();
    peer.shutdown(Shutdown::Write).unwrap();
    c.on_ready(1, BOTH, bufs);
    (c, peer)
}

/// Turns, bounded, with the peer reading up to `chunk` bytes before each,
/// until `done` holds; returns what the peer read. Each turn brings a
/// writable edge and never a readable one: the peer sent everything before
/// the first event, so no new bytes could bring one, and the connection
/// must remember on its own that the socket still has bytes. A pipe full of
/// slots must not make it forget (see `echo_through_pipe`).
#[track_caller]
fn serve_until<S: Read + Write + AsFd>(
    c: &mut Connection<Pair<S>>,
    peer: &mut impl Read,
    bufs: &mut Buffers,
    chunk: usize,
    done: impl Fn(&Connection<Pair<S>>) -> bool,
) -> Vec<u8> {
    let mut got = Vec::new();
    for _ in 0..1_000 {
        if done(c) {
            return got;
        }
        let mut buf = vec![0; chunk];
        match peer.read(&mut buf) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => panic!("peer read: {err}"),
        }
        c.on_ready(1, WRITABLE, bufs);
    }
    panic!("not done after 1,000 turns: {:?}", c.state());
}

#[test]
fn a_full_read_takes_a_pipe_and_the_bytes_go_through_it() {
    let capacity = 1 << 16;
    let mut bufs = Buffers::new(capacity).splicing(true, MAX_PIPES);
    let payload = bytes(3 * capacity, 1);
    let (mut c, mut peer) = bulk_with_backlog(&mut bufs, &payload);
    assert!(c.pending.holds_pipe(), "{:?}", c.pending);
    let mut got = serve_until(&mut c, &mut peer, &mut bufs, 1 << 20, |c| {
        matches!(c.state(), State::Closed(_))
    });
    got.extend(take_all(&mut peer));
    assert!(got == payload, "the echo differs");
    assert_eq!(c.state(), State::Closed(CloseReason::Eof));
    assert!(bufs.pipes.spliced > 0);
    assert!(!c.pending.holds_pipe(), "a closed connection holds no pipe");
}

/// Bytes the connection's socket holds, up to `max`, without taking them:
/// 0 when nothing but the peer's FIN is left. A peek steps over urgent
/// data as a read does.
fn peek<S: AsFd>(c: &Connection<Pair<S>>, max: usize) -> io::Result<usize> {
    SockRef::from(&c.stream.0).peek(&mut vec![MaybeUninit::uninit(); max])
}

/// The socket holds nothing but the peer's FIN while bytes sit in the pipe
/// (the peer reads slowly): the connection flushes the pipe, and only then
/// closes.
#[test]
fn eof_with_bytes_in_the_pipe_flushes_them_then_closes() {
    let capacity = 1 << 16;
    let mut bufs = Buffers::new(capacity).splicing(true, MAX_PIPES);
    let payload = bytes(3 * capacity, 2);
    let (mut c, mut peer) = bulk_with_backlog(&mut bufs, &payload);
    let mut got = serve_until(&mut c, &mut peer, &mut bufs, 16 << 10, |c| {
        matches!(peek(c, 1), Ok(0)) || c.state() != State::Open
    });
    assert!(c.pending.holds_pipe(), "{:?}", c.pending);
    assert!(c.pending(&bufs) > 0, "the FIN came with the pipe empty");
    got.extend(serve_until(&mut c, &mut peer, &mut bufs, 1 << 20, |c| {
        matches!(c.state(), State::Closed(_))
    }));
    got.extend(take_all(&mut peer));
    assert_eq!(c.state(), State::Closed(CloseReason::Eof));
    assert!(got == payload, "the echo differs or is cut short");
    // The server drops a closed connection, which closes the socket.
    drop(c);
    assert_eq!(peer.read(&mut [0; 1]).unwrap(), 0, "then the FIN");
}

/// Every pipe in use: the next bulk connection is echoed by copying, just
/// as exactly, and the fallback is counted.
#[test]
fn with_every_pipe_in_use_a_bulk_connection_copies() {
    let capacity = 1 << 16;
    let mut bufs = Buffers::new(capacity).splicing(true, MAX_PIPES);
    let payload = bytes(3 * capacity, 3);
    // The pool's limit follows the open-files limit (at most MAX_PIPES).
    assert!(bufs.pipes.limit() > 0 && bufs.pipes.limit() <= MAX_PIPES);
    let holders: Vec<_> = (0..bufs.pipes.limit())
        .map(|_| bulk_with_backlog(&mut bufs, &payload))
        .collect();
    assert!(holders.iter().all(|(c, _)| c.pending.holds_pipe()));
    assert_eq!(bufs.pipes.fallbacks, 0);

    let (mut c, mut peer) = bulk_with_backlog(&mut bufs, &payload);
    assert!(!c.pending.holds_pipe(), "{:?}", c.pending);
    assert!(bufs.pipes.fallbacks > 0, "the fallback is not counted");
    let mut got = serve_until(&mut c, &mut peer, &mut bufs, 1 << 20, |c| {
        matches!(c.state(), State::Closed(_))
    });
    got.extend(take_all(&mut peer));
    assert!(got == payload, "the echo differs");
}

/// A pipe with bytes in it when its connection ends is closed, never
/// given to the next connection with those bytes in it.
#[test]
fn a_pipe_with_bytes_in_it_is_not_reused() {
    let capacity = 1 << 16;
    let mut bufs = Buffers::new(capacity).splicing(true, MAX_PIPES);
    let (mut c, _peer) = bulk_with_backlog(&mut bufs, &bytes(3 * capacity, 4));
    assert!(c.pending(&bufs) > 0);
    c.begin_close(1, CloseReason::Shutdown, &mut bufs);
    assert!(!c.pending.holds_pipe());

    let payload = bytes(3 * capacity, 5);
    let (mut c, mut peer) = bulk_with_backlog(&mut bufs, &payload);
    let mut got = serve_until(&mut c, &mut peer, &mut bufs, 1 << 20, |c| {
        matches!(c.state(), State::Closed(_))
    });
    got.extend(take_all(&mut peer));
    assert!(got == payload, "stale bytes reached the next connection");
}

/// Bytes that arrive in many small pieces fill the pipe's slots long
/// before its byte size: a splice in then says WouldBlock with the socket
/// still holding bytes. The connection must not take that for "drained",
/// or, with no new bytes coming to bring an edge, it would never read the
/// rest (`serve_until` brings only writable edges).
#[test]
fn a_pipe_full_of_small_pieces_does_not_lose_readiness() {
    let capacity = 1 << 16;
    let mut bufs = Buffers::new(capacity).splicing(true, MAX_PIPES);
    let (mut c, mut peer) = pair();
    SockRef::from(&c.stream.0)
        .set_send_buffer_size(capacity)
        .unwrap();
    // Room for the peer's many small sends before the server reads them.
    SockRef::from(&peer).set_send_buffer_size(4 << 20).unwrap();
    // One full buffer to make it bulk, then pieces of 100 bytes, each its
    // own page slot in the pipe.
    let mut payload = bytes(capacity, 6);
    peer.write_all(&payload).unwrap();
    for i in 0..1500 {
        let piece = bytes(100, i as u8);
        peer.write_all(&piece).unwrap();
        payload.extend_from_slice(&piece);
    }
    peer.shutdown(Shutdown::Write).unwrap();
    c.on_ready(1, BOTH, &mut bufs);
    assert!(c.pending.holds_pipe(), "{:?}", c.pending);
    // The peer reads nothing yet: turns until the send buffer is full and
    // the pipe is full of slots.
    for _ in 0..100 {
        if c.on_ready(1, Readiness::NONE, &mut bufs) == Turn::Wait {
            break;
        }
    }
    let mut got = serve_until(&mut c, &mut peer, &mut bufs, 1 << 20, |c| {
        matches!(c.state(), State::Closed(_))
    });
    got.extend(take_all(&mut peer));
    assert!(got == payload, "the echo differs");
}

/// A connection over loopback TCP, and the peer's end, both nonblocking:
/// the connection's socket can queue `backlog` bytes to send without a
/// short write.
fn tcp_pair(backlog: usize) -> (Connection<Pair<TcpStream>>, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    // As the server's listeners: urgent data stays in the stream.
    SockRef::from(&listener)
        .set_out_of_band_inline(true)
        .unwrap();
    // Room for what the peer sends before the connection reads it.
    SockRef::from(&listener)
        .set_recv_buffer_size(1 << 20)
        .unwrap();
    let peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    peer.set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (ours, _) = listener.accept().unwrap();
    SockRef::from(&ours).set_send_buffer_size(backlog).unwrap();
    ours.set_nonblocking(true).unwrap();
    peer.set_nonblocking(true).unwrap();
    (Connection::new(Pair(ours)), peer)
}

/// Waits, bounded, until the connection's socket has the peer's FIN: every
/// byte the peer sent before it is there too.
#[track_caller]
fn wait_for_fin(c: &Connection<Pair<TcpStream>>) {
    let mut poll = mio::Poll::new().unwrap();
    let mut events = mio::Events::with_capacity(4);
    let fd = c.stream.0.as_raw_fd();
    poll.registry()
        .register(
            &mut mio::unix::SourceFd(&fd),
            mio::Token(0),
            mio::Interest::READABLE,
        )
        .unwrap();
    for _ in 0..100 {
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        if events.iter().any(mio::event::Event::is_read_closed) {
            return;
        }
    }
    panic!("the peer's FIN did not arrive");
}

/// A byte sent as TCP urgent data (`MSG_OOB`, as telnet's interrupt
/// does) stops a splice from the socket: `splice` will not move past the
/// urgent mark, so it says WouldBlock with bytes still in the socket, even
/// into an empty pipe. A read steps over the mark (with `SO_OOBINLINE`,
/// as the server sets it, the urgent byte comes back in its place).
/// Taking that WouldBlock for "drained" would leave the bytes after the
/// mark, and here the FIN, unread with no edge ever coming for them.
#[test]
fn urgent_data_does_not_stall_a_spliced_stream() {
    let capacity = 1 << 16;
    let mut bufs = Buffers::new(capacity).splicing(true, MAX_PIPES);
    let (mut c, mut peer) = tcp_pair(4 * capacity);
    let before = bytes(capacity + 1000, 7);
    let after = bytes(1000, 8);
    peer.set_nonblocking(false).unwrap();
    peer.write_all(&before).unwrap();
    SockRef::from(&peer).send_out_of_band(b"!").unwrap();
    peer.write_all(&after).unwrap();
    peer.shutdown(Shutdown::Write).unwrap();
    peer.set_nonblocking(true).unwrap();
    wait_for_fin(&c);

    let fin = Readiness {
        read_closed: true,
        ..BOTH
    };
    c.on_ready(1, fin, &mut bufs);
    let mut got = serve_until(&mut c, &mut peer, &mut bufs, 1 << 20, |c| {
        matches!(c.state(), State::Closed(_))
    });
    got.extend(take_all(&mut peer));
    assert!(bufs.pipes.spliced > 0, "no byte went through the pipe");
    assert_eq!(c.state(), State::Closed(CloseReason::Eof));
    let expected = [&before[..], b"!", &after].concat();
    assert!(got == expected, "the echo differs");
}

/// As above, with no FIN behind the urgent byte, on a connection that
/// stays bulk between bursts: its next burst starts at the urgent byte, and
/// a splice there says WouldBlock into an empty pipe with the burst's
/// bytes unread.
#[test]
fn urgent_data_does_not_stall_the_next_burst() {
    let capacity = 1 << 16;
    let mut bufs = Buffers::new(capacity).splicing(true, MAX_PIPES);
    let (mut c, mut peer) = tcp_pair(4 * capacity);
    let before = bytes(2 * capacity + 1000, 9);
    let after = bytes(1000, 10);
    peer.set_nonblocking(false).unwrap();
    peer.write_all(&before).unwrap();
    SockRef::from(&peer).send_out_of_band(b"!").unwrap();
    peer.set_nonblocking(true).unwrap();
    // Bounded: the bytes before the urgent one are on loopback already.
    for _ in 0..100 {
        if peek(&c, before.len()).is_ok_and(|n| n == before.len()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    c.on_ready(1, BOTH, &mut bufs);
    // Until the connection waits for the next edge, its pipe given back.
    let idle = |c: &Connection<Pair<TcpStream>>| !c.ready.readable && !c.pending.holds_pipe();
    let mut got = serve_until(&mut c, &mut peer, &mut bufs, 1 << 20, idle);
    got.extend(take_all(&mut peer));
    let first = [&before[..], b"!"].concat();
    assert!(got == first, "the first burst differs");
    assert!(bufs.pipes.spliced > 0, "no byte went through the pipe");

    // The next burst: its edge, once its bytes are all there.
    peer.write_all(&after).unwrap();
    for _ in 0..100 {
        if peek(&c, after.len() + 1).is_ok_and(|n| n == after.len()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    c.on_ready(1, BOTH, &mut bufs);
    let mut got = serve_until(&mut c, &mut peer, &mut bufs, 1 << 20, idle);
    got.extend(take_all(&mut peer));
    assert!(got == after, "the next burst differs or waits unread");
}

/// The peer reads slowly, so the pipe is full of echo bytes when the
/// splice in reaches the urgent mark: that splice says WouldBlock with
/// bytes in the pipe, which cannot be told from a pipe out of slots. The
/// connection must not wait for a readable edge (none will come: every
/// byte, the tail too, is in the socket already), but drain the pipe as
/// the peer reads, and then, with the pipe empty, read over the mark.
#[test]
fn urgent_data_reached_with_bytes_in_the_pipe_does_not_stall() {
    let capacity = 1 << 16;
    let mut bufs = Buffers::new(capacity).splicing(true, MAX_PIPES);
    let (mut c, mut peer) = tcp_pair(capacity);
    let before = bytes(4 * capacity + 1000, 11);
    let after = bytes(1000, 12);
    peer.set_nonblocking(false).unwrap();
    peer.write_all(&before).unwrap();
    SockRef::from(&peer).send_out_of_band(b"!").unwrap();
    peer.write_all(&after).unwrap();
    peer.set_nonblocking(true).unwrap();
    // Bounded: everything up to the mark is on loopback already.
    for _ in 0..100 {
        if peek(&c, before.len()).is_ok_and(|n| n == before.len()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let expected = [&before[..], b"!", &after].concat();
    c.on_ready(1, BOTH, &mut bufs);
    // 4 KiB a turn: far less than the pipe holds, so it is never empty
    // when the splice in gets to the mark.
    let mut got = serve_until(&mut c, &mut peer, &mut bufs, 4096, |c| {
        !c.ready.readable && !c.pending.holds_pipe()
    });
    got.extend(take_all(&mut peer));
    assert!(bufs.pipes.spliced > 0, "no byte went through the pipe");
    assert_eq!(got.len(), expected.len(), "the echo is short");
    assert!(got == expected, "the echo differs");
}
