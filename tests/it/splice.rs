//! Bulk connections echoed through a pipe with `splice(2)` (Linux), over
//! real TCP: every byte comes back in order, the pipe path is really taken
//! (the stats line on SIGUSR1 counts bytes spliced), a FIN behind a bulk
//! payload comes after every byte, more bulk connections than pipes are
//! echoed as exactly, and resets leave no pipe behind. The moments these
//! cannot force on loopback TCP (EOF with bytes in the pipe, an empty
//! pool) are forced in the unit tests over a socket pair
//! (`server/src/server/connection/splice_tests.rs`).

#![cfg(target_os = "linux")]

use std::io::{Read, Write};
use std::net::Shutdown;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use echod_server::server::{MAX_PIPES, SPARE_PIPES};
use socket2::SockRef;

use crate::util::{Binary, IO_TIMEOUT, connect, echo_tcp, random_bytes, send_then_shut};

/// A server binary on `addr`'s loopback, TCP only, with `extra` options.
fn server(bind: &str, extra: &[&str]) -> Binary {
    let mut args = vec!["-p", "0", "-b", bind, "--no-udp"];
    args.extend_from_slice(extra);
    Binary::start(&args)
}

/// The counters line the server logs on SIGUSR1.
#[track_caller]
fn stats_line(server: &Binary) -> String {
    let status = Command::new("kill")
        .arg("-USR1")
        .arg(server.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -USR1 failed");
    server.wait_for_line("tcp: accepted")
}

/// From the counters the server logs on SIGUSR1: bytes spliced, and times
/// a bulk connection found no pipe.
#[track_caller]
fn splice_counters(server: &Binary) -> (u64, u64) {
    let line = stats_line(server);
    let number_after = |label: &str| -> u64 {
        let rest = line
            .split(label)
            .nth(1)
            .unwrap_or_else(|| panic!("no {label:?} in {line}"));
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits
            .parse()
            .unwrap_or_else(|_| panic!("{label:?} in {line}"))
    };
    (number_after("spliced "), number_after("no pipe "))
}

/// The descriptors of process `pid` that are pipes, and those that are not.
fn pipes_and_others(pid: u32) -> (usize, usize) {
    let mut pipes = 0;
    let mut others = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let Ok(entry) = entry else { continue };
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if target.to_string_lossy().starts_with("pipe:") {
            pipes += 1;
        } else {
            others += 1;
        }
    }
    (pipes, others)
}

#[track_caller]
fn stream_is_spliced_byte_for_byte(bind: &str) {
    let server = server(bind, &[]);
    let addr = server.tcp.unwrap();
    let payload = random_bytes(64, 64 << 20);
    let back = echo_tcp(addr, &payload);
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "the 64 MiB echo differs");
    let (spliced, _) = splice_counters(&server);
    // The stats line was read by `splice_counters`; ask again for bytes.
    let line = stats_line(&server);
    let n = payload.len();
    assert!(line.contains(&format!("bytes in {n}, out {n} (")), "{line}");
    assert!(
        spliced >= (payload.len() / 2) as u64,
        "only {spliced} of {} bytes went through a pipe",
        payload.len()
    );
}

#[test]
fn a_stream_is_spliced_and_comes_back_byte_for_byte_ipv4() {
    stream_is_spliced_byte_for_byte("127.0.0.1");
}

#[test]
fn a_stream_is_spliced_and_comes_back_byte_for_byte_ipv6() {
    stream_is_spliced_byte_for_byte("::1");
}

/// The client sends a bulk payload and its FIN before it reads anything,
/// so the FIN reaches the server while the pipe is busy with the last
/// bytes. Every byte must come back, then the FIN. (Whether the pipe still
/// holds bytes at that moment is up to the kernel's buffers here; the unit
/// test `eof_with_bytes_in_the_pipe_flushes_them_then_closes` forces it
/// over a socket pair.)
#[test]
fn a_fin_behind_a_bulk_payload_gets_every_byte_back_then_fin() {
    let server = server("127.0.0.1", &[]);
    let addr = server.tcp.unwrap();
    let payload = random_bytes(3, 1 << 20);
    let mut stream = connect(addr);
    let sender = send_then_shut(&stream, payload.clone());
    // Read only once everything is sent (or the sender is stuck, which
    // the write timeout turns into a failure, not a hang).
    sender
        .join()
        .unwrap()
        .expect("the payload and the FIN fit in the buffers on the way");
    let mut back = Vec::new();
    stream
        .read_to_end(&mut back)
        .expect("the server closes after the echo");
    assert!(back == payload, "the echo differs or is cut short");
    let (spliced, _) = splice_counters(&server);
    assert!(spliced > 0, "no byte went through a pipe");
}

/// More bulk connections at once than the pool has pipes: those without
/// one are echoed by copying, just as exactly. (How many find the pool
/// empty depends on timing here; the unit test
/// `with_every_pipe_in_use_a_bulk_connection_copies` forces it.)
#[test]
fn more_bulk_connections_than_pipes_all_echo() {
    let server = server("127.0.0.1", &[]);
    let addr = server.tcp.unwrap();
    let clients = MAX_PIPES + 16;
    // Everyone sends before anyone reads, so that every connection has
    // bytes pending at the server at the same time.
    let ready = Arc::new(Barrier::new(clients));
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let ready = Arc::clone(&ready);
            thread::spawn(move || {
                let payload = random_bytes(i as u64, 2 << 20);
                let mut stream = connect(addr);
                let sender = send_then_shut(&stream, payload.clone());
                let mut first = vec![0; 1];
                stream.read_exact(&mut first).expect("the echo starts");
                ready.wait();
                let mut back = first;
                stream.read_to_end(&mut back).expect("reads the echo");
                sender.join().unwrap().expect("sends the payload");
                back == payload
            })
        })
        .collect();
    for (i, thread) in threads.into_iter().enumerate() {
        assert!(thread.join().unwrap(), "connection {i}: the echo differs");
    }
    let (spliced, _) = splice_counters(&server);
    assert!(spliced > 0, "no connection was spliced");
}

/// Connections reset while their bytes sit in a pipe: the pipes are closed
/// (never pooled with stale bytes in them), and a later stream gets exactly
/// its own bytes back.
#[test]
fn resets_mid_stream_leave_no_pipe_behind() {
    let server = server("127.0.0.1", &[]);
    let addr = server.tcp.unwrap();
    let pid = server.child.id();
    assert_eq!(echo_tcp(addr, b"warm up"), b"warm up");
    let (_, baseline) = pipes_and_others(pid);

    // Each client sends without reading until its sends stall: the server
    // then has bytes in the pipe it cannot send. Twice as many as the pool
    // keeps, so leaked pipes would show.
    let payload = Arc::new(random_bytes(1, 16 << 20));
    for _ in 0..2 * SPARE_PIPES {
        let stream = connect(addr);
        let mut writer = stream.try_clone().unwrap();
        writer
            .set_write_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let sent = Arc::clone(&payload);
        // Ends when a send stalls for the timeout (or, unlikely, all fit).
        thread::spawn(move || {
            let _ = writer.write_all(&sent);
        })
        .join()
        .unwrap();
        // Linger 0: the close sends an RST, with unread bytes on both sides.
        SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(stream);
    }

    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let (pipes, others) = pipes_and_others(pid);
        if others == baseline && pipes <= 2 * SPARE_PIPES {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the resets the server holds {pipes} pipe descriptors (at most {} \
             expected) and {others} others ({baseline} before)",
            2 * SPARE_PIPES
        );
        thread::sleep(Duration::from_millis(20));
    }

    let payload = random_bytes(99, 16 << 20);
    assert!(
        echo_tcp(addr, &payload) == payload,
        "a stream after the resets gets exactly its own bytes"
    );
    let (spliced, _) = splice_counters(&server);
    assert!(spliced > 0, "no pipe was used");
}

/// A byte of TCP urgent data (sent with `MSG_OOB`, as telnet does on an
/// interrupt) in the middle of a bulk stream: `splice` stops at it, a read
/// steps over it. The rest of the stream must still come back, then the
/// FIN, rather than wait unread for an edge that never comes. The urgent
/// byte is echoed in its place (the listener sets `SO_OOBINLINE`; see
/// `faults::urgent` for more). (That the server is
/// splicing when the byte arrives is up to timing here, though nearly
/// certain with this much bulk before it; the unit test
/// `urgent_data_does_not_stall_a_spliced_stream` forces it.)
#[test]
fn urgent_data_in_a_bulk_stream_does_not_stall_it() {
    let server = server("127.0.0.1", &[]);
    let addr = server.tcp.unwrap();
    let before = random_bytes(20, 4 << 20);
    let after = random_bytes(21, 5_000);
    let mut stream = connect(addr);
    let mut writer = stream.try_clone().unwrap();
    let (sent_before, sent_after) = (before.clone(), after.clone());
    let sender = thread::spawn(move || {
        writer.write_all(&sent_before)?;
        SockRef::from(&writer).send_out_of_band(b"!")?;
        writer.write_all(&sent_after)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut back = Vec::new();
    let read = stream.read_to_end(&mut back);
    sender.join().unwrap().expect("sends the stream");
    read.expect("the echo ends with the server's FIN");
    assert!(
        back == [&before[..], b"!", &after].concat(),
        "the echo differs"
    );
}

/// `--no-splice`: the copying path alone, just as exact.
#[test]
fn no_splice_still_echoes_and_splices_nothing() {
    let server = server("127.0.0.1", &["--no-splice"]);
    let addr = server.tcp.unwrap();
    let payload = random_bytes(5, 16 << 20);
    assert!(echo_tcp(addr, &payload) == payload, "the echo differs");
    assert_eq!(splice_counters(&server), (0, 0));
}
