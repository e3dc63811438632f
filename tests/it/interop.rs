//! Real clients: a file piped through the real binary by `nc -N` and
//! `socat` comes back byte-identical. `.ci/run` installs both; elsewhere a
//! missing tool skips the test with a printed reason.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::util::{Binary, need, random_bytes};

/// Pipes `input` through `program args` and returns its stdout, bounded by
/// `timeout` (coreutils) so a hang fails instead of blocking the suite.
fn pipe_through(program: &str, args: &[String], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("timeout")
        .arg("30")
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(out.status.success(), "{program} failed: {:?}", out.status);
    out.stdout
}

fn file_payload() -> Vec<u8> {
    random_bytes(862, 3 * 1024 * 1024 + 17)
}

/// `nc -N ADDR PORT < file` against the binary bound to `addr`.
fn nc_pipes_a_file_through(addr: &str) {
    if !need("nc", "apt-get install netcat-openbsd") {
        return;
    }
    let server = Binary::start(&["--port", "0", "-b", addr, "--no-udp"]);
    let port = server.tcp.unwrap().port().to_string();
    let payload = file_payload();
    let back = pipe_through("nc", &["-N".into(), addr.into(), port], &payload);
    assert!(
        back == payload,
        "nc got {} bytes back of {}",
        back.len(),
        payload.len()
    );
}

#[test]
fn nc_pipes_a_file_through_over_ipv4() {
    nc_pipes_a_file_through("127.0.0.1");
}

#[test]
fn nc_pipes_a_file_through_over_ipv6() {
    nc_pipes_a_file_through("::1");
}

#[test]
fn nc_udp_line_comes_back() {
    if !need("nc", "apt-get install netcat-openbsd") {
        return;
    }
    let server = Binary::start(&["--port", "0", "-b", "127.0.0.1", "--no-tcp"]);
    let port = server.udp.unwrap().port().to_string();
    // -w1: quit one second after stdin ends and the reply is in.
    let back = pipe_through(
        "nc",
        &["-u".into(), "-w1".into(), "127.0.0.1".into(), port],
        b"datagram\n",
    );
    assert_eq!(back, b"datagram\n");
}

#[test]
fn socat_pipes_a_file_through() {
    if !need("socat", "apt-get install socat") {
        return;
    }
    let server = Binary::start(&["--port", "0", "-b", "127.0.0.1", "--no-udp"]);
    let addr = server.tcp.unwrap();
    let payload = file_payload();
    // -t 10: after stdin's EOF, wait up to 10 s for the rest of the echo.
    let back = pipe_through(
        "socat",
        &["-t".into(), "10".into(), "-".into(), format!("TCP:{addr}")],
        &payload,
    );
    assert!(
        back == payload,
        "socat got {} bytes back of {}",
        back.len(),
        payload.len()
    );
}

#[test]
fn socat_udp_datagram_comes_back() {
    if !need("socat", "apt-get install socat") {
        return;
    }
    let server = Binary::start(&["--port", "0", "-b", "::1", "--no-tcp"]);
    let addr = server.udp.unwrap();
    let back = pipe_through(
        "socat",
        &["-t".into(), "1".into(), "-".into(), format!("UDP6:{addr}")],
        b"over udp6\n",
    );
    assert_eq!(back, b"over udp6\n");
}
