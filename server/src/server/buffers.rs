//! `Buffers`: what one event loop shares among its connections. Most
//! echoes need no buffer of their own: they go through the scratch buffer
//! and straight back out. Only bytes a socket refused need keeping, in a
//! ring taken from the spares (or, for bulk streams on Linux, in a pipe of
//! the pool), and given back as soon as it drains.
//!
//! A connection holds a key to its ring, as it holds one to its pipe, not
//! the ring itself: four bytes where a pointer takes eight, so that its
//! `Pending` fits in eight bytes, tag included, and an idle connection in
//! 48.

use std::io;
use std::ops::Range;

use slab::Slab;

use super::extras::splice::Pipes;
use crate::ring::Ring;

/// Which of the loop's rings holds a connection's pending bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingKey(u32);

/// The buffers one event loop shares among its connections.
pub struct Buffers {
    /// Where a connection with nothing pending reads; its length is the
    /// ring capacity, so whatever the socket refuses of an echo always fits
    /// in a fresh ring.
    pub(super) scratch: Box<[u8]>,
    /// The rings connections hold, by [`RingKey`].
    rings: Slab<Ring>,
    /// Rings given back by drained connections, kept for the next one, so
    /// that reuse allocates nothing.
    pub(super) spare: Vec<Ring>,
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
            rings: Slab::new(),
            spare: Vec::new(),
            spares_kept: (SPARE_RING_BYTES / capacity.max(1)).min(SPARE_RINGS),
            pipes: Pipes::with_max(capacity, false, 0),
        }
    }

    /// The same buffers, with bulk connections echoed through at most
    /// `pipes` pipes if `on` (and the system has `splice(2)`).
    pub fn splicing(mut self, on: bool, pipes: usize) -> Buffers {
        self.pipes = Pipes::with_max(self.scratch.len(), on, pipes);
        self
    }

    /// The capacity of each connection's ring.
    pub fn ring_capacity(&self) -> usize {
        self.scratch.len()
    }

    /// A ring for a connection's pending bytes (a spare if there is one),
    /// holding the scratch buffer's bytes `keep`: what the socket refused
    /// of an echo. `None` only for a key past `u32::MAX`, which the
    /// connection limit (below `i32::MAX`, as open files are) rules out.
    pub(super) fn take_ring(&mut self, keep: Range<usize>) -> Option<RingKey> {
        let mut ring = self
            .spare
            .pop()
            .unwrap_or_else(|| Ring::with_capacity(self.scratch.len()));
        ring.push(&self.scratch[keep]);
        let slot = self.rings.insert(ring);
        match u32::try_from(slot) {
            Ok(key) => Some(RingKey(key)),
            Err(_) => {
                self.rings.try_remove(slot);
                None
            }
        }
    }

    /// The ring `key`.
    pub(super) fn ring(&self, key: RingKey) -> Option<&Ring> {
        self.rings.get(key.slot())
    }

    /// The ring `key`, to read into or write from.
    pub(super) fn ring_mut(&mut self, key: RingKey) -> Option<&mut Ring> {
        self.rings.get_mut(key.slot())
    }

    /// A drained (or abandoned) connection's ring, kept as a spare if
    /// there is room.
    pub(super) fn give_back(&mut self, key: RingKey) {
        let Some(mut ring) = self.rings.try_remove(key.slot()) else {
            return;
        };
        if self.spare.len() < self.spares_kept {
            ring.clear();
            self.spare.push(ring);
        }
    }
}

/// The error for a ring key that names no ring: a bug (a key kept after
/// its ring was given back), never input. The connection closes with an
/// error, and a reset if it held bytes, rather than going on with a key
/// that may soon name another connection's ring. Debug builds stop here.
pub(super) fn lost_ring() -> io::Error {
    debug_assert!(false, "a connection holds a ring key that names no ring");
    io::Error::other("a connection's ring key names no ring")
}

#[cfg(test)]
impl Buffers {
    /// How many rings connections hold now.
    pub(super) fn rings_held(&self) -> usize {
        self.rings.len()
    }
}

impl RingKey {
    fn slot(self) -> usize {
        // Lossless: usize has at least 32 bits wherever mio runs.
        self.0 as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spare rings are bounded in bytes, not only in number: big rings
    /// (`--buffer 16M`) left behind by a burst of slow readers are freed, not
    /// kept by the dozen.
    #[test]
    fn spare_rings_are_bounded_in_bytes() {
        let keep = |capacity: usize, rings: usize| {
            let mut bufs = Buffers::new(capacity);
            let taken: Vec<_> = (0..rings).filter_map(|_| bufs.take_ring(0..1)).collect();
            assert_eq!(taken.len(), rings);
            for ring in taken {
                bufs.give_back(ring);
            }
            bufs.spare.len()
        };
        // The default 64 KiB: 64 rings, as many as the count allows.
        assert_eq!(keep(64 * 1024, 70), 64);
        assert_eq!(64 * 64 * 1024, SPARE_RING_BYTES);
        // Half the byte budget each: two are kept.
        assert_eq!(keep(SPARE_RING_BYTES / 2, 3), 2);
        // Bigger than the budget: none.
        assert_eq!(keep(SPARE_RING_BYTES + 1, 2), 0);
    }
}
