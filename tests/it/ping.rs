//! `echod ping`: probe lines and the summary, against the real server and
//! a closed port.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::tools::{Fault, Input, echod, faulty_tcp};
use crate::util::{Binary, IO_TIMEOUT, InProcess, free_port};

/// The probe lines of a ping output (those that report a sequence number).
fn probe_lines(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.contains("seq=")).collect()
}

#[test]
fn five_probes_over_tcp_and_a_summary_without_loss() {
    let server = Binary::start(&["--port", "0", "-b", "127.0.0.1"]);
    let addr = server.tcp.unwrap().to_string();
    let run = echod(&["ping", "-c", "5", "-i", "0.05", &addr], Input::Bytes(b""));
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    let out = run.stdout_text();
    let probes = probe_lines(&out);
    assert_eq!(probes.len(), 5, "{out}");
    for (i, line) in probes.iter().enumerate() {
        let expected = format!("64 bytes from {addr}: seq={} time=", i + 1);
        assert!(line.starts_with(&expected), "{line}");
        assert!(line.ends_with(" ms"), "{line}");
    }
    assert!(
        out.contains("5 probes sent, 5 echoed intact, 0% loss"),
        "{out}"
    );
    assert!(out.contains("rtt min/avg/median/max/stddev = "), "{out}");
}

#[test]
fn probes_over_udp_and_ipv6() {
    let server = InProcess::start(echod_server::server::ServerConfig {
        bind: vec!["::1".parse().unwrap()],
        ..Default::default()
    });
    let addr = server.udp_addr().to_string();
    let run = echod(
        &[
            "ping", "--udp", "-c", "3", "-i", "0.05", "-s", "1000", &addr,
        ],
        Input::Bytes(b""),
    );
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    let out = run.stdout_text();
    assert_eq!(probe_lines(&out).len(), 3, "{out}");
    assert!(out.contains("1000 bytes from [::1]:"), "{out}");
    assert!(
        out.contains("3 probes sent, 3 echoed intact, 0% loss"),
        "{out}"
    );
}

#[test]
fn connect_each_opens_a_connection_per_probe() {
    let server = Binary::start(&["--port", "0", "-b", "127.0.0.1", "-v"]);
    let addr = server.tcp.unwrap().to_string();
    let run = echod(
        &["ping", "--connect-each", "-c", "3", "-i", "0.05", &addr],
        Input::Bytes(b""),
    );
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    assert!(run.stdout_text().contains("3 probes sent, 3 echoed intact"));
    // The server saw three connections, each closed after a full echo.
    for _ in 0..3 {
        server.wait_for_line("peer finished, all echoed");
    }
}

#[test]
fn a_closed_port_exits_1_with_a_sentence() {
    let port = free_port();
    let run = echod(
        &[
            "ping",
            "-c",
            "2",
            "-i",
            "0.05",
            &format!("127.0.0.1:{port}"),
        ],
        Input::Bytes(b""),
    );
    assert_eq!(run.code(), 1, "stdout: {}", run.stdout_text());
    assert!(
        run.stderr.contains(&format!(
            "connection to 127.0.0.1:{port} refused: nothing is listening on TCP port {port}"
        )),
        "stderr: {}",
        run.stderr
    );
    let out = run.stdout_text();
    assert!(
        out.contains("2 probes sent, 0 echoed intact, 100% loss"),
        "{out}"
    );
}

#[test]
fn damaged_echoes_are_not_counted_and_none_intact_exits_1() {
    // Every connection's byte 5 comes back changed; each probe reconnects.
    let addr = faulty_tcp(Fault::FlipByteAt(5)).to_string();
    let run = echod(&["ping", "-c", "2", "-i", "0.05", &addr], Input::Bytes(b""));
    let out = run.stdout_text();
    assert_eq!(run.code(), 1, "{out}");
    assert!(out.contains("seq=1 mismatch: byte 5 differs"), "{out}");
    assert!(out.contains("seq=2 mismatch: byte 5 differs"), "{out}");
    assert!(
        out.contains("2 probes sent, 0 echoed intact, 100% loss"),
        "{out}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let run = echod(&["ping", "-c", "0", "127.0.0.1:7"], Input::Bytes(b""));
    assert_eq!(run.code(), 2);
    let run = echod(
        &["ping", "--udp", "-s", "70000", "127.0.0.1:7"],
        Input::Bytes(b""),
    );
    assert_eq!(run.code(), 2);
    assert!(run.stderr.contains("at most 65507 bytes"), "{}", run.stderr);
}

/// A TCP server on 127.0.0.1:0 that accepts and reads but never echoes,
/// as a line-buffered server does with input that holds no newline; it
/// serves until the returned sender is dropped or a bounded time passes.
fn silent_tcp() -> (SocketAddr, mpsc::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let (done, stop) = mpsc::channel::<()>();
    thread::spawn(move || {
        let deadline = Instant::now() + 2 * IO_TIMEOUT;
        let mut held = Vec::new();
        while Instant::now() < deadline {
            match stop.recv_timeout(Duration::from_millis(5)) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                _ => return, // the test is over
            }
            if let Ok((conn, _)) = listener.accept() {
                // Read what arrives so the client's sends never block;
                // keep the connection open, answer nothing.
                conn.set_nonblocking(true).unwrap();
                held.push(conn);
            }
            let mut buf = [0; 4096];
            for conn in &mut held {
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
            }
        }
    });
    (addr, done)
}

/// A UDP socket on 127.0.0.1 that never answers (kept open so that no
/// ICMP port unreachable comes back either).
fn silent_udp() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").unwrap()
}

/// -w stops the run whatever the count: a million probes a tenth of a
/// second apart would take days; the test's own bound fails it if -w is
/// ignored. A probe still waiting at the deadline is lost, and said so.
#[test]
fn a_deadline_stops_the_run_whatever_the_count() {
    let server = InProcess::v4();
    let addr = server.tcp_addr().to_string();
    let run = echod(
        &["ping", "-c", "1000000", "-i", "0.1", "-w", "500ms", &addr],
        Input::Bytes(b""),
    );
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    let out = run.stdout_text();
    let probes = probe_lines(&out).len();
    assert!(probes >= 1, "{out}");
    assert!(
        out.contains(&format!("{probes} probes sent, {probes} echoed intact")),
        "{out}"
    );

    let silent = silent_udp();
    let addr = silent.local_addr().unwrap().to_string();
    let run = echod(
        &[
            "ping", "--udp", "-c", "1", "-W", "3600", "-w", "300ms", &addr,
        ],
        Input::Bytes(b""),
    );
    assert_eq!(run.code(), 1, "stderr: {}", run.stderr);
    let out = run.stdout_text();
    assert!(
        out.contains("seq=1 timeout, no echo before the -w deadline"),
        "{out}"
    );
    assert!(out.contains("1 probes sent, 0 echoed intact"), "{out}");

    // As ping(8), the run lasts until the deadline even when the next
    // probe would start after it: probes at 0 and 200 ms, the next due at
    // 400 ms, past the deadline; the run still waits to 300 ms. (A lower
    // bound the tool's own clock guarantees, not a measurement.)
    let server = InProcess::v4();
    let addr = server.tcp_addr().to_string();
    let run = echod(
        &[
            "ping", "-c", "100", "-i", "200ms", "-w", "300ms", "--json", &addr,
        ],
        Input::Bytes(b""),
    );
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    let summary: serde_json::Value = serde_json::from_str(run.stdout_text().trim()).unwrap();
    assert_eq!(summary["sent"], 2, "{summary}");
    let took = summary["time_ms"].as_f64().unwrap();
    assert!(
        took >= 300.0,
        "the run ended at {took} ms, before its deadline"
    );
}

/// Nothing came back at all: the summary is followed by a hint that names
/// the likely cause (a server waiting for a newline) and `echod check`.
#[test]
fn no_echo_at_all_names_line_buffering_and_check() {
    let (addr, done) = silent_tcp();
    let run = echod(
        &[
            "ping",
            "-c",
            "2",
            "-i",
            "0",
            "-W",
            "200ms",
            &addr.to_string(),
        ],
        Input::Bytes(b""),
    );
    drop(done);
    assert_eq!(run.code(), 1, "stderr: {}", run.stderr);
    assert_eq!(probe_lines(&run.stdout_text()).len(), 2);
    assert!(
        run.stderr
            .contains("no probe came back whole from 127.0.0.1:"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains(&format!("`echod check {addr} --only echo unbuffered`")),
        "{}",
        run.stderr
    );
}

/// -4 and -6 pick the family; an address of the other family is refused
/// with a sentence and status 2.
#[test]
fn four_and_six_choose_the_family() {
    let server = InProcess::start(echod_server::server::ServerConfig {
        bind: vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
        ..Default::default()
    });
    let port = server.tcp_addr().port();
    // localhost has an IPv4 address everywhere.
    let run = echod(
        &["ping", "-4", "-c", "1", &format!("localhost:{port}")],
        Input::Bytes(b""),
    );
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    assert!(
        run.stdout_text()
            .contains(&format!("64 bytes from 127.0.0.1:{port}: seq=1")),
        "{}",
        run.stdout_text()
    );
    let run = echod(
        &["ping", "-6", "-c", "1", &format!("[::1]:{port}")],
        Input::Bytes(b""),
    );
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    assert!(run.stdout_text().contains(&format!("from [::1]:{port}")));

    let run = echod(
        &["ping", "-6", "-c", "1", &format!("127.0.0.1:{port}")],
        Input::Bytes(b""),
    );
    assert_eq!(run.code(), 2, "stdout: {}", run.stdout_text());
    assert!(
        run.stderr
            .contains("-6 asks for IPv6, but 127.0.0.1 is not an IPv6 address"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "no probe was sent");
    let run = echod(&["ping", "-4", "-6", "127.0.0.1:7"], Input::Bytes(b""));
    assert_eq!(run.code(), 2, "{}", run.stderr);
}

/// --json: one line on stdout, nothing else there, with the summary's
/// figures and each probe.
#[test]
fn json_is_one_line_with_the_summary_and_each_probe() {
    let server = InProcess::v4();
    let addr = server.tcp_addr().to_string();
    let run = echod(
        &["ping", "--json", "-c", "3", "-i", "0.05", &addr],
        Input::Bytes(b""),
    );
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    let out = run.stdout_text();
    assert_eq!(out.lines().count(), 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["addr"], addr.as_str());
    assert_eq!(v["transport"], "tcp");
    assert_eq!(v["sent"], 3);
    assert_eq!(v["received"], 3);
    assert_eq!(v["lost"], 0);
    assert_eq!(v["interrupted"], false);
    for key in ["min", "avg", "median", "max", "stddev"] {
        assert!(v["rtt_ms"][key].as_f64().is_some(), "{key}: {out}");
    }
    let probes = v["probes"].as_array().unwrap();
    assert_eq!(probes.len(), 3);
    assert_eq!(probes[2]["seq"], 3);
    assert!(probes[0]["rtt_ms"].as_f64().is_some(), "{out}");

    let port = free_port();
    let run = echod(
        &[
            "ping",
            "--json",
            "-c",
            "2",
            "-i",
            "0",
            &format!("127.0.0.1:{port}"),
        ],
        Input::Bytes(b""),
    );
    assert_eq!(run.code(), 1);
    let v: serde_json::Value = serde_json::from_str(&run.stdout_text()).unwrap();
    assert_eq!((v["sent"].as_u64(), v["lost"].as_u64()), (Some(2), Some(2)));
    assert!(v["rtt_ms"].is_null());
    assert_eq!(
        v["probes"][0]["error"],
        "could not connect: connection refused"
    );
}
