//! Payloads the tools send when they choose the bytes themselves (`ping`,
//! `bench`): each message's content is a function of the connection it is
//! sent on and its sequence number, so the echo can be checked without
//! keeping a copy, and a message that comes back in the wrong place is
//! told apart from one that was damaged.
//!
//! A message is a 16-byte header made from its key (connection and
//! sequence, hashed), then bytes of a fixed pseudo-random pool starting at
//! an offset the key picks. Every bit matters, so a flipped bit, a lost or
//! repeated byte, a message of another connection or an old message all
//! show up as a difference; a fixed pattern such as "abcabc…" would hide a
//! lost block of exactly one period. Copying from a pool costs what a
//! `memcpy` costs, so a load generator that checks every byte of large
//! messages stays lighter than the server it loads.
//!
//! `echod check` sends streams instead ([`Payload`]): bytes given, or up
//! to tens of MiB made from a seed a word at a time with the same
//! splitmix64, none of them a newline, regenerated to verify the echo.

use std::io::{self, Read};
use std::sync::OnceLock;

/// Size of the pool of pseudo-random bytes messages are cut from: a power
/// of two, larger than most messages, small enough to stay in cache.
const POOL_LEN: usize = 64 * 1024;

/// Bytes at the start of a message that come from its key alone.
const HEADER_LEN: usize = 16;

/// The pool, made once (splitmix64 from a fixed seed, so every run and
/// every machine sends the same bytes for the same message).
fn pool() -> &'static [u8] {
    static POOL: OnceLock<Box<[u8]>> = OnceLock::new();
    POOL.get_or_init(|| {
        (0..POOL_LEN / 8)
            .flat_map(|i| mix(0x706f_6f6c ^ i as u64).to_le_bytes())
            .collect()
    })
}

/// The seed of message `seq` of connection `conn`.
fn key(conn: u32, seq: u64) -> u64 {
    mix(mix(u64::from(conn) ^ 0x6563_686f_6400_0000) ^ seq)
}

/// splitmix64's finalizer: a cheap, well-mixed 64-bit hash.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Writes the content of message `seq` of connection `conn` into `out`
/// (the message is `out.len()` bytes long).
pub fn fill(conn: u32, seq: u64, out: &mut [u8]) {
    let key = key(conn, seq);
    let mut header = [0; HEADER_LEN];
    header[..8].copy_from_slice(&key.to_le_bytes());
    header[8..].copy_from_slice(&mix(key).to_le_bytes());
    let n = out.len().min(HEADER_LEN);
    out[..n].copy_from_slice(&header[..n]);
    let pool = pool();
    let mut at = (key as usize) % POOL_LEN;
    for chunk in out[n..].chunks_mut(POOL_LEN) {
        // Up to two copies: to the pool's end, then from its start.
        let first = chunk.len().min(POOL_LEN - at);
        chunk[..first].copy_from_slice(&pool[at..at + first]);
        let rest = chunk.len() - first;
        chunk[first..].copy_from_slice(&pool[..rest]);
        at = rest;
    }
}

/// Message `seq` of connection `conn`, `len` bytes long, as a new vector.
pub fn message(conn: u32, seq: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    fill(conn, seq, &mut out);
    out
}

/// How a received message differs from the one expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Difference {
    /// It is another message of the same connection, whole: the echo is
    /// reordered, repeated, or a late answer to an earlier probe.
    OtherMessage {
        /// The sequence number it carries.
        seq: u64,
    },
    /// It differs from the expected message first at this byte offset.
    Corrupt {
        /// Offset of the first differing byte within the message.
        offset: usize,
        /// The byte that was sent there.
        sent: u8,
        /// The byte that came back there.
        received: u8,
    },
    /// It has another length (a datagram cut short or padded).
    Length {
        /// The length that was sent.
        sent: usize,
        /// The length that came back.
        received: usize,
    },
}

impl Difference {
    /// The same difference found `base` bytes into the message (for a
    /// comparison that started there), with the offset counted from the
    /// message's start.
    pub fn at(self, base: usize) -> Difference {
        match self {
            Difference::Corrupt {
                offset,
                sent,
                received,
            } => Difference::Corrupt {
                offset: base + offset,
                sent,
                received,
            },
            other => other,
        }
    }
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Difference::OtherMessage { seq } => {
                write!(f, "it is message {seq} (reordered or repeated)")
            }
            Difference::Corrupt {
                offset,
                sent,
                received,
            } => write!(
                f,
                "byte {offset} differs (sent 0x{sent:02x}, received 0x{received:02x})"
            ),
            Difference::Length { sent, received } => {
                write!(f, "{received} bytes came back for {sent} sent")
            }
        }
    }
}

/// Compares `received` with message `seq` of connection `conn` (of
/// `expected.len()` bytes, already filled in `expected`). When they
/// differ, looks among the `window` messages before and after `seq` for
/// the one that did arrive, to name reordering rather than corruption.
pub fn compare(
    conn: u32,
    seq: u64,
    expected: &[u8],
    received: &[u8],
    window: u64,
) -> Result<(), Difference> {
    if received == expected {
        return Ok(());
    }
    if received.len() != expected.len() {
        return Err(Difference::Length {
            sent: expected.len(),
            received: received.len(),
        });
    }
    let mut other = vec![0; expected.len()];
    let first = seq.saturating_sub(window);
    for candidate in (first..=seq.saturating_add(window)).filter(|&s| s != seq) {
        fill(conn, candidate, &mut other);
        if other == received {
            return Err(Difference::OtherMessage { seq: candidate });
        }
    }
    Err(first_difference(expected, received))
}

/// The first differing byte of two slices of equal length.
///
/// Panics if they are equal: call it only after a comparison failed.
pub fn first_difference(expected: &[u8], received: &[u8]) -> Difference {
    let offset = expected
        .iter()
        .zip(received)
        .position(|(a, b)| a != b)
        .expect("the slices differ");
    Difference::Corrupt {
        offset,
        sent: expected[offset],
        received: received[offset],
    }
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
                    let word = mix(mix(*seed) ^ (pos / 8));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_depend_on_connection_and_sequence() {
        let a = message(0, 0, 64);
        assert_eq!(a, message(0, 0, 64), "deterministic");
        assert_ne!(a, message(0, 1, 64));
        assert_ne!(a, message(1, 0, 64));
        // A shorter message is a prefix of the longer one with the same key.
        assert_eq!(message(3, 9, 13), message(3, 9, 64)[..13]);
        // Longer than the pool, it wraps around and stays a prefix.
        let long = message(4, 5, 3 * POOL_LEN + 100);
        assert_eq!(long[..1000], message(4, 5, 1000)[..]);
        assert_ne!(long[HEADER_LEN..5000], message(4, 6, 5000)[HEADER_LEN..]);
    }

    #[test]
    fn comparison_names_what_went_wrong() {
        let sent = message(2, 10, 100);
        assert_eq!(compare(2, 10, &sent, &sent, 4), Ok(()));

        let mut flipped = sent.clone();
        flipped[37] ^= 0x01;
        assert_eq!(
            compare(2, 10, &sent, &flipped, 4),
            Err(Difference::Corrupt {
                offset: 37,
                sent: sent[37],
                received: flipped[37]
            })
        );

        let other = message(2, 12, 100);
        assert_eq!(
            compare(2, 10, &sent, &other, 4),
            Err(Difference::OtherMessage { seq: 12 })
        );

        assert_eq!(
            compare(2, 10, &sent, &sent[..99], 4),
            Err(Difference::Length {
                sent: 100,
                received: 99
            })
        );
    }

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
}
