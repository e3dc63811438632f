//! UDP echo: every size from 0 to 65,507 bytes, IPv4 and IPv6.

use echod_server::server::ServerConfig;

use crate::util::{InProcess, random_bytes, udp_socket_for};

/// Sizes that catch the usual truncations: empty, one byte, one Ethernet
/// MTU's payload, a common 8 KiB buffer, and the IPv4 maximum.
const SIZES: [usize; 5] = [0, 1, 1472, 8192, 65_507];

fn echo_every_size(server: std::net::SocketAddr) {
    let socket = udp_socket_for(server);
    let mut buf = vec![0u8; 70_000];
    for size in SIZES {
        let payload = random_bytes(size as u64, size);
        socket.send_to(&payload, server).unwrap();
        let (n, from) = socket.recv_from(&mut buf).expect("an answer comes");
        assert_eq!(from, server, "the answer comes from the address asked");
        assert_eq!(n, size, "a {size}-byte datagram comes back whole");
        assert!(
            buf[..n] == payload[..],
            "a {size}-byte datagram comes back unchanged"
        );
    }
}

#[test]
fn datagrams_of_every_size_come_back_over_ipv4() {
    let server = InProcess::v4();
    echo_every_size(server.udp_addr());
}

#[test]
fn datagrams_of_every_size_come_back_over_ipv6() {
    let server = InProcess::start(ServerConfig {
        bind: vec!["::1".parse().unwrap()],
        ..ServerConfig::default()
    });
    echo_every_size(server.udp_addr());
}

#[test]
fn dual_stack_udp_answers_ipv4_senders() {
    let server = InProcess::start(ServerConfig {
        bind: vec!["::".parse().unwrap()],
        ..ServerConfig::default()
    });
    let port = server.udp_addr().port();
    echo_every_size(format!("127.0.0.1:{port}").parse().unwrap());
    echo_every_size(format!("[::1]:{port}").parse().unwrap());
}

#[test]
fn tcp_and_udp_share_the_port_zero_picked() {
    let server = InProcess::v4();
    assert_eq!(server.tcp_addr().port(), server.udp_addr().port());
}

#[test]
fn interleaved_senders_each_get_their_own_replies() {
    let server = InProcess::v4();
    let a = udp_socket_for(server.udp_addr());
    let b = udp_socket_for(server.udp_addr());
    let mut buf = [0u8; 64];
    for i in 0..20u8 {
        a.send_to(&[b'a', i], server.udp_addr()).unwrap();
        b.send_to(&[b'b', i], server.udp_addr()).unwrap();
        let (n, _) = a.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[b'a', i]);
        let (n, _) = b.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[b'b', i]);
    }
}
