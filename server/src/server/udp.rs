//! UDP echo: each datagram goes back to its sender unchanged.
//!
//! RFC 862: "When a datagram is received, the data from it is sent back in
//! an answering datagram." Sizes from 0 to 65,507 bytes (the most an IPv4
//! datagram carries) come back whole: the receive buffer holds the largest.
//!
//! The loop must never block, so when `send_to` says WouldBlock the reply
//! waits in a small bounded queue; beyond it, datagrams are dropped and
//! counted, as a router would.
//!
//! Before a datagram is echoed, the [`UdpGuard`] may refuse it: sources
//! that could start or feed a loop between two services (CERT CA-1996-01)
//! or use echod as a reflector, and senders over their rate. The server
//! has one guard for all its UDP sockets, lent to each socket's turn, so
//! that `--udp-rate` and `--udp-rate-total` bound what the server answers,
//! however many addresses it is bound to. Each drop is
//! counted by reason and logged at debug level; a warning sums them up at
//! most once per reason every few seconds.
//!
//! Datagrams the kernel itself dropped (the receive buffer was full) never
//! reach echod; the socket ([`socket`]) reads the kernel's count of them
//! from each datagram that does, and it is shown beside echod's own. On a
//! socket bound to a wildcard address, each reply goes out from the
//! address its datagram was sent to.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use super::Turn;
use super::extras::udp_guard::{DropReason, DropWarnings, UdpGuard, Verdict, WARN_INTERVAL};
use crate::net::{Readiness, display_addr, interrupted, would_block};
pub use socket::{EchoSocket, Received, ReplyFrom};

mod socket;

/// Replies waiting for the socket to become writable, at most.
const QUEUE_DATAGRAMS: usize = 64;

/// Bytes of replies waiting, at most (with the count, this bounds memory).
const QUEUE_BYTES: usize = 1024 * 1024;

/// Datagrams served per turn before other sockets get theirs.
const DATAGRAMS_PER_TURN: usize = 64;

/// A reply that the socket would not take yet.
struct Reply {
    to: SocketAddr,
    /// The source to send it from, if the socket must say.
    from: Option<ReplyFrom>,
    payload: Box<[u8]>,
}

/// Counters of one UDP socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpCounters {
    /// Datagrams received.
    pub received: u64,
    /// Datagrams echoed.
    pub sent: u64,
    /// Replies dropped because the queue was full.
    pub dropped_queue_full: u64,
    /// Replies dropped because sending failed.
    pub dropped_send_error: u64,
    /// Datagrams not answered because their source port is 0 or a
    /// service's that answers datagrams (CERT CA-1996-01).
    pub dropped_port: u64,
    /// Datagrams not answered because their source address is broadcast,
    /// multicast or unspecified.
    pub dropped_address: u64,
    /// Datagrams not answered because their source was over `--udp-rate`.
    pub dropped_rate: u64,
    /// Datagrams not answered because all sources together were over
    /// `--udp-rate-total`.
    pub dropped_total_rate: u64,
    /// Replies still queued when the socket closed at shutdown.
    pub dropped_shutdown: u64,
    /// Datagrams the kernel dropped before echod could receive them (the
    /// receive buffer was full), as of the last datagram received: the
    /// kernel tells the count only with a datagram (`SO_RXQ_OVFL`), so
    /// drops after the last one show once another arrives. Not part of
    /// `received` nor of [`UdpCounters::dropped`].
    pub dropped_by_kernel: u64,
}

impl UdpCounters {
    /// Adds another socket's counters to these.
    pub fn add(&mut self, other: &UdpCounters) {
        self.received += other.received;
        self.sent += other.sent;
        self.dropped_queue_full += other.dropped_queue_full;
        self.dropped_send_error += other.dropped_send_error;
        self.dropped_port += other.dropped_port;
        self.dropped_address += other.dropped_address;
        self.dropped_rate += other.dropped_rate;
        self.dropped_total_rate += other.dropped_total_rate;
        self.dropped_shutdown += other.dropped_shutdown;
        self.dropped_by_kernel += other.dropped_by_kernel;
    }

    /// Datagrams received but not echoed, for any reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_queue_full
            + self.dropped_send_error
            + self.dropped_port
            + self.dropped_address
            + self.dropped_rate
            + self.dropped_total_rate
            + self.dropped_shutdown
    }
}

/// What the datagram echo needs of a socket: an [`EchoSocket`], or a
/// scripted fake in tests (a loopback send practically never says
/// WouldBlock, so the reply queue cannot be tested over a real socket).
pub trait Datagrams {
    /// Receives one datagram into `buf`.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Received>;
    /// Sends one datagram to `to`, from `from` if given.
    fn send(
        &mut self,
        payload: &[u8],
        to: SocketAddr,
        from: Option<ReplyFrom>,
    ) -> io::Result<usize>;
}

impl Datagrams for EchoSocket {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Received> {
        EchoSocket::recv(self, buf)
    }
    fn send(
        &mut self,
        payload: &[u8],
        to: SocketAddr,
        from: Option<ReplyFrom>,
    ) -> io::Result<usize> {
        EchoSocket::send(self, payload, to, from)
    }
}

/// One UDP socket and its queue of replies not yet sent.
pub struct UdpEcho<S = EchoSocket> {
    socket: S,
    local: SocketAddr,
    ready: Readiness,
    queue: VecDeque<Reply>,
    queued_bytes: usize,
    /// When to warn about drops (at most once per reason per interval).
    warnings: DropWarnings,
    /// The kernel's drop count as of the last datagram received (it wraps
    /// at `u32::MAX`; the counter adds the differences); `None` until the
    /// first datagram, whose count is the baseline (see
    /// [`UdpEcho::count_kernel_drops`]).
    kernel_drops_seen: Option<u32>,
    /// What happened on this socket so far.
    pub counters: UdpCounters,
}

impl UdpEcho<EchoSocket> {
    /// The socket, for registering with the poll.
    pub fn socket_mut(&mut self) -> &mut mio::net::UdpSocket {
        self.socket.source_mut()
    }
}

impl<S: Datagrams> UdpEcho<S> {
    /// Wraps a bound socket.
    pub fn new(socket: S, local: SocketAddr) -> UdpEcho<S> {
        UdpEcho {
            socket,
            local,
            ready: Readiness::default(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            warnings: DropWarnings::default(),
            kernel_drops_seen: None,
            counters: UdpCounters::default(),
        }
    }

    /// Before the socket is closed (shutdown): sends the replies still
    /// queued if the socket takes them now, and counts the rest as
    /// dropped, so that received = sent + dropped still holds.
    pub fn close(&mut self) {
        self.send_queued();
        let left = self.queue.len() as u64;
        if left > 0 {
            log::debug!(
                "udp {}: {left} queued replies dropped at shutdown",
                self.local
            );
        }
        self.counters.dropped_shutdown += left;
        self.queue.clear();
        self.queued_bytes = 0;
    }

    /// The address it is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Serves an event: sends queued replies, then receives and echoes
    /// until WouldBlock or the turn's budget is spent. `buf` is the loop's
    /// datagram buffer, [`MAX_DATAGRAM`](crate::net::MAX_DATAGRAM) bytes;
    /// `guard` is the server's, shared by all its UDP sockets, and decides
    /// which datagrams are not answered.
    pub fn on_ready(&mut self, new: Readiness, buf: &mut [u8], guard: &mut UdpGuard) -> Turn {
        self.ready.readable |= new.readable;
        self.ready.writable |= new.writable;
        self.send_queued();
        // One clock reading per turn is enough for a rate in datagrams per
        // second, and spares a call per datagram.
        let now = Instant::now();
        for _ in 0..DATAGRAMS_PER_TURN {
            if !self.ready.readable {
                return Turn::Wait;
            }
            match self.socket.recv(buf) {
                Ok(Received {
                    len,
                    peer,
                    reply_from,
                    kernel_drops,
                }) => {
                    self.counters.received += 1;
                    log::trace!(
                        "udp {}: {len} bytes from {}",
                        self.local,
                        display_addr(peer)
                    );
                    self.count_kernel_drops(kernel_drops);
                    match guard.check(peer, now) {
                        Verdict::Answer => self.echo(&buf[..len], peer, reply_from),
                        Verdict::Drop(reason) => self.refuse(reason, peer, now),
                    }
                }
                Err(err) if would_block(&err) => {
                    self.ready.readable = false;
                }
                Err(err) if interrupted(&err) => {}
                Err(err) => {
                    // An ICMP error from an earlier reply (port unreachable)
                    // can surface here; it concerns that peer, not us.
                    log::debug!("udp {}: receive failed: {err}", self.local);
                }
            }
        }
        if self.ready.readable {
            Turn::Yield
        } else {
            Turn::Wait
        }
    }

    /// Takes the kernel's drop count carried by a datagram (`None`: Linux
    /// leaves it out while it is 0): what it grew by since the last one is
    /// added to the counter.
    ///
    /// The count is the socket's since its creation, not echod's: a socket
    /// inherited from a service manager (which keeps it open across
    /// restarts) carries the drops of earlier runs. So the first datagram's
    /// count is only the baseline. On a socket echod bound itself that
    /// baseline is 0, since the first datagram queued found the queue
    /// empty, so nothing is lost by it.
    fn count_kernel_drops(&mut self, drops: Option<u32>) {
        let Some(seen) = self.kernel_drops_seen else {
            self.kernel_drops_seen = Some(drops.unwrap_or(0));
            return;
        };
        // Later, a datagram without the count changes nothing (the count
        // only grows; it is left out again only if it wraps to 0 exactly).
        let Some(drops) = drops else {
            return;
        };
        let new = drops.wrapping_sub(seen);
        if new == 0 {
            return;
        }
        self.kernel_drops_seen = Some(drops);
        self.counters.dropped_by_kernel += u64::from(new);
        log::debug!(
            "udp {}: the kernel dropped {new} more datagrams (its receive buffer was full)",
            self.local
        );
    }

    /// Counts and logs a datagram the guard refused.
    fn refuse(&mut self, reason: DropReason, peer: SocketAddr, now: Instant) {
        let counter = match reason {
            DropReason::Port => &mut self.counters.dropped_port,
            DropReason::Address => &mut self.counters.dropped_address,
            DropReason::Rate => &mut self.counters.dropped_rate,
            DropReason::TotalRate => &mut self.counters.dropped_total_rate,
        };
        *counter += 1;
        let peer = display_addr(peer);
        log::debug!("udp {}: no answer to {peer}: {reason}", self.local);
        let Some(warning) = self.warnings.record(reason, now) else {
            return;
        };
        let hint = reason.hint().map(|h| format!("; {h}")).unwrap_or_default();
        match warning.since_last {
            None => log::warn!(
                "udp {}: not answering {peer}: {reason}{hint}. Further drops for this \
                 reason are summed up at most every {} s (-v logs each one)",
                self.local,
                WARN_INTERVAL.as_secs(),
            ),
            Some(since) => log::warn!(
                "udp {}: {} {} not answered in the last {} s (the last from {peer}): \
                 {reason}{hint}",
                self.local,
                warning.dropped,
                if warning.dropped == 1 {
                    "datagram"
                } else {
                    "datagrams"
                },
                since.as_secs(),
            ),
        }
    }

    /// Sends one reply now, or queues it if the socket is not writable (or
    /// earlier replies still wait, to keep them in order).
    fn echo(&mut self, payload: &[u8], peer: SocketAddr, from: Option<ReplyFrom>) {
        if self.queue.is_empty() && self.ready.writable {
            match self.socket.send(payload, peer, from) {
                Ok(_) => {
                    self.counters.sent += 1;
                    return;
                }
                Err(err) if would_block(&err) => {
                    self.ready.writable = false;
                }
                Err(err) => {
                    self.send_failed(peer, &err);
                    return;
                }
            }
        }
        if self.queue.len() >= QUEUE_DATAGRAMS || self.queued_bytes + payload.len() > QUEUE_BYTES {
            self.counters.dropped_queue_full += 1;
            log::debug!(
                "udp {}: reply to {} dropped, send queue full",
                self.local,
                display_addr(peer)
            );
            return;
        }
        self.queued_bytes += payload.len();
        self.queue.push_back(Reply {
            to: peer,
            from,
            payload: payload.into(),
        });
    }

    /// Sends queued replies, oldest first, while the socket takes them.
    fn send_queued(&mut self) {
        while self.ready.writable {
            let Some(reply) = self.queue.front() else {
                return;
            };
            match self.socket.send(&reply.payload, reply.to, reply.from) {
                Ok(_) => self.counters.sent += 1,
                Err(err) if would_block(&err) => {
                    self.ready.writable = false;
                    return;
                }
                Err(err) if interrupted(&err) => continue,
                Err(err) => {
                    let to = reply.to;
                    self.send_failed(to, &err);
                }
            }
            if let Some(sent) = self.queue.pop_front() {
                self.queued_bytes -= sent.payload.len();
            }
        }
    }

    fn send_failed(&mut self, peer: SocketAddr, err: &io::Error) {
        self.counters.dropped_send_error += 1;
        log::debug!(
            "udp {}: reply to {} failed: {err}",
            self.local,
            display_addr(peer)
        );
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod queue_tests;
