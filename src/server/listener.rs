//! A TCP listener and what an accept can say.

use std::io;
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};

/// One listening socket.
pub struct Listener {
    /// The socket; registered for READABLE once.
    pub socket: TcpListener,
    /// The address it is bound to (with the real port when 0 was asked).
    pub local: SocketAddr,
}

/// What one `accept` call came to.
pub enum Accepted {
    /// A new connection.
    Connection(TcpStream, SocketAddr),
    /// The backlog is empty: wait for the next readable edge.
    Empty,
    /// That one connection failed before we took it (the peer reset it
    /// while it waited, or similar); go on accepting.
    Lost(io::Error),
    /// The process or system is out of descriptors or memory: accepting
    /// again at once would fail the same way, so back off.
    OutOfResources(io::Error),
}

impl Listener {
    /// Accepts one connection.
    pub fn accept(&self) -> Accepted {
        match self.socket.accept() {
            Ok((stream, peer)) => Accepted::Connection(stream, peer),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Accepted::Empty,
            Err(err) if is_out_of_resources(&err) => Accepted::OutOfResources(err),
            Err(err) => Accepted::Lost(err),
        }
    }
}

/// EMFILE (this process's descriptor limit), ENFILE (the system's),
/// ENOBUFS and ENOMEM: nothing to do with the waiting client.
fn is_out_of_resources(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
