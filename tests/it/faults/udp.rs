//! Issue 12 § 7, UDP keeps bursts and can see what it loses: a burst of
//! 2,000 datagrams comes back whole; what the kernel drops shows in the
//! counters; a datagram sent to 127.0.0.2 is answered from 127.0.0.2;
//! loopback is exempt from `--udp-rate` (so `echod bench --udp` against a
//! default server loses nothing) unless `--limit-loopback`; and
//! `--udp-rate-total` bounds the replies to many sources together, on all
//! the server's addresses together.
//!
//! Every wait is bounded; no assertion depends on timing: counts are read
//! from the server's counters (SIGUSR1) once it has received everything,
//! and "no answer" is never inferred from silence. A rate is checked
//! against the most it allows in the time the test measured itself took
//! ([`most_answered`]), a bound that holds however slow the machine is.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use echod_server::server::{DEFAULT_UDP_RATE, ServerConfig};

use crate::tools::{Input, echod};
use crate::util::{Binary, IO_TIMEOUT, InProcess, skip, wait_bounded};

/// Sends `signal` (a name such as "USR1") to the server.
fn signal(server: &Binary, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(server.child.id().to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} failed");
}

/// The counters line the server logs on SIGUSR1.
#[track_caller]
fn counters(server: &Binary) -> String {
    signal(server, "USR1");
    server.wait_for_line("udp: datagrams in")
}

/// The number after `label` in the UDP part of a counters line.
#[track_caller]
fn number_after(line: &str, label: &str) -> u64 {
    let udp = line
        .split("udp: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no udp counters in {line}"));
    let rest = udp
        .split(label)
        .nth(1)
        .unwrap_or_else(|| panic!("no {label:?} in {line}"));
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after {label:?} in {line}"))
}

/// Asks for the counters (bounded) until the server has received
/// `datagrams`; returns that counters line.
#[track_caller]
fn counters_once_received(server: &Binary, datagrams: u64) -> String {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let line = counters(server);
        if number_after(&line, "datagrams in ") >= datagrams {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "the server never received {datagrams} datagrams: {line}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// The server on 127.0.0.1, UDP only, plus `args`.
fn server(args: &[&str]) -> Binary {
    let mut all = vec!["-b", "127.0.0.1", "--port", "0", "--no-tcp"];
    all.extend_from_slice(args);
    Binary::start(&all)
}

/// A client socket on `ip`, with a read timeout.
fn client_on(ip: IpAddr) -> UdpSocket {
    let socket = UdpSocket::bind((ip, 0)).expect("a client socket on loopback");
    socket.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    socket
}

/// Sizes the client's receive buffer to `bytes` (Linux keeps twice that):
/// the privileged option first, as the server does, so the client is not
/// what drops the echoes. Returns what the kernel granted.
fn enlarge_receive_buffer(socket: &UdpSocket, bytes: usize) -> usize {
    #[cfg(target_os = "linux")]
    {
        use nix::sys::socket::{setsockopt, sockopt};
        if setsockopt(socket, sockopt::RcvBufForce, &bytes).is_err() {
            let _ = socket2::SockRef::from(socket).set_recv_buffer_size(bytes);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = socket2::SockRef::from(socket).set_recv_buffer_size(bytes);
    socket2::SockRef::from(socket)
        .recv_buffer_size()
        .unwrap_or(0)
}

/// The server's receive-buffer line, if the kernel capped the buffer
/// (then the bursts below cannot be kept, by design: it says so).
fn capped_buffer_warning(server: &Binary) -> Option<&String> {
    server
        .startup
        .iter()
        .find(|line| line.contains("the kernel granted a receive buffer"))
}

const BURST: usize = 2000;
const DATAGRAM: usize = 1400;

/// 2,000 datagrams of 1,400 bytes, sent as fast as one socket can, against
/// a default server: every one comes back, unchanged. With the kernel's
/// default receive buffer (some 90 such datagrams) 32 to 97 % came back.
#[test]
fn a_burst_of_2000_datagrams_all_come_back() {
    let server = server(&[]);
    let addr = server.udp.unwrap();
    if let Some(warning) = capped_buffer_warning(&server) {
        skip(&format!(
            "the kernel capped the server's receive buffer (run as root with CAP_NET_ADMIN, \
             or raise net.core.rmem_max): {warning}"
        ));
        return;
    }
    let line = server
        .startup
        .iter()
        .find(|line| line.contains("receive buffer"))
        .expect("the server logs its receive buffer");
    assert!(
        line.contains(&format!(
            "{addr}: receive buffer 8388608 bytes (asked for 4194304;"
        )),
        "{line}"
    );

    let client = client_on(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let granted = enlarge_receive_buffer(&client, 4 * 1024 * 1024);
    // Read the echoes while sending too, so a client whose buffer the
    // kernel capped still takes them all.
    let reader = client.try_clone().unwrap();
    let receiving = thread::spawn(move || {
        let mut buf = vec![0u8; 2 * DATAGRAM];
        let mut seen = HashSet::new();
        while seen.len() < BURST {
            match reader.recv_from(&mut buf) {
                Ok((n, from)) => {
                    assert_eq!(from, addr);
                    assert_eq!(n, DATAGRAM);
                    let seq = u16::from_be_bytes([buf[0], buf[1]]);
                    assert!(
                        buf[2..n].iter().all(|&b| b == seq as u8),
                        "datagram {seq} came back changed"
                    );
                    seen.insert(seq);
                }
                Err(err) => return (seen.len(), Some(err)),
            }
        }
        (seen.len(), None)
    });
    let mut payload = [0u8; DATAGRAM];
    for seq in 0..BURST as u16 {
        payload[..2].copy_from_slice(&seq.to_be_bytes());
        payload[2..].fill(seq as u8);
        client.send_to(&payload, addr).unwrap();
    }
    let (back, err) = receiving.join().unwrap();
    let line = counters(&server);
    assert_eq!(
        back, BURST,
        "{back} of {BURST} came back ({err:?}; client buffer {granted}); server: {line}"
    );
    assert!(
        line.contains("dropped by the kernel 0 (as of the last datagram received)"),
        "{line}"
    );
}

/// Waits (bounded) until process `pid` is stopped (state T in
/// /proc/PID/stat), so that what is sent next finds nobody reading.
#[track_caller]
fn wait_until_stopped(pid: u32) {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // The state follows the command name, which is in parentheses.
        let state = stat.rsplit(')').next().unwrap().trim_start().chars().next();
        if state == Some('T') {
            return;
        }
        assert!(Instant::now() < deadline, "process {pid} never stopped");
        thread::sleep(Duration::from_millis(5));
    }
}

/// The kernel's drops show in the counters and the receipt, exactly: with
/// the server stopped (SIGSTOP), a flood larger than its receive buffer
/// fills it and the kernel drops the rest; once it runs again, every
/// datagram sent was either received or dropped by the kernel.
#[test]
fn datagrams_the_kernel_dropped_show_in_the_counters_and_the_receipt() {
    // 300 × 60,000 bytes: 18 MB, more than the 8 MiB the buffer holds.
    const FLOOD: u64 = 300;
    let mut server = server(&["--grace", "1"]);
    let addr = server.udp.unwrap();
    let pid = server.child.id();
    let flood = client_on(IpAddr::V4(Ipv4Addr::LOCALHOST));
    signal(&server, "STOP");
    wait_until_stopped(pid);
    let payload = vec![7u8; 60_000];
    for _ in 0..FLOOD {
        flood.send_to(&payload, addr).unwrap();
    }
    signal(&server, "CONT");
    // Another socket, whose buffer the flood's echoes do not fill. Its
    // datagram arrives after the flood's: once it is answered, every
    // datagram of the flood that got in has been received.
    let marker = client_on(IpAddr::V4(Ipv4Addr::LOCALHOST));
    marker.send_to(b"after the flood", addr).unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = marker.recv_from(&mut buf).expect("the marker is answered");
    assert_eq!(&buf[..n], b"after the flood");

    let line = counters(&server);
    let received = number_after(&line, "datagrams in ");
    let by_kernel = number_after(&line, "dropped by the kernel ");
    assert!(by_kernel > 0, "{line}");
    assert_eq!(received + by_kernel, FLOOD + 1, "{line}");
    assert!(
        line.contains("(as of the last datagram received)"),
        "{line}"
    );

    signal(&server, "TERM");
    let receipt = server.wait_for_line("shutdown complete");
    assert!(
        receipt.contains(&format!("dropped by the kernel {by_kernel} (")),
        "{receipt}"
    );
    assert!(wait_bounded(&mut server.child, IO_TIMEOUT).success());
}

/// Sends to `to` from a socket connected to it, and from one that is not:
/// both get the echo, from `to`.
#[track_caller]
fn assert_answered_from(to: SocketAddr) {
    let local = if to.is_ipv4() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    };
    let open = client_on(local);
    open.send_to(b"from where?", to).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = open.recv_from(&mut buf).expect("an answer comes");
    assert_eq!((&buf[..n], from), (&b"from where?"[..], to));

    // A connected socket takes datagrams from `to` only: an answer from
    // another address would never reach it.
    let connected = client_on(local);
    connected.connect(to).unwrap();
    connected.send(b"connected").unwrap();
    let n = connected
        .recv(&mut buf)
        .expect("a connected client gets its answer");
    assert_eq!(&buf[..n], b"connected");
}

/// Bound to `::` (the default, dual-stack) or 0.0.0.0, echod receives for
/// every address of the host; a datagram sent to 127.0.0.2 is answered
/// from 127.0.0.2, not from the address the kernel would pick (127.0.0.1).
#[test]
fn a_datagram_to_127_0_0_2_is_answered_from_127_0_0_2() {
    for bind in ["::", "0.0.0.0"] {
        let server = InProcess::start(ServerConfig {
            bind: vec![bind.parse().unwrap()],
            tcp: false,
            ..ServerConfig::default()
        });
        let port = server.udp_addr().port();
        for to in ["127.0.0.2", "127.0.0.1", "127.1.2.3"] {
            assert_answered_from(SocketAddr::new(to.parse().unwrap(), port));
        }
        if bind == "::" {
            assert_answered_from(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port));
        }
    }
}

/// Sends `count` datagrams from `socket` to `to`, numbered.
/// The most datagrams a token bucket of `rate` per second, full when
/// `start` is taken or later, lets through by now: the burst and the
/// refill, rounded up. It holds whatever the time taken (a slow machine
/// only makes it looser), and stays below what a broken limit answers as
/// long as the test takes less than a second or two.
fn most_answered(rate: u64, start: Instant) -> u64 {
    let refill = (u128::from(rate) * start.elapsed().as_nanos()).div_ceil(1_000_000_000);
    rate + u64::try_from(refill).unwrap_or(u64::MAX)
}

fn send_numbered(socket: &UdpSocket, to: SocketAddr, count: u32) {
    for i in 0..count {
        socket.send_to(&i.to_be_bytes(), to).unwrap();
    }
}

/// By default loopback sources are exempt from --udp-rate: all answered.
#[test]
fn loopback_is_exempt_from_udp_rate_by_default() {
    const SENT: u32 = 100;
    let server = server(&["--udp-rate", "10"]);
    let addr = server.udp.unwrap();
    let client = client_on(IpAddr::V4(Ipv4Addr::LOCALHOST));
    send_numbered(&client, addr, SENT);
    let mut buf = [0u8; 16];
    for i in 0..SENT {
        let (n, _) = client
            .recv_from(&mut buf)
            .unwrap_or_else(|err| panic!("datagram {i} of {SENT} not answered: {err}"));
        assert_eq!(&buf[..n], i.to_be_bytes(), "in order");
    }
    let line = counters_once_received(&server, u64::from(SENT));
    assert!(line.contains("rate 0, total rate 0,"), "{line}");
}

/// With --limit-loopback the same sender is held to its rate.
#[test]
fn limit_loopback_holds_loopback_to_udp_rate() {
    const SENT: u32 = 100;
    const RATE: u64 = 10;
    let server = server(&["--udp-rate", "10", "--limit-loopback"]);
    let addr = server.udp.unwrap();
    let client = client_on(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let start = Instant::now();
    send_numbered(&client, addr, SENT);
    let line = counters_once_received(&server, u64::from(SENT));
    let most = most_answered(RATE, start);
    let out = number_after(&line, "out ");
    let rate = number_after(&line, ", rate ");
    assert_eq!(out + rate, u64::from(SENT), "{line}");
    // One burst (10) at once, then 10 more per second it took.
    assert!(out >= RATE, "{line}");
    assert!(out <= most, "more than {most} answered: {line}");
}

/// A flood from many sources, each far within its own rate, is bounded
/// by --udp-rate-total; its drops are counted and warned about.
#[test]
fn udp_rate_total_bounds_replies_over_many_sources() {
    const SOURCES: u8 = 10;
    const EACH: u32 = 20;
    const TOTAL: u64 = 30;
    let server = server(&["--udp-rate-total", "30", "--limit-loopback"]);
    let addr = server.udp.unwrap();
    let start = Instant::now();
    let mut sent = 0;
    for n in 0..SOURCES {
        let socket = client_on(IpAddr::V4(Ipv4Addr::new(127, 0, 1, 10 + n)));
        send_numbered(&socket, addr, EACH);
        sent += u64::from(EACH);
    }
    // The first drop warns (the counters, asked for later, come after).
    let warning = server.wait_for_line("--udp-rate-total sets the budget");
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains("all sources together sent more datagrams"),
        "{warning}"
    );
    let line = counters_once_received(&server, sent);
    let most = most_answered(TOTAL, start);
    let out = number_after(&line, "out ");
    let total = number_after(&line, "total rate ");
    assert_eq!(number_after(&line, ", rate "), 0, "{line}");
    assert_eq!(out + total, sent, "{line}");
    // One budget's burst (30), then 30 more per second it took.
    assert!(out >= TOTAL, "{line}");
    assert!(out <= most, "more than {most} answered: {line}");
}

/// The total budget is the server's, not each socket's: bound to two or
/// three addresses (127.0.0.1, 127.0.0.2, and ::1 where there is IPv6),
/// echod answers all of them together no more than one budget allows. With
/// a budget per socket, each address answered its own burst: 3 × 10.
#[test]
fn udp_rate_total_holds_across_the_servers_addresses() {
    const EACH: u32 = 40;
    const TOTAL: u64 = 10;
    let mut addresses = vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
    ];
    if UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).is_ok() {
        addresses.push(IpAddr::V6(Ipv6Addr::LOCALHOST));
    }
    let texts: Vec<String> = addresses.iter().map(IpAddr::to_string).collect();
    let mut args = vec!["--port", "0", "--no-tcp"];
    for text in &texts {
        args.extend_from_slice(&["-b", text]);
    }
    // The per-source rate off, so that only the total can refuse.
    args.extend_from_slice(&[
        "--udp-rate",
        "0",
        "--udp-rate-total",
        "10",
        "--limit-loopback",
    ]);
    let server = Binary::start(&args);
    let port = server.udp.unwrap().port();
    let start = Instant::now();
    let mut sent = 0;
    for &ip in &addresses {
        let client = client_on(ip);
        send_numbered(&client, SocketAddr::new(ip, port), EACH);
        sent += u64::from(EACH);
    }
    let line = counters_once_received(&server, sent);
    let most = most_answered(TOTAL, start);
    let out = number_after(&line, "out ");
    let total = number_after(&line, "total rate ");
    assert_eq!(out + total, sent, "{line}");
    assert!(out >= TOTAL, "{line}");
    assert!(
        out <= most,
        "more than {most} answered over {} addresses: {line}",
        addresses.len()
    );
}

/// `echod bench --udp` against a default `echod` (bound to `::`, every
/// limit at its default) loses nothing: loopback is exempt from the rate.
/// It used to lose datagrams and exit 1.
#[test]
fn bench_udp_against_a_default_server_loses_nothing() {
    let server = Binary::start(&["--port", "0"]);
    let port = server.udp.unwrap().port();
    let target = format!("127.0.0.1:{port}");
    let run = echod(
        &[
            "bench",
            "--udp",
            "--json",
            "--warmup",
            "0",
            "-d",
            "1",
            "-c",
            "4",
            "--pipeline",
            "8",
            &target,
        ],
        Input::Bytes(b""),
    );
    let report: serde_json::Value = serde_json::from_slice(&run.stdout)
        .unwrap_or_else(|err| panic!("no JSON report ({err}); stderr: {}", run.stderr));
    assert_eq!(run.code(), 0, "{report}; stderr: {}", run.stderr);
    assert_eq!(report["errors"], 0, "{report}");
    // More than the default rate allows one source in a second (a burst,
    // then the rate), or the test would show nothing.
    let messages = report["messages"].as_u64().unwrap_or(0);
    assert!(
        messages > 2 * u64::from(DEFAULT_UDP_RATE),
        "only {messages} messages: too few to tell whether the rate limit applies"
    );
}
