//! `echod bench`: a short load against the real server reports messages
//! and no errors; against a server that damages the echo it counts errors
//! and fails.

use serde_json::Value;

use crate::tools::{Fault, Input, Run, echod, faulty_tcp};
use crate::util::{Binary, InProcess, free_port};

/// Runs `echod bench --json --warmup 0 ARGS`; returns the run and its
/// report.
#[track_caller]
fn bench_json(args: &[&str]) -> (Run, Value) {
    let all: Vec<&str> = ["bench", "--json", "--warmup", "0"]
        .iter()
        .chain(args)
        .copied()
        .collect();
    let run = echod(&all, Input::Bytes(b""));
    let report = serde_json::from_slice(&run.stdout).unwrap_or_else(|err| {
        panic!(
            "stdout is not one JSON object ({err}): {}; stderr: {}",
            run.stdout_text(),
            run.stderr
        )
    });
    (run, report)
}

fn count(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {report}"))
}

#[test]
fn json_report_against_the_server_has_messages_and_no_errors() {
    let server = Binary::start(&["--port", "0", "-b", "127.0.0.1"]);
    let addr = server.tcp.unwrap().to_string();
    let (run, report) = bench_json(&["-d", "2", "-c", "4", &addr]);
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    assert!(count(&report, "messages") > 0, "{report}");
    assert_eq!(count(&report, "errors"), 0, "{report}");
    assert_eq!(report["transport"], "tcp");
    assert_eq!(report["connections"], 4);
    assert!(
        report["latency_us"]["p99"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert_eq!(count(&report, "bytes"), 64 * count(&report, "messages"));
}

#[test]
fn a_flipped_byte_counts_errors_and_fails() {
    let addr = faulty_tcp(Fault::FlipByteAt(100)).to_string();
    let (run, report) = bench_json(&["-d", "0.5", "-c", "2", &addr]);
    assert_eq!(run.code(), 1, "stderr: {}", run.stderr);
    assert!(count(&report, "mismatches") > 0, "{report}");
    assert!(count(&report, "errors") > 0, "{report}");
    // Byte 100 is byte 36 of message 1 (64-byte messages).
    assert!(
        run.stderr.contains("message 1: byte 36 differs"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_server_that_closes_early_counts_resets() {
    let addr = faulty_tcp(Fault::EchoOnly(64 * 3)).to_string();
    let (run, report) = bench_json(&["-d", "0.5", "-c", "1", "-W", "300ms", &addr]);
    assert_eq!(run.code(), 1, "stderr: {}", run.stderr);
    assert!(
        count(&report, "stalls") + count(&report, "resets") > 0,
        "{report}"
    );
}

#[test]
fn pipelined_open_loop_and_text_report() {
    let server = InProcess::v4();
    let addr = server.tcp_addr().to_string();
    let run = echod(
        &[
            "bench",
            "-d",
            "0.5",
            "--warmup",
            "0",
            "-c",
            "3",
            "--pipeline",
            "4",
            "--rate",
            "3000",
            "-s",
            "100",
            &addr,
        ],
        Input::Bytes(b""),
    );
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    let out = run.stdout_text();
    assert!(out.contains("open loop at 3000 messages/s"), "{out}");
    assert!(out.contains("errors     0 ("), "{out}");
    assert!(out.contains("latency    p50 "), "{out}");
    // Not a terminal: no progress bar drawing on stderr.
    assert!(!run.stderr.contains('\u{1b}'), "{}", run.stderr);
}

#[test]
fn udp_against_the_server() {
    let server = InProcess::for_load();
    let addr = server.udp_addr().to_string();
    let (run, report) = bench_json(&["--udp", "-d", "0.5", "-c", "2", "--pipeline", "2", &addr]);
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    assert!(count(&report, "messages") > 0, "{report}");
    assert_eq!(count(&report, "errors"), 0, "{report}");
}

#[test]
fn two_threads_share_the_connections() {
    let server = InProcess::v4();
    let addr = server.tcp_addr().to_string();
    let (run, report) = bench_json(&["-d", "0.5", "-c", "5", "--threads", "2", &addr]);
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    assert_eq!(report["threads"], 2);
    assert_eq!(count(&report, "errors"), 0, "{report}");
}

#[test]
fn a_closed_port_counts_failed_connects() {
    let addr = format!("127.0.0.1:{}", free_port());
    let (run, report) = bench_json(&["-d", "0.3", "-c", "1", &addr]);
    assert_eq!(run.code(), 1);
    assert!(count(&report, "connect_failures") > 0, "{report}");
    assert!(run.stderr.contains("refused"), "{}", run.stderr);
}

#[test]
fn ipv6_loopback_tcp_and_udp() {
    let server = InProcess::start(echod_server::server::ServerConfig {
        bind: vec!["::1".parse().unwrap()],
        udp_guard: crate::util::no_udp_rate_limit(),
        ..Default::default()
    });
    for (flag, addr) in [
        ("--pipeline=2", server.tcp_addr()),
        ("--udp", server.udp_addr()),
    ] {
        let addr = addr.to_string();
        let (run, report) = bench_json(&[flag, "-d", "0.3", "-c", "2", &addr]);
        assert_eq!(run.code(), 0, "{flag}: stderr: {}", run.stderr);
        assert!(count(&report, "messages") > 0, "{report}");
        assert_eq!(count(&report, "errors"), 0, "{report}");
    }
}

#[test]
fn dash_p_is_no_pipeline_and_a_bare_port_is_no_address() {
    // `-p` is the server's port; bench once took it for the pipeline and
    // benched port 7 with a pipeline of 17507.
    let run = echod(&["bench", "-p", "17507", "127.0.0.1"], Input::Bytes(b""));
    assert_eq!(run.code(), 2, "stderr: {}", run.stderr);
    assert!(run.stderr.contains("'-p'"), "{}", run.stderr);
    // A number where the address goes is a port typed in the wrong place.
    let run = echod(&["bench", "-d", "1", "17507"], Input::Bytes(b""));
    assert_eq!(run.code(), 2, "stderr: {}", run.stderr);
    assert!(
        run.stderr
            .contains("'17507' is a port, not an address; write 127.0.0.1:17507 or HOST:17507"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty());
}
