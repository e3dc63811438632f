//! `echod bench`: a short load against the real server reports messages
//! and no errors; against a server that damages the echo it counts errors
//! and fails.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::tools::{Fault, Input, Run, collect, echod, faulty_tcp};
use crate::util::{Binary, ECHOD, IO_TIMEOUT, InProcess, free_port};

/// Runs `echod bench --json --warmup 0 ARGS`; returns the run and its
/// report.
#[track_caller]
fn bench_json(args: &[&str]) -> (Run, Value) {
    let all: Vec<&str> = ["bench", "--json", "--warmup", "0"]
        .iter()
        .chain(args)
        .copied()
        .collect();
    let run = echod(&all, Input::Bytes(b""));
    let report = serde_json::from_slice(&run.stdout).unwrap_or_else(|err| {
        panic!(
            "stdout is not one JSON object ({err}): {}; stderr: {}",
            run.stdout_text(),
            run.stderr
        )
    });
    (run, report)
}

fn count(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {report}"))
}

#[test]
fn json_report_against_the_server_has_messages_and_no_errors() {
    let server = Binary::start(&["--port", "0", "-b", "127.0.0.1"]);
    let addr = server.tcp.unwrap().to_string();
    let (run, report) = bench_json(&["-d", "2", "-c", "4", &addr]);
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    assert!(count(&report, "messages") > 0, "{report}");
    assert_eq!(count(&report, "errors"), 0, "{report}");
    assert_eq!(report["transport"], "tcp");
    assert_eq!(report["concurrency"], 4);
    // Opened at the start, inside the window (no warm-up), and kept.
    assert_eq!(report["connections"], 4);
    assert_eq!(report["reconnect"], Value::Null);
    assert!(
        report["latency_us"]["p99"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert_eq!(count(&report, "bytes"), 64 * count(&report, "messages"));
    assert_eq!(report["interrupted"], false, "{report}");
}

#[test]
fn a_flipped_byte_counts_errors_and_fails() {
    let addr = faulty_tcp(Fault::FlipByteAt(100)).to_string();
    let (run, report) = bench_json(&["-d", "0.5", "-c", "2", &addr]);
    assert_eq!(run.code(), 1, "stderr: {}", run.stderr);
    assert!(count(&report, "mismatches") > 0, "{report}");
    assert!(count(&report, "errors") > 0, "{report}");
    // Byte 100 is byte 36 of message 1 (64-byte messages).
    assert!(
        run.stderr.contains("message 1: byte 36 differs"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_server_that_closes_early_counts_resets() {
    let addr = faulty_tcp(Fault::EchoOnly(64 * 3)).to_string();
    let (run, report) = bench_json(&["-d", "0.5", "-c", "1", "-W", "300ms", &addr]);
    assert_eq!(run.code(), 1, "stderr: {}", run.stderr);
    assert!(
        count(&report, "stalls") + count(&report, "resets") > 0,
        "{report}"
    );
}

#[test]
fn pipelined_open_loop_and_text_report() {
    let server = InProcess::v4();
    let addr = server.tcp_addr().to_string();
    let run = echod(
        &[
            "bench",
            "-d",
            "0.5",
            "--warmup",
            "0",
            "-c",
            "3",
            "--pipeline",
            "4",
            "--rate",
            "3000",
            "-s",
            "100",
            &addr,
        ],
        Input::Bytes(b""),
    );
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    let out = run.stdout_text();
    assert!(out.contains("open loop at 3000 messages/s"), "{out}");
    assert!(out.contains("errors     0 ("), "{out}");
    assert!(out.contains("latency    p50 "), "{out}");
    // Not a terminal: no progress bar drawing on stderr.
    assert!(!run.stderr.contains('\u{1b}'), "{}", run.stderr);
}

#[test]
fn udp_against_the_server() {
    let server = InProcess::for_load();
    let addr = server.udp_addr().to_string();
    let (run, report) = bench_json(&["--udp", "-d", "0.5", "-c", "2", "--pipeline", "2", &addr]);
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    assert!(count(&report, "messages") > 0, "{report}");
    assert_eq!(count(&report, "errors"), 0, "{report}");
}

#[test]
fn two_threads_share_the_connections() {
    let server = InProcess::v4();
    let addr = server.tcp_addr().to_string();
    let (run, report) = bench_json(&["-d", "0.5", "-c", "5", "--threads", "2", &addr]);
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    assert_eq!(report["threads"], 2);
    // Split 2 + 3, not 2 each: every connection asked for is opened.
    assert_eq!(report["connections"], 5, "{report}");
    assert_eq!(count(&report, "errors"), 0, "{report}");
}

/// Over UDP a datagram that never comes back is counted lost, and fails
/// the run.
#[test]
fn udp_datagrams_not_answered_are_lost() {
    let addr = crate::tools::drop_every_other_udp().to_string();
    let (run, report) = bench_json(&["--udp", "-d", "0.5", "-c", "1", "-W", "100ms", &addr]);
    assert_eq!(run.code(), 1, "stderr: {}", run.stderr);
    assert!(count(&report, "messages") > 0, "{report}");
    assert!(count(&report, "lost") > 0, "{report}");
    assert_eq!(count(&report, "mismatches"), 0, "{report}");
}

#[test]
fn a_closed_port_counts_failed_connects() {
    let addr = format!("127.0.0.1:{}", free_port());
    let (run, report) = bench_json(&["-d", "0.3", "-c", "1", &addr]);
    assert_eq!(run.code(), 1);
    assert!(count(&report, "connect_failures") > 0, "{report}");
    assert!(run.stderr.contains("refused"), "{}", run.stderr);
}

#[test]
fn ipv6_loopback_tcp_and_udp() {
    let server = InProcess::start(echod_server::server::ServerConfig {
        bind: vec!["::1".parse().unwrap()],
        udp_guard: crate::util::no_udp_rate_limit(),
        ..Default::default()
    });
    for (flag, addr) in [
        ("--pipeline=2", server.tcp_addr()),
        ("--udp", server.udp_addr()),
    ] {
        let addr = addr.to_string();
        let (run, report) = bench_json(&[flag, "-d", "0.3", "-c", "2", &addr]);
        assert_eq!(run.code(), 0, "{flag}: stderr: {}", run.stderr);
        assert!(count(&report, "messages") > 0, "{report}");
        assert_eq!(count(&report, "errors"), 0, "{report}");
    }
}

#[test]
fn dash_p_is_no_pipeline_and_a_bare_port_is_no_address() {
    // `-p` is the server's port; bench once took it for the pipeline and
    // benched port 7 with a pipeline of 17507.
    let run = echod(&["bench", "-p", "17507", "127.0.0.1"], Input::Bytes(b""));
    assert_eq!(run.code(), 2, "stderr: {}", run.stderr);
    assert!(run.stderr.contains("'-p'"), "{}", run.stderr);
    // A number where the address goes is a port typed in the wrong place.
    let run = echod(&["bench", "-d", "1", "17507"], Input::Bytes(b""));
    assert_eq!(run.code(), 2, "stderr: {}", run.stderr);
    assert!(
        run.stderr
            .contains("'17507' is a port, not an address; write 127.0.0.1:17507 or HOST:17507"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty());
}

/// Starts `echod bench ARGS` with its output piped, for tests that signal
/// it or bound it more tightly than [`echod`] does.
fn spawn_bench(args: &[&str]) -> Child {
    Command::new(ECHOD)
        .arg("bench")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("echod starts")
}

#[test]
fn a_closed_port_ends_the_run_at_once_with_one_sentence() {
    // Asked for 30 s; a server that was never reached is given up on
    // within a couple of seconds. The bound is generous: only a run that
    // goes on for its whole duration fails it.
    let addr = format!("127.0.0.1:{}", free_port());
    let child = spawn_bench(&["-d", "30", "-c", "4", &addr]);
    let run = collect(child, Duration::from_secs(15));
    assert_eq!(run.code(), 1, "stderr: {}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout_text());
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "one sentence, not a line per connect: {lines:?}"
    );
    assert!(
        lines[0].starts_with("echod bench: gave up after 1.5 s without a single connection: ")
            && lines[0].contains("refused: nothing is listening on TCP port"),
        "{}",
        lines[0]
    );
}

#[test]
fn a_closed_port_ends_a_json_or_udp_run_at_once_too() {
    let port = free_port().to_string();
    let addr = format!("127.0.0.1:{port}");
    // --json: the report still comes, for scripts, with the failures.
    let child = spawn_bench(&["--json", "-d", "30", "-c", "2", &addr]);
    let run = collect(child, Duration::from_secs(15));
    assert_eq!(run.code(), 1, "stderr: {}", run.stderr);
    let report: Value = serde_json::from_slice(&run.stdout).expect("one JSON object");
    assert!(count(&report, "connect_failures") > 0, "{report}");
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    // UDP: loopback answers with ICMP port unreachable.
    let child = spawn_bench(&["--udp", "-d", "30", "-c", "2", &addr]);
    let run = collect(child, Duration::from_secs(15));
    assert_eq!(run.code(), 1, "stderr: {}", run.stderr);
    assert!(
        run.stderr.starts_with(&format!(
            "echod bench: gave up after 1.5 s without a single echo: {addr} answered that \
             nothing is listening on UDP port {port}"
        )),
        "{}",
        run.stderr
    );
}

/// Accepts one connection on `listener` within [`IO_TIMEOUT`] (failing the
/// test otherwise) and echoes it on a thread until EOF; returns once the
/// first echo went back.
#[track_caller]
fn accept_and_echo(listener: &TcpListener) {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + IO_TIMEOUT;
    let conn = loop {
        match listener.accept() {
            Ok((conn, _)) => break conn,
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Err(err) => panic!("bench never connected: {err}"),
        }
    };
    let (echoed, first) = mpsc::channel();
    thread::spawn(move || echo_until_eof(conn, echoed));
    first
        .recv_timeout(IO_TIMEOUT)
        .expect("bench sent something to echo");
}

fn echo_until_eof(mut conn: TcpStream, echoed: mpsc::Sender<()>) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = conn.read(&mut buf) {
        if conn.write_all(&buf[..n]).is_err() {
            break;
        }
        let _ = echoed.send(());
    }
}

#[test]
fn ctrl_c_ends_the_run_with_a_report_that_says_so() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let child = spawn_bench(&["--json", "--warmup", "0", "-d", "60", "-c", "1", &addr]);
    // Echoing: bench has set up its SIGINT handler (before any worker),
    // and has a message to report.
    accept_and_echo(&listener);
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let run = collect(child, Duration::from_secs(30));
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    let report: Value = serde_json::from_slice(&run.stdout).expect("one JSON object");
    assert_eq!(report["interrupted"], true, "{report}");
    assert!(report["duration_s"].as_f64().unwrap() < 60.0, "{report}");
    assert!(run.stderr.contains("interrupted"), "{}", run.stderr);
}

#[test]
fn a_line_buffered_server_gets_a_hint_that_names_check() {
    let addr = faulty_tcp(Fault::LineBuffered).to_string();
    // One connection, and a stall timeout past the run's end, so the only
    // message sent is message 0 of connection 0 (which does not end in a
    // newline): the run sends the same bytes every time.
    let (run, report) = bench_json(&["-d", "0.5", "-c", "1", "-W", "1", &addr]);
    assert_eq!(run.code(), 1, "stderr: {}", run.stderr);
    assert!(count(&report, "stalls") > 0, "{report}");
    assert!(
        run.stderr.contains(&format!(
            "no message came back whole from {addr}: messages are binary and do not end in a \
             newline, so a server that echoes only whole lines holds them back; run `echod \
             check {addr} --only echo unbuffered`"
        )),
        "{}",
        run.stderr
    );
}

#[test]
fn reconnect_1_opens_a_connection_per_message_and_times_the_connects() {
    let server = InProcess::v4();
    let addr = server.tcp_addr().to_string();
    let (run, report) = bench_json(&["--reconnect", "1", "-d", "0.5", "-c", "2", &addr]);
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    assert_eq!(report["concurrency"], 2, "{report}");
    assert_eq!(report["reconnect"], 1, "{report}");
    let (messages, connections) = (count(&report, "messages"), count(&report, "connections"));
    // Each connection made in the window carries one message, whose echo
    // the run waits for; at most one per connection slot made at the end
    // had nothing sent on it any more.
    assert!(messages > 2 * 2, "connections were replaced: {report}");
    assert!((messages..=messages + 2).contains(&connections), "{report}");
    let connect = &report["latency_us"]["connect"];
    assert!(connect["p99"].as_f64().unwrap() > 0.0, "{report}");
    assert!(
        report["latency_us"]["p99"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(
        report["connections_per_s"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert_eq!(count(&report, "errors"), 0, "{report}");
}

#[test]
fn reconnect_is_for_tcp_only() {
    let run = echod(
        &["bench", "--udp", "--reconnect", "1", "127.0.0.1:7"],
        Input::Bytes(b""),
    );
    assert_eq!(run.code(), 2, "stderr: {}", run.stderr);
    assert!(
        run.stderr.contains("'--reconnect <MESSAGES>'"),
        "{}",
        run.stderr
    );
}

/// A file in the temp directory for one test, removed on drop.
struct OutFile(std::path::PathBuf);

impl OutFile {
    fn new(name: &str) -> OutFile {
        let path = std::env::temp_dir().join(format!("echod-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        OutFile(path)
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("the temp directory's path is UTF-8")
    }

    #[track_caller]
    fn text(&self) -> String {
        std::fs::read_to_string(&self.0).expect("the file was written")
    }
}

impl Drop for OutFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn intervals_csv_and_hgrm_cover_the_measured_window() {
    let server = InProcess::v4();
    let addr = server.tcp_addr().to_string();
    let (csv, hgrm) = (OutFile::new("seconds.csv"), OutFile::new("latency.hgrm"));
    // 1.5 s after a warm-up: two seconds, the last one half, and the
    // warm-up in neither.
    let run = echod(
        &[
            "bench",
            "--json",
            "--warmup",
            "0.3",
            "-d",
            "1.5",
            "-c",
            "2",
            "--csv",
            csv.arg(),
            "--hdr",
            hgrm.arg(),
            &addr,
        ],
        Input::Bytes(b""),
    );
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    let report: Value = serde_json::from_slice(&run.stdout).expect("one JSON object");
    let messages = count(&report, "messages");
    let intervals = report["intervals"].as_array().expect("intervals");
    assert_eq!(intervals.len(), 2, "{report}");
    assert_eq!(intervals[0]["start_s"], 0);
    assert_eq!(intervals[0]["duration_s"], 1.0);
    let last = intervals[1]["duration_s"].as_f64().unwrap();
    assert!(last > 0.0 && last < 1.0, "{report}");
    let per_second: Vec<u64> = intervals.iter().map(|i| count(i, "messages")).collect();
    assert_eq!(per_second.iter().sum::<u64>(), messages, "{report}");
    for interval in intervals {
        assert_eq!(count(interval, "errors"), 0, "{report}");
        assert!(interval["p99_us"].as_f64().unwrap() >= interval["p50_us"].as_f64().unwrap());
        let bytes = 64 * count(interval, "messages");
        assert_eq!(interval["mb"].as_f64().unwrap(), bytes as f64 / 1e6);
    }

    // The CSV: a header, then the same seconds.
    let csv = csv.text();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("start_s,duration_s,messages,mb,errors,p50_us,p99_us")
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 2, "{csv}");
    for (row, messages) in rows.iter().zip(&per_second) {
        assert_eq!(row.len(), 7, "{csv}");
        assert_eq!(row[2].parse::<u64>().unwrap(), *messages, "{csv}");
        for cell in &row[3..] {
            cell.parse::<f64>().expect("a number");
        }
    }

    // The .hgrm: HdrHistogram's header, rows of value, percentile, count
    // and 1/(1-p) (not on the 100 % row), and the footer.
    let hgrm = hgrm.text();
    let lines: Vec<&str> = hgrm.lines().collect();
    assert_eq!(
        lines[..2],
        [
            "       Value     Percentile TotalCount 1/(1-Percentile)",
            ""
        ]
    );
    let (rows, footer) = lines[2..].split_at(lines.len() - 5);
    let mut previous = (0.0, 0.0, 0);
    for row in rows {
        let cells: Vec<&str> = row.split_whitespace().collect();
        let value: f64 = cells[0].parse().unwrap();
        let percentile: f64 = cells[1].parse().unwrap();
        let total: u64 = cells[2].parse().unwrap();
        assert!(
            value >= previous.0 && percentile >= previous.1 && total >= previous.2,
            "{row}"
        );
        assert_eq!(cells.len(), if percentile < 1.0 { 4 } else { 3 }, "{row}");
        previous = (value, percentile, total);
    }
    assert_eq!(previous.1, 1.0, "the last row is 100 %: {hgrm}");
    assert_eq!(previous.2, messages, "{hgrm}");
    assert!(footer[0].starts_with("#[Mean    = "), "{hgrm}");
    assert!(
        footer[1].ends_with(&format!("Total count    = {messages:>12}]")),
        "{hgrm}"
    );
    assert!(footer[2].starts_with("#[Buckets = "), "{hgrm}");
}

#[test]
fn an_output_file_that_cannot_be_created_is_refused_before_the_run() {
    let run = echod(
        &["bench", "--csv", "/nonexistent-dir/s.csv", "127.0.0.1:7"],
        Input::Bytes(b""),
    );
    assert_eq!(run.code(), 2, "stderr: {}", run.stderr);
    assert!(
        run.stderr
            .starts_with("echod bench: could not create /nonexistent-dir/s.csv: "),
        "{}",
        run.stderr
    );
}
