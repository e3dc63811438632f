//! `UdpEcho` over a real socket on 127.0.0.1, driven by hand instead of by
//! a poll, so the tests can read its counters: what the guard refuses is
//! counted by reason and never answered.

use std::io;
use std::net::{Ipv4Addr, UdpSocket as StdUdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use super::*;
use crate::server::udp_guard::REFLECTOR_PORTS;

/// The longest any wait here may take: a hung test is a failed test.
const TIMEOUT: Duration = Duration::from_secs(10);

const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

fn echo_with(guard: GuardConfig) -> UdpEcho {
    let socket = UdpSocket::bind((LOOPBACK, 0).into()).unwrap();
    let local = socket.local_addr().unwrap();
    UdpEcho::new(socket, local, &guard)
}

/// Serves the socket as the loop would until it has received `count`
/// datagrams in all (bounded in time).
#[track_caller]
fn serve_until_received(echo: &mut UdpEcho, count: u64) {
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
        if echo.on_ready(ready, &mut buf) == Turn::Wait {
            thread::sleep(Duration::from_millis(1));
        }
    }
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
    let mut echo = echo_with(GuardConfig::default());
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
    serve_until_received(&mut echo, refused.len() as u64 + 1);

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
    let mut echo = echo_with(GuardConfig {
        allow_ports: vec![format!("{port}").parse().unwrap()],
        ..GuardConfig::default()
    });
    client.send_to(b"allowed", echo.local_addr()).unwrap();
    serve_until_received(&mut echo, 1);
    let mut buf = [0u8; 64];
    let (n, _) = client.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"allowed");
    assert_eq!((echo.counters.sent, echo.counters.dropped_port), (1, 0));
}

#[test]
fn a_sender_over_its_rate_is_counted_and_not_answered() {
    const RATE: u32 = 10;
    const SENT: u64 = 100;
    let mut echo = echo_with(GuardConfig {
        rate: RATE,
        ..GuardConfig::default()
    });
    let client = client_on(LOOPBACK, 0).unwrap();
    for i in 0..SENT {
        client.send_to(&i.to_be_bytes(), echo.local_addr()).unwrap();
    }
    serve_until_received(&mut echo, SENT);

    let counters = echo.counters;
    assert_eq!(counters.sent + counters.dropped_rate, SENT, "{counters:?}");
    // The bucket starts full (one burst); on a machine slow enough to
    // take seconds over this, it refills at RATE per second.
    assert!(counters.sent >= u64::from(RATE), "{counters:?}");
    assert!(counters.sent <= 5 * u64::from(RATE), "{counters:?}");
    let mut buf = [0u8; 64];
    for _ in 0..counters.sent {
        client
            .recv_from(&mut buf)
            .expect("every datagram counted as sent arrives");
    }
    assert_unanswered(&client);
}
