//! `echod check`: every check passes against echod itself (TCP and UDP,
//! IPv4 and IPv6); against small servers with one defect each, the
//! matching check fails and names the defect; socat gets a report; and the
//! command line keeps its promises (exit status, `--list`, `--json`).
//!
//! Runs are in-process where possible (`check::run` returns the report);
//! the binary is run where the command line itself is what is tested.
//! Against broken servers the timeouts are short, since most of those
//! checks end by running out of time.

mod broken;

use std::io::Read;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use echod::check::{self, CheckConfig, Defect, Outcome, Report};
use echod_server::net::Transport;
use echod_server::server::ServerConfig;

use crate::util::{Binary, ECHOD, IO_TIMEOUT, InProcess, free_port};
use broken::Serve;

/// Runs `config` in this process. The test waits for the report as long
/// as the run may take by its own rules (each check's bound) and
/// IO_TIMEOUT more: a run that overstays its bounds fails the test.
#[track_caller]
fn run(config: CheckConfig) -> Report {
    let bound: Duration = config
        .checks
        .iter()
        .map(|c| c.bound(config.timeout))
        .sum::<Duration>()
        + IO_TIMEOUT;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(check::run(&config, &mut |_| {}));
    });
    rx.recv_timeout(bound)
        .expect("the run ends within its bounds")
        .expect("the target resolves")
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn tcp(addr: SocketAddr, timeout: f64) -> CheckConfig {
    CheckConfig::all(addr, Transport::Tcp, secs(timeout))
}

fn udp(addr: SocketAddr, timeout: f64) -> CheckConfig {
    CheckConfig::all(addr, Transport::Udp, secs(timeout))
}

#[track_caller]
fn assert_all_pass(report: &Report, count: usize) {
    let results: Vec<_> = report.results().collect();
    assert_eq!(results.len(), count, "{results:#?}");
    for result in results {
        assert_eq!(
            result.outcome,
            Outcome::Pass,
            "{}: {}",
            result.name,
            result.detail
        );
    }
    assert_eq!(report.exit_code(), 0);
}

/// The check failed, named `defect`, and said `words`; the run exits 1;
/// every other check reported something (a result with a sentence).
#[track_caller]
fn assert_finds(report: &Report, name: &str, defect: Defect, words: &str) {
    let result = report
        .result(name)
        .unwrap_or_else(|| panic!("{name} did not run"));
    assert_eq!(result.outcome, Outcome::Fail, "{name}: {}", result.detail);
    assert_eq!(result.defect, Some(defect), "{name}: {}", result.detail);
    assert!(
        result.detail.contains(words),
        "{name} should say {words:?}: {}",
        result.detail
    );
    assert_eq!(report.exit_code(), 1);
    for other in report.results() {
        assert!(!other.detail.is_empty(), "{} said nothing", other.name);
    }
}

#[track_caller]
fn assert_passes(report: &Report, name: &str) {
    let result = report.result(name).unwrap();
    assert_eq!(result.outcome, Outcome::Pass, "{name}: {}", result.detail);
}

fn loopback_v6_and_v4() -> ServerConfig {
    ServerConfig {
        bind: vec!["::1".parse().unwrap(), "127.0.0.1".parse().unwrap()],
        ..ServerConfig::default()
    }
}

// ---- against echod itself ----

#[test]
fn every_tcp_check_passes_against_echod_on_ipv4() {
    let server = InProcess::v4();
    assert_all_pass(&run(tcp(server.tcp_addr(), 10.0)), 9);
}

#[test]
fn every_tcp_check_passes_against_echod_on_ipv6() {
    let server = InProcess::start(ServerConfig {
        bind: vec!["::1".parse().unwrap()],
        ..ServerConfig::default()
    });
    assert!(server.tcp_addr().is_ipv6());
    assert_all_pass(&run(tcp(server.tcp_addr(), 10.0)), 9);
}

#[test]
fn every_udp_check_passes_against_echod_on_ipv6_and_ipv4() {
    let server = InProcess::start(loopback_v6_and_v4());
    for &addr in &server.udp {
        let report = run(udp(addr, 10.0));
        assert_all_pass(&report, 3);
        let sizes = report.result("udp-sizes").unwrap();
        assert!(sizes.detail.contains("65507"), "{}", sizes.detail);
    }
}

#[test]
fn a_name_with_both_families_is_checked_on_each() {
    let server = InProcess::start(loopback_v6_and_v4());
    let port = server.tcp_addr().port();
    let found: Vec<SocketAddr> = ("localhost", port).to_socket_addrs().unwrap().collect();
    let both = found.iter().any(|a| a.is_ipv4()) && found.iter().any(|a| a.is_ipv6());
    let config = echod::cli::check::CheckArgs {
        addr: Some(format!("localhost:{port}")),
        udp: false,
        only: vec!["echo".into()],
        list: false,
        clients: 10,
        timeout: IO_TIMEOUT,
        strict: false,
        junit: None,
        json: false,
    }
    .to_config()
    .unwrap();
    let report = if both {
        run(config)
    } else {
        // localhost has one family here: check what resolving to both
        // would give, on the addresses themselves.
        eprintln!("note: localhost has one address family here ({found:?})");
        check::run_on(&config, &server.tcp, &mut |_| {})
    };
    assert_eq!(report.addresses.len(), 2);
    assert!(report.addresses.iter().any(|a| a.addr.is_ipv6()));
    assert!(report.addresses.iter().any(|a| a.addr.is_ipv4()));
    assert_eq!(report.exit_code(), 0);
}

#[test]
fn a_family_the_server_does_not_serve_is_reported_unreachable() {
    let server = InProcess::v4();
    let v4 = server.tcp_addr();
    // Nothing listens on this port of ::1: the server was bound to
    // 127.0.0.1 only.
    let v6: SocketAddr = (std::net::Ipv6Addr::LOCALHOST, v4.port()).into();
    let config = tcp(v4, IO_TIMEOUT.as_secs_f64()).only(&["echo"]);
    let report = check::run_on(&config, &[v6, v4], &mut |_| {});
    let why = report.addresses[0].unreachable.as_deref().unwrap();
    assert!(why.contains("connection refused"), "{why}");
    assert!(why.contains("resolves to an IPv6 address too"), "{why}");
    assert_eq!(report.addresses[1].unreachable, None);
    assert_eq!(report.addresses[1].results[0].outcome, Outcome::Pass);
    assert_eq!(report.exit_code(), 2);
}

// ---- against servers with one defect each ----

#[test]
fn line_buffering_fails_unbuffered_binary_and_slow_drip() {
    let server = broken::tcp(Serve::Threads, broken::line_buffering);
    let checks = [
        "echo",
        "binary",
        "unbuffered",
        "half-close",
        "slow-drip",
        "reset-survival",
    ];
    let report = run(tcp(server.addr, 1.0).only(&checks));
    assert_finds(
        &report,
        "unbuffered",
        Defect::LineBuffering,
        "only after a newline",
    );
    assert_finds(&report, "binary", Defect::LineBuffering, "up to a newline");
    assert_finds(&report, "slow-drip", Defect::LineBuffering, "newline");
    // A whole line, and a partial one flushed at EOF, come back.
    assert_passes(&report, "echo");
    assert_passes(&report, "half-close");
    // Resetters whose bytes hold no newline wait for an echo that does
    // not come; that must not use up the time the fresh client after them
    // has, and read as a server that died.
    assert_passes(&report, "reset-survival");
}

/// A server that echoed `echo` and then nothing: the later silence is
/// named for what was seen (it stopped echoing), not "never replies",
/// which would contradict echo's PASS line.
#[test]
fn silence_after_a_pass_is_named_stalls() {
    let server = broken::tcp(Serve::Threads, broken::echoes_only_the_first);
    let report = run(tcp(server.addr, 0.5).only(&["echo", "binary"]));
    assert_passes(&report, "echo");
    assert_finds(
        &report,
        "binary",
        Defect::Stalls,
        "earlier checks got their echo back",
    );
}

/// A server that holds its output until it has a block of it (stdio's
/// buffering, as behind `socat SYSTEM:'tr a b'`) and changes bytes: echo
/// gets nothing, half-close gets bytes. The checks after it still run, and
/// the root cause does not say the server echoes nothing.
#[test]
fn block_buffering_is_not_called_echoing_nothing() {
    let server = broken::tcp(Serve::Threads, broken::block_buffered_tr);
    let checks = ["echo", "half-close", "slow-drip"];
    let report = run(tcp(server.addr, 1.0).only(&checks));
    assert_finds(&report, "echo", Defect::NeverReplying, "nothing back");
    assert_finds(&report, "half-close", Defect::CorruptsBytes, "0x62");
    let drip = report.result("slow-drip").unwrap();
    assert_ne!(drip.outcome, Outcome::Skip, "{}", drip.detail);
    let cause = report.addresses[0].root_cause().unwrap();
    assert!(cause.starts_with("holds its echo back"), "{cause}");
}

/// The check failed as losing held echo at EOF, with the bytes missing,
/// after echo and binary passed; the root-cause line says so.
#[track_caller]
fn assert_loses_held_echo(report: &Report) {
    assert_finds(
        report,
        "eof-with-queued-output",
        Defect::CloseOnEofWithoutFlush,
        "loses what it holds when the client half-closes",
    );
    let result = report.result("eof-with-queued-output").unwrap();
    let missing = result
        .figures
        .iter()
        .find(|(name, _)| *name == "bytes_missing")
        .and_then(|(_, v)| v.as_u64())
        .expect("the bytes missing are reported");
    assert!(missing > 0, "{}", result.detail);
    assert!(result.detail.contains("missing"), "{}", result.detail);
    assert_passes(report, "echo");
    assert_passes(report, "binary");
    let cause = report.addresses[0].root_cause().unwrap();
    assert!(
        cause.starts_with("echoes, but loses what it holds when the client half-closes"),
        "{cause}"
    );
}

const EOF_CHECKS: [&str; 3] = ["echo", "binary", "eof-with-queued-output"];

#[test]
fn closing_on_eof_without_flush_fails_eof_with_queued_output() {
    let server = broken::tcp(Serve::Threads, broken::close_on_eof_without_flush);
    assert_loses_held_echo(&run(tcp(server.addr, 1.0).only(&EOF_CHECKS)));
}

#[test]
fn closing_on_eof_with_large_buffers_fails_eof_with_queued_output() {
    let server = broken::tcp(Serve::Threads, broken::close_on_eof_large_buffers);
    assert_loses_held_echo(&run(tcp(server.addr, 1.0).only(&EOF_CHECKS)));
}

/// The false PASS of issue 14: one nonblocking send of what it holds
/// when the EOF comes, then close. The check reads nothing for a while
/// after its shutdown, so the server meets the EOF with a full path.
#[test]
fn one_nonblocking_send_on_eof_fails_eof_with_queued_output() {
    let server = broken::tcp(Serve::Threads, broken::one_send_on_eof);
    assert_loses_held_echo(&run(tcp(server.addr, 1.0).only(&EOF_CHECKS)));
}

#[test]
fn serving_one_client_at_a_time_fails_concurrency_and_backpressure() {
    let server = broken::tcp(Serve::OneAtATime, broken::plain_echo);
    let checks = ["echo", "concurrency", "backpressure"];
    // 2 s: filling the kernel buffers of a client that does not read
    // (up to 20 MiB on loopback) must end within one wait on a busy
    // machine too, or backpressure is a skip.
    let report = run(tcp(server.addr, 2.0).only(&checks));
    assert_finds(
        &report,
        "concurrency",
        Defect::OneClientAtATime,
        "serves one client at a time",
    );
    assert_finds(
        &report,
        "backpressure",
        Defect::BlocksOnSlowReader,
        "second client was not served",
    );
    assert_passes(&report, "echo");
}

#[test]
fn a_server_that_never_replies_is_found_within_its_bounds() {
    let server = broken::tcp(Serve::Threads, broken::never_replying);
    let report = run(tcp(server.addr, 0.3));
    assert_finds(&report, "echo", Defect::NeverReplying, "sent nothing back");
    let results: Vec<_> = report.results().collect();
    assert_eq!(results.len(), 9);
    for result in results {
        assert_ne!(
            result.outcome,
            Outcome::Pass,
            "{}: {}",
            result.name,
            result.detail
        );
    }

    let silent = broken::udp(broken::udp_silent);
    let report = run(udp(silent.addr, 0.3));
    assert_finds(
        &report,
        "udp-sizes",
        Defect::NeverReplying,
        "no reply to any datagram",
    );
    // What needs a reply is not run once udp-sizes got none, and says so.
    for name in ["udp-source", "udp-interleaved"] {
        let result = report.result(name).unwrap();
        assert_eq!(result.outcome, Outcome::Skip, "{name}: {}", result.detail);
        assert!(
            result.detail.contains("got nothing back"),
            "{}",
            result.detail
        );
    }
}

/// Once echo got nothing back, what cannot pass is skipped and says so:
/// at the default --timeout (5 s) the run against a server that accepts
/// and does nothing ends well within the generous bound below (it took
/// 38 s before; now echo and half-close wait, 10 s).
#[test]
fn a_server_that_echoes_nothing_is_given_up_on_early() {
    let server = broken::tcp(Serve::Threads, broken::hung);
    let addr = server.addr.to_string();
    let mut child = Command::new(ECHOD)
        .args(["check", &addr])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = crate::util::wait_bounded(&mut child, Duration::from_secs(30));
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("FAIL  echo  "), "{out}");
    let skipped: Vec<&str> = out.lines().filter(|l| l.starts_with("SKIP  ")).collect();
    assert_eq!(skipped.len(), 7, "{out}");
    for line in skipped {
        assert!(line.contains("echo got nothing back"), "{line}");
    }
    assert!(
        out.contains("root cause: the server accepts connections but echoes nothing"),
        "{out}"
    );
}

/// A server that echoes but drops what it holds at EOF is not called a
/// discard server by half-close, nor one that dies on resets.
#[test]
fn a_half_close_fault_is_named_as_such_after_echoes_worked() {
    let server = broken::tcp(Serve::Threads, broken::close_on_eof_without_flush);
    let report = run(tcp(server.addr, 1.0));
    for result in report.results() {
        assert_ne!(
            result.defect,
            Some(Defect::NeverReplying),
            "{}: {}",
            result.name,
            result.detail
        );
        assert_ne!(
            result.defect,
            Some(Defect::DiesOnReset),
            "{}: {}",
            result.name,
            result.detail
        );
        if result.name == "reset-survival" {
            assert_eq!(result.outcome, Outcome::Pass, "{}", result.detail);
        }
    }
    assert_passes(&report, "echo");
    let cause = report.addresses[0].root_cause().unwrap();
    assert!(
        cause.starts_with("echoes, but loses what it holds when the client half-closes"),
        "{cause}"
    );
}

/// A pool of 10 threads serves 10 clients and leaves the others waiting,
/// however long: limited-clients, after the second wait, with the count.
#[test]
fn a_pool_of_ten_threads_is_named_limited_clients() {
    let server = broken::tcp(Serve::Pool(10), broken::plain_echo);
    let report = run(tcp(server.addr, 1.0).only(&["echo", "concurrency"]));
    assert_finds(
        &report,
        "concurrency",
        Defect::LimitedClients,
        "serves at most 10 clients at a time",
    );
    assert_passes(&report, "echo");
}

/// Clients that connected at once but are served only a while later, as
/// when a backlog overflowed after their connect returned: small-backlog,
/// found by the second wait, not limited-clients.
#[test]
fn clients_served_late_are_named_small_backlog() {
    let server = broken::tcp(Serve::Threads, broken::late_beyond_ten);
    let report = run(tcp(server.addr, 1.0).only(&["echo", "concurrency"]));
    assert_finds(
        &report,
        "concurrency",
        Defect::SmallBacklog,
        "serves them late",
    );
    assert_passes(&report, "echo");
}

/// A backlog that overflows is small-backlog, whether the clients wait
/// to connect or connect and wait to be served: never limited-clients.
#[test]
fn a_small_backlog_is_named_small_backlog() {
    let server = broken::small_backlog();
    let report = run(tcp(server.addr, 3.0).only(&["echo", "concurrency"]));
    assert_finds(&report, "concurrency", Defect::SmallBacklog, "backlog");
    assert_passes(&report, "echo");
}

// ---- --strict ----

#[test]
fn echod_passes_the_strict_checks() {
    let server = InProcess::v4();
    let report = run(tcp(server.tcp_addr(), 10.0).strict());
    assert_all_pass(&report, 10);
    assert_passes(&report, "urgent-inline");

    // On the wildcard address, as the rule is about; checked at
    // 127.0.0.1, answered at 127.0.0.2.
    let server = InProcess::start(ServerConfig {
        bind: vec!["0.0.0.0".parse().unwrap()],
        ..ServerConfig::default()
    });
    let addr: SocketAddr = ([127, 0, 0, 1], server.udp_addr().port()).into();
    let _low_ports = crate::util::low_ports();
    let report = run(udp(addr, 10.0).strict());
    let guard = report.result("udp-loop-guard").unwrap();
    if guard.outcome == Outcome::Skip && guard.detail.contains("needs root") {
        crate::util::skip(&guard.detail);
        return;
    }
    assert_all_pass(&report, 5);
    let wildcard = report.result("udp-source-wildcard").unwrap();
    assert!(wildcard.detail.contains("127.0.0.2"), "{}", wildcard.detail);
}

/// A UDP echo that answers every datagram, from chargen's port too: the
/// loop CERT CA-1996-01 describes.
#[test]
fn answering_a_service_port_fails_udp_loop_guard() {
    let server = broken::udp(broken::udp_echo);
    let _low_ports = crate::util::low_ports();
    let report = run(udp(server.addr, 1.0).strict().only(&["udp-loop-guard"]));
    let result = report.result("udp-loop-guard").unwrap();
    if result.outcome == Outcome::Skip && result.detail.contains("needs root") {
        crate::util::skip(&result.detail);
        return;
    }
    assert_finds(
        &report,
        "udp-loop-guard",
        Defect::UdpLoopRisk,
        "was answered",
    );
    let line = check::render_line(result);
    assert!(line.contains("(CERT CA-1996-01)"), "{line}");
}

/// A thread-per-connection echo without SO_OOBINLINE: the kernel keeps
/// the urgent byte out of the stream, and the echo lacks it.
#[test]
fn dropping_urgent_data_fails_urgent_inline_with_strict_only() {
    let server = broken::tcp(Serve::Threads, broken::plain_echo);
    let report = run(tcp(server.addr, 1.0).only(&["echo", "urgent-inline"]));
    assert!(report.result("urgent-inline").is_none(), "strict only");
    let report = run(tcp(server.addr, 1.0)
        .strict()
        .only(&["echo", "urgent-inline"]));
    assert_finds(
        &report,
        "urgent-inline",
        Defect::DropsUrgentData,
        "SO_OOBINLINE",
    );
    let line = check::render_line(report.result("urgent-inline").unwrap());
    assert!(line.contains("(RFC 9293 section 3.8.5"), "{line}");
}

/// A UDP echo on 0.0.0.0 that lets routing pick the source: sent to
/// 127.0.0.2, its reply comes from 127.0.0.1.
#[test]
fn a_wildcard_server_replying_from_another_address_fails_udp_source_wildcard() {
    let server = broken::udp_on_wildcard(broken::udp_echo);
    let addr: SocketAddr = ([127, 0, 0, 1], server.addr.port()).into();
    let report = run(udp(addr, 1.0)
        .strict()
        .only(&["udp-source", "udp-source-wildcard"]));
    assert_passes(&report, "udp-source");
    assert_finds(
        &report,
        "udp-source-wildcard",
        Defect::UdpWrongSource,
        "not from 127.0.0.2",
    );
    // Bound to 127.0.0.1 alone, 127.0.0.2 reaches nothing: the rule does
    // not arise, and the check says so.
    let server = broken::udp(broken::udp_echo);
    let report = run(udp(server.addr, 0.5)
        .strict()
        .only(&["udp-source-wildcard"]));
    let result = report.result("udp-source-wildcard").unwrap();
    assert_eq!(result.outcome, Outcome::Skip, "{}", result.detail);
    assert!(result.detail.contains("wildcard"), "{}", result.detail);
}

#[test]
fn truncating_datagrams_at_1024_bytes_fails_udp_sizes_and_names_the_size() {
    let server = broken::udp(broken::udp_truncating);
    let report = run(udp(server.addr, 1.0));
    assert_finds(
        &report,
        "udp-sizes",
        Defect::UdpTruncation,
        "truncates datagrams at 1024 bytes",
    );
    let sizes = report.result("udp-sizes").unwrap();
    assert!(sizes.figures.contains(&("truncated_at", 1024.into())));
    assert_passes(&report, "udp-source");
    assert_passes(&report, "udp-interleaved");
}

#[test]
fn ignoring_half_close_fails_half_close() {
    let server = broken::tcp(Serve::Threads, broken::ignores_half_close);
    let report = run(tcp(server.addr, 0.5).only(&["echo", "half-close"]));
    assert_finds(
        &report,
        "half-close",
        Defect::IgnoresHalfClose,
        "did not close its side",
    );
    assert_passes(&report, "echo");
}

#[test]
fn dying_on_a_reset_fails_reset_survival() {
    let server = broken::tcp(Serve::Threads, broken::dies_on_reset);
    let report = run(tcp(server.addr, 1.0).only(&["echo", "reset-survival"]));
    assert_finds(&report, "reset-survival", Defect::DiesOnReset, "reset");
    assert_passes(&report, "echo");
}

#[test]
fn replying_from_another_port_fails_udp_source() {
    let server = broken::udp(broken::udp_wrong_source);
    let report = run(udp(server.addr, 1.0).only(&["udp-source"]));
    assert_finds(&report, "udp-source", Defect::UdpWrongSource, "not from");
}

#[test]
fn replying_to_the_wrong_sender_fails_udp_interleaved() {
    let server = broken::udp(broken::udp_first_peer_only());
    let report = run(udp(server.addr, 1.0).only(&["udp-interleaved"]));
    assert_finds(
        &report,
        "udp-interleaved",
        Defect::UdpCrossedReplies,
        "reply meant for sender",
    );
}

// ---- socat ----

/// `socat TCP-LISTEN:PORT,fork,reuseaddr PIPE` in a process group of its
/// own, killed with its children on drop: socat forks one per connection,
/// and a child stuck on its own pipe (see docs/tools.md, "Against socat")
/// never exits alone.
struct Socat(std::process::Child);

impl Drop for Socat {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn socat_gets_a_report_for_every_tcp_check() {
    use std::os::unix::process::CommandExt;
    if !crate::util::need("socat", "apt-get install socat") {
        return;
    }
    let port = free_port();
    let child = Command::new("socat")
        .arg(format!("TCP-LISTEN:{port},fork,reuseaddr,bind=127.0.0.1"))
        .arg("PIPE")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _socat = Socat(child);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + IO_TIMEOUT;
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "socat did not start listening");
        thread::sleep(Duration::from_millis(10));
    }
    // Each check on its own connections, all at once: socat forks a
    // process per connection, so they do not disturb one another, and the
    // test takes as long as the slowest check rather than the sum. (The
    // README shows the real, sequential `echod check` output.)
    let runs: Vec<_> = echod::check::CHECKS
        .iter()
        .filter(|c| c.transport == Transport::Tcp)
        .map(|c| {
            let config = tcp(addr, 3.0).strict().only(&[c.name]);
            thread::spawn(move || run(config))
        })
        .collect();
    for handle in runs {
        let report = handle.join().unwrap();
        let result = report.results().next().expect("the check ran");
        eprintln!("socat: {}", echod::check::render_line(result));
        assert_ne!(report.exit_code(), 2, "{}", result.detail);
        assert!(!result.detail.is_empty());
        // socat echoes; what else it does varies from run to run (its
        // PIPE can deadlock on itself when a client stops reading, see
        // the README), so only the short echo is certain.
        if result.name == "echo" {
            assert_eq!(result.outcome, Outcome::Pass, "{}", result.detail);
        }
    }
}

// ---- the command line ----

/// Runs `echod ARGS`, bounded: returns its status, stdout and stderr.
#[track_caller]
fn echod(args: &[&str]) -> (ExitStatus, String, String) {
    let mut child = Command::new(ECHOD)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = crate::util::wait_bounded(&mut child, IO_TIMEOUT);
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, out, err)
}

#[test]
fn the_command_prints_a_line_per_check_and_exits_0_against_echod() {
    let server = Binary::start(&["--port", "0", "-b", "::1", "-b", "127.0.0.1"]);
    let addr = server.tcp.unwrap().to_string();
    let (status, out, err) = echod(&["check", &addr, "--only", "echo", "half-close"]);
    assert_eq!(status.code(), Some(0), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with(&format!("checking tcp echo at {addr}")),
        "{out}"
    );
    assert!(lines[1].starts_with("PASS  echo  "), "{out}");
    assert!(lines[2].starts_with("PASS  half-close  "), "{out}");
    assert!(out.contains("2 passed, 0 failed, 0 skipped"), "{out}");
}

#[test]
fn json_is_one_object_with_every_result() {
    let server = Binary::start(&["--port", "0", "-b", "127.0.0.1"]);
    let addr = server.udp.unwrap().to_string();
    let (status, out, err) = echod(&["check", "-u", &addr, "--json"]);
    assert_eq!(status.code(), Some(0), "{out}{err}");
    // One line for machines, as bench --json; `jq .` indents it.
    assert_eq!(out.lines().count(), 1, "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    assert_eq!(json["transport"], "udp");
    assert_eq!(json["summary"]["passed"], 3);
    assert_eq!(json["summary"]["exit_code"], 0);
    let checks = json["addresses"][0]["checks"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["udp-sizes", "udp-source", "udp-interleaved"]);
    assert_eq!(checks[0]["outcome"], "pass");
    assert!(checks[0]["figures"]["sizes"].is_array());
}

#[test]
fn a_failed_check_exits_1_and_names_the_defect() {
    let server = broken::tcp(Serve::Threads, broken::never_replying);
    let addr = server.addr.to_string();
    let (status, out, _) = echod(&["check", &addr, "--only", "echo", "--timeout", "0.3"]);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("FAIL  echo  "), "{out}");
    assert!(out.contains("[never-replying]"), "{out}");
}

#[test]
fn an_unreachable_server_exits_2_with_a_sentence() {
    let addr = format!("127.0.0.1:{}", free_port());
    let (status, out, err) = echod(&["check", &addr]);
    assert_eq!(status.code(), Some(2), "{out}{err}");
    assert!(
        err.contains("connection refused, so nothing listens"),
        "{err}"
    );
    assert!(err.contains("Is the server running"), "{err}");
}

#[test]
fn json_for_a_name_that_does_not_resolve_carries_the_error() {
    let (status, out, err) = echod(&["check", "no-such-host.invalid:7", "--json"]);
    assert_eq!(status.code(), Some(2), "{out}{err}");
    assert!(err.contains("no-such-host.invalid"), "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    assert!(
        json["error"]
            .as_str()
            .unwrap()
            .contains("no-such-host.invalid"),
        "{out}"
    );
    assert_eq!(json["summary"]["exit_code"], 2);
}

/// `-u` and `-W` as client, ping and bench have them.
#[test]
fn check_takes_the_short_flags_of_the_other_tools() {
    let server = Binary::start(&["--port", "0", "-b", "127.0.0.1"]);
    let addr = server.udp.unwrap().to_string();
    let (status, out, err) = echod(&["check", "-u", "-W", "2", "--only", "udp-source", &addr]);
    assert_eq!(status.code(), Some(0), "{out}{err}");
    assert!(out.contains("checking udp echo"), "{out}");
    assert!(out.contains("at most 2 s"), "{out}");
    assert!(out.contains("PASS  udp-source"), "{out}");
}

#[test]
fn usage_errors_exit_2_with_a_sentence() {
    for (args, needle) in [
        (&["check"][..], "give the address of the server"),
        (
            &["check", "--only", "echoo", "localhost:7"],
            "'echoo' is not a check",
        ),
        (
            &["check", "--udp", "--only", "echo", "localhost:7"],
            "drop --udp",
        ),
        (&["check", "localhost:http"], "not a port number"),
        (
            &["check", "--timeout", "0", "localhost:7"],
            "is not a duration from 10 ms to 3600 s",
        ),
    ] {
        let (status, out, err) = echod(args);
        assert_eq!(status.code(), Some(2), "{args:?}: {out}{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// One address grammar for every tool (issue 13): ping used to say it
/// could not resolve the host name ':'.
#[test]
fn ping_and_check_refuse_an_unclosed_bracket_with_one_sentence() {
    let sentence = "'[::1' has no closing ']'; write IPv6 addresses as [::1]:7007";
    for tool in ["ping", "check", "client", "bench"] {
        let (status, out, err) = echod(&[tool, "[::1"]);
        assert_eq!(status.code(), Some(2), "{tool}: {out}{err}");
        assert!(err.contains(sentence), "{tool}: {err}");
    }
}

/// One duration grammar: `check --timeout 250ms`, as `ping -W 250ms`.
#[test]
fn check_takes_a_timeout_in_milliseconds_as_ping_does() {
    let server = Binary::start(&["--port", "0", "-b", "127.0.0.1", "--no-udp"]);
    let addr = server.tcp.unwrap().to_string();
    let (status, out, err) = echod(&["check", "--timeout", "250ms", "--only", "echo", &addr]);
    assert_eq!(status.code(), Some(0), "{out}{err}");
    assert!(out.contains("PASS"), "{out}");
    let (status, out, err) = echod(&["ping", "-W", "250ms", "-c", "1", &addr]);
    assert_eq!(status.code(), Some(0), "{out}{err}");
}

#[test]
fn list_gives_every_check_with_its_reason_and_rule() {
    let (status, out, _) = echod(&["check", "--list"]);
    assert_eq!(status.code(), Some(0));
    let lines: Vec<&str> = out.lines().collect();
    for check in echod::check::CHECKS {
        let at = lines
            .iter()
            .position(|l| l.starts_with(&format!("{} ", check.name)))
            .unwrap_or_else(|| panic!("{} is listed: {out}", check.name));
        assert!(lines[at].contains(check.reason), "{}", lines[at]);
        assert_eq!(
            lines[at].contains("(--strict)"),
            check.strict,
            "{}",
            lines[at]
        );
        let rule = lines[at + 1].trim();
        assert_eq!(rule, format!("rule: {}", check.rule));
    }
    for cited in ["RFC 862", "RFC 9293", "RFC 1122"] {
        assert!(out.contains(cited), "{cited}: {out}");
    }
}

/// A small structural check of XML: every tag closed in order, and the
/// elements named `name` with their attributes.
fn elements(xml: &str, name: &str) -> Vec<String> {
    let mut open: Vec<String> = Vec::new();
    let mut found = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find('<') {
        let end = rest[start..].find('>').expect("a tag ends") + start;
        let tag = &rest[start + 1..end];
        rest = &rest[end + 1..];
        if tag.starts_with('?') {
            continue;
        }
        if let Some(closing) = tag.strip_prefix('/') {
            assert_eq!(open.pop().as_deref(), Some(closing), "tags nest: {xml}");
            continue;
        }
        let tag_name = tag.split([' ', '/']).next().unwrap().to_string();
        if tag_name == name {
            found.push(tag.to_string());
        }
        if !tag.ends_with('/') {
            open.push(tag_name);
        }
    }
    assert!(open.is_empty(), "unclosed {open:?}: {xml}");
    found
}

#[test]
fn junit_for_a_name_that_does_not_resolve_has_the_error() {
    let dir = std::env::temp_dir().join(format!("echod-junit-err-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("check.xml");
    let (status, out, err) = echod(&[
        "check",
        "no-such-host.invalid:7",
        "--junit",
        file.to_str().unwrap(),
    ]);
    assert_eq!(status.code(), Some(2), "{out}{err}");
    let xml = std::fs::read_to_string(&file).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let errors = elements(&xml, "error");
    assert_eq!(errors.len(), 1, "{xml}");
    assert!(errors[0].contains("no-such-host.invalid"), "{xml}");
    assert_eq!(elements(&xml, "testcase").len(), 1, "{xml}");
}

#[test]
fn junit_writes_a_test_case_per_check() {
    let server = broken::tcp(Serve::Threads, broken::never_replying);
    let addr = server.addr.to_string();
    let dir = std::env::temp_dir().join(format!("echod-junit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("check.xml");
    let file_arg = file.to_str().unwrap();
    let (status, out, err) = echod(&["check", &addr, "-W", "0.3", "--junit", file_arg]);
    assert_eq!(status.code(), Some(1), "{out}{err}");
    let xml = std::fs::read_to_string(&file).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"),
        "{xml}"
    );
    let suites = elements(&xml, "testsuites");
    assert_eq!(suites.len(), 1);
    assert!(suites[0].contains("tests=\"9\""), "{}", suites[0]);
    assert_eq!(elements(&xml, "testsuite").len(), 1);
    let cases = elements(&xml, "testcase");
    let names: Vec<&str> = cases
        .iter()
        .map(|c| {
            c.split("name=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
        })
        .collect();
    let expected: Vec<&str> = echod::check::CHECKS
        .iter()
        .filter(|c| c.transport == Transport::Tcp && !c.strict)
        .map(|c| c.name)
        .collect();
    assert_eq!(names, expected);
    let failures = elements(&xml, "failure");
    let skipped = elements(&xml, "skipped");
    let failed = out.lines().filter(|l| l.starts_with("FAIL  ")).count();
    let skips = out.lines().filter(|l| l.starts_with("SKIP  ")).count();
    assert_eq!((failures.len(), skipped.len()), (failed, skips), "{xml}");
    assert!(
        failures[0].contains("type=\"never-replying\""),
        "{}",
        failures[0]
    );
    assert!(xml.contains("rule: RFC 862"), "{xml}");
}

#[test]
fn help_documents_the_exit_status() {
    let (status, out, _) = echod(&["check", "--help"]);
    assert_eq!(status.code(), Some(0));
    assert!(out.contains("Exit status:"), "{out}");
    assert!(out.contains("1  at least one check failed"), "{out}");
}
