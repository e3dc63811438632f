//! The state machine over a scripted fake stream: each test says what the
//! "kernel" answers to every read and write, and checks what the connection
//! did with it.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};

use super::test_readiness::{BOTH, READABLE, WRITABLE};
use super::*;

/// What the fake socket answers to the next read.
#[derive(Debug)]
enum OnRead {
    /// These bytes arrived (a read takes as many as fit; the rest stays).
    Data(Vec<u8>),
    /// The peer shut down its sending side.
    Eof,
    WouldBlock,
    Fail(io::ErrorKind),
}

/// What the fake socket answers to the next write.
#[derive(Debug)]
enum OnWrite {
    /// Take at most this many bytes.
    Take(usize),
    WouldBlock,
    Fail(io::ErrorKind),
}

/// A socket whose every answer is scripted. With the read script empty a
/// read says WouldBlock; with the write script empty a write takes all.
#[derive(Debug, Default)]
struct Fake {
    reads: VecDeque<OnRead>,
    writes: VecDeque<OnWrite>,
    sent: Vec<u8>,
    read_calls: usize,
    shut_down: std::cell::Cell<bool>,
    reset_on_close: std::cell::Cell<bool>,
}

impl Read for Fake {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_calls += 1;
        match self.reads.pop_front() {
            None | Some(OnRead::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
            Some(OnRead::Eof) => Ok(0),
            Some(OnRead::Fail(kind)) => Err(kind.into()),
            Some(OnRead::Data(mut bytes)) => {
                let n = bytes.len().min(buf.len());
                buf[..n].copy_from_slice(&bytes[..n]);
                if n < bytes.len() {
                    self.reads.push_front(OnRead::Data(bytes.split_off(n)));
                }
                Ok(n)
            }
        }
    }
}

impl Write for Fake {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
        let n = match self.writes.pop_front() {
            None => all.len(),
            Some(OnWrite::Take(limit)) => limit.min(all.len()),
            Some(OnWrite::WouldBlock) => return Err(io::ErrorKind::WouldBlock.into()),
            Some(OnWrite::Fail(kind)) => return Err(kind.into()),
        };
        self.sent.extend_from_slice(&all[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stream for Fake {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shut_down.set(true);
        Ok(())
    }
    fn reset_on_close(&self) -> io::Result<()> {
        self.reset_on_close.set(true);
        Ok(())
    }
}

/// Bytes and the peer's FIN arrived before the event was taken.
const BOTH_AND_FIN: Readiness = Readiness {
    read_closed: true,
    ..BOTH
};

fn conn(reads: Vec<OnRead>, writes: Vec<OnWrite>) -> Connection<Fake> {
    Connection::new(Fake {
        reads: reads.into(),
        writes: writes.into(),
        ..Fake::default()
    })
}

fn data(bytes: &[u8]) -> OnRead {
    OnRead::Data(bytes.to_vec())
}

mod open {
    use super::*;

    #[test]
    fn echoes_straight_back_without_a_ring() {
        let mut bufs = Buffers::new(16);
        let mut c = conn(vec![data(b"hello")], vec![]);
        assert_eq!(c.on_ready(1, BOTH, &mut bufs), Turn::Wait);
        assert_eq!(c.stream().sent, b"hello");
        assert!(
            !c.pending.holds_ring(),
            "nothing pending, so no buffer is held"
        );
        assert_eq!((c.bytes_in, c.bytes_out), (5, 5));
        // A short read means "drained": no extra read just to see WouldBlock.
        assert_eq!(c.stream().read_calls, 1);
    }

    #[test]
    fn short_write_keeps_the_rest_until_writable() {
        let mut bufs = Buffers::new(16);
        let mut c = conn(vec![data(b"hello")], vec![OnWrite::Take(2)]);
        assert_eq!(c.on_ready(1, BOTH, &mut bufs), Turn::Wait);
        assert_eq!(c.stream().sent, b"he");
        assert_eq!(c.pending(&bufs), 3);
        assert_eq!(c.on_ready(1, WRITABLE, &mut bufs), Turn::Wait);
        assert_eq!(c.stream().sent, b"hello");
        assert!(!c.pending.holds_ring(), "a drained ring is given back");
        assert_eq!(bufs.rings_held(), 0, "the loop holds no ring for it");
        assert_eq!(bufs.spare.len(), 1);
    }

    #[test]
    fn would_block_at_every_step_loses_nothing() {
        let mut bufs = Buffers::new(4);
        let mut c = conn(
            vec![
                OnRead::WouldBlock,
                data(b"abcd"),
                OnRead::WouldBlock,
                data(b"ef"),
                OnRead::WouldBlock,
            ],
            vec![
                OnWrite::WouldBlock,
                OnWrite::WouldBlock,
                OnWrite::Take(1),
                OnWrite::WouldBlock,
            ],
        );
        for _ in 0..10 {
            c.on_ready(1, BOTH, &mut bufs);
        }
        assert_eq!(c.stream().sent, b"abcdef");
        assert_eq!(c.state(), State::Open);
    }

    #[test]
    fn input_waits_behind_pending_bytes() {
        let mut bufs = Buffers::new(8);
        let mut c = conn(
            vec![data(b"12345678"), data(b"abc")],
            vec![OnWrite::Take(3)],
        );
        c.on_ready(1, BOTH, &mut bufs);
        assert_eq!(c.stream().sent, b"123");
        // "abc" was read into the ring behind "45678", in order.
        assert_eq!(c.pending(&bufs), 8);
        c.on_ready(1, WRITABLE, &mut bufs);
        assert_eq!(c.stream().sent, b"12345678abc");
    }

    #[test]
    fn full_ring_stops_reading_and_resumes_without_a_read_event() {
        let mut bufs = Buffers::new(4);
        let mut c = conn(
            vec![data(b"abcdefghijkl")],
            vec![OnWrite::WouldBlock, OnWrite::WouldBlock],
        );
        assert_eq!(c.on_ready(1, BOTH, &mut bufs), Turn::Wait);
        assert_eq!(c.pending(&bufs), 4, "the ring is full: reading stops");
        assert_eq!(c.stream().read_calls, 1);
        // The kernel drains the send buffer and says "writable" only. No
        // readable edge will come for the 8 bytes still waiting, so the
        // connection must read them on its own.
        assert_eq!(c.on_ready(1, WRITABLE, &mut bufs), Turn::Wait);
        assert_eq!(c.on_ready(1, WRITABLE, &mut bufs), Turn::Wait);
        assert_eq!(c.stream().sent, b"abcdefghijkl");
    }

    #[test]
    fn a_busy_peer_yields_its_turn() {
        let mut bufs = Buffers::new(4);
        let reads = (0..100).map(|_| data(b"xxxx")).collect();
        let mut c = conn(reads, vec![]);
        assert_eq!(c.on_ready(1, BOTH, &mut bufs), Turn::Yield);
        assert_eq!(c.stream().read_calls, READS_PER_TURN);
        // Served again from the ready queue, with no new event.
        assert_eq!(c.on_ready(1, Readiness::NONE, &mut bufs), Turn::Yield);
        assert_eq!(c.stream().read_calls, 2 * READS_PER_TURN);
    }

    #[test]
    fn not_readable_means_no_read() {
        let mut bufs = Buffers::new(4);
        let mut c = conn(vec![data(b"ab")], vec![]);
        assert_eq!(c.on_ready(1, WRITABLE, &mut bufs), Turn::Wait);
        assert_eq!(c.stream().read_calls, 0);
        assert_eq!(c.on_ready(1, READABLE, &mut bufs), Turn::Wait);
        assert_eq!(c.stream().sent, b"ab");
    }

    #[test]
    fn eof_with_nothing_pending_closes_at_once() {
        let mut bufs = Buffers::new(8);
        let mut c = conn(vec![data(b"12345678"), OnRead::Eof], vec![]);
        assert_eq!(
            c.on_ready(1, BOTH, &mut bufs),
            Turn::Closed(CloseReason::Eof)
        );
        assert_eq!(c.stream().sent, b"12345678");
    }

    /// Regression: `printf hello | nc -N` hung. Data and FIN arrived
    /// together, the short read was taken for "drained", and no edge came
    /// for the EOF.
    #[test]
    fn fin_behind_a_short_read_is_still_read() {
        let mut bufs = Buffers::new(16);
        let mut c = conn(vec![data(b"hello"), OnRead::Eof], vec![]);
        assert_eq!(
            c.on_ready(1, BOTH_AND_FIN, &mut bufs),
            Turn::Closed(CloseReason::Eof)
        );
        assert_eq!(c.stream().sent, b"hello");
    }

    #[test]
    fn reset_while_reading_closes_with_reset() {
        let mut bufs = Buffers::new(8);
        let mut c = conn(vec![OnRead::Fail(io::ErrorKind::ConnectionReset)], vec![]);
        assert_eq!(
            c.on_ready(1, BOTH, &mut bufs),
            Turn::Closed(CloseReason::Reset)
        );
    }
}

mod flushing {
    use super::*;

    #[test]
    fn eof_with_bytes_pending_flushes_then_closes() {
        let mut bufs = Buffers::new(8);
        let mut c = conn(vec![data(b"12345678"), OnRead::Eof], vec![OnWrite::Take(5)]);
        assert_eq!(c.on_ready(1, BOTH, &mut bufs), Turn::Wait);
        assert_eq!(c.state(), State::Flushing);
        assert_eq!(c.pending(&bufs), 3);
        assert_eq!(
            c.on_ready(1, WRITABLE, &mut bufs),
            Turn::Closed(CloseReason::Eof)
        );
        assert_eq!(c.stream().sent, b"12345678");
    }

    #[test]
    fn flushing_reads_nothing_more() {
        let mut bufs = Buffers::new(8);
        let mut c = conn(
            vec![data(b"abc"), OnRead::Eof, data(b"never")],
            vec![OnWrite::WouldBlock],
        );
        // The first read is short, so a new readable edge brings the EOF.
        c.on_ready(1, BOTH, &mut bufs);
        c.on_ready(1, READABLE, &mut bufs);
        assert_eq!(c.state(), State::Flushing);
        let reads = c.stream().read_calls;
        c.on_ready(1, BOTH, &mut bufs);
        assert_eq!(c.stream().read_calls, reads);
        assert_eq!(c.stream().sent, b"abc");
    }

    #[test]
    fn reset_while_flushing_closes_with_reset() {
        let mut bufs = Buffers::new(8);
        let mut c = conn(
            vec![data(b"12345678"), OnRead::Eof],
            vec![
                OnWrite::Take(2),
                OnWrite::Fail(io::ErrorKind::ConnectionReset),
            ],
        );
        assert_eq!(c.on_ready(1, BOTH, &mut bufs), Turn::Wait);
        assert_eq!(c.state(), State::Flushing);
        assert_eq!(
            c.on_ready(1, WRITABLE, &mut bufs),
            Turn::Closed(CloseReason::Reset)
        );
        assert!(
            !c.pending.holds_ring(),
            "the ring is given back on error too"
        );
        assert_eq!(bufs.rings_held(), 0, "the loop holds no ring for it");
    }
}

mod draining {
    use super::*;

    /// Nothing pending: a FIN, then the peer's EOF closes it, gracefully.
    #[test]
    fn server_close_waits_for_the_peers_eof() {
        let mut bufs = Buffers::new(8);
        let mut c = conn(
            vec![OnRead::WouldBlock, OnRead::WouldBlock, OnRead::Eof],
            vec![],
        );
        c.begin_close(1, CloseReason::Shutdown, &mut bufs);
        assert_eq!(c.state(), State::Draining(CloseReason::Shutdown));
        assert!(c.stream().shut_down.get(), "the peer is told with a FIN");
        assert_eq!(c.on_ready(1, READABLE, &mut bufs), Turn::Wait);
        assert_eq!(
            c.on_ready(1, READABLE, &mut bufs),
            Turn::Closed(CloseReason::Shutdown)
        );
        assert!(!c.stream().reset_on_close.get(), "a clean close, no RST");
        assert!(!c.reset_by_server());
        assert_eq!(c.unechoed(), 0);
    }

    /// Bytes that arrive after the server's FIN can never be echoed: the
    /// first of them turns the close abortive at once, and they are
    /// counted as discarded (see `Connection::discard`).
    #[test]
    fn bytes_after_the_servers_fin_make_the_close_a_reset() {
        let mut bufs = Buffers::new(8);
        let mut c = conn(
            vec![
                OnRead::WouldBlock,
                data(b"late"),
                data(b"later"),
                OnRead::Eof,
            ],
            vec![],
        );
        c.begin_close(1, CloseReason::Idle, &mut bufs);
        assert_eq!(c.state(), State::Draining(CloseReason::Idle));
        assert_eq!(
            c.on_ready(1, READABLE, &mut bufs),
            Turn::Closed(CloseReason::Idle)
        );
        assert!(c.stream().reset_on_close.get(), "an RST, not a clean close");
        assert!(c.reset_by_server());
        assert!(c.stream().sent.is_empty(), "nothing is echoed after a FIN");
        assert_eq!(
            c.stream().read_calls,
            2,
            "one read at the close, then no reading on once it is lost"
        );
        assert_eq!(c.unechoed(), 4);
    }
}

/// A close the server decides on while it holds echo bytes throws them
/// away, so it is abortive: `SO_LINGER` 0 and an RST, never the FIN that
/// says "you have every byte".
mod discarding {
    use super::*;

    #[test]
    fn a_server_close_with_bytes_pending_is_a_reset() {
        let mut bufs = Buffers::new(8);
        let mut c = conn(vec![data(b"12345678")], vec![OnWrite::Take(3)]);
        c.on_ready(1, BOTH, &mut bufs);
        assert_eq!(c.pending(&bufs), 5);
        c.begin_close(1, CloseReason::Idle, &mut bufs);
        assert_eq!(c.state(), State::Closed(CloseReason::Idle));
        assert!(c.stream().reset_on_close.get(), "dropped bytes with a FIN");
        assert!(!c.stream().shut_down.get(), "a FIN before the RST");
        assert!(c.reset_by_server());
        assert_eq!(c.unechoed(), 5);
        assert_eq!(c.pending(&bufs), 0, "the ring is given back");
        assert_eq!(
            c.on_ready(1, BOTH, &mut bufs),
            Turn::Closed(CloseReason::Idle)
        );
    }

    /// The peer finished, but its echo did not all go out before the
    /// server gave up on it (grace over): a reset too.
    #[test]
    fn a_server_close_while_flushing_is_a_reset() {
        let mut bufs = Buffers::new(8);
        let mut c = conn(
            vec![data(b"12345678"), OnRead::Eof],
            vec![OnWrite::Take(6), OnWrite::WouldBlock],
        );
        c.on_ready(1, BOTH, &mut bufs);
        assert_eq!(c.state(), State::Flushing);
        c.begin_close(1, CloseReason::Shutdown, &mut bufs);
        assert_eq!(c.state(), State::Closed(CloseReason::Shutdown));
        assert!(c.stream().reset_on_close.get());
        assert_eq!(c.unechoed(), 2);
    }

    /// Input the kernel still holds when the server closes (a turn's read
    /// budget ran out with `readable` set) cannot be echoed: no FIN over
    /// it, which the client would read as "every byte is back", but an
    /// RST, with the bytes counted as discarded.
    #[test]
    fn a_server_close_with_input_unread_is_a_reset() {
        let mut bufs = Buffers::new(8);
        // READS_PER_TURN full reads, 8 bytes each, all echoed: the turn's
        // budget runs out with `readable` still set, and more queued.
        let mut script: Vec<OnRead> = (0..READS_PER_TURN).map(|_| data(b"12345678")).collect();
        script.push(data(b"unread"));
        let mut c = conn(script, vec![]);
        assert_eq!(c.on_ready(1, BOTH, &mut bufs), Turn::Yield);
        assert_eq!(c.unechoed(), 0, "everything read so far went back");
        c.begin_close(1, CloseReason::Shutdown, &mut bufs);
        assert_eq!(c.state(), State::Closed(CloseReason::Shutdown));
        assert!(!c.stream().shut_down.get(), "a FIN over unread input");
        assert!(c.stream().reset_on_close.get(), "an RST, not a clean close");
        assert!(c.reset_by_server());
        assert_eq!(c.unechoed(), 6, "the bytes read at the close are discarded");
    }

    /// The read at the close finds the peer's EOF: every byte went back,
    /// so the close is clean, and needs no FIN dance.
    #[test]
    fn a_server_close_that_finds_the_peers_eof_is_clean() {
        let mut bufs = Buffers::new(8);
        let mut c = conn(vec![data(b"echoed"), OnRead::Eof], vec![]);
        c.on_ready(1, BOTH, &mut bufs);
        c.begin_close(1, CloseReason::Idle, &mut bufs);
        assert_eq!(c.state(), State::Closed(CloseReason::Idle));
        assert!(!c.stream().reset_on_close.get());
        assert!(!c.reset_by_server());
    }

    /// A stop at once sends no FIN of its own (the socket is closed right
    /// after): clean when nothing is left, a reset when input is unread.
    #[test]
    fn a_close_at_once_resets_only_over_unread_input() {
        let mut bufs = Buffers::new(8);
        let mut clean = conn(vec![data(b"echoed")], vec![]);
        clean.on_ready(1, BOTH, &mut bufs);
        clean.close_now(1, CloseReason::Shutdown, &mut bufs);
        assert_eq!(clean.state(), State::Closed(CloseReason::Shutdown));
        assert!(!clean.stream().shut_down.get(), "no FIN dance");
        assert!(!clean.stream().reset_on_close.get());
        assert!(!clean.reset_by_server());

        let mut unread = conn(vec![OnRead::WouldBlock, data(b"late")], vec![]);
        unread.on_ready(1, READABLE, &mut bufs);
        unread.close_now(1, CloseReason::Shutdown, &mut bufs);
        assert_eq!(unread.state(), State::Closed(CloseReason::Shutdown));
        assert!(!unread.stream().shut_down.get());
        assert!(
            unread.stream().reset_on_close.get(),
            "an RST over unread input"
        );
        assert!(unread.reset_by_server());
        assert_eq!(unread.unechoed(), 4);
    }

    #[test]
    fn a_server_close_with_nothing_pending_is_clean() {
        let mut bufs = Buffers::new(8);
        let mut c = conn(vec![data(b"echoed")], vec![]);
        c.on_ready(1, BOTH, &mut bufs);
        c.begin_close(1, CloseReason::Idle, &mut bufs);
        assert_eq!(c.state(), State::Draining(CloseReason::Idle));
        assert!(!c.stream().reset_on_close.get());
        assert!(c.stream().shut_down.get());
    }

    /// Closes that end normally, or that the peer broke, cost no
    /// `setsockopt`: `SO_LINGER` is only for the server's own discards.
    #[test]
    fn peer_closes_never_ask_for_a_reset() {
        let mut bufs = Buffers::new(8);
        let mut done = conn(vec![data(b"abc"), OnRead::Eof], vec![]);
        assert_eq!(
            done.on_ready(1, BOTH_AND_FIN, &mut bufs),
            Turn::Closed(CloseReason::Eof)
        );
        let mut broken = conn(
            vec![data(b"12345678"), OnRead::Eof],
            vec![
                OnWrite::Take(2),
                OnWrite::Fail(io::ErrorKind::ConnectionReset),
            ],
        );
        broken.on_ready(1, BOTH, &mut bufs);
        broken.on_ready(1, WRITABLE, &mut bufs);
        assert_eq!(broken.state(), State::Closed(CloseReason::Reset));
        for c in [&done, &broken] {
            assert!(!c.stream().reset_on_close.get());
            assert!(!c.reset_by_server());
        }
    }

    /// An error on the server's side (ENOBUFS from a write, here) with
    /// echo bytes pending: the peer is still connected and would read a
    /// FIN after a short echo, so the close is a reset, and the bytes are
    /// counted as discarded.
    #[test]
    fn an_error_of_ours_with_bytes_pending_is_a_reset() {
        let mut bufs = Buffers::new(8);
        let mut c = conn(
            vec![data(b"12345678")],
            vec![OnWrite::Take(3), OnWrite::Fail(io::ErrorKind::OutOfMemory)],
        );
        c.on_ready(1, BOTH, &mut bufs);
        assert_eq!(c.pending(&bufs), 5);
        assert_eq!(
            c.on_ready(1, WRITABLE, &mut bufs),
            Turn::Closed(CloseReason::Error(io::ErrorKind::OutOfMemory))
        );
        assert!(c.stream().reset_on_close.get(), "bytes dropped with a FIN");
        assert!(c.reset_by_server());
        assert_eq!(c.unechoed(), 5);
    }

    /// The same error with everything echoed loses nothing: a normal close.
    #[test]
    fn an_error_of_ours_with_nothing_pending_is_no_reset() {
        let mut bufs = Buffers::new(8);
        let mut c = conn(
            vec![data(b"1234"), OnRead::Fail(io::ErrorKind::OutOfMemory)],
            vec![],
        );
        let mut turn = c.on_ready(1, BOTH, &mut bufs);
        if turn == Turn::Wait {
            turn = c.on_ready(1, READABLE, &mut bufs);
        }
        assert_eq!(
            turn,
            Turn::Closed(CloseReason::Error(io::ErrorKind::OutOfMemory))
        );
        assert!(!c.stream().reset_on_close.get());
        assert!(!c.reset_by_server());
    }
}

/// TCP urgent data (`MSG_OOB`): Linux stops a read short at the urgent
/// mark with the bytes behind it already queued, and the event says
/// `priority`. A short read then is not "drained".
mod urgent {
    use super::*;

    /// The event that brings urgent data.
    const BOTH_AND_URGENT: Readiness = Readiness {
        priority: true,
        ..BOTH
    };

    #[test]
    fn a_short_read_after_a_priority_event_keeps_reading() {
        let mut bufs = Buffers::new(256);
        // 100 bytes up to the mark, then the urgent byte (inline, with
        // SO_OOBINLINE) and the 100 behind it: what the corked
        // client makes the kernel return.
        let before = [b'a'; 100];
        let after: Vec<u8> = std::iter::once(b'!').chain([b'b'; 100]).collect();
        let mut c = conn(vec![data(&before), data(&after)], vec![]);
        assert_eq!(c.on_ready(1, BOTH_AND_URGENT, &mut bufs), Turn::Wait);
        assert_eq!(c.stream().sent, [&before[..], &after].concat());
        // 100, then 101, then WouldBlock: only that says drained.
        assert_eq!(c.stream().read_calls, 3);
        assert!(!c.ready.readable);
        assert!(!c.ready.priority, "WouldBlock clears it: past the mark");
    }

    /// Reading into the ring (bytes pending) follows the same rule.
    #[test]
    fn a_short_read_into_the_ring_after_a_priority_event_keeps_reading() {
        let mut bufs = Buffers::new(256);
        let mut c = conn(
            vec![data(b"up to the mark"), data(b"!"), data(b" and after")],
            vec![OnWrite::WouldBlock],
        );
        assert_eq!(c.on_ready(1, BOTH_AND_URGENT, &mut bufs), Turn::Wait);
        assert_eq!(c.pending(&bufs), 25);
        assert_eq!(c.stream().read_calls, 4);
        c.on_ready(1, WRITABLE, &mut bufs);
        assert_eq!(c.stream().sent, b"up to the mark! and after");
    }

    /// Once a read has said WouldBlock, the next short read means drained
    /// again: the extra read is paid once per urgent mark, not forever.
    #[test]
    fn after_would_block_a_short_read_means_drained_again() {
        let mut bufs = Buffers::new(256);
        let mut c = conn(
            vec![data(b"a"), OnRead::WouldBlock, data(b"b"), data(b"c")],
            vec![],
        );
        c.on_ready(1, BOTH_AND_URGENT, &mut bufs);
        assert_eq!(c.stream().read_calls, 2);
        c.on_ready(1, READABLE, &mut bufs);
        assert_eq!(
            c.stream().read_calls,
            3,
            "a short read, no priority: drained"
        );
        assert_eq!(c.stream().sent, b"ab");
    }
}

mod draining_reason {
    use super::*;

    /// The review found that a peer resetting after the server's FIN
    /// turned an idle or shutdown close into a "reset" in the counters.
    #[test]
    fn a_reset_while_draining_keeps_the_servers_reason() {
        let mut bufs = Buffers::new(8);
        let mut c = conn(vec![OnRead::Fail(io::ErrorKind::ConnectionReset)], vec![]);
        c.begin_close(1, CloseReason::Idle, &mut bufs);
        assert_eq!(
            c.on_ready(1, READABLE, &mut bufs),
            Turn::Closed(CloseReason::Idle)
        );
    }
}

/// What the loop's sweep and timers ask of a connection, by state.
mod timers {
    use super::*;

    fn at(ms: u64) -> Millis {
        Millis::ZERO.after(Duration::from_millis(ms))
    }

    /// Open: only the idle timeout ends it, counted from its last
    /// progress; bytes moved postpone it.
    #[test]
    fn an_open_connection_is_due_when_idle_past_the_timeout() {
        let mut bufs = Buffers::new(16);
        let idle = Some(Duration::from_secs(5));
        let mut c = conn(vec![data(b"hi")], vec![]).accepted_at(at(0));
        assert_eq!(c.due(at(4_999), idle), Due::Nothing);
        assert_eq!(c.serve(1, BOTH, &mut bufs, at(3_000)), Turn::Wait);
        assert_eq!(
            c.due(at(7_999), idle),
            Due::Nothing,
            "progress postpones it"
        );
        assert_eq!(c.due(at(8_000), idle), Due::Idle(Duration::from_secs(5)));
        assert_eq!(c.due(at(60_000), None), Due::Nothing, "no idle timeout");
    }

    /// Draining: the drain limit counts from the server's close, and bytes
    /// the peer still sends do not postpone it; the idle timeout no longer
    /// applies.
    #[test]
    fn a_draining_connection_is_removed_past_the_drain_limit() {
        let mut bufs = Buffers::new(16);
        let mut c = conn(vec![OnRead::WouldBlock], vec![]).accepted_at(at(0));
        c.close_from_server(1, CloseReason::Idle, &mut bufs, at(1_000));
        assert_eq!(c.state(), State::Draining(CloseReason::Idle));
        assert!(!c.state().in_session());
        assert_eq!(c.state().close_reason(), Some(CloseReason::Idle));
        let limit = 1_000 + DRAIN_LIMIT.as_millis() as u64;
        assert_eq!(c.due(at(limit - 1), Some(Duration::ZERO)), Due::Nothing);
        assert_eq!(c.due(at(limit), None), Due::Remove(CloseReason::Idle));
    }
}

/// Idle connections are the many: each costs its slab entry and nothing
/// else (no ring, no peer address, no entry in a map of sources: the
/// source a remote one is counted against is a four-byte id in what was
/// padding). 48 bytes (the slab's tag fits in spare bits of the struct)
/// keeps the idle cost within the 64 bytes per connection benches/run.sh
/// measures.
/// Measured with std's `TcpStream`, a bare descriptor as mio's is in the
/// release build benches/run.sh measures: in a debug build mio's stream
/// also carries the id of its poll (8 bytes, for its own assertions).
#[test]
fn a_connection_stays_small() {
    assert_eq!(
        std::mem::size_of::<std::net::TcpStream>(),
        std::mem::size_of::<std::os::fd::OwnedFd>()
    );
    let size = std::mem::size_of::<Connection<std::net::TcpStream>>();
    assert!(size <= 48, "Connection grew to {size} bytes");
}
