//! `Connection`: one TCP peer, its `State`, and the echo logic.
//!
//! The logic is generic over [`Stream`] (anything `Read + Write` that can
//! shut down its sending side), so unit tests drive it over a scripted fake
//! stream that returns short writes, WouldBlock and resets on cue.
//!
//! The echo path, in the order the code tries it:
//!
//! 1. Nothing pending: read into the loop's shared scratch buffer and write
//!    the bytes straight back. Most echoes end here and never touch a
//!    per-connection buffer.
//! 2. The socket refused part of that write: the rest goes into a [`Ring`]
//!    taken from the loop's spare rings. From now on new input is read into
//!    the ring, behind the pending bytes, so order is kept.
//! 3. The ring drains: it goes back to the spares, and the connection is on
//!    path 1 again. An idle connection holds no buffer.
//! 4. On Linux, a bulk stream (a read filled the whole scratch buffer) is
//!    echoed through a pipe by `splice(2)` instead, with no copy through
//!    user space: [`super::extras::splice`], reached from one place,
//!    `Serving::echo_through_pipe`. A first reading can skip it.
//!
//! Where the pending bytes are is one field, [`Pending`]: nowhere, in a
//! ring, or in a pipe, never two at once, so order cannot be lost.
//!
//! The ring's capacity is the backpressure bound: when it is full the
//! connection stops reading, the kernel's receive window fills, and TCP
//! flow control slows the client down.

use std::fmt;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use super::Turn;
use super::buffers::{Buffers, RingKey};
use super::clock::Millis;
use super::extras::splice::PipeKey;
use super::sources::SourceId;
use crate::net::Readiness;
use crate::ring::Ring;
#[cfg(test)]
use turn::READS_PER_TURN;
use turn::Serving;

/// What the connection logic needs of a socket.
pub trait Stream: io::Read + io::Write {
    /// Shuts down the sending side: the peer reads end-of-file after the
    /// bytes already sent.
    fn shutdown_write(&self) -> io::Result<()>;

    /// Makes the coming close abortive: `SO_LINGER` with a zero timeout,
    /// so that closing the socket sends an RST and drops whatever is still
    /// queued, instead of a FIN. For a close that throws echo bytes away
    /// (see `Serving::abort`). Per connection, never on the listener:
    /// accepted sockets would inherit it, and every close would be a reset.
    fn reset_on_close(&self) -> io::Result<()>;

    /// The descriptor `splice(2)` can move bytes through; `None` (the
    /// default, for test fakes) keeps the connection on the copying path.
    fn splice_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}

impl Stream for mio::net::TcpStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }

    fn reset_on_close(&self) -> io::Result<()> {
        // socket(7): "When enabled, a close(2) or shutdown(2) will not
        // return until all queued messages for the socket have been
        // successfully sent or the linger timeout has been reached";
        // with a zero timeout, TCP aborts the connection (RST) at close.
        socket2::SockRef::from(self).set_linger(Some(Duration::ZERO))
    }

    fn splice_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.as_fd())
    }
}

/// Where a connection is in its life; see the diagram below and
/// `Serving::set_state`, the one place it changes.
///
/// ```text
///  Open ──read()==0──► Flushing ──ring empty──► Closed
///    │                     │
///    ├── server closes ──► Draining ──peer EOF──► Closed
///    │   (nothing pending,     │
///    │    nothing unread)      └──bytes read──► Closed, reset
///    ├── server closes, bytes pending or unread ► Closed, reset
///    └──── error / RST ────┴───────────────────► Closed
///          (an error of ours with bytes unechoed: reset)
/// ```
///
/// "Reset": the server throws echo bytes away, so it closes with an RST
/// (see `Serving::abort`): a FIN says "you have every byte".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Echoing: reading what the peer sends and writing it back.
    Open,
    /// The peer shut down its sending side (a read returned 0). Write what
    /// is pending, then close: the FIN tells the client it has everything.
    Flushing,
    /// The server is closing on its own initiative (shutdown, idle peer)
    /// with nothing pending: every byte received was echoed, so the
    /// sending side is shut down (a FIN, which says just that) and the
    /// server waits for the peer's EOF, because closing a socket with
    /// unread input makes the kernel send an RST, which can destroy echo
    /// bytes still in flight. A byte that arrives meanwhile cannot be
    /// echoed any more: see `Serving::discard`.
    Draining(CloseReason),
    /// Finished; the server removes the connection.
    Closed(CloseReason),
}

impl State {
    /// Whether the session is still the peer's: the server has not begun
    /// to close it, so an idle timeout or the end of a shutdown's grace
    /// may still end it, and the bytes it moves count as progress.
    pub fn in_session(self) -> bool {
        match self {
            // Echoing, or sending the peer the last of its bytes.
            State::Open | State::Flushing => true,
            // The server's FIN is out: a peer still sending must not keep
            // the close from its bound (the drain limit).
            State::Draining(_) => false,
            // Nothing left to end.
            State::Closed(_) => false,
        }
    }

    /// Why it is closing or closed, once the server or the peer began to
    /// end it.
    pub fn close_reason(self) -> Option<CloseReason> {
        match self {
            // Nothing decided yet: a read of 0 or an error will say.
            State::Open | State::Flushing => None,
            State::Draining(reason) | State::Closed(reason) => Some(reason),
        }
    }
}

/// Why a connection ended; logged at close and counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer finished sending and received every byte back.
    Eof,
    /// The peer reset the connection or went away (ECONNRESET, EPIPE).
    Reset,
    /// Another error, by kind.
    Error(io::ErrorKind),
    /// No bytes moved in either direction for `--idle-timeout`.
    Idle,
    /// The server shut down.
    Shutdown,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Eof => f.write_str("peer finished, all echoed"),
            CloseReason::Reset => f.write_str("reset by peer"),
            CloseReason::Error(kind) => write!(f, "error: {kind}"),
            CloseReason::Idle => f.write_str("idle too long"),
            CloseReason::Shutdown => f.write_str("server shutdown"),
        }
    }
}

impl CloseReason {
    fn from_error(err: &io::Error) -> CloseReason {
        match err.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => CloseReason::Reset,
            kind => CloseReason::Error(kind),
        }
    }
}

/// The readiness sets unit tests serve connections and sockets with, in
/// one place for every test module of the server.
#[cfg(test)]
pub(super) mod test_readiness {
    use super::Readiness;

    /// Readable only.
    pub const READABLE: Readiness = Readiness {
        readable: true,
        ..Readiness::NONE
    };
    /// Writable only.
    pub const WRITABLE: Readiness = Readiness {
        writable: true,
        ..Readiness::NONE
    };
    /// Readable and writable, no FIN seen.
    pub const BOTH: Readiness = Readiness {
        readable: true,
        writable: true,
        read_closed: false,
        priority: false,
    };
}

/// How long a connection the server closes may take to send its EOF
/// after the server's FIN (see `State::Draining`) before it is closed
/// regardless (checked by the loop's once-a-second sweep, so up to a
/// second more).
pub const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Where the bytes read and not yet written back are: one place at a time,
/// so they go out in the order they came. Both buffers are the loop's,
/// lent by key: eight bytes with the tag, so "ring or pipe, never both"
/// costs an idle connection nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pending {
    /// None: reads go to the loop's scratch buffer and straight back out.
    Nothing,
    /// In a ring taken from the loop's spares (the socket refused part of
    /// an echo).
    Ring(RingKey),
    /// In a pipe of the loop's pool (a bulk stream echoed by `splice`).
    Pipe(PipeKey),
}

impl Pending {
    /// Whether the bytes are in a ring.
    pub fn holds_ring(self) -> bool {
        matches!(self, Pending::Ring(_))
    }

    /// Whether the bytes are in a pipe.
    pub fn holds_pipe(self) -> bool {
        matches!(self, Pending::Pipe(_))
    }
}

/// One TCP peer.
pub struct Connection<S> {
    stream: S,
    state: State,
    ready: Readiness,
    /// Where the bytes read and not yet echoed are.
    pending: Pending,
    /// A bulk stream between bursts: its pipe went back to the pool after
    /// it moved a buffer's worth, and its next read takes one again rather
    /// than paying a copy through the scratch buffer first.
    bulk: bool,
    /// Bytes read from the peer.
    pub bytes_in: u64,
    /// Bytes written back to the peer.
    pub bytes_out: u64,
    /// When it was accepted, on the loop's clock.
    pub opened: Millis,
    /// When bytes last moved, or when the server began closing it: what
    /// the idle timeout and the drain limit count from.
    active: Millis,
    /// The source it is counted against (`--max-connections-per-source`),
    /// told at its close; `None` for an exempt (loopback) source. Four
    /// bytes, in what was padding: a connection from a remote client
    /// costs no more than one from loopback.
    pub source: Option<SourceId>,
}

/// What the loop's sweep should do with a connection now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// Nothing yet.
    Nothing,
    /// Idle for this long, at least `--idle-timeout`: the server closes it.
    Idle(Duration),
    /// Finished, or draining past `DRAIN_LIMIT`: remove it.
    Remove(CloseReason),
}

impl<S: Stream> Connection<S> {
    /// A freshly accepted connection, assumed ready for nothing until its
    /// first event says otherwise.
    pub fn new(stream: S) -> Connection<S> {
        Connection {
            stream,
            state: State::Open,
            ready: Readiness::default(),
            pending: Pending::Nothing,
            bulk: false,
            bytes_in: 0,
            bytes_out: 0,
            opened: Millis::ZERO,
            active: Millis::ZERO,
            source: None,
        }
    }

    /// The same connection, stamped as accepted `now`.
    pub fn accepted_at(mut self, now: Millis) -> Connection<S> {
        self.opened = now;
        self.active = now;
        self
    }

    /// Bytes moved so far in both directions; a change means progress.
    pub fn bytes_moved(&self) -> u64 {
        self.bytes_in + self.bytes_out
    }

    /// The socket.
    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// Where it is in its life.
    pub fn state(&self) -> State {
        self.state
    }

    /// Bytes received and never echoed: those pending now, and those the
    /// server threw away. Every byte read is either written back or
    /// pending until it is, so this is exact; on a close the server made
    /// abortive, it is what was discarded.
    pub fn unechoed(&self) -> u64 {
        self.bytes_in.saturating_sub(self.bytes_out)
    }

    /// Whether the server closed it abortively (RST), having thrown away
    /// [`Connection::unechoed`] bytes. Not a field: a close the server
    /// began (idle, shutdown), or an error on the server's side, that ends
    /// with bytes unechoed is always made abortive (`begin_close`,
    /// `discard`, a turn's error), and no other close is, so the state and
    /// the counters tell it (the fuzz test checks that the two agree with
    /// the `SO_LINGER` calls made).
    pub fn reset_by_server(&self) -> bool {
        matches!(
            self.state,
            State::Closed(CloseReason::Idle | CloseReason::Shutdown | CloseReason::Error(_))
        ) && self.unechoed() > 0
    }

    /// Bytes received and not yet echoed, in its ring or its pipe.
    pub fn pending(&self, bufs: &Buffers) -> usize {
        match self.pending {
            Pending::Nothing => 0,
            Pending::Ring(key) => {
                let ring = bufs.ring(key);
                debug_assert!(
                    ring.is_some(),
                    "a connection holds a ring key that names no ring"
                );
                ring.map_or(0, Ring::len)
            }
            Pending::Pipe(key) => bufs.pipes.len(key),
        }
    }

    /// Serves an event (or, with [`Readiness::NONE`], a turn from the ready
    /// queue): moves bytes until the socket blocks, the turn's budget is
    /// spent, or the connection ends. `key` names it in trace lines.
    pub fn on_ready(&mut self, key: usize, new: Readiness, bufs: &mut Buffers) -> Turn {
        self.serving(key, bufs).turn(new)
    }

    /// [`Connection::on_ready`] on the loop's clock: progress postpones
    /// the idle timeout, except on a connection the server is closing,
    /// which stays bounded however much its peer still sends.
    pub fn serve(&mut self, key: usize, new: Readiness, bufs: &mut Buffers, now: Millis) -> Turn {
        let moved = self.bytes_moved();
        let turn = self.on_ready(key, new, bufs);
        if self.bytes_moved() != moved && self.state.in_session() {
            self.active = now;
        }
        turn
    }

    /// Closes on the server's initiative (idle, shutdown). With nothing
    /// pending and nothing left unread, without an RST: shut down the
    /// sending side, then wait for the peer's EOF (`Draining`). With bytes
    /// pending (the caller decided they will not be sent), or bytes still
    /// unread in the kernel, abortively: they are dropped, and an RST tells
    /// the peer so (see `Serving::abort`).
    pub fn begin_close(&mut self, key: usize, reason: CloseReason, bufs: &mut Buffers) {
        self.serving(key, bufs).begin_close(reason);
    }

    /// Closes at once (a stop without grace): as `begin_close`, but no FIN
    /// and no waiting for the peer's EOF, since the server drops the socket
    /// right after. Bytes pending, or found by one read, make it abortive;
    /// otherwise closing the socket sends the FIN, or an RST if input
    /// arrived in between: the kernel decides that at the close itself
    /// (tcp_close), so no FIN can go out over unread bytes.
    pub fn close_now(&mut self, key: usize, reason: CloseReason, bufs: &mut Buffers) {
        self.serving(key, bufs).close_now(reason);
    }

    /// [`Connection::begin_close`] on the loop's clock: the drain limit
    /// counts from `now`.
    pub fn close_from_server(
        &mut self,
        key: usize,
        reason: CloseReason,
        bufs: &mut Buffers,
        now: Millis,
    ) {
        self.begin_close(key, reason, bufs);
        self.active = now;
    }

    /// What the sweep should do with it at `now`, with `--idle-timeout`
    /// `idle_timeout`.
    pub fn due(&self, now: Millis, idle_timeout: Option<Duration>) -> Due {
        let quiet = now.since(self.active);
        match self.state {
            // The peer's session: only the idle timeout ends it.
            State::Open | State::Flushing => match idle_timeout {
                Some(limit) if quiet >= limit => Due::Idle(quiet),
                _ => Due::Nothing,
            },
            // The server's FIN is out; a peer that never sends its EOF is
            // not waited for past the drain limit.
            State::Draining(reason) if quiet >= DRAIN_LIMIT => Due::Remove(reason),
            State::Draining(_) => Due::Nothing,
            // Closed outside a turn (a server close that could not shut
            // down the socket): nothing more will happen to it.
            State::Closed(reason) => Due::Remove(reason),
        }
    }

    /// Gives back whatever buffer the connection holds: its ring to the
    /// spares, its pipe to the pool (which closes it if bytes are left in
    /// it). Called on every way to `Closed`, and by the server before it
    /// drops a connection, so no pipe outlives its connection.
    pub fn release(&mut self, bufs: &mut Buffers) {
        match std::mem::replace(&mut self.pending, Pending::Nothing) {
            Pending::Nothing => {}
            Pending::Ring(key) => bufs.give_back(key),
            Pending::Pipe(key) => {
                bufs.pipes.detach(key);
            }
        }
        self.bulk = false;
    }

    fn serving<'a>(&'a mut self, key: usize, bufs: &'a mut Buffers) -> Serving<'a, S> {
        Serving::new(self, key, bufs)
    }
}

mod turn;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fuzz;

#[cfg(all(test, target_os = "linux"))]
mod splice_tests;
