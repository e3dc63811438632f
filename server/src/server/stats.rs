//! Counters of what the server did, and their one-line summary.
//!
//! Plain integers bumped by the loop: no atomics, no allocation, nothing
//! formatted until someone asks (SIGUSR1, or the shutdown receipt).

use std::fmt;

use super::{CloseReason, Server, UdpCounters};

/// What happened to TCP connections so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections open now.
    pub active: u64,
    /// Closed after the peer finished and got every byte back.
    pub closed_eof: u64,
    /// Closed because the peer reset or vanished.
    pub closed_reset: u64,
    /// Closed on another socket error.
    pub closed_error: u64,
    /// Closed for making no progress for `--idle-timeout`.
    pub closed_idle: u64,
    /// Closed by a shutdown after the grace period.
    pub closed_shutdown: u64,
    /// Closed by the server abortively (an RST, not a FIN), because it
    /// threw away echo bytes it held or received after its FIN: an idle
    /// client that stopped reading, the end of the shutdown grace. Also
    /// counted by reason (idle, shutdown).
    pub reset_by_server: u64,
    /// Bytes received and never echoed on those connections: what the
    /// server threw away.
    pub discarded: u64,
    /// Times accepting paused because `--max-connections` were open.
    pub limit_reached: u64,
    /// Connections reset at once because their source had
    /// `--max-connections-per-source` open.
    pub source_limited: u64,
    /// Connections lost before they could be served: reset while waiting
    /// in the backlog, or not registrable with the poll. (Clients waiting
    /// while descriptors are exhausted are not refused: they stay in the
    /// backlog and are accepted later.)
    pub refused: u64,
    /// Bytes received from closed connections.
    pub bytes_in: u64,
    /// Bytes echoed to closed connections.
    pub bytes_out: u64,
    /// Bytes echoed through a pipe by `splice(2)` (any connection), part
    /// of the bytes echoed.
    pub spliced: u64,
    /// Times a bulk connection found no pipe free and copied instead.
    pub splice_fallbacks: u64,
}

impl TcpStats {
    /// Counts a closed connection; `reset_by_server`: the server closed it
    /// abortively, throwing away what it had received and not echoed.
    pub fn closed(
        &mut self,
        reason: CloseReason,
        bytes_in: u64,
        bytes_out: u64,
        reset_by_server: bool,
    ) {
        self.active = self.active.saturating_sub(1);
        self.bytes_in += bytes_in;
        self.bytes_out += bytes_out;
        if reset_by_server {
            self.reset_by_server += 1;
            self.discarded += bytes_in.saturating_sub(bytes_out);
        }
        let counter = match reason {
            CloseReason::Eof => &mut self.closed_eof,
            CloseReason::Reset => &mut self.closed_reset,
            CloseReason::Error(_) => &mut self.closed_error,
            CloseReason::Idle => &mut self.closed_idle,
            CloseReason::Shutdown => &mut self.closed_shutdown,
        };
        *counter += 1;
    }
}

/// Everything, for the summary line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// TCP, with bytes of open connections added in.
    pub tcp: TcpStats,
    /// UDP, all sockets added up.
    pub udp: UdpCounters,
}

impl fmt::Display for Stats {
    /// One line: `tcp: accepted 5, active 1, closed 4 (eof 3, reset 1, …)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.tcp;
        let closed =
            t.closed_eof + t.closed_reset + t.closed_error + t.closed_idle + t.closed_shutdown;
        write!(
            f,
            "tcp: accepted {}, active {}, closed {closed} (eof {}, reset {}, error {}, idle {}, \
             shutdown {}), reset by the server {} (bytes discarded {}), limit reached {}, \
             source limit {}, refused {}, bytes in {}, out {} (spliced {}, no pipe {}); ",
            t.accepted,
            t.active,
            t.closed_eof,
            t.closed_reset,
            t.closed_error,
            t.closed_idle,
            t.closed_shutdown,
            t.reset_by_server,
            t.discarded,
            t.limit_reached,
            t.source_limited,
            t.refused,
            t.bytes_in,
            t.bytes_out,
            t.spliced,
            t.splice_fallbacks,
        )?;
        let u = &self.udp;
        write!(
            f,
            "udp: datagrams in {}, out {}, dropped {} (service port {}, bad address {}, \
             rate {}, total rate {}, queue full {}, send error {}, shutdown {}), dropped by \
             the kernel {} (as of the last datagram received)",
            u.received,
            u.sent,
            u.dropped(),
            u.dropped_port,
            u.dropped_address,
            u.dropped_rate,
            u.dropped_total_rate,
            u.dropped_queue_full,
            u.dropped_send_error,
            u.dropped_shutdown,
            u.dropped_by_kernel,
        )
    }
}

impl Server {
    /// The counters, with the bytes of connections still open added in.
    pub fn stats(&self) -> Stats {
        let mut tcp = self.stats;
        tcp.spliced = self.buffers.pipes.spliced;
        tcp.splice_fallbacks = self.buffers.pipes.fallbacks;
        for (_, conn) in &self.connections {
            tcp.bytes_in += conn.bytes_in;
            tcp.bytes_out += conn.bytes_out;
        }
        let mut udp = UdpCounters::default();
        for socket in &self.udp {
            udp.add(&socket.counters);
        }
        udp.add(&self.closed_udp);
        Stats { tcp, udp }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_are_counted_by_reason() {
        let mut tcp = TcpStats {
            accepted: 3,
            active: 3,
            ..TcpStats::default()
        };
        tcp.closed(CloseReason::Eof, 10, 10, false);
        tcp.closed(CloseReason::Idle, 5, 4, true);
        tcp.closed(CloseReason::Reset, 1, 0, false);
        assert_eq!(tcp.active, 0);
        assert_eq!(
            (tcp.closed_eof, tcp.closed_idle, tcp.closed_reset),
            (1, 1, 1)
        );
        assert_eq!((tcp.bytes_in, tcp.bytes_out), (16, 14));
        // Only the server's own abortive close counts as a discard: the
        // byte a resetting peer never got back is its own doing.
        assert_eq!((tcp.reset_by_server, tcp.discarded), (1, 1));
    }

    #[test]
    fn summary_is_one_line_with_every_counter() {
        let stats = Stats {
            tcp: TcpStats {
                accepted: 7,
                closed_shutdown: 2,
                reset_by_server: 1,
                discarded: 10,
                bytes_in: 100,
                bytes_out: 90,
                ..TcpStats::default()
            },
            udp: UdpCounters {
                received: 6,
                sent: 3,
                dropped_queue_full: 1,
                dropped_total_rate: 2,
                dropped_by_kernel: 5,
                ..UdpCounters::default()
            },
        };
        let line = stats.to_string();
        assert!(!line.contains('\n'));
        assert!(
            line.starts_with("tcp: accepted 7, active 0, closed 2 ("),
            "{line}"
        );
        assert!(line.contains("shutdown 2"), "{line}");
        assert!(
            line.contains("reset by the server 1 (bytes discarded 10)"),
            "{line}"
        );
        assert!(line.contains("bytes in 100, out 90"), "{line}");
        assert!(
            line.contains("udp: datagrams in 6, out 3, dropped 3 ("),
            "{line}"
        );
        assert!(line.contains("queue full 1"), "{line}");
        assert!(line.contains("total rate 2"), "{line}");
        // Not among the datagrams received, so not in "dropped".
        assert!(
            line.ends_with("dropped by the kernel 5 (as of the last datagram received)"),
            "{line}"
        );
    }
}
