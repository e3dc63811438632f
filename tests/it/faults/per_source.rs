//! One source cannot take every slot (issue 12, section 6): 19,840 idle
//! connections from one host once locked every other client out. With
//! `--max-connections-per-source N`, the connection over N from one source
//! is reset at once; other sources are still served; a close makes room.
//! Loopback sources are exempt unless `--limit-loopback`, so these tests
//! turn it on to play a remote host from 127.0.0.1.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::time::Instant;

use echod_server::server::ServerConfig;
use socket2::{Domain, Socket, Type};

use crate::util::{Binary, IO_TIMEOUT, InProcess, connect};

/// A server on `ip` allowing 3 connections per source, loopback included
/// if `limit_loopback`.
fn server(ip: &str, limit_loopback: bool) -> InProcess {
    InProcess::start(ServerConfig {
        bind: vec![ip.parse().unwrap()],
        udp: false,
        max_connections_per_source: Some(3),
        limit_loopback,
        ..ServerConfig::default()
    })
}

/// A connection from `from` (any port) to `to`, with timeouts; or the
/// error connecting gave.
fn try_connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
    socket
        .bind(&SocketAddr::new(from, 0).into())
        .expect("binds the client to its source address");
    socket.connect_timeout(&to.into(), IO_TIMEOUT)?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

#[track_caller]
fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    try_connect_from(from, to).expect("connects")
}

/// One round trip: proves the server accepted and serves the connection.
#[track_caller]
fn round_trip(stream: &mut TcpStream, message: &[u8]) {
    stream.write_all(message).unwrap();
    let mut back = vec![0u8; message.len()];
    stream.read_exact(&mut back).expect("the echo arrives");
    assert_eq!(back, message);
}

/// The server resets a connection from `from`. The kernel completes the
/// handshake before echod accepts, so the client's connect succeeds, and
/// the RST comes right after: the client sees ECONNRESET, from its first
/// read, or from connect itself when the RST arrived before connect
/// returned. Never a clean EOF, never a timeout.
#[track_caller]
fn assert_reset(from: IpAddr, to: SocketAddr) {
    let mut stream = match try_connect_from(from, to) {
        Ok(stream) => stream,
        Err(err) => {
            assert_eq!(err.kind(), ErrorKind::ConnectionReset, "connect: {err}");
            return;
        }
    };
    let mut buf = [0u8; 1];
    match stream.read(&mut buf) {
        Err(err) => assert_eq!(err.kind(), ErrorKind::ConnectionReset, "read: {err}"),
        Ok(n) => panic!("expected a reset, read returned {n}"),
    }
}

/// Ends a connection cleanly and waits for the server's FIN: once the
/// client sees it, the server has closed its side, and uncounted it.
#[track_caller]
fn close_and_wait(mut stream: TcpStream) {
    stream.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .expect("the server closes after our EOF");
    assert!(rest.is_empty());
}

#[test]
fn the_connection_over_the_limit_is_reset_and_others_are_served() {
    let server = server("127.0.0.1", true);
    let addr = server.tcp_addr();
    let local: IpAddr = "127.0.0.1".parse().unwrap();
    let mut three: Vec<TcpStream> = (0..3).map(|_| connect_from(local, addr)).collect();
    for (i, stream) in three.iter_mut().enumerate() {
        round_trip(stream, format!("client {i}").as_bytes());
    }
    assert_reset(local, addr);

    // Another source is served as before.
    let mut other = connect_from("127.0.0.2".parse().unwrap(), addr);
    round_trip(&mut other, b"from 127.0.0.2");

    // The three are untouched, and a close makes room for one more.
    for stream in &mut three {
        round_trip(stream, b"still here");
    }
    close_and_wait(three.pop().unwrap());
    let mut again = connect_from(local, addr);
    round_trip(&mut again, b"room again");
    // ... and only one.
    assert_reset(local, addr);
}

#[test]
fn loopback_is_exempt_without_limit_loopback() {
    let server = server("127.0.0.1", false);
    let mut many: Vec<TcpStream> = (0..6).map(|_| connect(server.tcp_addr())).collect();
    for stream in &mut many {
        round_trip(stream, b"exempt");
    }
}

#[test]
fn ipv6_loopback_is_limited_too() {
    let server = server("::1", true);
    let addr = server.tcp_addr();
    let local: IpAddr = "::1".parse().unwrap();
    let mut three: Vec<TcpStream> = (0..3).map(|_| connect_from(local, addr)).collect();
    for stream in &mut three {
        round_trip(stream, b"v6");
    }
    assert_reset(local, addr);
}

/// Through the binary: the refusals are counted, and an episode is logged
/// once, not once per connection.
#[test]
fn refusals_are_counted_and_the_episode_logged_once() {
    let server = Binary::start(&[
        "-p",
        "0",
        "-b",
        "127.0.0.1",
        "--no-udp",
        "--limit-loopback",
        "--max-connections-per-source",
        "1",
    ]);
    let addr = server.tcp.unwrap();
    let mut first = connect(addr);
    round_trip(&mut first, b"one");
    for _ in 0..3 {
        assert_reset(addr.ip(), addr);
    }
    let status = Command::new("kill")
        .args(["-USR1", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Everything logged up to the counters, which come last.
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut warnings = Vec::new();
    let counters = loop {
        let line = server
            .next_line_before(deadline)
            .expect("echod logs the counters on SIGUSR1");
        if line.contains("tcp: accepted") {
            break line;
        }
        if line.contains("WARN") {
            warnings.push(line);
        }
    };
    assert!(counters.contains("source limit 3,"), "{counters}");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains(
            "127.0.0.1 has 1 connection open, the most --max-connections-per-source allows"
        ),
        "{warnings:?}"
    );
}
