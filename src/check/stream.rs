//! The checks on one TCP connection: echo, binary, unbuffered, half-close,
//! eof-with-queued-output and slow-drip; and the sentences that turn what
//! came back into a verdict, shared with the multi-client checks.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::probe::{self, Received, RecvEnd, SendEnd, Sent, Until, exchange, receive, send};
use super::report::{fmt_bytes, fmt_duration};
use super::{Context, Defect, Known, Outcome, Unreachable, Verdict};
use crate::kit::deadline::{Deadline, out_of_time};
use crate::kit::payload::Payload;
use crate::kit::verify::Verifier;

/// The line the echo check sends.
const HELLO: &[u8] = b"echod check: is anybody there?\n";

/// The payload of the binary check after the 256 byte values.
const BINARY_RANDOM: u64 = 1024 * 1024;

/// What the half-close check sends before shutting down its side: more
/// than one read of a small server, small enough for any.
const HALF_CLOSE_BYTES: u64 = 64 * 1024;

/// The most the eof-with-queued-output check sends without reading. A
/// server with bounded buffers stops reading long before (echod on Linux
/// loopback: after about 8 MiB, most of it in socket buffers); one without
/// a bound is then holding echo it has not written yet.
const QUEUED_OUTPUT_BYTES: u64 = 16 * 1024 * 1024;

/// eof-with-queued-output's own socket buffers (SO_SNDBUF, SO_RCVBUF;
/// Linux doubles them): a small window, and a send buffer large enough to
/// keep a server that reads on busy.
const CLIENT_SEND_BUFFER: usize = 64 * 1024;
const CLIENT_RECV_BUFFER: usize = 16 * 1024;

/// Slow-drip: one byte every [`DRIP_GAP`] for [`DRIP`], a person typing
/// fast (so [`DRIP_BYTES`] in all).
const DRIP_GAP: Duration = Duration::from_millis(10);
pub(super) const DRIP: Duration = Duration::from_secs(2);
const DRIP_BYTES: usize = 200;

/// The verdict for an echo that did not come back exact: what was seen in
/// a sentence, and the defect it points at. `sent` is what the server was
/// given; `waited` the bound that ran out, if one did.
pub(super) fn shortfall(rx: &Received, sent: u64, waited: Duration) -> Verdict {
    let got = rx.bytes;
    let figures = |v: Verdict| v.figure("bytes_sent", sent).figure("bytes_received", got);
    if let Some(m) = rx.mismatch {
        let mut detail = format!(
            "byte {} of {} came back as 0x{:02x} instead of 0x{:02x}",
            m.offset,
            fmt_bytes(sent),
            m.got,
            m.sent
        );
        if m.sent == b'\n' && m.got == b'\r' {
            detail.push_str(" (the server rewrites line endings)");
        }
        return figures(Verdict::fail(Some(Defect::CorruptsBytes), detail))
            .figure("first_wrong_offset", m.offset);
    }
    if rx.extra > 0 {
        return figures(Verdict::fail(
            Some(Defect::ExtraBytes),
            format!(
                "{} came back for {} sent: the server adds bytes of its own",
                fmt_bytes(got),
                fmt_bytes(sent)
            ),
        ));
    }
    let (defect, detail) = match &rx.end {
        RecvEnd::TimedOut if got == 0 => (
            Defect::NeverReplying,
            format!(
                "nothing came back within {} for {} sent",
                fmt_duration(waited),
                fmt_bytes(sent)
            ),
        ),
        RecvEnd::TimedOut if rx.last == Some(b'\n') => (
            Defect::LineBuffering,
            format!(
                "{} of {} came back, up to a newline, then nothing within {}: the server \
                 echoes only complete lines",
                fmt_bytes(got),
                fmt_bytes(sent),
                fmt_duration(waited)
            ),
        ),
        RecvEnd::TimedOut => (
            Defect::Stalls,
            format!(
                "only {} of {} came back within {}: the echo stopped part way (the server \
                 hangs on this connection, or is far too slow)",
                fmt_bytes(got),
                fmt_bytes(sent),
                fmt_duration(waited)
            ),
        ),
        RecvEnd::Eof | RecvEnd::Complete => (
            Defect::ClosesEarly,
            format!(
                "the server closed the connection after echoing {} of {}",
                fmt_bytes(got),
                fmt_bytes(sent)
            ),
        ),
        RecvEnd::Reset => (
            Defect::ResetsConnection,
            format!(
                "the server reset the connection after echoing {} of {}",
                fmt_bytes(got),
                fmt_bytes(sent)
            ),
        ),
        RecvEnd::Failed(err) => {
            return figures(Verdict::fail(
                None,
                format!(
                    "receiving failed after {} of {}: {err}",
                    fmt_bytes(got),
                    fmt_bytes(sent)
                ),
            ));
        }
    };
    figures(Verdict::fail(Some(defect), detail))
}

/// The verdict after the client sent `sent`, shut down its side, and read
/// until EOF: every byte then EOF passes; what else came is named.
/// `client_finished` says whether the client's shutdown was sent, so that
/// a close after it is "on EOF" and one before it is "early"; `known` is
/// what earlier checks established, so that a server already seen to echo
/// is not called a discard server.
pub(super) fn after_half_close(
    rx: &Received,
    sent: u64,
    client_finished: bool,
    waited: Duration,
    known: &Known,
) -> Verdict {
    let got = rx.bytes;
    let figures = |v: Verdict| v.figure("bytes_sent", sent).figure("bytes_received", got);
    if rx.exact(sent) {
        return match rx.end {
            RecvEnd::Eof => figures(Verdict::pass(format!(
                "{} came back, then EOF",
                fmt_bytes(sent)
            ))),
            RecvEnd::Reset => figures(Verdict::fail(
                Some(Defect::ResetsConnection),
                format!(
                    "all {} came back, then the connection was reset instead of closed: the \
                     server aborts the connection (or closes it with input unread), so a \
                     client may lose the last echo bytes",
                    fmt_bytes(sent)
                ),
            )),
            _ => figures(Verdict::fail(
                Some(Defect::IgnoresHalfClose),
                format!(
                    "all {} came back, but the server did not close its side within {} after \
                     the client shut down its own: it ignores half-close, so `nc -N` and \
                     scripts wait forever",
                    fmt_bytes(sent),
                    fmt_duration(waited)
                ),
            )),
        };
    }
    let ended = match rx.end {
        RecvEnd::Eof => Some("closed"),
        RecvEnd::Reset => Some("reset"),
        _ => None,
    };
    if got == 0 && matches!(rx.end, RecvEnd::Eof) && !known.echoes {
        return figures(Verdict::fail(
            Some(Defect::NeverReplying),
            format!(
                "nothing came back for {}; the server closed the connection when the client \
                 finished sending (it discards what it reads, like an RFC 863 discard server)",
                fmt_bytes(sent)
            ),
        ));
    }
    if rx.mismatch.is_none() && rx.extra == 0 && client_finished {
        if let Some(how) = ended {
            let echoes = if known.echoes {
                "; earlier checks got their echo back, so the server echoes but"
            } else {
                ": the server"
            };
            return figures(Verdict::fail(
                Some(Defect::CloseOnEofWithoutFlush),
                format!(
                    "after the client shut down its write side, the server {how} the connection \
                     with only {} of {} echoed, {} missing{echoes} loses what it holds when the \
                     client half-closes (it closes on EOF without flushing its echo)",
                    fmt_bytes(got),
                    fmt_bytes(sent),
                    fmt_bytes(sent - got)
                ),
            ))
            .figure("bytes_missing", sent - got);
        }
    }
    shortfall(rx, sent, waited)
}

/// Adds what went wrong while sending, when it explains a failure.
fn with_send_note(verdict: Verdict, sent: &Sent) -> Verdict {
    match &sent.end {
        SendEnd::Failed(err) if verdict.outcome == Outcome::Fail => {
            let mut verdict = verdict;
            verdict.detail.push_str(&format!(
                " (sending failed after {}: {err})",
                fmt_bytes(sent.bytes)
            ));
            verdict
        }
        _ => verdict,
    }
}

/// Time from the start to the last byte received.
fn took(start: Instant, rx: &Received) -> Duration {
    rx.ended_at.saturating_duration_since(start)
}

/// echo: a short line comes back.
pub(super) fn echo(ctx: &Context) -> Result<Verdict, Unreachable> {
    let deadline = ctx.deadline();
    let stream = ctx.connect_first(deadline)?;
    let start = Instant::now();
    let len = HELLO.len() as u64;
    let (sent, rx) = exchange(
        &stream,
        Payload::Bytes(HELLO),
        false,
        Until::Count(len),
        deadline,
    );
    let verdict = if rx.exact(len) {
        Verdict::pass(format!(
            "{} came back exact in {}",
            fmt_bytes(len),
            fmt_duration(took(start, &rx))
        ))
        .figure("bytes_sent", len)
        .figure("bytes_received", rx.bytes)
        .millis("round_trip_ms", took(start, &rx))
    } else {
        let verdict = shortfall(&rx, len, ctx.timeout);
        if verdict.defect == Some(Defect::NeverReplying) {
            Verdict::fail(
                Some(Defect::NeverReplying),
                format!(
                    "the server accepted the connection but sent nothing back within {} for \
                     a {}-byte line",
                    fmt_duration(ctx.timeout),
                    len
                ),
            )
            .figure("bytes_sent", len)
            .figure("bytes_received", 0)
        } else {
            verdict
        }
    };
    Ok(with_send_note(verdict, &sent))
}

/// binary: all 256 byte values, then 1 MiB of random bytes with no newline.
pub(super) fn binary(ctx: &Context) -> Result<Verdict, Unreachable> {
    let deadline = ctx.deadline();
    let stream = ctx.connect_first(deadline)?;
    let start = Instant::now();
    let all_values: Vec<u8> = (0..=255).collect();
    let parts = [
        ("all 256 byte values", Payload::Bytes(&all_values)),
        (
            "1 MiB of random bytes",
            Payload::Random {
                seed: 256,
                len: BINARY_RANDOM,
            },
        ),
    ];
    for (what, payload) in parts {
        let (sent, rx) = exchange(
            &stream,
            payload,
            false,
            Until::Count(payload.len()),
            deadline,
        );
        if !rx.exact(payload.len()) {
            let verdict = shortfall(&rx, payload.len(), ctx.timeout).about(what);
            return Ok(with_send_note(verdict, &sent));
        }
    }
    let elapsed = start.elapsed();
    Ok(Verdict::pass(format!(
        "all 256 byte values and 1 MiB of random bytes came back exact in {}",
        fmt_duration(elapsed)
    ))
    .figure("bytes_sent", 256 + BINARY_RANDOM)
    .figure("bytes_received", 256 + BINARY_RANDOM)
    .millis("elapsed_ms", elapsed))
}

/// unbuffered: a few bytes with no newline come back promptly. If they do
/// not, a newline is sent: bytes that come back then prove line buffering.
pub(super) fn unbuffered(ctx: &Context) -> Result<Verdict, Unreachable> {
    const WORD: &[u8] = b"echod";
    let deadline = ctx.deadline();
    // Half the time for the bytes alone; the rest to see whether a newline
    // releases them.
    let prompt = Deadline::after(ctx.timeout / 2);
    let stream = ctx.connect_first(deadline)?;
    let start = Instant::now();
    let len = WORD.len() as u64;
    let (sent, rx) = exchange(
        &stream,
        Payload::Bytes(WORD),
        false,
        Until::Count(len),
        prompt,
    );
    if rx.exact(len) {
        return Ok(Verdict::pass(format!(
            "{len} bytes without a newline came back in {}",
            fmt_duration(took(start, &rx))
        ))
        .figure("bytes_sent", len)
        .millis("round_trip_ms", took(start, &rx)));
    }
    if rx.bytes > 0 || !matches!(rx.end, RecvEnd::TimedOut) || !matches!(sent.end, SendEnd::Done) {
        return Ok(with_send_note(shortfall(&rx, len, ctx.timeout / 2), &sent));
    }
    // Nothing yet: does a newline bring them?
    let line = b"echod\n";
    let newline = &line[WORD.len()..];
    let sent_newline = send(&stream, Payload::Bytes(newline), deadline, None);
    let mut verifier = Verifier::new(Payload::Bytes(line));
    let after = receive(
        &stream,
        &mut verifier,
        Until::Count(line.len() as u64),
        deadline,
    );
    let waited = fmt_duration(ctx.timeout / 2);
    let verdict = if after.exact(line.len() as u64) {
        Verdict::fail(
            Some(Defect::LineBuffering),
            format!(
                "{len} bytes without a newline did not come back within {waited}; they came \
                 back only after a newline was sent: the server echoes complete lines only"
            ),
        )
    } else if after.bytes == 0 && matches!(after.end, RecvEnd::TimedOut) {
        Verdict::fail(
            Some(Defect::NeverReplying),
            format!(
                "{len} bytes without a newline did not come back within {waited}, nor after a \
                 newline was sent"
            ),
        )
    } else {
        shortfall(&after, line.len() as u64, ctx.timeout).about("after a newline")
    };
    Ok(with_send_note(
        verdict.figure("bytes_sent", len),
        &sent_newline,
    ))
}

/// half-close: send, shut down the write side, receive every byte and EOF.
pub(super) fn half_close(ctx: &Context) -> Result<Verdict, Unreachable> {
    let deadline = ctx.deadline();
    let stream = ctx.connect_first(deadline)?;
    let start = Instant::now();
    let payload = Payload::Random {
        seed: 2,
        len: HALF_CLOSE_BYTES,
    };
    let (sent, rx) = exchange(&stream, payload, true, Until::Eof, deadline);
    let finished = matches!(sent.end, SendEnd::Done);
    let verdict = after_half_close(&rx, payload.len(), finished, ctx.timeout, &ctx.known);
    let verdict = if verdict.outcome == Outcome::Pass {
        let elapsed = took(start, &rx);
        Verdict::pass(format!(
            "{} sent, write side shut down: all came back, then EOF, in {}",
            fmt_bytes(payload.len()),
            fmt_duration(elapsed)
        ))
        .figure("bytes_sent", payload.len())
        .figure("bytes_received", rx.bytes)
        .millis("elapsed_ms", elapsed)
    } else {
        verdict
    };
    Ok(with_send_note(verdict, &sent))
}

/// How far filling a connection that does not read got.
pub(super) struct Filled {
    /// Bytes the server took.
    pub(super) bytes: u64,
    /// True when it stopped taking them before the limit.
    pub(super) stalled: bool,
}

/// Sends up to `limit` random bytes from `seed` without reading, until the
/// server stops taking them (see [`Context::stall`]). A server that keeps
/// taking them until `deadline` is a skip (too slow to tell), unless
/// `enough_when_time_is_up`; a failed send is a failure.
pub(super) fn fill_without_reading(
    stream: &TcpStream,
    seed: u64,
    limit: u64,
    ctx: &Context,
    deadline: Deadline,
    enough_when_time_is_up: bool,
) -> Result<Filled, Verdict> {
    let payload = Payload::Random { seed, len: limit };
    let sent = send(stream, payload, deadline, Some(ctx.stall()));
    let bytes = sent.bytes;
    match sent.end {
        SendEnd::Done => Ok(Filled {
            bytes,
            stalled: false,
        }),
        SendEnd::Stalled => Ok(Filled {
            bytes,
            stalled: true,
        }),
        // The server is still taking bytes it cannot have echoed: it
        // holds them, which is all some checks need.
        SendEnd::TimedOut if enough_when_time_is_up => Ok(Filled {
            bytes,
            stalled: false,
        }),
        SendEnd::TimedOut => Err(Verdict::skip(format!(
            "the server took {} in {} from a client that was not reading, without stopping \
             and without reaching {}: too slow to tell; raise --timeout",
            fmt_bytes(bytes),
            fmt_duration(ctx.timeout),
            fmt_bytes(limit)
        ))
        .figure("bytes_sent", bytes)),
        SendEnd::Failed(err) => {
            let how = if probe::is_reset(&err) {
                "the server reset the connection"
            } else {
                "sending failed"
            };
            Err(Verdict::fail(
                Some(Defect::ResetsConnection),
                format!(
                    "{how} after {} from a client that was not reading yet ({err})",
                    fmt_bytes(bytes)
                ),
            )
            .figure("bytes_sent", bytes))
        }
    }
}

/// How [`read_back`] reads after shutting down its write side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pace {
    /// At once and at full speed (backpressure: what is tested there is
    /// that the bytes come back at all).
    AtOnce,
    /// Not at all for [`EOF_PAUSE`], then slowly for [`SLOW_PHASE`], then
    /// at full speed: the server meets the EOF while it still holds echo
    /// and the client is not draining it, as on a slow link.
    Patient,
}

/// How long eof-with-queued-output waits after its shutdown before it
/// reads at all. A server that reads on while it holds echo meets the EOF
/// within this time with its echo still queued (the client is not
/// reading, every buffer between is full), so what it does then shows:
/// keep it and flush it (RFC 9293 section 3.6: what was sent before a
/// CLOSE is still delivered), or throw it away and close. Read at
/// once, and a server that makes one nonblocking send of what it holds
/// and closes finds the client draining at full speed and passes by luck.
pub(super) const EOF_PAUSE: Duration = Duration::from_millis(500);

/// Then it reads [`SLOW_READ`] bytes every [`SLOW_GAP`] for this long (a
/// slow link, 400 KiB/s), so that a server which reads the EOF only once
/// the client reads (its buffer bounded) meets it with a slow reader too:
/// with the client's small buffers ([`CLIENT_SEND_BUFFER`],
/// [`CLIENT_RECV_BUFFER`]) the input still queued when the server stops
/// taking bytes is mostly its own receive buffer, often less than this
/// phase reads.
pub(super) const SLOW_PHASE: Duration = Duration::from_millis(1000);
const SLOW_READ: u64 = 4 * 1024;
const SLOW_GAP: Duration = Duration::from_millis(10);

/// Shuts down the write side of a connection filled by
/// [`fill_without_reading`] and reads the echo back to EOF at `pace`: a
/// second wait, with a timeout of its own (after the pause, for
/// [`Pace::Patient`]). The FIN goes out after whatever the kernel still
/// holds for the server, so the server meets EOF with echo of its own
/// still queued.
pub(super) fn read_back(
    stream: &TcpStream,
    seed: u64,
    filled: &Filled,
    ctx: &Context,
    pace: Pace,
) -> (Received, Verdict) {
    let shut = stream.shutdown(Shutdown::Write);
    let mut verifier = Verifier::new(Payload::Random {
        seed,
        len: filled.bytes,
    });
    let rx = match pace {
        Pace::AtOnce => receive(stream, &mut verifier, Until::Eof, ctx.deadline()),
        Pace::Patient => {
            thread::sleep(EOF_PAUSE);
            let deadline = Deadline::after(SLOW_PHASE + ctx.timeout);
            match receive_slowly(stream, &mut verifier, deadline) {
                Some(ended) => ended,
                None => receive(stream, &mut verifier, Until::Eof, deadline),
            }
        }
    };
    let verdict = after_half_close(&rx, filled.bytes, shut.is_ok(), ctx.timeout, &ctx.known);
    (rx, verdict)
}

/// Reads [`SLOW_READ`] bytes every [`SLOW_GAP`] for [`SLOW_PHASE`]:
/// `Some` when receiving ended meanwhile (EOF, reset, an error), `None`
/// when the slow phase is over and reading goes on.
fn receive_slowly(
    stream: &TcpStream,
    verifier: &mut Verifier<'_>,
    deadline: Deadline,
) -> Option<Received> {
    let slow = Deadline::after(SLOW_PHASE).min(deadline);
    while !slow.passed() {
        let want = Until::Count(verifier.received() + SLOW_READ);
        let rx = receive(stream, verifier, want, slow);
        match rx.end {
            RecvEnd::Complete => thread::sleep(SLOW_GAP.min(slow.remaining())),
            RecvEnd::TimedOut => return None,
            _ => return Some(rx),
        }
    }
    None
}

/// eof-with-queued-output's connection, with small socket buffers on
/// this side ([`CLIENT_RECV_BUFFER`]), set before the connect so that the
/// window the client offers is small from the start: what is in flight
/// when the server stops taking bytes is then mostly in the server's
/// hands, and each slow read opens the window by little, so the server
/// meets its EOF with the path still full. Failing to connect is the
/// server being unreachable, as for every check's first connection.
fn connect_small(ctx: &Context, deadline: Deadline) -> Result<TcpStream, Unreachable> {
    let setup = || -> io::Result<TcpStream> {
        let wait = deadline.socket_timeout().ok_or_else(out_of_time)?;
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(ctx.addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        // If the system refuses, the check runs with the buffers it has.
        let _ = socket.set_send_buffer_size(CLIENT_SEND_BUFFER);
        let _ = socket.set_recv_buffer_size(CLIENT_RECV_BUFFER);
        socket.connect_timeout(&ctx.addr.into(), wait)?;
        Ok(socket.into())
    };
    setup().map_err(Unreachable)
}

/// eof-with-queued-output: send MiBs without reading, shut down the write
/// side, pause, then read (slowly at first): every byte must arrive before
/// EOF.
pub(super) fn eof_with_queued_output(ctx: &Context) -> Result<Verdict, Unreachable> {
    const SEED: u64 = 3;
    let deadline = ctx.deadline();
    let stream = connect_small(ctx, deadline)?;
    let start = Instant::now();
    // Half the wait to fill: a server still taking bytes then holds them.
    let fill_until = Deadline::after(ctx.timeout / 2).min(deadline);
    let filled =
        match fill_without_reading(&stream, SEED, QUEUED_OUTPUT_BYTES, ctx, fill_until, true) {
            Ok(filled) => filled,
            Err(verdict) => return Ok(verdict),
        };
    let (rx, verdict) = read_back(&stream, SEED, &filled, ctx, Pace::Patient);
    if verdict.outcome != Outcome::Pass {
        return Ok(verdict);
    }
    let elapsed = took(start, &rx);
    let until = if filled.stalled {
        " until the server stopped taking bytes"
    } else {
        ""
    };
    Ok(Verdict::pass(format!(
        "sent {} without reading{until}, shut down the write side and read nothing for {}, \
         then slowly: all came back, then EOF, in {}",
        fmt_bytes(filled.bytes),
        fmt_duration(EOF_PAUSE),
        fmt_duration(elapsed)
    ))
    .figure("bytes_sent", filled.bytes)
    .figure("bytes_received", rx.bytes)
    .figure("bytes_missing", 0)
    .figure("server_stopped_reading", filled.stalled)
    .millis("pause_ms", EOF_PAUSE)
    .millis("elapsed_ms", elapsed))
}

/// urgent-inline: 100 bytes, one urgent byte (MSG_OOB), 100 bytes; all
/// 201 must come back in order. RFC 9293 keeps urgent data in the stream
/// (the urgent pointer only marks it), so an echo sends it back with the
/// rest; a server that lets the kernel keep it out of band (no
/// SO_OOBINLINE) drops it, and one that takes the read stopped short at
/// the mark for "drained" leaves the bytes behind it unread.
pub(super) fn urgent_inline(ctx: &Context) -> Result<Verdict, Unreachable> {
    let deadline = ctx.deadline();
    let stream = ctx.connect_first(deadline)?;
    let start = Instant::now();
    let mut line = vec![b'a'; 100];
    line.push(b'!');
    line.extend_from_slice(&[b'b'; 100]);
    let len = line.len() as u64;
    let socket = socket2::SockRef::from(&stream);
    let sent = (&stream)
        .write_all(&line[..100])
        .and_then(|()| socket.send_out_of_band(&line[100..101]).map(|_| ()))
        .and_then(|()| (&stream).write_all(&line[101..]));
    if let Err(err) = sent {
        return Ok(Verdict::fail(None, format!("sending failed: {err}")));
    }
    let mut verifier = Verifier::new(Payload::Bytes(&line));
    let rx = receive(&stream, &mut verifier, Until::Count(len), deadline);
    if rx.exact(len) {
        return Ok(Verdict::pass(format!(
            "100 bytes, 1 urgent byte (MSG_OOB) and 100 bytes came back inline and in order in \
             {}",
            fmt_duration(took(start, &rx))
        ))
        .figure("bytes_sent", len)
        .millis("round_trip_ms", took(start, &rx)));
    }
    let verdict = match (&rx.mismatch, rx.bytes, &rx.end) {
        (Some(m), _, _) if m.offset == 100 && m.sent == b'!' => Verdict::fail(
            Some(Defect::DropsUrgentData),
            "byte 100, the urgent one, did not come back in its place (the bytes after it \
             did): the server leaves urgent data out of the stream (it does not set \
             SO_OOBINLINE)"
                .to_string(),
        ),
        (None, 100, RecvEnd::TimedOut) => Verdict::fail(
            Some(Defect::DropsUrgentData),
            format!(
                "the 100 bytes before the urgent byte came back, then nothing within {}: the \
                 server stops at the urgent mark (it takes the short read there for \
                 \"drained\") or drops the urgent byte and what follows",
                fmt_duration(ctx.timeout)
            ),
        ),
        _ => shortfall(&rx, len, ctx.timeout),
    };
    Ok(verdict
        .figure("bytes_sent", len)
        .figure("bytes_received", rx.bytes))
}

/// slow-drip: 1 byte every 10 ms for 2 s is echoed as it goes. A byte
/// whose echo is still missing `timeout` after the last progress ends the
/// check.
pub(super) fn slow_drip(ctx: &Context) -> Result<Verdict, Unreachable> {
    let deadline = Deadline::after(DRIP + ctx.timeout);
    let stream = ctx.connect_first(deadline)?;
    let payload: Vec<u8> = (0..DRIP_BYTES).map(|i| b'a' + (i % 26) as u8).collect();
    let stop = AtomicBool::new(false);
    let (sent_at, send_error, arrivals, rx) = thread::scope(|scope| {
        let writer = scope.spawn(|| drip_bytes(&stream, &payload, &stop, deadline));
        let (arrivals, rx) = collect_drip(&stream, &payload, ctx.timeout, deadline);
        // The writer sees this within one gap; its writes of one byte each
        // cannot block for long (and are bounded by the deadline anyway).
        stop.store(true, Ordering::SeqCst);
        let (sent_at, error) = writer.join().unwrap_or_else(|_| {
            (
                Vec::new(),
                Some(io::Error::other("the sending thread failed")),
            )
        });
        (sent_at, error, arrivals, rx)
    });
    let len = DRIP_BYTES as u64;
    if !rx.exact(len) {
        let sent = sent_at.len();
        if rx.bytes == 0 && matches!(rx.end, RecvEnd::TimedOut) && send_error.is_none() {
            let wait = Deadline::after(ctx.timeout).min(deadline);
            if released_by_newline(&stream, &payload[..sent], wait) {
                return Ok(Verdict::fail(
                    Some(Defect::LineBuffering),
                    format!(
                        "none of {sent} bytes sent 1 every 10 ms came back within {}; they \
                         came back only after a newline was sent: the server echoes complete \
                         lines only",
                        fmt_duration(ctx.timeout)
                    ),
                )
                .figure("bytes_sent", sent));
            }
        }
        let mut verdict = shortfall(&rx, sent as u64, ctx.timeout).about("1 byte every 10 ms");
        if let Some(err) = send_error {
            verdict
                .detail
                .push_str(&format!(" (sending failed: {err})"));
        }
        return Ok(verdict);
    }
    let mut lags: Vec<Duration> = arrivals
        .iter()
        .zip(&sent_at)
        .map(|(got, sent)| got.saturating_duration_since(*sent))
        .collect();
    lags.sort();
    let median = lags[lags.len() / 2];
    let max = lags[lags.len() - 1];
    let last_sent = sent_at[sent_at.len() - 1];
    let during = arrivals.iter().filter(|&&at| at <= last_sent).count();
    let verdict = if during * 2 >= DRIP_BYTES {
        Verdict::pass(format!(
            "{DRIP_BYTES} bytes sent 1 every 10 ms came back as they went: echo lag median {}, \
             max {}",
            fmt_duration(median),
            fmt_duration(max)
        ))
    } else {
        Verdict::fail(
            Some(Defect::HoldsBackBytes),
            format!(
                "all {DRIP_BYTES} bytes came back, but only {during} of them before the last \
                 was sent (echo lag median {}, max {}): the server holds small pieces back",
                fmt_duration(median),
                fmt_duration(max)
            ),
        )
    };
    Ok(verdict
        .figure("bytes_sent", len)
        .figure("echoed_while_sending", during)
        .millis("lag_median_ms", median)
        .millis("lag_max_ms", max))
}

/// Sends a newline after `held`, which did not come back: true if they
/// all come back now, followed by the newline.
fn released_by_newline(stream: &TcpStream, held: &[u8], deadline: Deadline) -> bool {
    let sent = send(stream, Payload::Bytes(b"\n"), deadline, None);
    if !matches!(sent.end, SendEnd::Done) {
        return false;
    }
    let mut line = held.to_vec();
    line.push(b'\n');
    let mut verifier = Verifier::new(Payload::Bytes(&line));
    let rx = receive(
        stream,
        &mut verifier,
        Until::Count(line.len() as u64),
        deadline,
    );
    rx.exact(line.len() as u64)
}

/// Slow-drip's writer: one byte per [`DRIP_GAP`], until done, told to
/// stop, or a write fails. Returns when each byte was sent.
fn drip_bytes(
    mut stream: &TcpStream,
    payload: &[u8],
    stop: &AtomicBool,
    deadline: Deadline,
) -> (Vec<Instant>, Option<io::Error>) {
    let start = Instant::now();
    let mut sent_at = Vec::with_capacity(payload.len());
    for (i, byte) in payload.iter().enumerate() {
        let due = start + DRIP_GAP * i as u32;
        // Sleeps are at most one gap long, so a stop request is seen soon.
        while Instant::now() < due {
            if stop.load(Ordering::SeqCst) {
                return (sent_at, None);
            }
            thread::sleep(due.saturating_duration_since(Instant::now()).min(DRIP_GAP));
        }
        if stop.load(Ordering::SeqCst) || deadline.passed() {
            return (sent_at, None);
        }
        let result = stream
            .set_write_timeout(Some(deadline.remaining().max(Duration::from_millis(1))))
            .and_then(|()| stream.write_all(std::slice::from_ref(byte)));
        if let Err(err) = result {
            return (sent_at, Some(err));
        }
        sent_at.push(Instant::now());
    }
    (sent_at, None)
}

/// Slow-drip's reader: when each echoed byte arrived, and how reading
/// ended. Gives up when no byte came for `patience`.
fn collect_drip(
    mut stream: &TcpStream,
    payload: &[u8],
    patience: Duration,
    deadline: Deadline,
) -> (Vec<Instant>, Received) {
    let mut verifier = Verifier::new(Payload::Bytes(payload));
    let mut arrivals = Vec::with_capacity(payload.len());
    let mut buf = [0u8; DRIP_BYTES];
    let mut progress = Instant::now();
    let end = loop {
        let want = payload.len() - arrivals.len().min(payload.len());
        if want == 0 {
            break RecvEnd::Complete;
        }
        let wait = Deadline::after(patience.saturating_sub(progress.elapsed())).min(deadline);
        if wait.passed() {
            break RecvEnd::TimedOut;
        }
        let result = stream
            .set_read_timeout(Some(wait.remaining().max(Duration::from_millis(1))))
            .and_then(|()| stream.read(&mut buf[..want]));
        match result {
            Ok(0) => break RecvEnd::Eof,
            Ok(n) => {
                progress = Instant::now();
                arrivals.extend(std::iter::repeat_n(progress, n));
                verifier.push(&buf[..n]);
            }
            Err(err) => {
                if let Some(end) = probe::classify_read_error(err) {
                    break end;
                }
            }
        }
    };
    let first_at = arrivals.first().copied();
    (arrivals, Received::new(&verifier, end, first_at))
}

// One byte per gap for the whole drip.
const _: () = assert!(DRIP_BYTES as u128 * DRIP_GAP.as_millis() == DRIP.as_millis());

#[cfg(test)]
mod tests {
    use super::*;

    fn received(bytes: u64, last: Option<u8>, end: RecvEnd) -> Received {
        Received {
            bytes,
            extra: 0,
            mismatch: None,
            last,
            first_at: None,
            ended_at: Instant::now(),
            end,
        }
    }

    const WAIT: Duration = Duration::from_secs(1);

    #[test]
    fn a_shortfall_names_what_it_points_at() {
        let cases = [
            (received(0, None, RecvEnd::TimedOut), Defect::NeverReplying),
            (
                received(11, Some(b'\n'), RecvEnd::TimedOut),
                Defect::LineBuffering,
            ),
            (received(11, Some(b'x'), RecvEnd::TimedOut), Defect::Stalls),
            (received(11, Some(b'x'), RecvEnd::Eof), Defect::ClosesEarly),
            (
                received(11, Some(b'x'), RecvEnd::Reset),
                Defect::ResetsConnection,
            ),
        ];
        for (rx, defect) in cases {
            assert_eq!(shortfall(&rx, 100, WAIT).defect, Some(defect), "{rx:?}");
        }
    }

    #[test]
    fn a_shortfall_reports_the_first_wrong_offset() {
        let mut rx = received(100, None, RecvEnd::Complete);
        rx.mismatch = Some(crate::kit::verify::Mismatch {
            offset: 10,
            sent: b'\n',
            got: b'\r',
        });
        let verdict = shortfall(&rx, 100, WAIT);
        assert_eq!(verdict.defect, Some(Defect::CorruptsBytes));
        assert!(
            verdict.detail.contains("byte 10 of 100 bytes"),
            "{}",
            verdict.detail
        );
        assert!(verdict.detail.contains("rewrites line endings"));
        assert!(verdict.figures.contains(&("first_wrong_offset", 10.into())));
    }

    #[test]
    fn after_half_close_tells_hang_reset_and_lost_bytes_apart() {
        let all_then = |end| received(100, Some(b'x'), end);
        assert_eq!(
            after_half_close(&all_then(RecvEnd::Eof), 100, true, WAIT, &Known::default()).outcome,
            Outcome::Pass
        );
        let cases = [
            (all_then(RecvEnd::TimedOut), true, Defect::IgnoresHalfClose),
            (all_then(RecvEnd::Reset), true, Defect::ResetsConnection),
            (
                received(40, Some(b'x'), RecvEnd::Eof),
                true,
                Defect::CloseOnEofWithoutFlush,
            ),
            (
                received(40, Some(b'x'), RecvEnd::Eof),
                false,
                Defect::ClosesEarly,
            ),
        ];
        for (rx, finished, defect) in cases {
            let verdict = after_half_close(&rx, 100, finished, WAIT, &Known::default());
            assert_eq!(verdict.defect, Some(defect), "{rx:?}: {}", verdict.detail);
        }
    }
}
