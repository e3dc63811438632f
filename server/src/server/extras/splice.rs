//! Pipes for `splice(2)`: echoing a bulk stream without copying its bytes.
//!
//! Why: on a one-connection stream nearly all of echod's CPU time is the
//! kernel, and most of that is two copies of every byte: out of the socket
//! into our buffer on `recv`, and back into the socket on `send`. Nothing in
//! user space is left to trim. `splice(2)` moves bytes between a descriptor
//! and a pipe by handing over references to the kernel's pages, so
//! socket → pipe → the same socket echoes without either copy (HAProxy
//! forwards bulk traffic the same way). A pipe costs two descriptors and
//! pinned kernel pages, so only connections that show they are bulk (a read
//! filled the whole buffer) get one, and only while they have bytes moving:
//! an empty pipe goes back to a small pool, so idle connections hold none.
//!
//! While attached, the pipe *is* the connection's buffer: it never holds
//! more than the ring capacity (`--buffer`), so memory per connection stays
//! bounded as before, and a connection has bytes in its ring or in its pipe,
//! never both, so order is kept.
//!
//! The one subtlety is that the kernel counts a pipe's room in *slots*, one
//! page reference each, not in bytes. Bytes from a TCP socket often arrive
//! as pieces of pages, so a pipe can be full with far fewer bytes in it
//! than its size. Hence a splice from the socket that says WouldBlock is
//! ambiguous: the socket is empty, *or* the pipe has no free slot. Only
//! with the pipe empty is it certainly the socket (see `Pipe::may_fill`),
//! and even then not certainly drained: a splice stops at TCP urgent data
//! (`MSG_OOB`), which a read steps over, saying WouldBlock, or 0 if the FIN
//! is behind it. So a splice that moves nothing is never taken for "drained"
//! or for EOF: once the pipe is empty, an ordinary read decides.
//!
//! The connection hands a bulk stream over to [`Pipes::echo`] from one
//! place (`echo_through_pipe` in the connection's turn) and gets back a
//! [`PipeStep`]; this module knows nothing of connections.
//!
//! Linux only; elsewhere [`Pipes`] never hands out a pipe and every
//! connection stays on the copying path.

use std::io;
use std::os::fd::BorrowedFd;

use crate::net::Readiness;

#[cfg(target_os = "linux")]
pub use linux::Pipes;
#[cfg(not(target_os = "linux"))]
pub use other::Pipes;

/// Which of the pool's pipes a connection holds: a two-byte key rather
/// than the pipe itself, so that the connection stays small.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PipeKey(u16);

impl PipeKey {
    /// The key for the pool's slot `slot`; `None` for one that does not
    /// fit, which the pool's limit (far below `u16::MAX`) rules out.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fn new(slot: usize) -> Option<PipeKey> {
        u16::try_from(slot).ok().map(PipeKey)
    }

    fn slot(self) -> usize {
        usize::from(self.0)
    }
}

/// How many empty pipes the pool keeps open for the next bulk connection,
/// so that a stream going quiet and busy again does not cost a `pipe2` and
/// an `fcntl` each time; the rest are closed, giving back the descriptors.
pub const SPARE_PIPES: usize = 8;

/// The connection's side of a splice step: what it knows of its socket and
/// the counters the step adds to.
pub struct Ends<'a> {
    /// The connection's slab key, for trace lines.
    pub key: usize,
    /// The connection's socket.
    pub socket: BorrowedFd<'a>,
    /// What the socket is known to be ready for; kept as the copying path
    /// keeps it, so that readiness is never lost.
    pub ready: &'a mut Readiness,
    /// Bytes read from the peer.
    pub bytes_in: &'a mut u64,
    /// Bytes written back to the peer.
    pub bytes_out: &'a mut u64,
    /// Reads the turn may still make: a splice in counts as one.
    pub reads_left: &'a mut usize,
}

/// What one step of echoing through a pipe came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PipeStep {
    /// Bytes moved (or a call was cut short by a signal): step again.
    Progress,
    /// Nothing moves until the next event.
    Blocked,
    /// The pipe is empty and should go back to the pool. `moved`: bytes
    /// went out in this step. `read`: nothing could be spliced in, which
    /// only a read can explain (the socket drained, at its EOF, or at
    /// urgent data): the connection reads next, on the copying path, and
    /// that read takes this splice's place in the turn's budget.
    Empty {
        /// Bytes went out in this step.
        moved: bool,
        /// A read should decide what the socket holds.
        read: bool,
    },
}

/// What a write of everything in the pipe tells, as for the ring: a short
/// one means the send buffer is full. `Some(n)`: `n` bytes out (0: a
/// signal cut it short, still writable); `None`: WouldBlock.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn wrote(
    ends: &mut Ends<'_>,
    result: io::Result<usize>,
    emptied: bool,
) -> io::Result<Option<usize>> {
    let wrote = ends.ready.after_write_of_all(result, emptied)?;
    match wrote {
        // A signal cut the write short: nothing moved.
        Some(0) => {}
        Some(n) => {
            let short = if emptied { "" } else { " (short)" };
            log::trace!("connection {}: write {n} from pipe{short}", ends.key);
            *ends.bytes_out += n as u64;
        }
        None => log::trace!("connection {}: write WouldBlock", ends.key),
    }
    Ok(wrote)
}

#[cfg(target_os = "linux")]
mod linux {
    use super::{Ends, PipeKey, PipeStep, SPARE_PIPES, wrote};
    use crate::net::{interrupted, would_block};
    use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
    use nix::unistd::pipe2;
    use slab::Slab;
    use std::io;
    use std::os::fd::{BorrowedFd, OwnedFd};

    /// One pipe and what the connection holding it knows of it.
    pub struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
        /// Bytes spliced in and not yet spliced out: exact, because
        /// `splice` returns how many it moved.
        len: usize,
        /// A splice in moved nothing with bytes in the pipe: the socket is
        /// empty, at its end or at urgent data, or the pipe is out of
        /// slots, and we cannot tell which.
        /// Set, no splice in is tried until a splice out has made room, so
        /// the connection waits for writability instead of spinning.
        maybe_full: bool,
        /// Bytes spliced in since it was attached: at detach, whether the
        /// connection was worth a pipe and stays bulk (see [`Pipes::detach`]).
        moved: u64,
    }

    impl Pipe {
        /// Bytes in the pipe.
        pub fn len(&self) -> usize {
            self.len
        }

        /// Whether it holds no bytes.
        pub fn is_empty(&self) -> bool {
            self.len == 0
        }

        /// Whether a splice in may move bytes: there is room by our count,
        /// and the last splice in did not leave us unsure whether the pipe
        /// ran out of slots.
        pub fn may_fill(&self, capacity: usize) -> bool {
            self.len < capacity && !self.maybe_full
        }

        /// Splices up to the free room (`capacity` less what is in the
        /// pipe) from `socket` into the pipe. A short count says nothing
        /// certain: the socket may be drained, or the pipe out of slots, so
        /// the caller keeps the socket readable and lets the next call
        /// tell. Nor does moving nothing: `Ok(0)` is the peer's EOF *or*
        /// urgent data with the FIN behind it (a splice stops at TCP urgent
        /// data, which a read steps over), and WouldBlock is a drained
        /// socket, urgent data, or a pipe out of slots. Either way, with
        /// bytes in the pipe, the pipe is marked maybe full (see
        /// [`Pipe::may_fill`]).
        pub fn fill_from(&mut self, socket: BorrowedFd<'_>, capacity: usize) -> io::Result<usize> {
            let room = capacity.saturating_sub(self.len);
            if room == 0 {
                // A splice of 0 bytes returns 0, which would read as EOF.
                return Err(io::ErrorKind::WouldBlock.into());
            }
            match splice(socket, None, &self.write, None, room, flags()) {
                Ok(n) => {
                    if n == 0 && self.len > 0 {
                        self.maybe_full = true;
                    }
                    self.len += n;
                    self.moved += n as u64;
                    Ok(n)
                }
                Err(errno) => {
                    let err = io::Error::from(errno);
                    if would_block(&err) && self.len > 0 {
                        self.maybe_full = true;
                    }
                    Err(err)
                }
            }
        }

        /// Splices everything in the pipe out to `socket`; returns how much
        /// the socket took. Less than all means its send buffer is full.
        pub fn drain_to(&mut self, socket: BorrowedFd<'_>) -> io::Result<usize> {
            let n = splice(&self.read, None, socket, None, self.len, flags())?;
            self.len -= n;
            if n > 0 {
                self.maybe_full = false;
            }
            Ok(n)
        }
    }

    /// Never block (the pipe and socket are nonblocking too, but the flag
    /// also covers the pipe side of the call); move pages rather than copy.
    fn flags() -> SpliceFFlags {
        SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE
    }

    /// The loop's pipes: those attached to connections, by [`PipeKey`],
    /// and a few empty spares.
    pub struct Pipes {
        /// False with `--no-splice`: no pipe is ever asked for, and a bulk
        /// connection copying is not counted as a fallback.
        enabled: bool,
        /// Most pipes open at once: what the descriptor budget allows
        /// (`pipes_for` the open-files limit), lowered to those open if
        /// the kernel refuses one.
        max: usize,
        /// The pipe size asked of the kernel (the ring capacity).
        capacity: usize,
        attached: Slab<Pipe>,
        spare: Vec<Pipe>,
        /// Bytes echoed through pipes, for the stats line.
        pub spliced: u64,
        /// Times a bulk connection found no pipe (all in use, or the kernel
        /// refused one) and stayed on the copying path.
        pub fallbacks: u64,
    }

    impl Pipes {
        /// A pool of at most `max` pipes for buffers of `capacity` bytes;
        /// `enabled` false never opens a pipe (`--no-splice`).
        pub fn with_max(capacity: usize, enabled: bool, max: usize) -> Pipes {
            Pipes {
                enabled,
                max: if enabled { max } else { 0 },
                capacity,
                attached: Slab::new(),
                spare: Vec::new(),
                spliced: 0,
                fallbacks: 0,
            }
        }

        /// Most pipes it opens at once.
        pub fn limit(&self) -> usize {
            self.max
        }

        /// An empty pipe for a connection, from the spares or newly opened;
        /// `None` if all are in use or the kernel will not give one, and
        /// the connection goes on copying.
        pub fn attach(&mut self) -> Option<PipeKey> {
            if !self.enabled {
                return None; // --no-splice
            }
            let open = self.attached.len() + self.spare.len();
            let pipe = match self.spare.pop() {
                Some(pipe) => pipe,
                None if open < self.max => match self.open() {
                    Ok(pipe) => pipe,
                    Err(err) => {
                        log::debug!("no pipe for a bulk connection ({err}); copying instead");
                        self.fallbacks += 1;
                        return None;
                    }
                },
                None => {
                    self.fallbacks += 1;
                    return None;
                }
            };
            let slot = self.attached.insert(pipe);
            // Slots stay below `max`, far below u16::MAX, so this holds; a
            // slot that did not fit would close the pipe, not panic.
            let held = PipeKey::new(slot);
            if held.is_none() {
                self.attached.remove(slot);
            }
            held
        }

        /// Bytes in the pipe `held`.
        pub fn len(&self, held: PipeKey) -> usize {
            self.attached.get(held.slot()).map_or(0, Pipe::len)
        }

        /// A connection gives its pipe back; returns whether it moved a
        /// buffer's worth since it was attached, which makes its connection
        /// bulk (its next burst takes a pipe at once). An empty pipe is kept
        /// as a spare (if there is room) with its counters reset; one with
        /// bytes in it (a reset or a server close in the middle of a
        /// stream) is closed, so no stale byte can reach the next connection.
        pub fn detach(&mut self, held: PipeKey) -> bool {
            let Some(mut pipe) = self.attached.try_remove(held.slot()) else {
                return false;
            };
            let bulk = pipe.moved >= self.capacity as u64;
            if pipe.is_empty() && self.spare.len() < SPARE_PIPES {
                pipe.maybe_full = false;
                pipe.moved = 0;
                self.spare.push(pipe);
            }
            bulk
        }

        /// One splice out of everything in the pipe `held`, if the socket
        /// is writable; true if bytes moved (or it is worth another try).
        pub fn splice_out(&mut self, held: PipeKey, ends: &mut Ends<'_>) -> io::Result<bool> {
            let Some(pipe) = self.attached.get_mut(held.slot()) else {
                return Ok(false);
            };
            if !ends.ready.writable || pipe.is_empty() {
                return Ok(false);
            }
            let result = pipe.drain_to(ends.socket);
            let emptied = pipe.is_empty();
            if let Ok(n) = result {
                self.spliced += n as u64;
            }
            Ok(wrote(ends, result, emptied)?.is_some())
        }

        /// One step of a bulk connection whose pending bytes are in the
        /// pipe `held`: splice them out, then splice more in behind them;
        /// no byte crosses into user space.
        ///
        /// Edge-triggered readiness as on the copying path, with one
        /// difference: a pipe can run out of slots before it holds
        /// `capacity` bytes (see the module docs), so a short splice in
        /// never means "socket drained" here (it costs one more call, made
        /// in the next step), and a splice in that moves nothing
        /// (WouldBlock, or 0) means neither "drained" nor EOF: TCP urgent
        /// data stops a splice too. With bytes in the pipe `readable` stays
        /// set and the pipe is marked maybe full: the next splice in waits
        /// until a splice out has made room, so readiness is never lost and
        /// the loop does not spin on a full pipe. With the pipe empty, it
        /// goes back to the pool ([`PipeStep::Empty`]) and an ordinary read
        /// decides; so the EOF, too, is always read on the copying path.
        pub fn echo(&mut self, held: PipeKey, mut ends: Ends<'_>) -> io::Result<PipeStep> {
            // Out first: what is in the pipe goes before anything read now.
            let mut moved = self.splice_out(held, &mut ends)?;
            let capacity = self.capacity;
            let Some(pipe) = self.attached.get_mut(held.slot()) else {
                // Cannot happen: a connection holds only a key it was
                // given. Were it to, it ends with an error rather than
                // losing bytes.
                return Err(io::ErrorKind::Unsupported.into());
            };
            if ends.ready.readable && pipe.may_fill(capacity) {
                *ends.reads_left -= 1;
                let nothing_moved = match pipe.fill_from(ends.socket, capacity) {
                    Ok(0) => true,
                    Ok(n) => {
                        // Short or not, `readable` stays set: a short count
                        // may be a pipe out of slots, and the next call tells.
                        log::trace!("connection {}: spliced in {n}", ends.key);
                        *ends.bytes_in += n as u64;
                        moved = true;
                        false
                    }
                    Err(err) if would_block(&err) => true,
                    Err(err) if interrupted(&err) => {
                        moved = true;
                        false
                    }
                    Err(err) => return Err(err),
                };
                if nothing_moved && pipe.is_empty() {
                    // An empty pipe has every slot free, so it is the
                    // socket: drained, at its EOF, or stopped at urgent data
                    // (a byte sent with MSG_OOB), which splice never moves
                    // past (it says 0 if the FIN is behind it, WouldBlock if
                    // not) and a read steps over. Only a read can tell, and
                    // it takes the splice's place in the turn's budget. With
                    // the pipe empty and given back first, it cannot
                    // reorder bytes.
                    log::trace!("connection {}: nothing to splice in, pipe empty", ends.key);
                    *ends.reads_left += 1;
                    return Ok(PipeStep::Empty { moved, read: true });
                }
                if nothing_moved {
                    // With bytes in the pipe, `fill_from` marked it maybe
                    // full: no splice in until a splice out has made room,
                    // and once the pipe is empty the read above decides.
                    log::trace!(
                        "connection {}: nothing to splice in, pipe maybe full",
                        ends.key
                    );
                }
            }
            // Empty and nothing to read: the pipe goes back to the pool, so
            // a quiet connection holds none.
            if pipe.is_empty() && !ends.ready.readable {
                return Ok(PipeStep::Empty { moved, read: false });
            }
            Ok(if moved {
                PipeStep::Progress
            } else {
                PipeStep::Blocked
            })
        }
        fn open(&mut self) -> io::Result<Pipe> {
            let (read, write) = pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
            // The pipe is the connection's buffer, so it gets the ring's
            // size (the kernel rounds up to a power of two of pages; we
            // never put more than `capacity` bytes in). Refused above
            // `fs.pipe-max-size` (1 MiB by default) or past the user's pipe
            // allowance: then no pipe, rather than one whose room we would
            // misjudge, and no more attempts (each would cost three system
            // calls for the same answer): the pool stays at what it has.
            let size = i32::try_from(self.capacity).unwrap_or(i32::MAX);
            if let Err(err) = fcntl(&write, FcntlArg::F_SETPIPE_SZ(size)) {
                self.max = self.attached.len() + self.spare.len();
                log::info!(
                    "the kernel refused a pipe of {} bytes ({err}), so no more pipes are \
                     opened ({} open) and other bulk connections are echoed by copying; a \
                     --buffer no larger than /proc/sys/fs/pipe-max-size lets them splice",
                    self.capacity,
                    self.max
                );
                return Err(err.into());
            }
            Ok(Pipe {
                read,
                write,
                len: 0,
                maybe_full: false,
                moved: 0,
            })
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod other {
    use super::{Ends, PipeKey, PipeStep};
    use std::io;

    /// A pool that never has a pipe: `attach` always says no, so no
    /// connection ever holds a [`PipeKey`] here.
    pub struct Pipes {
        /// Bytes echoed through pipes: none here.
        pub spliced: u64,
        /// Bulk connections that found no pipe: none are counted here.
        pub fallbacks: u64,
    }

    #[allow(missing_docs, clippy::unused_self)]
    impl Pipes {
        pub fn with_max(_capacity: usize, _enabled: bool, _max: usize) -> Pipes {
            Pipes {
                spliced: 0,
                fallbacks: 0,
            }
        }
        pub fn limit(&self) -> usize {
            0
        }
        pub fn attach(&mut self) -> Option<PipeKey> {
            None
        }
        pub fn len(&self, _held: PipeKey) -> usize {
            0
        }
        pub fn detach(&mut self, _held: PipeKey) -> bool {
            false
        }
        pub fn splice_out(&mut self, _held: PipeKey, _ends: &mut Ends<'_>) -> io::Result<bool> {
            Err(io::ErrorKind::Unsupported.into())
        }
        pub fn echo(&mut self, _held: PipeKey, _ends: Ends<'_>) -> io::Result<PipeStep> {
            Err(io::ErrorKind::Unsupported.into())
        }
    }
}

#[cfg(test)]
mod tests {
    /// A pool that may open no pipe (a tiny open-files limit, or the kernel
    /// refused one) counts each bulk connection it turns away; with
    /// `--no-splice` nothing is a fallback.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_pool_without_room_counts_fallbacks_and_no_splice_does_not() {
        let mut none_allowed = super::Pipes::with_max(1 << 16, true, 0);
        assert!(none_allowed.attach().is_none());
        assert!(none_allowed.attach().is_none());
        assert_eq!(none_allowed.fallbacks, 2);

        let mut off = super::Pipes::with_max(1 << 16, false, 64);
        assert!(off.attach().is_none());
        assert_eq!(off.fallbacks, 0);

        let mut one = super::Pipes::with_max(1 << 16, true, 1);
        let held = one.attach().expect("a pipe");
        assert_eq!(one.len(held), 0);
        assert!(one.attach().is_none(), "a second pipe beyond the limit");
        assert_eq!(one.fallbacks, 1);
    }
}
