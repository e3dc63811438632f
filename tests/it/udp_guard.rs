//! The UDP loop and reflection defence (CERT CA-1996-01) against the real
//! binary: datagrams from the ports of services that answer datagrams get
//! no answer, `--udp-allow-ports` relaxes that, and `--udp-rate` answers a
//! burst from one source and drops the rest (with `--limit-loopback`, as
//! the tests' sources are on loopback, which is exempt by default; see
//! `faults::udp` for the exemption itself).
//!
//! Each test proves "no answer" by order, not by waiting alone: the server
//! serves one socket's datagrams in the order they came, and loopback
//! delivers an answer while it is being sent. So once a datagram sent
//! *later* has been answered, any answer to the earlier ones would already
//! be waiting, and none is.
//!
//! The counters themselves are checked by the in-crate tests of
//! `server/src/server/udp.rs`; here the server's log shows each drop.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::util::{Binary, IO_TIMEOUT, udp_socket_for};

/// How long to wait for an answer that must not come, before the answer
/// to a later datagram proves the server has seen it.
const QUIET: Duration = Duration::from_millis(300);

/// The server on 127.0.0.1, UDP only, logging each drop, plus `args`.
fn server(args: &[&str]) -> (Binary, SocketAddr) {
    let mut all = vec!["-b", "127.0.0.1", "--port", "0", "--no-tcp", "-v"];
    all.extend_from_slice(args);
    let binary = Binary::start(&all);
    let addr = binary.udp.expect("serves UDP");
    (binary, addr)
}

/// A socket on `ip`:`port`, or `None` after printing why the test cannot
/// have it (ports below 1024 need root or CAP_NET_BIND_SERVICE).
fn source(ip: Ipv4Addr, port: u16) -> Option<UdpSocket> {
    match UdpSocket::bind((ip, port)) {
        Ok(socket) => Some(socket),
        Err(err) if err.kind() == io::ErrorKind::PermissionDenied => {
            crate::util::skip(&format!(
                "binding source port {port} needs root or CAP_NET_BIND_SERVICE ({err})"
            ));
            None
        }
        Err(err) => {
            crate::util::skip(&format!("cannot bind source {ip}:{port}: {err}"));
            None
        }
    }
}

/// Waits `QUIET` for an answer on `socket` that must not come.
#[track_caller]
fn assert_no_answer_within_quiet(socket: &UdpSocket) {
    socket.set_read_timeout(Some(QUIET)).unwrap();
    let mut buf = [0u8; 64];
    match socket.recv_from(&mut buf) {
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) => {}
        other => panic!("a datagram that must be refused was answered: {other:?}"),
    }
}

/// Nothing is waiting on `socket` now.
#[track_caller]
fn assert_nothing_waiting(socket: &UdpSocket) {
    socket.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    match socket.recv_from(&mut buf) {
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
        other => panic!("a datagram that must be refused was answered: {other:?}"),
    }
}

/// Sends `payload` from an ordinary port and checks it comes back.
#[track_caller]
fn assert_ordinary_port_answered(server: SocketAddr, payload: &[u8]) {
    let socket = udp_socket_for(server);
    socket.send_to(payload, server).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = socket.recv_from(&mut buf).expect("an answer comes");
    assert_eq!((&buf[..n], from), (payload, server));
}

/// Sends a datagram from each of `sources`, sees none answered, then sees
/// a later one from an ordinary port answered: by then the server has
/// handled (and refused) the earlier ones.
#[track_caller]
fn assert_refused(server: SocketAddr, sources: &[&UdpSocket]) {
    for socket in sources {
        socket.send_to(b"as if from a service", server).unwrap();
    }
    for socket in sources {
        assert_no_answer_within_quiet(socket);
    }
    assert_ordinary_port_answered(server, b"an ordinary client");
    for socket in sources {
        assert_nothing_waiting(socket);
    }
}

#[test]
fn datagrams_from_ports_7_and_19_get_no_answer() {
    let _low_ports = crate::util::low_ports();
    let Some(echo_port) = source(Ipv4Addr::LOCALHOST, 7) else {
        return;
    };
    let Some(chargen_port) = source(Ipv4Addr::LOCALHOST, 19) else {
        return;
    };
    let (binary, server) = server(&[]);
    assert_refused(server, &[&echo_port, &chargen_port]);

    // Each drop is logged at debug level; the first also warns.
    binary.wait_for_line("no answer to 127.0.0.1:7: its source port");
    let warning = binary.wait_for_line("WARN");
    assert!(warning.contains("not answering 127.0.0.1:7"), "{warning}");
    assert!(warning.contains("CERT CA-1996-01"), "{warning}");
    assert!(warning.contains("--udp-allow-ports"), "{warning}");
    binary.wait_for_line("no answer to 127.0.0.1:19: its source port");
}

/// The same without root: the ports of known reflectors above 1023 are
/// refused too, and anyone may bind them.
#[test]
fn datagrams_from_the_memcached_port_get_no_answer() {
    let Some(memcached_port) = source(Ipv4Addr::LOCALHOST, 11211) else {
        return;
    };
    let (binary, server) = server(&[]);
    assert_refused(server, &[&memcached_port]);
    binary.wait_for_line("no answer to 127.0.0.1:11211: its source port");
}

#[test]
fn allowing_port_7_gets_it_answered_and_only_it() {
    let _low_ports = crate::util::low_ports();
    let Some(echo_port) = source(Ipv4Addr::LOCALHOST, 7) else {
        return;
    };
    let Some(chargen_port) = source(Ipv4Addr::LOCALHOST, 19) else {
        return;
    };
    let (_binary, server) = server(&["--udp-allow-ports", "7"]);
    echo_port.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    echo_port.send_to(b"allowed", server).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = echo_port.recv_from(&mut buf).expect("port 7 is answered");
    assert_eq!((&buf[..n], from), (&b"allowed"[..], server));

    assert_refused(server, &[&chargen_port]);
}

#[test]
fn a_sender_over_udp_rate_gets_far_fewer_answers() {
    const RATE: usize = 10;
    const SENT: usize = 100;
    // The marker comes from another loopback address, so it has a bucket
    // of its own (unless the two collide: then it is retried below).
    let Some(marker) = source(Ipv4Addr::new(127, 0, 0, 2), 0) else {
        return;
    };
    let (binary, server) = server(&["--udp-rate", &RATE.to_string(), "--limit-loopback"]);
    let flood = udp_socket_for(server);
    for i in 0..SENT {
        flood.send_to(&(i as u32).to_be_bytes(), server).unwrap();
    }

    // Once the marker is answered, every answer to the flood is waiting.
    marker.set_read_timeout(Some(QUIET)).unwrap();
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut buf = [0u8; 64];
    loop {
        marker.send_to(b"marker", server).unwrap();
        if marker.recv_from(&mut buf).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the marker is never answered");
    }
    flood.set_nonblocking(true).unwrap();
    let answers = (0..=SENT)
        .take_while(|_| flood.recv_from(&mut buf).is_ok())
        .count();
    println!("{answers} of {SENT} datagrams answered at --udp-rate {RATE}");
    // One burst (RATE) at once, then RATE more per second the server
    // takes: a generous margin for a slow machine, still far below SENT.
    assert!(
        (1..=4 * RATE).contains(&answers),
        "{answers} of {SENT} datagrams answered at --udp-rate {RATE}"
    );
    let warning = binary.wait_for_line("--udp-rate sets the limit");
    assert!(warning.contains("WARN"), "{warning}");
}
