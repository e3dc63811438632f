//! Helpers for the tool tests (client, ping, bench): running a tool as the
//! built binary with bounded waits, and small misbehaving echo servers on
//! 127.0.0.1:0 that the tools must catch.
//!
//! Every server here runs on a thread with timeouts on its sockets and a
//! deadline on its accept loop, so a tool that hangs fails the test
//! instead of hanging it.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::{ECHOD, IO_TIMEOUT};

/// What a tool run left behind.
pub struct Run {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The exit code; panics (with stderr) if killed by a signal.
    #[track_caller]
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("killed by a signal; stderr: {}", self.stderr))
    }
}

/// Where a tool's stdin comes from.
pub enum Input<'a> {
    Bytes(&'a [u8]),
    File(&'a std::path::Path),
}

/// Runs `echod ARGS` with `input` on stdin; waits (bounded) for it to end.
#[track_caller]
pub fn echod(args: &[&str], input: Input) -> Run {
    let mut command = Command::new(ECHOD);
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let bytes = match input {
        Input::Bytes(bytes) => {
            command.stdin(Stdio::piped());
            Some(bytes.to_vec())
        }
        Input::File(path) => {
            command.stdin(File::open(path).expect("input file opens"));
            None
        }
    };
    let mut child = command.spawn().expect("echod starts");
    let writer = bytes.map(|bytes| {
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // A tool that stops early closes its stdin: not our failure here.
        thread::spawn(move || {
            let _ = stdin.write_all(&bytes);
        })
    });
    let run = collect(child, 3 * IO_TIMEOUT);
    if let Some(writer) = writer {
        writer.join().unwrap();
    }
    run
}

/// Waits for `child` at most `bound` (killing it and failing the test
/// after that) and collects what it printed to its piped stdout and
/// stderr.
#[track_caller]
pub fn collect(mut child: Child, bound: Duration) -> Run {
    // Readers on their own threads, so a full pipe cannot block the child.
    let mut out = child.stdout.take().expect("stdout is piped");
    let mut err = child.stderr.take().expect("stderr is piped");
    let out_reader = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = crate::util::wait_bounded(&mut child, bound);
    Run {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

/// Waits for a tool at most a generous bound; kills it and fails after.
#[track_caller]
pub fn wait_bounded(child: &mut std::process::Child) -> ExitStatus {
    crate::util::wait_bounded(child, 3 * IO_TIMEOUT)
}

/// A file of `len` deterministic random bytes in the temp directory,
/// removed on drop.
pub struct TempFile {
    pub path: std::path::PathBuf,
}

impl TempFile {
    pub fn random(name: &str, len: usize) -> TempFile {
        let path = std::env::temp_dir().join(format!("echod-{}-{name}", std::process::id()));
        std::fs::write(&path, crate::util::random_bytes(len as u64, len)).unwrap();
        TempFile { path }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// How a fake TCP server misbehaves.
#[derive(Clone, Copy)]
pub enum Fault {
    /// Echoes everything, with the byte at this offset of each connection
    /// XORed with 0x20.
    FlipByteAt(u64),
    /// Reads everything the client sends, echoes only its first `n`
    /// bytes, then closes.
    EchoOnly(u64),
    /// Echoes the first `n` bytes, then closes at once with input still
    /// unread, so the kernel resets the connection.
    CloseAfter(u64),
    /// Echoes only whole lines, as a server built on `readline` does:
    /// bytes after the last newline wait for the next.
    LineBuffered,
}

/// A TCP echo server on 127.0.0.1:0 with a fault, serving connections for
/// a bounded time. Returns its address.
pub fn faulty_tcp(fault: Fault) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    thread::spawn(move || {
        let deadline = Instant::now() + 2 * IO_TIMEOUT;
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((conn, _)) => {
                    thread::spawn(move || serve_faulty(conn, fault));
                }
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    addr
}

fn serve_faulty(mut conn: TcpStream, fault: Fault) {
    if let Fault::LineBuffered = fault {
        return echo_lines(conn);
    }
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    conn.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut buf = vec![0; 64 * 1024];
    let mut offset = 0u64;
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &mut buf[..n];
        let end = offset + n as u64;
        let echo: &[u8] = match fault {
            Fault::FlipByteAt(at) => {
                if (offset..end).contains(&at) {
                    chunk[(at - offset) as usize] ^= 0x20;
                }
                chunk
            }
            Fault::EchoOnly(limit) | Fault::CloseAfter(limit) => {
                let keep = limit.saturating_sub(offset).min(n as u64) as usize;
                &chunk[..keep]
            }
            // Served by `echo_lines` above.
            Fault::LineBuffered => chunk,
        };
        if conn.write_all(echo).is_err() {
            break;
        }
        if let Fault::CloseAfter(limit) = fault
            && end >= limit
        {
            return; // dropping `conn` with unread input sends an RST
        }
        offset = end;
    }
    // Dropping `conn` closes it: after EOF for EchoOnly, so the client
    // sees a clean close with bytes missing.
}

/// A UDP echo server on 127.0.0.1:0 that answers only every other
/// datagram (the 1st, 3rd, 5th…), for a bounded time. Returns its address.
pub fn drop_every_other_udp() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    thread::spawn(move || {
        let deadline = Instant::now() + 2 * IO_TIMEOUT;
        let mut buf = vec![0; 65_536];
        let mut count = 0u64;
        while Instant::now() < deadline {
            let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                continue;
            };
            count += 1;
            if count % 2 == 1 {
                let _ = socket.send_to(&buf[..n], peer);
            }
        }
    });
    addr
}

fn echo_lines(mut conn: TcpStream) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let (mut held, mut buf) = (Vec::new(), [0u8; 4096]);
    while let Ok(n @ 1..) = conn.read(&mut buf) {
        held.extend_from_slice(&buf[..n]);
        if let Some(end) = held.iter().rposition(|&b| b == b'\n') {
            let line: Vec<u8> = held.drain(..=end).collect();
            if conn.write_all(&line).is_err() {
                break;
            }
        }
    }
}
