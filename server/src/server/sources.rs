//! The per-source connection limit (`--max-connections-per-source`): one
//! client host cannot take every connection slot and lock the others out.
//!
//! Sources are keyed by [`SourceKey`], as `--udp-rate` keys them: an IPv4
//! address (also when seen as `::ffff:a.b.c.d`), or an IPv6 /64. Loopback
//! sources are exempt unless `--limit-loopback`: local tests and benchmarks
//! open thousands of connections from 127.0.0.1, and Linux drops packets
//! with a loopback source that arrive from another interface.
//!
//! Unlike the UDP rate limiter's fixed table, this one is a map: it needs
//! exact counts (a collision would refuse an innocent host), and it cannot
//! be grown by forged addresses, because every entry is an accepted TCP
//! connection, whose handshake proves its address. An entry is removed when
//! its source's last connection closes, so the memory is bounded by the
//! connections open, and the loop's `--max-connections` bounds those.
//!
//! No I/O here: the server asks [`SourceLimit::admit`] after each accept
//! and tells [`SourceLimit::closed`] at each close.

use std::collections::HashMap;
use std::net::IpAddr;

use std::net::SocketAddr;
use std::time::Duration;

use mio::net::TcpStream;

use super::{Server, count};
use crate::net::{SourceKey, display_addr, is_loopback};

/// The connections open from one source.
#[derive(Clone, Copy, Debug)]
struct Open {
    /// How many.
    count: u32,
    /// A connection from it was refused since its count last left 0: the
    /// episode was logged, further refusals are only counted.
    refusing: bool,
}

/// What to do with a connection just accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// A loopback source, not limited: nothing was counted, nothing needs
    /// telling at close.
    Exempt,
    /// Counted against its source: say [`SourceLimit::serving`] once it
    /// has a key (or [`SourceLimit::forget`] if it is never served).
    Counted(SourceKey),
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
    /// Sources with at least one counted connection open; removed at 0.
    open: HashMap<SourceKey, Open>,
    /// The source of each counted connection, by slab key. A connection
    /// does not carry it itself: every idle connection would grow by 16
    /// bytes, and a socket the peer has reset no longer tells its peer's
    /// address. Exempt connections have no entry, so with only loopback
    /// clients this stays empty and a close never hashes.
    sources: HashMap<usize, SourceKey>,
}

impl SourceLimit {
    /// A limit of `limit` connections per source (at least 1).
    pub fn new(limit: usize, limit_loopback: bool) -> SourceLimit {
        SourceLimit {
            limit: u32::try_from(limit.max(1)).unwrap_or(u32::MAX),
            limit_loopback,
            open: HashMap::new(),
            sources: HashMap::new(),
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
        let open = self.open.entry(source).or_insert(Open {
            count: 0,
            refusing: false,
        });
        if open.count >= self.limit {
            let first = !open.refusing;
            open.refusing = true;
            return Admission::Refused { source, first };
        }
        open.count += 1;
        Admission::Counted(source)
    }

    /// Records that connection `key`, admitted as [`Admission::Counted`]
    /// for `source`, is being served.
    pub fn serving(&mut self, key: usize, source: SourceKey) {
        self.sources.insert(key, source);
    }

    /// Connection `key` closed: uncounts it if it was counted. While no
    /// connection is counted (only loopback clients, exempt) this is one
    /// test of an empty map, no hashing.
    #[inline]
    pub fn closed(&mut self, key: usize) {
        if self.sources.is_empty() {
            return;
        }
        if let Some(source) = self.sources.remove(&key) {
            self.forget(source);
        }
    }

    /// Uncounts one connection from `source`: it closed, or it was admitted
    /// but could not be served.
    pub fn forget(&mut self, source: SourceKey) {
        if let Some(open) = self.open.get_mut(&source) {
            open.count = open.count.saturating_sub(1);
            if open.count == 0 {
                self.open.remove(&source);
            }
        }
    }

    /// Connections counted from `ip` now (0 for an exempt source).
    #[cfg(test)]
    fn count(&self, ip: IpAddr) -> u32 {
        self.open
            .get(&SourceKey::of(ip))
            .map_or(0, |open| open.count)
    }

    /// Sources with connections counted now.
    #[cfg(test)]
    fn sources(&self) -> usize {
        self.open.len()
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

    /// Admits a connection from `from` as slab key `key`, as the server does.
    fn open(limit: &mut SourceLimit, key: usize, from: &str) -> Admission {
        let admission = limit.admit(ip(from));
        if let Admission::Counted(source) = admission {
            limit.serving(key, source);
        }
        admission
    }

    #[test]
    fn the_connection_over_the_limit_is_refused_and_a_close_makes_room() {
        let mut limit = SourceLimit::new(2, false);
        assert!(matches!(
            open(&mut limit, 0, "192.0.2.1"),
            Admission::Counted(_)
        ));
        assert!(matches!(
            open(&mut limit, 1, "192.0.2.1"),
            Admission::Counted(_)
        ));
        let source = SourceKey::of(ip("192.0.2.1"));
        assert_eq!(
            open(&mut limit, 2, "192.0.2.1"),
            Admission::Refused {
                source,
                first: true
            }
        );
        // The episode goes on: counted, not logged again.
        assert_eq!(
            open(&mut limit, 2, "192.0.2.1"),
            Admission::Refused {
                source,
                first: false
            }
        );
        // Another host is not affected.
        assert!(matches!(
            open(&mut limit, 2, "192.0.2.2"),
            Admission::Counted(_)
        ));
        limit.closed(1);
        assert_eq!(limit.count(ip("192.0.2.1")), 1);
        assert!(matches!(
            open(&mut limit, 1, "192.0.2.1"),
            Admission::Counted(_)
        ));
    }

    #[test]
    fn a_source_is_forgotten_when_its_last_connection_closes() {
        let mut limit = SourceLimit::new(1, false);
        open(&mut limit, 0, "192.0.2.1");
        open(&mut limit, 1, "192.0.2.1"); // refused: starts an episode
        open(&mut limit, 2, "2001:db8::1");
        assert_eq!(limit.sources(), 2);
        limit.closed(0);
        limit.closed(2);
        assert_eq!((limit.sources(), limit.sources.len()), (0, 0));
        // A new episode is logged again.
        open(&mut limit, 0, "192.0.2.1");
        assert!(matches!(
            open(&mut limit, 1, "192.0.2.1"),
            Admission::Refused { first: true, .. }
        ));
    }

    #[test]
    fn closing_an_uncounted_key_changes_nothing() {
        let mut limit = SourceLimit::new(1, false);
        open(&mut limit, 0, "192.0.2.1");
        limit.closed(7);
        assert_eq!(limit.count(ip("192.0.2.1")), 1);
    }

    #[test]
    fn mapped_ipv4_and_one_ipv6_prefix_are_one_source_each() {
        let mut limit = SourceLimit::new(1, false);
        open(&mut limit, 0, "192.0.2.1");
        assert!(matches!(
            open(&mut limit, 1, "::ffff:192.0.2.1"),
            Admission::Refused { .. }
        ));
        open(&mut limit, 1, "2001:db8:1:2::1");
        assert!(matches!(
            open(&mut limit, 2, "2001:db8:1:2::99"),
            Admission::Refused { .. }
        ));
        assert!(matches!(
            open(&mut limit, 2, "2001:db8:1:3::1"),
            Admission::Counted(_)
        ));
    }

    #[test]
    fn loopback_is_exempt_unless_limited() {
        let mut limit = SourceLimit::new(1, false);
        for key in 0..3 {
            for from in ["127.0.0.1", "::1", "::ffff:127.0.0.2"] {
                assert_eq!(open(&mut limit, key, from), Admission::Exempt);
            }
        }
        assert_eq!(limit.sources(), 0);
        let mut limit = SourceLimit::new(1, true);
        assert!(matches!(
            open(&mut limit, 0, "127.0.0.1"),
            Admission::Counted(_)
        ));
        assert!(matches!(
            open(&mut limit, 1, "127.0.0.1"),
            Admission::Refused { .. }
        ));
        assert!(matches!(
            open(&mut limit, 1, "127.0.0.2"),
            Admission::Counted(_)
        ));
    }

    #[test]
    fn a_connection_admitted_but_not_served_is_uncounted() {
        let mut limit = SourceLimit::new(1, false);
        let Admission::Counted(source) = limit.admit(ip("192.0.2.1")) else {
            panic!("the first connection is admitted");
        };
        limit.forget(source);
        assert_eq!(limit.sources(), 0);
    }
}
