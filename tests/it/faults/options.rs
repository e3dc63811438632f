//! A careless operator's flags and environment (issue 12, §4): no value
//! makes echod or a tool panic or allocate without bound. Each number has a
//! range; the largest value in it works, one beyond is refused at once with
//! exit status 2 and a sentence that gives the range. `LISTEN_FDS` is
//! checked before anything is allocated for the sockets it names.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::process::{Command, Output, Stdio};
use std::thread;

use crate::util::{self, Binary, ECHOD, IO_TIMEOUT, InProcess, connect};

/// Runs a command to its end, bounded in time, and returns its output.
#[track_caller]
fn run(command: &mut Command) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    // Read both pipes while waiting, so a chatty child cannot block on one.
    let out = thread::spawn(move || {
        let mut bytes = Vec::new();
        stdout.read_to_end(&mut bytes).map(|_| bytes)
    });
    let err = thread::spawn(move || {
        let mut bytes = Vec::new();
        stderr.read_to_end(&mut bytes).map(|_| bytes)
    });
    let status = util::wait_bounded(&mut child, IO_TIMEOUT);
    Output {
        status,
        stdout: out.join().unwrap().unwrap(),
        stderr: err.join().unwrap().unwrap(),
    }
}

/// `echod ARGS`, which must be refused as a usage error: status 2, no
/// panic, and `words` (the range) in what it says. A server that started
/// instead would run until `run`'s bound and fail the test.
#[track_caller]
fn refused(args: &[&str], words: &str) {
    let output = run(Command::new(ECHOD).args(args));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(stderr.contains(words), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
}

/// The reproduction: `--grace 18446744073709551615`, then SIGTERM, panicked
/// ("overflow when adding duration to instant", exit 101). Now the value is
/// refused when parsed, as is anything beyond a day.
#[test]
fn a_grace_beyond_a_day_is_refused_with_the_range() {
    for grace in ["18446744073709551615", "86401"] {
        refused(
            &["-p", "0", "-b", "127.0.0.1", "--grace", grace],
            &format!("'{grace}' is not a number of seconds from 0 to 86400 (a day)"),
        );
    }
}

/// The largest grace accepted still drains: after SIGTERM the open session
/// is echoed to its end, and echod exits 0 once it has closed.
#[test]
fn the_largest_grace_drains_open_sessions_and_exits_zero() {
    let mut server = Binary::start(&["-p", "0", "-b", "127.0.0.1", "--no-udp", "--grace", "86400"]);
    let mut stream = connect(server.tcp.unwrap());
    stream.write_all(b"before").unwrap();
    let mut back = [0u8; 6];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"before");
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(server.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    server.wait_for_line("shutting down");
    // The session goes on within the grace, then ends with the client.
    stream.write_all(b"after").unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"after");
    server.wait_for_line("shutdown complete");
    let status = util::wait_bounded(&mut server.child, IO_TIMEOUT);
    assert_eq!(status.code(), Some(0), "no panic, a clean exit");
}

/// Every server number one step beyond its range: exit 2, the range said.
#[test]
fn server_numbers_beyond_their_range_are_refused_with_it() {
    let cases = [
        ("--idle-timeout", "604801", "from 0 to 604800 (a week)"),
        ("--buffer", "16777217", "from 512 to 16777216"),
        ("--buffer", "511", "from 512 to 16777216"),
        ("--max-connections", "0", "from 1 to 2147483584"),
        ("--max-connections", "2147483585", "from 1 to 2147483584"),
        ("--udp-rate", "10000001", "from 0 to 10000000"),
        ("--port", "65536", "from 0 to 65535"),
        ("--udp-allow-ports", "7,65536", "ports go from 1 to 65535"),
    ];
    for (flag, value, range) in cases {
        refused(&[&format!("{flag}={value}")], range);
    }
    // From the environment too.
    let output = run(Command::new(ECHOD).env("PORT", "70000"));
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("from 0 to 65535"));
}

/// Every server number at the top of its range at once: echod starts and
/// echoes over TCP and UDP.
#[test]
fn the_largest_server_numbers_work() {
    let server = Binary::start(&[
        "-p",
        "0",
        "-b",
        "127.0.0.1",
        "--buffer",
        "16777216",
        "--max-connections",
        "2147483584",
        "--idle-timeout",
        "604800",
        "--grace",
        "86400",
        "--udp-rate",
        "10000000",
        "--udp-allow-ports",
        "1-65535",
    ]);
    let payload = util::random_bytes(12, 256 * 1024);
    assert_eq!(util::echo_tcp(server.tcp.unwrap(), &payload), payload);
    let udp = util::udp_socket_for(server.udp.unwrap());
    udp.send_to(b"largest", server.udp.unwrap()).unwrap();
    let mut buf = [0u8; 16];
    let (n, _) = udp.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"largest");
}

/// Starts echod through `sh`, whose `exec` keeps the pid, so
/// `LISTEN_PID=$$` is echod's own pid; `setup` is shell text run first
/// (variables, redirections on the exec).
fn activated(setup: &str, redirect: &str) -> Output {
    run(Command::new("sh").args([
        "-c",
        &format!(r#"{setup} export LISTEN_PID=$$; exec "$0" "$@" {redirect}"#),
        ECHOD,
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
    ]))
}

/// The reproduction: `LISTEN_FDS=100000000` allocated over a gigabyte in
/// the listenfd crate before failing, and `2147483644` aborted on
/// allocation. Both are refused first, as above the open-files limit.
/// (Under `ulimit -v` of 512 MiB, the old allocation could not even be
/// made: the process aborted instead of saying anything.)
#[test]
fn listen_fds_above_the_open_files_limit_is_refused_before_allocating() {
    for count in ["100000000", "2147483644"] {
        let output = activated(
            &format!("ulimit -v 524288 && export LISTEN_FDS={count};"),
            "3</dev/null",
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "LISTEN_FDS says {count} sockets were passed, more than this process may have \
                 open (its open-files limit is"
            )),
            "{stderr}"
        );
    }
}

/// Within the limit, the last descriptor named must be open: only 3 is.
#[test]
fn listen_fds_naming_a_descriptor_that_is_not_open_is_refused() {
    let output = activated("export LISTEN_FDS=5;", "3</dev/null");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "LISTEN_FDS says 5 socket(s) were passed, as descriptors 3 to 7, but descriptor 7 \
             is not open"
        ),
        "{stderr}"
    );
}

/// Words, signs and a start other than 3: a sentence, and no socket taken.
#[test]
fn malformed_listen_variables_are_sentences() {
    for (setup, says) in [
        (
            "export LISTEN_FDS=-1;",
            "LISTEN_FDS is set to \"-1\", which is not a number of sockets",
        ),
        (
            "export LISTEN_FDS=two;",
            "LISTEN_FDS is set to \"two\", which is not a number of sockets",
        ),
        (
            "export LISTEN_FDS=1 LISTEN_FDS_FIRST_FD=0;",
            "LISTEN_FDS_FIRST_FD is set to \"0\", which is not 3",
        ),
    ] {
        let output = activated(setup, "3</dev/null");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{setup} {stderr}");
        assert!(stderr.contains(says), "{setup} {stderr}");
    }
}

/// `LISTEN_FDS=0` is "no sockets passed", as sd_listen_fds(3) reads it:
/// echod binds its own and serves.
#[test]
fn listen_fds_zero_binds_as_usual() {
    let echod = Binary::start_with(Command::new("sh").args([
        "-c",
        r#"export LISTEN_PID=$$ LISTEN_FDS=0; exec "$0" "$@""#,
        ECHOD,
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
    ]));
    assert_eq!(util::echo_tcp(echod.tcp.unwrap(), b"own"), b"own");
}

/// The tools' numbers beyond their ranges: exit 2 with the range, where
/// `-W 0` once made every ping probe count as lost and the client fail,
/// and `--rate 1e-300` panicked a bench worker.
#[test]
fn tool_numbers_beyond_their_range_are_refused_with_it() {
    let cases: [(&[&str], &str); 7] = [
        (&["ping", "-W", "0"], "from 1 ms to 3600 s"),
        (&["ping", "--interval", "3601"], "from 0 ms to 3600 s"),
        (&["client", "-W", "NaN"], "from 1 ms to 3600 s"),
        (&["bench", "--rate", "1e-300"], "from 0.01 to 1000000000"),
        (&["bench", "--warmup", "1e300"], "from 0 ms to 3600 s"),
        (&["bench", "-d", "86401"], "outside 1 ms to 1 day"),
        (&["check", "--timeout", "inf"], "from 10 ms to 3600 s"),
    ];
    for (args, range) in cases {
        let mut args = args.to_vec();
        args.push("127.0.0.1:9");
        refused(&args, range);
    }
}

/// Each bench flag is within its range here, but together they would need
/// terabytes: refused before anything is allocated or connected.
#[test]
fn bench_refuses_flags_whose_product_needs_more_memory_than_allowed() {
    let output =
        run(Command::new(ECHOD).args(["bench", "-c", "100000", "-s", "67108864", "127.0.0.1:9"]));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("would need about 12806254 MiB of memory, more than the 4096 MiB"),
        "{stderr}"
    );
}

/// The tools at the ends of their ranges work: the slowest bench rate
/// sends its first message and stops at the end; ping with no interval
/// and the longest timeout.
#[test]
fn tools_at_the_ends_of_their_ranges_work() {
    let server = InProcess::v4();
    let addr = server.tcp_addr().to_string();
    let output = run(Command::new(ECHOD).args([
        "bench", "--rate", "0.01", "-c", "2", "-d", "0.3", "--warmup", "0", "--json", &addr,
    ]));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = run(Command::new(ECHOD).args(["ping", "-c", "2", "-i", "0", "-W", "3600", &addr]));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
