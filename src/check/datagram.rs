//! The UDP checks: sizes, reply source, interleaved senders.
//!
//! UDP may lose a datagram on a real network, so each probe is sent twice
//! when the first gets no answer in half its time. On loopback nothing is
//! lost, and a missing reply is the server's doing.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use super::probe::recv_datagram;
use super::report::fmt_duration;
use super::{Context, Defect, Outcome, Unreachable, Verdict};
use crate::kit::deadline::Deadline;
use crate::kit::payload::Payload;
use crate::kit::target::udp_socket_blocking as udp_socket;
use echod_server::net::display_addr;

/// RFC 862 datagrams to try: empty, one byte, the most that fits an
/// Ethernet frame over IPv4 (1500 − 20 − 8), a size above a common 4 KiB
/// or 8 KiB buffer, and the largest IPv4 UDP payload (65,535 − 20 − 8).
const SIZES: [usize; 5] = [0, 1, 1472, 8192, 65_507];

/// A receive buffer one byte larger than any datagram we send, so a reply
/// longer than what was sent shows as such.
const RECV_BUF: usize = 65_536;

/// Interleaved: this many senders, each sending this many datagrams.
const SENDERS: usize = 4;
const PER_SENDER: usize = 8;

/// What came back for one datagram.
#[derive(Debug)]
enum Reply {
    /// Identical, after this long.
    Same(Duration),
    /// The first bytes of it, this many.
    Truncated(usize),
    /// Different from byte `offset` (or longer), this long.
    Different { len: usize, offset: usize },
    /// Nothing, twice.
    Nothing,
}

/// Sends `payload` on a connected socket and waits for its echo until
/// `deadline`, sending once more at half time. Replies equal to an earlier,
/// unanswered payload are late echoes of it: they are noted and skipped.
fn probe_datagram(
    socket: &UdpSocket,
    payload: &[u8],
    unanswered: &mut Vec<Vec<u8>>,
    deadline: Deadline,
    buf: &mut [u8],
) -> io::Result<Reply> {
    let start = Instant::now();
    let half = Deadline::after(deadline.remaining() / 2);
    for wait in [half, deadline] {
        socket.send(payload)?;
        while let Some((n, _)) = recv_datagram(socket, buf, wait)? {
            let got = &buf[..n];
            if got == payload {
                return Ok(Reply::Same(start.elapsed()));
            }
            if let Some(i) = unanswered.iter().position(|p| p == got) {
                unanswered.remove(i);
                continue;
            }
            if n < payload.len() && payload.starts_with(got) {
                return Ok(Reply::Truncated(n));
            }
            let offset = got
                .iter()
                .zip(payload)
                .position(|(a, b)| a != b)
                .unwrap_or(n.min(payload.len()));
            return Ok(Reply::Different { len: n, offset });
        }
    }
    Ok(Reply::Nothing)
}

/// udp-sizes: datagrams of 0 to 65,507 bytes come back identical.
pub(super) fn sizes(ctx: &Context) -> Result<Verdict, Unreachable> {
    let deadline = ctx.deadline();
    let socket = udp_socket(ctx.addr, true).map_err(Unreachable)?;
    let share = ctx.timeout / SIZES.len() as u32;
    let mut buf = vec![0; RECV_BUF];
    let mut unanswered = Vec::new();
    let mut replies = Vec::new();
    for (k, &size) in SIZES.iter().enumerate() {
        let payload = Payload::Random {
            seed: 100 + size as u64,
            len: size as u64,
        }
        .to_vec();
        let wait = Deadline::after(share).min(deadline);
        let reply = match probe_datagram(&socket, &payload, &mut unanswered, wait, &mut buf) {
            Ok(reply) => reply,
            Err(err) if k == 0 || replies.iter().all(|r| matches!(r, (_, Reply::Nothing))) => {
                return Err(Unreachable(err));
            }
            Err(err) => {
                return Ok(Verdict::fail(
                    Some(Defect::StoppedServing),
                    format!("sending or receiving the {size}-byte datagram failed: {err}"),
                ));
            }
        };
        if matches!(reply, Reply::Nothing) {
            unanswered.push(payload);
        }
        replies.push((size, reply));
    }
    Ok(sizes_verdict(&replies, share))
}

/// Sizes as a list people read: `0, 1 and 1472`.
fn list(sizes: &[usize]) -> String {
    let words: Vec<String> = sizes.iter().map(|s| s.to_string()).collect();
    match words.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}

/// The verdict on what came back for each size: every finding in one
/// sentence, named by the most telling (truncation, then corruption, then
/// silence).
fn sizes_verdict(replies: &[(usize, Reply)], share: Duration) -> Verdict {
    let sizes_of = |want: fn(&Reply) -> bool| -> Vec<usize> {
        replies
            .iter()
            .filter(|(_, r)| want(r))
            .map(|(s, _)| *s)
            .collect()
    };
    let whole = sizes_of(|r| matches!(r, Reply::Same(_)));
    let missing = sizes_of(|r| matches!(r, Reply::Nothing));
    let slowest = replies
        .iter()
        .filter_map(|(_, r)| match r {
            Reply::Same(took) => Some(*took),
            _ => None,
        })
        .max()
        .unwrap_or_default();
    if whole.len() == replies.len() {
        return Verdict::pass(format!(
            "datagrams of {} bytes came back identical (slowest in {})",
            list(&SIZES),
            fmt_duration(slowest)
        ))
        .figure("sizes", SIZES.to_vec())
        .millis("slowest_ms", slowest);
    }
    let mut findings = Vec::new();
    let mut defect = None;
    let mut verdict_figures: Vec<(&'static str, serde_json::Value)> = Vec::new();
    let truncated: Vec<(usize, usize)> = replies
        .iter()
        .filter_map(|(s, r)| match r {
            Reply::Truncated(n) => Some((*s, *n)),
            _ => None,
        })
        .collect();
    if let Some(&(_, at)) = truncated.first() {
        defect = Some(Defect::UdpTruncation);
        let cut: Vec<usize> = truncated.iter().map(|&(s, _)| s).collect();
        if truncated.iter().all(|&(_, n)| n == at) {
            findings.push(format!(
                "datagrams of {} bytes came back as {at} bytes: the server truncates \
                 datagrams at {at} bytes (its receive buffer is that small)",
                list(&cut)
            ));
            verdict_figures.push(("truncated_at", at.into()));
        } else {
            let lens: Vec<String> = truncated
                .iter()
                .map(|(s, n)| format!("{s} as {n}"))
                .collect();
            findings.push(format!(
                "datagrams came back cut short ({}): the server truncates datagrams",
                lens.join(", ")
            ));
        }
    }
    for (size, reply) in replies {
        if let Reply::Different { len, offset } = reply {
            defect.get_or_insert(Defect::CorruptsBytes);
            findings.push(format!(
                "the reply to the {size}-byte datagram was {len} bytes and differs from byte \
                 {offset} on"
            ));
            verdict_figures.push(("first_wrong_offset", (*offset).into()));
            break;
        }
    }
    if missing.len() == replies.len() {
        defect = Some(Defect::NeverReplying);
        findings.push(format!(
            "no reply to any datagram ({} bytes, each sent twice, {} allowed each)",
            list(&SIZES),
            fmt_duration(share)
        ));
    } else if missing == [0] {
        defect.get_or_insert(Defect::NeverReplying);
        findings.push(
            "no reply to the empty datagram (sent twice): RFC 862 answers every datagram, an \
             empty one with an empty one"
                .to_string(),
        );
    } else if !missing.is_empty() {
        defect.get_or_insert(Defect::NeverReplying);
        findings.push(format!(
            "no reply to datagrams of {} bytes (each sent twice, {} allowed each)",
            list(&missing),
            fmt_duration(share)
        ));
    }
    if !whole.is_empty() {
        findings.push(format!("{} bytes came back whole", list(&whole)));
    }
    let mut verdict = Verdict::fail(defect, findings.join("; "))
        .figure("sizes", SIZES.to_vec())
        .figure("whole", whole)
        .figure("no_reply", missing);
    for (name, value) in verdict_figures {
        verdict = verdict.figure(name, value);
    }
    verdict
}

/// udp-source: the reply comes from the address the datagram was sent to.
pub(super) fn source(ctx: &Context) -> Result<Verdict, Unreachable> {
    const LINE: &[u8] = b"echod check: where does the reply come from?";
    let deadline = ctx.deadline();
    // Not connected: a connected socket would drop a reply from elsewhere,
    // which is exactly what this check wants to see.
    let socket = udp_socket(ctx.addr, false).map_err(Unreachable)?;
    let mut buf = vec![0; RECV_BUF];
    let half = Deadline::after(ctx.timeout / 2);
    for wait in [half, deadline] {
        if let Err(err) = socket.send_to(LINE, ctx.addr) {
            return Ok(Verdict::fail(None, format!("sending failed: {err}")));
        }
        loop {
            let got = match recv_datagram(&socket, &mut buf, wait) {
                Ok(Some(got)) => got,
                Ok(None) => break,
                Err(err) => return Ok(Verdict::fail(None, format!("receiving failed: {err}"))),
            };
            let (n, from) = got;
            if buf[..n] != *LINE {
                // Not our echo (a stray datagram); keep waiting.
                continue;
            }
            return Ok(source_verdict(ctx.addr, from));
        }
    }
    Ok(Verdict::fail(
        Some(Defect::NeverReplying),
        format!("no reply within {} (sent twice)", fmt_duration(ctx.timeout)),
    ))
}

/// The other loopback address udp-source-wildcard sends to: 127.0.0.2
/// (127.0.0.3 if the target is 127.0.0.2). Every 127/8 address is the
/// host's own on Linux, so a server on 0.0.0.0 gets the datagram, and one
/// bound to the target address alone does not.
fn other_loopback(target: SocketAddr) -> Option<SocketAddr> {
    let SocketAddr::V4(v4) = target else {
        return None;
    };
    if !v4.ip().is_loopback() {
        return None;
    }
    let other = if v4.ip().octets() == [127, 0, 0, 2] {
        Ipv4Addr::new(127, 0, 0, 3)
    } else {
        Ipv4Addr::new(127, 0, 0, 2)
    };
    Some((other, v4.port()).into())
}

/// udp-source-wildcard (strict): a datagram to another loopback address
/// must be answered from that address. A server on a wildcard address
/// that replies without saying the source lets routing pick it, here the
/// target address: the RFC 1122 section 4.1.3.5 defect that a multihomed
/// host shows on its real interfaces.
pub(super) fn source_wildcard(ctx: &Context) -> Result<Verdict, Unreachable> {
    const LINE: &[u8] = b"echod check: which of my addresses answers?";
    let Some(other) = other_loopback(ctx.addr) else {
        return Ok(Verdict::skip(format!(
            "{} is not an IPv4 loopback address: this check needs a second address of the \
             server's host, so it runs on that host against 127.0.0.1 (with a server on \
             0.0.0.0)",
            ctx.addr
        )));
    };
    let deadline = ctx.deadline();
    let socket = udp_socket(ctx.addr, false).map_err(Unreachable)?;
    let mut buf = vec![0; RECV_BUF];
    let half = Deadline::after(ctx.timeout / 2);
    for wait in [half, deadline] {
        if let Err(err) = socket.send_to(LINE, other) {
            return Ok(Verdict::fail(
                None,
                format!("sending to {other} failed: {err}"),
            ));
        }
        loop {
            let (n, from) = match recv_datagram(&socket, &mut buf, wait) {
                Ok(Some(got)) => got,
                Ok(None) => break,
                Err(err) => return Ok(Verdict::fail(None, format!("receiving failed: {err}"))),
            };
            if buf[..n] == *LINE {
                let verdict = source_verdict(other, from);
                return Ok(if verdict.outcome == Outcome::Pass {
                    Verdict::pass(format!(
                        "a datagram to {other}, another address of the host, was answered from \
                         {other}: the server replies from the address each datagram was sent to"
                    ))
                    .figure("sent_to", other.to_string())
                    .figure("reply_from", display_addr(from).to_string())
                } else {
                    verdict.figure("sent_to", other.to_string())
                });
            }
        }
    }
    Ok(Verdict::skip(format!(
        "no reply to a datagram sent to {other} (twice, within {}): the server does not \
         listen on a wildcard address, so the rule does not arise",
        fmt_duration(ctx.timeout)
    )))
}

/// The service ports udp-loop-guard sends from, in order of preference:
/// chargen and echo are the pair CERT CA-1996-01 describes; the others
/// answer datagrams too, for when those are taken on this host.
const SERVICE_PORTS: [(u16, &str); 5] = [
    (19, "chargen"),
    (7, "echo"),
    (13, "daytime"),
    (17, "qotd"),
    (37, "time"),
];

/// A socket on the first of [`SERVICE_PORTS`] free on this host, or the
/// reason the check cannot run.
fn service_port_socket(target: SocketAddr) -> Result<(UdpSocket, u16, &'static str), String> {
    let ip: std::net::IpAddr = if target.is_ipv6() {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    };
    for (port, service) in SERVICE_PORTS {
        match UdpSocket::bind((ip, port)) {
            Ok(socket) => return Ok((socket, port, service)),
            Err(err) if err.kind() == io::ErrorKind::PermissionDenied => {
                return Err(format!(
                    "sending from a service port (such as chargen's, 19) needs root or \
                     CAP_NET_BIND_SERVICE here ({err}); run the check so to test this rule"
                ));
            }
            Err(_) => continue,
        }
    }
    Err("every service port this check sends from (19, 7, 13, 17, 37) is in use here".into())
}

/// udp-loop-guard (strict): a datagram from a service port that answers
/// datagrams (chargen's 19, or echo's 7…) gets no answer, while one from
/// an ordinary port does. An echo service that answers such a datagram
/// can be set talking to a chargen or another echo service by one forged
/// datagram, forever (CERT CA-1996-01, "UDP Port Denial-of-Service
/// Attack").
pub(super) fn loop_guard(ctx: &Context) -> Result<Verdict, Unreachable> {
    const LINE: &[u8] = b"echod check: as if from a service that answers datagrams";
    let (service_socket, port, service) = match service_port_socket(ctx.addr) {
        Ok(found) => found,
        Err(why) => return Ok(Verdict::skip(why)),
    };
    let deadline = ctx.deadline();
    if let Err(err) = service_socket.send_to(LINE, ctx.addr) {
        return Ok(Verdict::fail(
            None,
            format!("sending from port {port} failed: {err}"),
        ));
    }
    // Then one from an ordinary port: once it is answered, an answer to
    // the first (sent before it) would be on its way too.
    let ordinary = udp_socket(ctx.addr, true).map_err(Unreachable)?;
    let mut buf = vec![0; RECV_BUF];
    let mut unanswered = Vec::new();
    let reply = match probe_datagram(&ordinary, LINE, &mut unanswered, deadline, &mut buf) {
        Ok(reply) => reply,
        Err(err) => return Err(Unreachable(err)),
    };
    if !matches!(reply, Reply::Same(_)) {
        return Ok(Verdict::skip(format!(
            "a datagram from an ordinary port got no exact answer within {} either, so \
             silence to port {port} says nothing (udp-sizes tells more)",
            fmt_duration(ctx.timeout)
        )));
    }
    let grace = Deadline::after(ctx.stall());
    let answered = loop {
        match recv_datagram(&service_socket, &mut buf, grace) {
            Ok(Some((n, from))) if buf[..n] == *LINE => break Some(from),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => break None,
        }
    };
    let verdict = match answered {
        Some(from) => Verdict::fail(
            Some(Defect::UdpLoopRisk),
            format!(
                "a datagram from port {port} ({service}) was answered from {}: two services \
                 that answer every datagram can be set talking to each other forever by one \
                 forged datagram; refuse datagrams from such ports",
                display_addr(from)
            ),
        ),
        None => Verdict::pass(format!(
            "a datagram from port {port} ({service}) got no answer, one from an ordinary \
             port did: the server refuses datagrams from services that answer datagrams"
        )),
    };
    Ok(verdict.figure("source_port", port))
}

fn source_verdict(sent_to: SocketAddr, from: SocketAddr) -> Verdict {
    let from = display_addr(from);
    if from == display_addr(sent_to) {
        Verdict::pass(format!(
            "the reply came from {from}, the address the datagram was sent to"
        ))
        .figure("reply_from", from.to_string())
    } else {
        Verdict::fail(
            Some(Defect::UdpWrongSource),
            format!(
                "the reply came from {from}, not from {sent_to} where the datagram was sent: \
                 clients that connect their UDP socket (nc -u, most libraries) never see it; \
                 the server should reply from the socket and address the datagram arrived on"
            ),
        )
        .figure("reply_from", from.to_string())
    }
}

/// The datagram sender `s` sends as its `k`th.
fn tagged(s: usize, k: usize) -> Vec<u8> {
    format!("echod check sender {s} datagram {k}").into_bytes()
}

/// Reads a tag back: (sender, datagram).
fn parse_tag(bytes: &[u8]) -> Option<(usize, usize)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let rest = text.strip_prefix("echod check sender ")?;
    let (s, k) = rest.split_once(" datagram ")?;
    Some((s.parse().ok()?, k.parse().ok()?))
}

/// udp-interleaved: several senders interleave datagrams; each gets
/// exactly its own replies.
pub(super) fn interleaved(ctx: &Context) -> Result<Verdict, Unreachable> {
    let deadline = ctx.deadline();
    let mut sockets = Vec::with_capacity(SENDERS);
    for _ in 0..SENDERS {
        sockets.push(udp_socket(ctx.addr, true).map_err(Unreachable)?);
    }
    for k in 0..PER_SENDER {
        for (s, socket) in sockets.iter().enumerate() {
            if let Err(err) = socket.send(&tagged(s, k)) {
                return if k == 0 && s == 0 {
                    Err(Unreachable(err))
                } else {
                    Ok(Verdict::fail(
                        None,
                        format!("sender {s} could not send: {err}"),
                    ))
                };
            }
        }
    }
    let mut buf = vec![0; RECV_BUF];
    let mut got = [[0usize; PER_SENDER]; SENDERS];
    for (s, socket) in sockets.iter().enumerate() {
        let mut count = 0;
        while count < PER_SENDER {
            // Past the deadline this takes only replies already there.
            let (n, _) = match recv_datagram(socket, &mut buf, deadline) {
                Ok(Some(reply)) => reply,
                Ok(None) => break,
                Err(err) if s == 0 && count == 0 => return Err(Unreachable(err)),
                Err(err) => {
                    return Ok(Verdict::fail(
                        None,
                        format!("sender {s}: receiving failed: {err}"),
                    ));
                }
            };
            count += 1;
            match parse_tag(&buf[..n]) {
                Some((from, k)) if from == s && k < PER_SENDER => got[s][k] += 1,
                Some((other, _)) => {
                    return Ok(Verdict::fail(
                        Some(Defect::UdpCrossedReplies),
                        format!(
                            "sender {s} received the reply meant for sender {other}: the server \
                             sends replies to the wrong peer (it may keep one peer address for \
                             everyone)"
                        ),
                    ));
                }
                None => {
                    return Ok(Verdict::fail(
                        Some(Defect::CorruptsBytes),
                        format!(
                            "sender {s} received a {n}-byte reply that is none of the datagrams \
                             sent"
                        ),
                    ));
                }
            }
        }
    }
    let total = SENDERS * PER_SENDER;
    let received: usize = got.iter().flatten().filter(|&&c| c > 0).count();
    let duplicates: usize = got.iter().flatten().map(|&c| c.saturating_sub(1)).sum();
    if received < total {
        let short: Vec<String> = got
            .iter()
            .enumerate()
            .filter(|(_, g)| g.contains(&0))
            .map(|(s, g)| {
                format!(
                    "sender {s} {} of {PER_SENDER}",
                    g.iter().filter(|&&c| c > 0).count()
                )
            })
            .collect();
        return Ok(Verdict::fail(
            Some(Defect::NeverReplying),
            format!(
                "{received} of {total} interleaved datagrams were answered within {} ({})",
                fmt_duration(ctx.timeout),
                short.join(", ")
            ),
        )
        .figure("datagrams", total)
        .figure("answered", received));
    }
    Ok(Verdict::pass(format!(
        "{SENDERS} senders sent {PER_SENDER} datagrams each, interleaved; each got exactly its \
         own {PER_SENDER} replies{}",
        if duplicates > 0 {
            format!(" (and {duplicates} duplicates)")
        } else {
            String::new()
        }
    ))
    .figure("datagrams", total)
    .figure("answered", received)
    .figure("duplicates", duplicates))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        assert_eq!(parse_tag(&tagged(3, 7)), Some((3, 7)));
        assert_eq!(parse_tag(b"echod check sender x datagram 1"), None);
        assert_eq!(parse_tag(b"hello"), None);
    }

    #[test]
    fn truncation_names_the_size() {
        let share = Duration::from_secs(1);
        let replies = vec![
            (0, Reply::Same(Duration::ZERO)),
            (1, Reply::Same(Duration::ZERO)),
            (1472, Reply::Truncated(1024)),
            (8192, Reply::Truncated(1024)),
            (65_507, Reply::Truncated(1024)),
        ];
        let verdict = sizes_verdict(&replies, share);
        assert_eq!(verdict.defect, Some(Defect::UdpTruncation));
        assert!(
            verdict.detail.contains("truncates datagrams at 1024 bytes"),
            "{}",
            verdict.detail
        );
    }

    #[test]
    fn a_missing_empty_reply_is_named() {
        let replies: Vec<(usize, Reply)> = SIZES
            .iter()
            .map(|&s| {
                let reply = if s == 0 {
                    Reply::Nothing
                } else {
                    Reply::Same(Duration::ZERO)
                };
                (s, reply)
            })
            .collect();
        let verdict = sizes_verdict(&replies, Duration::from_secs(1));
        assert!(
            verdict.detail.contains("empty datagram"),
            "{}",
            verdict.detail
        );
    }

    #[test]
    fn a_reply_from_elsewhere_is_named() {
        let to: SocketAddr = "127.0.0.1:7".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:7".parse().unwrap();
        assert_eq!(source_verdict(to, mapped).defect, None);
        let other: SocketAddr = "127.0.0.1:8".parse().unwrap();
        assert_eq!(
            source_verdict(to, other).defect,
            Some(Defect::UdpWrongSource)
        );
    }
}
