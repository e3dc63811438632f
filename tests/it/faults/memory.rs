//! Memory is bounded by the operator's choice, kernel queues included
//! (issue 12, section 5): 200 clients that sent without reading once held
//! 1.07 GB of the server's socket memory, 5.3 MiB each against a 64 KiB
//! ring. With the default `--socket-buffer` a slow reader holds at most
//! 1 MiB in the server's kernel queues.
//!
//! The queues are read from `/proc/net/tcp` and `/proc/net/tcp6` (the
//! `tx_queue` and `rx_queue` columns, which `ss` shows as Send-Q and
//! Recv-Q), so no tool is needed.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use echod_server::server::ServerConfig;

use crate::util::{self, Binary, ECHOD, IO_TIMEOUT, InProcess, connect};

/// The most a slow reader may hold in the server's kernel queues with the
/// default settings.
const KERNEL_QUEUES_BOUND: u64 = 1024 * 1024;

/// Send-Q and Recv-Q of the TCP socket whose local address is `local` and
/// whose peer is `peer`, from the kernel's table; `None` if there is none.
fn queues(local: SocketAddr, peer: SocketAddr) -> Option<(u64, u64)> {
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        // "sl local_address rem_address st tx_queue:rx_queue ...", with
        // addresses as HEX_IP:HEX_PORT. The ports identify the connection
        // on loopback (both ends are ours), whichever the address family.
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = |field: &str| {
                let hex = field.rsplit(':').next().unwrap_or_default();
                u16::from_str_radix(hex, 16).ok()
            };
            if fields.len() < 5
                || port(fields[1]) != Some(local.port())
                || port(fields[2]) != Some(peer.port())
            {
                continue;
            }
            let (tx, rx) = fields[4].split_once(':')?;
            return Some((
                u64::from_str_radix(tx, 16).ok()?,
                u64::from_str_radix(rx, 16).ok()?,
            ));
        }
    }
    None
}

/// Sends from `client` without ever reading, until its own send would
/// block and stays blocked: the server's queues are then as full as a
/// slow reader can make them. Returns the bytes sent. Bounded: at most 200
/// rounds of pushing until WouldBlock, with a pause between rounds for the
/// server to move what it can.
fn push_until_blocked(client: &mut TcpStream) -> u64 {
    client.set_nonblocking(true).unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0u64;
    let mut quiet_rounds = 0;
    for _ in 0..200 {
        let before = sent;
        // Each round ends at WouldBlock; the bound only guards against a
        // server that takes bytes without end (the bug this test is for).
        for _ in 0..1024 {
            match client.write(&chunk) {
                Ok(n) => sent += n as u64,
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(err) => panic!("sending failed: {err}"),
            }
        }
        quiet_rounds = if sent == before { quiet_rounds + 1 } else { 0 };
        if quiet_rounds == 3 {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(quiet_rounds, 3, "the client never stayed blocked");
    sent
}

/// A slow reader against a server with default settings: what it makes
/// the server hold in the kernel is bounded, as the README says.
#[test]
fn a_slow_reader_holds_at_most_1_mib_in_the_servers_kernel_queues() {
    let server = InProcess::start(ServerConfig {
        udp: false,
        ..ServerConfig::default()
    });
    let mut client = connect(server.tcp_addr());
    let sent = push_until_blocked(&mut client);
    let (send_q, recv_q) = queues(server.tcp_addr(), client.local_addr().unwrap())
        .expect("the server's side of the connection is in /proc/net/tcp");
    eprintln!("client sent {sent}; server Send-Q {send_q}, Recv-Q {recv_q}");
    // The client got well past what the server holds: the rest is in the
    // client's own send queue, the 64 KiB ring, and the bytes echoed back
    // into the client's receive queue.
    assert!(sent > send_q + recv_q, "sent {sent}");
    assert!(
        send_q + recv_q <= KERNEL_QUEUES_BOUND,
        "the server's kernel queues hold {send_q} + {recv_q} bytes for one slow reader"
    );
}

/// The same bound for a listener passed by a service manager, which is
/// listening before echod sets the options on it: connections whose
/// handshake comes after echod started get them too.
#[test]
fn a_slow_reader_on_an_inherited_listener_is_bounded_too() {
    const SOCKET_ACTIVATE: &str = "systemd-socket-activate";
    if !util::need(SOCKET_ACTIVATE, "Debian package systemd") {
        return;
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], util::free_port()));
    // The first connection starts echod: it waits in the backlog of the
    // socket systemd-socket-activate opened (connecting as soon as that
    // socket listens, bounded in time).
    let first = thread::spawn(move || {
        let deadline = Instant::now() + IO_TIMEOUT;
        let mut stream = loop {
            match TcpStream::connect(addr) {
                Ok(stream) => break stream,
                Err(err) if Instant::now() < deadline => {
                    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
                    thread::sleep(Duration::from_millis(20));
                }
                Err(err) => panic!("could not connect to {addr}: {err}"),
            }
        };
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.write_all(b"wake up").unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        stream.read_to_end(&mut back).unwrap();
        back
    });
    let echod = Binary::start_with(Command::new(SOCKET_ACTIVATE).args([
        "--listen",
        &addr.to_string(),
        ECHOD,
        "--no-udp",
    ]));
    assert_eq!(first.join().unwrap(), b"wake up");
    assert_eq!(echod.tcp, Some(addr));

    let mut client = connect(addr);
    push_until_blocked(&mut client);
    let (send_q, recv_q) = queues(addr, client.local_addr().unwrap())
        .expect("the server's side of the connection is in /proc/net/tcp");
    eprintln!("inherited: server Send-Q {send_q}, Recv-Q {recv_q}");
    assert!(
        send_q + recv_q <= KERNEL_QUEUES_BOUND,
        "the server's kernel queues hold {send_q} + {recv_q} bytes for one slow reader"
    );
}
