//! Checking a TCP echo against what was sent, keeping only the bytes still
//! in flight.
//!
//! An echo stream is correct when it is byte for byte what was sent, in
//! order, no more and no less. [`InFlight`] holds the bytes sent but not yet
//! echoed in a [`Ring`]; each echoed byte is compared with the oldest one
//! and forgets it. The ring's capacity bounds memory however long the input
//! is, and it is also the tool's backpressure: a sender stops taking input
//! while the ring is full (see [`InFlight::room`]).
//!
//! Offsets are counted from the first byte of the connection, so an error
//! says where in the input the echo went wrong.
//!
//! [`Verifier`] does the same for a [`Payload`] that can be made again
//! (`echod check`): it regenerates what was sent instead of keeping it,
//! and records the first wrong offset rather than stopping there.

use std::fmt;

use std::io::Read;

use super::payload::{Payload, PayloadReader};
use echod_server::ring::Ring;

/// Bytes sent and not yet echoed, and the position of the echo.
#[derive(Debug)]
pub struct InFlight {
    /// Sent bytes awaiting their echo, oldest first.
    ring: Ring,
    /// Bytes echoed and found right so far: the offset of the ring's
    /// oldest byte in the stream.
    echoed: u64,
}

/// How an echo stream differs from what was sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EchoError {
    /// A byte came back different.
    Differs {
        /// Offset of the byte in the stream (0 is the first byte sent).
        offset: u64,
        /// The byte that was sent.
        sent: u8,
        /// The byte that came back.
        received: u8,
    },
    /// More bytes came back than were sent.
    Excess {
        /// Offset of the first byte nobody sent (= bytes sent so far).
        offset: u64,
        /// How many such bytes came in that read.
        extra: usize,
    },
    /// The echo ended (the server closed) before every byte came back.
    Truncated {
        /// Bytes that came back: the offset where the echo stops.
        echoed: u64,
        /// Bytes that were sent.
        sent: u64,
    },
}

impl fmt::Display for EchoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EchoError::Differs {
                offset,
                sent,
                received,
            } => write!(
                f,
                "the echo differs from what was sent at byte offset {offset}: sent 0x{sent:02x}, \
                 received 0x{received:02x}"
            ),
            EchoError::Excess { offset, extra } => write!(
                f,
                "the server sent {extra} more byte(s) than it was sent, starting at byte \
                 offset {offset}"
            ),
            EchoError::Truncated { echoed, sent } => write!(
                f,
                "the echo is truncated at byte offset {echoed}: the server closed the \
                 connection after echoing {echoed} of the {sent} bytes sent"
            ),
        }
    }
}

impl std::error::Error for EchoError {}

impl InFlight {
    /// Room for `capacity` bytes in flight.
    pub fn with_capacity(capacity: usize) -> InFlight {
        InFlight {
            ring: Ring::with_capacity(capacity),
            echoed: 0,
        }
    }

    /// How many more bytes may be sent before an echo must come back.
    pub fn room(&self) -> usize {
        self.ring.free()
    }

    /// Bytes sent and not yet echoed.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// True when every byte sent has come back.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Bytes echoed and found right.
    pub fn echoed(&self) -> u64 {
        self.echoed
    }

    /// Bytes sent.
    pub fn sent(&self) -> u64 {
        self.echoed + self.ring.len() as u64
    }

    /// Records that `bytes` were sent. The caller sends at most
    /// [`InFlight::room`] bytes; panics if more are recorded.
    pub fn sent_bytes(&mut self, bytes: &[u8]) {
        let taken = self.ring.push(bytes);
        assert_eq!(taken, bytes.len(), "sent more than the room in flight");
    }

    /// Checks `echo`, the next bytes that came back, against the oldest
    /// bytes in flight and forgets those that match.
    ///
    /// On a difference nothing is forgotten past it: [`InFlight::echoed`]
    /// is then the offset of the bad byte, and the bytes before it in
    /// `echo` (`error offset - echoed before the call`) were good.
    pub fn check(&mut self, echo: &[u8]) -> Result<(), EchoError> {
        let (first, second) = self.ring.filled();
        let mut checked = 0;
        let mut differs = None;
        for expected in [first, second] {
            let rest = &echo[checked..];
            let n = rest.len().min(expected.len());
            if rest[..n] != expected[..n] {
                let at = rest[..n]
                    .iter()
                    .zip(expected)
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                differs = Some(EchoError::Differs {
                    offset: self.echoed + (checked + at) as u64,
                    sent: expected[at],
                    received: rest[at],
                });
                checked += at;
                break;
            }
            checked += n;
        }
        if let Some(error) = differs {
            self.forget(checked);
            return Err(error);
        }
        self.forget(checked);
        if checked < echo.len() {
            return Err(EchoError::Excess {
                offset: self.echoed,
                extra: echo.len() - checked,
            });
        }
        Ok(())
    }

    /// The error to report when the echo ends now: `None` if everything
    /// sent came back, else how far it got.
    pub fn at_end(&self) -> Option<EchoError> {
        (!self.is_empty()).then(|| EchoError::Truncated {
            echoed: self.echoed,
            sent: self.sent(),
        })
    }

    fn forget(&mut self, n: usize) {
        self.ring.consume(n);
        self.echoed += n as u64;
    }
}

/// The first byte that came back different from what was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// Its offset from the start of the payload.
    pub offset: u64,
    /// What was sent there.
    pub sent: u8,
    /// What came back.
    pub got: u8,
}

/// Compares what comes back, piece by piece, with what was sent.
#[derive(Debug)]
pub struct Verifier<'a> {
    expected: PayloadReader<'a>,
    /// Bytes compared so far (those beyond the payload are `extra`).
    matched_len: u64,
    /// Bytes that came back beyond the end of the payload.
    extra: u64,
    mismatch: Option<Mismatch>,
    last: Option<u8>,
    scratch: Vec<u8>,
}

impl<'a> Verifier<'a> {
    /// A verifier expecting `payload`.
    pub fn new(payload: Payload<'a>) -> Verifier<'a> {
        Verifier {
            expected: payload.reader(),
            matched_len: 0,
            extra: 0,
            mismatch: None,
            last: None,
            scratch: Vec::new(),
        }
    }

    /// Takes the next bytes that came back.
    pub fn push(&mut self, got: &[u8]) {
        if got.is_empty() {
            return;
        }
        self.last = got.last().copied();
        self.scratch.resize(got.len(), 0);
        let mut filled = 0;
        while filled < got.len() {
            // Reading from a payload cannot fail.
            match self.expected.read(&mut self.scratch[filled..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => filled += n,
            }
        }
        // Slices compare at memcmp speed; the byte is searched only once
        // they differ.
        if self.mismatch.is_none()
            && got[..filled] != self.scratch[..filled]
            && let Some(i) = (0..filled).find(|&i| got[i] != self.scratch[i])
        {
            self.mismatch = Some(Mismatch {
                offset: self.matched_len + i as u64,
                sent: self.scratch[i],
                got: got[i],
            });
        }
        self.matched_len += filled as u64;
        self.extra += (got.len() - filled) as u64;
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.matched_len + self.extra
    }

    /// Bytes that came back beyond the end of the payload.
    pub fn extra(&self) -> u64 {
        self.extra
    }

    /// The first byte that differs from what was sent, if any.
    pub fn mismatch(&self) -> Option<Mismatch> {
        self.mismatch
    }

    /// The last byte received, if any.
    pub fn last(&self) -> Option<u8> {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_faithful_echo_empties_the_window() {
        let mut flight = InFlight::with_capacity(8);
        flight.sent_bytes(b"hello");
        assert_eq!(flight.room(), 3);
        assert_eq!(flight.check(b"hel"), Ok(()));
        flight.sent_bytes(b"world"); // wraps around the ring
        assert_eq!(flight.check(b"lowor"), Ok(()));
        assert_eq!(flight.check(b"ld"), Ok(()));
        assert!(flight.is_empty());
        assert_eq!(flight.echoed(), 10);
        assert_eq!(flight.at_end(), None);
    }

    #[test]
    fn a_changed_byte_is_named_by_its_stream_offset() {
        let mut flight = InFlight::with_capacity(8);
        flight.sent_bytes(b"abcdef");
        flight.check(b"abcd").unwrap();
        flight.sent_bytes(b"ghij"); // "efghij", wrapped
        assert_eq!(
            flight.check(b"efgXij"),
            Err(EchoError::Differs {
                offset: 7,
                sent: b'h',
                received: b'X'
            })
        );
        assert_eq!(flight.echoed(), 7);
    }

    #[test]
    fn excess_and_truncation_are_reported() {
        let mut flight = InFlight::with_capacity(8);
        flight.sent_bytes(b"abc");
        assert_eq!(
            flight.check(b"abcde"),
            Err(EchoError::Excess {
                offset: 3,
                extra: 2
            })
        );
        flight.sent_bytes(b"xyz");
        flight.check(b"x").unwrap();
        assert_eq!(
            flight.at_end(),
            Some(EchoError::Truncated { echoed: 4, sent: 6 })
        );
        let text = flight.at_end().unwrap().to_string();
        assert!(text.contains("truncated at byte offset 4"), "{text}");
    }

    #[test]
    fn verifier_finds_the_first_wrong_offset_across_pieces() {
        let sent = Payload::Random { seed: 1, len: 1000 };
        let mut back = sent.to_vec();
        back[700] ^= 0xff;
        back[900] ^= 0xff;
        let mut verifier = Verifier::new(sent);
        for piece in back.chunks(333) {
            verifier.push(piece);
        }
        let mismatch = verifier.mismatch().unwrap();
        assert_eq!(mismatch.offset, 700);
        assert_eq!(mismatch.got, mismatch.sent ^ 0xff);
        assert_eq!(verifier.received(), 1000);
        assert_eq!(verifier.extra(), 0);
    }

    #[test]
    fn verifier_counts_bytes_beyond_the_payload() {
        let mut verifier = Verifier::new(Payload::Bytes(b"abc"));
        verifier.push(b"ab");
        verifier.push(b"cde");
        assert_eq!(verifier.mismatch(), None);
        assert_eq!(verifier.received(), 5);
        assert_eq!(verifier.extra(), 2);
        assert_eq!(verifier.last(), Some(b'e'));
    }
}
