//! TCP echo over real loopback sockets: RFC 862's contract and the
//! Protohackers Smoke Test (binary-safe, many clients, half-close).

use std::io::{Read, Write};
use std::net::Shutdown;
use std::thread;

use echod_server::server::ServerConfig;

use crate::util::{self, InProcess, connect, echo_tcp, random_bytes};

#[test]
fn small_text_comes_back() {
    let server = InProcess::v4();
    assert_eq!(
        echo_tcp(server.tcp_addr(), b"hello, echo\n"),
        b"hello, echo\n"
    );
}

#[test]
fn all_256_byte_values_come_back() {
    let server = InProcess::v4();
    let every_byte: Vec<u8> = (0..=255).collect();
    assert_eq!(echo_tcp(server.tcp_addr(), &every_byte), every_byte);
}

#[test]
fn sixty_four_mib_through_one_connection() {
    let server = InProcess::v4();
    let payload = random_bytes(64, 64 * 1024 * 1024);
    let back = echo_tcp(server.tcp_addr(), &payload);
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "the echo differs from what was sent");
}

#[test]
fn five_hundred_simultaneous_clients_get_exactly_their_bytes() {
    const CLIENTS: u64 = 500;
    let server = InProcess::v4();
    let addr = server.tcp_addr();
    // Everyone connects first, so all 500 are open at once.
    let streams: Vec<_> = (0..CLIENTS).map(|_| connect(addr)).collect();
    let clients: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, mut stream)| {
            thread::spawn(move || {
                let payload = random_bytes(i as u64, 1000 + (i * 37) % 20_000);
                let mut writer = stream.try_clone().unwrap();
                let sent = payload.clone();
                let sender = thread::spawn(move || {
                    writer.write_all(&sent).unwrap();
                    writer.shutdown(Shutdown::Write).unwrap();
                });
                let mut back = Vec::new();
                stream.read_to_end(&mut back).unwrap();
                sender.join().unwrap();
                (payload, back)
            })
        })
        .collect();
    for (i, client) in clients.into_iter().enumerate() {
        let (sent, back) = client.join().unwrap();
        assert!(
            back == sent,
            "client {i}: {} bytes sent, {} back, or they differ",
            sent.len(),
            back.len()
        );
    }
}

/// The ring-full path: the server must stop reading (bounded memory), then
/// resume on its own when the client reads, without a new readable edge.
#[test]
fn client_that_sends_8_mib_before_reading_gets_all_back() {
    let server = InProcess::start(ServerConfig {
        buffer: 4096,
        ..ServerConfig::default()
    });
    let payload = random_bytes(8, 8 * 1024 * 1024);
    let mut stream = connect(server.tcp_addr());
    let mut writer = stream.try_clone().unwrap();
    let sent = payload.clone();
    // The writes block once the server stops reading (its ring and both
    // directions' kernel buffers are full), so they run on a thread while
    // this one waits, then reads.
    let sender = thread::spawn(move || {
        writer.write_all(&sent).unwrap();
    });
    thread::sleep(std::time::Duration::from_millis(300)); // pause without reading
    let mut back = vec![0u8; payload.len()];
    stream.read_exact(&mut back).expect("every byte comes back");
    sender.join().unwrap();
    assert!(back == payload);
    // Nothing more was sent, so nothing more arrives: half-close and see EOF.
    stream.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn immediate_half_close_gets_a_clean_eof() {
    let server = InProcess::v4();
    let mut stream = connect(server.tcp_addr());
    stream.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    // read_to_end fails on a reset; Ok with nothing is the clean EOF.
    stream.read_to_end(&mut back).expect("EOF, not a reset");
    assert!(back.is_empty());
}

#[test]
fn echoes_as_it_goes_before_any_eof() {
    let server = InProcess::v4();
    let mut stream = connect(server.tcp_addr());
    for round in 0..50u8 {
        let message = [round; 3];
        stream.write_all(&message).unwrap();
        let mut back = [0u8; 3];
        stream.read_exact(&mut back).unwrap();
        assert_eq!(back, message, "round {round}");
    }
}

#[test]
fn a_reset_client_does_not_disturb_others() {
    let server = InProcess::v4();
    for _ in 0..20 {
        let stream = connect(server.tcp_addr());
        socket2::SockRef::from(&stream)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
        (&stream).write_all(&[7u8; 100_000]).unwrap();
        drop(stream); // linger 0: close sends RST
    }
    assert_eq!(echo_tcp(server.tcp_addr(), b"still here"), b"still here");
}

#[test]
fn tcp_over_ipv6_loopback() {
    let server = InProcess::start(ServerConfig {
        bind: vec!["::1".parse().unwrap()],
        ..ServerConfig::default()
    });
    assert!(server.tcp_addr().is_ipv6());
    let payload = random_bytes(6, 100_000);
    assert!(echo_tcp(server.tcp_addr(), &payload) == payload);
}

#[test]
fn dual_stack_serves_ipv4_and_ipv6_on_one_socket() {
    let server = InProcess::start(ServerConfig {
        bind: vec!["::".parse().unwrap()],
        ..ServerConfig::default()
    });
    let port = server.tcp_addr().port();
    let v4 = format!("127.0.0.1:{port}").parse().unwrap();
    let v6 = format!("[::1]:{port}").parse().unwrap();
    assert_eq!(echo_tcp(v4, b"four"), b"four");
    assert_eq!(echo_tcp(v6, b"six"), b"six");
}

#[test]
fn the_real_binary_echoes() {
    let server = util::Binary::start(&["--port", "0", "-b", "127.0.0.1"]);
    let addr = server.tcp.unwrap();
    assert_eq!(echo_tcp(addr, b"from the binary"), b"from the binary");
}

/// The server holds echo bytes it could not write yet when the client's
/// FIN arrives: it must send them all before closing (Protohackers: "sent
/// back all the data you've received, close the socket").
#[test]
fn half_close_with_echo_still_queued_gets_every_byte() {
    // The ring is larger than the payload, and the payload larger than the
    // kernel can queue towards a client that is not reading (its send
    // buffer tops out at a few MiB): so the server reads every byte and the
    // FIN while still holding echo bytes.
    let server = InProcess::start(ServerConfig {
        buffer: 16 * 1024 * 1024,
        ..ServerConfig::default()
    });
    let payload = random_bytes(5, 12 * 1024 * 1024);
    let mut stream = connect(server.tcp_addr());
    let mut writer = stream.try_clone().unwrap();
    let sent = payload.clone();
    let sender = thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    sender.join().unwrap();
    thread::sleep(std::time::Duration::from_millis(100)); // let the FIN arrive
    let mut back = Vec::with_capacity(payload.len());
    stream
        .read_to_end(&mut back)
        .expect("EOF after every byte, not a reset");
    assert_eq!(back.len(), payload.len());
    assert!(back == payload);
}

/// `::` next to an IPv4 address: the IPv6 socket keeps to IPv6 so the
/// IPv4 one can bind the same port, and both serve.
#[test]
fn any_ipv6_beside_an_ipv4_address() {
    let server = InProcess::start(ServerConfig {
        bind: vec!["::".parse().unwrap(), "127.0.0.1".parse().unwrap()],
        ..ServerConfig::default()
    });
    assert_eq!(server.tcp.len(), 2);
    for addr in &server.tcp {
        let local = if addr.is_ipv6() { "[::1]" } else { "127.0.0.1" };
        let target = format!("{local}:{}", addr.port()).parse().unwrap();
        assert_eq!(echo_tcp(target, b"both"), b"both");
    }
}
