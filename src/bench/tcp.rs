//! The TCP load: one mio loop over this worker's connections.
//!
//! Each connection writes messages back to back (up to `--pipeline` in
//! flight) and reads the echo as one byte stream, comparing it as it comes
//! with the message expected next. Nothing sent is kept: the expected bytes
//! are generated again from the connection and sequence number. What each
//! in-flight message needs is only its send (or due) time.
//!
//! Trouble on a connection (wrong bytes, reset, stall, failed connect) is
//! counted, the connection is dropped, and a new one is opened after a
//! short pause, so a benchmark keeps its load and reports every error.
//!
//! With `--reconnect N`, a connection that has sent N messages sends no
//! more; once their echoes are in, it is closed (the client closes first,
//! a clean FIN) and a new one is opened at once, its connect timed.

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Poll, Registry, Token};

use super::stats::Stats;
use super::worker::{self, Core, Load};
use super::{Live, Plan, WorkerResult};
use crate::kit::duration::seconds;
use crate::kit::payload;
use crate::kit::target;
use echod_server::net::Readiness;

/// Most bytes of messages put in one write: batching small pipelined
/// messages saves system calls; the cap keeps one connection from
/// hogging a turn.
pub const MAX_BATCH: usize = 64 * 1024;

/// Reads per connection per turn before others get theirs.
const READS_PER_TURN: usize = 16;

/// How long a connection waits after trouble before connecting again, so
/// a server that refuses is not hammered.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// How often every connection is checked for stalls and pauses to end.
const SWEEP_EVERY: Duration = Duration::from_millis(50);

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// A nonblocking connect is under way since then.
    Connecting(Instant),
    /// Connected: sending and receiving.
    Open,
    /// Dropped after trouble; connects again at that time.
    Paused(Instant),
    /// The run is over for it.
    Done,
}

/// One connection's load and echo check.
struct Conn {
    /// The connection number, which keys its payloads.
    id: u32,
    stream: Option<TcpStream>,
    phase: Phase,
    /// Remembered readiness: true until a call says WouldBlock (or a
    /// short read says the socket is drained).
    ready: Readiness,
    /// The server's FIN (or an error) has been signalled: a short read no
    /// longer means "drained", the end is still to be read.
    read_closed: bool,
    /// Next message to send.
    next_seq: u64,
    /// The first message sent on the current connection (`--reconnect`
    /// counts from it).
    first_seq: u64,
    /// Messages put in `out`, and how far writing has got.
    out: Vec<u8>,
    out_pos: usize,
    /// The message being received and how many of its bytes came.
    recv_seq: u64,
    recv_off: usize,
    /// The content of message `recv_seq`, generated when it starts.
    expected: Vec<u8>,
    /// Send (open loop: due) times of messages `recv_seq..next_seq`.
    sent_at: VecDeque<Instant>,
    /// The last time an echo byte arrived (or the first message went out).
    last_echo: Instant,
    /// The due time this connection is scheduled at, if any (open loop).
    scheduled: Option<Instant>,
}

impl Conn {
    /// Connection `id`, not yet connected (the first sweep connects it).
    fn new(id: u32, plan: &Plan) -> Conn {
        Conn {
            id,
            stream: None,
            phase: Phase::Paused(plan.start),
            ready: Readiness::default(),
            read_closed: false,
            next_seq: 0,
            first_seq: 0,
            out: Vec::new(),
            out_pos: 0,
            recv_seq: 0,
            recv_off: 0,
            expected: vec![0; plan.size],
            sent_at: VecDeque::new(),
            last_echo: plan.start,
            scheduled: None,
        }
    }

    fn in_flight(&self) -> usize {
        (self.next_seq - self.recv_seq) as usize
    }

    /// May this connection send another message under `--reconnect`?
    fn may_send_more(&self, plan: &Plan) -> bool {
        plan.reconnect
            .is_none_or(|most| self.next_seq - self.first_seq < most)
    }

    /// Has this connection sent its `--reconnect` messages and had them all
    /// back, so that it is to be replaced?
    fn used_up(&self, plan: &Plan) -> bool {
        !self.may_send_more(plan) && self.in_flight() == 0
    }
}

/// The worker's state.
struct Worker<'a> {
    core: Core<'a>,
    /// Where connections are registered; the shared loop owns the poll.
    registry: Registry,
    conns: Vec<Conn>,
    /// Connections to serve again without waiting for an event.
    again: Vec<usize>,
    /// [`Worker::again`] being served (kept to reuse its allocation).
    queued: Vec<usize>,
    scratch: Vec<u8>,
}

/// Runs this worker's share of the TCP load until the plan's end.
pub fn run(plan: &Plan, live: &Live) -> io::Result<WorkerResult> {
    let mut poll = Poll::new()?;
    let mut worker = Worker {
        core: Core::new(plan, live),
        registry: poll.registry().try_clone()?,
        conns: plan.ids.clone().map(|id| Conn::new(id, plan)).collect(),
        again: Vec::new(),
        queued: Vec::new(),
        scratch: vec![0; 64 * 1024],
    };
    worker::run(&mut worker, &mut poll)
}

impl<'a> Load<'a> for Worker<'a> {
    const SWEEP_EVERY: Duration = SWEEP_EVERY;
    const DRAIN: bool = true;

    fn core(&mut self) -> &mut Core<'a> {
        &mut self.core
    }

    fn on_stop(&mut self) {
        // Each connection reads what is already there at once.
        for i in 0..self.conns.len() {
            self.again.push(i);
        }
    }

    fn idle(&self) -> bool {
        self.conns.iter().all(|c| c.in_flight() == 0)
    }

    fn sweep(&mut self, now: Instant) {
        Worker::sweep(self, now);
    }

    fn on_due(&mut self, i: usize, when: Instant) {
        if self.conns[i].scheduled == Some(when) {
            self.conns[i].scheduled = None;
            self.again.push(i);
        }
    }

    fn serve_ready(&mut self) {
        std::mem::swap(&mut self.queued, &mut self.again);
        let mut queued = std::mem::take(&mut self.queued);
        for i in queued.drain(..) {
            self.serve(i);
        }
        self.queued = queued;
    }

    fn busy(&self) -> bool {
        !self.again.is_empty()
    }

    fn on_event(&mut self, event: &Event) {
        let i = event.token().0;
        let Some(conn) = self.conns.get_mut(i) else {
            return;
        };
        conn.ready.add(Readiness::of(event));
        conn.read_closed |= event.is_read_closed() || event.is_error();
        self.serve(i);
    }

    fn finish(&mut self) {
        // In-flight messages that never came back are stalls.
        for i in 0..self.conns.len() {
            if self.conns[i].phase == Phase::Open && self.conns[i].in_flight() > 0 {
                let text = format!(
                    "connection {}: {} message(s) not echoed within {} after the end",
                    self.conns[i].id,
                    self.conns[i].in_flight(),
                    seconds(self.core.plan.timeout)
                );
                self.core.stats.errors.stalls += 1;
                self.core.live.note(text);
            }
            self.conns[i].stream = None;
            self.conns[i].phase = Phase::Done;
        }
    }
}

impl Worker<'_> {
    /// Checks every connection's timers: pauses that ended, connects and
    /// echoes that take too long.
    fn sweep(&mut self, now: Instant) {
        for i in 0..self.conns.len() {
            let conn = &self.conns[i];
            match conn.phase {
                Phase::Paused(until) if now >= until && self.core.sending => self.connect(i),
                Phase::Connecting(since) if now - since >= self.core.plan.timeout => {
                    let timed_out = io::Error::from(io::ErrorKind::TimedOut);
                    self.connect_failed(i, timed_out);
                }
                Phase::Open
                    if conn.in_flight() > 0 && now - conn.last_echo >= self.core.plan.timeout =>
                {
                    let text = format!(
                        "connection {}: no echo for {} with {} message(s) in flight (stall)",
                        conn.id,
                        seconds(self.core.plan.timeout),
                        conn.in_flight()
                    );
                    self.core.stats.errors.stalls += 1;
                    self.drop_conn(i, text);
                }
                _ => {}
            }
        }
    }

    fn connect(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        match target::connect_nonblocking(self.core.plan.addr) {
            Ok(mut stream) => {
                let interest = Interest::READABLE | Interest::WRITABLE;
                if let Err(err) = self.registry.register(&mut stream, Token(i), interest) {
                    let text = format!("connection {}: could not register: {err}", conn.id);
                    self.core.stats.errors.connect_failures += 1;
                    self.drop_conn(i, text);
                    return;
                }
                conn.stream = Some(stream);
                conn.phase = Phase::Connecting(Instant::now());
                // Whatever was in flight on an earlier connection is gone.
                conn.first_seq = conn.next_seq;
                conn.recv_seq = conn.next_seq;
                conn.recv_off = 0;
                conn.sent_at.clear();
                conn.out.clear();
                conn.out_pos = 0;
                conn.ready = Readiness::default();
                conn.read_closed = false;
            }
            Err(err) => self.connect_failed(i, err),
        }
    }

    /// Closes connection `i`, whose `--reconnect` messages all came back,
    /// and opens the next one at once (none once sending has stopped).
    fn replace(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        conn.stream = None; // closing deregisters it from the poll
        conn.scheduled = None;
        if self.core.sending {
            self.connect(i);
        } else {
            conn.phase = Phase::Done;
        }
    }

    /// Counts a failed connect of connection `i` and plans a new one.
    fn connect_failed(&mut self, i: usize, err: io::Error) {
        let sentence = connect_sentence(self.core.plan, err);
        self.core.live.connect_failed(&sentence);
        self.core.stats.errors.connect_failures += 1;
        let text = format!("connection {}: {sentence}", self.conns[i].id);
        self.drop_conn(i, text);
    }

    /// Counts nothing itself: the caller counted the error. Closes the
    /// connection and plans a new one.
    fn drop_conn(&mut self, i: usize, note: String) {
        self.core.live.note(note);
        let conn = &mut self.conns[i];
        conn.stream = None; // closing deregisters it from the poll
        conn.phase = if self.core.sending {
            Phase::Paused(Instant::now() + RECONNECT_PAUSE)
        } else {
            Phase::Done
        };
        conn.recv_seq = conn.next_seq;
        conn.sent_at.clear();
        conn.scheduled = None;
    }

    /// Gives connection `i` a turn: finish connecting, read, send.
    fn serve(&mut self, i: usize) {
        if let Phase::Connecting(_) = self.conns[i].phase {
            if !self.conns[i].ready.writable {
                return;
            }
            let Some(stream) = &self.conns[i].stream else {
                return;
            };
            match target::connect_result(stream) {
                Ok(true) => {
                    self.core.live.reached();
                    let conn = &mut self.conns[i];
                    let now = Instant::now();
                    if let Phase::Connecting(since) = conn.phase {
                        self.core.stats.connected(now - since);
                    }
                    conn.phase = Phase::Open;
                    conn.last_echo = now;
                }
                Ok(false) => {
                    self.conns[i].ready.writable = false;
                    return;
                }
                Err(err) => {
                    self.connect_failed(i, err);
                    return;
                }
            }
        }
        if self.conns[i].phase != Phase::Open {
            return;
        }
        if self.receive(i) && self.conns[i].phase == Phase::Open {
            if self.conns[i].used_up(self.core.plan) {
                self.replace(i);
            } else {
                self.send(i);
            }
        }
    }

    /// Reads and checks echo bytes; false if the connection was dropped.
    fn receive(&mut self, i: usize) -> bool {
        for _ in 0..READS_PER_TURN {
            let conn = &mut self.conns[i];
            if !conn.ready.readable {
                return true;
            }
            let Some(stream) = &mut conn.stream else {
                return false;
            };
            match stream.read(&mut self.scratch) {
                Ok(0) => {
                    let text = format!(
                        "connection {}: the server closed the connection with {} message(s) \
                         in flight",
                        conn.id,
                        conn.in_flight()
                    );
                    self.core.stats.errors.resets += 1;
                    self.drop_conn(i, text);
                    return false;
                }
                Ok(n) => {
                    let now = Instant::now();
                    conn.last_echo = now;
                    let before = self.core.stats.messages;
                    let checked = check(
                        conn,
                        &self.scratch[..n],
                        self.core.plan,
                        now,
                        &mut self.core.stats,
                    );
                    // Messages only grow here (the warm-up reset is elsewhere).
                    self.core.echoed += self.core.stats.messages - before;
                    if let Err(text) = checked {
                        self.core.stats.errors.mismatches += 1;
                        self.drop_conn(i, text);
                        return false;
                    }
                    // A short read drained the socket: skip the read that
                    // would only say WouldBlock (one system call per echo
                    // saved). New bytes bring a new edge; the FIN may not,
                    // hence the `read_closed` exception.
                    let conn = &mut self.conns[i];
                    if n < self.scratch.len() && !conn.read_closed {
                        conn.ready.readable = false;
                        return true;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    conn.ready.readable = false;
                    return true;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    let text = format!("connection {}: reading failed: {err}", conn.id);
                    self.core.stats.errors.resets += 1;
                    self.drop_conn(i, text);
                    return false;
                }
            }
        }
        // Still readable after a full burst: come back after the others.
        self.again.push(i);
        true
    }

    /// Puts the messages now allowed in the batch and writes it.
    fn send(&mut self, i: usize) {
        // Open loop: when the next message, not yet due, is to be sent.
        let mut wake = None;
        loop {
            let now = Instant::now();
            let conn = &mut self.conns[i];
            if conn.out_pos == conn.out.len() {
                conn.out.clear();
                conn.out_pos = 0;
                if self.core.sending {
                    wake = fill(conn, self.core.plan, now);
                }
                if conn.out.is_empty() {
                    break;
                }
            }
            if !conn.ready.writable {
                break;
            }
            let Some(stream) = &mut conn.stream else {
                return;
            };
            match stream.write(&conn.out[conn.out_pos..]) {
                Ok(n) => conn.out_pos += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => conn.ready.writable = false,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    let text = format!("connection {}: sending failed: {err}", conn.id);
                    self.core.stats.errors.resets += 1;
                    self.drop_conn(i, text);
                    return;
                }
            }
        }
        // Open loop: be woken when the next message is due. (When the
        // pipeline is full instead, an echo wakes the connection.) The time
        // comes from the same `now` that found the message not yet due:
        // asking the clock again could find it due, and then nobody would
        // send it.
        let conn = &mut self.conns[i];
        if let Some(when) = wake
            && conn.scheduled != Some(when)
        {
            conn.scheduled = Some(when);
            self.core.due.push(Reverse((when, i)));
        }
    }
}

/// Adds to `conn.out` the messages it may send now: as many as the
/// pipeline has room for, and in an open loop only those already due.
/// Returns when to look again if it stopped at a message not yet due.
fn fill(conn: &mut Conn, plan: &Plan, now: Instant) -> Option<Instant> {
    while conn.in_flight() < plan.pipeline && conn.out.len() < MAX_BATCH && conn.may_send_more(plan)
    {
        let sent_at = match plan.send_time(conn.id, conn.next_seq, now) {
            Ok(at) => at,
            Err(wake) => return Some(wake),
        };
        if conn.sent_at.is_empty() {
            // The stall clock runs from the first message in flight.
            conn.last_echo = now;
        }
        let start = conn.out.len();
        conn.out.resize(start + plan.size, 0);
        payload::fill(conn.id, conn.next_seq, &mut conn.out[start..]);
        conn.sent_at.push_back(sent_at);
        conn.next_seq += 1;
    }
    None
}

/// Compares echo bytes with the messages in flight, counting each message
/// that is complete and intact.
fn check(
    conn: &mut Conn,
    mut echo: &[u8],
    plan: &Plan,
    now: Instant,
    stats: &mut Stats,
) -> Result<(), String> {
    while !echo.is_empty() {
        if conn.recv_seq == conn.next_seq {
            return Err(format!(
                "connection {}: {} byte(s) came back that were never sent",
                conn.id,
                echo.len()
            ));
        }
        if conn.recv_off == 0 {
            payload::fill(conn.id, conn.recv_seq, &mut conn.expected);
        }
        let n = echo.len().min(plan.size - conn.recv_off);
        let expected = &conn.expected[conn.recv_off..conn.recv_off + n];
        if expected != &echo[..n] {
            let what = if conn.recv_off == 0 && n == plan.size {
                payload::compare(
                    conn.id,
                    conn.recv_seq,
                    &conn.expected,
                    &echo[..n],
                    plan.pipeline as u64 + 1,
                )
                .err()
            } else {
                None
            }
            .unwrap_or_else(|| payload::first_difference(expected, &echo[..n]).at(conn.recv_off));
            return Err(format!(
                "connection {}, message {}: {what}",
                conn.id, conn.recv_seq
            ));
        }
        conn.recv_off += n;
        echo = &echo[n..];
        if conn.recv_off == plan.size {
            let sent_at = conn.sent_at.pop_front().unwrap_or(now);
            stats.echoed(plan.size, now.saturating_duration_since(sent_at));
            conn.recv_seq += 1;
            conn.recv_off = 0;
        }
    }
    Ok(())
}

fn connect_sentence(plan: &Plan, source: io::Error) -> String {
    if source.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
        // Many short connections: each one the client closed waits in
        // TIME_WAIT for a minute, holding its local port.
        return format!(
            "no local port was free to connect to {} from ({source}): closed connections \
             hold theirs for a minute (TIME_WAIT). Use a larger --reconnect or fewer \
             connections, or widen net.ipv4.ip_local_port_range.",
            plan.addr
        );
    }
    target::ConnectError {
        addr: plan.addr,
        timeout: plan.timeout,
        source,
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(rate: Option<f64>, pipeline: usize) -> Plan {
        let start = Instant::now();
        Plan {
            worker: 0,
            addr: "127.0.0.1:7".parse().unwrap(),
            ids: 0..4,
            total_connections: 4,
            size: 8,
            pipeline,
            reconnect: None,
            rate_per_connection: rate,
            start,
            measure_from: start,
            end: start + Duration::from_secs(10),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn closed_loop_fills_the_pipeline_at_once() {
        let plan = plan(None, 3);
        let mut conn = Conn::new(1, &plan);
        assert_eq!(fill(&mut conn, &plan, plan.start), None);
        assert_eq!(conn.in_flight(), 3);
        let expected: Vec<u8> = (0..3).flat_map(|seq| payload::message(1, seq, 8)).collect();
        assert_eq!(conn.out, expected);
    }

    #[test]
    fn open_loop_never_stops_short_without_a_wake_up_time() {
        // Regression: a connection that found its next message not yet due
        // and then asked the clock again could find it due, schedule
        // nothing, and never send again.
        let plan = plan(Some(1000.0), 4);
        let mut conn = Conn::new(2, &plan);
        for step in 0..2000u64 {
            let now = plan.start + Duration::from_micros(step * 137);
            conn.out.clear();
            let wake = fill(&mut conn, &plan, now);
            if conn.in_flight() < plan.pipeline {
                let wake = wake.expect("stopped short without saying when to look again");
                assert!(wake > now, "the wake-up time is in the future");
                let due = plan.due(2, conn.next_seq).unwrap();
                assert_eq!(wake, due - super::super::TIMER_SLACK);
            }
            // Pretend every message sent so far came back.
            conn.recv_seq = conn.next_seq;
            conn.sent_at.clear();
        }
        // 2000 steps of 137 µs at 1000/s: about 274 messages were due.
        assert!((273..=275).contains(&conn.next_seq), "{}", conn.next_seq);
    }

    #[test]
    fn a_message_due_past_the_end_or_the_clock_is_never_sent() {
        // Regression (issue 12): `--rate 1e-300` made the due time overflow
        // `Duration::from_secs_f64` and panic the worker. Now it saturates
        // at the end, when sending stops, and nothing goes out.
        for rate in [1e-300, 1e-12, f64::MIN_POSITIVE] {
            let plan = plan(Some(rate), 4);
            assert_eq!(plan.due(1, 1), Some(plan.end));
            assert_eq!(plan.send_time(1, 1, plan.start), Err(plan.end));
            let mut conn = Conn::new(1, &plan);
            conn.next_seq = 1;
            assert_eq!(fill(&mut conn, &plan, plan.start), Some(plan.end));
            assert!(conn.out.is_empty());
        }
    }

    #[test]
    fn the_memory_estimate_bounds_the_flags_product() {
        use super::super::{MAX_BENCH_MEMORY, memory_estimate};
        // The defaults, and a heavy but reasonable load, are allowed.
        assert!(memory_estimate(10, 64, 1) < 10_000);
        assert!(memory_estimate(10_000, 1024, 16) <= MAX_BENCH_MEMORY);
        // Each flag at its largest: terabytes, refused, and no overflow.
        let most = memory_estimate(100_000, 64 << 20, 65_536);
        assert!(most > MAX_BENCH_MEMORY);
        assert_eq!(
            memory_estimate(1, 64 << 20, 65_536),
            (64 << 20) * 2 + MAX_BATCH as u64 + 48 * 65_536
        );
    }
}
