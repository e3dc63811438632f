//! Signals as readiness on the loop's own poll (signal-hook-mio): the
//! handler only writes to a pipe, and the loop reads which signals came
//! when it gets to them, between events, where it is safe to do anything.

use std::io;

use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use signal_hook_mio::v1_0::Signals as MioSignals;

/// What a signal asks of the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// SIGINT or SIGTERM: shut down (gracefully the first time).
    Stop(&'static str),
    /// SIGUSR1: log the counters.
    Report,
}

/// The signals the server listens for.
pub struct Signals {
    inner: MioSignals,
}

impl Signals {
    /// Installs the handlers for SIGINT, SIGTERM and SIGUSR1.
    pub fn new() -> io::Result<Signals> {
        Ok(Signals {
            inner: MioSignals::new([SIGINT, SIGTERM, SIGUSR1])?,
        })
    }

    /// The event source, for registering with the poll.
    pub fn source_mut(&mut self) -> &mut MioSignals {
        &mut self.inner
    }

    /// The signals that arrived since the last call, oldest first.
    pub fn pending(&mut self) -> impl Iterator<Item = Request> + '_ {
        self.inner.pending().map(|signal| match signal {
            SIGINT => Request::Stop("SIGINT"),
            SIGTERM => Request::Stop("SIGTERM"),
            _ => Request::Report,
        })
    }
}
