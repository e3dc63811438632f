//! A TCP listener and what an accept can say.
//!
//! `accept(2)` fails for three kinds of reasons, and each asks for a
//! different answer (the errors are those accept(2) lists):
//!
//! - the one waiting connection is gone or refused (`ECONNABORTED`,
//!   `EPROTO`, `EPERM`) or the call was interrupted (`EINTR`): take the next;
//! - the process or system is out of descriptors or memory (`EMFILE`,
//!   `ENFILE`, `ENOBUFS`, `ENOMEM`): accepting again at once fails the same
//!   way, so pause;
//! - the listening socket itself is broken (`EINVAL`: it no longer listens,
//!   as after `shutdown(2)` or `ss -K`; `EBADF`, `ENOTSOCK`, `EOPNOTSUPP`):
//!   no accept on it will ever succeed, and since the kernel keeps reporting
//!   it readable, retrying it spins the loop. It must be closed.
//!
//! An error none of these names is taken as transient, but only
//! [`FAILURES_BEFORE_BROKEN`] times in a row: an error that does not go
//! away is the socket's, not a client's.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::{TcpListener, TcpStream};

use crate::net::would_block;

/// How many unknown accept errors in a row mark a listener as broken. One
/// could be a client's doing; three in a row, with no connection taken in
/// between, are not going to stop.
pub const FAILURES_BEFORE_BROKEN: u8 = 3;

/// One listening socket.
pub struct Listener {
    /// The socket; registered for READABLE once.
    pub socket: TcpListener,
    /// The address it is bound to (with the real port when 0 was asked).
    pub local: SocketAddr,
    /// Unknown errors since the last accept that was not one, see
    /// [`FAILURES_BEFORE_BROKEN`].
    failures_in_a_row: u8,
    /// A socket passed by a service manager without `SO_OOBINLINE`: the
    /// connections already in its backlog when echod set it were created
    /// without it (Linux copies the listener's options at the handshake),
    /// among them the one that started echod. Each is given it at accept,
    /// until the backlog is first found empty; later connections inherit
    /// it. Without it their urgent byte would be lost (see
    /// `net::set_connection_options`).
    pub backlog_without_oobinline: bool,
}

/// Whether the listeners are accepted from, and if not, why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepting {
    /// Accepting.
    Yes,
    /// `--max-connections` are open: clients wait in the kernel's backlog
    /// until one closes.
    AtLimit,
    /// The process or system ran out of descriptors: paused until
    /// `retry_at`, so as not to spin on EMFILE.
    OutOfDescriptors { retry_at: Instant },
    /// Accepting again after running out of descriptors, and not yet
    /// successfully: running out again is the same episode, so it is not
    /// warned about again, and the first accept that works says so.
    Retrying,
}

impl Accepting {
    /// Whether an accept may be tried now.
    pub fn may_accept(self) -> bool {
        match self {
            Accepting::Yes | Accepting::Retrying => true,
            // A close accepts again.
            Accepting::AtLimit => false,
            // The retry timer accepts again.
            Accepting::OutOfDescriptors { .. } => false,
        }
    }
}

/// What one `accept` call came to.
#[derive(Debug)]
pub enum Accepted {
    /// A new connection.
    Connection(TcpStream, SocketAddr),
    /// The backlog is empty: wait for the next readable edge.
    Empty,
    /// A signal interrupted the call before it took anything: call again.
    Interrupted,
    /// That one connection failed before we took it (the peer reset it
    /// while it waited, a firewall rule refused it, or an error not known
    /// to be the socket's); go on accepting.
    Lost(io::Error),
    /// The process or system is out of descriptors or memory: accepting
    /// again at once would fail the same way, so back off.
    OutOfResources(io::Error),
    /// The listening socket is broken: it must be closed.
    Broken(io::Error),
}

impl Listener {
    /// Wraps a bound, listening socket.
    pub fn new(socket: TcpListener, local: SocketAddr) -> Listener {
        Listener {
            socket,
            local,
            failures_in_a_row: 0,
            backlog_without_oobinline: false,
        }
    }

    /// Accepts one connection.
    pub fn accept(&mut self) -> Accepted {
        let accepted = match self.socket.accept() {
            Ok((stream, peer)) => {
                if self.backlog_without_oobinline {
                    // Before its first read, so the urgent byte is read in
                    // place: Linux keeps it in the receive queue and decides
                    // inline or not when reading (tcp_recvmsg).
                    if let Err(err) = socket2::SockRef::from(&stream).set_out_of_band_inline(true) {
                        log::debug!(
                            "could not set SO_OOBINLINE on a connection from {peer}: {err}"
                        );
                    }
                }
                Accepted::Connection(stream, peer)
            }
            Err(err) => sort(err),
        };
        if let Accepted::Empty = accepted {
            self.backlog_without_oobinline = false;
        }
        self.count(accepted)
    }

    /// Counts unknown errors in a row and turns the one that makes
    /// [`FAILURES_BEFORE_BROKEN`] into [`Accepted::Broken`].
    fn count(&mut self, accepted: Accepted) -> Accepted {
        match accepted {
            Accepted::Lost(err) if is_unknown(&err) => {
                self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
                if self.failures_in_a_row >= FAILURES_BEFORE_BROKEN {
                    Accepted::Broken(err)
                } else {
                    Accepted::Lost(err)
                }
            }
            other => {
                self.failures_in_a_row = 0;
                other
            }
        }
    }
}

/// Sorts an accept error by what the loop must do about it (see the module
/// docs).
fn sort(err: io::Error) -> Accepted {
    if would_block(&err) {
        return Accepted::Empty;
    }
    match err.raw_os_error() {
        Some(libc::EINTR) => Accepted::Interrupted,
        // EMFILE (this process's descriptor limit), ENFILE (the system's),
        // ENOBUFS and ENOMEM: nothing to do with the waiting client.
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
            Accepted::OutOfResources(err)
        }
        Some(libc::EINVAL | libc::EBADF | libc::ENOTSOCK | libc::EOPNOTSUPP) => {
            Accepted::Broken(err)
        }
        _ => Accepted::Lost(err),
    }
}

/// An error that [`sort`] files as `Lost` without knowing it to be a
/// client's: ECONNABORTED (reset while waiting in the backlog), EPROTO
/// (protocol error on it) and EPERM (a firewall rule refused it) are known
/// ones, which can come any number of times in a row.
fn is_unknown(err: &io::Error) -> bool {
    !matches!(
        err.raw_os_error(),
        Some(libc::ECONNABORTED | libc::EPROTO | libc::EPERM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(errno: i32) -> Accepted {
        sort(io::Error::from_raw_os_error(errno))
    }

    #[test]
    fn errors_of_one_connection_are_lost_and_accepting_goes_on() {
        for errno in [libc::ECONNABORTED, libc::EPROTO, libc::EPERM] {
            assert!(matches!(sorted(errno), Accepted::Lost(_)), "{errno}");
        }
        assert!(matches!(sorted(libc::EINTR), Accepted::Interrupted));
        assert!(matches!(sorted(libc::EAGAIN), Accepted::Empty));
    }

    #[test]
    fn running_out_of_descriptors_or_memory_pauses() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(
                matches!(sorted(errno), Accepted::OutOfResources(_)),
                "{errno}"
            );
        }
    }

    #[test]
    fn a_socket_that_no_longer_listens_is_broken() {
        for errno in [libc::EINVAL, libc::EBADF, libc::ENOTSOCK, libc::EOPNOTSUPP] {
            assert!(matches!(sorted(errno), Accepted::Broken(_)), "{errno}");
        }
    }

    fn listener() -> Listener {
        let socket = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let local = socket.local_addr().unwrap();
        Listener::new(socket, local)
    }

    fn lost(errno: i32) -> Accepted {
        Accepted::Lost(io::Error::from_raw_os_error(errno))
    }

    #[test]
    fn an_unknown_error_breaks_the_listener_the_third_time_in_a_row() {
        let mut listener = listener();
        let unknown = libc::EIO;
        assert!(matches!(listener.count(lost(unknown)), Accepted::Lost(_)));
        assert!(matches!(listener.count(lost(unknown)), Accepted::Lost(_)));
        assert!(matches!(listener.count(lost(unknown)), Accepted::Broken(_)));
    }

    #[test]
    fn anything_else_in_between_starts_the_count_again() {
        let mut listener = listener();
        let unknown = libc::EIO;
        for between in [Accepted::Empty, lost(libc::ECONNABORTED)] {
            listener.count(lost(unknown));
            listener.count(lost(unknown));
            listener.count(between);
            assert!(matches!(listener.count(lost(unknown)), Accepted::Lost(_)));
            assert!(matches!(listener.count(lost(unknown)), Accepted::Lost(_)));
            listener.count(Accepted::Empty);
        }
    }

    #[test]
    fn known_transient_errors_never_break_the_listener() {
        let mut listener = listener();
        for _ in 0..10 {
            let accepted = listener.count(lost(libc::ECONNABORTED));
            assert!(matches!(accepted, Accepted::Lost(_)));
        }
    }
}
