//! `UdpEcho` over a real socket on 127.0.0.1, driven by hand instead of by
//! a poll, so the tests can read its counters: what the guard refuses is
//! counted by reason and never answered; what the kernel drops is counted
//! too; and what the kernel says a datagram was sent to.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, UdpSocket as StdUdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use std::net::{IpAddr, SocketAddr};

use super::*;
use crate::net::MAX_DATAGRAM;
use crate::server::extras::udp_guard::{GuardConfig, REFLECTOR_PORTS};

/// The longest any wait here may take: a hung test is a failed test.
const TIMEOUT: Duration = Duration::from_secs(10);

const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// A socket bound to `addr` as the server makes it (without its large
/// buffers: bind_udp's business), and its address.
fn echo_socket(addr: SocketAddr) -> (EchoSocket, SocketAddr) {
    let socket = mio::net::UdpSocket::bind(addr).unwrap();
    let local = socket.local_addr().unwrap();
    (EchoSocket::new(socket, local).unwrap(), local)
}

/// An echo on 127.0.0.1 and the guard its turns are given.
fn echo_with(guard: GuardConfig) -> (UdpEcho, UdpGuard) {
    let (socket, local) = echo_socket((LOOPBACK, 0).into());
    (
        UdpEcho::new(socket, local),
        UdpGuard::new(&guard, Instant::now()),
    )
}

/// Serves the socket as the loop would until it has received `count`
/// datagrams in all (bounded in time).
#[track_caller]
fn serve_until_received(echo: &mut UdpEcho, guard: &mut UdpGuard, count: u64) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let deadline = Instant::now() + TIMEOUT;
    let ready = Readiness {
        readable: true,
        writable: true,
        ..Readiness::NONE
    };
    while echo.counters.received < count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} datagrams arrived",
            echo.counters.received
        );
        if echo.on_ready(ready, &mut buf, guard) == Turn::Wait {
            thread::sleep(Duration::from_millis(1));
        }
    }
}

/// The most datagrams a token bucket of `rate` per second, full at the
/// start, lets through in `elapsed`: the burst and the refill, rounded up.
/// A bound that holds whatever the time taken (a slow machine only makes
/// it looser).
fn most_answered(rate: u32, elapsed: Duration) -> u64 {
    let refill = (u128::from(rate) * elapsed.as_nanos()).div_ceil(1_000_000_000);
    u64::from(rate) + u64::try_from(refill).unwrap_or(u64::MAX)
}

/// A client socket on `ip` bound to `port`, or `None` (with the reason
/// printed) where this machine does not let the test have it.
fn client_on(ip: Ipv4Addr, port: u16) -> Option<StdUdpSocket> {
    match StdUdpSocket::bind((ip, port)) {
        Ok(socket) => {
            socket.set_read_timeout(Some(TIMEOUT)).unwrap();
            Some(socket)
        }
        Err(err) => {
            println!("skipped source {ip}:{port}: {err}");
            None
        }
    }
}

/// Nothing waits on `socket`: everything the server sent to it would be
/// there already, because loopback delivers while sending.
#[track_caller]
fn assert_unanswered(socket: &StdUdpSocket) {
    socket.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    match socket.recv_from(&mut buf) {
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
        other => panic!("a refused datagram was answered: {other:?}"),
    }
    socket.set_nonblocking(false).unwrap();
}

#[test]
fn datagrams_from_refused_ports_are_counted_and_not_answered() {
    let (mut echo, mut guard) = echo_with(GuardConfig::default());
    let server = echo.local_addr();
    // Ports 7 and 19 need root to bind; the reflector ports above 1023
    // do not, so this test always has at least one refused port to use.
    let ports = [7, 19]
        .into_iter()
        .chain(REFLECTOR_PORTS.map(|(port, _)| port));
    let refused: Vec<StdUdpSocket> = ports.filter_map(|port| client_on(LOOPBACK, port)).collect();
    assert!(!refused.is_empty(), "no refused source port could be bound");
    for socket in &refused {
        socket.send_to(b"loop?", server).unwrap();
    }
    let ordinary = client_on(LOOPBACK, 0).unwrap();
    ordinary.send_to(b"hello", server).unwrap();
    serve_until_received(&mut echo, &mut guard, refused.len() as u64 + 1);

    let mut buf = [0u8; 64];
    let (n, from) = ordinary.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"hello"[..], server));
    for socket in &refused {
        assert_unanswered(socket);
    }
    assert_eq!(
        echo.counters,
        UdpCounters {
            received: refused.len() as u64 + 1,
            sent: 1,
            dropped_port: refused.len() as u64,
            ..UdpCounters::default()
        }
    );
}

#[test]
fn an_allowed_port_is_answered() {
    // Another loopback address, so as not to compete for the port with
    // the test above, which runs at the same time.
    let (port, _) = REFLECTOR_PORTS[REFLECTOR_PORTS.len() - 1];
    let Some(client) = client_on(Ipv4Addr::new(127, 0, 0, 2), port) else {
        return;
    };
    let (mut echo, mut guard) = echo_with(GuardConfig {
        allow_ports: vec![format!("{port}").parse().unwrap()],
        ..GuardConfig::default()
    });
    client.send_to(b"allowed", echo.local_addr()).unwrap();
    serve_until_received(&mut echo, &mut guard, 1);
    let mut buf = [0u8; 64];
    let (n, _) = client.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"allowed");
    assert_eq!((echo.counters.sent, echo.counters.dropped_port), (1, 0));
}

#[test]
fn a_sender_over_its_rate_is_counted_and_not_answered() {
    const RATE: u32 = 10;
    const SENT: u64 = 100;
    let start = Instant::now();
    // The client is on loopback, which is exempt unless this is set.
    let (mut echo, mut guard) = echo_with(GuardConfig {
        rate: RATE,
        limit_loopback: true,
        ..GuardConfig::default()
    });
    let client = client_on(LOOPBACK, 0).unwrap();
    for i in 0..SENT {
        client.send_to(&i.to_be_bytes(), echo.local_addr()).unwrap();
    }
    serve_until_received(&mut echo, &mut guard, SENT);

    let counters = echo.counters;
    assert_eq!(counters.sent + counters.dropped_rate, SENT, "{counters:?}");
    // The bucket starts full (one burst), then refills at RATE per
    // second: at most what the time taken allows, however long it was.
    assert!(counters.sent >= u64::from(RATE), "{counters:?}");
    let most = most_answered(RATE, start.elapsed());
    assert!(counters.sent <= most, "more than {most}: {counters:?}");
    let mut buf = [0u8; 64];
    for _ in 0..counters.sent {
        client
            .recv_from(&mut buf)
            .expect("every datagram counted as sent arrives");
    }
    assert_unanswered(&client);
}

/// With the receive buffer full, the kernel drops what comes next; the
/// next datagram that gets in carries the count. Deterministic: nothing
/// reads while the burst is sent, and loopback delivers (or drops) each
/// datagram while it is being sent.
#[test]
fn datagrams_the_kernel_dropped_are_counted() {
    const BURST: u64 = 50;
    let socket = mio::net::UdpSocket::bind((LOOPBACK, 0).into()).unwrap();
    // The smallest buffer Linux allows: a datagram or two of 1,400 bytes.
    socket2::SockRef::from(&socket)
        .set_recv_buffer_size(1)
        .unwrap();
    let local = socket.local_addr().unwrap();
    let mut echo = UdpEcho::new(EchoSocket::new(socket, local).unwrap(), local);
    let mut guard = UdpGuard::new(&GuardConfig::default(), Instant::now());
    let client = client_on(LOOPBACK, 0).unwrap();
    for i in 0..BURST {
        client.send_to(&[i as u8; 1400], local).unwrap();
    }
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let ready = Readiness {
        readable: true,
        writable: true,
        ..Readiness::NONE
    };
    assert_eq!(echo.on_ready(ready, &mut buf, &mut guard), Turn::Wait);
    let kept = echo.counters.received;
    assert!((1..BURST).contains(&kept), "{kept} of {BURST} kept");
    // The queue is empty again: the next datagram gets in, with the count.
    client.send_to(b"and one more", local).unwrap();
    serve_until_received(&mut echo, &mut guard, kept + 1);
    assert_eq!(echo.counters.dropped_by_kernel, BURST - kept);
    assert_eq!(echo.counters.sent, kept + 1);
}

/// What the kernel says a datagram was sent to, on wildcard sockets: the
/// reply's source. Checked on the socket itself, since that is what
/// tells which control message a dual-stack socket gets for IPv4.
mod reply_from {
    use super::*;

    /// Sends one datagram from `client_ip` to `to_ip` on `server`'s port
    /// and returns what the server's socket says of it.
    fn received(server: &mut EchoSocket, port: u16, client_ip: IpAddr, to_ip: IpAddr) -> Received {
        let client = StdUdpSocket::bind((client_ip, 0)).unwrap();
        client.send_to(b"where to?", (to_ip, port)).unwrap();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match server.recv(&mut buf) {
                Ok(received) => return received,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "the datagram never arrived");
                    thread::sleep(Duration::from_millis(1));
                }
                Err(err) => panic!("receive failed: {err}"),
            }
        }
    }

    const V4_SECOND: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    const V4_FIRST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn an_ipv4_wildcard_socket_reads_ip_pktinfo() {
        let (mut server, local) = echo_socket((Ipv4Addr::UNSPECIFIED, 0).into());
        let got = received(&mut server, local.port(), V4_FIRST, V4_SECOND);
        assert_eq!(
            got.reply_from,
            Some(ReplyFrom::V4(Ipv4Addr::new(127, 0, 0, 2)))
        );
        assert_eq!(got.peer.ip(), V4_FIRST);
    }

    /// On a dual-stack `::` socket an IPv4 datagram comes with an
    /// IPV6_PKTINFO holding the v4-mapped destination (not IP_PKTINFO).
    #[test]
    fn a_dual_stack_socket_reads_ipv4_destinations_as_v4_mapped() {
        let (mut server, local) = echo_socket((Ipv6Addr::UNSPECIFIED, 0).into());
        let got = received(&mut server, local.port(), V4_FIRST, V4_SECOND);
        let mapped = Ipv4Addr::new(127, 0, 0, 2).to_ipv6_mapped();
        assert_eq!(
            got.reply_from,
            Some(ReplyFrom::V6 {
                addr: mapped,
                ifindex: 0
            })
        );
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let got = received(&mut server, local.port(), v6, v6);
        assert_eq!(
            got.reply_from,
            Some(ReplyFrom::V6 {
                addr: Ipv6Addr::LOCALHOST,
                ifindex: 0
            })
        );
    }

    /// Bound to one address the kernel answers from it: nothing asked.
    #[test]
    fn a_socket_bound_to_one_address_gets_no_packet_info() {
        let (mut server, local) = echo_socket((LOOPBACK, 0).into());
        let got = received(&mut server, local.port(), V4_FIRST, V4_FIRST);
        assert_eq!(got.reply_from, None);
    }

    #[test]
    fn multicast_and_broadcast_destinations_are_no_source() {
        let ifindex = 3;
        for text in [
            "ff02::1",
            "::ffff:224.0.0.1",
            "::ffff:255.255.255.255",
            "::",
        ] {
            let to: Ipv6Addr = text.parse().unwrap();
            assert_eq!(ReplyFrom::for_ipv6(to, ifindex), None, "{text}");
        }
        assert_eq!(ReplyFrom::for_ipv4(Ipv4Addr::UNSPECIFIED), None);
    }

    /// The interface goes with a link-local address only; otherwise the
    /// routing table chooses it.
    #[test]
    fn only_link_local_sources_keep_their_interface() {
        let link_local: Ipv6Addr = "fe80::1".parse().unwrap();
        assert_eq!(
            ReplyFrom::for_ipv6(link_local, 3),
            Some(ReplyFrom::V6 {
                addr: link_local,
                ifindex: 3
            })
        );
        let global: Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            ReplyFrom::for_ipv6(global, 3),
            Some(ReplyFrom::V6 {
                addr: global,
                ifindex: 0
            })
        );
    }
}
