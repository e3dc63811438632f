//! `echod ping`: probe lines and the summary, against the real server and
//! a closed port.

use crate::tools::{Fault, Input, echod, faulty_tcp};
use crate::util::{Binary, InProcess, free_port};

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
