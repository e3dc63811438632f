//! Small echo servers with one defect each, for `echod check` to find.
//!
//! Each runs on threads over blocking std sockets on 127.0.0.1, port 0,
//! and stops when dropped: the accept loop polls a stop flag every few
//! milliseconds, and every handler has socket timeouts, so no thread
//! outlives a test by more than [`HANDLER_TIMEOUT`].

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The longest a handler waits on a socket.
pub const HANDLER_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the accept loop looks at the stop flag.
const POLL: Duration = Duration::from_millis(2);

/// A broken server; stops on drop.
pub struct Broken {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Drop for Broken {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// How a TCP server hands out connections.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Serve {
    /// A thread per connection.
    Threads,
    /// One connection at a time, on the accept thread.
    OneAtATime,
    /// A pool of this many threads, each serving one connection at a
    /// time; the others wait, accepted, until a thread is free.
    Pool(usize),
}

/// A TCP server running `handle` for each connection. A handler may set
/// the stop flag to take the whole server down.
pub fn tcp(serve: Serve, handle: fn(TcpStream, &AtomicBool)) -> Broken {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let pool = match serve {
        Serve::Pool(threads) => Some(pool(threads, handle, &stop)),
        _ => None,
    };
    thread::spawn(move || {
        while !flag.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).unwrap();
                    stream.set_read_timeout(Some(HANDLER_TIMEOUT)).unwrap();
                    stream.set_write_timeout(Some(HANDLER_TIMEOUT)).unwrap();
                    match serve {
                        Serve::OneAtATime => handle(stream, &flag),
                        Serve::Pool(_) => {
                            if let Some(pool) = &pool {
                                let _ = pool.send(stream);
                            }
                        }
                        Serve::Threads => {
                            let flag = Arc::clone(&flag);
                            thread::spawn(move || handle(stream, &flag));
                        }
                    }
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => thread::sleep(POLL),
                Err(_) => thread::sleep(POLL),
            }
        }
        // Dropping the listener here refuses new connections.
    });
    Broken { addr, stop }
}

/// A thread-per-connection echo listening with a backlog of 1 and
/// accepting one connection every [`SLOW_ACCEPT`], as a busy event loop
/// does: clients arriving together overflow its accept queue.
pub fn small_backlog() -> Broken {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&bind.into()).unwrap();
    socket.listen(1).unwrap();
    let listener: TcpListener = socket.into();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    thread::spawn(move || {
        while !flag.load(Ordering::SeqCst) {
            if let Ok((stream, _)) = listener.accept() {
                stream.set_nonblocking(false).unwrap();
                stream.set_read_timeout(Some(HANDLER_TIMEOUT)).unwrap();
                stream.set_write_timeout(Some(HANDLER_TIMEOUT)).unwrap();
                let flag = Arc::clone(&flag);
                thread::spawn(move || plain_echo(stream, &flag));
            }
            thread::sleep(SLOW_ACCEPT);
        }
    });
    Broken { addr, stop }
}

/// How often [`small_backlog`] accepts.
const SLOW_ACCEPT: Duration = Duration::from_millis(20);

/// `threads` threads taking accepted connections from the channel
/// returned, each running `handle` on one at a time. They end when the
/// server stops (the channel's sender is dropped with the accept loop)
/// or the stop flag is set.
fn pool(
    threads: usize,
    handle: fn(TcpStream, &AtomicBool),
    stop: &Arc<AtomicBool>,
) -> mpsc::Sender<TcpStream> {
    let (tx, rx) = mpsc::channel::<TcpStream>();
    let rx = Arc::new(std::sync::Mutex::new(rx));
    for _ in 0..threads {
        let rx = Arc::clone(&rx);
        let flag = Arc::clone(stop);
        thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                let next = rx
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .recv_timeout(POLL * 5);
                match next {
                    Ok(stream) => handle(stream, &flag),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
        });
    }
    tx
}

/// A UDP server calling `handle` for each datagram, until dropped.
pub fn udp(handle: impl FnMut(&UdpSocket, &[u8], SocketAddr) + Send + 'static) -> Broken {
    udp_on("127.0.0.1:0", handle)
}

/// [`udp`] on the IPv4 wildcard address, as many servers listen: `addr`
/// is then 0.0.0.0 and its port (check it at 127.0.0.1).
pub fn udp_on_wildcard(
    handle: impl FnMut(&UdpSocket, &[u8], SocketAddr) + Send + 'static,
) -> Broken {
    udp_on("0.0.0.0:0", handle)
}

fn udp_on(
    bind: &str,
    mut handle: impl FnMut(&UdpSocket, &[u8], SocketAddr) + Send + 'static,
) -> Broken {
    let socket = UdpSocket::bind(bind).unwrap();
    let addr = socket.local_addr().unwrap();
    socket.set_read_timeout(Some(POLL * 5)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    thread::spawn(move || {
        let mut buf = vec![0; 65_536];
        while !flag.load(Ordering::SeqCst) {
            if let Ok((n, peer)) = socket.recv_from(&mut buf) {
                handle(&socket, &buf[..n], peer);
            }
        }
    });
    Broken { addr, stop }
}

/// A plain, correct echo loop; the defects are in what the handlers do
/// around it.
fn echo_until_eof(mut stream: &TcpStream) -> std::io::Result<()> {
    let mut buf = [0; 16 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n])?;
    }
}

/// Echoes only whole lines (and the last partial line at EOF), like a
/// server built on `for line in reader.lines()`.
pub fn line_buffering(stream: TcpStream, _: &AtomicBool) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = Vec::new();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if writer.write_all(&line).is_err() || !line.ends_with(b"\n") {
                    break;
                }
            }
        }
    }
    let _ = writer.shutdown(Shutdown::Write);
}

/// Changes every `a` to `b` and writes only in blocks of 4 KiB (and the
/// rest at EOF), as `tr a b` behind a pipe does with stdio's buffering.
pub fn block_buffered_tr(mut stream: TcpStream, _: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(HANDLER_TIMEOUT));
    let mut writer = stream.try_clone().unwrap();
    let mut held = Vec::new();
    let mut buf = [0; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                held.extend(buf[..n].iter().map(|&b| if b == b'a' { b'b' } else { b }));
                while held.len() >= 4096 {
                    if writer.write_all(&held[..4096]).is_err() {
                        return;
                    }
                    held.drain(..4096);
                }
            }
        }
    }
    let _ = writer.write_all(&held);
    let _ = writer.shutdown(Shutdown::Write);
}

/// Reads on one thread and writes on another, and closes the connection
/// as soon as the reader sees EOF: whatever the writer still holds is lost.
/// A small send buffer, so that most of the echo waits in the writer's
/// queue rather than in the kernel.
pub fn close_on_eof_without_flush(stream: TcpStream, stop: &AtomicBool) {
    socket2::SockRef::from(&stream)
        .set_send_buffer_size(16 * 1024)
        .unwrap();
    close_on_eof(stream, stop);
}

/// [`close_on_eof_without_flush`] with the kernel's own buffers, which
/// grow to MiBs: more of the echo is in the kernel when EOF comes (and
/// still delivered), less in the writer's queue.
pub fn close_on_eof_large_buffers(stream: TcpStream, stop: &AtomicBool) {
    close_on_eof(stream, stop);
}

fn close_on_eof(stream: TcpStream, _: &AtomicBool) {
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let mut writer = stream.try_clone().unwrap();
    thread::spawn(move || {
        for chunk in rx {
            if writer.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let mut reader = &stream;
    let mut buf = [0; 16 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(n) if n > 0 => {
                if tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
            // The defect: EOF (or an error) closes everything at once.
            _ => {
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

/// A nonblocking-style echo that holds at most [`ONE_SEND_HOLD`] bytes
/// (it stops reading while it holds that much, as an event loop with a
/// bounded buffer does), and on EOF makes one nonblocking send of what it
/// holds and closes. Against a client that reads at full speed when the
/// EOF comes, that one send takes everything and nothing is lost; against
/// one that is not reading (a slow link), the send buffer is full and what
/// is held is lost. Small socket buffers (8 KiB to send, 16 KiB to
/// receive) keep the bytes in flight few.
pub fn one_send_on_eof(stream: TcpStream, _: &AtomicBool) {
    let socket = socket2::SockRef::from(&stream);
    socket.set_send_buffer_size(8 * 1024).unwrap();
    // Reads wait at most this long, so that what is held is offered to the
    // socket again while the client sends nothing.
    stream.set_read_timeout(Some(POLL)).unwrap();
    stream.set_write_timeout(Some(POLL)).unwrap();
    let mut held: Vec<u8> = Vec::with_capacity(ONE_SEND_HOLD);
    let mut buf = [0; ONE_SEND_HOLD];
    let until = Instant::now() + HANDLER_TIMEOUT;
    while Instant::now() < until {
        let room = ONE_SEND_HOLD - held.len();
        let read = if room == 0 {
            // Full: wait (a little) until the socket takes some, as an
            // event loop waits for writability.
            if let Ok(k) = (&stream).write(&held) {
                held.drain(..k);
            }
            Err(ErrorKind::WouldBlock.into())
        } else {
            (&stream).read(&mut buf[..room])
        };
        if let Ok(n) = read {
            held.extend_from_slice(&buf[..n]);
        }
        // One nonblocking send of what it holds, after each read (or wait)
        // and at EOF.
        if let Ok(k) = socket.send_with_flags(&held, libc::MSG_DONTWAIT) {
            held.drain(..k);
        }
        match read {
            // The defect: at EOF, close now, whatever is still held.
            Ok(0) => return,
            Ok(_) => {}
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// What [`one_send_on_eof`] holds at most.
const ONE_SEND_HOLD: usize = 16 * 1024;

/// Serves its first ten connections at once and every later one only
/// after [`LATE`]: the symptom clients see when a listen backlog
/// overflowed after their connect had already returned (the server's
/// kernel dropped their handshake's last packet and the data behind it,
/// and takes them in when those are sent again). One test uses it: the
/// count is for the whole process.
pub fn late_beyond_ten(stream: TcpStream, stop: &AtomicBool) {
    static CONNECTIONS: AtomicUsize = AtomicUsize::new(0);
    if CONNECTIONS.fetch_add(1, Ordering::SeqCst) >= 10 {
        thread::sleep(LATE);
    }
    plain_echo(stream, stop);
}

/// How late [`late_beyond_ten`] serves.
const LATE: Duration = Duration::from_millis(1500);

/// A correct echo, served one connection at a time.
/// Echoes its first connection, and replies nothing on any later one:
/// a server that stopped echoing part way through the run.
pub fn echoes_only_the_first(stream: TcpStream, stop: &AtomicBool) {
    static CONNECTIONS: AtomicUsize = AtomicUsize::new(0);
    if CONNECTIONS.fetch_add(1, Ordering::SeqCst) == 0 {
        plain_echo(stream, stop);
    } else {
        never_replying(stream, stop);
    }
}

pub fn plain_echo(stream: TcpStream, _: &AtomicBool) {
    let _ = echo_until_eof(&stream);
    let _ = stream.shutdown(Shutdown::Write);
}

/// Reads and discards everything, replying nothing (an RFC 863 discard
/// server, or a hung one).
pub fn never_replying(mut stream: TcpStream, _: &AtomicBool) {
    let mut buf = [0; 64 * 1024];
    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
}

/// Accepts and then does nothing at all: reads nothing, sends nothing,
/// closes nothing, until the server stops or [`HANDLER_TIMEOUT`] passes
/// (a server hung on something else).
pub fn hung(_stream: TcpStream, stop: &AtomicBool) {
    let until = Instant::now() + HANDLER_TIMEOUT;
    while !stop.load(Ordering::SeqCst) && Instant::now() < until {
        thread::sleep(POLL * 5);
    }
}

/// Echoes, but never closes its side after the client's EOF; it keeps
/// the connection until the server stops or [`HANDLER_TIMEOUT`] passes.
pub fn ignores_half_close(stream: TcpStream, stop: &AtomicBool) {
    if echo_until_eof(&stream).is_err() {
        return;
    }
    let until = Instant::now() + HANDLER_TIMEOUT;
    while !stop.load(Ordering::SeqCst) && Instant::now() < until {
        thread::sleep(POLL * 5);
    }
}

/// Echoes, and takes the whole server down on the first reset or broken
/// pipe, like a server that treats every I/O error as fatal.
pub fn dies_on_reset(stream: TcpStream, stop: &AtomicBool) {
    if echo_until_eof(&stream).is_err() {
        stop.store(true, Ordering::SeqCst);
    }
}

/// Echoes datagrams cut at 1,024 bytes: a receive buffer too small.
pub fn udp_truncating(socket: &UdpSocket, datagram: &[u8], peer: SocketAddr) {
    let _ = socket.send_to(&datagram[..datagram.len().min(1024)], peer);
}

/// A correct echo of each datagram, from the socket it arrived on (on a
/// wildcard address, the kernel then picks the reply's source).
pub fn udp_echo(socket: &UdpSocket, datagram: &[u8], peer: SocketAddr) {
    let _ = socket.send_to(datagram, peer);
}

/// Never answers a datagram.
pub fn udp_silent(_: &UdpSocket, _: &[u8], _: SocketAddr) {}

/// Answers from a new socket, so from another port than the one written to.
pub fn udp_wrong_source(_: &UdpSocket, datagram: &[u8], peer: SocketAddr) {
    if let Ok(other) = UdpSocket::bind("127.0.0.1:0") {
        let _ = other.send_to(datagram, peer);
    }
}

/// Answers every datagram to the first peer it ever heard from.
pub fn udp_first_peer_only() -> impl FnMut(&UdpSocket, &[u8], SocketAddr) + Send + 'static {
    let mut first = None;
    move |socket, datagram, peer| {
        let to = *first.get_or_insert(peer);
        let _ = socket.send_to(datagram, to);
    }
}
