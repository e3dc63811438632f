//! The ready queue: sources that stopped early on purpose, with readiness
//! left unused (a connection whose turn's budget ran out, a listener with
//! clients still in its backlog, a UDP socket with datagrams waiting).
//! Edge-triggered polling brings no new event for readiness already
//! reported, so without this queue they would stall; the loop serves it
//! after each batch of events, and polls with a zero timeout while it is
//! not empty.
//!
//! A source is on it at most once: one that yields again while waiting
//! must not get two turns. The queue keeps that itself, with one bit per
//! token, so the sources need no flag of their own.

use mio::Token;

use super::Source;

/// Tokens waiting for another turn, each at most once.
#[derive(Default)]
pub struct ReadyQueue {
    tokens: Vec<Token>,
    /// Which tokens are in `tokens`, one bit each, by [`slot`]. A key
    /// reused by a new connection while its old turn waits keeps that
    /// turn: it is the new connection's, and harmless if spurious.
    queued: Vec<u64>,
}

/// A token's bit (its word, and the bit in it): listeners and UDP sockets
/// first, then connections by slab key, so the bits stay as few as the
/// tokens in use. `None` for the waker and signals, which have no turn to
/// continue and are never queued.
fn slot(token: Token) -> Option<(usize, u64)> {
    let slot = match Source::of(token) {
        Source::Listener(i) => 2 * i,
        Source::Udp(i) => 2 * i + 1,
        Source::Connection(key) => 2 * super::MAX_BINDS + key,
        Source::Waker | Source::Signals => return None,
    };
    Some((slot / 64, 1 << (slot % 64)))
}

impl ReadyQueue {
    /// Puts `token` on the queue unless it is there already.
    pub fn push(&mut self, token: Token) {
        let Some((word, bit)) = slot(token) else {
            return;
        };
        if word >= self.queued.len() {
            self.queued.resize(word + 1, 0);
        }
        if self.queued[word] & bit == 0 {
            self.queued[word] |= bit;
            self.tokens.push(token);
        }
    }

    /// Whether no source waits.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Moves the waiting tokens into `into` (empty, kept by the loop so
    /// both allocations are reused). Each stays marked queued until
    /// [`ReadyQueue::serving`] says its turn has come, so one that yields
    /// before then is not queued twice; anything queued after its turn
    /// waits for the next round, after fresh events.
    pub fn take(&mut self, into: &mut Vec<Token>) {
        std::mem::swap(into, &mut self.tokens);
    }

    /// `token`, taken off the queue, is being served: it may be queued
    /// again.
    pub fn serving(&mut self, token: Token) {
        if let Some((word, bit)) = slot(token)
            && let Some(word) = self.queued.get_mut(word)
        {
            *word &= !bit;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source queued twice gets one turn; once taken, it may be queued
    /// again.
    #[test]
    fn a_source_is_queued_once_until_taken() {
        let mut ready = ReadyQueue::default();
        let conn = Source::Connection(5).token();
        let listener = Source::Listener(0).token();
        ready.push(conn);
        ready.push(listener);
        ready.push(conn);
        let mut taken = Vec::new();
        ready.take(&mut taken);
        assert_eq!(taken, [conn, listener]);
        assert!(ready.is_empty());
        // Still waiting for its turn in this round: not queued again.
        ready.push(conn);
        assert!(ready.is_empty());
        ready.serving(conn);
        ready.push(conn);
        let mut again = Vec::new();
        ready.take(&mut again);
        assert_eq!(again, [conn]);
    }

    /// Every kind of source has a bit of its own: listeners, UDP sockets
    /// and connections never share one, so one queued never hides another.
    #[test]
    fn no_two_sources_share_a_bit() {
        let mut ready = ReadyQueue::default();
        let sources = [
            Source::Listener(0),
            Source::Udp(0),
            Source::Listener(super::super::MAX_BINDS - 1),
            Source::Udp(super::super::MAX_BINDS - 1),
            Source::Connection(0),
            Source::Connection(1),
            Source::Connection(2 * super::super::MAX_BINDS),
        ];
        let tokens = sources.map(|source| source.token());
        for token in tokens {
            ready.push(token);
        }
        let mut taken = Vec::new();
        ready.take(&mut taken);
        assert_eq!(taken, tokens);
    }
}
