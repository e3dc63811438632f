//! The per-source connection limit (`--max-connections-per-source`): one
//! client host cannot take every connection slot and lock the others out.
//!
//! Sources are keyed by [`SourceKey`], as `--udp-rate` keys them: an IPv4
//! address (also when seen as `::ffff:a.b.c.d`), an IPv6 /64, or a whole
//! link-local (`fe80::/10`) address. Loopback
//! sources are exempt unless `--limit-loopback`: local tests and benchmarks
//! open thousands of connections from 127.0.0.1, and Linux drops packets
//! with a loopback source that arrive from another interface.
//!
//! Unlike the UDP rate limiter's fixed table, this one is exact: a
//! collision would refuse an innocent host. It cannot be grown by forged
//! addresses, because every source in it has an accepted TCP connection,
//! whose handshake proves its address. A source is removed when its last
//! connection closes, so the memory is bounded by the connections open,
//! and the loop's `--max-connections` bounds those.
//!
//! Memory is per source, not per connection: a source's count lives in a
//! table slot, found by a map from its key at accept, and each counted
//! connection keeps only the slot's number ([`SourceId`], four bytes in
//! what was padding of `Connection`). A map from connection to source
//! cost an idle remote client some 45 bytes on top of its 56, and a
//! connection cannot find its source again at close: a socket the peer
//! has reset no longer tells its peer's address.
//!
//! No I/O here: the server asks [`SourceLimit::admit`] after each accept
//! and tells [`SourceLimit::closed`] at each close of a counted connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;

use slab::Slab;

use std::net::SocketAddr;
use std::time::Duration;

use mio::net::TcpStream;

use super::{Server, count};
use crate::net::{SourceKey, display_addr, is_loopback};

/// The connections open from one source.
#[derive(Clone, Copy, Debug)]
struct Open {
    /// The source, to remove it from the map when its count reaches 0.
    source: SourceKey,
    /// How many.
    count: u32,
    /// A connection from it was refused since its count last left 0: the
    /// episode was logged, further refusals are only counted.
    refusing: bool,
}

/// The table slot of a source with counted connections, which each of
/// them keeps until it closes. Non-zero, so that `Option<SourceId>` (an
/// exempt connection has none) takes four bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceId(NonZeroU32);

impl SourceId {
    /// The id of table slot `slot`; `None` beyond four billion slots,
    /// which `--max-connections` rules out (every slot has a connection).
    fn of(slot: usize) -> Option<SourceId> {
        u32::try_from(slot + 1)
            .ok()
            .and_then(NonZeroU32::new)
            .map(SourceId)
    }

    fn slot(self) -> usize {
        // u32 fits in usize on the platforms echod builds for (64-bit
        // Linux and the BSDs); the conversion cannot lose bits there.
        self.0.get() as usize - 1
    }
}

/// What to do with a connection just accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// A loopback source, not limited: nothing was counted, nothing needs
    /// telling at close.
    Exempt,
    /// Counted against its source: the connection keeps the id and gives
    /// it to [`SourceLimit::closed`] when it closes (or at once if it is
    /// never served).
    Counted(SourceId),
    /// Its source has the most connections allowed: reset it.
    Refused {
        /// The source.
        source: SourceKey,
        /// True for the first refusal of an episode (which lasts until the
        /// source's connections have all closed): log it where people look.
        first: bool,
    },
}

/// Counts of open connections per source, and the limit.
#[derive(Debug)]
pub struct SourceLimit {
    /// Most connections open at once per source.
    limit: u32,
    /// Count loopback sources too (`--limit-loopback`).
    limit_loopback: bool,
    /// Sources with at least one counted connection open, by table slot;
    /// removed at 0.
    table: Slab<Open>,
    /// The table slot of each source in it.
    slots: HashMap<SourceKey, SourceId>,
}

impl SourceLimit {
    /// A limit of `limit` connections per source (at least 1).
    pub fn new(limit: usize, limit_loopback: bool) -> SourceLimit {
        SourceLimit {
            limit: u32::try_from(limit.max(1)).unwrap_or(u32::MAX),
            limit_loopback,
            table: Slab::new(),
            slots: HashMap::new(),
        }
    }

    /// The limit.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Decides on a connection from `ip`, and counts it if it is admitted.
    /// For an exempt source this is one `is_loopback` test.
    pub fn admit(&mut self, ip: IpAddr) -> Admission {
        if !self.limit_loopback && is_loopback(ip) {
            return Admission::Exempt;
        }
        let source = SourceKey::of(ip);
        let id = match self.slots.get(&source) {
            Some(&id) => id,
            None => {
                let entry = self.table.vacant_entry();
                let Some(id) = SourceId::of(entry.key()) else {
                    // Cannot happen (see `SourceId::of`); were it to, the
                    // connection goes uncounted rather than refused.
                    return Admission::Exempt;
                };
                entry.insert(Open {
                    source,
                    count: 0,
                    refusing: false,
                });
                self.slots.insert(source, id);
                id
            }
        };
        let Some(open) = self.table.get_mut(id.slot()) else {
            return Admission::Exempt;
        };
        if open.count >= self.limit {
            let first = !open.refusing;
            open.refusing = true;
            return Admission::Refused { source, first };
        }
        open.count += 1;
        Admission::Counted(id)
    }

    /// A connection admitted as [`Admission::Counted`] with `id` closed,
    /// or could not be served: uncounts it, and forgets its source once
    /// none of its connections is left. A table lookup; it hashes only to
    /// forget a source.
    pub fn closed(&mut self, id: SourceId) {
        let Some(open) = self.table.get_mut(id.slot()) else {
            return;
        };
        open.count = open.count.saturating_sub(1);
        if open.count == 0 {
            let source = open.source;
            self.table.remove(id.slot());
            self.slots.remove(&source);
        }
    }

    /// Connections counted from `ip` now (0 for an exempt source).
    #[cfg(test)]
    fn count(&self, ip: IpAddr) -> u32 {
        self.slots
            .get(&SourceKey::of(ip))
            .and_then(|id| self.table.get(id.slot()))
            .map_or(0, |open| open.count)
    }

    /// Sources with connections counted now (the map and the table agree).
    #[cfg(test)]
    fn sources(&self) -> usize {
        assert_eq!(self.slots.len(), self.table.len());
        self.slots.len()
    }
}

impl Server {
    /// Resets a connection whose source has the most connections
    /// `--max-connections-per-source` allows: `SO_LINGER` 0, then close,
    /// makes the kernel send an RST (socket(7)), so the client learns at
    /// once rather than after a timeout, and nothing lingers in TIME_WAIT.
    /// The first refusal of an episode is a warning; the rest are counted.
    pub(super) fn refuse_over_source_limit(
        &mut self,
        stream: TcpStream,
        peer: SocketAddr,
        source: SourceKey,
        first: bool,
    ) {
        self.stats.source_limited += 1;
        if let Err(err) = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)) {
            // Closed without it, the client gets a FIN instead: still told.
            log::debug!("could not set SO_LINGER for {}: {err}", display_addr(peer));
        }
        drop(stream);
        if first {
            log::warn!(
                "{source} has {} open, the most --max-connections-per-source allows: its \
                 new connections are reset until all of its connections have closed \
                 (counted as \"source limit\"). If it is one host of many behind a NAT or \
                 proxy, raise --max-connections-per-source.",
                count(u64::from(self.per_source.limit()), "connection")
            );
        } else {
            log::debug!(
                "connection from {} reset: over its source's limit",
                display_addr(peer)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// Admits a connection from `from`, as the server does.
    fn open(limit: &mut SourceLimit, from: &str) -> Admission {
        limit.admit(ip(from))
    }

    /// Admits a connection from `from` that must be counted; its id.
    #[track_caller]
    fn counted(limit: &mut SourceLimit, from: &str) -> SourceId {
        match open(limit, from) {
            Admission::Counted(id) => id,
            other => panic!("{from}: {other:?}"),
        }
    }

    #[test]
    fn the_connection_over_the_limit_is_refused_and_a_close_makes_room() {
        let mut limit = SourceLimit::new(2, false);
        let first = counted(&mut limit, "192.0.2.1");
        let second = counted(&mut limit, "192.0.2.1");
        assert_eq!(first, second, "one source, one slot");
        let source = SourceKey::of(ip("192.0.2.1"));
        assert_eq!(
            open(&mut limit, "192.0.2.1"),
            Admission::Refused {
                source,
                first: true
            }
        );
        // The episode goes on: counted, not logged again.
        assert_eq!(
            open(&mut limit, "192.0.2.1"),
            Admission::Refused {
                source,
                first: false
            }
        );
        // Another host is not affected.
        let other = counted(&mut limit, "192.0.2.2");
        assert_ne!(other, first);
        limit.closed(second);
        assert_eq!(limit.count(ip("192.0.2.1")), 1);
        counted(&mut limit, "192.0.2.1");
    }

    #[test]
    fn a_source_is_forgotten_when_its_last_connection_closes() {
        let mut limit = SourceLimit::new(1, false);
        let first = counted(&mut limit, "192.0.2.1");
        open(&mut limit, "192.0.2.1"); // refused: starts an episode
        let v6 = counted(&mut limit, "2001:db8::1");
        assert_eq!(limit.sources(), 2);
        limit.closed(first);
        limit.closed(v6);
        assert_eq!(limit.sources(), 0);
        // A new episode is logged again.
        counted(&mut limit, "192.0.2.1");
        assert!(matches!(
            open(&mut limit, "192.0.2.1"),
            Admission::Refused { first: true, .. }
        ));
    }

    /// A close given an id whose source is gone (which the server never
    /// does: each counted connection closes once) changes nothing.
    #[test]
    fn closing_a_source_that_is_gone_changes_nothing() {
        let mut limit = SourceLimit::new(2, false);
        let gone = counted(&mut limit, "192.0.2.1");
        limit.closed(gone);
        limit.closed(gone);
        assert_eq!(limit.sources(), 0);
        counted(&mut limit, "192.0.2.2");
        assert_eq!(limit.count(ip("192.0.2.2")), 1);
    }

    #[test]
    fn mapped_ipv4_and_one_ipv6_prefix_are_one_source_each() {
        let mut limit = SourceLimit::new(1, false);
        counted(&mut limit, "192.0.2.1");
        assert!(matches!(
            open(&mut limit, "::ffff:192.0.2.1"),
            Admission::Refused { .. }
        ));
        counted(&mut limit, "2001:db8:1:2::1");
        assert!(matches!(
            open(&mut limit, "2001:db8:1:2::99"),
            Admission::Refused { .. }
        ));
        counted(&mut limit, "2001:db8:1:3::1");
    }

    #[test]
    fn loopback_is_exempt_unless_limited() {
        let mut limit = SourceLimit::new(1, false);
        for _ in 0..3 {
            for from in ["127.0.0.1", "::1", "::ffff:127.0.0.2"] {
                assert_eq!(open(&mut limit, from), Admission::Exempt);
            }
        }
        assert_eq!(limit.sources(), 0);
        let mut limit = SourceLimit::new(1, true);
        counted(&mut limit, "127.0.0.1");
        assert!(matches!(
            open(&mut limit, "127.0.0.1"),
            Admission::Refused { .. }
        ));
        counted(&mut limit, "127.0.0.2");
    }

    /// Slots are reused: memory follows the sources open, not every
    /// source ever seen.
    #[test]
    fn the_table_holds_only_sources_with_connections_open() {
        let mut limit = SourceLimit::new(4, false);
        for round in 0..100u8 {
            let id = counted(&mut limit, &format!("192.0.2.{round}"));
            limit.closed(id);
        }
        assert_eq!(limit.sources(), 0);
        assert!(limit.table.capacity() <= 4, "{}", limit.table.capacity());
    }
}
