//! Running echod for real (issue 7): socket activation through Debian's
//! `systemd-socket-activate`, several processes on one port with
//! `--reuseport`, the teaching trace, the generated man page and
//! completions, and the systemd unit files in `contrib/systemd/`.
//!
//! Tests that need a program the machine lacks say so and pass; `.ci/run`
//! installs them all.

use std::collections::HashMap;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::{self, Binary, ECHOD, IO_TIMEOUT};

/// The most connections the reuseport test makes while waiting for the
/// kernel to give each instance one. It hashes the peer's port, so with two
/// instances the chance that 200 connections all land on one is 2^-199.
const REUSEPORT_MAX_CONNECTIONS: usize = 200;

const SOCKET_ACTIVATE: &str = "systemd-socket-activate";

/// True if `program` is installed; otherwise says which test skips (a
/// failure under `ECHOD_TEST_STRICT`, see [`util::skip`]).
fn have_or_skip(program: &str, test: &str) -> bool {
    let found = util::have(program);
    if !found {
        util::skip(&format!(
            "{test}: {program} is not installed (.ci/run installs it)"
        ));
    }
    found
}

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
    let status = crate::util::wait_bounded(&mut child, IO_TIMEOUT);
    Output {
        status,
        stdout: out.join().unwrap().unwrap(),
        stderr: err.join().unwrap().unwrap(),
    }
}

/// Connects as soon as something listens on `addr`: the service manager
/// may not have opened the port yet.
#[track_caller]
fn connect_once_listening(addr: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
            Ok(stream) => {
                stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
                return stream;
            }
            Err(err) if err.kind() == ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(20));
            }
            Err(err) => panic!("could not connect to {addr}: {err}"),
        }
    }
}

/// Sends a payload small enough for the socket buffers, half-closes, and
/// reads the echo to EOF.
#[track_caller]
fn exchange(stream: &mut TcpStream, payload: &[u8]) -> Vec<u8> {
    stream.write_all(payload).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    stream
        .read_to_end(&mut back)
        .expect("reads the echo to EOF");
    back
}

/// A scratch directory for one test, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("echod-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (and reaped) when the test ends, even by panic.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

// --- socket activation ----------------------------------------------------

#[test]
fn socket_activation_serves_the_inherited_tcp_listeners_v4_and_v6() {
    if !have_or_skip(SOCKET_ACTIVATE, "socket activation (tcp)") {
        return;
    }
    let port = util::free_port();
    let v4 = SocketAddr::from(([127, 0, 0, 1], port));
    let v6: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    // This connection is what starts echod: it waits in the backlog of the
    // socket systemd-socket-activate opened, and must be served, not lost.
    let first = thread::spawn(move || exchange(&mut connect_once_listening(v4), b"wake up"));
    let echod = Binary::start_with(Command::new(SOCKET_ACTIVATE).args([
        "--listen",
        &v4.to_string(),
        "--listen",
        &v6.to_string(),
        "--fdname=echo-v4:echo-v6",
        ECHOD,
        "--no-udp",
    ]));
    assert_eq!(first.join().unwrap(), b"wake up");
    assert_eq!(echod.tcp, Some(v4), "the first inherited socket is served");

    let payload = util::random_bytes(7, 256 * 1024);
    assert_eq!(util::echo_tcp(v6, &payload), payload, "over IPv6");
    assert_eq!(util::echo_tcp(v4, &payload), payload, "over IPv4");
    let startup = echod.startup.join("\n");
    for named in [
        format!("tcp {v4} passed by the service manager as descriptor 3, named \"echo-v4\""),
        format!("tcp {v6} passed by the service manager as descriptor 4, named \"echo-v6\""),
    ] {
        assert!(startup.contains(&named), "{named:?} not in:\n{startup}");
    }
}

#[test]
fn socket_activation_serves_the_inherited_udp_socket() {
    if !have_or_skip(SOCKET_ACTIVATE, "socket activation (udp)") {
        return;
    }
    let port = util::free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // The first datagram starts echod and must come back. Until the port
    // is open, loopback answers with "port unreachable", which a
    // connected UDP socket reports as ConnectionRefused: then send again.
    let first = thread::spawn(move || {
        let socket = util::udp_socket_for(addr);
        socket.connect(addr).unwrap();
        let deadline = Instant::now() + IO_TIMEOUT;
        let mut buf = [0u8; 64];
        loop {
            socket.send(b"first datagram").unwrap();
            match socket.recv(&mut buf) {
                Ok(n) => return buf[..n].to_vec(),
                Err(err) if err.kind() == ErrorKind::ConnectionRefused => {
                    assert!(Instant::now() < deadline, "nothing ever listened on {addr}");
                    thread::sleep(Duration::from_millis(20));
                }
                Err(err) => panic!("no echo of the first datagram: {err}"),
            }
        }
    });
    let echod = Binary::start_with(Command::new(SOCKET_ACTIVATE).args([
        "--datagram",
        "--listen",
        &addr.to_string(),
        "--fdname=echo-udp",
        ECHOD,
        "--no-tcp",
    ]));
    assert_eq!(first.join().unwrap(), b"first datagram");
    assert_eq!(echod.udp, Some(addr));

    let socket = util::udp_socket_for(addr);
    let mut buf = vec![0u8; 65_536];
    for payload in [Vec::new(), util::random_bytes(8, 60_000)] {
        socket.send_to(&payload, addr).unwrap();
        let (n, from) = socket.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&payload[..], addr));
    }
    assert!(
        echod.startup.join("\n").contains("named \"echo-udp\""),
        "{:?}",
        echod.startup
    );
}

#[test]
fn socket_activation_ignores_sockets_meant_for_another_process() {
    // LISTEN_PID names another process: these variables were inherited
    // from a parent, so echod binds its own sockets as usual.
    let echod = Binary::start_with(
        Command::new(ECHOD)
            .args(["--port", "0", "--bind", "127.0.0.1"])
            .env("LISTEN_PID", "1")
            .env("LISTEN_FDS", "2")
            .env("LISTEN_FDNAMES", "a:b"),
    );
    let addr = echod.tcp.unwrap();
    assert_eq!(util::echo_tcp(addr, b"mine"), b"mine");
}

#[test]
fn socket_activation_refuses_a_descriptor_that_is_not_a_socket() {
    // `exec` keeps the shell's pid, so LISTEN_PID=$$ is echod's pid; the
    // descriptor 3 it inherits is /dev/null. Were activation ignored, echod
    // would serve port 0 and never exit, and `run` would fail the test.
    let output = run(Command::new("sh").args([
        "-c",
        r#"export LISTEN_PID=$$ LISTEN_FDS=1; exec "$0" "$@" 3</dev/null"#,
        ECHOD,
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
    ]));
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains(
            "socket activation: descriptor 3 (named \"unknown\") is not a TCP or UDP socket"
        ),
        "{stderr}"
    );
}

#[test]
fn socket_activation_with_accept_yes_is_refused_with_advice() {
    if !have_or_skip(SOCKET_ACTIVATE, "socket activation with --accept") {
        return;
    }
    let port = util::free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // --accept hands each child a connection, not the listener: the
    // equivalent of Accept=yes in a .socket unit.
    let mut manager = KillOnDrop(
        Command::new(SOCKET_ACTIVATE)
            .args(["--accept", "--listen", &addr.to_string(), ECHOD])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let log = util::forward_lines(manager.0.stderr.take().unwrap());
    // Held open until echod has spoken: it is the connection echod got.
    let _connection = connect_once_listening(addr);
    // echod's message shares the pipe with the manager's own lines and
    // may come in pieces between them: gather until the advice is there.
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut stderr = String::new();
    while !stderr.contains("set Accept=no") {
        let left = deadline.saturating_duration_since(Instant::now());
        match log.recv_timeout(left) {
            Ok(line) => stderr.push_str(&line),
            Err(_) => panic!("echod never explained why it stopped:\n{stderr}"),
        }
    }
    assert!(
        stderr.contains("is a TCP connection, not a listening socket"),
        "{stderr}"
    );
}

// --- one process per core -------------------------------------------------

/// Which of several servers logged "accepted from PEER", read from their
/// `-v` logs.
struct Acceptors<'a> {
    servers: Vec<&'a Binary>,
    accepted: HashMap<String, usize>,
}

impl<'a> Acceptors<'a> {
    fn new(servers: Vec<&'a Binary>) -> Self {
        Acceptors {
            servers,
            accepted: HashMap::new(),
        }
    }

    /// The index of the server that accepted `peer` (bounded wait).
    #[track_caller]
    fn of(&mut self, peer: SocketAddr) -> usize {
        let peer = peer.to_string();
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            if let Some(&i) = self.accepted.get(&peer) {
                return i;
            }
            for (i, server) in self.servers.iter().enumerate() {
                while let Ok(line) = server.log.try_recv() {
                    if let Some(from) = line.split("accepted from ").nth(1) {
                        self.accepted.insert(from.trim().to_string(), i);
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no server logged accepting {peer}"
            );
            thread::sleep(Duration::from_millis(2));
        }
    }
}

#[test]
fn reuseport_lets_two_instances_share_a_port_and_both_echo() {
    let args = ["--bind", "127.0.0.1", "--no-udp", "--reuseport", "-v"];
    let first = Binary::start(&[&["--port", "0"][..], &args].concat());
    let addr = first.tcp.unwrap();
    let port = addr.port().to_string();
    let second = Binary::start(&[&["--port", port.as_str()][..], &args].concat());
    assert_eq!(second.tcp, Some(addr));

    let mut acceptors = Acceptors::new(vec![&first, &second]);
    let mut echoed_by = [0usize; 2];
    for i in 0..REUSEPORT_MAX_CONNECTIONS {
        let mut stream = util::connect(addr);
        let peer = stream.local_addr().unwrap();
        let payload = format!("connection {i} from {peer}");
        assert_eq!(
            exchange(&mut stream, payload.as_bytes()),
            payload.as_bytes()
        );
        echoed_by[acceptors.of(peer)] += 1;
        if echoed_by.iter().all(|&n| n > 0) {
            return;
        }
    }
    panic!("after {REUSEPORT_MAX_CONNECTIONS} connections, echoed by: {echoed_by:?}");
}

#[test]
fn without_reuseport_a_second_instance_is_refused_the_port() {
    let first = Binary::start(&["--port", "0", "--bind", "127.0.0.1", "--no-udp"]);
    let port = first.tcp.unwrap().port().to_string();
    let output =
        run(Command::new(ECHOD).args(["--port", &port, "--bind", "127.0.0.1", "--no-udp"]));
    assert!(!output.status.success());
    assert!(
        stderr_of(&output).contains("is already in use"),
        "{}",
        stderr_of(&output)
    );
}

// --- the teaching trace ---------------------------------------------------

/// Starts echod with `flag`, echoes one connection, and returns the log
/// lines up to its close.
fn trace_of_one_connection(flag: &str) -> Vec<String> {
    let echod = Binary::start(&["--port", "0", "--bind", "127.0.0.1", "--no-udp", flag]);
    assert_eq!(util::echo_tcp(echod.tcp.unwrap(), b"trace me"), b"trace me");
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut lines = Vec::new();
    loop {
        let line = echod
            .next_line_before(deadline)
            .expect("echod logged the connection's close");
        let closed = line.contains("connection 0: closed");
        lines.push(line);
        if closed {
            return lines;
        }
    }
}

/// The position of the first line containing `needle`.
#[track_caller]
fn position(lines: &[String], needle: &str) -> usize {
    lines
        .iter()
        .position(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("no line contains {needle:?}:\n{}", lines.join("\n")))
}

#[test]
fn trace_events_logs_each_readiness_event_before_what_it_caused() {
    for flag in ["--trace-events", "-vvv"] {
        let lines = trace_of_one_connection(flag);
        let accept_event = position(&lines, "(tcp listener 0): readable");
        let accepted = position(&lines, "connection 0: accepted from");
        let read_event = position(&lines, "token 0 (connection 0): readable");
        let read = position(&lines, "connection 0: read 8");
        assert!(
            accept_event < accepted && accepted < read_event && read_event < read,
            "{flag}: events out of order:\n{}",
            lines.join("\n")
        );
        position(&lines, "poll returned");
    }
}

#[test]
fn without_trace_events_readiness_is_not_logged() {
    let lines = trace_of_one_connection("-vv");
    position(&lines, "connection 0: read 8"); // -vv still logs the syscalls
    assert!(
        !lines.iter().any(|line| line.contains("token ")),
        "{}",
        lines.join("\n")
    );
}

// --- man page and completions ---------------------------------------------

#[track_caller]
fn generate(what: &str) -> String {
    let output = run(Command::new(ECHOD).args(["generate", what]));
    assert!(output.status.success(), "{}", stderr_of(&output));
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn generate_man_prints_a_roff_page_with_the_real_options() {
    let page = generate("man");
    assert!(page.contains(".TH echod 1"), "{page}");
    for option in [
        r"\-\-port",
        r"\-\-bind",
        r"\-\-reuseport",
        r"\-\-trace\-events",
        r"\-\-no\-udp",
        r"echod\-generate(1)",
    ] {
        assert!(page.contains(option), "the man page lacks {option}");
    }
}

#[test]
fn generate_completions_for_bash_zsh_and_fish_know_the_options() {
    // Each shell's own way of registering completions for a command.
    for (shell, marker) in [
        ("bash", "complete -F _echod"),
        ("zsh", "#compdef echod"),
        ("fish", "complete -c echod"),
    ] {
        let script = generate(shell);
        assert!(
            script.contains(marker),
            "{shell} completions lack {marker:?}"
        );
        for option in ["reuseport", "trace-events", "port", "generate"] {
            assert!(script.contains(option), "{shell} completions lack {option}");
        }
        // The shell itself parses the script, where it is installed.
        if util::have(shell) {
            let dir = TempDir::new(&format!("completion-{shell}"));
            let file = dir.0.join("echod-completion");
            fs::write(&file, &script).unwrap();
            let output = run(Command::new(shell).arg("-n").arg(&file));
            assert!(
                output.status.success(),
                "{shell} -n: {}",
                stderr_of(&output)
            );
        } else {
            eprintln!("{shell} is not installed: its completions are not syntax-checked");
        }
    }
}

#[test]
fn generate_with_dir_writes_the_files_it_lists() {
    let dir = TempDir::new("generate-dir");
    for what in ["man", "bash", "zsh", "fish"] {
        let output = run(Command::new(ECHOD)
            .args(["generate", what, "--dir"])
            .arg(&dir.0));
        assert!(output.status.success(), "{}", stderr_of(&output));
        let listing = String::from_utf8(output.stdout).unwrap();
        assert!(!listing.is_empty(), "{what}: no file listed");
        for path in listing.lines() {
            let size = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            assert!(size > 0, "{what}: {path} is missing or empty");
        }
        // A script written with --dir is the one printed without it.
        if what != "man" {
            let printed = run(Command::new(ECHOD).args(["generate", what]));
            let written = fs::read(listing.trim()).unwrap();
            assert!(
                written == printed.stdout,
                "{what}: --dir wrote another script"
            );
        }
    }
    assert!(dir.0.join("echod.1").exists() && dir.0.join("echod-generate.1").exists());
}

#[test]
fn generate_into_a_missing_directory_says_so() {
    let output = run(Command::new(ECHOD).args(["generate", "man", "--dir", "/nonexistent/man1"]));
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("could not write the man page into /nonexistent/man1"),
        "{stderr}"
    );
}

// --- systemd unit files -----------------------------------------------------

fn unit_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd")
}

fn unit(name: &str) -> String {
    fs::read_to_string(unit_dir().join(name)).unwrap()
}

/// The `key=value` lines of a unit, comments left out.
fn settings(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with(['#', ';', '[']))
        .collect()
}

#[test]
fn the_socket_unit_opens_port_7_for_tcp_and_udp() {
    let socket = unit("echod.socket");
    let settings = settings(&socket);
    for line in ["ListenStream=7", "ListenDatagram=7"] {
        assert!(settings.contains(&line), "echod.socket lacks {line}");
    }
    assert!(!settings.contains(&"Accept=yes"));
}

#[test]
fn the_service_units_are_sandboxed() {
    for name in ["echod.service", "echod@.service"] {
        let text = unit(name);
        let settings = settings(&text);
        for line in [
            "DynamicUser=yes",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "PrivateDevices=yes",
            "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
            "SystemCallFilter=@system-service",
        ] {
            assert!(settings.contains(&line), "{name} lacks {line}");
        }
        assert!(
            settings.iter().any(|l| l.starts_with("MemoryMax=")),
            "{name} lacks MemoryMax="
        );
    }
    // Sockets come from echod.socket: no capability at all.
    assert!(settings(&unit("echod.service")).contains(&"CapabilityBoundingSet="));
    // Each instance binds port 7 itself: that capability and no other.
    assert!(
        settings(&unit("echod@.service")).contains(&"CapabilityBoundingSet=CAP_NET_BIND_SERVICE")
    );
}

#[test]
fn the_service_units_start_echod_with_options_it_knows() {
    for name in ["echod.service", "echod@.service"] {
        let text = unit(name);
        let exec = settings(&text)
            .into_iter()
            .find_map(|line| line.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("{name} has no ExecStart="));
        let mut words = exec.split_whitespace();
        assert_eq!(words.next(), Some("/usr/local/bin/echod"), "{name}");
        // With --help after them, clap checks the options and exits.
        let output = run(Command::new(ECHOD).args(words).arg("--help"));
        assert!(
            output.status.success(),
            "{name}: {exec}: {}",
            stderr_of(&output)
        );
    }
}

#[test]
fn the_unit_files_pass_systemd_analyze_verify() {
    if !have_or_skip("systemd-analyze", "systemd-analyze verify") {
        return;
    }
    let dir = TempDir::new("units");
    // A unit that cannot be wrong: if verifying it fails, this machine
    // (a container without systemd, say) cannot verify anything.
    let probe = dir.0.join("echod-probe.service");
    fs::write(&probe, "[Service]\nExecStart=/bin/true\n").unwrap();
    let output = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&probe));
    if !output.status.success() {
        util::skip(&format!(
            "systemd-analyze verify fails here even on a trivial unit: {}",
            stderr_of(&output)
        ));
        return;
    }
    // The units as installed, pointing at the binary under test; the
    // template as one of its instances (CPUAffinity=%i needs a number).
    let mut paths = Vec::new();
    for (name, as_name) in [
        ("echod.socket", "echod.socket"),
        ("echod.service", "echod.service"),
        ("echod@.service", "echod@0.service"),
    ] {
        let text = unit(name).replace("/usr/local/bin/echod", ECHOD);
        let path = dir.0.join(as_name);
        fs::write(&path, text).unwrap();
        paths.push(path);
    }
    // Documentation=man:echod(1) is checked against the generated pages.
    let man1 = dir.0.join("man/man1");
    fs::create_dir_all(&man1).unwrap();
    let generated = run(Command::new(ECHOD)
        .args(["generate", "man", "--dir"])
        .arg(&man1));
    assert!(generated.status.success());
    let mut verify = Command::new("systemd-analyze");
    verify.arg("verify");
    if util::have("man") {
        verify.env("MANPATH", dir.0.join("man"));
    } else {
        eprintln!("man is not installed: Documentation= is not checked");
        verify.arg("--man=no");
    }
    let output = run(verify.args(&paths));
    // Unknown or misspelt settings are only warnings: allow no output.
    assert!(
        output.status.success() && output.stderr.is_empty() && output.stdout.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&output.stdout),
        stderr_of(&output)
    );
}
