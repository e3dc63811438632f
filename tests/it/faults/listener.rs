//! A listening socket that dies under the server (issue 12, §1): `ss -K`,
//! or another holder of a socket-activated listener shutting it down. Its
//! accept then fails with EINVAL on every call; the server used to retry
//! without end (100 % CPU, no echo, SIGTERM unheard). It must close that
//! listener with one error line and serve everything else, and stop with
//! status 1 once nothing is left to serve.
//!
//! No privilege needed: the test makes the listener itself, passes it to
//! echod by socket activation, and keeps a descriptor of the same socket;
//! `shutdown(SHUT_RD)` on that makes the socket stop listening (Linux's
//! `inet_shutdown` disconnects a listener), and echod's `accept` returns
//! EINVAL from then on.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Instant;

use socket2::SockRef;

use super::signals::{exit_code, send};
use crate::util::{self, Binary, ECHOD, IO_TIMEOUT, connect};

/// The error line a failed listener gets, once.
const FAILED: &str = "failed (accept:";

/// What the server used to log, at debug, on every retry of the dead
/// listener: a million times in 8 s.
const RETRY: &str = "lost before it was accepted";

/// Starts echod on sockets this test made: `tcp` as descriptor 3 and
/// `udp`, if any, as descriptor 4, passed by socket activation. They come
/// in as the child's stdin and stdout (which carry no close-on-exec flag),
/// and `sh` moves them to 3 and 4 and execs echod with its own pid as
/// `LISTEN_PID`, all without unsafe code in the test.
#[track_caller]
fn start_activated(tcp: OwnedFd, udp: Option<OwnedFd>, args: &[&str]) -> Binary {
    let (count, stdout, move_udp) = match udp {
        Some(udp) => (2, Stdio::from(udp), "4>&1 1>/dev/null"),
        None => (1, Stdio::null(), ""),
    };
    let script = format!(
        r#"exec 3<&0 0</dev/null {move_udp}; export LISTEN_PID=$$ LISTEN_FDS={count}; exec "$0" "$@""#
    );
    let mut command = Command::new("sh");
    command.arg("-c").arg(script).arg(ECHOD).args(args);
    Binary::start_with_stdio(&mut command, Stdio::from(tcp), stdout)
}

/// Makes `listener` stop listening, through this process's descriptor of
/// the socket echod also serves.
fn stop_listening(listener: &TcpListener) {
    SockRef::from(listener)
        .shutdown(Shutdown::Read)
        .expect("shutdown(SHUT_RD) on a listening socket");
}

/// One round trip on an open connection.
#[track_caller]
fn round_trip(stream: &mut TcpStream, message: &[u8]) {
    stream.write_all(message).unwrap();
    let mut back = vec![0u8; message.len()];
    stream.read_exact(&mut back).expect("the echo arrives");
    assert_eq!(back, message);
}

/// Every stderr line still to come, up to the process's exit (bounded).
#[track_caller]
fn rest_of_log(server: &Binary) -> Vec<String> {
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match server.log.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(RecvTimeoutError::Disconnected) => return lines,
            Err(RecvTimeoutError::Timeout) => panic!("echod's stderr did not end"),
        }
    }
}

fn count(lines: &[String], needle: &str) -> usize {
    lines.iter().filter(|line| line.contains(needle)).count()
}

#[test]
fn a_listener_that_stops_listening_is_closed_once_and_the_rest_is_served() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let passed = (
        OwnedFd::from(listener.try_clone().unwrap()),
        OwnedFd::from(udp.try_clone().unwrap()),
    );
    // -v: every accept retry would be logged, so the log shows a spin.
    let mut server = start_activated(passed.0, Some(passed.1), &["-v"]);
    let (tcp, udp_addr) = (server.tcp.unwrap(), server.udp.unwrap());
    let mut client = connect(tcp);
    round_trip(&mut client, b"before");

    stop_listening(&listener);
    let failed = server.wait_for_line(FAILED);
    for part in [
        "ERROR",
        &format!("the listening socket on tcp {tcp} failed (accept: Invalid argument"),
        "open connections and the 1 other socket are still served",
    ] {
        assert!(failed.contains(part), "{part:?} not in {failed:?}");
    }

    // The connection accepted before goes on being echoed, and so does UDP.
    round_trip(&mut client, b"after the listener died");
    let probe = util::udp_socket_for(udp_addr);
    probe.send_to(b"datagram", udp_addr).unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = probe.recv_from(&mut buf).expect("the datagram is echoed");
    assert_eq!((&buf[..n], from), (&b"datagram"[..], udp_addr));

    // The loop still hears signals: SIGTERM drains the one session.
    send(&server, "TERM");
    client.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).expect("a clean EOF");
    let status = util::wait_bounded(&mut server.child, IO_TIMEOUT);
    assert_eq!(exit_code(status), 0, "the session finished");

    // One error line, no retries: the loop did not spin on the dead socket.
    let log = rest_of_log(&server);
    assert_eq!(count(&log, FAILED), 0, "a second error line: {log:#?}");
    assert_eq!(count(&log, RETRY), 0, "{log:#?}");
    assert!(
        log.len() < 50,
        "{} lines logged after the failure",
        log.len()
    );
}

#[test]
fn with_no_socket_left_echod_drains_the_open_sessions_and_exits_1() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let passed = OwnedFd::from(listener.try_clone().unwrap());
    let mut server = start_activated(passed, None, &["--no-udp", "-v"]);
    let mut client = connect(server.tcp.unwrap());
    // Echoed, so accepted: a client still in the backlog is reset when
    // the socket stops listening.
    round_trip(&mut client, b"accepted?");
    let payload = util::random_bytes(12, 200_000);
    let (first, second) = payload.split_at(100_000);
    client.write_all(first).unwrap();
    let mut reader = client.try_clone().unwrap();
    let echoed = std::thread::spawn(move || {
        let mut back = Vec::new();
        reader.read_to_end(&mut back).map(|_| back)
    });

    stop_listening(&listener);
    let failed = server.wait_for_line(FAILED);
    assert!(
        failed.contains("it was the last socket echod served") && failed.contains("status 1"),
        "{failed}"
    );
    server.wait_for_line("no listening or UDP socket is left: shutting down");
    // The session open when the last socket failed is let finish.
    client.write_all(second).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let back = echoed.join().unwrap().expect("every byte, then EOF");
    assert!(
        back == payload,
        "{} of {} bytes back",
        back.len(),
        payload.len()
    );
    let receipt = server.wait_for_line("shutdown complete");
    assert!(
        receipt.contains("1 of 1 session finished, 0 cut") && receipt.contains("exit status 1"),
        "{receipt}"
    );
    let status = util::wait_bounded(&mut server.child, IO_TIMEOUT);
    assert_eq!(exit_code(status), 1);
    let log = rest_of_log(&server);
    assert_eq!(count(&log, FAILED), 0, "{log:#?}");
    assert_eq!(count(&log, RETRY), 0, "{log:#?}");
}

/// Accepts per turn are bounded; the clients left in the backlog when the
/// budget runs out bring no new edge, so the listener must come back by
/// the ready queue. 200 clients connect while echod is stopped, so the
/// listener gets a single readable event for all of them.
#[test]
fn a_crowd_waiting_in_the_backlog_is_accepted_without_a_new_edge() {
    const CLIENTS: usize = 200;
    let server = Binary::start(&["-p", "0", "-b", "127.0.0.1", "--no-udp"]);
    let addr: SocketAddr = server.tcp.unwrap();
    send(&server, "STOP");
    // Bounded: each connect completes in the kernel's backlog.
    let mut clients: Vec<TcpStream> = (0..CLIENTS).map(|_| connect(addr)).collect();
    send(&server, "CONT");
    for (i, client) in clients.iter_mut().enumerate() {
        round_trip(client, format!("client {i}").as_bytes());
    }
}
