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
//! 4. On Linux, a read that filled the whole scratch buffer, with nothing
//!    pending, marks the connection as bulk: it takes a pipe from the
//!    loop's pool and echoes by `splice(2)`, socket → pipe → socket, with
//!    no copy through user space (see [`super::pipe`]). The pipe is its
//!    buffer while attached; once it is empty and the socket drained it
//!    goes back to the pool, and the connection's next read takes one again
//!    if that pipe moved at least a buffer's worth. No pipe free: paths 1
//!    and 2 as before.
//!
//! The ring's capacity is the backpressure bound: when it is full the
//! connection stops reading, the kernel's receive window fills, and TCP
//! flow control slows the client down.

use super::clock::Millis;
use super::extras::splice::{Pipes, Splicing};
use crate::ring::Ring;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd};

/// What the connection logic needs of a socket.
pub trait Stream: Read + Write {
    /// Shuts down the sending side: the peer reads end-of-file after the
    /// bytes already sent.
    fn shutdown_write(&self) -> io::Result<()>;

    /// Makes the coming close abortive: `SO_LINGER` with a zero timeout,
    /// so that closing the socket sends an RST and drops whatever is still
    /// queued, instead of a FIN. For a close that throws echo bytes away
    /// (see `Connection::abort`). Per connection, never on the listener:
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
        socket2::SockRef::from(self).set_linger(Some(std::time::Duration::ZERO))
    }

    fn splice_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.as_fd())
    }
}

/// Where a connection is in its life; see the diagram in DESIGN and
/// `Connection::set_state`, the one place it changes.
///
/// ```text
///  Open ──read()==0──► Flushing ──ring empty──► Closed
///    │                     │
///    ├── server closes ──► Draining ──peer EOF──► Closed
///    │   (nothing pending)     │
///    │                         └──bytes read──► Closed, reset
///    ├── server closes, bytes pending ─────────► Closed, reset
///    └──── error / RST ────┴───────────────────► Closed
/// ```
///
/// "Reset": the server throws echo bytes away, so it closes with an RST
/// (see `Connection::abort`): a FIN says "you have every byte".
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
    /// echoed any more: see `Connection::discard`.
    Draining(CloseReason),
    /// Finished; the server removes the connection.
    Closed(CloseReason),
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

/// What the socket is known to be ready for. mio is edge-triggered: an
/// event says readiness *changed*; it stays until a call returns
/// WouldBlock (or a short read or write shows the kernel is drained), and
/// no new event comes for readiness we did not use up. Remembering it is
/// what lets a connection that stopped early (ring full, turn over) go on
/// later without waiting for an edge that will never come.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// A read may return bytes, EOF or an error.
    pub readable: bool,
    /// A write may take bytes or return an error.
    pub writable: bool,
    /// The peer's FIN (or an error) has arrived: a read will return 0 or
    /// the error after the bytes before it. Once seen it stays set, and a
    /// short read no longer means "drained" (see `Connection::read`).
    pub read_closed: bool,
    /// TCP urgent data has arrived (`EPOLLPRI`: a peer sent a byte with
    /// `MSG_OOB`). Linux's `tcp_recvmsg` stops a read short at the urgent
    /// mark, with the bytes behind it already queued, so a short read does
    /// not mean "drained" until a read has said WouldBlock, which clears
    /// it. (`SO_OOBINLINE`, set on the listener, keeps the urgent byte in
    /// the stream, so the read after the mark returns it in its place.)
    pub priority: bool,
}

impl Readiness {
    /// Nothing new: used when serving a connection from the ready queue.
    pub const NONE: Readiness = Readiness {
        readable: false,
        writable: false,
        read_closed: false,
        priority: false,
    };

    /// What a mio event says. Errors and hang-ups count as both, because
    /// the next read or write is what reports them.
    pub fn of(event: &mio::event::Event) -> Readiness {
        Readiness {
            readable: event.is_readable() || event.is_read_closed() || event.is_error(),
            writable: event.is_writable() || event.is_write_closed() || event.is_error(),
            read_closed: event.is_read_closed() || event.is_error(),
            priority: event.is_priority(),
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

/// The outcome of one turn of [`Connection::on_ready`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Turn {
    /// Nothing more can be done until the next event.
    Wait,
    /// The turn's budget ran out with readiness left unused (there may be
    /// more to read, or not): serve it again before the loop blocks in poll.
    Yield,
    /// The connection is finished; remove it.
    Closed(CloseReason),
}

/// The buffers one event loop shares among its connections.
pub struct Buffers {
    /// Where a connection with nothing pending reads; its length is the
    /// ring capacity, so whatever the socket refuses of an echo always fits
    /// in a fresh ring.
    scratch: Box<[u8]>,
    /// Rings given back by drained connections, kept for the next one.
    /// Kept boxed as connections hold them, so reuse moves a pointer and
    /// allocates nothing.
    #[allow(clippy::vec_box)]
    spare: Vec<Box<Ring>>,
    /// How many spare rings are kept: [`SPARE_RINGS`], fewer for rings so
    /// big that they would hold more than [`SPARE_RING_BYTES`].
    spares_kept: usize,
    /// Pipes for bulk connections (Linux; none with `--no-splice`).
    pub pipes: Pipes,
}

/// How many drained rings the loop keeps for reuse at most: enough to
/// absorb a burst of slow readers without an allocation each, few enough
/// that the memory of a burst long gone is given back.
const SPARE_RINGS: usize = 64;

/// How many bytes of drained rings the loop keeps for reuse at most: the
/// 64 rings of the default 64 KiB. Counting rings alone kept up to 64 ×
/// `--buffer`, 1 GiB at 16 MiB: with `--buffer 16M`, 20 slow readers left
/// 336 MB resident after they had gone. Larger rings are kept fewer (none
/// beyond 4 MiB each), and one of those costs little to allocate anew
/// beside the megabytes it will carry.
const SPARE_RING_BYTES: usize = 4 * 1024 * 1024;

impl Buffers {
    /// Buffers for connections whose rings hold `capacity` bytes; no
    /// pipes until [`Buffers::splicing`] turns them on.
    pub fn new(capacity: usize) -> Buffers {
        Buffers {
            scratch: vec![0; capacity].into_boxed_slice(),
            spare: Vec::new(),
            spares_kept: (SPARE_RING_BYTES / capacity.max(1)).min(SPARE_RINGS),
            pipes: Pipes::new(capacity, false),
        }
    }

    /// The same buffers, with bulk connections echoed through pipes if
    /// `on` (and the system has `splice(2)`).
    pub fn splicing(mut self, on: bool) -> Buffers {
        self.pipes = Pipes::new(self.scratch.len(), on);
        self
    }

    /// The capacity of each connection's ring.
    pub fn ring_capacity(&self) -> usize {
        self.scratch.len()
    }

    fn take_ring(&mut self) -> Box<Ring> {
        self.spare
            .pop()
            .unwrap_or_else(|| Box::new(Ring::with_capacity(self.scratch.len())))
    }

    fn give_back(&mut self, mut ring: Box<Ring>) {
        if self.spare.len() < self.spares_kept {
            ring.clear();
            self.spare.push(ring);
        }
    }
}

/// How many reads one connection may do per turn before others are served.
/// With the default 64 KiB buffer that is up to 256 KiB per turn: enough to
/// stream at full speed, small enough that one fast client cannot make 500
/// others wait long.
const READS_PER_TURN: usize = 4;

/// What one step of the state machine achieved.
enum Step {
    /// Something moved; try again.
    Progress,
    /// Blocked until the next event.
    Blocked,
}

/// One TCP peer.
pub struct Connection<S> {
    stream: S,
    state: State,
    ready: Readiness,
    /// Bytes read but not yet written back; `None` while nothing is
    /// pending, so an idle connection holds no buffer.
    ///
    /// Boxed, so that the connection itself stays small: idle connections
    /// are the many, and each pays for this field whether it is used or not.
    ring: Option<Box<Ring>>,
    /// Whether it is bulk, and the pipe holding its pending bytes while it
    /// is echoed by `splice` (then `ring` is `None`): a two-byte key into
    /// the loop's pool rather than the pipe itself, to keep it small.
    splicing: Splicing,
    /// Bytes read from the peer.
    pub bytes_in: u64,
    /// Bytes written back to the peer.
    pub bytes_out: u64,
    /// When it was accepted, on the loop's clock.
    pub opened: Millis,
    /// When bytes last moved, or when the server began closing it.
    pub active: Millis,
    /// On the loop's ready queue now (so it is not queued twice).
    pub queued: bool,
}

impl<S: Stream> Connection<S> {
    /// A freshly accepted connection, assumed ready for nothing until its
    /// first event says otherwise.
    pub fn new(stream: S) -> Connection<S> {
        Connection {
            stream,
            state: State::Open,
            ready: Readiness::default(),
            ring: None,
            splicing: Splicing::COPYING,
            bytes_in: 0,
            bytes_out: 0,
            opened: Millis::ZERO,
            active: Millis::ZERO,
            queued: false,
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
    /// began (idle, shutdown) that ends with bytes unechoed is always made
    /// abortive (`begin_close`, `discard`), and no other close is, so the
    /// state and the counters tell it (the fuzz test checks that the two
    /// agree with the `SO_LINGER` calls made).
    pub fn reset_by_server(&self) -> bool {
        matches!(
            self.state,
            State::Closed(CloseReason::Idle | CloseReason::Shutdown)
        ) && self.unechoed() > 0
    }

    /// Bytes received and not yet echoed, in its ring or its pipe.
    pub fn pending(&self, bufs: &Buffers) -> usize {
        let in_pipe = bufs.pipes.get(self.splicing).map_or(0, |pipe| pipe.len());
        self.ring.as_ref().map_or(0, |ring| ring.len()) + in_pipe
    }

    /// The one place the state changes, so every transition can be traced.
    fn set_state(&mut self, key: usize, next: State) {
        log::trace!("connection {key}: state {:?} -> {next:?}", self.state);
        self.state = next;
    }

    /// Serves an event (or, with [`Readiness::NONE`], a turn from the ready
    /// queue): moves bytes until the socket blocks, the turn's budget is
    /// spent, or the connection ends. `key` names it in trace lines.
    pub fn on_ready(&mut self, key: usize, new: Readiness, bufs: &mut Buffers) -> Turn {
        self.ready.readable |= new.readable;
        self.ready.writable |= new.writable;
        self.ready.read_closed |= new.read_closed;
        self.ready.priority |= new.priority;
        let mut reads_left = READS_PER_TURN;
        // A step either reads or only writes, so a normal turn takes at most
        // about two steps per read; this bound only ever bites on a stream
        // that keeps failing with Interrupted, which must not spin the loop.
        let mut steps_left = 4 * READS_PER_TURN;
        loop {
            let step = match self.state {
                State::Open => self.echo(key, bufs, &mut reads_left),
                State::Flushing => self.flush(key, bufs),
                State::Draining(reason) => self.discard(key, bufs, reason, &mut reads_left),
                State::Closed(reason) => return Turn::Closed(reason),
            };
            match step {
                Ok(Step::Progress) => {}
                Ok(Step::Blocked) => return Turn::Wait,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    log::trace!("connection {key}: {err}");
                    self.release(bufs);
                    // A close the server began keeps its reason: a peer
                    // that resets after our FIN does not make it a "reset".
                    let reason = match self.state {
                        State::Draining(reason) => reason,
                        _ => CloseReason::from_error(&err),
                    };
                    self.set_state(key, State::Closed(reason));
                }
            }
            if let State::Closed(reason) = self.state {
                // Whatever the way here, the buffers go back at once.
                self.release(bufs);
                return Turn::Closed(reason);
            }
            steps_left -= 1;
            if reads_left == 0 || steps_left == 0 {
                return Turn::Yield;
            }
        }
    }

    /// Closes on the server's initiative (idle, shutdown). With nothing
    /// pending, without an RST: shut down the sending side, then wait for
    /// the peer's EOF (`Draining`). With bytes pending (the caller decided
    /// they will not be sent), abortively: they are dropped, and an RST
    /// tells the peer so (see `Connection::abort`).
    pub fn begin_close(&mut self, key: usize, reason: CloseReason, bufs: &mut Buffers) {
        if let State::Closed(_) | State::Draining(_) = self.state {
            return;
        }
        let pending = self.pending(bufs);
        self.release(bufs);
        let next = if pending > 0 {
            log::trace!("connection {key}: closing with {pending} bytes not echoed");
            self.abort(key);
            State::Closed(reason)
        } else if self.state == State::Flushing {
            // The peer's EOF was read already: no input can be left unread,
            // so closing now cannot turn into an RST.
            State::Closed(reason)
        } else {
            match self.stream.shutdown_write() {
                Ok(()) => State::Draining(reason),
                // Not connected any more: nothing left to protect.
                Err(_) => State::Closed(reason),
            }
        };
        self.set_state(key, next);
    }

    /// `Open`: echo whatever can be echoed.
    fn echo(&mut self, key: usize, bufs: &mut Buffers, reads_left: &mut usize) -> io::Result<Step> {
        if self.splicing.holds_pipe() {
            return self.echo_through_pipe(key, bufs, reads_left);
        }
        if self.ring.is_some() {
            return self.echo_through_ring(key, bufs, reads_left);
        }
        // Bulk, and nothing pending anywhere (so a pipe cannot reorder
        // bytes): the next burst goes through a pipe if one is free.
        if self.splicing == Splicing::BULK && self.ready.readable {
            self.attach_pipe(key, bufs);
            if self.splicing.holds_pipe() {
                return self.echo_through_pipe(key, bufs, reads_left);
            }
        }
        self.echo_through_scratch(key, bufs, reads_left)
    }

    /// Nothing pending: read into the shared scratch buffer, write straight
    /// back, and keep only what the socket refuses.
    fn echo_through_scratch(
        &mut self,
        key: usize,
        bufs: &mut Buffers,
        reads_left: &mut usize,
    ) -> io::Result<Step> {
        if !self.ready.readable {
            return Ok(Step::Blocked);
        }
        *reads_left -= 1;
        let Some(n) = self.read(key, &mut bufs.scratch)? else {
            return Ok(Step::Blocked);
        };
        if n == 0 {
            self.peer_finished(key);
            return Ok(Step::Progress);
        }
        let written = if self.ready.writable {
            self.write(key, &bufs.scratch[..n])?.unwrap_or(0)
        } else {
            0
        };
        if written < n {
            let mut ring = bufs.take_ring();
            ring.push(&bufs.scratch[written..n]);
            self.ring = Some(ring);
        }
        // A read that filled the whole buffer and went straight back out
        // marks a bulk stream: with nothing pending, a pipe cannot reorder
        // bytes, so the next reads go through one if the pool has one free.
        if n == bufs.scratch.len() && written == n {
            self.attach_pipe(key, bufs);
        }
        Ok(Step::Progress)
    }

    /// Takes a pipe from the pool, if the stream can splice and one is
    /// free; if not (a fallback, counted), the connection goes on copying.
    fn attach_pipe(&mut self, key: usize, bufs: &mut Buffers) {
        if self.stream.splice_fd().is_none() {
            return;
        }
        self.splicing = bufs.pipes.attach().unwrap_or(Splicing::COPYING);
        if self.splicing.holds_pipe() {
            log::trace!("connection {key}: pipe attached");
        }
    }

    /// Bulk: bytes pending in a pipe. Splice them out, then splice more in
    /// behind them; no byte crosses into user space.
    ///
    /// Edge-triggered readiness as on the other paths, with one difference:
    /// a pipe can run out of slots before it holds `capacity` bytes (see
    /// [`super::pipe`]), so a short splice in never means "socket drained"
    /// here (it costs one more call, made in the next step), and a splice
    /// in that moves nothing (WouldBlock, or 0) means neither "drained" nor
    /// EOF: TCP urgent data stops a splice too. With bytes in the pipe
    /// `readable` stays set and the pipe is marked maybe full: the next
    /// splice in waits until a splice out has made room, so readiness is
    /// never lost and the loop does not spin on a full pipe. With the pipe
    /// empty, it goes back to the pool and an ordinary read decides; so
    /// the EOF, too, is always read on the copying path.
    fn echo_through_pipe(
        &mut self,
        key: usize,
        bufs: &mut Buffers,
        reads_left: &mut usize,
    ) -> io::Result<Step> {
        // Out first: what is in the pipe goes before anything read now.
        let mut moved = self.write_pipe(key, bufs)?;
        let capacity = bufs.scratch.len();
        let (Some(pipe), Some(socket)) =
            (bufs.pipes.get_mut(self.splicing), self.stream.splice_fd())
        else {
            // Cannot happen: `attach_pipe` checked both. Were it to, the
            // connection ends with an error rather than losing bytes.
            return Err(io::ErrorKind::Unsupported.into());
        };
        if self.ready.readable && pipe.may_fill(capacity) {
            *reads_left -= 1;
            let nothing_moved = match pipe.fill_from(socket, capacity) {
                Ok(0) => true,
                Ok(n) => {
                    // Short or not, `readable` stays set: a short count may
                    // be a pipe out of slots, and the next call tells.
                    log::trace!("connection {key}: spliced in {n}");
                    self.bytes_in += n as u64;
                    moved = true;
                    false
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => true,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {
                    moved = true;
                    false
                }
                Err(err) => return Err(err),
            };
            if nothing_moved && pipe.is_empty() {
                // An empty pipe has every slot free, so it is the socket:
                // drained, at its EOF, or stopped at urgent data (a byte
                // sent with MSG_OOB), which splice never moves past (it
                // says 0 if the FIN is behind it, WouldBlock if not) and a
                // read steps over. Only a read can tell, and it takes the
                // splice's place in the turn's budget. With the pipe empty
                // and given back first, it cannot reorder bytes.
                log::trace!("connection {key}: nothing to splice in, pipe empty");
                *reads_left += 1;
                self.give_back_empty_pipe(key, bufs, capacity);
                let read = self.echo_through_scratch(key, bufs, reads_left)?;
                return Ok(match read {
                    Step::Blocked if !moved => Step::Blocked,
                    _ => Step::Progress,
                });
            }
            if nothing_moved {
                // With bytes in the pipe, `fill_from` marked it maybe full:
                // no splice in until a splice out has made room, and once
                // the pipe is empty the read above decides.
                log::trace!("connection {key}: nothing to splice in, pipe maybe full");
            }
        }
        // Empty and nothing to read: the pipe goes back to the pool, so a
        // quiet connection holds none.
        if pipe.is_empty() && !self.ready.readable && self.state == State::Open {
            self.give_back_empty_pipe(key, bufs, capacity);
        }
        Ok(if moved { Step::Progress } else { Step::Blocked })
    }

    /// Gives the pipe, empty, back to the pool. If it moved a buffer's
    /// worth, the connection stays bulk and its next burst starts in a pipe
    /// again, rather than paying a copy through the scratch buffer first.
    fn give_back_empty_pipe(&mut self, key: usize, bufs: &mut Buffers, capacity: usize) {
        let bulk = bufs
            .pipes
            .get(self.splicing)
            .is_some_and(|pipe| pipe.moved() >= capacity as u64);
        log::trace!("connection {key}: pipe empty, back to the pool");
        self.release(bufs);
        if bulk {
            self.splicing = Splicing::BULK;
        }
    }

    /// Bytes pending: write from the ring, read behind them into the ring.
    fn echo_through_ring(
        &mut self,
        key: usize,
        bufs: &mut Buffers,
        reads_left: &mut usize,
    ) -> io::Result<Step> {
        let mut moved = self.write_ring(key)?;
        if self.ring.as_ref().is_some_and(|ring| ring.is_empty()) {
            self.release_ring(bufs);
            return Ok(Step::Progress);
        }
        let Some(ring) = self.ring.as_mut() else {
            return Ok(Step::Progress);
        };
        // A full ring is the backpressure point: stop reading. `readable`
        // stays set, so once a write frees space the next step reads again
        // without waiting for an event that may never come.
        if self.ready.readable && !ring.is_full() {
            *reads_left -= 1;
            let free = ring.free();
            match ring.read_from(&mut self.stream) {
                Ok(0) => {
                    log::trace!("connection {key}: EOF");
                    self.peer_finished(key);
                    moved = true;
                }
                Ok(n) => {
                    log::trace!("connection {key}: read {n} into ring");
                    self.bytes_in += n as u64;
                    // Short read: drained (see `read`).
                    self.ready.readable =
                        n == free || self.ready.read_closed || self.ready.priority;
                    moved = true;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    log::trace!("connection {key}: read WouldBlock");
                    self.ready.readable = false;
                    self.ready.priority = false;
                }
                Err(err) => return Err(err),
            }
        }
        Ok(if moved { Step::Progress } else { Step::Blocked })
    }

    /// `Flushing`: write what is pending; close when it is all out.
    fn flush(&mut self, key: usize, bufs: &mut Buffers) -> io::Result<Step> {
        let moved = self.write_ring(key)? | self.write_pipe(key, bufs)?;
        if self.pending(bufs) == 0 {
            self.release(bufs);
            // Protohackers Smoke Test: "once you've reached end-of-file on
            // your receiving side, and sent back all the data you've
            // received, close the socket so that the client knows you've
            // finished."
            self.set_state(key, State::Closed(CloseReason::Eof));
            return Ok(Step::Progress);
        }
        Ok(if moved { Step::Progress } else { Step::Blocked })
    }

    /// `Draining`: wait for the peer's EOF, and end abortively if bytes
    /// come first.
    ///
    /// Bytes read here were sent by the peer and will never be echoed: our
    /// FIN is already on its way, and an echo cannot follow a FIN. A peer
    /// that sent them (say, just as its idle timeout struck, or while the
    /// shutdown grace ran out) and then reads our FIN would take it for
    /// "every byte is back" and count a short echo as complete. So the
    /// first byte discarded turns the close abortive at once (counted as
    /// discarded, the connection as reset): the RST makes the peer's next
    /// send fail, and, if our FIN is still queued behind echo bytes, its
    /// next read too. Reading on to the EOF first would tell it nothing:
    /// by then it has read the FIN. What the RST cannot undo is a FIN the
    /// peer has read already: a peer that sends and half-closes in the
    /// same instant the server closes learns of the loss only by counting.
    fn discard(
        &mut self,
        key: usize,
        bufs: &mut Buffers,
        reason: CloseReason,
        reads_left: &mut usize,
    ) -> io::Result<Step> {
        if !self.ready.readable {
            return Ok(Step::Blocked);
        }
        *reads_left -= 1;
        match self.read(key, &mut bufs.scratch)? {
            None => Ok(Step::Blocked),
            Some(0) => {
                self.set_state(key, State::Closed(reason));
                Ok(Step::Progress)
            }
            Some(n) => {
                log::trace!("connection {key}: {n} bytes after the server's FIN, discarded");
                self.abort(key);
                self.set_state(key, State::Closed(reason));
                Ok(Step::Progress)
            }
        }
    }

    /// Makes the close abortive, because the server is throwing away echo
    /// bytes: a FIN means "you have every byte" (DESIGN, "Signals and
    /// shutdown"), so a close that loses bytes must not send one. With
    /// `SO_LINGER` 0 the close sends an RST, and the peer's next read or
    /// send fails with ECONNRESET (or EPIPE) instead of a clean EOF. One
    /// system call, only on a close that discards: a connection that ends
    /// normally costs none. If it fails the socket is already broken, and
    /// the peer has had its reset.
    fn abort(&mut self, key: usize) {
        if let Err(err) = self.stream.reset_on_close() {
            log::trace!("connection {key}: SO_LINGER 0 failed: {err}");
        }
    }

    /// The peer shut down its sending side.
    fn peer_finished(&mut self, key: usize) {
        // The pipe path never reads an EOF (see `echo_through_pipe`): only
        // the ring can hold bytes here.
        let empty = self.ring.as_ref().is_none_or(|ring| ring.is_empty());
        let next = if empty {
            State::Closed(CloseReason::Eof)
        } else {
            State::Flushing
        };
        self.set_state(key, next);
    }

    /// One read into `buf`; `None` for WouldBlock. Keeps `readable` true
    /// only while more may be waiting: the read filled the whole buffer,
    /// the peer's FIN is known to be behind the bytes, or urgent data
    /// arrived, at whose mark the kernel stops a read short.
    fn read(&mut self, key: usize, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match self.stream.read(buf) {
            Ok(0) => {
                log::trace!("connection {key}: EOF");
                Ok(Some(0))
            }
            Ok(n) => {
                log::trace!("connection {key}: read {n}");
                self.bytes_in += n as u64;
                // A short read means the kernel had no more bytes: the
                // socket is drained, and bytes arriving later bring a new
                // edge. Skipping the read that would only say WouldBlock
                // saves a system call per message. The exception is a FIN
                // that arrived with the bytes: its edge came with the event
                // we are serving, so no other will come, and only another
                // read reports the EOF. The same holds after urgent data:
                // the read stopped at its mark, and the bytes behind it
                // came with the same edge (see `Readiness::priority`).
                self.ready.readable =
                    n == buf.len() || self.ready.read_closed || self.ready.priority;
                Ok(Some(n))
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                log::trace!("connection {key}: read WouldBlock");
                self.ready.readable = false;
                // Past any urgent mark: the queue is empty.
                self.ready.priority = false;
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }

    /// One write of `bytes`; `None` for WouldBlock. A short write means the
    /// send buffer is full, so `writable` is cleared until the next edge.
    fn write(&mut self, key: usize, bytes: &[u8]) -> io::Result<Option<usize>> {
        match self.stream.write(bytes) {
            Ok(0) => Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                self.bytes_out += n as u64;
                if n < bytes.len() {
                    log::trace!("connection {key}: write {n} (short)");
                    self.ready.writable = false;
                } else {
                    log::trace!("connection {key}: write {n}");
                }
                Ok(Some(n))
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                log::trace!("connection {key}: write WouldBlock");
                self.ready.writable = false;
                Ok(None)
            }
            // A signal cut the call short before anything was written:
            // nothing moved, the socket is still writable. The caller keeps
            // the bytes (in the ring) and the next step writes them.
            Err(err) if err.kind() == io::ErrorKind::Interrupted => Ok(Some(0)),
            Err(err) => Err(err),
        }
    }

    /// One vectored write from the ring, if writable; true if bytes moved.
    fn write_ring(&mut self, key: usize) -> io::Result<bool> {
        let Some(ring) = self.ring.as_mut() else {
            return Ok(false);
        };
        if !self.ready.writable || ring.is_empty() {
            return Ok(false);
        }
        let result = ring.write_to(&mut self.stream);
        let emptied = ring.is_empty();
        self.wrote_pending(key, "ring", result, emptied)
    }

    /// One splice out of everything in the pipe, if writable; true if
    /// bytes moved.
    fn write_pipe(&mut self, key: usize, bufs: &mut Buffers) -> io::Result<bool> {
        let Some(pipe) = bufs.pipes.get_mut(self.splicing) else {
            return Ok(false);
        };
        if !self.ready.writable || pipe.is_empty() {
            return Ok(false);
        }
        let Some(socket) = self.stream.splice_fd() else {
            return Err(io::ErrorKind::Unsupported.into());
        };
        let result = pipe.drain_to(socket);
        let emptied = pipe.is_empty();
        if let Ok(n) = result {
            bufs.pipes.spliced += n as u64;
        }
        self.wrote_pending(key, "pipe", result, emptied)
    }

    /// What a write of everything pending (from the ring or the pipe) tells:
    /// one rule for both. `emptied`: nothing is pending after it. True if
    /// bytes moved.
    fn wrote_pending(
        &mut self,
        key: usize,
        from: &str,
        result: io::Result<usize>,
        emptied: bool,
    ) -> io::Result<bool> {
        match result {
            Ok(0) => Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                self.bytes_out += n as u64;
                if emptied {
                    log::trace!("connection {key}: write {n} from {from}");
                } else {
                    // Everything pending was offered: a short write means
                    // the send buffer is full.
                    log::trace!("connection {key}: write {n} from {from} (short)");
                    self.ready.writable = false;
                }
                Ok(true)
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                log::trace!("connection {key}: write WouldBlock");
                self.ready.writable = false;
                Ok(false)
            }
            // Still writable: report "moved" so the step is tried again
            // (bounded by the turn's step budget) rather than waiting for
            // an edge that will not come.
            Err(err) if err.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(err) => Err(err),
        }
    }

    /// Gives back whatever buffer the connection holds: its ring to the
    /// spares, its pipe to the pool (which closes it if bytes are left in
    /// it). Called on every way to `Closed`, and by the server before it
    /// drops a connection, so no pipe outlives its connection.
    pub fn release(&mut self, bufs: &mut Buffers) {
        self.release_ring(bufs);
        bufs.pipes.detach(self.splicing);
        self.splicing = Splicing::COPYING;
    }

    fn release_ring(&mut self, bufs: &mut Buffers) {
        if let Some(ring) = self.ring.take() {
            bufs.give_back(ring);
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fuzz;

#[cfg(all(test, target_os = "linux"))]
mod splice_tests;
