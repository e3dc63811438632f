//! Helpers shared by the integration tests: servers on free loopback ports
//! (in-process and the real binary), bounded reads and waits.
//!
//! Every wait here is bounded: a hung server fails the test, it does not
//! hang it.

#![allow(dead_code)] // each topic module uses a different subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use echod_server::server::{GuardConfig, Outcome, Server, ServerConfig, StopHandle};

/// Held by the tests that bind UDP ports 7 and 19: the `udp_guard` tests
/// on 127.0.0.1, and check's udp-loop-guard on the wildcard address. Run
/// at the same time, they would take the ports from each other.
static LOW_PORTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Waits for [`LOW_PORTS`]. A test that failed holding it leaves nothing
/// to clean up, so a poisoned lock is taken all the same.
pub fn low_ports() -> std::sync::MutexGuard<'static, ()> {
    LOW_PORTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How long any single network wait in a test may take before the test
/// fails. Generous: a loaded CI machine is slow, but never this slow.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// Path of the built `echod` binary.
pub const ECHOD: &str = env!("CARGO_BIN_EXE_echod");

/// A server running in this process on a thread; stopped on drop.
pub struct InProcess {
    pub tcp: Vec<SocketAddr>,
    pub udp: Vec<SocketAddr>,
    stop: StopHandle,
    thread: Option<JoinHandle<std::io::Result<Outcome>>>,
}

impl InProcess {
    /// Starts a server with `config` (use port 0).
    #[track_caller]
    pub fn start(config: ServerConfig) -> InProcess {
        let server = Server::bind(&config).expect("server binds");
        let tcp = server.tcp_addrs();
        let udp = server.udp_addrs();
        let stop = server.stop_handle();
        let thread = Some(thread::spawn(move || server.run()));
        InProcess {
            tcp,
            udp,
            stop,
            thread,
        }
    }

    /// Loopback IPv4, TCP and UDP, default buffer.
    pub fn v4() -> InProcess {
        InProcess::start(ServerConfig::default())
    }

    /// Loopback IPv4 with the UDP rate limit off: for load tests, which
    /// send far more than one source may by default.
    pub fn for_load() -> InProcess {
        InProcess::start(ServerConfig {
            udp_guard: no_udp_rate_limit(),
            ..ServerConfig::default()
        })
    }

    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp[0]
    }

    pub fn udp_addr(&self) -> SocketAddr {
        self.udp[0]
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(thread) = self.thread.take() {
            let result = thread.join().expect("server thread does not panic");
            if !thread::panicking() {
                result.expect("server loop ends without error");
            }
        }
    }
}

/// The real binary, started with `args`; killed on drop.
pub struct Binary {
    pub child: Child,
    /// The "listening on tcp …" address, if TCP is served.
    pub tcp: Option<SocketAddr>,
    /// The "listening on udp …" address, if UDP is served.
    pub udp: Option<SocketAddr>,
    /// Lines of stderr up to and including the listening lines.
    pub startup: Vec<String>,
    /// Lines of stderr after the listening lines, as they come.
    pub log: mpsc::Receiver<String>,
}

impl Binary {
    /// Starts `echod ARGS` and waits (bounded) for its listening lines.
    /// Pass `--port 0` and a loopback `-b` in `args`.
    #[track_caller]
    pub fn start(args: &[&str]) -> Binary {
        Binary::start_with(Command::new(ECHOD).args(args))
    }

    /// Like [`Binary::start`], for a command set up by the caller.
    #[track_caller]
    pub fn start_with(command: &mut Command) -> Binary {
        Binary::start_with_stdio(command, Stdio::null(), Stdio::null())
    }

    /// Like [`Binary::start_with`], with the given standard input and
    /// output: a way to hand the child a socket, which `sh` can then move
    /// to the descriptor socket activation expects.
    #[track_caller]
    pub fn start_with_stdio(command: &mut Command, stdin: Stdio, stdout: Stdio) -> Binary {
        let mut child = command
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .expect("echod starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = forward_lines(stderr);
        let mut binary = Binary {
            child,
            tcp: None,
            udp: None,
            startup: Vec::new(),
            log,
        };
        let deadline = Instant::now() + IO_TIMEOUT;
        let expect_tcp = !command.get_args().any(|a| a == "--no-tcp");
        let expect_udp = !command.get_args().any(|a| a == "--no-udp");
        while (expect_tcp && binary.tcp.is_none()) || (expect_udp && binary.udp.is_none()) {
            let line = binary.next_line_before(deadline).unwrap_or_else(|| {
                panic!(
                    "echod did not say it was listening; exit: {:?}",
                    binary.child.try_wait()
                )
            });
            if let Some(addr) = line.split("listening on tcp ").nth(1) {
                binary.tcp = Some(addr.trim().parse().expect("a socket address"));
            }
            if let Some(addr) = line.split("listening on udp ").nth(1) {
                binary.udp = Some(addr.trim().parse().expect("a socket address"));
            }
            binary.startup.push(line);
        }
        binary
    }

    /// The next stderr line, if one comes before `deadline`.
    pub fn next_line_before(&self, deadline: Instant) -> Option<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.log.recv_timeout(left).ok()
    }

    /// Waits (bounded) for a stderr line containing `needle`; returns it.
    #[track_caller]
    pub fn wait_for_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            match self.next_line_before(deadline) {
                Some(line) if line.contains(needle) => return line,
                Some(_) => {}
                None => panic!("echod never logged a line containing {needle:?}"),
            }
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends each stderr line to a channel from a thread, so reads can be
/// bounded in time.
pub fn forward_lines(stderr: ChildStderr) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Connects with read and write timeouts set.
#[track_caller]
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connects");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

/// Sends `payload`, shuts down the write side, reads until EOF and returns
/// what came back. Writes and reads run at the same time (a thread writes)
/// so payloads larger than the socket buffers cannot deadlock.
#[track_caller]
pub fn echo_tcp(addr: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut stream = connect(addr);
    let sender = send_then_shut(&stream, payload.to_vec());
    let mut back = Vec::with_capacity(payload.len());
    stream
        .read_to_end(&mut back)
        .expect("reads the echo to EOF");
    sender.join().unwrap().expect("sends the payload");
    back
}

/// Sends `payload` on `stream` from another thread, then shuts down the
/// write side, so the caller can read the echo meanwhile.
#[track_caller]
pub fn send_then_shut(stream: &TcpStream, payload: Vec<u8>) -> JoinHandle<std::io::Result<()>> {
    let mut writer = stream.try_clone().unwrap();
    thread::spawn(move || {
        writer.write_all(&payload)?;
        writer.shutdown(Shutdown::Write)
    })
}

/// A UDP socket bound to the loopback address of `server`'s family, with a
/// read timeout.
#[track_caller]
pub fn udp_socket_for(server: SocketAddr) -> UdpSocket {
    let local: SocketAddr = if server.is_ipv6() {
        "[::1]:0".parse().unwrap()
    } else {
        "127.0.0.1:0".parse().unwrap()
    };
    let socket = UdpSocket::bind(local).unwrap();
    socket.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    socket
}

/// Deterministic pseudo-random bytes (xorshift), so a failure reproduces.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// A free TCP port on 127.0.0.1 at the moment of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Set by `.ci/run`: there, every tool and privilege a test needs is
/// installed, so a test that would skip fails instead.
pub const STRICT: &str = "ECHOD_TEST_STRICT";

/// Says why a test cannot run here and returns, so the caller can `return`
/// at once; under [`STRICT`] (CI) a skip is a failure, so a missing tool can
/// never turn into a silent pass there.
#[track_caller]
pub fn skip(reason: &str) {
    if std::env::var_os(STRICT).is_some_and(|v| v != "0") {
        panic!("this test cannot run here ({reason}), and {STRICT} is set, so that is a failure");
    }
    eprintln!("skipped: {reason}");
}

/// True if `program` can be run; if not, the test is skipped with `why`
/// (which says how to install it), which fails under [`STRICT`].
#[track_caller]
pub fn need(program: &str, install: &str) -> bool {
    if have(program) {
        return true;
    }
    skip(&format!("{program} is not installed ({install})"));
    false
}

/// True if `program` can be run (for interop tests with nc and socat).
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// UDP guard settings with the per-source rate limit off.
pub fn no_udp_rate_limit() -> GuardConfig {
    GuardConfig {
        rate: 0,
        ..GuardConfig::default()
    }
}

/// Waits for `child` to exit, at most `bound`; kills it and fails the test
/// after that, so a hung process cannot hang the suite.
#[track_caller]
pub fn wait_bounded(child: &mut Child, bound: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(status) = child.try_wait().expect("the child can be waited for") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the process did not finish within {bound:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A new pseudo-terminal: its master side (what a terminal window reads
/// and writes) and its slave side (what a program run "on the terminal"
/// gets as its stdio). Both close-on-exec from the start, so that no child
/// spawned meanwhile by another test keeps the terminal open.
#[cfg(target_os = "linux")]
pub fn pseudo_terminal() -> (nix::pty::PtyMaster, std::fs::File) {
    use nix::fcntl::OFlag;
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    use std::os::unix::fs::OpenOptionsExt;

    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(ptsname_r(&master).unwrap())
        .unwrap();
    (master, slave)
}
