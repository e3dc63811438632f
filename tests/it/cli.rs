//! The command line of the server: help, the PORT variable, and start-up
//! errors a person can act on; and what every command prints besides its
//! work: man pages, shell completions, colour only where it is wanted.

use std::process::{Command, Stdio};

use crate::util::{Binary, ECHOD, echo_tcp, free_port};

#[test]
fn help_teaches_by_example() {
    let out = Command::new(ECHOD).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "--port",
        "--bind",
        "--no-udp",
        "--buffer",
        "[env: PORT=]",
        "Examples:",
        "nc -N",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}

#[test]
fn version_prints_the_crate_version() {
    let out = Command::new(ECHOD).arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.trim(), format!("echod {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn port_environment_variable_is_honoured() {
    let port = free_port();
    let server = Binary::start_with(Command::new(ECHOD).env("PORT", port.to_string()).args([
        "-b",
        "127.0.0.1",
        "--no-udp",
    ]));
    assert_eq!(server.tcp.unwrap().port(), port);
    assert_eq!(echo_tcp(server.tcp.unwrap(), b"env"), b"env");
}

#[test]
fn port_flag_overrides_the_environment() {
    let port = free_port();
    let server = Binary::start_with(Command::new(ECHOD).env("PORT", "1").args([
        "-b",
        "127.0.0.1",
        "--no-udp",
        "--port",
        &port.to_string(),
    ]));
    assert_eq!(server.tcp.unwrap().port(), port);
}

#[test]
fn a_taken_port_is_explained_and_fails() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = Command::new(ECHOD)
        .args(["-b", "127.0.0.1", "--port", &port])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(&format!(
            "tcp port {port} on 127.0.0.1 is already in use by another program"
        )),
        "{err}"
    );
    assert!(err.contains("--port 0 picks a free one"), "{err}");
}

#[test]
fn a_bad_bind_address_is_explained() {
    let out = Command::new(ECHOD)
        .args(["-b", "example.org"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("'example.org' is not an IP address"), "{err}");
}

#[test]
fn an_address_not_on_this_machine_is_explained() {
    // 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never assigned to a host.
    let out = Command::new(ECHOD)
        .args(["-b", "192.0.2.1", "--port", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("address 192.0.2.1 is not available on this machine"),
        "{err}"
    );
}

/// Ports below 1024 need privileges; as root the bind would succeed, so
/// the test runs the binary as `nobody` (and says so when it cannot).
#[test]
fn a_privileged_port_without_privileges_is_explained() {
    if !crate::util::need("setpriv", "apt-get install util-linux") {
        return;
    }
    let unprivileged_start =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .ok()
            .and_then(|text| text.trim().parse::<u16>().ok())
            .unwrap_or(1024);
    if unprivileged_start <= 7 {
        // Not a missing tool: this machine has no privileged ports to test.
        crate::util::skip("this system lets anyone bind port 7 (ip_unprivileged_port_start)");
        return;
    }
    // `timeout`: should the bind succeed after all, the server must not
    // run forever.
    let out = Command::new("timeout")
        .args(["10", "setpriv"])
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .args([ECHOD, "-b", "127.0.0.1", "--port", "7"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("setpriv:") {
        crate::util::skip(&format!("setpriv cannot drop privileges here: {err}"));
        return;
    }
    assert!(!out.status.success());
    assert!(
        err.contains("permission denied binding tcp port 7 on 127.0.0.1"),
        "{err}"
    );
    assert!(err.contains("--port 7007"), "{err}");
}

/// `echod --port 9 --no-splice ping HOST` ran ping and dropped both flags
/// without a word (issue 13): a usage error now, which names them.
#[test]
fn server_flags_before_a_tool_are_a_usage_error() {
    let out = Command::new(ECHOD)
        .args(["--port", "9", "--no-splice", "ping", "127.0.0.1:1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--port and --no-splice are options of the server"),
        "{err}"
    );
    assert!(err.contains("`echod ping` does not run"), "{err}");
    assert!(out.stdout.is_empty(), "ping ran anyway");
}

/// Global flags still go before a tool, and PORT in the environment is
/// no server flag written by hand: neither is refused.
#[test]
fn global_flags_and_the_port_variable_still_go_with_a_tool() {
    let server = Binary::start(&["--port", "0", "-b", "127.0.0.1", "--no-udp"]);
    let addr = server.tcp.unwrap().to_string();
    let out = Command::new(ECHOD)
        .env("PORT", "9")
        .args(["-q", "ping", "-c", "1", &addr])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("seq=1"));
}

// --- man pages ----------------------------------------------------------------

/// `echod generate ARGS`'s standard output.
#[track_caller]
fn generated(args: &[&str]) -> String {
    let out = Command::new(ECHOD)
        .arg("generate")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The roff lines of `page` after the `heading` line (`.SH NAME`) up to the next
/// section.
fn section<'a>(page: &'a str, heading: &str) -> Vec<&'a str> {
    let mut lines = page.lines().skip_while(|line| *line != heading);
    assert!(lines.next().is_some(), "no {heading} in:\n{page}");
    lines.take_while(|line| !line.starts_with(".SH ")).collect()
}

/// The lines of `page`'s EXAMPLES section set without filling (between
/// `.nf` and `.fi`), as they appear on the screen.
fn preformatted(page: &str) -> Vec<&str> {
    let mut inside = false;
    let mut lines = Vec::new();
    for line in section(page, ".SH EXAMPLES") {
        match line {
            ".nf" => inside = true,
            ".fi" => inside = false,
            _ if inside => lines.push(line),
            _ => {}
        }
    }
    lines
}

/// echod(1) has the sections man-pages(7) names, its examples one per
/// line (clap_mangen's EXTRA section let man reflow them into one
/// paragraph), and a SYNOPSIS that names each option's value.
#[test]
fn the_man_page_has_examples_exit_status_and_value_names() {
    let page = generated(&["man"]);
    assert!(!page.contains(".SH EXTRA"), "{page}");
    let synopsis = section(&page, ".SH SYNOPSIS").join("\n");
    for value in [
        r"\fB\-\-port\fR \fIPORT\fR",
        r"\fB\-\-bind\fR \fIADDR\fR]...",
    ] {
        assert!(
            synopsis.contains(value),
            "SYNOPSIS lacks {value}: {synopsis}"
        );
    }
    let statuses = section(&page, ".SH \"EXIT STATUS\"").join("\n");
    for status in 0..=4 {
        assert!(
            statuses.contains(&format!(".TP\n\\fB{status}\\fR")),
            "{statuses}"
        );
    }
    let examples = preformatted(&page);
    assert!(
        examples
            .iter()
            .any(|line| line.starts_with(r"echod \-p 0 ")),
        "{examples:?}"
    );
    assert!(
        examples
            .iter()
            .any(|line| line.starts_with(r"nc \-N localhost 7007")),
        "{examples:?}"
    );
    // Prose stays prose, out of the examples.
    let notes = section(&page, ".SH NOTES").join("\n");
    assert!(notes.contains("(nohup)"), "{notes}");
}

/// `generate man --dir` writes a page per tool, each with its own
/// examples and exit statuses, and echod(1) names them.
#[test]
fn each_tool_has_its_man_page() {
    let dir = std::env::temp_dir().join(format!("echod-man-pages-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let listing = generated(&["man", "--dir", dir.to_str().unwrap()]);
    let read = |name: &str| {
        let path = dir.join(name);
        assert!(listing.contains(path.to_str().unwrap()), "{listing}");
        std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{name}: {err}"))
    };
    let main = read("echod.1");
    for tool in ["client", "ping", "bench", "check"] {
        let page = read(&format!("echod-{tool}.1"));
        assert!(page.contains(&format!(".TH echod-{tool} 1")), "{page}");
        let synopsis = section(&page, ".SH SYNOPSIS").join("\n");
        assert!(
            synopsis.contains(&format!(r"\fBechod {tool}\fR")),
            "{synopsis}"
        );
        assert!(synopsis.contains(r"\fIADDR\fR"), "{synopsis}");
        let examples = preformatted(&page);
        assert!(
            examples.len() >= 4
                && examples
                    .iter()
                    .any(|line| line.contains(&format!(r"echod {tool} "))),
            "echod-{tool}(1) examples: {examples:?}"
        );
        let statuses = section(&page, ".SH \"EXIT STATUS\"").join("\n");
        assert!(
            statuses.contains('0') && statuses.contains('2'),
            "{statuses}"
        );
        assert!(main.contains(&format!("echod\\-{tool}(1)")));
    }
    // check lists its statuses: one entry each.
    let check = read("echod-check.1");
    let statuses = section(&check, ".SH \"EXIT STATUS\"").join("\n");
    assert!(
        statuses.contains(".TP\n\\fB1\\fR\nat least one check failed"),
        "{statuses}"
    );

    // groff reads every page without a warning, where it is installed.
    if crate::util::have("groff") {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let out = Command::new("groff")
                .args(["-k", "-man", "-ww", "-z"])
                .arg(&path)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && err.is_empty(),
                "{}: {err}",
                path.display()
            );
        }
    } else {
        eprintln!("groff is not installed: the man pages are not checked with it");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// --- completions --------------------------------------------------------------

/// What bash offers for `words` (the last one being completed), with the
/// completion script in `dir` loaded and `dir` as the working directory,
/// so that any file name offered is one of `dir`'s.
fn bash_offers(dir: &std::path::Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        "source '{}'\n\
         COMP_WORDS=({})\n\
         COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))\n\
         COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}\n\
         _echod echod \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\" 2>/dev/null\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        dir.join("echod.bash").display(),
        quoted.join(" ")
    );
    let out = Command::new("bash")
        .current_dir(dir)
        .args(["--norc", "--noprofile", "-c", &program])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| !line.is_empty())
        .map(str::to_string)
        .collect()
}

/// `check --only` completes to the check names, `generate` to its verbs,
/// and values such as a count to nothing: never to file names.
#[test]
fn completions_offer_check_names_and_verbs_not_files() {
    let names: Vec<&str> = echod::check::CHECKS.iter().map(|c| c.name).collect();
    let verbs = ["man", "bash", "zsh", "fish", "elvish", "powershell"];
    let script = generated(&["bash"]);
    let only = script
        .split("--only)")
        .nth(1)
        .and_then(|rest| rest.lines().nth(1))
        .unwrap_or_default();
    assert!(
        only.contains(&format!("compgen -W \"{}\"", names.join(" "))),
        "{only}"
    );
    let count = script
        .split("--count)")
        .nth(1)
        .and_then(|rest| rest.lines().nth(1))
        .unwrap_or_default();
    assert!(!count.contains("compgen -f"), "{count}");
    let fish = generated(&["fish"]);
    for verb in verbs {
        assert!(
            fish.contains(&format!(
                "__fish_echod_using_subcommand generate\" -f -a \"{verb}\""
            )),
            "fish completions lack the verb {verb}"
        );
    }

    // What bash itself offers, with the script loaded.
    if !crate::util::have("bash") {
        eprintln!("bash is not installed: its completions are only read, not run");
        return;
    }
    let dir = std::env::temp_dir().join(format!("echod-completion-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A file that file-name completion would offer.
    std::fs::write(dir.join("half-file"), "").unwrap();
    std::fs::write(dir.join("echod.bash"), &script).unwrap();
    let offers = |words: &[&str]| bash_offers(&dir, words);
    assert_eq!(offers(&["echod", "check", "--only", ""]), names);
    assert_eq!(
        offers(&["echod", "check", "--only", "half"]),
        ["half-close"]
    );
    let after_generate = offers(&["echod", "generate", ""]);
    for verb in verbs {
        assert!(
            after_generate.iter().any(|w| w == verb),
            "{after_generate:?}"
        );
    }
    assert!(!after_generate.iter().any(|w| w == "half-file"));
    let count = offers(&["echod", "ping", "-c", "half"]);
    assert!(
        !count.iter().any(|w| w == "half-file"),
        "a count completes to file names: {count:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// --- colour -------------------------------------------------------------------

#[cfg(target_os = "linux")]
/// Runs `echod ARGS` with stdout and stderr on a pseudo-terminal (so it
/// believes it talks to a person) and the environment `env` (colour
/// variables not named there removed); returns what the terminal showed.
fn on_a_terminal(args: &[&str], env: &[(&str, &str)]) -> String {
    let (master, slave) = crate::util::pseudo_terminal();
    let mut child = {
        // The command holds the terminal's descriptors until dropped.
        let mut command = Command::new(ECHOD);
        command
            .args(args)
            .env_remove("NO_COLOR")
            .env_remove("CLICOLOR")
            .env_remove("CLICOLOR_FORCE")
            .env_remove("CI")
            .env("TERM", "xterm-256color")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        command.spawn().expect("echod starts")
    };
    // Read until the terminal has no writer left (EIO once echod exits).
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = std::io::Read::read(&mut &master, &mut buf) {
            seen.extend_from_slice(&buf[..n]);
        }
        seen
    });
    crate::util::wait_bounded(&mut child, crate::util::IO_TIMEOUT);
    String::from_utf8_lossy(&reader.join().unwrap()).into_owned()
}

/// NO_COLOR (set, not empty) and TERM=dumb turn colour off on a terminal
/// too: clap's help and usage errors, the log lines, a tool's output.
/// Without them the same runs are coloured, so the terminal is real.
#[cfg(target_os = "linux")]
#[test]
fn no_color_and_a_dumb_terminal_mean_no_escape_codes() {
    let server = crate::util::InProcess::v4();
    let addr = server.tcp_addr().to_string();
    let runs: [&[&str]; 4] = [
        &["ping", "--help"],
        &["ping", "--count", "0", "127.0.0.1:7"],
        &["-vv", "ping", "-c", "1", &addr],
        &["-v", "client", &addr],
    ];
    // Colour where nothing forbids it: help, errors and log levels.
    for args in runs {
        let shown = on_a_terminal(args, &[]);
        assert!(
            shown.contains("\x1b["),
            "{args:?} has no colour even so:\n{shown}"
        );
    }
    // CI=true: clap's own detection would colour despite TERM=dumb.
    for env in [
        &[("NO_COLOR", "1")][..],
        &[("TERM", "dumb"), ("CI", "true")],
    ] {
        for args in runs {
            let shown = on_a_terminal(args, env);
            assert!(!shown.is_empty(), "{args:?} showed nothing");
            assert!(
                !shown.contains('\x1b'),
                "{env:?} {args:?} shows escape codes:\n{shown:?}"
            );
        }
    }
}
