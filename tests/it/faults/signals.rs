//! Signals (issue 12, §8): SIGHUP drains like SIGTERM unless it was ignored
//! at start (`nohup`), and the exit status tells a clean stop (0) from one
//! that cut sessions (3: the grace ran out; 4: a second signal).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use crate::util::{self, Binary, ECHOD, IO_TIMEOUT, connect, need};

/// Sends `kill -SIGNAL` to the server.
#[track_caller]
pub(super) fn send(server: &Binary, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(server.child.id().to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} failed");
}

/// The exit status as a number; fails the test if a signal killed it.
#[track_caller]
pub(super) fn exit_code(status: ExitStatus) -> i32 {
    match status.code() {
        Some(code) => code,
        None => panic!("echod was killed by signal {:?}", status.signal()),
    }
}

#[track_caller]
fn wait_for_exit(server: &mut Binary) -> i32 {
    exit_code(util::wait_bounded(&mut server.child, IO_TIMEOUT))
}

const SERVE: [&str; 5] = ["-p", "0", "-b", "127.0.0.1", "--no-udp"];

#[test]
fn sighup_lets_sessions_finish_and_exits_0() {
    let mut server = Binary::start(&SERVE);
    let mut client = connect(server.tcp.unwrap());
    let payload = util::random_bytes(8, 300_000);
    let (first, second) = payload.split_at(150_000);
    client.write_all(first).unwrap();
    let mut reader = client.try_clone().unwrap();
    let echoed = std::thread::spawn(move || {
        let mut back = Vec::new();
        reader.read_to_end(&mut back).map(|_| back)
    });
    send(&server, "HUP");
    server.wait_for_line("SIGHUP: shutting down: no new connections");
    client.write_all(second).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let back = echoed.join().unwrap().expect("every byte, then EOF");
    assert!(back == payload, "{} of {} bytes", back.len(), payload.len());
    let receipt = server.wait_for_line("shutdown complete");
    assert!(
        receipt.contains("1 of 1 session finished, 0 cut")
            && receipt.contains("exit status 0: every session finished"),
        "{receipt}"
    );
    assert_eq!(wait_for_exit(&mut server), 0);
}

#[test]
fn sighup_stays_ignored_under_nohup() {
    let mut command = Command::new("nohup");
    command.arg(ECHOD).args(SERVE);
    let mut server = Binary::start_with(&mut command);
    assert!(
        server
            .startup
            .iter()
            .any(|line| line.contains("SIGHUP was ignored when echod started")),
        "{:#?}",
        server.startup
    );
    let addr = server.tcp.unwrap();
    let mut client = connect(addr);
    send(&server, "HUP");
    // SIGUSR1's counters line marks a point after the SIGHUP: had SIGHUP
    // been handled, the shutdown line would come before it or just after,
    // and the new connection below would be refused.
    send(&server, "USR1");
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let line = server
            .next_line_before(deadline)
            .expect("SIGUSR1 logs the counters");
        assert!(!line.contains("SIGHUP"), "{line}");
        if line.contains("tcp: accepted") {
            break;
        }
    }
    // Still serving, old and new connections alike.
    client.write_all(b"still here").unwrap();
    let mut back = [0u8; 10];
    client.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"still here");
    assert_eq!(util::echo_tcp(addr, b"new"), b"new");
    drop(client);
    send(&server, "TERM");
    server.wait_for_line("SIGTERM: shutting down");
    assert_eq!(wait_for_exit(&mut server), 0);
}

#[test]
fn a_second_signal_during_the_grace_exits_4() {
    let mut server = Binary::start(&[&SERVE[..], &["--grace", "600"]].concat());
    let mut client = connect(server.tcp.unwrap());
    round_trip(&mut client);
    send(&server, "TERM");
    server.wait_for_line("SIGTERM: shutting down");
    send(&server, "HUP");
    server.wait_for_line("SIGHUP again: exiting now");
    let last = server.wait_for_line("stopping at once");
    assert!(
        last.contains("1 session cut") && last.contains("exit status 4"),
        "{last}"
    );
    assert_eq!(wait_for_exit(&mut server), 4);
}

#[test]
fn a_grace_that_runs_out_with_sessions_open_exits_3() {
    let mut server = Binary::start(&[&SERVE[..], &["--grace", "1"]].concat());
    let mut client = connect(server.tcp.unwrap());
    round_trip(&mut client);
    send(&server, "TERM");
    let receipt = server.wait_for_line("shutdown complete");
    assert!(
        receipt.contains("0 of 1 session finished, 1 cut")
            && receipt.contains("exit status 3: the grace period ran out"),
        "{receipt}"
    );
    assert_eq!(wait_for_exit(&mut server), 3);
    drop(client);
}

#[test]
fn the_man_page_lists_every_exit_status() {
    let output = Command::new(ECHOD)
        .args(["generate", "man"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let page = String::from_utf8(output.stdout).unwrap();
    let section = page
        .split(".SH \"EXIT STATUS\"\n")
        .nth(1)
        .expect("an EXIT STATUS section");
    let section = section.split("\n.SH ").next().unwrap();
    for status in 0..=4 {
        assert!(
            section.contains(&format!(".TP\n\\fB{status}\\fR\n")),
            "status {status} not in:\n{section}"
        );
    }
    assert!(section.contains("second signal"), "{section}");
}

/// One echo on an open connection, so it is a session in full.
#[track_caller]
fn round_trip(stream: &mut TcpStream) {
    stream.write_all(b"ping").unwrap();
    let mut back = [0u8; 4];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping");
}

/// The address in echod's "listening on tcp ADDR" line within `text`,
/// once the line is complete.
fn listening_address(text: &str) -> Option<SocketAddr> {
    let rest = text.split("listening on tcp ").nth(1)?;
    let (addr, _) = rest.split_once('\n')?;
    addr.trim().parse().ok()
}

/// Waits (bounded) for the address a reader thread finds; kills `child`
/// and fails the test if none comes.
#[track_caller]
fn address_from(rx: &mpsc::Receiver<SocketAddr>, child: &mut Child) -> SocketAddr {
    match rx.recv_timeout(IO_TIMEOUT) {
        Ok(addr) => addr,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("echod did not say it was listening");
        }
    }
}

/// A session that goes on after the stop began: more bytes, the
/// client's half-close, every byte back and a clean EOF.
#[track_caller]
fn finish_session(stream: &mut TcpStream) {
    stream.write_all(b"after").unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    stream
        .read_to_end(&mut back)
        .expect("the session is echoed to its end, then a clean EOF");
    assert_eq!(back, b"after");
}

/// A terminal that goes away (a terminal window closed, an ssh session
/// lost) while echod runs in it: the kernel hangs up the terminal, whose
/// writes fail with EIO from then on, and sends SIGHUP. echod must drain
/// as for SIGTERM, though the line that says so cannot be written: before
/// the logger ignored write errors it panicked there (exit 101), and every
/// session went with it. The terminal is a pseudo-terminal, made echod's
/// controlling terminal by `setsid --ctty` (util-linux), and hung up by
/// closing its master side.
#[test]
fn a_terminal_hang_up_drains_and_exits_0() {
    if !need("setsid", "it comes with util-linux") {
        return;
    }
    // Close-on-exec, so that no child spawned meanwhile by another test
    // keeps the terminal open and the hang-up from happening.
    let (master, slave) = util::pseudo_terminal();
    let mut child = {
        // The command holds the terminal's descriptors until it is dropped.
        let mut command = Command::new("setsid");
        command
            .args(["--ctty", ECHOD])
            .args(SERVE)
            .args(["--grace", "30"])
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        command.spawn().expect("setsid runs")
    };
    // The terminal's output, read until the listening line; then the
    // reader gives the master back, to be closed. It also ends when echod
    // does (the read fails with EIO), so killing echod ends it.
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = (&master).read(&mut buf) {
            seen.extend_from_slice(&buf[..n]);
            if let Some(addr) = listening_address(&String::from_utf8_lossy(&seen)) {
                let _ = tx.send(addr);
                break;
            }
        }
        master
    });
    let addr = address_from(&rx, &mut child);
    let master = reader.join().unwrap();
    let mut client = connect(addr);
    round_trip(&mut client);

    drop(master);
    finish_session(&mut client);
    assert_eq!(exit_code(util::wait_bounded(&mut child, IO_TIMEOUT)), 0);
}

/// stderr a pipe whose reader has gone: every line fails with EPIPE (Rust
/// ignores SIGPIPE). The counters line of SIGUSR1 and the drain's lines
/// are lost, but echod serves on and exits 0 once its session ends.
#[test]
fn a_closed_stderr_stops_nothing() {
    let mut child = Command::new(ECHOD)
        .args(SERVE)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("echod starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    // Read up to the listening line, then close the pipe's reading end.
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            seen.push_str(&line);
            seen.push('\n');
            if let Some(addr) = listening_address(&seen) {
                let _ = tx.send(addr);
                break;
            }
        }
    });
    let addr = address_from(&rx, &mut child);
    reader.join().unwrap();
    let mut client = connect(addr);
    round_trip(&mut client);

    let kill = |signal: &str| {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} failed");
    };
    kill("USR1");
    round_trip(&mut client);
    kill("TERM");
    finish_session(&mut client);
    assert_eq!(exit_code(util::wait_bounded(&mut child, IO_TIMEOUT)), 0);
}
