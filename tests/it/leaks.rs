//! No leaks: thousands of connections opened and closed, and a thousand
//! reset in the middle of an echo, leave the real binary with exactly the
//! descriptors it had before, while another client is echoed throughout.
//!
//! The server's descriptors are counted in `/proc/PID/fd`. A connection's
//! descriptor is closed when the server drops it, which happens a little
//! after the client's close reaches it, so the count is polled (bounded)
//! until it is back at the baseline.

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use socket2::SockRef;

use crate::util::{Binary, IO_TIMEOUT, connect, echo_tcp, random_bytes};

/// Connections opened and closed at once.
const CYCLES: usize = 5_000;

/// Connections reset (SO_LINGER 0, so `close` sends an RST) while the
/// server is echoing to them.
const RESETS: usize = 1_000;

/// Threads that share the resets, so the server sees them overlap.
const RESET_THREADS: usize = 4;

/// How long the server may take to close what its clients closed.
const SETTLE: Duration = Duration::from_secs(20);

/// The descriptors process `pid` has open, as `/proc` names their targets
/// (`socket:[123]`, `anon_inode:[eventpoll]`, ...), but for pipes: those
/// are the splice pool's, which keeps a few empty ones for reuse (pipes
/// have their own test in `splice.rs`).
fn descriptors(pid: u32) -> Vec<String> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd of the server is readable")
        .filter_map(|entry| {
            let link = fs::read_link(entry.ok()?.path()).ok()?;
            Some(link.display().to_string())
        })
        .filter(|target| !target.starts_with("pipe:"))
        .collect()
}

/// Waits, bounded by [`SETTLE`], for process `pid` to have `expected`
/// descriptors open, and fails with the list of them if it does not.
#[track_caller]
fn assert_descriptors_settle(pid: u32, expected: usize, after: &str) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let open = descriptors(pid);
        if open.len() == expected {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "after {after}, the server still has {} descriptors open, {expected} expected, \
                 {SETTLE:?} later; the first of them: {:?}",
                open.len(),
                &open[..open.len().min(20)]
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A client that keeps echoing on one connection until told to stop,
/// checking every byte: proof that the server serves others throughout.
struct Bystander {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(TcpStream, u64)>,
}

/// Rounds the bystander does at most, and for how long: bounds, not
/// targets; it is stopped long before either.
const BYSTANDER_ROUNDS: u64 = 1_000_000;
const BYSTANDER_TIME: Duration = Duration::from_secs(120);

impl Bystander {
    fn start(addr: SocketAddr) -> Bystander {
        let mut stream = connect(addr);
        let stop = Arc::new(AtomicBool::new(false));
        let told = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let started = Instant::now();
            let mut rounds = 0;
            while !told.load(Ordering::Relaxed)
                && rounds < BYSTANDER_ROUNDS
                && started.elapsed() < BYSTANDER_TIME
            {
                echo_round(&mut stream, rounds);
                rounds += 1;
                // Leave the CPU to the churn; a steady trickle is enough.
                thread::sleep(Duration::from_millis(1));
            }
            (stream, rounds)
        });
        Bystander { stop, thread }
    }

    /// Stops it; returns its connection, still open, and how many echoes
    /// it got.
    fn stop(self) -> (TcpStream, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("every echo came back intact")
    }
}

/// Sends a message of 1 to 2,000 bytes on `stream` and checks the echo.
#[track_caller]
fn echo_round(stream: &mut TcpStream, round: u64) {
    let message = random_bytes(round, 1 + (round as usize * 131) % 2_000);
    stream.write_all(&message).expect("sends a message");
    let mut back = vec![0; message.len()];
    stream.read_exact(&mut back).expect("reads its echo");
    assert!(back == message, "round {round}: the echo differs");
}

/// Connects, sends `payload`, and resets the connection while the server
/// is still echoing it: right away, after the first byte of echo, or after
/// half of it, by `style`.
fn reset_mid_transfer(addr: SocketAddr, payload: &[u8], style: usize) {
    let mut stream = connect(addr);
    stream.write_all(payload).expect("sends the payload");
    let wait_for = match style % 3 {
        0 => 0,
        1 => 1,
        _ => payload.len() / 2,
    };
    let mut echo = vec![0; wait_for];
    stream
        .read_exact(&mut echo)
        .expect("reads part of the echo");
    assert!(echo == payload[..wait_for], "the partial echo differs");
    // Linger 0: `close` discards what is unsent or unread and sends an RST,
    // so the server's next read or write fails with ECONNRESET or EPIPE.
    SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .expect("sets SO_LINGER");
    drop(stream);
}

#[test]
fn connections_closed_or_reset_leave_no_descriptor_behind() {
    let server = Binary::start(&["--port", "0", "-b", "127.0.0.1", "--no-udp"]);
    let addr = server.tcp.expect("serves TCP");
    let pid = server.child.id();

    // One full echo first, so whatever the server sets up on its first
    // connection is in the baseline.
    assert_eq!(echo_tcp(addr, b"warm up"), b"warm up");
    let baseline = descriptors(pid).len();

    let bystander = Bystander::start(addr);

    for _ in 0..CYCLES {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connects");
        drop(stream);
    }
    // The bystander's connection is the one more.
    assert_descriptors_settle(pid, baseline + 1, "5,000 connect/close cycles");

    let resetters: Vec<_> = (0..RESET_THREADS)
        .map(|t| {
            thread::spawn(move || {
                for i in (t..RESETS).step_by(RESET_THREADS) {
                    let payload = random_bytes(i as u64, 4_096 + (i * 997) % 45_000);
                    reset_mid_transfer(addr, &payload, i);
                }
            })
        })
        .collect();
    for resetter in resetters {
        resetter
            .join()
            .expect("every reset connection was echoed up to its reset");
    }

    let (mut stream, rounds) = bystander.stop();
    assert!(rounds > 0, "the bystander was never echoed");
    // Still served after all that, then closed cleanly.
    echo_round(&mut stream, rounds);
    stream.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .expect("the server closes after EOF");
    assert!(rest.is_empty(), "nothing but EOF after the last echo");
    drop(stream);

    let payload = random_bytes(7, 100_000);
    assert!(
        echo_tcp(addr, &payload) == payload,
        "a fresh client is echoed exactly"
    );
    assert_descriptors_settle(pid, baseline, "1,000 resets mid-transfer");
}
