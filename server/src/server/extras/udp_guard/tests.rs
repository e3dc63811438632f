//! The guard's rules, one group per rule, with a clock the tests drive.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::*;

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn v6(text: &str) -> IpAddr {
    IpAddr::V6(text.parse::<Ipv6Addr>().unwrap())
}

fn from(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// A guard with the default rules and no rate limit nor total budget, so
/// each test sees one rule at a time.
fn unlimited(allow: &str) -> UdpGuard {
    let allow_ports = if allow.is_empty() {
        Vec::new()
    } else {
        allow.split(',').map(|item| item.parse().unwrap()).collect()
    };
    UdpGuard::new(
        &GuardConfig {
            allow_ports,
            rate: 0,
            rate_total: 0,
            ..GuardConfig::default()
        },
        Instant::now(),
    )
}

fn verdict(guard: &mut UdpGuard, source: SocketAddr) -> Verdict {
    guard.check(source, Instant::now())
}

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
const DROP_PORT: Verdict = Verdict::Drop(DropReason::Port);
const DROP_ADDRESS: Verdict = Verdict::Drop(DropReason::Address);
const DROP_RATE: Verdict = Verdict::Drop(DropReason::Rate);
const DROP_TOTAL: Verdict = Verdict::Drop(DropReason::TotalRate);
const ALL_REASONS: [DropReason; DROP_REASONS] = [
    DropReason::Address,
    DropReason::Port,
    DropReason::Rate,
    DropReason::TotalRate,
];

mod ports {
    use super::*;

    #[test]
    fn services_that_answer_datagrams_are_refused() {
        let mut guard = unlimited("");
        // echo, discard, daytime, qotd, chargen, time, DNS, NTP, SNMP, the
        // last privileged port, then the listed reflectors.
        for port in [0, 1, 7, 9, 13, 17, 19, 37, 53, 123, 161, 1023] {
            assert_eq!(verdict(&mut guard, from(CLIENT, port)), DROP_PORT, "{port}");
        }
        for (port, name) in REFLECTOR_PORTS {
            assert_eq!(verdict(&mut guard, from(CLIENT, port)), DROP_PORT, "{name}");
        }
    }

    #[test]
    fn ordinary_client_ports_are_answered() {
        let mut guard = unlimited("");
        for port in [1024, 1025, 1899, 1901, 7007, 32768, 49152, 60999, 65535] {
            assert_eq!(
                verdict(&mut guard, from(CLIENT, port)),
                Verdict::Answer,
                "{port}"
            );
        }
    }

    #[test]
    fn every_port_below_1024_is_in_the_default_set() {
        let set = refused_ports();
        assert!((0..FIRST_UNPRIVILEGED_PORT).all(|port| set.contains(port)));
        let above: Vec<u16> = (FIRST_UNPRIVILEGED_PORT..=u16::MAX)
            .filter(|&port| set.contains(port))
            .collect();
        let listed: Vec<u16> = REFLECTOR_PORTS.iter().map(|&(port, _)| port).collect();
        assert_eq!(above, listed, "above 1023 exactly the listed reflectors");
    }

    #[test]
    fn the_allow_list_answers_exactly_the_ports_it_names() {
        let mut guard = unlimited("7,1000-1023,11211");
        for port in [7, 1000, 1010, 1023, 11211] {
            assert_eq!(
                verdict(&mut guard, from(CLIENT, port)),
                Verdict::Answer,
                "{port}"
            );
        }
        for port in [6, 8, 19, 999, 1900] {
            assert_eq!(verdict(&mut guard, from(CLIENT, port)), DROP_PORT, "{port}");
        }
    }

    #[test]
    fn port_0_is_refused_even_when_allowed() {
        let mut guard = UdpGuard::new(
            &GuardConfig {
                allow_ports: vec![PortRange {
                    first: 0,
                    last: u16::MAX,
                }],
                rate: 0,
                ..GuardConfig::default()
            },
            Instant::now(),
        );
        assert_eq!(verdict(&mut guard, from(CLIENT, 0)), DROP_PORT);
        assert_eq!(verdict(&mut guard, from(CLIENT, 7)), Verdict::Answer);
        assert_eq!(verdict(&mut guard, from(CLIENT, 1900)), Verdict::Answer);
    }

    #[test]
    fn port_set_holds_both_ends() {
        let mut set = PortSet::empty();
        for port in [0, 63, 64, 65535] {
            assert!(!set.contains(port));
            set.insert(port);
            assert!(set.contains(port));
        }
        assert!(!set.contains(1) && !set.contains(65534));
        set.remove(64);
        assert!(!set.contains(64) && set.contains(63));
    }
}

mod addresses {
    use super::*;

    #[test]
    fn broadcast_multicast_and_unspecified_ipv4_sources_are_refused() {
        let mut guard = unlimited("");
        for ip in [
            v4(255, 255, 255, 255),
            v4(255, 1, 2, 3),
            v4(0, 0, 0, 0),
            v4(0, 1, 2, 3),
            v4(224, 0, 0, 1),
            v4(239, 255, 255, 250), // SSDP's group
        ] {
            assert_eq!(verdict(&mut guard, from(ip, 40000)), DROP_ADDRESS, "{ip}");
        }
    }

    #[test]
    fn multicast_and_unspecified_ipv6_sources_are_refused() {
        let mut guard = unlimited("");
        for ip in [v6("::"), v6("ff02::1"), v6("ff05::c"), v6("ff0e::1")] {
            assert_eq!(verdict(&mut guard, from(ip, 40000)), DROP_ADDRESS, "{ip}");
        }
    }

    #[test]
    fn single_hosts_are_answered() {
        let mut guard = unlimited("");
        for ip in [
            v4(127, 0, 0, 1),
            v4(10, 1, 2, 3),
            v4(223, 255, 255, 255),
            v4(240, 0, 0, 1),
            v6("::1"),
            v6("fe80::1"),
            v6("2001:db8::1"),
        ] {
            assert_eq!(
                verdict(&mut guard, from(ip, 40000)),
                Verdict::Answer,
                "{ip}"
            );
        }
    }

    /// Without interface netmasks a directed broadcast looks like a host;
    /// this test pins that documented limit.
    #[test]
    fn a_directed_broadcast_cannot_be_told_from_a_host() {
        let mut guard = unlimited("");
        assert_eq!(
            verdict(&mut guard, from(v4(192, 168, 1, 255), 40000)),
            Verdict::Answer
        );
    }

    /// A dual-stack socket reports IPv4 senders as ::ffff:a.b.c.d. None of
    /// these is multicast or unspecified as IPv6; as IPv4 they all are.
    #[test]
    fn v4_mapped_sources_are_judged_as_ipv4() {
        let mut guard = unlimited("");
        for ip in [
            "::ffff:255.255.255.255",
            "::ffff:0.0.0.0",
            "::ffff:224.0.0.251",
        ] {
            assert_eq!(
                verdict(&mut guard, from(v6(ip), 40000)),
                DROP_ADDRESS,
                "{ip}"
            );
        }
        let mapped_loopback = v6("::ffff:127.0.0.1");
        assert_eq!(verdict(&mut guard, from(mapped_loopback, 19)), DROP_PORT);
        assert_eq!(
            verdict(&mut guard, from(mapped_loopback, 40000)),
            Verdict::Answer
        );
    }

    #[test]
    fn the_address_rule_comes_before_the_port_rule() {
        let mut guard = unlimited("");
        assert_eq!(
            verdict(&mut guard, from(v4(255, 255, 255, 255), 7)),
            DROP_ADDRESS
        );
    }
}

mod allow_list_parsing {
    use super::*;

    fn range(first: u16, last: u16) -> PortRange {
        PortRange { first, last }
    }

    #[test]
    fn ports_and_ranges() {
        assert_eq!("7".parse(), Ok(range(7, 7)));
        assert_eq!(" 19 ".parse(), Ok(range(19, 19)));
        assert_eq!("1000-1023".parse(), Ok(range(1000, 1023)));
        assert_eq!("1 - 65535".parse(), Ok(range(1, 65535)));
        assert_eq!("5-5".parse(), Ok(range(5, 5)));
    }

    #[test]
    fn shown_as_written() {
        assert_eq!(range(7, 7).to_string(), "7");
        assert_eq!(range(1000, 1023).to_string(), "1000-1023");
    }

    #[track_caller]
    fn error(text: &str) -> String {
        text.parse::<PortRange>().unwrap_err()
    }

    #[test]
    fn mistakes_are_explained() {
        assert!(error("").contains("empty"), "{}", error(""));
        assert!(error("0").contains("port 0 cannot be allowed"));
        assert!(error("0-10").contains("port 0 cannot be allowed"));
        assert!(error("70000").contains("ports go from 1 to 65535"));
        assert!(error("20-10").contains("write the lower port first, as in 10-20"));
        for bad in ["echo", "7-", "-7", "1-2-3", "7:19", "7,19"] {
            assert!(
                error(bad).contains(&format!("'{bad}' is not a port or a range of ports")),
                "{bad}: {}",
                error(bad)
            );
        }
    }
}

mod rate {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A guard with the default port rules and `rate`, its clock at `t0`.
    fn limited(rate: u32, t0: Instant) -> UdpGuard {
        let config = GuardConfig {
            rate,
            ..GuardConfig::default()
        };
        UdpGuard::new(&config, t0)
    }

    #[test]
    fn a_full_bucket_gives_a_burst_then_nothing() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(10, t0);
        let allowed = (0..100).filter(|_| limiter.allow(CLIENT, t0)).count();
        assert_eq!(allowed, 10);
    }

    #[test]
    fn tokens_come_back_at_the_rate() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(10, t0);
        while limiter.allow(CLIENT, t0) {}
        // 10 per second is one per 100 ms; refused attempts in between do
        // not lose the partial token.
        assert!(!limiter.allow(CLIENT, t0 + 50 * MS));
        assert!(!limiter.allow(CLIENT, t0 + 99 * MS));
        assert!(limiter.allow(CLIENT, t0 + 100 * MS));
        assert!(!limiter.allow(CLIENT, t0 + 100 * MS));
        // 350 ms later: three more, the half token stays.
        let at = t0 + 450 * MS;
        assert_eq!((0..10).filter(|_| limiter.allow(CLIENT, at)).count(), 3);
        assert!(limiter.allow(CLIENT, t0 + 500 * MS));
    }

    #[test]
    fn a_long_silence_refills_only_one_burst() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(10, t0);
        while limiter.allow(CLIENT, t0) {}
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(
            (0..100).filter(|_| limiter.allow(CLIENT, later)).count(),
            10
        );
    }

    #[test]
    fn a_clock_reading_from_the_past_refills_nothing() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let mut limiter = RateLimiter::new(1, t0);
        assert!(limiter.allow(CLIENT, t1));
        assert!(!limiter.allow(CLIENT, t0));
        assert!(!limiter.allow(CLIENT, t1));
    }

    #[test]
    fn sources_in_different_buckets_have_their_own_rate() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(2, t0);
        // The buckets are keyed at random: find a source in another one.
        let other = (1..=255)
            .map(|d| v4(198, 51, 100, d))
            .find(|&ip| limiter.bucket_of(ip) != limiter.bucket_of(CLIENT))
            .unwrap();
        while limiter.allow(CLIENT, t0) {}
        assert!(limiter.allow(other, t0));
        assert!(limiter.allow(other, t0));
        assert!(!limiter.allow(other, t0));
    }

    #[test]
    fn the_port_is_not_part_of_the_key() {
        let t0 = Instant::now();
        let mut guard = limited(2, t0);
        assert_eq!(guard.check(from(CLIENT, 40000), t0), Verdict::Answer);
        assert_eq!(guard.check(from(CLIENT, 40001), t0), Verdict::Answer);
        assert_eq!(guard.check(from(CLIENT, 40002), t0), DROP_RATE);
    }

    #[test]
    fn a_v4_mapped_source_shares_its_ipv4_bucket() {
        let t0 = Instant::now();
        let mut guard = limited(2, t0);
        assert_eq!(guard.check(from(CLIENT, 40000), t0), Verdict::Answer);
        let mapped = v6("::ffff:192.0.2.1");
        assert_eq!(guard.check(from(mapped, 40000), t0), Verdict::Answer);
        assert_eq!(guard.check(from(CLIENT, 40000), t0), DROP_RATE);
        assert_eq!(guard.check(from(mapped, 40000), t0), DROP_RATE);
    }

    #[test]
    fn an_ipv6_64_is_one_source() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(2, t0);
        let a = v6("2001:db8:0:1::1");
        let b = v6("2001:db8:0:1:ffff:ffff:ffff:ffff");
        assert_eq!(limiter.bucket_of(a), limiter.bucket_of(b));
        assert!(limiter.allow(a, t0));
        assert!(limiter.allow(b, t0));
        assert!(!limiter.allow(a, t0));
    }

    #[test]
    fn refused_datagrams_spend_no_tokens() {
        let t0 = Instant::now();
        let mut guard = limited(1, t0);
        for _ in 0..10 {
            assert_eq!(guard.check(from(CLIENT, 19), t0), DROP_PORT);
        }
        assert_eq!(guard.check(from(CLIENT, 40000), t0), Verdict::Answer);
    }

    #[test]
    fn rate_0_turns_the_limit_off() {
        let t0 = Instant::now();
        let mut guard = unlimited("");
        assert!((0..100_000).all(|_| guard.check(from(CLIENT, 40000), t0) == Verdict::Answer));
    }

    /// A spoofer claiming a new address with every datagram neither grows
    /// the table nor gets more than one burst per bucket.
    #[test]
    fn the_table_is_bounded_whatever_the_sources() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(1, t0);
        let sources = 200_000u32;
        let allowed = (0..sources)
            .filter(|&n| limiter.allow(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n)), t0))
            .count();
        assert_eq!(limiter.buckets.len(), RATE_BUCKETS);
        assert!(
            allowed <= RATE_BUCKETS,
            "{allowed} of {sources} spoofed sources answered at one instant"
        );
        // With 200,000 sources over 4,096 buckets, every bucket is hit.
        assert_eq!(allowed, RATE_BUCKETS);
        assert_eq!(std::mem::size_of::<Bucket>(), 16);
        assert!(RATE_BUCKETS.is_power_of_two());
    }

    /// Two limiters (two server starts) do not put the same addresses in
    /// the same buckets: an attacker cannot work out collisions offline.
    #[test]
    fn buckets_are_keyed_at_random() {
        let t0 = Instant::now();
        let a = RateLimiter::new(1, t0);
        let b = RateLimiter::new(1, t0);
        let sources: Vec<IpAddr> = (1..=64).map(|d| v4(203, 0, 113, d)).collect();
        let layout = |limiter: &RateLimiter| -> Vec<usize> {
            sources.iter().map(|&ip| limiter.bucket_of(ip)).collect()
        };
        assert_ne!(layout(&a), layout(&b));
    }
}

mod warnings {
    use super::*;

    #[test]
    fn the_first_drop_warns_then_one_line_per_interval_sums_up() {
        let t0 = Instant::now();
        let mut warnings = DropWarnings::default();
        assert_eq!(
            warnings.record(DropReason::Port, t0),
            Some(Warning {
                dropped: 1,
                since_last: None
            })
        );
        for s in 1..10 {
            let at = t0 + Duration::from_secs(s);
            assert_eq!(warnings.record(DropReason::Port, at), None, "{s} s");
        }
        let at = t0 + WARN_INTERVAL;
        assert_eq!(
            warnings.record(DropReason::Port, at),
            Some(Warning {
                dropped: 10,
                since_last: Some(WARN_INTERVAL)
            })
        );
        assert_eq!(warnings.record(DropReason::Port, at), None);
    }

    #[test]
    fn each_reason_has_its_own_interval() {
        let t0 = Instant::now();
        let mut warnings = DropWarnings::default();
        for reason in ALL_REASONS {
            assert!(warnings.record(reason, t0).is_some(), "{reason:?}");
            assert!(warnings.record(reason, t0).is_none(), "{reason:?}");
        }
    }

    #[test]
    fn reasons_have_distinct_indexes() {
        let mut seen: Vec<usize> = ALL_REASONS.iter().map(|r| r.index()).collect();
        seen.sort();
        assert_eq!(seen, [0, 1, 2, 3]);
    }
}

/// Loopback sources and the two rates: exempt by default, held to them
/// with `limit_loopback`.
mod loopback {
    use super::*;

    fn guard(rate: u32, rate_total: u32, limit_loopback: bool, t0: Instant) -> UdpGuard {
        let config = GuardConfig {
            rate,
            rate_total,
            limit_loopback,
            ..GuardConfig::default()
        };
        UdpGuard::new(&config, t0)
    }

    const LOOPBACK_SOURCES: [&str; 4] = ["127.0.0.1", "127.9.8.7", "::1", "::ffff:127.0.0.2"];

    #[test]
    fn loopback_sources_are_exempt_from_both_rates_by_default() {
        let t0 = Instant::now();
        let mut guard = guard(1, 1, false, t0);
        for text in LOOPBACK_SOURCES {
            let source = from(text.parse().unwrap(), 40000);
            assert!(
                (0..1000).all(|_| guard.check(source, t0) == Verdict::Answer),
                "{text}"
            );
        }
        // ... and they spend nothing of the total budget.
        assert_eq!(guard.check(from(CLIENT, 40000), t0), Verdict::Answer);
    }

    #[test]
    fn limit_loopback_holds_them_to_the_rate() {
        let t0 = Instant::now();
        let mut guard = guard(2, 0, true, t0);
        for text in LOOPBACK_SOURCES {
            let source = from(text.parse().unwrap(), 40000);
            let answered = (0..10)
                .filter(|_| guard.check(source, t0) == Verdict::Answer)
                .count();
            // ::ffff:127.0.0.2 and 127.0.0.2 are one source; the others
            // have buckets of their own unless two collide.
            assert!(answered <= 2, "{text}: {answered}");
        }
    }

    #[test]
    fn the_exemption_does_not_cover_the_port_and_address_rules() {
        let t0 = Instant::now();
        let mut guard = guard(0, 0, false, t0);
        assert_eq!(guard.check(from(v4(127, 0, 0, 1), 19), t0), DROP_PORT);
    }
}

/// The total budget over all sources the limits hold.
mod total {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn guard(rate: u32, rate_total: u32, t0: Instant) -> UdpGuard {
        let config = GuardConfig {
            rate,
            rate_total,
            ..GuardConfig::default()
        };
        UdpGuard::new(&config, t0)
    }

    /// Many sources, each within its own rate, are bounded together.
    #[test]
    fn a_flood_from_many_sources_gets_one_burst_of_the_total() {
        let t0 = Instant::now();
        let mut guard = guard(1000, 50, t0);
        let verdicts: Vec<Verdict> = (0..10_000u32)
            .map(|n| {
                let source = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n));
                guard.check(from(source, 40000), t0)
            })
            .collect();
        let answered = verdicts.iter().filter(|v| **v == Verdict::Answer).count();
        assert_eq!(answered, 50);
        assert!(verdicts[50..].iter().all(|v| *v == DROP_TOTAL));
    }

    #[test]
    fn the_budget_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut guard = guard(0, 10, t0);
        let source = |n: u8| from(v4(198, 51, 100, n), 40000);
        assert_eq!(
            (0..100)
                .filter(|&n| guard.check(source(n), t0) == Verdict::Answer)
                .count(),
            10
        );
        assert_eq!(guard.check(source(1), t0 + 50 * MS), DROP_TOTAL);
        assert_eq!(guard.check(source(2), t0 + 100 * MS), Verdict::Answer);
        assert_eq!(guard.check(source(3), t0 + 100 * MS), DROP_TOTAL);
    }

    /// A sender over its own rate spends nothing of the total, so one
    /// heavy sender cannot take the budget of the others.
    #[test]
    fn a_source_over_its_rate_does_not_spend_the_total() {
        let t0 = Instant::now();
        let mut guard = guard(2, 3, t0);
        let heavy = from(CLIENT, 40000);
        let verdicts: Vec<Verdict> = (0..100).map(|_| guard.check(heavy, t0)).collect();
        assert_eq!(
            &verdicts[..3],
            [Verdict::Answer, Verdict::Answer, DROP_RATE]
        );
        assert_eq!(
            guard.check(from(v4(198, 51, 100, 7), 40000), t0),
            Verdict::Answer
        );
        assert_eq!(
            guard.check(from(v4(198, 51, 100, 8), 40000), t0),
            DROP_TOTAL
        );
    }

    #[test]
    fn rate_total_0_turns_the_budget_off() {
        let t0 = Instant::now();
        let mut guard = guard(0, 0, t0);
        assert!((0..100_000u32).all(|n| {
            let source = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n));
            guard.check(from(source, 40000), t0) == Verdict::Answer
        }));
    }

    #[test]
    fn the_default_budget_is_ten_sources_at_the_default_rate() {
        assert_eq!(GuardConfig::default().rate_total, 10 * DEFAULT_UDP_RATE);
    }
}
