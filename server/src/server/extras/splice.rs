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
//! Linux only; elsewhere [`Pipes`] never hands out a pipe and every
//! connection stays on the copying path.

#[cfg(target_os = "linux")]
pub use linux::Pipes;
#[cfg(not(target_os = "linux"))]
pub use other::Pipes;

/// A connection's part in splicing: copying, bulk between bursts, or
/// holding one of the pool's pipes. Two bytes, so that it fits in padding
/// of `Connection` and idle connections stay as small as before (an enum
/// with a key would take four).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Splicing(u16);

impl Splicing {
    /// Echoing by copying (scratch buffer, ring): not bulk, or no pipe was
    /// free.
    pub const COPYING: Splicing = Splicing(0);
    /// Bulk, between bursts: it holds no pipe, but its next read takes one
    /// if the pool has one free.
    pub const BULK: Splicing = Splicing(u16::MAX);

    /// Holding the pool's pipe `key`; `None` for a key that does not fit,
    /// which [`MAX_PIPES`] rules out.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fn holding(key: usize) -> Option<Splicing> {
        u16::try_from(key + 1)
            .ok()
            .filter(|&n| n != Splicing::BULK.0)
            .map(Splicing)
    }

    /// The pool's key of the pipe it holds, if it holds one.
    fn key(self) -> Option<usize> {
        match self {
            Splicing::COPYING | Splicing::BULK => None,
            Splicing(n) => Some(usize::from(n) - 1),
        }
    }

    /// Whether it holds a pipe: then its pending bytes are in the pipe.
    pub fn holds_pipe(self) -> bool {
        self.key().is_some()
    }
}

/// Most pipes open at once, in use or spare. Each costs two descriptors
/// (counted in the descriptor budget, see `server::RESERVED_DESCRIPTORS`)
/// and up to `--buffer` of pinned kernel memory. One core saturates with a
/// handful of bulk streams, so beyond a few dozen a pipe saves little CPU
/// per stream; and 64 pipes of the default 64 KiB (4 MiB, 1,024 pages) stay
/// far below Linux's per-user pipe allowance (`fs.pipe-user-pages-soft`,
/// 16,384 pages), past which `F_SETPIPE_SZ` would be refused. More bulk
/// connections than this fall back to the ring path, which is just as
/// correct.
pub const MAX_PIPES: usize = 64;

/// How many pipes a process whose open-files limit is `limit` may have
/// open: [`MAX_PIPES`], but no more than one (two descriptors) for every 16
/// descriptors beyond `server::RESERVED_DESCRIPTORS`, so that a small limit
/// is left to connections (a limit of 64 gets 2 pipes, 1,024 gets 62).
/// The connection limit leaves these descriptors free.
pub fn pipes_for(limit: u64) -> usize {
    let share = limit.saturating_sub(crate::server::RESERVED_DESCRIPTORS) / 16;
    usize::try_from(share).map_or(MAX_PIPES, |share| share.min(MAX_PIPES))
}

/// How many empty pipes the pool keeps open for the next bulk connection,
/// so that a stream going quiet and busy again does not cost a `pipe2` and
/// an `fcntl` each time; the rest are closed, giving back the descriptors.
pub const SPARE_PIPES: usize = 8;

#[cfg(target_os = "linux")]
mod linux {
    use super::{SPARE_PIPES, Splicing};
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
        /// connection was worth a pipe and stays [`Splicing::BULK`].
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

        /// Bytes spliced in since it was attached.
        pub fn moved(&self) -> u64 {
            self.moved
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
                    if err.kind() == io::ErrorKind::WouldBlock && self.len > 0 {
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

    /// The loop's pipes: those attached to connections, by [`Splicing`] key, and
    /// a few empty spares.
    pub struct Pipes {
        /// False with `--no-splice`: no pipe is ever asked for, and a bulk
        /// connection copying is not counted as a fallback.
        enabled: bool,
        /// Most pipes open at once: [`pipes_for`](super::pipes_for) the
        /// open-files limit, lowered to those open if the kernel refuses one.
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
        /// A pool for buffers of `capacity` bytes; `enabled` false never
        /// opens a pipe (`--no-splice`).
        pub fn new(capacity: usize, enabled: bool) -> Pipes {
            // The limit as it is now: the server raised it before this.
            let limit = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
            Pipes::with_max(capacity, enabled, super::pipes_for(limit))
        }

        /// A pool of at most `max` pipes.
        pub(super) fn with_max(capacity: usize, enabled: bool, max: usize) -> Pipes {
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
        pub fn attach(&mut self) -> Option<Splicing> {
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
            let key = self.attached.insert(pipe);
            // Keys stay below `max`, far below u16::MAX, so this holds; a
            // key that did not fit would close the pipe, not panic.
            let held = Splicing::holding(key);
            if held.is_none() {
                self.attached.remove(key);
            }
            held
        }

        /// The pipe a connection holds.
        pub fn get(&self, held: Splicing) -> Option<&Pipe> {
            self.attached.get(held.key()?)
        }

        /// The pipe a connection holds, to move bytes through.
        pub fn get_mut(&mut self, held: Splicing) -> Option<&mut Pipe> {
            self.attached.get_mut(held.key()?)
        }

        /// A connection gives its pipe back. An empty one is kept as a spare
        /// (if there is room) with its counters reset; one with bytes in it
        /// (a reset or a server close in the middle of a stream) is closed,
        /// so no stale byte can reach the next connection.
        pub fn detach(&mut self, held: Splicing) {
            let Some(mut pipe) = held.key().and_then(|key| self.attached.try_remove(key)) else {
                return;
            };
            if pipe.is_empty() && self.spare.len() < SPARE_PIPES {
                pipe.maybe_full = false;
                pipe.moved = 0;
                self.spare.push(pipe);
            }
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
    use super::Splicing;
    use std::io;

    /// No pipes here: an empty type, so code holding one cannot run.
    pub enum Pipe {}

    #[allow(clippy::unused_self, missing_docs)]
    impl Pipe {
        pub fn len(&self) -> usize {
            match *self {}
        }
        pub fn is_empty(&self) -> bool {
            match *self {}
        }
        pub fn moved(&self) -> u64 {
            match *self {}
        }
        pub fn may_fill(&self, _capacity: usize) -> bool {
            match *self {}
        }
        pub fn fill_from(
            &mut self,
            _socket: std::os::fd::BorrowedFd<'_>,
            _capacity: usize,
        ) -> io::Result<usize> {
            match *self {}
        }
        pub fn drain_to(&mut self, _socket: std::os::fd::BorrowedFd<'_>) -> io::Result<usize> {
            match *self {}
        }
    }

    /// A pool that never has a pipe.
    pub struct Pipes {
        pub spliced: u64,
        pub fallbacks: u64,
    }

    #[allow(missing_docs)]
    impl Pipes {
        pub fn new(_capacity: usize, _enabled: bool) -> Pipes {
            Pipes {
                spliced: 0,
                fallbacks: 0,
            }
        }
        pub fn limit(&self) -> usize {
            0
        }
        pub fn attach(&mut self) -> Option<Splicing> {
            None
        }
        pub fn get(&self, _held: Splicing) -> Option<&Pipe> {
            None
        }
        pub fn get_mut(&mut self, _held: Splicing) -> Option<&mut Pipe> {
            None
        }
        pub fn detach(&mut self, _held: Splicing) {}
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_PIPES, pipes_for};

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

        let mut off = super::Pipes::with_max(1 << 16, false, MAX_PIPES);
        assert!(off.attach().is_none());
        assert_eq!(off.fallbacks, 0);

        let mut one = super::Pipes::with_max(1 << 16, true, 1);
        let held = one.attach().expect("a pipe");
        assert!(held.holds_pipe());
        assert!(one.attach().is_none(), "a second pipe beyond the limit");
        assert_eq!(one.fallbacks, 1);
    }

    #[test]
    fn pipes_take_a_sixteenth_of_the_descriptors_beyond_the_reserve_at_most() {
        assert_eq!(pipes_for(0), 0);
        assert_eq!(pipes_for(32), 0);
        assert_eq!(pipes_for(64), 2);
        assert_eq!(pipes_for(1024), 62);
        assert_eq!(pipes_for(1056), MAX_PIPES);
        assert_eq!(pipes_for(u64::MAX), MAX_PIPES);
    }
}
