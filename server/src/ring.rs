//! `Ring`: a fixed-capacity byte ring buffer that holds the echo bytes a
//! socket would not take yet.
//!
//! It is storage plus a read position plus a length. The filled bytes are at
//! most two contiguous slices (before and after the wrap), and so is the free
//! space; vectored I/O (`readv`/`writev`) moves both halves in one system
//! call. Nothing here does I/O by itself beyond calling the `Read`/`Write`
//! it is handed, so it is tested without sockets.
//!
//! ```text
//!  storage: [ f f f . . . . . . f f f f ]     f = filled, . = free
//!                  ^ end          ^ start
//!  filled halves: storage[start..]  and  storage[..end]
//!  free half:     storage[end..start]
//! ```

use std::io::{self, IoSlice, IoSliceMut, Read, Write};

/// A byte ring buffer of fixed capacity.
pub struct Ring {
    /// The bytes; its length is the capacity and never changes.
    storage: Box<[u8]>,
    /// Index of the oldest filled byte (`0..capacity`, or 0 when capacity is 0).
    start: usize,
    /// How many bytes are filled (`0..=capacity`).
    len: usize,
}

impl Ring {
    /// A ring that can hold `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Ring {
        Ring {
            storage: vec![0; capacity].into_boxed_slice(),
            start: 0,
            len: 0,
        }
    }

    /// How many bytes it can hold in all.
    pub fn capacity(&self) -> usize {
        self.storage.len()
    }

    /// How many bytes it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when no more bytes fit.
    pub fn is_full(&self) -> bool {
        self.len == self.capacity()
    }

    /// How many more bytes fit.
    pub fn free(&self) -> usize {
        self.capacity() - self.len
    }

    /// Forgets all bytes (the storage is kept for reuse).
    pub fn clear(&mut self) {
        self.start = 0;
        self.len = 0;
    }

    /// Index one past the newest filled byte, wrapped; where new bytes go.
    fn end(&self) -> usize {
        let end = self.start + self.len;
        if end >= self.capacity() {
            end - self.capacity()
        } else {
            end
        }
    }

    /// The filled bytes, oldest first, as two slices (the second is empty
    /// unless the bytes wrap around the end of the storage).
    pub fn filled(&self) -> (&[u8], &[u8]) {
        if self.start + self.len <= self.capacity() {
            (&self.storage[self.start..self.start + self.len], &[])
        } else {
            let (wrapped, tail) = self.storage.split_at(self.start);
            (tail, &wrapped[..self.end()])
        }
    }

    /// The free space, in the order bytes will be stored, as two slices.
    fn free_mut(&mut self) -> (&mut [u8], &mut [u8]) {
        let end = self.end();
        if end < self.start || self.is_full() {
            // Free space is the single gap between end and start.
            let gap = self.free();
            (&mut self.storage[end..end + gap], &mut [])
        } else {
            // Free space runs from end to the storage's end, then wraps to
            // the start of the storage up to `start`.
            let (head, tail) = self.storage.split_at_mut(end);
            (tail, &mut head[..self.start])
        }
    }

    /// Marks `n` bytes, just written into the free space, as filled.
    fn commit(&mut self, n: usize) {
        debug_assert!(n <= self.free(), "committed more than the free space");
        self.len += n;
    }

    /// Forgets the `n` oldest bytes (they have been sent).
    pub fn consume(&mut self, n: usize) {
        assert!(n <= self.len, "consumed {n} bytes of {}", self.len);
        self.len -= n;
        self.start = if self.len == 0 {
            // Start over at the front so the next bytes are contiguous.
            0
        } else {
            (self.start + n) % self.capacity()
        };
    }

    /// Copies as much of `bytes` as fits; returns how many were taken.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let (first, second) = self.free_mut();
        let a = first.len().min(bytes.len());
        first[..a].copy_from_slice(&bytes[..a]);
        let b = second.len().min(bytes.len() - a);
        second[..b].copy_from_slice(&bytes[a..a + b]);
        self.commit(a + b);
        a + b
    }

    /// Copies the oldest bytes into `out` and forgets them; returns how many.
    pub fn pop(&mut self, out: &mut [u8]) -> usize {
        let (first, second) = self.filled();
        let a = first.len().min(out.len());
        out[..a].copy_from_slice(&first[..a]);
        let b = second.len().min(out.len() - a);
        out[a..a + b].copy_from_slice(&second[..b]);
        self.consume(a + b);
        a + b
    }

    /// Reads once from `source` into the free space (both halves in one
    /// vectored read) and returns what `read` returned.
    ///
    /// The caller must not call this on a full ring: a read into no space
    /// returns `Ok(0)`, which would look like end-of-file.
    pub fn read_from<R: Read + ?Sized>(&mut self, source: &mut R) -> io::Result<usize> {
        debug_assert!(!self.is_full(), "read into a full ring looks like EOF");
        let (first, second) = self.free_mut();
        let n = if second.is_empty() {
            source.read(first)?
        } else {
            source.read_vectored(&mut [IoSliceMut::new(first), IoSliceMut::new(second)])?
        };
        self.commit(n);
        Ok(n)
    }

    /// Writes once from the filled bytes to `sink` (both halves in one
    /// vectored write), forgets what was written and returns how much.
    pub fn write_to<W: Write + ?Sized>(&mut self, sink: &mut W) -> io::Result<usize> {
        let (first, second) = self.filled();
        let n = if second.is_empty() {
            sink.write(first)?
        } else {
            sink.write_vectored(&[IoSlice::new(first), IoSlice::new(second)])?
        };
        self.consume(n);
        Ok(n)
    }
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("capacity", &self.capacity())
            .field("start", &self.start)
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    /// The filled bytes as one vector, for assertions.
    fn contents(ring: &Ring) -> Vec<u8> {
        let (a, b) = ring.filled();
        [a, b].concat()
    }

    #[test]
    fn new_ring_is_empty() {
        let ring = Ring::with_capacity(8);
        assert!(ring.is_empty());
        assert_eq!((ring.len(), ring.free(), ring.capacity()), (0, 8, 8));
        assert_eq!(ring.filled(), (&[][..], &[][..]));
    }

    #[test]
    fn push_stops_at_capacity() {
        let mut ring = Ring::with_capacity(4);
        assert_eq!(ring.push(b"abcdef"), 4);
        assert!(ring.is_full());
        assert_eq!(contents(&ring), b"abcd");
        assert_eq!(ring.push(b"x"), 0);
    }

    #[test]
    fn bytes_wrap_around_the_end_in_order() {
        let mut ring = Ring::with_capacity(5);
        assert_eq!(ring.push(b"abcd"), 4);
        ring.consume(3); // "d" left at index 3
        assert_eq!(ring.push(b"efgh"), 4); // "e" at 4, "fgh" wrap to 0..3
        assert_eq!(ring.filled(), (&b"de"[..], &b"fgh"[..]));
        // The storage itself shows the wrap: f g h d e.
        assert_eq!(&ring.storage[..], b"fghde");
        let mut out = [0u8; 5];
        assert_eq!(ring.pop(&mut out), 5);
        assert_eq!(&out, b"defgh");
        assert!(ring.is_empty());
    }

    #[test]
    fn free_space_wraps_too() {
        let mut ring = Ring::with_capacity(6);
        ring.push(b"abcdef");
        ring.consume(4); // "ef" at 4..6, free 0..4
        let mut source: &[u8] = b"1234567";
        assert_eq!(ring.read_from(&mut source).unwrap(), 4);
        assert_eq!(contents(&ring), b"ef1234");
        assert_eq!(&ring.storage[..], b"1234ef");
    }

    #[test]
    fn emptying_resets_to_the_front() {
        let mut ring = Ring::with_capacity(4);
        ring.push(b"abc");
        ring.consume(3);
        assert_eq!(ring.start, 0);
        ring.push(b"wxyz");
        assert_eq!(ring.filled(), (&b"wxyz"[..], &[][..]));
    }

    #[test]
    fn zero_capacity_holds_nothing() {
        let mut ring = Ring::with_capacity(0);
        assert!(ring.is_empty() && ring.is_full());
        assert_eq!(ring.push(b"abc"), 0);
        assert_eq!(ring.pop(&mut [0u8; 4]), 0);
        assert_eq!(ring.write_to(&mut Vec::new()).unwrap(), 0);
        ring.consume(0);
        assert_eq!(ring.filled(), (&[][..], &[][..]));
    }

    #[test]
    fn write_to_sends_both_halves() {
        let mut ring = Ring::with_capacity(4);
        ring.push(b"abcd");
        ring.consume(2);
        ring.push(b"ef");
        let mut sink = Vec::new();
        // Vec's write_vectored takes both halves at once.
        assert_eq!(ring.write_to(&mut sink).unwrap(), 4);
        assert_eq!(sink, b"cdef");
        assert!(ring.is_empty());
    }

    /// One step of the model test: what a socket does to the ring.
    #[derive(Clone, Debug)]
    enum Op {
        /// Bytes arrive; the reader returns at most `limit` of them.
        Read {
            bytes: Vec<u8>,
            limit: usize,
        },
        /// The socket takes at most `limit` bytes.
        Write {
            limit: usize,
        },
        Push(Vec<u8>),
        Pop(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (proptest::collection::vec(any::<u8>(), 0..40), 1..40usize)
                .prop_map(|(bytes, limit)| Op::Read { bytes, limit }),
            (0..40usize).prop_map(|limit| Op::Write { limit }),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Op::Push),
            (0..40usize).prop_map(Op::Pop),
        ]
    }

    /// A reader that hands out at most `limit` bytes per call, over several
    /// buffers like `readv` does.
    struct Limited<'a> {
        bytes: &'a [u8],
        limit: usize,
    }

    impl Read for Limited<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.limit).min(self.bytes.len());
            buf[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
        fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
            let mut total = 0;
            for buf in bufs {
                let n = self.read(buf)?;
                total += n;
                self.limit -= n;
                if n < buf.len() {
                    break;
                }
            }
            Ok(total)
        }
    }

    /// A writer that takes at most `limit` bytes per call, over several
    /// buffers like `writev` does.
    struct Short {
        taken: Vec<u8>,
        limit: usize,
    }

    impl Write for Short {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.limit);
            self.taken.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut total = 0;
            for buf in bufs {
                let n = self.write(buf)?;
                total += n;
                self.limit -= n;
                if n < buf.len() {
                    break;
                }
            }
            Ok(total)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    proptest! {
        /// Whatever the sequence of partial reads and writes, the ring holds
        /// exactly what a `VecDeque<u8>` bounded to the same capacity holds.
        #[test]
        fn behaves_like_a_bounded_vecdeque(
            capacity in 0..48usize,
            ops in proptest::collection::vec(op(), 0..64),
        ) {
            let mut ring = Ring::with_capacity(capacity);
            let mut model: VecDeque<u8> = VecDeque::new();
            for op in ops {
                match op {
                    Op::Read { bytes, limit } => {
                        if ring.is_full() {
                            continue; // the caller's contract: never read into a full ring
                        }
                        let mut source = Limited { bytes: &bytes, limit };
                        let n = ring.read_from(&mut source).unwrap();
                        let expected = limit.min(bytes.len()).min(capacity - model.len());
                        prop_assert_eq!(n, expected);
                        model.extend(&bytes[..n]);
                    }
                    Op::Write { limit } => {
                        let mut sink = Short { taken: Vec::new(), limit };
                        let n = ring.write_to(&mut sink).unwrap();
                        let expected: Vec<u8> = model.drain(..limit.min(model.len())).collect();
                        prop_assert_eq!(n, expected.len());
                        prop_assert_eq!(sink.taken, expected);
                    }
                    Op::Push(bytes) => {
                        let n = ring.push(&bytes);
                        prop_assert_eq!(n, bytes.len().min(capacity - model.len()));
                        model.extend(&bytes[..n]);
                    }
                    Op::Pop(want) => {
                        let mut out = vec![0u8; want];
                        let n = ring.pop(&mut out);
                        let expected: Vec<u8> = model.drain(..want.min(model.len())).collect();
                        prop_assert_eq!(&out[..n], &expected[..]);
                    }
                }
                prop_assert_eq!(ring.len(), model.len());
                prop_assert!(ring.len() <= ring.capacity());
                prop_assert_eq!(contents(&ring), model.iter().copied().collect::<Vec<u8>>());
            }
        }
    }
}
