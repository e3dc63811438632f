//! `echod check ADDR`: a conformance probe for any RFC 862 echo server.
//!
//! Many echo servers pass a quick `nc` session and still lose bytes on
//! half-close, wait for a newline, serve one client at a time, truncate big
//! datagrams or buffer without bound. Each named check here looks for one
//! such defect from the outside, with real sockets, and says what it
//! measured: bytes, time, the first wrong offset, and cites the rule it
//! holds the server to (RFC 862, RFC 9293, RFC 1122, CERT CA-1996-01).
//! Every wait is bounded by the check's timeout, so a server that never
//! answers ends the run with FAIL lines, not a hang.
//!
//! Checks run in order and later ones read their results in the light of
//! earlier ones (`Known`): a server seen to echo is not called a discard
//! server, one that echoes nothing is not probed further, and the run
//! ends with one root-cause line per address.
//!
//! # Layout
//!
//! - this file: what was asked ([`Request`], [`CheckConfig`], built by
//!   `cli.rs`), the catalogue of checks ([`CHECKS`]), the vocabulary of
//!   results ([`Outcome`], [`Defect`], [`CheckResult`]) and the runner
//!   ([`run`]);
//! - [`probe`]: blocking send and receive with deadlines, on the tools' kit
//!   ([`crate::kit`]: the address, connect, deadlines, payloads and the
//!   verifier);
//! - `stream.rs`: the checks on one TCP connection (echo, binary,
//!   unbuffered, half-close, eof-with-queued-output, slow-drip, and the
//!   strict urgent-inline);
//! - `clients.rs`: the checks with several TCP clients (concurrency,
//!   backpressure, reset-survival);
//! - `datagram.rs`: the UDP checks (with the strict udp-source-wildcard
//!   and udp-loop-guard);
//! - `report.rs`: the report, as text lines, one JSON object or JUnit XML,
//!   and the root-cause line.

mod clients;
mod datagram;
pub mod probe;
mod report;
mod stream;

pub use report::{AddressReport, Report, render_line};

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::kit::deadline::Deadline;
use crate::kit::target::{Target, connect_by, one_per_family};
use echod_server::net::Transport;

/// How many clients the concurrency check connects by default: more than
/// a small thread pool or accept backlog handles at once, few enough for
/// any machine.
pub const DEFAULT_CLIENTS: usize = 50;

/// The most clients `--clients` accepts: each is a socket of this process.
pub const MAX_CLIENTS: usize = 1000;

/// Every check of `transport`, the strict ones too if `strict`, in
/// catalogue order.
fn of_transport(transport: Transport, strict: bool) -> Vec<&'static CheckInfo> {
    CHECKS
        .iter()
        .filter(|c| c.transport == transport && (strict || !c.strict))
        .collect()
}

/// The check that shows whether the server echoes at all: the first of
/// its transport's.
fn first_check(transport: Transport) -> &'static str {
    match transport {
        Transport::Tcp => "echo",
        Transport::Udp => "udp-sizes",
    }
}

/// The checks to run: every one of `transport` (the strict ones too if
/// `strict`), or those named (strict or not).
pub fn select(
    transport: Transport,
    only: &[String],
    strict: bool,
) -> Result<Vec<&'static CheckInfo>, String> {
    if only.is_empty() {
        return Ok(of_transport(transport, strict));
    }
    let mut chosen: Vec<&'static CheckInfo> = Vec::new();
    for name in only {
        let name = name.trim();
        let Some(check) = CHECKS.iter().find(|c| c.name == name) else {
            let hint = if name.contains(['.', ':', '[']) {
                " (put ADDR before --only, or separate the names with commas)"
            } else {
                ""
            };
            return Err(format!(
                "'{name}' is not a check{hint}; `echod check --list` shows them all"
            ));
        };
        if check.transport != transport {
            let flag = match check.transport {
                Transport::Udp => "add --udp to run it",
                Transport::Tcp => "drop --udp to run it",
            };
            return Err(format!(
                "'{name}' is a {} check and this run checks {}; {flag}",
                check.transport, transport
            ));
        }
        if !chosen.iter().any(|c| c.name == check.name) {
            chosen.push(check);
        }
    }
    // Run in catalogue order whatever the order given: reset-survival,
    // which may bring a fragile server down, stays last.
    chosen.sort_by_key(|c| CHECKS.iter().position(|k| k.name == c.name));
    Ok(chosen)
}

/// A validated `echod check` run.
#[derive(Clone, Debug)]
pub struct CheckConfig {
    /// The server, as given.
    pub target: Target,
    /// TCP or UDP checks.
    pub transport: Transport,
    /// The checks to run, in catalogue order.
    pub checks: Vec<&'static CheckInfo>,
    /// Clients of the concurrency check.
    pub clients: usize,
    /// The bound on each check's waiting.
    pub timeout: Duration,
}

impl CheckConfig {
    /// Every check of `transport` against `addr`: what tests and scripts
    /// calling the library want.
    pub fn all(addr: SocketAddr, transport: Transport, timeout: Duration) -> CheckConfig {
        CheckConfig {
            target: Target {
                host: addr.ip().to_string(),
                port: addr.port(),
            },
            transport,
            checks: of_transport(transport, false),
            clients: DEFAULT_CLIENTS,
            timeout,
        }
    }

    /// Adds the strict checks of the transport (`--strict`).
    pub fn strict(mut self) -> CheckConfig {
        self.checks = of_transport(self.transport, true);
        self
    }

    /// Keeps only the named checks (in catalogue order).
    pub fn only(mut self, names: &[&str]) -> CheckConfig {
        self.checks.retain(|c| names.contains(&c.name));
        self
    }
}

/// What a check came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The server did what RFC 862 and its clients expect.
    Pass,
    /// It did not; the detail says what was seen.
    Fail,
    /// The check could not run; the detail says why.
    Skip,
}

impl Outcome {
    /// `PASS`, `FAIL` or `SKIP`.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "SKIP",
        }
    }
}

/// The defect a failed check points at, named so scripts can tell them
/// apart (`--json` gives the name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Defect {
    /// Accepts connections (or datagrams) and sends nothing back.
    NeverReplying,
    /// Bytes came back changed.
    CorruptsBytes,
    /// More bytes came back than were sent.
    ExtraBytes,
    /// Echoes only complete lines: waits for a newline.
    LineBuffering,
    /// Holds small pieces back and sends them later in bulk.
    HoldsBackBytes,
    /// The echo stopped part way and did not resume: the server hangs on
    /// the connection.
    Stalls,
    /// Closed the connection before echoing everything, while the client
    /// was still sending.
    ClosesEarly,
    /// Reset the connection instead of closing it.
    ResetsConnection,
    /// Never closes its side after the client shut down its own.
    IgnoresHalfClose,
    /// Closes when the client finishes sending, dropping echo bytes it
    /// still held.
    CloseOnEofWithoutFlush,
    /// Serves one client at a time.
    OneClientAtATime,
    /// Serves only so many clients at a time.
    LimitedClients,
    /// Clients arriving together wait for SYN retransmission: the listen
    /// backlog is too small.
    SmallBacklog,
    /// A client that does not read stops the server for everyone.
    BlocksOnSlowReader,
    /// Keeps taking bytes from a client that reads nothing back.
    UnboundedBuffering,
    /// Drops urgent (MSG_OOB) data, or stops reading at the urgent mark.
    DropsUrgentData,
    /// Dies (or stops serving) when clients reset their connections.
    DiesOnReset,
    /// Stopped accepting connections part way through the run.
    StoppedServing,
    /// Cuts datagrams short.
    UdpTruncation,
    /// Replies from another address or port than the one written to.
    UdpWrongSource,
    /// Sends replies to the wrong sender.
    UdpCrossedReplies,
    /// Answers datagrams from service ports: a UDP loop waiting to happen.
    UdpLoopRisk,
}

impl Defect {
    /// The defect's name, as printed and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Defect::NeverReplying => "never-replying",
            Defect::CorruptsBytes => "corrupts-bytes",
            Defect::ExtraBytes => "extra-bytes",
            Defect::LineBuffering => "line-buffering",
            Defect::HoldsBackBytes => "holds-back-bytes",
            Defect::Stalls => "stalls",
            Defect::ClosesEarly => "closes-early",
            Defect::ResetsConnection => "resets-connection",
            Defect::IgnoresHalfClose => "ignores-half-close",
            Defect::CloseOnEofWithoutFlush => "close-on-eof-without-flush",
            Defect::OneClientAtATime => "one-client-at-a-time",
            Defect::LimitedClients => "limited-clients",
            Defect::SmallBacklog => "small-backlog",
            Defect::BlocksOnSlowReader => "blocks-on-slow-reader",
            Defect::UnboundedBuffering => "unbounded-buffering",
            Defect::DropsUrgentData => "drops-urgent-data",
            Defect::DiesOnReset => "dies-on-reset",
            Defect::StoppedServing => "stopped-serving",
            Defect::UdpTruncation => "udp-truncation",
            Defect::UdpWrongSource => "udp-wrong-source",
            Defect::UdpCrossedReplies => "udp-crossed-replies",
            Defect::UdpLoopRisk => "udp-loop-risk",
        }
    }
}

impl Defect {
    /// What a server with this defect does, as the end of "the server …":
    /// the root-cause line's words.
    pub fn what(self) -> &'static str {
        match self {
            Defect::NeverReplying => "sends nothing back",
            Defect::CorruptsBytes => "changes the bytes it echoes",
            Defect::ExtraBytes => "adds bytes of its own",
            Defect::LineBuffering => "waits for a newline before it echoes",
            Defect::HoldsBackBytes => "holds small pieces back",
            Defect::Stalls => "stops echoing part way",
            Defect::ClosesEarly => "closes connections before echoing everything",
            Defect::ResetsConnection => "resets connections instead of closing them",
            Defect::IgnoresHalfClose => "does not close its side when the client half-closes",
            Defect::CloseOnEofWithoutFlush => "loses what it holds when the client half-closes",
            Defect::OneClientAtATime => "serves one client at a time",
            Defect::LimitedClients => "serves only so many clients at a time",
            Defect::SmallBacklog => {
                "serves clients that arrive together late (its listen backlog is too small)"
            }
            Defect::BlocksOnSlowReader => "lets one client that does not read stop it for everyone",
            Defect::UnboundedBuffering => "buffers without bound for a client that does not read",
            Defect::DropsUrgentData => "drops urgent data (or stops reading at its mark)",
            Defect::DiesOnReset => "dies when clients reset their connections",
            Defect::StoppedServing => "stopped serving during the run",
            Defect::UdpTruncation => "truncates datagrams",
            Defect::UdpWrongSource => "replies from another address than the one written to",
            Defect::UdpCrossedReplies => "sends replies to the wrong sender",
            Defect::UdpLoopRisk => "answers datagrams from service ports (a UDP loop risk)",
        }
    }
}

/// A named figure a check measured (bytes, milliseconds, an offset).
pub type Figure = (&'static str, serde_json::Value);

/// The result of one check on one address.
#[derive(Clone, Debug)]
pub struct CheckResult {
    /// The check's name, as in [`CHECKS`].
    pub name: &'static str,
    /// Pass, fail or skip.
    pub outcome: Outcome,
    /// What was measured, or what went wrong, in a sentence.
    pub detail: String,
    /// For a failure, the defect it points at, when one is recognised.
    pub defect: Option<Defect>,
    /// How long the check took.
    pub elapsed: Duration,
    /// The figures behind the detail, for `--json`.
    pub figures: Vec<Figure>,
}

/// What a check function concludes; the runner adds name and time.
#[derive(Debug)]
pub(crate) struct Verdict {
    outcome: Outcome,
    detail: String,
    defect: Option<Defect>,
    figures: Vec<Figure>,
    /// The server no longer accepts connections: later checks are skipped.
    server_gone: bool,
}

impl Verdict {
    fn new(outcome: Outcome, defect: Option<Defect>, detail: String) -> Verdict {
        Verdict {
            outcome,
            detail,
            defect,
            figures: Vec::new(),
            server_gone: false,
        }
    }

    pub(crate) fn pass(detail: String) -> Verdict {
        Verdict::new(Outcome::Pass, None, detail)
    }

    pub(crate) fn fail(defect: Option<Defect>, detail: String) -> Verdict {
        Verdict::new(Outcome::Fail, defect, detail)
    }

    pub(crate) fn skip(detail: String) -> Verdict {
        Verdict::new(Outcome::Skip, None, detail)
    }

    /// Adds a figure.
    pub(crate) fn figure(
        mut self,
        name: &'static str,
        value: impl Into<serde_json::Value>,
    ) -> Verdict {
        self.figures.push((name, value.into()));
        self
    }

    /// Adds a duration figure, in milliseconds.
    pub(crate) fn millis(self, name: &'static str, time: Duration) -> Verdict {
        let ms = (time.as_secs_f64() * 1e6).round() / 1e3;
        self.figure(name, ms)
    }

    /// Prefixes the detail with what it is about (a client, a part).
    pub(crate) fn about(mut self, what: &str) -> Verdict {
        self.detail = format!("{what}: {}", self.detail);
        self
    }

    pub(crate) fn server_gone(mut self) -> Verdict {
        self.server_gone = true;
        self
    }
}

/// A check could not reach the server at all: its first connection was
/// refused or timed out (TCP), or its first datagram was answered "port
/// unreachable" (UDP).
#[derive(Debug)]
pub(crate) struct Unreachable(pub(crate) io::Error);

/// What earlier checks on an address established, so that later ones
/// name what they see in its light: a server seen to echo is not called a
/// discard server when a half-close fails, and one that echoes nothing is
/// not probed further.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Known {
    /// A check passed, so bytes sent came back exact.
    pub(crate) echoes: bool,
    /// `echo` got nothing at all back, and no check since got a byte.
    pub(crate) silent: bool,
}

/// Whether a check's figures show bytes coming back.
pub(crate) fn got_bytes(figures: &[Figure]) -> bool {
    figures
        .iter()
        .any(|(name, value)| *name == "bytes_received" && value.as_u64().is_some_and(|n| n > 0))
}

impl Known {
    /// A TCP failure named never-replying after a check passed would say
    /// the opposite of that PASS line: the server does reply, only not to
    /// this, so it is named for what was seen (the echo stopped) and says
    /// so.
    fn reconcile(&self, transport: Transport, mut verdict: Verdict) -> Verdict {
        if self.echoes
            && transport == Transport::Tcp
            && verdict.outcome == Outcome::Fail
            && verdict.defect == Some(Defect::NeverReplying)
        {
            verdict.defect = Some(Defect::Stalls);
            verdict.detail.push_str(
                " (earlier checks got their echo back, so the server replies, but not here)",
            );
        }
        verdict
    }

    /// Takes in what `check` came to.
    fn learn(&mut self, check: &CheckInfo, verdict: &Verdict) {
        match verdict.outcome {
            Outcome::Pass => self.echoes = true,
            // The first check of the transport: nothing came back at all.
            Outcome::Fail
                if check.name == first_check(check.transport)
                    && verdict.defect == Some(Defect::NeverReplying) =>
            {
                self.silent = true;
            }
            _ => {}
        }
        // A server that held `echo`'s bytes back but sent some to a later
        // check (at a half-close, say) does echo: what still needs an
        // echo runs, rather than being skipped as "echoes nothing".
        if got_bytes(&verdict.figures) {
            self.silent = false;
        }
    }
}

/// What a check is given.
pub(crate) struct Context {
    /// What the checks before it established.
    pub(crate) known: Known,
    /// The address under test.
    pub(crate) addr: SocketAddr,
    /// The bound on the check's waiting.
    pub(crate) timeout: Duration,
    /// Clients of the concurrency check.
    pub(crate) clients: usize,
}

/// How long a write must make no progress before the probe concludes that
/// the server stopped reading. Loopback and LAN servers drain a socket
/// buffer in far less; a server that pauses this long is not reading.
const STALL: Duration = Duration::from_millis(200);

impl Context {
    /// The deadline of a check starting now.
    pub(crate) fn deadline(&self) -> Deadline {
        Deadline::after(self.timeout)
    }

    /// [`STALL`], or a fifth of the timeout if that is shorter.
    pub(crate) fn stall(&self) -> Duration {
        STALL.min(self.timeout / 5)
    }

    /// The check's first connection: failing it means the server cannot be
    /// reached, which the runner reports as such.
    pub(crate) fn connect_first(&self, deadline: Deadline) -> Result<TcpStream, Unreachable> {
        connect_by(self.addr, deadline).map_err(Unreachable)
    }
}

type CheckFn = fn(&Context) -> Result<Verdict, Unreachable>;

/// One named check.
pub struct CheckInfo {
    /// Its name, for `--only` and the report.
    pub name: &'static str,
    /// TCP or UDP.
    pub transport: Transport,
    /// The rule it tests, with its source (an RFC and section, a CERT
    /// advisory), for `--list`, the report and `--junit`.
    pub rule: &'static str,
    /// It cannot pass unless the server echoes at all: skipped once
    /// the first check of its transport (`echo`, `udp-sizes`) got nothing
    /// back.
    pub needs_echo: bool,
    /// Run only with `--strict`: behaviour RFC 862 does not require but
    /// careful servers have.
    pub strict: bool,
    /// What it does and the defect it finds, for `--list`.
    pub reason: &'static str,
    /// How many waits of `--timeout` it may take one after another.
    pub waits: u32,
    /// Time it takes by design, beyond its waits.
    pub fixed: Duration,
    run: CheckFn,
}

impl CheckInfo {
    /// The longest the check can take with `timeout`, whatever the server
    /// does (plus scheduling: a few milliseconds per step).
    pub fn bound(&self, timeout: Duration) -> Duration {
        timeout * self.waits + self.fixed
    }
}

impl std::fmt::Debug for CheckInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Every check, in the order they run. reset-survival is the last TCP
/// check because a fragile server may not survive it.
pub static CHECKS: &[CheckInfo] = &[
    CheckInfo {
        name: "echo",
        transport: Transport::Tcp,
        rule: "RFC 862: once a connection is established, any data received is sent back",
        needs_echo: false,
        strict: false,
        reason: "a short line comes back: the server is there and echoes at all",
        waits: 1,
        fixed: Duration::ZERO,
        run: stream::echo,
    },
    CheckInfo {
        name: "binary",
        transport: Transport::Tcp,
        rule: "RFC 862: any data received is sent back (data, not text: every byte value)",
        needs_echo: true,
        strict: false,
        reason: "all 256 byte values, then 1 MiB of random bytes with no newline, come back \
                 exact: catches text-only servers (NUL, CR/LF or UTF-8 mangling) and line buffering",
        waits: 1,
        fixed: Duration::ZERO,
        run: stream::binary,
    },
    CheckInfo {
        name: "unbuffered",
        transport: Transport::Tcp,
        rule: "RFC 862: data is sent back as it is received, not by lines",
        needs_echo: true,
        strict: false,
        reason: "a few bytes with no newline come back promptly: catches servers that wait for \
                 a newline before echoing (line buffering)",
        waits: 1,
        fixed: Duration::ZERO,
        run: stream::unbuffered,
    },
    CheckInfo {
        name: "half-close",
        transport: Transport::Tcp,
        rule: "RFC 9293 section 3.6 and RFC 1122 section 4.2.2.13: after a CLOSE (FIN) a connection still carries data the other way, and a FIN is answered by closing",
        needs_echo: false,
        strict: false,
        reason: "send, shut down the write side, then receive every byte and EOF: not a reset, \
                 not a hang (what `nc -N` and scripts rely on)",
        waits: 1,
        fixed: Duration::ZERO,
        run: stream::half_close,
    },
    CheckInfo {
        name: "eof-with-queued-output",
        transport: Transport::Tcp,
        rule: "RFC 9293 section 3.6: closing does not lose data already queued; RFC 1122 section 4.2.2.13",
        needs_echo: true,
        strict: false,
        reason: "with a small window, send without reading until the server stops taking \
                 bytes, so it holds echo it cannot write yet; shut down the write side, read \
                 nothing for 0.5 s, then slowly for 1 s: every byte must still arrive (catches \
                 servers that lose what they hold when the client half-closes: closing on EOF, \
                 or one nonblocking send and close)",
        waits: 2,
        fixed: Duration::from_millis(
            stream::EOF_PAUSE.as_millis() as u64 + stream::SLOW_PHASE.as_millis() as u64,
        ),
        run: stream::eof_with_queued_output,
    },
    CheckInfo {
        name: "concurrency",
        transport: Transport::Tcp,
        rule: "RFC 862: the service answers every connection, not one at a time",
        needs_echo: true,
        strict: false,
        reason: "N clients (--clients) connect and each gets a first echo before any finishes, \
                 then each sends more, half-closes and gets exactly its bytes: catches servers \
                 that serve one client at a time",
        waits: 2,
        fixed: Duration::ZERO,
        run: clients::concurrency,
    },
    CheckInfo {
        name: "backpressure",
        transport: Transport::Tcp,
        rule: "RFC 9293 section 3.8.6: flow control, the receive window is the bound",
        needs_echo: true,
        strict: false,
        reason: "a client writes without reading until the server stops taking bytes; meanwhile \
                 a second client is served; then the first reads everything back: catches \
                 unbounded buffering and servers one slow reader can stall",
        waits: 3,
        fixed: Duration::ZERO,
        run: clients::backpressure,
    },
    CheckInfo {
        name: "slow-drip",
        transport: Transport::Tcp,
        rule: "RFC 862: data is sent back as it is received",
        needs_echo: true,
        strict: false,
        reason: "1 byte every 10 ms for 2 s is echoed as it goes: catches servers that hold \
                 small pieces back (interactive use feels dead)",
        waits: 1,
        fixed: stream::DRIP,
        run: stream::slow_drip,
    },
    CheckInfo {
        name: "urgent-inline",
        transport: Transport::Tcp,
        rule: "RFC 9293 section 3.8.5 and RFC 1122 section 4.2.2.4: urgent data is part of \
               the data stream (and RFC 862 sends back all data received)",
        needs_echo: true,
        strict: true,
        reason: "100 bytes, 1 byte sent as urgent data (MSG_OOB), 100 bytes: all 201 come \
                 back in order (catches servers that drop the urgent byte, or stop reading at \
                 the urgent mark)",
        waits: 1,
        fixed: Duration::ZERO,
        run: stream::urgent_inline,
    },
    CheckInfo {
        name: "reset-survival",
        transport: Transport::Tcp,
        rule: "RFC 9293 section 3.5.3 and RFC 1122 section 4.2.2.12: a reset ends that connection only",
        needs_echo: true,
        strict: false,
        reason: "clients that reset mid-transfer do not take the server down: a client connected \
                 before them and a fresh one are still served (catches dying on ECONNRESET, \
                 EPIPE or SIGPIPE)",
        // The client before the resets, the fresh one, and the first
        // again; each resetter's step of its own, and a pause after them.
        waits: 3,
        fixed: clients::RESETTERS_AT_MOST.saturating_add(STALL),
        run: clients::reset_survival,
    },
    CheckInfo {
        name: "udp-sizes",
        transport: Transport::Udp,
        rule: "RFC 862: each datagram is sent back in an answering datagram, the data as received (RFC 768: up to 65,507 bytes over IPv4)",
        needs_echo: false,
        strict: false,
        reason: "datagrams of 0, 1, 1472, 8192 and 65,507 bytes come back identical: reports \
                 the size a server truncates at",
        waits: 1,
        fixed: Duration::ZERO,
        run: datagram::sizes,
    },
    CheckInfo {
        name: "udp-source",
        transport: Transport::Udp,
        rule: "RFC 1122 section 4.1.3.5: a reply goes out from the specific address the request was sent to",
        needs_echo: true,
        strict: false,
        reason: "the reply comes from the address and port the datagram was sent to, or \
                 connected clients (nc -u) never see it",
        waits: 1,
        fixed: Duration::ZERO,
        run: datagram::source,
    },
    CheckInfo {
        name: "udp-source-wildcard",
        transport: Transport::Udp,
        rule: "RFC 1122 section 4.1.3.5: a reply goes out from the specific address the \
               request was sent to, also on a host (or socket) with several addresses",
        needs_echo: true,
        strict: true,
        reason: "for a server on a loopback address: a datagram to another loopback address \
                 (127.0.0.2) reaches a server on a wildcard address, and the reply must come \
                 from 127.0.0.2 (catches wildcard servers that let routing pick the source)",
        waits: 1,
        fixed: Duration::ZERO,
        run: datagram::source_wildcard,
    },
    CheckInfo {
        name: "udp-loop-guard",
        transport: Transport::Udp,
        rule: "CERT CA-1996-01: a UDP echo service must not answer datagrams from services \
               that answer datagrams (chargen 19, echo 7, ...), or one forged datagram makes \
               the two loop forever",
        needs_echo: true,
        strict: true,
        reason: "a datagram from port 19 (or 7, 13, 17, 37: needs root) gets no answer, while \
                 one from an ordinary port does",
        waits: 1,
        fixed: STALL,
        run: datagram::loop_guard,
    },
    CheckInfo {
        name: "udp-interleaved",
        transport: Transport::Udp,
        rule: "RFC 862: each datagram is answered to its own sender",
        needs_echo: true,
        strict: false,
        reason: "several senders interleave datagrams and each gets exactly its own replies",
        waits: 1,
        fixed: Duration::ZERO,
        run: datagram::interleaved,
    },
];

/// What the runner reports as it goes, for printing live.
#[derive(Debug)]
pub enum Event<'a> {
    /// Checks on this address begin.
    Address(SocketAddr),
    /// A check finished.
    Result(SocketAddr, &'a CheckResult),
    /// The address could not be reached; its checks are skipped.
    Unreachable(SocketAddr, &'a str),
}

/// Runs the configured checks on every address the target resolves to (one
/// per family), calling `on_event` as results come. Fails only when the
/// target does not resolve; an unreachable server is in the report.
pub fn run(config: &CheckConfig, on_event: &mut dyn FnMut(Event<'_>)) -> Result<Report, String> {
    let addrs = one_per_family(&config.target.lookup()?);
    Ok(run_on(config, &addrs, on_event))
}

/// Runs the configured checks on `addrs`, as if the target had resolved to
/// them: one after the other, each with its own results.
pub fn run_on(
    config: &CheckConfig,
    addrs: &[SocketAddr],
    on_event: &mut dyn FnMut(Event<'_>),
) -> Report {
    let started = Instant::now();
    let several = addrs.len() > 1;
    let mut addresses = Vec::new();
    for &addr in addrs {
        on_event(Event::Address(addr));
        let mut context = Context {
            known: Known::default(),
            addr,
            timeout: config.timeout,
            clients: config.clients,
        };
        let mut report = AddressReport {
            addr,
            unreachable: None,
            results: Vec::new(),
        };
        // Set once a check reached the server; a connection refused after
        // that means the server went away during the run.
        let mut reached = false;
        let mut gone_during: Option<&str> = None;
        for check in &config.checks {
            let start = Instant::now();
            let verdict = if let Some(why) = &report.unreachable {
                Verdict::skip(format!("not run: {why}"))
            } else if let Some(earlier) = gone_during {
                Verdict::skip(format!(
                    "not run: the server stopped accepting connections during {earlier}"
                ))
            } else if context.known.silent && check.needs_echo {
                Verdict::skip(format!(
                    "not run: {} got nothing back, and this check needs an echo to pass",
                    first_check(check.transport)
                ))
            } else {
                match (check.run)(&context) {
                    Ok(verdict) => {
                        reached = true;
                        verdict
                    }
                    Err(Unreachable(err)) if !reached => {
                        let why = unreachable_sentence(&config.target, addr, config, &err, several);
                        on_event(Event::Unreachable(addr, &why));
                        report.unreachable = Some(why.clone());
                        Verdict::skip(format!("not run: {why}"))
                    }
                    Err(Unreachable(err)) => Verdict::fail(
                        Some(Defect::StoppedServing),
                        format!(
                            "could not reach the server any more ({err}): it stopped serving \
                             after the earlier checks (it may have crashed)"
                        ),
                    )
                    .server_gone(),
                }
            };
            let verdict = context.known.reconcile(config.transport, verdict);
            context.known.learn(check, &verdict);
            if verdict.server_gone && gone_during.is_none() {
                gone_during = Some(check.name);
            }
            let result = CheckResult {
                name: check.name,
                outcome: verdict.outcome,
                detail: verdict.detail,
                defect: verdict.defect,
                elapsed: start.elapsed(),
                figures: verdict.figures,
            };
            if report.unreachable.is_none() {
                on_event(Event::Result(addr, &result));
            }
            report.results.push(result);
        }
        addresses.push(report);
    }
    Report {
        target: config.target.to_string(),
        transport: config.transport,
        timeout: config.timeout,
        clients: config.clients,
        addresses,
        elapsed: started.elapsed(),
    }
}

/// Why an address could not be reached, and what to do, in a sentence.
fn unreachable_sentence(
    target: &Target,
    addr: SocketAddr,
    config: &CheckConfig,
    err: &io::Error,
    several: bool,
) -> String {
    let transport = config.transport;
    let port = addr.port();
    let mut text = match (err.kind(), transport) {
        (io::ErrorKind::ConnectionRefused, Transport::Tcp) => format!(
            "could not connect to {addr}: connection refused, so nothing listens on tcp port \
             {port} there. Is the server running, on this address and port?"
        ),
        (io::ErrorKind::ConnectionRefused, Transport::Udp) => format!(
            "{addr} answered \"port unreachable\", so nothing listens on udp port {port} there. \
             Is the server running, and serving UDP?"
        ),
        (kind, _) if probe::is_timeout(err) || kind == io::ErrorKind::TimedOut => format!(
            "could not connect to {addr} within {}: no answer at all (the host may be down, or \
             a firewall drops the packets). Check the address, or raise --timeout",
            report::fmt_duration(config.timeout)
        ),
        _ => format!(
            "could not reach {transport} {addr}: {err}. Check the address and that this \
             machine has a route to it"
        ),
    };
    if several {
        let family = if addr.is_ipv6() { "IPv6" } else { "IPv4" };
        text.push_str(&format!(
            " ({} resolves to an {family} address too, and clients that try it get this \
             error: serve it, or check one address alone)",
            target.host
        ));
    }
    text
}

/// What `echod check` was asked to do, validated by `cli.rs`.
#[derive(Clone, Debug)]
pub enum Request {
    /// `--list`: print each check and the defect it looks for.
    List,
    /// Run the checks.
    Run {
        /// What to check, and how.
        config: CheckConfig,
        /// One JSON object instead of lines.
        json: bool,
        /// Where to write a JUnit XML report too.
        junit: Option<std::path::PathBuf>,
    },
}

/// `echod check`: runs, prints, and returns the documented exit status;
/// `request` is the command line validated, or the sentence saying why it
/// is not (exit 2). Output that cannot be written (a closed pipe) is not
/// an error.
pub fn command(request: Result<Request, String>) -> ExitCode {
    let mut out = io::stdout().lock();
    let (config, json, junit) = match request {
        Ok(Request::List) => {
            let _ = out.write_all(report::render_list().as_bytes());
            return ExitCode::SUCCESS;
        }
        Ok(Request::Run {
            config,
            json,
            junit,
        }) => (config, json, junit),
        Err(err) => {
            eprintln!("echod check: {err}");
            return ExitCode::from(2);
        }
    };
    let mut print = |event: Event<'_>| match event {
        Event::Address(addr) if !json => {
            let _ = writeln!(out, "{}", report::render_header(&config, addr));
        }
        Event::Result(_, result) if !json => {
            let _ = writeln!(out, "{}", report::render_line(result));
        }
        Event::Unreachable(_, why) => eprintln!("echod check: {why}"),
        _ => {}
    };
    let report = match run(&config, &mut print) {
        Ok(report) => report,
        Err(err) => {
            eprintln!("echod check: {err}");
            if json {
                // Scripts reading stdout get an object too, with the reason.
                let _ = writeln!(out, "{}", report::error_json(&config, &err));
            }
            if let Some(path) = &junit {
                // CI finds a report that says why nothing ran; if even that
                // cannot be written, the sentence above says enough.
                let _ = std::fs::write(path, report::error_junit(&config, &err));
            }
            return ExitCode::from(2);
        }
    };
    // One line, as `bench --json`: for machines; `jq .` indents it.
    let text = if json {
        report.to_json().to_string()
    } else {
        report.render_summary()
    };
    let _ = writeln!(out, "{text}");
    if let Some(path) = junit {
        if let Err(err) = std::fs::write(&path, report.to_junit()) {
            eprintln!(
                "echod check: could not write the JUnit report to {}: {err}. Check that its \
                 directory exists and is writable",
                path.display()
            );
            return ExitCode::from(2);
        }
    }
    ExitCode::from(report.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(checks: &[&CheckInfo]) -> Vec<&'static str> {
        checks.iter().map(|c| c.name).collect()
    }

    #[test]
    fn names_are_unique_and_lowercase() {
        for (i, check) in CHECKS.iter().enumerate() {
            assert!(
                check
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '-'),
                "{}",
                check.name
            );
            assert!(CHECKS[..i].iter().all(|c| c.name != check.name));
        }
    }

    #[test]
    fn all_checks_of_the_transport_by_default() {
        let tcp = select(Transport::Tcp, &[], false).unwrap();
        assert_eq!(tcp.len(), 9);
        assert_eq!(tcp.last().unwrap().name, "reset-survival");
        let udp = select(Transport::Udp, &[], false).unwrap();
        assert_eq!(names(&udp), ["udp-sizes", "udp-source", "udp-interleaved"]);
    }

    #[test]
    fn strict_adds_the_checks_a_server_may_skip() {
        let tcp = select(Transport::Tcp, &[], true).unwrap();
        assert_eq!(tcp.len(), 10);
        assert!(tcp.iter().any(|c| c.name == "urgent-inline"));
        assert_eq!(tcp.last().unwrap().name, "reset-survival");
        let udp = select(Transport::Udp, &[], true).unwrap();
        assert_eq!(
            names(&udp),
            [
                "udp-sizes",
                "udp-source",
                "udp-source-wildcard",
                "udp-loop-guard",
                "udp-interleaved"
            ]
        );
        let only = ["urgent-inline".to_string()];
        assert_eq!(names(&select(Transport::Tcp, &only, false).unwrap()), only);
    }

    #[test]
    fn every_check_cites_its_rule() {
        for check in CHECKS {
            let (source, _) = check.rule.split_once(':').unwrap();
            assert!(
                source.starts_with("RFC ") || source.starts_with("CERT "),
                "{source}"
            );
        }
    }

    #[test]
    fn only_keeps_catalogue_order_and_drops_repeats() {
        let only = ["half-close", "echo", "echo"].map(String::from);
        let chosen = select(Transport::Tcp, &only, false).unwrap();
        assert_eq!(names(&chosen), ["echo", "half-close"]);
    }

    #[test]
    fn only_explains_unknown_names_and_the_wrong_transport() {
        let err = select(Transport::Tcp, &["echoo".into()], false).unwrap_err();
        assert!(err.contains("'echoo' is not a check"), "{err}");
        let err = select(Transport::Tcp, &["127.0.0.1:7".into()], false).unwrap_err();
        assert!(err.contains("put ADDR before --only"), "{err}");
        let err = select(Transport::Tcp, &["udp-sizes".into()], false).unwrap_err();
        assert!(err.contains("add --udp"), "{err}");
        let err = select(Transport::Udp, &["echo".into()], false).unwrap_err();
        assert!(err.contains("drop --udp"), "{err}");
    }

    #[test]
    fn never_replying_after_a_pass_is_named_for_what_was_seen() {
        let known = Known {
            echoes: true,
            silent: false,
        };
        let fail = || Verdict::fail(Some(Defect::NeverReplying), "nothing came back".into());
        let verdict = known.reconcile(Transport::Tcp, fail());
        assert_eq!(verdict.defect, Some(Defect::Stalls));
        assert!(
            verdict
                .detail
                .contains("earlier checks got their echo back")
        );
        let verdict = Known::default().reconcile(Transport::Tcp, fail());
        assert_eq!(verdict.defect, Some(Defect::NeverReplying));
    }

    #[test]
    fn defect_names_are_distinct() {
        let all = [
            Defect::NeverReplying,
            Defect::CorruptsBytes,
            Defect::ExtraBytes,
            Defect::LineBuffering,
            Defect::HoldsBackBytes,
            Defect::Stalls,
            Defect::ClosesEarly,
            Defect::ResetsConnection,
            Defect::IgnoresHalfClose,
            Defect::CloseOnEofWithoutFlush,
            Defect::OneClientAtATime,
            Defect::LimitedClients,
            Defect::SmallBacklog,
            Defect::BlocksOnSlowReader,
            Defect::UnboundedBuffering,
            Defect::DropsUrgentData,
            Defect::DiesOnReset,
            Defect::StoppedServing,
            Defect::UdpTruncation,
            Defect::UdpWrongSource,
            Defect::UdpCrossedReplies,
            Defect::UdpLoopRisk,
        ];
        for (i, d) in all.iter().enumerate() {
            assert!(all[..i].iter().all(|e| e.name() != d.name()));
        }
    }
}
