//! Signals as readiness on the loop's own poll (signal-hook-mio): the
//! handler only writes to a pipe, and the loop reads which signals came
//! when it gets to them, between events, where it is safe to do anything.

use std::io;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook_mio::v1_0::Signals as MioSignals;

/// What a signal asks of the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// SIGINT, SIGTERM or SIGHUP: shut down (gracefully the first time).
    Stop(&'static str),
    /// SIGUSR1: log the counters.
    Report,
}

/// The signals the server listens for.
pub struct Signals {
    inner: MioSignals,
}

impl Signals {
    /// Installs the handlers for SIGINT, SIGTERM, SIGUSR1 and SIGHUP; SIGHUP
    /// only if it was not ignored when echod started.
    ///
    /// A hang-up (the terminal closed, or an operator's `kill -HUP`) drains
    /// like SIGTERM rather than killing sessions, as its default action
    /// would. But whoever ignored SIGHUP before starting echod (`nohup`,
    /// `trap '' HUP`) asked for it to be ignored, and an ignored signal
    /// stays ignored across `exec` (signal(7)); installing a handler would
    /// undo that choice, so SIGHUP is then left alone.
    pub fn new() -> io::Result<Signals> {
        let mut signals = vec![SIGINT, SIGTERM, SIGUSR1];
        if hangup_ignored_at_start() {
            log::info!(
                "SIGHUP was ignored when echod started (nohup?), so it stays ignored; stop \
                 echod with SIGTERM or SIGINT"
            );
        } else {
            signals.push(SIGHUP);
        }
        Ok(Signals {
            inner: MioSignals::new(signals)?,
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
            SIGHUP => Request::Stop("SIGHUP"),
            _ => Request::Report,
        })
    }
}

/// Whether this process started with SIGHUP ignored.
///
/// `sigaction(2)` with a null new action would tell, but nix and libc offer
/// it only as `unsafe`, which this crate forbids; signal-hook has no query
/// for a disposition. Linux shows the same thing in `/proc/self/status`,
/// whose `SigIgn` line is the mask of ignored signals (proc(5)). Where that
/// cannot be read (no `/proc`, another system), SIGHUP is taken as not
/// ignored: a drain is the safer answer to a hang-up than the default
/// action, which ends every session at once.
fn hangup_ignored_at_start() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| ignored_in_status(&status, SIGHUP))
        .unwrap_or(false)
}

/// Reads from a `/proc/PID/status` text whether `signal` is in the
/// `SigIgn` mask: hexadecimal, bit `signal - 1` for each signal (proc(5)).
/// `None` if the line is missing or unreadable.
fn ignored_in_status(status: &str, signal: i32) -> Option<bool> {
    let mask = status
        .lines()
        .find_map(|line| line.strip_prefix("SigIgn:"))?
        .trim();
    let mask = u64::from_str_radix(mask, 16).ok()?;
    let bit = u32::try_from(signal).ok()?.checked_sub(1)?;
    Some(mask.checked_shr(bit)? & 1 == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\techod\nSigBlk:\t0000000000000000\n\
                          SigIgn:\t0000000000001001\nSigCgt:\t0000000000004002\n";

    #[test]
    fn the_sigign_mask_says_which_signals_are_ignored() {
        // 0x1001: SIGHUP (1, bit 0) and SIGPIPE (13, bit 12), which is what
        // `nohup` plus the Rust runtime leave.
        assert_eq!(ignored_in_status(STATUS, SIGHUP), Some(true));
        assert_eq!(ignored_in_status(STATUS, libc::SIGPIPE), Some(true));
        assert_eq!(ignored_in_status(STATUS, SIGTERM), Some(false));
        assert_eq!(ignored_in_status(STATUS, SIGINT), Some(false));
    }

    #[test]
    fn a_status_without_a_readable_mask_says_nothing() {
        assert_eq!(ignored_in_status("Name:\techod\n", SIGHUP), None);
        assert_eq!(ignored_in_status("SigIgn:\tzz\n", SIGHUP), None);
        assert_eq!(ignored_in_status(STATUS, 0), None);
        assert_eq!(ignored_in_status(STATUS, 65), None);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn this_process_reads_its_own_mask() {
        // The test harness does not ignore SIGHUP; Rust ignores SIGPIPE.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert_eq!(ignored_in_status(&status, libc::SIGPIPE), Some(true));
    }
}
