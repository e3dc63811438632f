//! `echod bench`: a short load against the real server reports messages
//! and no errors; against a server that damages the echo it counts errors
//! and fails.

use serde_json::Value;

use crate::tools::{Fault, Input, echod, faulty_tcp};
use crate::util::{Binary, InProcess};

#[track_caller]
fn json_of(stdout: &[u8]) -> Value {
    serde_json::from_slice(stdout).unwrap_or_else(|err| {
        panic!(
            "stdout is not one JSON object ({err}): {}",
            String::from_utf8_lossy(stdout)
        )
    })
}

#[test]
fn json_report_against_the_server_has_messages_and_no_errors() {
    let server = Binary::start(&["--port", "0", "-b", "127.0.0.1"]);
    let addr = server.tcp.unwrap().to_string();
    let run = echod(
        &[
            "bench", "--json", "-d", "2", "--warmup", "0.2", "-c", "4", &addr,
        ],
        Input::Bytes(b""),
    );
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    let report = json_of(&run.stdout);
    assert!(report["messages"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["transport"], "tcp");
    assert_eq!(report["connections"], 4);
    assert!(
        report["latency_us"]["p99"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert_eq!(
        report["bytes"].as_u64().unwrap(),
        64 * report["messages"].as_u64().unwrap()
    );
}

#[test]
fn a_flipped_byte_counts_errors_and_fails() {
    let addr = faulty_tcp(Fault::FlipByteAt(100)).to_string();
    let run = echod(
        &[
            "bench", "--json", "-d", "0.5", "--warmup", "0", "-c", "2", &addr,
        ],
        Input::Bytes(b""),
    );
    assert_eq!(run.code(), 1, "stderr: {}", run.stderr);
    let report = json_of(&run.stdout);
    assert!(report["mismatches"].as_u64().unwrap() > 0, "{report}");
    assert!(report["errors"].as_u64().unwrap() > 0, "{report}");
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
    let run = echod(
        &[
            "bench", "--json", "-d", "0.5", "--warmup", "0", "-c", "1", "-W", "300ms", &addr,
        ],
        Input::Bytes(b""),
    );
    assert_eq!(run.code(), 1, "stderr: {}", run.stderr);
    let report = json_of(&run.stdout);
    assert!(
        report["stalls"].as_u64().unwrap() + report["resets"].as_u64().unwrap() > 0,
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
    let server = InProcess::v4();
    let addr = server.udp_addr().to_string();
    let run = echod(
        &[
            "bench",
            "--udp",
            "--json",
            "-d",
            "0.5",
            "--warmup",
            "0",
            "-c",
            "2",
            "--pipeline",
            "2",
            &addr,
        ],
        Input::Bytes(b""),
    );
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    let report = json_of(&run.stdout);
    assert!(report["messages"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
}

#[test]
fn two_threads_share_the_connections() {
    let server = InProcess::v4();
    let addr = server.tcp_addr().to_string();
    let run = echod(
        &[
            "bench",
            "--json",
            "-d",
            "0.5",
            "--warmup",
            "0",
            "-c",
            "5",
            "--threads",
            "2",
            &addr,
        ],
        Input::Bytes(b""),
    );
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    let report = json_of(&run.stdout);
    assert_eq!(report["threads"], 2);
    assert_eq!(report["errors"], 0, "{report}");
}

#[test]
fn a_closed_port_counts_failed_connects() {
    let port = crate::util::free_port();
    let run = echod(
        &[
            "bench",
            "--json",
            "-d",
            "0.3",
            "--warmup",
            "0",
            "-c",
            "1",
            &format!("127.0.0.1:{port}"),
        ],
        Input::Bytes(b""),
    );
    assert_eq!(run.code(), 1);
    let report = json_of(&run.stdout);
    assert!(report["connect_failures"].as_u64().unwrap() > 0, "{report}");
    assert!(run.stderr.contains("refused"), "{}", run.stderr);
}
