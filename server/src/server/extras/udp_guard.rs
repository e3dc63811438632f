//! Which datagrams the UDP echo refuses to answer, and why.
//!
//! **Loops.** CERT advisory CA-1996-01 ("UDP Port Denial-of-Service
//! Attack"): a forged datagram that claims to come from the chargen port of
//! one host, sent to the echo port of another, makes the two services
//! answer each other for ever, flooding both hosts and the network between
//! them. Any two services that answer every datagram will do (echo with
//! echo, echo with chargen, daytime, time, qotd). An echo service breaks
//! the loop on its side by never answering a datagram whose source port is
//! such a service's.
//!
//! **Reflection.** A service that answers strangers is a reflector: an
//! attacker forges the victim's address as the source, and the answers go
//! to the victim. Refusing broadcast and multicast sources (no single host
//! asked) and the ports of well-known responders covers the loops; a
//! per-source rate limit bounds what any one victim can be sent.
//!
//! [`UdpGuard::check`] decides for each datagram, in this order:
//!
//! 1. the source address must be one host's (not broadcast, multicast or
//!    unspecified): [`refused_address`];
//! 2. the source port must not be 0 nor one of [`refused_ports`] (all
//!    below 1024, plus [`REFLECTOR_PORTS`]), unless `--udp-allow-ports`
//!    allows it;
//! 3. a loopback source is answered now, unless the limits hold loopback
//!    too (`--limit-loopback`, or `route_localnet` on: see
//!    [`GuardConfig::limit_loopback`]);
//! 4. the source must still have a token in its [`RateLimiter`] bucket;
//! 5. all sources together must still have a token in the total budget
//!    ([`TotalBudget`], `--udp-rate-total`), so that a flood forged from
//!    many addresses, each within its own rate, is bounded too.
//!
//! Only a datagram that passes 1 and 2 spends a token, so refused traffic
//! does not eat into a sender's rate; only one within its source's rate
//! spends a token of the total, so one heavy sender cannot use up the
//! budget of all the others.
//!
//! This module does no I/O and allocates nothing per datagram; the time is
//! passed in, so tests drive the clock. Counting and logging the drops is
//! the caller's (`udp.rs`).

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::net::SourceKey;

/// Source ports below this are refused: they belong to system services,
/// several of which answer every datagram (echo 7, discard 9, daytime 13,
/// qotd 17, chargen 19, time 37, DNS 53, NTP 123, SNMP 161, ...). This is
/// what OpenBSD's inetd does for its built-in datagram services
/// (`dg_badinput` in `usr.sbin/inetd/inetd.c`: `port < IPPORT_RESERVED`).
/// No ordinary client sends from these ports: the kernel never picks them
/// as ephemeral ports, and binding them needs privileges.
pub const FIRST_UNPRIVILEGED_PORT: u16 = 1024;

/// Ports of 1024 and above that are refused too: services that answer
/// datagrams from anyone and are known reflectors or amplifiers. An echo
/// service answering them could feed a loop with them or be a second
/// reflector behind one. The source for each is beside it.
pub const REFLECTOR_PORTS: [(u16, &str); 6] = [
    // US-CERT/CISA alert TA14-017A, "UDP-Based Amplification Attacks".
    (1900, "SSDP"),
    // OpenBSD's inetd refuses it beside the privileged ports (`NFS_PORT`).
    (2049, "NFS"),
    // Web Services Dynamic Discovery; reflection attacks reported by
    // Akamai's SIRT in 2019.
    (3702, "WS-Discovery"),
    // TA14-017A.
    (5353, "multicast DNS"),
    // RFC 7252, section 11.3 "Risk of Amplification".
    (5683, "CoAP"),
    // TA14-017A (its 2018 update on memcached reflection).
    (11211, "memcached"),
];

/// The default of `--udp-rate`: datagrams answered per second per source,
/// with bursts of as many. An echo client (a person with `nc -u`, a probe,
/// a latency test) stays far below it; a reflection attack that forges one
/// victim's address gets at most this many answers per second sent there.
/// Loopback sources are exempt by default, so a load test on the same
/// host needs nothing; from another host it needs `--udp-rate 0`.
pub const DEFAULT_UDP_RATE: u32 = 1000;

/// The default of `--udp-rate-total`: datagrams answered per second from
/// all non-loopback sources together, with bursts of as many. A flood
/// forged from many addresses stays within each one's `--udp-rate` and
/// would otherwise be answered as fast as the CPU allows (hundreds of
/// thousands per second). Ten times the default per-source rate: ten
/// clients at their full rate at once, or thousands of ordinary ones, are
/// all answered; and what a forged flood can make echod send, to all its
/// victims together, is at most 10,000 datagrams per second (at 1,400
/// bytes, an Ethernet-sized datagram, 14 MB/s or about 110 Mbit/s).
/// A fixed figure rather than a multiple of `--udp-rate`, so raising one
/// does not silently raise the other.
pub const DEFAULT_UDP_RATE_TOTAL: u32 = 10 * DEFAULT_UDP_RATE;

/// Buckets in the rate limiter's table: 4,096 × 16 bytes = 64 KiB per UDP
/// socket, whatever the number of sources. A power of two, so a hash picks
/// a bucket with a mask.
pub const RATE_BUCKETS: usize = 4096;

/// The most often a warning about dropped datagrams is logged, per reason.
/// Between warnings the drops are counted and the next warning says how
/// many there were (each one is logged at debug level).
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// How the guard is set up; part of the server's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardConfig {
    /// Source ports answered although they are refused by default
    /// (`--udp-allow-ports`). Meant for testing.
    pub allow_ports: Vec<PortRange>,
    /// Datagrams per second answered per source (`--udp-rate`); bursts of
    /// as many. 0 turns the limit off.
    pub rate: u32,
    /// Datagrams per second answered from all sources together that the
    /// limits hold (`--udp-rate-total`); bursts of as many. 0 turns the
    /// budget off.
    pub rate_total: u32,
    /// Hold loopback sources (see [`crate::net::is_loopback`]) to the two
    /// rates too. Off, they are exempt: local clients, tests and
    /// benchmarks come from there, and Linux drops packets with a loopback
    /// source that arrive on another interface. The server turns it on
    /// for `--limit-loopback` ([`crate::server::ServerConfig::limit_loopback`])
    /// and when `route_localnet` lets such packets in.
    pub limit_loopback: bool,
}

impl Default for GuardConfig {
    /// The defaults of the command line: nothing extra allowed, the
    /// default rate.
    fn default() -> GuardConfig {
        GuardConfig {
            allow_ports: Vec::new(),
            rate: DEFAULT_UDP_RATE,
            rate_total: DEFAULT_UDP_RATE_TOTAL,
            limit_loopback: false,
        }
    }
}

/// Why a datagram was not answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The source address is not one host's: broadcast, multicast or
    /// unspecified.
    Address,
    /// The source port is 0 or a service's that answers datagrams.
    Port,
    /// The source sent more than `--udp-rate` allows.
    Rate,
    /// All sources together sent more than `--udp-rate-total` allows.
    TotalRate,
}

/// How many [`DropReason`]s there are: the size of tables indexed by
/// [`DropReason::index`].
pub const DROP_REASONS: usize = 4;

impl DropReason {
    /// A small number for tables indexed by reason.
    pub fn index(self) -> usize {
        match self {
            DropReason::Address => 0,
            DropReason::Port => 1,
            DropReason::Rate => 2,
            DropReason::TotalRate => 3,
        }
    }

    /// What an operator can do about drops of this kind, if anything.
    pub fn hint(self) -> Option<&'static str> {
        match self {
            DropReason::Address => None,
            DropReason::Port => Some("--udp-allow-ports answers such ports, for testing"),
            DropReason::Rate => Some("--udp-rate sets the limit, 0 turns it off"),
            DropReason::TotalRate => Some("--udp-rate-total sets the budget, 0 turns it off"),
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DropReason::Address => "its source address is broadcast, multicast or unspecified",
            DropReason::Port => {
                "its source port is 0 or belongs to a service that answers datagrams, \
                 which could start an endless loop (CERT CA-1996-01)"
            }
            DropReason::Rate => "its source sent more datagrams per second than --udp-rate allows",
            DropReason::TotalRate => {
                "all sources together sent more datagrams per second than --udp-rate-total \
                 allows"
            }
        })
    }
}

/// What to do with one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Echo it.
    Answer,
    /// Do not answer; count and log it.
    Drop(DropReason),
}

/// The server's guard, one for all its UDP sockets (so a source's rate
/// and the total budget hold however many addresses echod serves): the
/// port rule as a set, the per-source rate limiter and the total budget.
pub struct UdpGuard {
    refused: PortSet,
    limiter: Option<RateLimiter>,
    total: Option<TotalBudget>,
    /// Loopback sources skip the two rates (see
    /// [`GuardConfig::limit_loopback`]).
    exempt_loopback: bool,
}

impl UdpGuard {
    /// Builds the guard; `now` starts the rate limiter's clock.
    pub fn new(config: &GuardConfig, now: Instant) -> UdpGuard {
        let mut refused = refused_ports();
        for range in &config.allow_ports {
            for port in range.first..=range.last {
                refused.remove(port);
            }
        }
        // Port 0 is refused whatever the allow list says: no answer can be
        // sent to it. (Parsing never yields a range holding 0; a range built
        // in code might.)
        refused.insert(0);
        UdpGuard {
            refused,
            limiter: (config.rate > 0).then(|| RateLimiter::new(config.rate, now)),
            total: (config.rate_total > 0).then(|| TotalBudget::new(config.rate_total, now)),
            exempt_loopback: !config.limit_loopback,
        }
    }

    /// Decides whether to answer a datagram from `source`, received at
    /// about `now`. Spends one of the source's tokens if it is within its
    /// rate, and one of the total budget's if it is answered.
    pub fn check(&mut self, source: SocketAddr, now: Instant) -> Verdict {
        // A dual-stack socket shows IPv4 senders as ::ffff:a.b.c.d; judge
        // them as the IPv4 addresses they are.
        let ip = source.ip().to_canonical();
        if refused_address(ip) {
            return Verdict::Drop(DropReason::Address);
        }
        if self.refused.contains(source.port()) {
            return Verdict::Drop(DropReason::Port);
        }
        if self.exempt_loopback && crate::net::is_loopback(ip) {
            return Verdict::Answer;
        }
        if let Some(limiter) = &mut self.limiter
            && !limiter.allow(ip, now)
        {
            return Verdict::Drop(DropReason::Rate);
        }
        if let Some(total) = &mut self.total
            && !total.allow(now)
        {
            return Verdict::Drop(DropReason::TotalRate);
        }
        Verdict::Answer
    }
}

/// True for source addresses that are not one host's, so a datagram from
/// them is forged or broken, and an answer would reach many hosts or none.
///
/// Expects a canonical address (v4-mapped IPv6 already turned into IPv4).
/// IPv4, as OpenBSD's inetd refuses them:
/// - 0.0.0.0/8, "this network" (RFC 1122 3.2.1.3: only a source while a
///   host learns its address, never one to answer), which holds 0.0.0.0;
/// - 255.0.0.0/8, which holds the limited broadcast 255.255.255.255;
/// - 224.0.0.0/4, multicast.
///
/// IPv6: the unspecified address `::` and multicast ff00::/8.
///
/// A *directed* broadcast (such as 192.168.1.255 on a /24) cannot be
/// recognised from the address alone: it takes the interfaces' netmasks,
/// which OpenBSD's inetd looks up for every datagram. echod does not; the
/// rate limit bounds what such a source can cause. (Linux itself discards
/// most datagrams with these sources as "martians" before any socket sees
/// them; this check keeps echod safe where that does not happen.)
///
/// Loopback sources are answered, unlike in OpenBSD's inetd: local clients
/// and the tests use them, and Linux drops loopback sources arriving from
/// outside (unless `route_localnet` is on; see [`UdpGuard`]).
pub fn refused_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let first = v4.octets()[0];
            first == 0 || first == 255 || v4.is_multicast()
        }
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast(),
    }
}

/// The source ports refused by default: 0, everything below
/// [`FIRST_UNPRIVILEGED_PORT`], and [`REFLECTOR_PORTS`].
pub fn refused_ports() -> PortSet {
    let mut set = PortSet::empty();
    for port in 0..FIRST_UNPRIVILEGED_PORT {
        set.insert(port);
    }
    for (port, _) in REFLECTOR_PORTS {
        set.insert(port);
    }
    set
}

/// A set of ports as a bitmap: 65,536 bits, 8 KiB, one lookup per
/// datagram whatever the allow list looks like.
#[derive(Clone)]
pub struct PortSet {
    words: Box<[u64; 1024]>,
}

impl PortSet {
    /// No port.
    pub fn empty() -> PortSet {
        PortSet {
            words: Box::new([0; 1024]),
        }
    }

    /// Adds `port`.
    pub fn insert(&mut self, port: u16) {
        self.words[usize::from(port / 64)] |= 1 << (port % 64);
    }

    /// Takes `port` out.
    pub fn remove(&mut self, port: u16) {
        self.words[usize::from(port / 64)] &= !(1 << (port % 64));
    }

    /// Whether `port` is in the set.
    pub fn contains(&self, port: u16) -> bool {
        self.words[usize::from(port / 64)] & (1 << (port % 64)) != 0
    }
}

/// A port or an inclusive range of ports, as given to `--udp-allow-ports`
/// (`7` or `1000-1023`). Never includes port 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    /// The first port of the range.
    pub first: u16,
    /// The last port of the range (the same as `first` for one port).
    pub last: u16,
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(text: &str) -> Result<PortRange, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("an item of the port list is empty; give ports and ranges \
                        separated by commas, such as 7,19,1000-1023"
                .to_string());
        }
        let (first, last) = match text.split_once('-') {
            Some((first, last)) => (parse_port(first, text)?, parse_port(last, text)?),
            None => {
                let port = parse_port(text, text)?;
                (port, port)
            }
        };
        if first > last {
            return Err(format!(
                "the range {text} is backwards; write the lower port first, as in {last}-{first}"
            ));
        }
        Ok(PortRange { first, last })
    }
}

/// One end of a range; `item` is the whole item, for the message.
fn parse_port(text: &str, item: &str) -> Result<u16, String> {
    let port: u32 = text.trim().parse().map_err(|_| {
        format!("'{item}' is not a port or a range of ports, such as 7 or 1000-1023")
    })?;
    match port {
        0 => Err("port 0 cannot be allowed: no answer can be sent to port 0".to_string()),
        1..=65_535 => Ok(port as u16),
        _ => Err(format!("{port} is not a port; ports go from 1 to 65535")),
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Nano-tokens in one token: buckets count in billionths of a datagram,
/// so that a rate in datagrams per second adds exactly `rate` nano-tokens
/// per nanosecond, in integers, with no rounding drift.
const NANO: u64 = 1_000_000_000;

/// One token bucket: 16 bytes.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Tokens left, in nano-tokens, at most the limiter's capacity.
    tokens: u64,
    /// When `tokens` was last brought up to date, in nanoseconds since
    /// the limiter's epoch.
    updated: u64,
}

impl Bucket {
    /// Refills the bucket for the time up to `now` (nanoseconds since the
    /// epoch) at `rate` nano-tokens per nanosecond, up to `capacity`, then
    /// takes a token if there is one.
    fn take(&mut self, now: u64, rate: u64, capacity: u64) -> bool {
        // Refill for the time since the bucket was last touched. A clock
        // reading older than the bucket's (two sockets' readings racing)
        // refills nothing rather than going back in time.
        let elapsed = now.saturating_sub(self.updated);
        self.tokens = self
            .tokens
            .saturating_add(elapsed.saturating_mul(rate))
            .min(capacity);
        self.updated = self.updated.max(now);
        if self.tokens >= NANO {
            self.tokens -= NANO;
            true
        } else {
            false
        }
    }
}

/// The total budget: one token bucket for all the sources the limits hold,
/// `rate` datagrams per second in bursts of as many.
///
/// The per-source table bounds what one address gets; a flood forged from
/// many addresses gets one burst from each bucket it touches, up to
/// [`RATE_BUCKETS`] × `--udp-rate` at once, and each again every second.
/// This bucket bounds the sum. Its price: while a flood spends it, honest
/// sources are refused too (each drop counted and logged as `total rate`),
/// which is the choice between answering everyone slowly and letting echod
/// be turned into a reflector at full speed.
pub struct TotalBudget {
    bucket: Bucket,
    epoch: Instant,
    rate: u64,
    capacity: u64,
}

impl TotalBudget {
    /// A full budget of `rate` datagrams per second (at least 1); `now` is
    /// its time zero.
    pub fn new(rate: u32, now: Instant) -> TotalBudget {
        let rate = u64::from(rate.max(1));
        // u32::MAX tokens is 4.3e18 nano-tokens: fits in a u64 (1.8e19).
        let capacity = rate * NANO;
        TotalBudget {
            bucket: Bucket {
                tokens: capacity,
                updated: 0,
            },
            epoch: now,
            rate,
            capacity,
        }
    }

    /// Takes a token if one is left at `now`.
    pub fn allow(&mut self, now: Instant) -> bool {
        let now = nanos_between(self.epoch, now);
        self.bucket.take(now, self.rate, self.capacity)
    }
}

/// Nanoseconds from `epoch` to `now`: 0 if `now` is earlier, and
/// saturating (u64 nanoseconds last 584 years) rather than wrapping.
fn nanos_between(epoch: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

/// Per-source token buckets in a table of fixed size.
///
/// Each source may send `rate` datagrams per second, and `rate` at once
/// after a quiet second (the burst). A datagram takes a token from its
/// source's bucket; a bucket refills at `rate` tokens per second up to
/// `rate`; with no token left, the datagram is dropped.
///
/// **Bounded memory.** Sources are not entries in a map: a spoofing
/// attacker can claim a new address with every datagram, and a map would
/// grow until memory runs out (or need an eviction policy the attacker can
/// game). Instead the table is a fixed array of [`RATE_BUCKETS`] buckets,
/// and a source's bucket is picked by hashing its address. Memory and the
/// work per datagram (one hash, one bucket) are the same for 1 source or
/// 2^128.
///
/// **The trade-off: collisions.** Addresses that hash to the same bucket
/// share its tokens. A heavy sender can use up the rate of the few
/// innocent sources that share its bucket (with 4,096 buckets, any one
/// other source shares with it with odds of 1 in 4,096), and a spoofed
/// flood over many addresses drains many buckets at once: the table then
/// limits the whole server to about `RATE_BUCKETS × rate` answers per
/// second, which is still a bound. To keep an attacker from *aiming* at a
/// victim's bucket, the hash is std's SipHash with keys drawn at random
/// when the server starts (`RandomState`), so nobody outside can tell
/// which addresses collide.
///
/// **The key** is [`SourceKey`]: the port is left out (a host can use any
/// number of them), and an IPv6 source is keyed by its /64 prefix: a host
/// usually holds a whole /64 and may pick any address in it (privacy
/// addresses), so a per-address key would hand one host 2^64 buckets. The
/// per-source connection limit keys sources the same way.
pub struct RateLimiter {
    buckets: Box<[Bucket]>,
    keys: RandomState,
    /// Time zero for `Bucket::updated`.
    epoch: Instant,
    /// Datagrams per second, which is nano-tokens per nanosecond.
    rate: u64,
    /// The burst, in nano-tokens: `rate` tokens.
    capacity: u64,
}

impl RateLimiter {
    /// A table of full buckets for `rate` datagrams per second (at least
    /// 1); `now` is its time zero.
    pub fn new(rate: u32, now: Instant) -> RateLimiter {
        let rate = u64::from(rate.max(1));
        // u32::MAX tokens is 4.3e18 nano-tokens: fits in a u64 (1.8e19).
        let capacity = rate * NANO;
        RateLimiter {
            buckets: vec![
                Bucket {
                    tokens: capacity,
                    updated: 0,
                };
                RATE_BUCKETS
            ]
            .into_boxed_slice(),
            keys: RandomState::new(),
            epoch: now,
            rate,
            capacity,
        }
    }

    /// Takes a token from the bucket of `ip` (canonical: v4-mapped turned
    /// into IPv4) if it has one; false if the source is over its rate.
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let now = self.nanos_since_epoch(now);
        let index = self.bucket_of(ip);
        let (rate, capacity) = (self.rate, self.capacity);
        self.buckets[index].take(now, rate, capacity)
    }

    /// The bucket a source maps to.
    fn bucket_of(&self, ip: IpAddr) -> usize {
        // The mask keeps the index in the table: RATE_BUCKETS is a power
        // of two (checked by a test).
        (self.keys.hash_one(SourceKey::of(ip)) as usize) & (RATE_BUCKETS - 1)
    }

    fn nanos_since_epoch(&self, now: Instant) -> u64 {
        nanos_between(self.epoch, now)
    }
}

/// Decides when to warn about drops: at the first drop of a reason, then
/// at most once per [`WARN_INTERVAL`] per reason, with how many were
/// dropped since the last warning. A flood of refused datagrams thus costs
/// one log line per reason per interval, not one per datagram.
///
/// Drops after the last warning are reported with the next drop that comes
/// an interval later; the counters hold the exact totals.
#[derive(Debug, Default)]
pub struct DropWarnings {
    /// Per reason: drops not yet reported, and when the last warning was.
    unreported: [u64; DROP_REASONS],
    last_warning: [Option<Instant>; DROP_REASONS],
}

/// A warning to log now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Warning {
    /// Datagrams dropped for this reason since the last warning, this one
    /// included.
    pub dropped: u64,
    /// How long ago the last warning for this reason was; `None` for the
    /// first.
    pub since_last: Option<Duration>,
}

impl DropWarnings {
    /// Records one drop at `now`; says whether to warn, and what.
    pub fn record(&mut self, reason: DropReason, now: Instant) -> Option<Warning> {
        let i = reason.index();
        self.unreported[i] += 1;
        let since_last = self.last_warning[i].map(|then| now.saturating_duration_since(then));
        if since_last.is_some_and(|since| since < WARN_INTERVAL) {
            return None;
        }
        self.last_warning[i] = Some(now);
        let dropped = std::mem::take(&mut self.unreported[i]);
        Some(Warning {
            dropped,
            since_last,
        })
    }
}

#[cfg(test)]
mod tests;
