//! TCP urgent data (issue 12, section 2): a byte sent with `MSG_OOB` is an
//! ordinary byte of the echo (RFC 862: what is received is sent back), and
//! the bytes behind it come back too.
//!
//! Linux stops a read short at the urgent mark, and `splice` will not cross
//! it at all; a server that takes the short read for "drained" leaves the
//! rest unread until its idle timeout. The server sets `SO_OOBINLINE` on
//! its listeners (so the byte stays in the stream) and reads on after a
//! priority event until a read says WouldBlock.
//!
//! The client here never half-closes before it has its echo: a FIN would
//! bring an event of its own and hide a stall.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use echod_server::server::ServerConfig;
use socket2::SockRef;

use crate::util::{Binary, ECHOD, IO_TIMEOUT, InProcess, connect, free_port, need, random_bytes};

/// A server on `ip`, echoing bulk streams by `splice` or by copying.
fn server(ip: &str, splice: bool) -> InProcess {
    InProcess::start(ServerConfig {
        bind: vec![ip.parse().unwrap()],
        udp: false,
        splice,
        ..ServerConfig::default()
    })
}

/// Reads exactly `len` bytes (each read bounded by the stream's timeout:
/// a stalled echo fails here), then half-closes and checks that nothing
/// more comes before the server's clean EOF.
#[track_caller]
fn read_echo_then_eof(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut back = vec![0; len];
    if let Err(err) = stream.read_exact(&mut back) {
        panic!("the echo stalled or broke before {len} bytes came back: {err}");
    }
    stream.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .expect("a clean EOF after the echo");
    assert!(rest.is_empty(), "{} bytes more than were sent", rest.len());
    back
}

/// The reproduction: 100 `a`, one urgent `!`, 100 `b`, corked so
/// they arrive in one segment and the server's first read stops at the
/// mark. Exactly 201 bytes come back, in order, the urgent byte in place.
#[test]
fn a_corked_urgent_byte_and_the_bytes_behind_it_come_back_inline() {
    for ip in ["127.0.0.1", "::1"] {
        for splice in [false, true] {
            let server = server(ip, splice);
            corked_urgent_exchange(server.tcp_addr(), &format!("{ip}, splice {splice}"));
        }
    }
}

/// Sends the corked stream to `addr` and checks its echo.
#[track_caller]
fn corked_urgent_exchange(addr: SocketAddr, what: &str) {
    corked_urgent_exchange_on(connect(addr), what);
}

/// The same on a connected `stream`.
#[track_caller]
fn corked_urgent_exchange_on(mut stream: TcpStream, what: &str) {
    let socket = SockRef::from(&stream);
    socket.set_tcp_cork(true).unwrap();
    (&stream).write_all(&[b'a'; 100]).unwrap();
    assert_eq!(socket.send_out_of_band(b"!").unwrap(), 1);
    (&stream).write_all(&[b'b'; 100]).unwrap();
    socket.set_tcp_cork(false).unwrap();

    let back = read_echo_then_eof(&mut stream, 201);
    let expected = [&[b'a'; 100][..], b"!", &[b'b'; 100]].concat();
    assert!(
        back == expected,
        "{what}: the echo differs from what was sent"
    );
}

/// A listener passed by a service manager gets `SO_OOBINLINE` too: the
/// manager did not set it, echod does when it takes the socket over.
/// Connections the kernel completed before that, still waiting in the
/// backlog, were created without it (the flag is copied at the
/// handshake): the one that wakes echod up, which sends urgent data here,
/// must be given it at accept.
#[test]
fn an_inherited_listener_echoes_urgent_data_inline_too() {
    const SOCKET_ACTIVATE: &str = "systemd-socket-activate";
    if !need(
        SOCKET_ACTIVATE,
        "it comes with systemd; .ci/run installs it",
    ) {
        return;
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    // This connection starts echod; bounded until the manager listens.
    let first = thread::spawn(move || {
        let deadline = Instant::now() + IO_TIMEOUT;
        let stream = loop {
            match TcpStream::connect(addr) {
                Ok(stream) => break stream,
                Err(err) if Instant::now() < deadline => {
                    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
                    thread::sleep(Duration::from_millis(20));
                }
                Err(err) => panic!("nothing listens on {addr}: {err}"),
            }
        };
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        corked_urgent_exchange_on(stream, "the connection that started echod");
    });
    let echod = Binary::start_with(Command::new(SOCKET_ACTIVATE).args([
        "--listen",
        &addr.to_string(),
        ECHOD,
        "--no-udp",
    ]));
    first.join().unwrap();
    assert_eq!(echod.tcp, Some(addr));
    corked_urgent_exchange(addr, "inherited listener");
}

/// 4 MiB, one urgent byte, then `tail` bytes, the client reading
/// meanwhile: on the copying path the mark stops a read short in the
/// middle of a stream, on the splice path it stops a splice, possibly with
/// bytes in the pipe. With a long tail (the 4 MiB) new bytes keep
/// arriving behind the mark, and each brings an edge that could hide a
/// stall; with a short one, everything is queued by the time the server
/// reaches the mark, and only reading on past it gets the tail.
#[track_caller]
fn bulk_with_an_urgent_byte(addr: SocketAddr, seed: u64, tail: usize) {
    const HEAD: usize = 4 << 20;
    let before = random_bytes(seed, HEAD);
    let after = random_bytes(seed + 1, tail);
    let expected = [&before[..], b"!", &after].concat();

    let mut stream = connect(addr);
    let mut writer = stream.try_clone().unwrap();
    let sender = thread::spawn(move || -> std::io::Result<()> {
        writer.write_all(&before)?;
        SockRef::from(&writer).send_out_of_band(b"!")?;
        writer.write_all(&after)
    });
    let back = read_echo_then_eof(&mut stream, expected.len());
    sender.join().unwrap().expect("the client sends everything");
    if let Some(at) = back.iter().zip(&expected).position(|(a, b)| a != b) {
        panic!("{addr}: the echo differs from byte {at} (the urgent byte is at {HEAD})");
    }
}

/// The tails each test sends behind the urgent byte: the 4 MiB,
/// and one that is all queued before the server reaches the mark.
const TAILS: [usize; 2] = [4 << 20, 1000];

#[test]
fn bulk_with_an_urgent_byte_comes_back_whole_when_copied() {
    let v4 = server("127.0.0.1", false);
    let v6 = server("::1", false);
    for (round, tail) in TAILS.into_iter().enumerate() {
        let seed = 10 * round as u64;
        bulk_with_an_urgent_byte(v4.tcp_addr(), seed, tail);
        bulk_with_an_urgent_byte(v4.tcp_addr(), seed + 2, tail);
        bulk_with_an_urgent_byte(v6.tcp_addr(), seed + 4, tail);
    }
}

#[test]
fn bulk_with_an_urgent_byte_comes_back_whole_when_spliced() {
    let v4 = server("127.0.0.1", true);
    let v6 = server("::1", true);
    for (round, tail) in TAILS.into_iter().enumerate() {
        let seed = 100 + 10 * round as u64;
        bulk_with_an_urgent_byte(v4.tcp_addr(), seed, tail);
        bulk_with_an_urgent_byte(v4.tcp_addr(), seed + 2, tail);
        bulk_with_an_urgent_byte(v6.tcp_addr(), seed + 4, tail);
    }
}
