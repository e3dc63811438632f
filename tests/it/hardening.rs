//! Hardening, through the real binary: the connection limit, descriptor
//! exhaustion, idle and slow peers, graceful shutdown and the counters.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::util::{Binary, ECHOD, IO_TIMEOUT, connect, echo_tcp, random_bytes};

/// Sends `signal` (a name such as "TERM") to the server.
fn signal(server: &Binary, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(server.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} failed");
}

/// Waits (bounded) for the server to exit by itself.
#[track_caller]
fn wait_for_exit(server: &mut Binary) -> std::process::ExitStatus {
    crate::util::wait_bounded(&mut server.child, IO_TIMEOUT)
}

/// One round trip on an open connection.
#[track_caller]
fn round_trip(stream: &mut TcpStream, message: &[u8]) {
    stream.write_all(message).unwrap();
    let mut back = vec![0u8; message.len()];
    stream.read_exact(&mut back).expect("the echo arrives");
    assert_eq!(back, message);
}

/// True if an echo of one byte arrives within `wait`. Used to show that a
/// client is *not* served yet; the positive case is always checked after.
fn echoed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    stream.write_all(b"?").unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut byte = [0u8; 1];
    let answered = match stream.read(&mut byte) {
        Ok(1) => true,
        Ok(_) => panic!("the server closed the connection"),
        Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(err) => panic!("read failed: {err}"),
    };
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    answered
}

/// The process's user + system CPU time, from /proc/PID/stat.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses): utime and
    // stime are the 12th and 13th of those, in clock ticks.
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second = 100; // USER_HZ on Linux
    Duration::from_millis(ticks * 1000 / per_second)
}

/// Resident memory of the process, from /proc/PID/status.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[test]
fn at_the_connection_limit_clients_wait_then_are_served() {
    let server = Binary::start(&[
        "-p",
        "0",
        "-b",
        "127.0.0.1",
        "--no-udp",
        "--max-connections",
        "3",
    ]);
    let addr = server.tcp.unwrap();
    let mut open: Vec<TcpStream> = (0..3).map(|_| connect(addr)).collect();
    for stream in &mut open {
        round_trip(stream, b"in");
    }
    // The fourth connects (the kernel's backlog takes it) but is not served.
    let mut waiting = connect(addr);
    assert!(!echoed_within(&mut waiting, Duration::from_millis(300)));
    // One closes: the waiting client is accepted at once, without a new
    // connection arriving to wake the listener.
    drop(open.pop());
    let mut byte = [0u8; 1];
    waiting
        .read_exact(&mut byte)
        .expect("served once a slot frees");
    assert_eq!(&byte, b"?");
    round_trip(&mut waiting, b"now served");
    server.wait_for_line("connections are open, the most --max-connections allows");
}

#[test]
fn out_of_descriptors_neither_spins_nor_stalls() {
    if !crate::util::need("prlimit", "apt-get install util-linux") {
        return;
    }
    // 64 descriptors in all, and a connection limit above that, so the
    // server really runs into EMFILE.
    let server = Binary::start_with(Command::new("prlimit").args([
        "--nofile=64:64",
        ECHOD,
        "-p",
        "0",
        "-b",
        "127.0.0.1",
        "--no-udp",
        "--max-connections",
        "1000",
    ]));
    let addr = server.tcp.unwrap();
    let pid = server.child.id();
    let mut first = connect(addr);
    round_trip(&mut first, b"first");
    let mut clients: Vec<TcpStream> = (0..199).map(|_| connect(addr)).collect();
    server.wait_for_line("cannot accept connections");
    // Existing sessions keep echoing while the backlog waits.
    round_trip(&mut first, b"still served");
    let before = cpu_time(pid);
    thread::sleep(Duration::from_secs(3));
    let used = cpu_time(pid) - before;
    assert!(
        used < Duration::from_millis(900),
        "the server used {used:?} of CPU in 3 s while out of descriptors: it spins"
    );
    // Most close, leaving fewer open than the descriptors allow: the last
    // in the backlog is accepted and served.
    drop(first);
    clients.drain(..150);
    let last = clients.last_mut().unwrap();
    round_trip(last, b"accepted at last");
    server.wait_for_line("accepting connections again");
}

#[test]
fn idle_connections_are_closed_cleanly() {
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
    let mut idle = connect(server.tcp.unwrap());
    round_trip(&mut idle, b"then silence");
    let mut rest = Vec::new();
    // The server's FIN after about a second: a clean EOF, not a reset.
    idle.read_to_end(&mut rest).expect("EOF, not a reset");
    assert!(rest.is_empty());
    server.wait_for_line("idle too long");
}

#[test]
fn clients_that_never_read_cannot_grow_memory_past_the_bound() {
    const CLIENTS: usize = 20;
    const BUFFER: u64 = 64 * 1024;
    let server = Binary::start(&[
        "-p",
        "0",
        "-b",
        "127.0.0.1",
        "--no-udp",
        "--buffer",
        "65536",
    ]);
    let addr = server.tcp.unwrap();
    let pid = server.child.id();
    // Warm up the allocator with one full echo, so the baseline is fair.
    echo_tcp(addr, &random_bytes(1, 1 << 20));
    let baseline = rss_bytes(pid);
    let writers: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let stream = connect(addr);
            stream.set_nonblocking(true).unwrap();
            thread::spawn(move || {
                let chunk = random_bytes(i as u64, 64 * 1024);
                let until = Instant::now() + Duration::from_secs(5);
                let mut sent = 0u64;
                while Instant::now() < until {
                    match (&stream).write(&chunk) {
                        Ok(n) => sent += n as u64,
                        Err(err) if err.kind() == ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(10))
                        }
                        Err(err) => panic!("write failed: {err}"),
                    }
                }
                (stream, sent)
            })
        })
        .collect();
    // Meanwhile a fresh client is served.
    thread::sleep(Duration::from_secs(1));
    assert_eq!(echo_tcp(addr, b"fresh"), b"fresh");
    let results: Vec<(TcpStream, u64)> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    let sent: u64 = results.iter().map(|(_, sent)| sent).sum();
    let growth = rss_bytes(pid).saturating_sub(baseline);
    let bound = CLIENTS as u64 * BUFFER + 4 * 1024 * 1024;
    assert!(
        growth < bound,
        "RSS grew by {growth} bytes (bound {bound}) while clients pushed {sent} bytes"
    );
    assert!(
        sent > bound,
        "the clients must push more than the bound for this to mean anything"
    );
}

#[test]
fn sigterm_lets_sessions_finish_and_exits_zero() {
    const CLIENTS: u64 = 10;
    let mut server = Binary::start(&["-p", "0", "-b", "127.0.0.1", "--grace", "20"]);
    let addr: SocketAddr = server.tcp.unwrap();
    let payloads: Vec<Vec<u8>> = (0..CLIENTS).map(|i| random_bytes(i, 300_000)).collect();
    let mut streams: Vec<TcpStream> = (0..CLIENTS).map(|_| connect(addr)).collect();
    // Mid-transfer: the first half is sent and echoed.
    let half = 150_000;
    let readers: Vec<_> = streams
        .iter_mut()
        .zip(&payloads)
        .map(|(stream, payload)| {
            stream.write_all(&payload[..half]).unwrap();
            let mut reader = stream.try_clone().unwrap();
            thread::spawn(move || {
                let mut back = Vec::new();
                reader.read_to_end(&mut back).map(|_| back)
            })
        })
        .collect();
    signal(&server, "TERM");
    server.wait_for_line("SIGTERM: shutting down: no new connections");
    // Within the grace, each sends the rest and half-closes.
    for (stream, payload) in streams.iter_mut().zip(&payloads) {
        stream.write_all(&payload[half..]).unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
    }
    for (i, (reader, payload)) in readers.into_iter().zip(&payloads).enumerate() {
        let back = reader.join().unwrap().expect("every byte, then EOF");
        assert!(
            back == *payload,
            "client {i} got {} of {} bytes",
            back.len(),
            payload.len()
        );
    }
    let receipt = server.wait_for_line("shutdown complete");
    assert!(
        receipt.contains("10 of 10 sessions finished, 0 cut"),
        "{receipt}"
    );
    let status = wait_for_exit(&mut server);
    assert!(status.success(), "exit status {status:?}");
    // The port is free again.
    std::net::TcpListener::bind(addr).expect("the port is free after exit");
}

#[test]
fn a_second_signal_exits_at_once() {
    let mut server = Binary::start(&["-p", "0", "-b", "127.0.0.1", "--no-udp", "--grace", "600"]);
    let _lingering = connect(server.tcp.unwrap());
    signal(&server, "INT");
    server.wait_for_line("SIGINT: shutting down");
    signal(&server, "INT");
    server.wait_for_line("SIGINT again: exiting now");
    let status = wait_for_exit(&mut server);
    assert_eq!(status.code(), Some(4), "forced: the session was cut");
}

#[test]
fn sigusr1_logs_the_counters() {
    let server = Binary::start(&["-p", "0", "-b", "127.0.0.1"]);
    for _ in 0..3 {
        assert_eq!(echo_tcp(server.tcp.unwrap(), b"12345"), b"12345");
    }
    let udp = crate::util::udp_socket_for(server.udp.unwrap());
    let mut buf = [0u8; 16];
    for _ in 0..2 {
        udp.send_to(b"dgram", server.udp.unwrap()).unwrap();
        udp.recv_from(&mut buf).unwrap();
    }
    signal(&server, "USR1");
    let line = server.wait_for_line("tcp: accepted");
    assert!(
        line.contains("tcp: accepted 3, active 0, closed 3 (eof 3,"),
        "{line}"
    );
    assert!(line.contains("bytes in 15, out 15"), "{line}");
    assert!(line.contains("udp: datagrams in 2, out 2"), "{line}");
}

/// A peer that keeps sending after the server began closing (idle) must
/// not keep the connection open: draining is bounded in time.
#[test]
fn a_peer_cannot_hold_a_closing_connection_open_by_sending() {
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
    // Silent until the server's FIN arrives (a read returns 0)...
    let mut byte = [0u8; 1];
    assert_eq!(stream.read(&mut byte).unwrap(), 0, "the idle close's FIN");
    // ...then talk on. The server drops the connection after its linger,
    // and the writes start failing with a reset.
    let deadline = Instant::now() + IO_TIMEOUT;
    let error = loop {
        assert!(
            Instant::now() < deadline,
            "the closing connection stayed open"
        );
        if let Err(err) = stream.write_all(b"x") {
            break err;
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert!(
        matches!(
            error.kind(),
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
        ),
        "{error}"
    );
    server.wait_for_line("idle too long");
}

/// After the grace period, a session that is still open is closed by the
/// server with a FIN (its client reads a clean EOF, not a reset), the
/// receipt counts it as cut, and the exit status (3) says so.
#[test]
fn sessions_still_open_after_the_grace_are_cut_cleanly() {
    let mut server = Binary::start(&["-p", "0", "-b", "127.0.0.1", "--no-udp", "--grace", "1"]);
    let mut stream = connect(server.tcp.unwrap());
    round_trip(&mut stream, b"never half-closes");
    signal(&server, "TERM");
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .expect("a clean EOF from the server, not a reset");
    assert!(rest.is_empty());
    drop(stream);
    let receipt = server.wait_for_line("shutdown complete");
    assert!(
        receipt.contains("0 of 1 session finished, 1 cut"),
        "{receipt}"
    );
    assert!(receipt.contains("shutdown 1"), "{receipt}");
    assert_eq!(
        wait_for_exit(&mut server).code(),
        Some(3),
        "a session was cut"
    );
}
