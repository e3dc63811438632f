//! `echod client`: stdin through the server, checked; against the real
//! server and against servers that damage, cut or drop the echo.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use crate::tools::{Fault, Input, TempFile, drop_every_other_udp, echod, faulty_tcp};
use crate::util::{ECHOD, IO_TIMEOUT, InProcess, random_bytes};

/// A UDP echo server on 127.0.0.1:0 that also reports the size of every
/// datagram it receives, for a bounded time.
fn recording_udp() -> (SocketAddr, Receiver<usize>) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let (sizes, received) = mpsc::channel();
    thread::spawn(move || {
        let deadline = Instant::now() + 2 * IO_TIMEOUT;
        let mut buf = vec![0; 65_536];
        while Instant::now() < deadline {
            let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                continue;
            };
            if sizes.send(n).is_err() {
                return; // the test is over
            }
            let _ = socket.send_to(&buf[..n], peer);
        }
    });
    (addr, received)
}

/// `client --udp -s SIZE` of `len` bytes through [`recording_udp`]: the
/// sizes of the datagrams the server received.
fn datagram_sizes(size: &str, len: usize) -> Vec<usize> {
    let (addr, sizes) = recording_udp();
    let input = random_bytes(len as u64, len);
    let run = echod(
        &["client", "--udp", "-s", size, &addr.to_string()],
        Input::Bytes(&input),
    );
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    assert!(run.stdout == input, "the echo differs from the input");
    // The client has exited: every datagram it sent has been received.
    sizes.try_iter().collect()
}

#[test]
fn a_32_mib_file_comes_back_unchanged() {
    let server = InProcess::v4();
    let file = TempFile::random("client-32mib", 32 * 1024 * 1024);
    let addr = server.tcp_addr().to_string();
    let run = echod(&["client", &addr], Input::File(&file.path));
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    let sent = std::fs::read(&file.path).unwrap();
    assert!(run.stdout == sent, "the echo differs from the 32 MiB input");
}

#[test]
fn a_small_window_still_moves_everything() {
    // The window bounds what is in flight; a tiny one must only slow the
    // client down, never lose or reorder bytes.
    let server = InProcess::v4();
    let input = random_bytes(7, 300_000);
    let addr = server.tcp_addr().to_string();
    let run = echod(&["client", "--window", "1024", &addr], Input::Bytes(&input));
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    assert!(run.stdout == input);
}

#[test]
fn ipv6_loopback_works_too() {
    let server = InProcess::start(echod_server::server::ServerConfig {
        bind: vec!["::1".parse().unwrap()],
        ..Default::default()
    });
    let addr = server.tcp_addr().to_string();
    let run = echod(&["client", &addr], Input::Bytes(b"over ipv6\n"));
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    assert_eq!(run.stdout, b"over ipv6\n");
}

#[test]
fn a_flipped_byte_is_named_by_its_offset() {
    let addr = faulty_tcp(Fault::FlipByteAt(1000)).to_string();
    let input = random_bytes(1, 5000);
    let run = echod(&["client", &addr], Input::Bytes(&input));
    assert_eq!(run.code(), 1, "stderr: {}", run.stderr);
    assert!(
        run.stderr
            .contains("differs from what was sent at byte offset 1000"),
        "stderr: {}",
        run.stderr
    );
    // The good bytes before the bad one were passed on, nothing after.
    assert_eq!(run.stdout, input[..1000]);
}

#[test]
fn no_verify_passes_a_changed_byte_through() {
    let addr = faulty_tcp(Fault::FlipByteAt(10)).to_string();
    let input = random_bytes(2, 100);
    let run = echod(&["client", "--no-verify", &addr], Input::Bytes(&input));
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    assert_eq!(run.stdout.len(), 100);
    assert_eq!(run.stdout[10], input[10] ^ 0x20);
}

#[test]
fn an_early_close_is_reported_as_truncation() {
    let addr = faulty_tcp(Fault::EchoOnly(3000)).to_string();
    let input = random_bytes(3, 10_000);
    let run = echod(&["client", &addr], Input::Bytes(&input));
    assert_eq!(run.code(), 1, "stderr: {}", run.stderr);
    assert!(
        run.stderr
            .contains("truncated at byte offset 3000: the server closed the connection after echoing 3000 of the 10000 bytes"),
        "stderr: {}",
        run.stderr
    );
    assert_eq!(run.stdout, input[..3000]);
}

/// A TCP echo server on 127.0.0.1:0 for one connection that echoes all
/// it reads but, after the client's EOF, keeps its side open until the
/// returned sender is dropped (or a bounded time passes).
fn never_closing_tcp() -> (SocketAddr, mpsc::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (done, hold) = mpsc::channel::<()>();
    thread::spawn(move || {
        let Ok((mut conn, _)) = listener.accept() else {
            return;
        };
        conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut buf = vec![0; 64 * 1024];
        loop {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        // EOF read, everything echoed: the close never comes.
        let _ = hold.recv_timeout(2 * IO_TIMEOUT);
        drop(conn);
    });
    (addr, done)
}

/// Everything came back, only the close is missing: the client says so,
/// in the words `check` uses, not "stuck or overloaded".
#[test]
fn a_server_that_never_closes_after_the_half_close_is_named() {
    let (addr, done) = never_closing_tcp();
    let input = random_bytes(8, 3000);
    let run = echod(
        &["client", "-W", "300ms", &addr.to_string()],
        Input::Bytes(&input),
    );
    drop(done);
    assert_eq!(run.code(), 1, "stderr: {}", run.stderr);
    assert!(
        run.stderr.contains(
            "all 3000 bytes came back, but the server did not close its side within 300 ms \
             after the client shut down its own"
        ),
        "stderr: {}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("stuck or overloaded"),
        "{}",
        run.stderr
    );
    assert!(run.stdout == input, "the echo on stdout is complete");
}

#[test]
fn a_reset_while_sending_still_names_where_the_echo_stops() {
    // The server echoes 1000 bytes and closes with the rest unread: the
    // client's writes fail, but it reads what was echoed before saying so.
    let addr = faulty_tcp(Fault::CloseAfter(1000)).to_string();
    let file = TempFile::random("client-reset", 8 * 1024 * 1024);
    let run = echod(&["client", &addr], Input::File(&file.path));
    assert_eq!(run.code(), 1, "stderr: {}", run.stderr);
    assert!(
        run.stderr.contains("at byte offset 1000")
            || run.stderr.contains("after echoing 1000 of")
            || run.stderr.contains("and 1000 echoed"),
        "stderr: {}",
        run.stderr
    );
    assert_eq!(run.stdout.len(), 1000);
}

#[test]
fn a_closed_port_is_a_sentence_and_status_1() {
    let port = crate::util::free_port();
    let run = echod(
        &["client", &format!("127.0.0.1:{port}")],
        Input::Bytes(b"x"),
    );
    assert_eq!(run.code(), 1);
    assert!(
        run.stderr.contains(&format!(
            "connection to 127.0.0.1:{port} refused: nothing is listening"
        )),
        "stderr: {}",
        run.stderr
    );
}

#[test]
fn an_unknown_host_is_a_usage_error() {
    let run = echod(&["client", "no-such-host.invalid:7"], Input::Bytes(b""));
    assert_eq!(run.code(), 2);
    assert!(
        run.stderr.contains("could not resolve the host name"),
        "{}",
        run.stderr
    );
}

#[test]
fn udp_datagrams_come_back_in_order() {
    let server = InProcess::v4();
    let input = random_bytes(4, 20_000);
    let addr = server.udp_addr().to_string();
    let run = echod(
        &["client", "--udp", "-s", "1000", &addr],
        Input::Bytes(&input),
    );
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    assert!(run.stdout == input);
}

/// Datagrams are exactly --size bytes, not shaped by how stdin happens to
/// be read (its 8 KiB buffer made 1000 × 8 and 192, again and again).
#[test]
fn udp_datagrams_are_exactly_the_size_asked() {
    assert_eq!(datagram_sizes("1000", 20_000), vec![1000; 20]);
    assert_eq!(datagram_sizes("8000", 8192), [8000, 192]);
    assert_eq!(
        datagram_sizes("1472", 10_000),
        [1472, 1472, 1472, 1472, 1472, 1472, 1168]
    );
}

#[test]
fn udp_loss_is_reported_with_a_failing_status() {
    let addr = drop_every_other_udp().to_string();
    let input = random_bytes(5, 500);
    let run = echod(
        &[
            "client",
            "--udp",
            "-s",
            "100",
            "--retries",
            "0",
            "-W",
            "200ms",
            &addr,
        ],
        Input::Bytes(&input),
    );
    assert_eq!(run.code(), 1, "stderr: {}", run.stderr);
    // Datagrams 2 and 4 of 5 get no answer.
    assert!(
        run.stderr
            .contains("datagram 2 (bytes 100..200 of the input) was lost"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("2 of 5 datagrams were lost and 0 came back wrong"),
        "{}",
        run.stderr
    );
    let expected: Vec<u8> = [&input[..100], &input[200..300], &input[400..]].concat();
    assert_eq!(run.stdout, expected);
}

/// Loss reports name datagrams by the --size boundaries: the tenth of
/// 1000 bytes holds bytes 9000..10000, whatever stdin's reads were (they
/// made it 8192..9192 when 8 KiB reads shaped the datagrams).
#[test]
fn udp_loss_names_the_size_boundaries() {
    let addr = drop_every_other_udp().to_string();
    let input = random_bytes(9, 12_000);
    let run = echod(
        &[
            "client",
            "--udp",
            "-s",
            "1000",
            "--retries",
            "0",
            "-W",
            "200ms",
            &addr,
        ],
        Input::Bytes(&input),
    );
    assert_eq!(run.code(), 1, "stderr: {}", run.stderr);
    for (n, range) in [(2, "1000..2000"), (10, "9000..10000"), (12, "11000..12000")] {
        assert!(
            run.stderr.contains(&format!(
                "datagram {n} (bytes {range} of the input) was lost"
            )),
            "{}",
            run.stderr
        );
    }
    assert!(
        run.stderr.contains("6 of 12 datagrams were lost"),
        "{}",
        run.stderr
    );
}

#[test]
fn udp_retries_recover_a_dropped_datagram() {
    let addr = drop_every_other_udp().to_string();
    let input = random_bytes(6, 300);
    let run = echod(
        &["client", "--udp", "-s", "100", "-W", "200ms", &addr],
        Input::Bytes(&input),
    );
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    assert_eq!(run.stdout, input);
    assert!(run.stderr.contains("were resent"), "{}", run.stderr);
}

#[test]
fn interactive_lines_are_echoed_until_q() {
    let server = InProcess::v4();
    let addr = server.tcp_addr().to_string();
    let run = echod(
        &["client", "-i", &addr],
        Input::Bytes(b"first line\nsecond\nQ\nnever sent\n"),
    );
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    let out = run.stdout_text();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("echo 11 bytes in "), "{out}");
    assert!(lines[0].ends_with(" ms: first line"), "{out}");
    assert!(lines[1].ends_with(" ms: second"), "{out}");
    assert!(!out.contains("never sent"));
}

#[test]
fn interactive_over_udp_and_quit() {
    let server = InProcess::v4();
    let addr = server.udp_addr().to_string();
    let run = echod(
        &["client", "-i", "--udp", &addr],
        Input::Bytes(b"ping\nquit\npong\n"),
    );
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    let out = run.stdout_text();
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.ends_with(" ms: ping\n"), "{out}");
}

#[test]
fn interactive_reports_a_damaged_line() {
    let addr = faulty_tcp(Fault::FlipByteAt(2)).to_string();
    let run = echod(&["client", "-i", &addr], Input::Bytes(b"hello\n"));
    assert_eq!(run.code(), 1, "stderr: {}", run.stderr);
    assert!(
        run.stderr.contains("line 1: mismatch: byte 2 differs"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_closed_stdout_is_a_normal_exit() {
    // `echod client … | head -c 10`: the reader goes away early.
    let server = InProcess::v4();
    let addr = server.tcp_addr().to_string();
    let file = TempFile::random("client-head", 4 * 1024 * 1024);
    let mut child = std::process::Command::new(ECHOD)
        .args(["client", &addr])
        .stdin(std::fs::File::open(&file.path).unwrap())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0; 10];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    drop(stdout);
    let status = crate::tools::wait_bounded(&mut child);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{status:?}, stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
