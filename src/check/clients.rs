//! The checks with several TCP clients at once: concurrency, backpressure
//! and reset-survival.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::probe::{
    self, Received, RecvEnd, SendEnd, Until, echo_line, exchange, receive, receive_ready, send,
};
use super::report::{fmt_bytes, fmt_duration};
use super::stream::{Pace, after_half_close, fill_without_reading, read_back, shortfall};
use super::{Context, Defect, Known, Outcome, Unreachable, Verdict};
use crate::kit::deadline::Deadline;
use crate::kit::payload::Payload;
use crate::kit::target::connect_by as connect;
use crate::kit::verify::Verifier;

/// What each concurrency client sends after its first echo.
const CONCURRENCY_REST: u64 = 16 * 1024;

/// Threads that run the concurrency clients' second phase.
const CONCURRENCY_WORKERS: usize = 16;

/// The most the backpressure check sends to a client that reads nothing.
/// Socket buffers at both ends hold up to about 40 MiB with common Linux
/// settings (4 MiB to send, 32 MiB to receive); a server that takes more
/// than this keeps the rest in its own memory, without bound.
const BACKPRESSURE_LIMIT: u64 = 64 * 1024 * 1024;

/// reset-survival: how many clients reset, and what each sends first.
const RESETTERS: usize = 6;
const RESETTER_BYTES: u64 = 256 * 1024;
/// The most a resetter waits to send its bytes and to read part of their
/// echo: enough on any link a check runs over, and six of them leave the
/// fresh client its own whole `--timeout`.
const RESETTER_STEP: Duration = Duration::from_secs(1);

/// The most all the resetters' steps take together.
pub(super) const RESETTERS_AT_MOST: Duration = RESETTER_STEP.saturating_mul(RESETTERS as u32);

/// True for "this process has too many files open".
fn out_of_files(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// A line each client sends first, different for each.
fn greeting(i: usize) -> Vec<u8> {
    format!("echod check client {i}\n").into_bytes()
}

/// A connect that takes this long was not answered at first: the kernel
/// retransmits an unanswered SYN after 1 s, which is what a client sees
/// when the server's listen backlog is full. A tenth of the clients (at
/// least two) waiting this long fails the concurrency check; one lost SYN
/// on a real network does not.
const SLOW_CONNECT: Duration = Duration::from_millis(900);

/// concurrency: N clients connected at once each get a first echo; then
/// each sends the rest, half-closes and gets exactly its bytes.
pub(super) fn concurrency(ctx: &Context) -> Result<Verdict, Unreachable> {
    let n = ctx.clients;
    let deadline = ctx.deadline();
    let start = Instant::now();
    let (streams, slow, failure) = connect_all(ctx, n, deadline);
    if let Some(err) = failure {
        if streams.is_empty() {
            return Err(Unreachable(err));
        }
        let i = streams.len();
        if out_of_files(&err) {
            return Ok(Verdict::skip(format!(
                "this process could open only {i} sockets ({err}); lower --clients or raise \
                 the limit on open files (ulimit -n)"
            )));
        }
        let verdict = if slow > 0 {
            Verdict::fail(
                Some(Defect::SmallBacklog),
                format!(
                    "only {i} of {n} clients connected within {} ({err}), and {slow} of those \
                     waited a second or more to be accepted: the server's listen backlog \
                     overflows when clients arrive together (raise the backlog its listen() \
                     asks for, e.g. to 128; socat's default is 5: give it backlog=128)",
                    fmt_duration(ctx.timeout)
                ),
            )
        } else {
            Verdict::fail(
                Some(Defect::LimitedClients),
                format!(
                    "only {i} of {n} clients could connect ({err}): the server refuses \
                     connections beyond {i}, or its accept queue is full"
                ),
            )
        };
        return Ok(verdict
            .figure("clients", n)
            .figure("connected", i)
            .figure("slow_connects", slow));
    }
    if let Some(verdict) = first_echoes(&streams, deadline, ctx.timeout, slow, &ctx.known) {
        return Ok(verdict.figure("clients", n));
    }
    let first_round = start.elapsed();
    if let Some(verdict) = each_finishes(&streams, deadline, ctx.timeout, &ctx.known) {
        return Ok(verdict.figure("clients", n));
    }
    let elapsed = start.elapsed();
    let figures = |v: Verdict| {
        v.figure("clients", n)
            .figure("slow_connects", slow)
            .millis("first_echoes_ms", first_round)
            .millis("elapsed_ms", elapsed)
    };
    if slow >= (n / 10).max(2) {
        return Ok(figures(Verdict::fail(
            Some(Defect::SmallBacklog),
            format!(
                "all {n} clients were served, but {slow} of them waited a second or more for \
                 the server to accept their connection (the first echo of all came within \
                 {}): its listen backlog overflows when clients arrive together, and the \
                 kernel drops their SYNs (raise the backlog its listen() asks for, e.g. to \
                 128; socat's default is 5: give it backlog=128)",
                fmt_duration(first_round)
            ),
        )));
    }
    Ok(figures(Verdict::pass(format!(
        "{n} clients connected at once and each got its first echo, all within {}; then each \
         sent {} more, half-closed, and got exactly its bytes and EOF, in {} in all",
        fmt_duration(first_round),
        fmt_bytes(CONCURRENCY_REST),
        fmt_duration(elapsed)
    ))))
}

/// Connects `n` clients from a few threads at once, as clients arrive in
/// a burst. Returns the connected streams (in order, up to the first that
/// failed), how many connects were slow (see [`SLOW_CONNECT`]), and the
/// first failure.
fn connect_all(
    ctx: &Context,
    n: usize,
    deadline: Deadline,
) -> (Vec<TcpStream>, usize, Option<io::Error>) {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, io::Result<TcpStream>, Duration)>> =
        Mutex::new(Vec::with_capacity(n));
    thread::scope(|scope| {
        for _ in 0..CONCURRENCY_WORKERS.min(n) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= n {
                        return;
                    }
                    let start = Instant::now();
                    let result = connect(ctx.addr, deadline);
                    let failed = result.is_err();
                    let mut results = results.lock().unwrap_or_else(|e| e.into_inner());
                    results.push((i, result, start.elapsed()));
                    if failed {
                        // Stop every worker: the check has its answer.
                        next.store(n, Ordering::SeqCst);
                        return;
                    }
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|(i, _, _)| *i);
    let slow = results
        .iter()
        .filter(|(_, r, took)| r.is_ok() && *took >= SLOW_CONNECT)
        .count();
    let mut streams = Vec::with_capacity(n);
    for (_, result, _) in results {
        match result {
            Ok(stream) => streams.push(stream),
            Err(err) => return (streams, slow, Some(err)),
        }
    }
    (streams, slow, None)
}

/// Concurrency, first phase: every client sends its greeting, then each
/// must get it back while all are connected. `None` when all did.
fn first_echoes(
    streams: &[TcpStream],
    deadline: Deadline,
    timeout: Duration,
    slow: usize,
    known: &Known,
) -> Option<Verdict> {
    let n = streams.len();
    for (i, stream) in streams.iter().enumerate() {
        let greeting = greeting(i);
        let sent = send(stream, Payload::Bytes(&greeting), deadline, None);
        if !matches!(sent.end, SendEnd::Done) {
            return Some(Verdict::fail(
                None,
                format!(
                    "client {i} of {n} could not send its first line: {:?}",
                    sent.end
                ),
            ));
        }
    }
    let mut served = 0;
    let mut silent = 0;
    let mut waiting = Vec::new();
    let mut first_failure: Option<(usize, Received, u64)> = None;
    for (i, stream) in streams.iter().enumerate() {
        let greeting = greeting(i);
        let len = greeting.len() as u64;
        // Once the deadline has passed, take only echoes already there:
        // the wait stays bounded however many clients are left.
        let mut verifier = Verifier::new(Payload::Bytes(&greeting));
        let rx = if deadline.passed() {
            receive_ready(stream, &mut verifier, len)
        } else {
            receive(stream, &mut verifier, Until::Count(len), deadline)
        };
        if rx.exact(len) {
            served += 1;
            continue;
        }
        if rx.bytes == 0 && matches!(rx.end, RecvEnd::TimedOut) {
            silent += 1;
            waiting.push(i);
        }
        if first_failure.is_none() {
            first_failure = Some((i, rx, len));
        }
    }
    let (i, rx, len) = first_failure?;
    let verdict = if silent == n && known.echoes {
        Verdict::fail(
            Some(Defect::LimitedClients),
            format!(
                "all {n} clients connected, and none got its first line back within {}, \
                 although a lone client was echoed in earlier checks: the server serves no \
                 one once this many clients are connected",
                fmt_duration(timeout)
            ),
        )
    } else if silent == n {
        Verdict::fail(
            Some(Defect::NeverReplying),
            format!(
                "all {n} clients connected, and none got its first line back within {}",
                fmt_duration(timeout)
            ),
        )
    } else if silent == n - served && served == 1 {
        Verdict::fail(
            Some(Defect::OneClientAtATime),
            format!(
                "only 1 of {n} clients got its first echo while all were connected; the other \
                 {} got nothing within {}: the server serves one client at a time",
                n - 1,
                fmt_duration(timeout)
            ),
        )
    } else if silent == n - served && served > 1 {
        // A server that serves so many at a time never serves the others
        // while the first stay connected; one whose listen backlog
        // overflowed serves them late, once the kernel retransmits what
        // it dropped. A second wait tells the two apart.
        let late = late_echoes(streams, &waiting, Deadline::after(timeout));
        if late > 0 || slow > 0 {
            Verdict::fail(
                Some(Defect::SmallBacklog),
                format!(
                    "only {served} of {n} clients got their first echo within {} while all \
                     were connected; {late} more got it within {} after that, although no \
                     client had left ({slow} waited a second or more to connect): the server \
                     serves them late, as when its listen backlog overflows and the kernel \
                     drops their packets until they are sent again (give it a larger backlog)",
                    fmt_duration(timeout),
                    fmt_duration(timeout)
                ),
            )
            .figure("served_late", late)
        } else {
            Verdict::fail(
                Some(Defect::LimitedClients),
                format!(
                    "only {served} of {n} clients got their first echo while all were \
                     connected; the other {} got nothing within {}, nor in {} more: the \
                     server serves at most {served} clients at a time",
                    n - served,
                    fmt_duration(timeout),
                    fmt_duration(timeout)
                ),
            )
        }
    } else {
        shortfall(&rx, len, timeout).about(&format!("client {i} of {n}, first line"))
    };
    Some(verdict.figure("served_at_once", served))
}

/// Concurrency, after a first wait: how many of the clients `waiting`
/// (which got nothing yet) get their first echo before `deadline`.
fn late_echoes(streams: &[TcpStream], waiting: &[usize], deadline: Deadline) -> usize {
    let mut late = 0;
    for &i in waiting {
        let greeting = greeting(i);
        let len = greeting.len() as u64;
        let mut verifier = Verifier::new(Payload::Bytes(&greeting));
        let rx = if deadline.passed() {
            receive_ready(&streams[i], &mut verifier, len)
        } else {
            receive(&streams[i], &mut verifier, Until::Count(len), deadline)
        };
        if rx.exact(len) {
            late += 1;
        }
    }
    late
}

/// What one client's second phase came to.
struct Finish {
    client: usize,
    verdict: Verdict,
}

/// Concurrency, second phase: each client sends its own random bytes,
/// shuts down its side and reads back to EOF, on a few worker threads.
/// `None` when every client got exactly its bytes and EOF.
fn each_finishes(
    streams: &[TcpStream],
    deadline: Deadline,
    timeout: Duration,
    known: &Known,
) -> Option<Verdict> {
    let n = streams.len();
    let next = AtomicUsize::new(0);
    let failures: Mutex<Vec<Finish>> = Mutex::new(Vec::new());
    thread::scope(|scope| {
        for _ in 0..CONCURRENCY_WORKERS.min(n) {
            scope.spawn(|| {
                loop {
                    let client = next.fetch_add(1, Ordering::SeqCst);
                    let Some(stream) = streams.get(client) else {
                        return;
                    };
                    let payload = Payload::Random {
                        seed: 1000 + client as u64,
                        len: CONCURRENCY_REST,
                    };
                    let (sent, rx) = exchange(stream, payload, true, Until::Eof, deadline);
                    let finished = matches!(sent.end, SendEnd::Done);
                    let verdict = after_half_close(&rx, payload.len(), finished, timeout, known);
                    if verdict.outcome != Outcome::Pass {
                        // A poisoned lock means another worker panicked;
                        // its failure is lost but this one is still kept.
                        let mut failures = failures.lock().unwrap_or_else(|e| e.into_inner());
                        failures.push(Finish { client, verdict });
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    failures.sort_by_key(|f| f.client);
    let count = failures.len();
    let first = failures.into_iter().next()?;
    Some(
        first
            .verdict
            .about(&format!(
                "after every client got its first echo, {count} of {n} failed to finish; \
                 client {}",
                first.client
            ))
            .figure("failed_to_finish", count),
    )
}

/// backpressure: a client writes without reading until the server stops
/// taking bytes; a second client must still be served; then the first
/// reads everything back.
pub(super) fn backpressure(ctx: &Context) -> Result<Verdict, Unreachable> {
    const SEED: u64 = 4;
    // Three waits, each bounded by the timeout: filling (which ends sooner,
    // at the first stall), the second client, and the read-back.
    let deadline = ctx.deadline();
    let slow = ctx.connect_first(deadline)?;
    let start = Instant::now();
    let sent = match fill_without_reading(&slow, SEED, BACKPRESSURE_LIMIT, ctx, deadline, false) {
        Ok(filled) => filled,
        Err(verdict) => return Ok(verdict),
    };
    let fill_time = start.elapsed();
    // Meanwhile, is anyone else served?
    let other_start = Instant::now();
    let deadline = ctx.deadline();
    let other = match connect(ctx.addr, deadline) {
        Ok(stream) => {
            let line = b"echod check: second client\n";
            let rx = echo_line(&stream, line, deadline);
            if rx.exact(line.len() as u64) {
                Ok(other_start.elapsed())
            } else {
                Err(shortfall(&rx, line.len() as u64, other_start.elapsed()))
            }
        }
        Err(err) => Err(Verdict::fail(None, format!("it could not connect: {err}"))),
    };
    let other_took = match other {
        Ok(took) => took,
        Err(verdict) if sent.stalled && !ctx.known.echoes => {
            // Nothing earlier showed a lone client echoed: the second
            // client's trouble may be the server's for everyone (output
            // held back, a pipe that buffers), not the slow reader's.
            let verdict = verdict.about(&format!(
                "while a first client had {} of echo unread, a second client was not served \
                 either, and no earlier check showed a lone client echoed (run echo too to \
                 tell)",
                fmt_bytes(sent.bytes)
            ));
            let _ = slow.shutdown(Shutdown::Both);
            return Ok(verdict.figure("bytes_sent", sent.bytes));
        }
        Err(verdict) if sent.stalled => {
            let mut verdict = verdict;
            verdict.detail = format!(
                "while a first client had {} of echo unread, a second client was not served \
                 ({}): one client that does not read stops the server for everyone (it blocks \
                 on a write, or serves one client at a time)",
                fmt_bytes(sent.bytes),
                verdict.detail
            );
            verdict.defect = Some(Defect::BlocksOnSlowReader);
            let _ = slow.shutdown(Shutdown::Both);
            return Ok(verdict.figure("bytes_sent", sent.bytes));
        }
        Err(verdict) => {
            // The server never stopped taking bytes from the first client,
            // so the second one's trouble is not the first one's doing.
            let verdict = verdict.about(&format!(
                "the server took all {} from a client that read nothing, and a second client",
                fmt_bytes(sent.bytes)
            ));
            // The slow client's bytes are not read back: closing with them
            // unread resets the connection, which is fine here.
            let _ = slow.shutdown(Shutdown::Both);
            return Ok(verdict.figure("bytes_sent", sent.bytes));
        }
    };
    // Now read everything back.
    let (rx, verdict) = read_back(&slow, SEED, &sent, ctx, Pace::AtOnce);
    if verdict.outcome != Outcome::Pass {
        return Ok(verdict.about(&format!(
            "reading back {} sent without reading",
            fmt_bytes(sent.bytes)
        )));
    }
    let figures = |v: Verdict| {
        v.figure("bytes_sent", sent.bytes)
            .figure("bytes_received", rx.bytes)
            .millis("fill_ms", fill_time)
            .millis("second_client_ms", other_took)
    };
    if !sent.stalled {
        return Ok(figures(Verdict::fail(
            Some(Defect::UnboundedBuffering),
            format!(
                "the server took all {} from a client that read nothing back, without \
                 stopping: it buffers without bound, so each slow client can make it use \
                 that much memory",
                fmt_bytes(sent.bytes)
            ),
        )));
    }
    Ok(figures(Verdict::pass(format!(
        "the server stopped taking bytes after {} from a client that read nothing; meanwhile a \
         second client was echoed in {}; then all {} came back, then EOF",
        fmt_bytes(sent.bytes),
        fmt_duration(other_took),
        fmt_bytes(sent.bytes)
    ))))
}

/// reset-survival: clients reset mid-transfer; a client connected before
/// them and a fresh one are still served.
pub(super) fn reset_survival(ctx: &Context) -> Result<Verdict, Unreachable> {
    let deadline = ctx.deadline();
    let bystander = ctx.connect_first(deadline)?;
    let before = b"echod check: here before the resets\n";
    let rx = echo_line(&bystander, before, deadline);
    if !rx.exact(before.len() as u64) {
        return Ok(shortfall(&rx, before.len() as u64, ctx.timeout)
            .about("a client connected before any reset"));
    }
    let mut resets = 0;
    for i in 0..RESETTERS {
        // Each resetter has waits of its own, bounded by a step: a server
        // that holds its echo back (line buffering, say: these bytes hold
        // no newline) must not use up the time the fresh client needs, or
        // its silence would read as a death.
        let Ok(stream) = connect(ctx.addr, ctx.deadline()) else {
            break;
        };
        let step = Deadline::after(ctx.timeout.min(RESETTER_STEP));
        // Three ways to go: at once; after sending (the server holds echo
        // for us); after reading part of the echo.
        match i % 3 {
            0 => {}
            1 => {
                let payload = Payload::Random {
                    seed: 5,
                    len: RESETTER_BYTES,
                };
                send(&stream, payload, step, Some(ctx.stall()));
            }
            _ => {
                let payload = Payload::Random {
                    seed: 6,
                    len: RESETTER_BYTES,
                };
                send(&stream, payload, step, Some(ctx.stall()));
                let mut verifier = Verifier::new(payload);
                receive(&stream, &mut verifier, Until::Count(1024), step);
            }
        }
        if probe::reset_on_close(&stream).is_ok() {
            resets += 1;
        }
        drop(stream);
    }
    // Give the server a moment to meet the resets before asking more of it.
    std::thread::sleep(ctx.stall());
    // The fresh client and the bystander get the whole timeout again.
    let deadline = ctx.deadline();
    let fresh = match connect(ctx.addr, deadline) {
        Ok(stream) => stream,
        // Refused or reset: nothing listens any more.
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
            ) =>
        {
            let verdict = Verdict::fail(
                Some(Defect::DiesOnReset),
                format!(
                    "after {resets} clients reset their connections, a fresh client could not \
                     connect ({err}): the server died or stopped listening; it may exit on \
                     ECONNRESET, EPIPE or SIGPIPE"
                ),
            );
            return Ok(verdict.figure("resets", resets).server_gone());
        }
        // Not answered in time: the server may be alive but not accepting
        // (busy, or stuck on a connection that was reset); a death is not
        // shown.
        Err(err) => {
            let verdict = Verdict::fail(
                Some(Defect::StoppedServing),
                format!(
                    "after {resets} clients reset their connections, a fresh client could not \
                     connect within {} ({err}): the server stopped accepting, though it may \
                     still be running",
                    fmt_duration(ctx.timeout)
                ),
            );
            return Ok(verdict.figure("resets", resets));
        }
    };
    // A round trip without half-close: whether the server survived is the
    // question here, and a half-close fault (which half-close and
    // eof-with-queued-output report) must not pass for a death.
    let fresh_line = b"echod check: a fresh client after the resets\n";
    let rx = echo_line(&fresh, fresh_line, deadline);
    if !rx.exact(fresh_line.len() as u64) {
        let mut verdict = shortfall(&rx, fresh_line.len() as u64, ctx.timeout).about(&format!(
            "after {resets} clients reset their connections, a fresh client connected, but"
        ));
        if rx.bytes == 0 && matches!(rx.end, RecvEnd::Reset | RecvEnd::Eof) {
            verdict.defect = Some(Defect::DiesOnReset);
            verdict.detail.push_str(
                " (the server accepts, but drops connections at once: it may have lost its \
                 serving process on ECONNRESET, EPIPE or SIGPIPE)",
            );
        }
        return Ok(verdict.figure("resets", resets));
    }
    let after = b"echod check: still here after the resets\n";
    let rx = echo_line(&bystander, after, ctx.deadline());
    if !rx.exact(after.len() as u64) {
        let mut verdict = shortfall(&rx, after.len() as u64, ctx.timeout).about(&format!(
            "after {resets} other clients reset their connections, a client connected before \
             them"
        ));
        verdict.defect = Some(Defect::DiesOnReset);
        return Ok(verdict.figure("resets", resets));
    }
    Ok(Verdict::pass(format!(
        "{resets} clients reset their connections mid-transfer; a client connected before them \
         and a fresh one were both served afterwards"
    ))
    .figure("resets", resets))
}
