//! The UDP load: one mio loop over this worker's sockets.
//!
//! Each socket (connected to the server, so the kernel filters other
//! senders) keeps up to `--pipeline` datagrams in flight. An echo is
//! matched to the in-flight datagram whose content it is (contents are
//! keyed by socket and sequence, so that is exact); one that matches none
//! is either late (its datagram was already counted lost or answered) or
//! wrong. A datagram not answered within `--timeout` is counted lost.

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::UdpSocket;
use mio::{Interest, Poll, Token};

use super::worker::{self, Core, Load};
use super::{Live, Plan, WorkerResult};
use crate::kit::duration::seconds;
use crate::kit::payload;
use crate::kit::target;
use echod_server::net::Readiness;

/// How many answered or lost datagrams a socket remembers, to tell a late
/// echo from a wrong one.
const REMEMBERED: usize = 256;

/// Datagrams received per socket per turn before others get theirs.
const RECEIVES_PER_TURN: usize = 64;

/// How often sockets are checked for lost datagrams.
const SWEEP_EVERY: Duration = Duration::from_millis(10);

/// A datagram waiting for its echo.
struct Flight {
    seq: u64,
    /// Sent (open loop: due) at.
    sent_at: Instant,
    /// Counted lost if not answered by then.
    lost_at: Instant,
}

struct Sock {
    id: u32,
    socket: UdpSocket,
    /// Remembered readiness: true until a call says WouldBlock.
    ready: Readiness,
    next_seq: u64,
    in_flight: VecDeque<Flight>,
    /// Sequence numbers recently answered or lost.
    done: VecDeque<u64>,
    scheduled: Option<Instant>,
}

impl Sock {
    fn remember(&mut self, seq: u64) {
        if self.done.len() == REMEMBERED {
            self.done.pop_front();
        }
        self.done.push_back(seq);
    }
}

/// Runs this worker's share of the UDP load until the plan's end.
pub fn run(plan: &Plan, live: &Live) -> io::Result<WorkerResult> {
    let mut poll = Poll::new()?;
    let mut socks = Vec::new();
    for (i, id) in plan.ids.clone().enumerate() {
        let mut socket = target::udp_socket(plan.addr)?;
        poll.registry().register(
            &mut socket,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        socks.push(Sock {
            id,
            socket,
            ready: Readiness {
                writable: true,
                ..Readiness::NONE
            },
            next_seq: 0,
            in_flight: VecDeque::new(),
            done: VecDeque::with_capacity(REMEMBERED),
            scheduled: None,
        });
    }
    let mut worker = Worker {
        core: Core::new(plan, live),
        socks,
        message: vec![0; plan.size],
        expected: vec![0; plan.size],
        scratch: vec![0; 65_536],
        told_refused: false,
    };
    for i in 0..worker.socks.len() {
        worker.send(i);
    }
    worker::run(&mut worker, &mut poll)
}

struct Worker<'a> {
    core: Core<'a>,
    socks: Vec<Sock>,
    /// The datagram being sent.
    message: Vec<u8>,
    /// A candidate's content, when matching an echo.
    expected: Vec<u8>,
    /// Where echoes are received (large enough for any datagram, so a
    /// longer echo is seen as longer, not cut).
    scratch: Vec<u8>,
    told_refused: bool,
}

impl<'a> Load<'a> for Worker<'a> {
    const SWEEP_EVERY: Duration = SWEEP_EVERY;
    // After sending stops, the sweep counts every datagram still out as
    // lost by `--timeout`, so the loop ends by then.
    const DRAIN: bool = false;

    fn core(&mut self) -> &mut Core<'a> {
        &mut self.core
    }

    fn on_stop(&mut self) {}

    fn idle(&self) -> bool {
        self.socks.iter().all(|s| s.in_flight.is_empty())
    }

    fn sweep(&mut self, now: Instant) {
        Worker::sweep(self, now);
    }

    fn on_due(&mut self, i: usize, when: Instant) {
        if self.socks[i].scheduled == Some(when) {
            self.socks[i].scheduled = None;
            self.send(i);
        }
    }

    fn serve_ready(&mut self) {
        // Sockets still readable after their burst get another turn.
        for i in 0..self.socks.len() {
            if self.socks[i].ready.readable {
                self.receive(i);
                self.send(i);
            }
        }
    }

    fn busy(&self) -> bool {
        self.socks.iter().any(|s| s.ready.readable)
    }

    fn on_event(&mut self, event: &Event) {
        let i = event.token().0;
        let Some(sock) = self.socks.get_mut(i) else {
            return;
        };
        sock.ready.add(Readiness::of(event));
        self.receive(i);
        self.send(i);
    }

    fn finish(&mut self) {}
}

impl Worker<'_> {
    /// Counts datagrams out longer than `--timeout` as lost.
    fn sweep(&mut self, now: Instant) {
        for i in 0..self.socks.len() {
            let mut lost = 0;
            let sock = &mut self.socks[i];
            while let Some(flight) = sock.in_flight.front() {
                if flight.lost_at > now {
                    break;
                }
                let seq = flight.seq;
                sock.in_flight.pop_front();
                sock.remember(seq);
                lost += 1;
                if lost == 1 {
                    self.core.live.note(format!(
                        "socket {}: datagram {seq} was not echoed within {} (lost)",
                        sock.id,
                        seconds(self.core.plan.timeout)
                    ));
                }
            }
            self.core.stats.errors.lost += lost;
            if lost > 0 {
                self.send(i); // the pipeline has room again
            }
        }
    }

    /// Sends the datagrams now allowed: pipeline room, and in an open loop
    /// only those due.
    fn send(&mut self, i: usize) {
        loop {
            let now = Instant::now();
            let sock = &mut self.socks[i];
            if !self.core.sending
                || !sock.ready.writable
                || sock.in_flight.len() >= self.core.plan.pipeline
            {
                return;
            }
            let sent_at = match self.core.plan.send_time(sock.id, sock.next_seq, now) {
                Ok(at) => at,
                Err(wake) => {
                    if sock.scheduled != Some(wake) {
                        sock.scheduled = Some(wake);
                        self.core.due.push(Reverse((wake, i)));
                    }
                    return;
                }
            };
            payload::fill(sock.id, sock.next_seq, &mut self.message);
            match sock.socket.send(&self.message) {
                Ok(_) => {
                    sock.in_flight.push_back(Flight {
                        seq: sock.next_seq,
                        sent_at,
                        lost_at: now + self.core.plan.timeout,
                    });
                    sock.next_seq += 1;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => sock.ready.writable = false,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    self.socket_error(i, err);
                    return;
                }
            }
        }
    }

    fn receive(&mut self, i: usize) {
        for _ in 0..RECEIVES_PER_TURN {
            let sock = &mut self.socks[i];
            if !sock.ready.readable {
                return;
            }
            let n = match sock.socket.recv(&mut self.scratch) {
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    sock.ready.readable = false;
                    return;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    self.socket_error(i, err);
                    return;
                }
            };
            let now = Instant::now();
            let echo = &self.scratch[..n];
            let found = sock.in_flight.iter().position(|flight| {
                payload::fill(sock.id, flight.seq, &mut self.expected);
                self.expected == echo
            });
            if let Some(j) = found {
                let flight = sock.in_flight.remove(j).expect("position is in range");
                sock.remember(flight.seq);
                self.core.stats.echoed(
                    self.core.plan.size,
                    now.saturating_duration_since(flight.sent_at),
                );
                self.core.echoed += 1;
                self.core.live.reached();
                continue;
            }
            let late = n == self.core.plan.size
                && sock.done.iter().any(|&seq| {
                    payload::fill(sock.id, seq, &mut self.expected);
                    self.expected == echo
                });
            if late {
                self.core.stats.late += 1;
                continue;
            }
            self.core.stats.errors.mismatches += 1;
            let what = match sock.in_flight.front() {
                Some(oldest) => {
                    payload::fill(sock.id, oldest.seq, &mut self.expected);
                    match payload::compare(sock.id, oldest.seq, &self.expected, echo, 0) {
                        Err(difference) => format!(
                            "it is none of the datagrams in flight; against the oldest \
                             ({}): {difference}",
                            oldest.seq
                        ),
                        Ok(()) => "it matches nothing in flight".to_string(),
                    }
                }
                None => "nothing was in flight".to_string(),
            };
            self.core.live.note(format!(
                "socket {}: a {n}-byte echo came back wrong: {what}",
                sock.id
            ));
        }
    }

    fn socket_error(&mut self, i: usize, err: io::Error) {
        if err.kind() == io::ErrorKind::ConnectionRefused {
            // ICMP port unreachable, reported on the next call.
            self.core.stats.errors.connect_failures += 1;
            self.core
                .live
                .connect_failed(&target::udp_refused(self.core.plan.addr));
            if !self.told_refused {
                self.core
                    .live
                    .note(target::udp_refused(self.core.plan.addr));
                self.told_refused = true;
            }
        } else {
            self.core.stats.errors.resets += 1;
            self.core
                .live
                .note(format!("socket {}: {err}", self.socks[i].id));
        }
    }
}
