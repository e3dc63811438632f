//! A truncated echo must not look like a complete one (issue 12, section
//! 3). A FIN means "you have every byte": when the server closes while it
//! throws away echo bytes (an idle client that stopped reading, the end of
//! the shutdown grace, a stop at once, bytes that arrive after its FIN),
//! the close is abortive and the client reads ECONNRESET, not a clean EOF.
//! The log line and the counters say how many bytes were discarded. A
//! close with nothing pending stays a clean FIN: the controls below.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use crate::util::{Binary, IO_TIMEOUT, connect, echo_tcp, random_bytes, wait_bounded};

/// Sends `signal` (a name such as "TERM") to the server.
#[track_caller]
fn signal(server: &Binary, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(server.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} failed");
}

/// What the slow client sends: much more than the server's send buffer
/// can take ([`SOCKET_BUFFER`]), less than the ring ([`RING`]).
const SENT: usize = 12 << 20;
/// The server's `--buffer`: its ring takes the rest of [`SENT`], so the
/// server reads every byte and the peer's EOF, and holds echo bytes with
/// nothing left unread. (A close with unread input is a reset anyway:
/// the kernel sends one. Here only `SO_LINGER` 0 can make it one.)
const RING: &str = "16777216"; // 16 MiB, the most --buffer takes
/// The server's `--socket-buffer`, given rather than left to the default
/// so that the test itself fixes how much of the echo its kernel can hold:
/// `SO_SNDBUF` turns off the kernel's tuning, so whatever
/// `net.ipv4.tcp_wmem` allows, the send buffer is at most twice this
/// (socket(7)), 512 KiB: most of [`SENT`] must wait in the ring.
const SOCKET_BUFFER: &str = "262144";

/// A client whose receive buffer is small and fixed (`SO_RCVBUF` before
/// `connect`, which also turns off the kernel's tuning of it), so that it
/// holds little of its echo: a client that reads slowly or not at all.
#[track_caller]
fn slow_reader(addr: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect_timeout(&addr.into(), IO_TIMEOUT).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

/// The client: sends [`SENT`] bytes, half-closes, reads nothing.
/// Returns what it sent.
#[track_caller]
fn send_and_half_close(stream: &mut TcpStream, seed: u64) -> Vec<u8> {
    let sent = random_bytes(seed, SENT);
    stream
        .write_all(&sent)
        .expect("the server reads everything into its ring");
    stream.shutdown(Shutdown::Write).unwrap();
    sent
}

/// Reads until EOF or an error; returns what came and how it ended.
fn read_to_the_end(stream: &mut TcpStream) -> (Vec<u8>, std::io::Result<()>) {
    let mut got = Vec::new();
    let mut buf = vec![0; 1 << 16];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (got, Ok(())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => return (got, Err(err)),
        }
    }
}

/// The client must see the truncation: a reset after a prefix of what it
/// sent, never a clean EOF.
#[track_caller]
fn assert_reset_after_a_prefix(stream: &mut TcpStream, sent: &[u8]) -> usize {
    let (got, end) = read_to_the_end(stream);
    match end {
        Err(err) => assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}"),
        Ok(()) => panic!(
            "sent {} bytes, read {}, then a clean EOF: a truncated echo that looks complete",
            sent.len(),
            got.len()
        ),
    }
    assert!(got.len() < sent.len());
    assert!(
        sent.starts_with(&got),
        "the echo is not a prefix of the input"
    );
    got.len()
}

/// The number just before `suffix` in a log line ("…, 12 bytes in, …").
#[track_caller]
fn number_before(line: &str, suffix: &str) -> u64 {
    let head = line
        .split(suffix)
        .next()
        .filter(|head| head.len() < line.len())
        .unwrap_or_else(|| panic!("no {suffix:?} in {line:?}"));
    let word = head.rsplit([' ', '(']).next().unwrap();
    word.parse()
        .unwrap_or_else(|_| panic!("no number before {suffix:?} in {line:?}"))
}

/// The server's debug close line for a reset: bytes in, echoed, and
/// discarded, which must add up.
#[track_caller]
fn reset_line_counts(line: &str) -> (u64, u64, u64) {
    let (bytes_in, echoed, discarded) = (
        number_before(line, " bytes in"),
        number_before(line, " echoed"),
        number_before(line, " discarded"),
    );
    assert_eq!(discarded, bytes_in - echoed, "{line}");
    (bytes_in, echoed, discarded)
}

/// The reproduction: a client sends a lot, half-closes and reads
/// nothing until the idle timeout. The server drops what its ring holds
/// and resets; the client gets a prefix of its bytes, then ECONNRESET.
#[test]
fn an_idle_close_that_drops_echo_bytes_is_a_reset() {
    let server = Binary::start(&[
        "-p",
        "0",
        "-b",
        "127.0.0.1",
        "--no-udp",
        "--buffer",
        RING,
        "--socket-buffer",
        SOCKET_BUFFER,
        "--idle-timeout",
        "1",
        "-v",
    ]);
    let mut stream = slow_reader(server.tcp.unwrap());
    let sent = send_and_half_close(&mut stream, 1);
    // Only now may the client read: a read before the server's close
    // would move bytes and put the idle timeout off.
    let line = server.wait_for_line("reset by the server");
    assert!(line.ends_with(": idle too long"), "{line}");
    let (bytes_in, echoed, discarded) = reset_line_counts(&line);
    assert_eq!(bytes_in, SENT as u64, "every byte was read: {line}");
    assert!(discarded > 0, "{line}");

    let got = assert_reset_after_a_prefix(&mut stream, &sent);
    assert!(got as u64 <= echoed, "read {got} of {echoed} echoed");

    signal(&server, "USR1");
    let counters = server.wait_for_line("tcp: accepted");
    let expected = format!("reset by the server 1 (bytes discarded {discarded})");
    assert!(counters.contains(&expected), "{counters}");
    assert!(counters.contains("idle 1"), "{counters}");
}

/// The same at the end of the shutdown grace: the session that never
/// read its echo is cut with an RST, and the receipt counts it.
#[test]
fn a_grace_cut_that_drops_echo_bytes_is_a_reset() {
    let mut server = Binary::start(&[
        "-p",
        "0",
        "-b",
        "127.0.0.1",
        "--no-udp",
        "--buffer",
        RING,
        "--socket-buffer",
        SOCKET_BUFFER,
        "--grace",
        "1",
        "-vv",
    ]);
    let mut stream = slow_reader(server.tcp.unwrap());
    let sent = send_and_half_close(&mut stream, 2);
    // Every byte read, the EOF too (a trace line): the server holds echo
    // bytes and nothing unread.
    server.wait_for_line("connection 0: EOF");
    signal(&server, "TERM");
    let line = server.wait_for_line("reset by the server");
    assert!(line.ends_with(": server shutdown"), "{line}");
    let (bytes_in, echoed, discarded) = reset_line_counts(&line);
    assert_eq!(bytes_in, SENT as u64, "every byte was read: {line}");
    assert!(discarded > 0, "{line}");
    let receipt = server.wait_for_line("shutdown complete");
    assert!(receipt.contains("1 cut"), "{receipt}");
    let expected = format!("reset by the server 1 (bytes discarded {discarded})");
    assert!(receipt.contains(&expected), "{receipt}");

    let got = assert_reset_after_a_prefix(&mut stream, &sent);
    assert!(got as u64 <= echoed, "read {got} of {echoed} echoed");
    wait_bounded(&mut server.child, IO_TIMEOUT);
}

/// A stop at once (a second SIGTERM; the embedding program's stop handle
/// does the same) closes sessions holding echo bytes abortively too.
#[test]
fn a_stop_at_once_that_drops_echo_bytes_is_a_reset() {
    let mut server = Binary::start(&[
        "-p",
        "0",
        "-b",
        "127.0.0.1",
        "--no-udp",
        "--buffer",
        RING,
        "--socket-buffer",
        SOCKET_BUFFER,
        "--grace",
        "600",
        "-vv",
    ]);
    let mut stream = slow_reader(server.tcp.unwrap());
    let sent = send_and_half_close(&mut stream, 3);
    server.wait_for_line("connection 0: EOF");
    signal(&server, "TERM");
    server.wait_for_line("SIGTERM: shutting down");
    signal(&server, "TERM");
    let line = server.wait_for_line("reset by the server");
    assert!(line.ends_with(": server shutdown"), "{line}");
    let (_, echoed, _) = reset_line_counts(&line);
    let got = assert_reset_after_a_prefix(&mut stream, &sent);
    assert!(got as u64 <= echoed, "read {got} of {echoed} echoed");
    wait_bounded(&mut server.child, IO_TIMEOUT);
}

/// With nothing pending, an idle close is a FIN; bytes the client sends
/// after it can never be echoed, so the first of them turns the close
/// into a reset, counted exactly.
#[test]
fn bytes_sent_after_the_servers_fin_are_discarded_with_a_reset() {
    let server = Binary::start(&[
        "-p",
        "0",
        "-b",
        "127.0.0.1",
        "--no-udp",
        "--idle-timeout",
        "1",
        "-v",
    ]);
    let mut stream = connect(server.tcp.unwrap());
    stream.write_all(b"hello").unwrap();
    let mut back = [0; 5];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello");
    // Idle: the server's FIN, every byte echoed.
    let mut byte = [0; 1];
    assert_eq!(stream.read(&mut byte).unwrap(), 0, "the idle close's FIN");
    stream.write_all(b"late!").unwrap();
    let line = server.wait_for_line("reset by the server");
    assert!(
        line.contains("10 bytes in, 5 echoed, 5 discarded: idle too long"),
        "{line}"
    );
    // The client's sends now fail (bounded: the RST is on its way).
    let deadline = Instant::now() + IO_TIMEOUT;
    let error = loop {
        assert!(Instant::now() < deadline, "the reset never arrived");
        if let Err(err) = stream.write_all(b"x") {
            break err;
        }
        thread::sleep(Duration::from_millis(20));
    };
    assert!(
        matches!(
            error.kind(),
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
        ),
        "{error}"
    );
}

/// Controls: a session that finishes, and an idle close with nothing
/// pending, still end with a clean EOF and every byte, and count no reset.
#[test]
fn closes_that_lose_nothing_stay_clean() {
    let server = Binary::start(&[
        "-p",
        "0",
        "-b",
        "127.0.0.1",
        "--no-udp",
        "--idle-timeout",
        "1",
        "-v",
    ]);
    let addr = server.tcp.unwrap();
    let payload = random_bytes(4, 4 << 20);
    assert!(echo_tcp(addr, &payload) == payload, "the echo differs");
    let finished = server.wait_for_line("peer finished, all echoed");
    assert!(finished.contains("connection 0: closed, "), "{finished}");

    let mut idle = connect(addr);
    idle.write_all(b"then silence").unwrap();
    let (got, end) = read_to_the_end(&mut idle);
    end.expect("a clean EOF, not a reset");
    assert_eq!(got, b"then silence");
    let line = server.wait_for_line("idle too long");
    assert!(
        line.contains("closed, ") && line.contains("12 bytes in, 12 echoed: "),
        "{line}"
    );

    signal(&server, "USR1");
    let counters = server.wait_for_line("tcp: accepted");
    assert!(
        counters.contains("reset by the server 0 (bytes discarded 0)"),
        "{counters}"
    );
}

/// Whether process `pid` is stopped (state `T` in `/proc/PID/stat`).
fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state follows the command name, which is in parentheses.
            let (_, after) = stat.rsplit_once(')')?;
            after.split_whitespace().next().map(|state| state == "T")
        })
        .unwrap_or(false)
}

/// Bytes queued unread in the receive queue of the IPv4 TCP socket
/// `local` → `remote` (`/proc/net/tcp`, column `rx_queue`), if it exists.
fn recv_queue(local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let hex = |addr: SocketAddr| format!(":{:04X}", addr.port());
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (l, r, queues) = (fields.get(1)?, fields.get(2)?, fields.get(4)?);
        if !(l.ends_with(&hex(local)) && r.ends_with(&hex(remote))) {
            return None;
        }
        u64::from_str_radix(queues.split(':').nth(1)?, 16).ok()
    })
}

/// The review's reproduction: with the server stopped (SIGSTOP), a client
/// sends 1 MiB and half-closes; the server's kernel takes what its
/// receive buffer holds. Then SIGTERM with `--grace 0`, and SIGCONT: the
/// server cuts the session while input sits unread in its kernel. A FIN
/// then would give the client a clean EOF after a short echo; the close
/// must be a reset (or, had the server read and echoed everything, a
/// complete echo).
#[test]
fn a_grace_cut_over_unread_input_is_a_reset() {
    let mut server = Binary::start(&[
        "-p",
        "0",
        "-b",
        "127.0.0.1",
        "--no-udp",
        "--no-splice",
        "--grace",
        "0",
        "--socket-buffer",
        SOCKET_BUFFER,
    ]);
    let addr = server.tcp.unwrap();
    // A client that can take its echo in: nothing the server writes waits
    // on it, so only the server's close can shorten the echo.
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4 << 20).unwrap();
    socket.connect_timeout(&addr.into(), IO_TIMEOUT).unwrap();
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.write_all(b"ping").unwrap();
    let mut back = [0; 4];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping");

    let pid = server.child.id();
    signal(&server, "STOP");
    let deadline = Instant::now() + IO_TIMEOUT;
    while !is_stopped(pid) {
        assert!(Instant::now() < deadline, "echod never stopped");
        thread::sleep(Duration::from_millis(10));
    }
    let sent = random_bytes(5, 1 << 20);
    stream.write_all(&sent).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    // Until the server's receive queue stops growing: its kernel holds
    // what it can take, unread.
    let client = stream.local_addr().unwrap();
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut last = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "the server's kernel took nothing"
        );
        thread::sleep(Duration::from_millis(50));
        let queued = recv_queue(addr, client).unwrap_or(0);
        if queued > 0 && queued == last {
            break;
        }
        last = queued;
    }
    signal(&server, "TERM");
    signal(&server, "CONT");

    let (got, end) = read_to_the_end(&mut stream);
    assert!(
        sent.starts_with(&got),
        "the echo is not a prefix of the input"
    );
    match end {
        Ok(()) => assert!(
            got.len() == sent.len(),
            "sent {} bytes, read {}, then a clean EOF: a truncated echo that looks complete",
            sent.len(),
            got.len()
        ),
        Err(err) => assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}"),
    }
    wait_bounded(&mut server.child, IO_TIMEOUT);
}
