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

use std::fmt;

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
}
