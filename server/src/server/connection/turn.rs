//! One turn of a connection: the state machine's steps, and the copy
//! path (scratch buffer, then ring) that moves the bytes. The pipe path is
//! handed over to [`crate::server::extras::splice`] in one place,
//! `Serving::echo_through_pipe`.

use std::io;

use super::{Buffers, CloseReason, Connection, Pending, State, Stream, Turn};
use crate::net::{Readiness, interrupted, would_block};
use crate::server::buffers::{RingKey, lost_ring};
use crate::server::extras::splice::{Ends, PipeKey, PipeStep};

/// How many reads one connection may do per turn before others are served.
/// With the default 64 KiB buffer that is up to 256 KiB per turn: enough to
/// stream at full speed, small enough that one fast client cannot make 500
/// others wait long.
pub(super) const READS_PER_TURN: usize = 4;

/// What one step of the state machine achieved.
enum Step {
    /// Something moved; try again.
    Progress,
    /// Blocked until the next event.
    Blocked,
}

/// One connection being served: borrowed for one turn (or one close),
/// together with its slab key, which only its trace lines use, the loop's
/// buffers and the turn's read budget. The key lives here rather than in
/// the connection, so idle connections do not pay for it.
pub(super) struct Serving<'a, S> {
    conn: &'a mut Connection<S>,
    key: usize,
    bufs: &'a mut Buffers,
    /// Reads this turn may still make (see [`READS_PER_TURN`]).
    reads_left: usize,
}

impl<'a, S: Stream> Serving<'a, S> {
    /// Serves `conn`, whose slab key is `key`, with the loop's buffers.
    pub(super) fn new(conn: &'a mut Connection<S>, key: usize, bufs: &'a mut Buffers) -> Self {
        Serving {
            conn,
            key,
            bufs,
            reads_left: READS_PER_TURN,
        }
    }

    /// The one place the state changes, so every transition can be traced.
    fn set_state(&mut self, next: State) {
        log::trace!(
            "connection {}: state {:?} -> {next:?}",
            self.key,
            self.conn.state
        );
        self.conn.state = next;
    }

    /// See [`Connection::on_ready`].
    pub(super) fn turn(&mut self, new: Readiness) -> Turn {
        self.conn.ready.add(new);
        // A step either reads or only writes, so a normal turn takes at most
        // about two steps per read; this bound only ever bites on a stream
        // that keeps failing with Interrupted, which must not spin the loop.
        let mut steps_left = 4 * READS_PER_TURN;
        loop {
            let step = match self.conn.state {
                State::Open => self.echo(),
                State::Flushing => self.flush(),
                State::Draining(reason) => self.discard(reason),
                State::Closed(reason) => return Turn::Closed(reason),
            };
            match step {
                Ok(Step::Progress) => {}
                Ok(Step::Blocked) => return Turn::Wait,
                Err(err) if interrupted(&err) => {}
                Err(err) => {
                    log::trace!("connection {}: {err}", self.key);
                    // A close the server began keeps its reason: a peer
                    // that resets after our FIN does not make it a "reset".
                    let reason = match self.conn.state {
                        State::Draining(reason) => reason,
                        _ => CloseReason::from_error(&err),
                    };
                    // An error of our own side (ENOMEM or ENOBUFS from a
                    // write or splice, WriteZero, Unsupported) leaves the
                    // peer connected, and the bytes it holds are lost:
                    // closing normally would send a FIN after a short echo.
                    // A peer that reset or went away needs no telling.
                    if matches!(reason, CloseReason::Error(_)) && self.conn.unechoed() > 0 {
                        log::trace!(
                            "connection {}: closing on an error with {} bytes not echoed",
                            self.key,
                            self.conn.unechoed()
                        );
                        self.abort();
                    }
                    self.set_state(State::Closed(reason));
                }
            }
            if let State::Closed(reason) = self.conn.state {
                // Whatever the way here, the buffers go back at once.
                self.conn.release(self.bufs);
                return Turn::Closed(reason);
            }
            steps_left -= 1;
            if self.reads_left == 0 || steps_left == 0 {
                return Turn::Yield;
            }
        }
    }

    /// See [`Connection::begin_close`].
    pub(super) fn begin_close(&mut self, reason: CloseReason) {
        if let State::Closed(_) | State::Draining(_) = self.conn.state {
            return;
        }
        let pending = self.conn.pending(self.bufs);
        self.conn.release(self.bufs);
        let next = if pending > 0 {
            log::trace!(
                "connection {}: closing with {pending} bytes not echoed",
                self.key
            );
            self.abort();
            State::Closed(reason)
        } else if self.conn.state == State::Flushing {
            // The peer's EOF was read already: no input can be left unread,
            // so closing now cannot turn into an RST.
            State::Closed(reason)
        } else {
            self.close_unless_unread(reason)
        };
        self.set_state(next);
    }

    /// See [`Connection::close_now`].
    pub(super) fn close_now(&mut self, reason: CloseReason) {
        let next = match self.conn.state {
            State::Closed(_) => return,
            // The FIN is out and nothing was read since (a byte read would
            // have closed it, abortively): the close adds nothing.
            State::Draining(reason) => State::Closed(reason),
            State::Open | State::Flushing => {
                let pending = self.conn.pending(self.bufs);
                self.conn.release(self.bufs);
                let unread = self.conn.state == State::Open && matches!(self.read(), Ok(Some(1..)));
                if pending > 0 || unread {
                    log::trace!(
                        "connection {}: closing at once with {} bytes not echoed",
                        self.key,
                        self.conn.unechoed()
                    );
                    self.abort();
                }
                State::Closed(reason)
            }
        };
        self.set_state(next);
    }

    /// `begin_close` with nothing pending: one nonblocking read first,
    /// because the kernel may still hold input that no turn has read yet
    /// (the turn's read budget ran out with `readable` set, or the loop
    /// had not yet taken the event). A FIN sent over it would reach the
    /// client before the reset that discarding it causes, and a client that
    /// half-closed would read a clean EOF after a short echo. So: bytes ->
    /// discarded and counted, RST; EOF -> every byte was echoed, close;
    /// WouldBlock -> FIN and `Draining`. One more system call, only on a
    /// close the server starts (idle timeout, shutdown): none on the echo
    /// path.
    fn close_unless_unread(&mut self, reason: CloseReason) -> State {
        // A signal may cut the read short before it took anything; a few
        // tries, not a loop without end.
        let mut tries = 3;
        let read = loop {
            match self.read() {
                Err(err) if interrupted(&err) && tries > 1 => tries -= 1,
                other => break other,
            }
        };
        match read {
            Ok(None) => match self.conn.stream.shutdown_write() {
                Ok(()) => State::Draining(reason),
                // Not connected any more: nothing left to protect.
                Err(_) => State::Closed(reason),
            },
            // The peer finished and had every byte back.
            Ok(Some(0)) => State::Closed(reason),
            Ok(Some(n)) => {
                log::trace!(
                    "connection {}: {n} bytes unread at the server's close, discarded",
                    self.key
                );
                self.abort();
                State::Closed(reason)
            }
            // Broken (reset), or still interrupted: no FIN now. Closing a
            // socket with input unread makes Linux send an RST by itself
            // (tcp_close, RFC 2525 2.17), so none goes out over bytes
            // nobody read.
            Err(err) => {
                log::trace!("connection {}: read at the server's close: {err}", self.key);
                State::Closed(reason)
            }
        }
    }

    /// `Open`: echo whatever can be echoed, by where the pending bytes are.
    fn echo(&mut self) -> io::Result<Step> {
        match self.conn.pending {
            Pending::Pipe(pipe) => self.echo_through_pipe(pipe),
            Pending::Ring(ring) => self.echo_through_ring(ring),
            // A bulk stream between bursts, with nothing pending anywhere
            // (so a pipe cannot reorder bytes): the next burst goes
            // through a pipe if one is free.
            Pending::Nothing if self.conn.bulk && self.conn.ready.readable => {
                match self.attach_pipe() {
                    Some(pipe) => self.echo_through_pipe(pipe),
                    None => self.echo_through_scratch(),
                }
            }
            Pending::Nothing => self.echo_through_scratch(),
        }
    }

    /// Nothing pending: read into the shared scratch buffer, write straight
    /// back, and keep only what the socket refuses.
    fn echo_through_scratch(&mut self) -> io::Result<Step> {
        if !self.conn.ready.readable {
            return Ok(Step::Blocked);
        }
        self.reads_left -= 1;
        let Some(n) = self.read()? else {
            return Ok(Step::Blocked);
        };
        if n == 0 {
            self.peer_finished();
            return Ok(Step::Progress);
        }
        let written = if self.conn.ready.writable {
            self.write_scratch(n)?.unwrap_or(0)
        } else {
            0
        };
        if written < n {
            let Some(ring) = self.bufs.take_ring(written..n) else {
                return Err(io::ErrorKind::OutOfMemory.into());
            };
            self.conn.pending = Pending::Ring(ring);
        }
        // A read that filled the whole buffer and went straight back out
        // marks a bulk stream: with nothing pending, a pipe cannot reorder
        // bytes, so the next reads go through one if the pool has one free.
        if n == self.bufs.scratch.len() && written == n {
            self.attach_pipe();
        }
        Ok(Step::Progress)
    }

    /// Takes a pipe from the pool, if the stream can splice and one is
    /// free; if not (a fallback, counted), the connection goes on copying.
    fn attach_pipe(&mut self) -> Option<PipeKey> {
        self.conn.stream.splice_fd()?;
        self.conn.bulk = false;
        let pipe = self.bufs.pipes.attach()?;
        log::trace!("connection {}: pipe attached", self.key);
        self.conn.pending = Pending::Pipe(pipe);
        Some(pipe)
    }

    /// Bulk: the pending bytes are in a pipe; see [`crate::server::extras::splice`].
    /// The one place the core hands over to it.
    fn echo_through_pipe(&mut self, pipe: PipeKey) -> io::Result<Step> {
        let ends = ends(self.conn, self.key, &mut self.reads_left)?;
        let step = match self.bufs.pipes.echo(pipe, ends)? {
            PipeStep::Progress => Step::Progress,
            PipeStep::Blocked => Step::Blocked,
            PipeStep::Empty { moved, read } => {
                // Empty, so the pipe goes back to the pool: a quiet
                // connection holds none, and the copying path can take
                // over without reordering bytes. A pipe that moved a
                // buffer's worth leaves the connection bulk.
                log::trace!("connection {}: pipe empty, back to the pool", self.key);
                self.conn.pending = Pending::Nothing;
                self.conn.bulk = self.bufs.pipes.detach(pipe);
                // Only a read can tell a drained socket from its EOF or
                // urgent data, which a splice never moves past.
                let read = if read {
                    self.echo_through_scratch()?
                } else {
                    Step::Blocked
                };
                match read {
                    Step::Blocked if !moved => Step::Blocked,
                    _ => Step::Progress,
                }
            }
        };
        Ok(step)
    }

    /// One splice out of everything in the pipe, if writable; true if
    /// bytes moved.
    fn splice_out(&mut self, pipe: PipeKey) -> io::Result<bool> {
        let mut ends = ends(self.conn, self.key, &mut self.reads_left)?;
        self.bufs.pipes.splice_out(pipe, &mut ends)
    }

    /// Bytes pending: write from the ring, read behind them into the ring.
    fn echo_through_ring(&mut self, key: RingKey) -> io::Result<Step> {
        let mut moved = self.write_ring(key)?;
        let Some(ring) = self.bufs.ring_mut(key) else {
            return Err(lost_ring());
        };
        if ring.is_empty() {
            self.conn.release(self.bufs);
            return Ok(Step::Progress);
        }
        // A full ring is the backpressure point: stop reading. `readable`
        // stays set, so once a write frees space the next step reads again
        // without waiting for an event that may never come.
        if self.conn.ready.readable && !ring.is_full() {
            self.reads_left -= 1;
            let free = ring.free();
            match ring.read_from(&mut self.conn.stream) {
                Ok(0) => {
                    log::trace!("connection {}: EOF", self.key);
                    self.peer_finished();
                    moved = true;
                }
                Ok(n) => {
                    log::trace!("connection {}: read {n} into ring", self.key);
                    self.conn.bytes_in += n as u64;
                    // Short read: drained (see `read`).
                    self.conn.ready.after_read(n, free);
                    moved = true;
                }
                Err(err) if would_block(&err) => {
                    log::trace!("connection {}: read WouldBlock", self.key);
                    self.conn.ready.read_would_block();
                }
                Err(err) => return Err(err),
            }
        }
        Ok(if moved { Step::Progress } else { Step::Blocked })
    }

    /// `Flushing`: write what is pending; close when it is all out.
    fn flush(&mut self) -> io::Result<Step> {
        let moved = match self.conn.pending {
            Pending::Nothing => false,
            Pending::Ring(ring) => self.write_ring(ring)?,
            // The pipe path never reads an EOF (see `echo_through_pipe`),
            // so a connection flushing holds no pipe; were it to, a splice
            // out empties it.
            Pending::Pipe(pipe) => self.splice_out(pipe)?,
        };
        if self.conn.pending(self.bufs) == 0 {
            // Protohackers Smoke Test: "once you've reached end-of-file on
            // your receiving side, and sent back all the data you've
            // received, close the socket so that the client knows you've
            // finished."
            self.set_state(State::Closed(CloseReason::Eof));
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
    fn discard(&mut self, reason: CloseReason) -> io::Result<Step> {
        if !self.conn.ready.readable {
            return Ok(Step::Blocked);
        }
        self.reads_left -= 1;
        match self.read()? {
            None => Ok(Step::Blocked),
            Some(0) => {
                self.set_state(State::Closed(reason));
                Ok(Step::Progress)
            }
            Some(n) => {
                log::trace!(
                    "connection {}: {n} bytes after the server's FIN, discarded",
                    self.key
                );
                self.abort();
                self.set_state(State::Closed(reason));
                Ok(Step::Progress)
            }
        }
    }

    /// Makes the close abortive, because the server is throwing away echo
    /// bytes: a FIN means "you have every byte" (docs/how-it-works.md,
    /// "Closing on the server's side"), so a close that loses bytes must not send one. With
    /// `SO_LINGER` 0 the close sends an RST, and the peer's next read or
    /// send fails with ECONNRESET (or EPIPE) instead of a clean EOF. One
    /// system call, only on a close that discards: a connection that ends
    /// normally costs none. If it fails the socket is already broken, and
    /// the peer has had its reset.
    fn abort(&mut self) {
        if let Err(err) = self.conn.stream.reset_on_close() {
            log::trace!("connection {}: SO_LINGER 0 failed: {err}", self.key);
        }
    }

    /// The peer shut down its sending side.
    fn peer_finished(&mut self) {
        // The pipe path never reads an EOF (see `echo_through_pipe`): only
        // the ring can hold bytes here.
        let empty = self.conn.pending(self.bufs) == 0;
        let next = if empty {
            State::Closed(CloseReason::Eof)
        } else {
            State::Flushing
        };
        self.set_state(next);
    }

    /// One read into the scratch buffer; `None` for WouldBlock. Keeps
    /// `readable` true only while more may be waiting (see
    /// [`Readiness::after_read`]).
    fn read(&mut self) -> io::Result<Option<usize>> {
        let buf = &mut self.bufs.scratch;
        match self.conn.stream.read(buf) {
            Ok(0) => {
                log::trace!("connection {}: EOF", self.key);
                Ok(Some(0))
            }
            Ok(n) => {
                log::trace!("connection {}: read {n}", self.key);
                self.conn.bytes_in += n as u64;
                // A short read means the kernel had no more bytes: the
                // socket is drained, and bytes arriving later bring a new
                // edge. Skipping the read that would only say WouldBlock
                // saves a system call per message.
                self.conn.ready.after_read(n, buf.len());
                Ok(Some(n))
            }
            Err(err) if would_block(&err) => {
                log::trace!("connection {}: read WouldBlock", self.key);
                self.conn.ready.read_would_block();
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }

    /// One write of the first `n` bytes of the scratch buffer; `None` for
    /// WouldBlock. A short write means the send buffer is full, so
    /// `writable` is cleared until the next edge.
    fn write_scratch(&mut self, n: usize) -> io::Result<Option<usize>> {
        match self.conn.stream.write(&self.bufs.scratch[..n]) {
            Ok(0) => Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => {
                self.conn.bytes_out += written as u64;
                if written < n {
                    log::trace!("connection {}: write {written} (short)", self.key);
                    self.conn.ready.writable = false;
                } else {
                    log::trace!("connection {}: write {written}", self.key);
                }
                Ok(Some(written))
            }
            Err(err) if would_block(&err) => {
                log::trace!("connection {}: write WouldBlock", self.key);
                self.conn.ready.writable = false;
                Ok(None)
            }
            // A signal cut the call short before anything was written:
            // nothing moved, the socket is still writable. The caller keeps
            // the bytes (in the ring) and the next step writes them.
            Err(err) if interrupted(&err) => Ok(Some(0)),
            Err(err) => Err(err),
        }
    }

    /// One vectored write from the ring, if writable; true if bytes moved
    /// (or a signal cut the call short, and it is worth another try).
    fn write_ring(&mut self, key: RingKey) -> io::Result<bool> {
        let Some(ring) = self.bufs.ring_mut(key) else {
            return Err(lost_ring());
        };
        if !self.conn.ready.writable || ring.is_empty() {
            return Ok(false);
        }
        let result = ring.write_to(&mut self.conn.stream);
        let emptied = ring.is_empty();
        let wrote = self.conn.ready.after_write_of_all(result, emptied)?;
        match wrote {
            // A signal cut the write short: nothing moved.
            Some(0) => {}
            Some(n) => {
                let short = if emptied { "" } else { " (short)" };
                log::trace!("connection {}: write {n} from ring{short}", self.key);
                self.conn.bytes_out += n as u64;
            }
            None => log::trace!("connection {}: write WouldBlock", self.key),
        }
        Ok(wrote.is_some())
    }
}

/// The connection's side of a splice step (see [`Ends`]), lent for it.
fn ends<'a, S: Stream>(
    conn: &'a mut Connection<S>,
    key: usize,
    reads_left: &'a mut usize,
) -> io::Result<Ends<'a>> {
    let Some(socket) = conn.stream.splice_fd() else {
        // Cannot happen: `attach_pipe` checked. Were it to, the
        // connection ends with an error rather than losing bytes.
        return Err(io::ErrorKind::Unsupported.into());
    };
    Ok(Ends {
        key,
        socket,
        ready: &mut conn.ready,
        bytes_in: &mut conn.bytes_in,
        bytes_out: &mut conn.bytes_out,
        reads_left,
    })
}
