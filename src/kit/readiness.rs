//! What a nonblocking socket was last seen ready for.
//!
//! mio is edge-triggered: an event says "something changed" once, so a
//! tool remembers it per direction until a call says WouldBlock, and only
//! then waits for the next event (see the primer in the crate docs).

/// Remembered readiness of one socket: true from an event until a call in
/// that direction says WouldBlock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// A read may make progress.
    pub readable: bool,
    /// A write may make progress.
    pub writable: bool,
}

impl Readiness {
    /// Ready both ways: what a socket is assumed to be before its first
    /// call says otherwise (a call that cannot proceed costs one
    /// WouldBlock; waiting for an event that already came costs forever).
    pub const BOTH: Readiness = Readiness {
        readable: true,
        writable: true,
    };

    /// Takes in one event. Errors and hang-ups count as both: the next
    /// read or write is what reports them.
    pub fn note(&mut self, event: &mio::event::Event) {
        self.readable |= event.is_readable() || event.is_read_closed() || event.is_error();
        self.writable |= event.is_writable() || event.is_write_closed() || event.is_error();
    }
}
