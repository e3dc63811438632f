//! `echod bench ADDR`: a load generator that checks every byte it gets back.
//!
//! The load runs on worker threads (one by default), each a small mio loop
//! over its share of the connections (`tcp.rs`, `udp.rs`). The main thread
//! only starts them, shows progress (a bar on a terminal, a plain line a
//! second otherwise) and prints the report ([`stats`]).
//!
//! Every message's content is [`crate::kit::payload::fill`] of its connection
//! and sequence number, so the echo is checked without keeping copies, and
//! a message of another connection or an earlier one is caught.
//!
//! Two ways to load:
//!
//! - **Closed loop** (the default): each connection keeps `--pipeline`
//!   messages in flight and sends the next as soon as one comes back. It
//!   measures how much the server can do.
//! - **Open loop** (`--rate R`): messages are due at fixed times, R per
//!   second in all, whatever the server does. Latency is measured from
//!   the time a message was *due*, not when it could be sent: if the
//!   server stalls for a second, the messages that should have gone out in
//!   that second report the stall, instead of being quietly sent later
//!   (the "coordinated omission" that hides stalls in closed-loop tools).

mod hgrm;
pub mod stats;
mod tcp;
pub mod timeline;
mod udp;
mod worker;

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::kit::tool::{self, EXIT_FAILED, EXIT_OK, EXIT_SETUP};
use stats::{Setup, Stats, Window};
use timeline::Timeline;

/// What `echod bench` is to do: its command line, validated (by `cli.rs`).
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// The echo server.
    pub addr: SocketAddr,

    /// Connections to open (UDP: sockets to send from), 1 to 100000.
    pub connections: u32,

    /// Bytes per message, 1 to 67108864 (UDP: at most 65507). Connections
    /// times size is bounded too: see --help's memory note.
    pub size: u32,

    /// How long to measure, after the warm-up (10, 2.5, 500ms, 1m; at most
    /// a day).
    pub duration: Duration,

    /// Load before measuring starts; its messages are not counted (its
    /// errors are); 0 to an hour.
    pub warmup: Duration,

    /// Messages in flight per connection, 1 to 65536.
    pub pipeline: u32,

    /// Send UDP datagrams instead of TCP messages.
    pub udp: bool,

    /// Close each connection after this many messages and open a new one
    /// (TCP only; `None`: keep each connection for the whole run).
    pub reconnect: Option<u64>,

    /// Open loop: send this many messages per second in all, spread over
    /// the connections, and measure latency from when each was due
    /// (0.01 to 1000000000).
    pub rate: Option<f64>,

    /// Worker threads; connections are shared out among them (1 to 256).
    pub threads: u32,

    /// A connection with messages in flight and no echo for this long
    /// counts as stalled (a datagram as lost); also the connect timeout
    /// (1 ms to an hour).
    pub timeout: Duration,

    /// Print one JSON object with the results on stdout, and no progress.
    pub json: bool,

    /// Where to write the measured window second by second, as CSV.
    pub csv: Option<PathBuf>,

    /// Where to write the latency histogram, as an `.hgrm` percentile
    /// distribution.
    pub hdr: Option<PathBuf>,
}

/// The most memory bench lets `--connections`, `--size` and `--pipeline`
/// ask for together (see [`memory_estimate`]): 4 GiB, a sixth of a 24 GiB
/// machine. Each flag alone has a modest bound, but their product had none:
/// `-c 100000 -s 67108864` asks for terabytes.
pub const MAX_BENCH_MEMORY: u64 = 4 << 30;

/// What bench holds per message in flight, an estimate rounded up: a TCP
/// send time is 16 bytes and a UDP flight record 40, in `VecDeque`s that
/// may be up to twice as large as they are full.
const BYTES_PER_MESSAGE_IN_FLIGHT: u64 = 48;

/// The memory the load's own buffers may come to, per connection: the
/// message being checked, the batch being sent (one message, plus up to
/// 64 KiB of pipelined ones) and a record per message in flight. Cannot
/// overflow: each factor is bounded by its flag.
pub fn memory_estimate(connections: u32, size: u32, pipeline: u32) -> u64 {
    let (size, pipeline) = (u64::from(size), u64::from(pipeline));
    let batch = size + (size * pipeline).min(tcp::MAX_BATCH as u64);
    u64::from(connections) * (size + batch + BYTES_PER_MESSAGE_IN_FLIGHT * pipeline)
}

/// What one worker thread is to do.
#[derive(Clone, Debug)]
pub struct Plan {
    /// This worker's number, from 0 (for the [`Timeline`]).
    pub worker: usize,
    /// The server.
    pub addr: SocketAddr,
    /// The connection numbers of this worker (they key the payloads).
    pub ids: std::ops::Range<u32>,
    /// Connections of all workers, to spread open-loop send times.
    pub total_connections: u32,
    /// Bytes per message.
    pub size: usize,
    /// Messages in flight per connection, 1 to 65536.
    pub pipeline: usize,
    /// Messages per connection before it is closed and a new one opened
    /// (TCP); `None`: one connection for the whole run.
    pub reconnect: Option<u64>,
    /// Messages per second per connection, if open loop.
    pub rate_per_connection: Option<f64>,
    /// When the load starts (the same for all workers).
    pub start: Instant,
    /// When the warm-up ends and counting starts.
    pub measure_from: Instant,
    /// When sending stops.
    pub end: Instant,
    /// Stall, loss and connect timeout.
    pub timeout: Duration,
}

impl Plan {
    /// When message `seq` of connection `id` is due in an open loop: the
    /// connections' schedules are offset so their sends interleave.
    pub fn due(&self, id: u32, seq: u64) -> Option<Instant> {
        let rate = self.rate_per_connection?;
        let phase = f64::from(id) / f64::from(self.total_connections);
        // Checked: a tiny rate once made the offset overflow and panic
        // (`--rate 1e-300`). A message due past the end is never sent, so
        // the end is as good as any later time.
        let due = Duration::try_from_secs_f64((seq as f64 + phase) / rate)
            .ok()
            .and_then(|after| self.start.checked_add(after))
            .map_or(self.end, |due| due.min(self.end));
        Some(due)
    }

    /// May message `seq` of connection `id` go out at `now`? `Ok(time)`
    /// if so, with the time its latency is measured from; `Err(wake)` if
    /// not yet, with when to look again.
    ///
    /// In an open loop the latency runs from the due time when the
    /// message is late (that is the point), and from the real send time
    /// when it goes out a little early: the poll timeout has millisecond
    /// resolution, so waiting for the exact due time would add up to a
    /// millisecond of the tool's own delay to every latency.
    pub fn send_time(&self, id: u32, seq: u64, now: Instant) -> Result<Instant, Instant> {
        match self.due(id, seq) {
            None => Ok(now),
            // Due at the end or later: never; look again at the end, when
            // sending stops.
            Some(due) if due >= self.end => Err(self.end),
            Some(due) if due <= now + TIMER_SLACK => Ok(due.min(now)),
            Some(due) => Err(due - TIMER_SLACK),
        }
    }
}

/// How early an open-loop message may go out: the resolution of the poll
/// timeout (epoll counts in milliseconds).
const TIMER_SLACK: Duration = Duration::from_millis(1);

/// What workers share with the main thread while running.
#[derive(Default)]
pub struct Live {
    /// Messages echoed intact so far, warm-up included.
    pub echoed: AtomicU64,
    /// Errors so far.
    pub errors: AtomicU64,
    /// Set to stop early (Ctrl-C).
    pub stop: Arc<AtomicBool>,
    /// Set when bench gives up on a server it never reached (see
    /// [`GIVE_UP_AFTER`]); stops the workers as Ctrl-C does.
    gave_up: AtomicBool,
    /// True once any connection was made (UDP: any echo came back): from
    /// then on, failures are the server's trouble under load, counted and
    /// reported, not a wrong address.
    reached: AtomicBool,
    /// What went wrong with the first failed connect, as a sentence.
    first_connect_error: Mutex<Option<String>>,
    /// The first few errors, described, for the report.
    notes: Mutex<Vec<String>>,
    /// The measured window second by second.
    pub timeline: Timeline,
}

/// How many error descriptions are kept for the report.
const NOTES_KEPT: usize = 8;

impl Live {
    /// Keeps the description of an error, if fewer than a few are kept.
    pub fn note(&self, text: String) {
        if let Ok(mut notes) = self.notes.lock()
            && notes.len() < NOTES_KEPT
        {
            notes.push(text);
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.gave_up.load(Ordering::Relaxed)
    }

    /// A connection was made (UDP: an echo came back).
    pub fn reached(&self) {
        if !self.reached.load(Ordering::Relaxed) {
            self.reached.store(true, Ordering::Relaxed);
        }
    }

    /// A connect failed (UDP: the port was unreachable) with `sentence`:
    /// kept if it is the first, for the give-up message.
    pub fn connect_failed(&self, sentence: &str) {
        if let Ok(mut first) = self.first_connect_error.lock()
            && first.is_none()
        {
            *first = Some(sentence.to_string());
        }
    }

    /// True while no connection was ever made and one has failed: the
    /// address may be wrong, and progress lines would only repeat it.
    fn unreached(&self) -> bool {
        !self.reached.load(Ordering::Relaxed)
            && self.first_connect_error.lock().is_ok_and(|f| f.is_some())
    }

    /// Gives up if [`Live::unreached`] still holds [`GIVE_UP_AFTER`] after
    /// `start`; true if it did.
    fn give_up_on_unreached(&self, start: Instant, now: Instant) -> bool {
        if self.gave_up.load(Ordering::Relaxed) {
            return true;
        }
        if self.unreached() && now - start >= GIVE_UP_AFTER {
            self.gave_up.store(true, Ordering::SeqCst);
            return true;
        }
        false
    }

    /// Adds to the shared counters what a worker counted since it last
    /// published (`echoed` and `errors` are the worker's totals so far).
    pub fn publish(&self, done: &mut Published, echoed: u64, errors: u64) {
        if echoed > done.echoed {
            self.echoed
                .fetch_add(echoed - done.echoed, Ordering::Relaxed);
            done.echoed = echoed;
        }
        if errors > done.errors {
            self.errors
                .fetch_add(errors - done.errors, Ordering::Relaxed);
            done.errors = errors;
        }
    }
}

/// What one worker has added to [`Live`]'s counters so far.
#[derive(Debug, Default)]
pub struct Published {
    echoed: u64,
    errors: u64,
}

/// How long bench keeps trying a server it has never reached, once a
/// connect has failed: long enough for a server started a moment ago to
/// come up, short enough that a wrong port is told at once rather than
/// after the whole `--duration` of identical failures.
pub const GIVE_UP_AFTER: Duration = Duration::from_millis(1500);

/// How often progress is shown.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Runs `echod bench` and returns its exit status.
pub fn run(config: &BenchConfig) -> ExitCode {
    let size = config.size as usize;
    if let Err(status) =
        tool::check_udp_size("bench", "datagram", tool::transport(config.udp), size)
    {
        return status;
    }
    let memory = memory_estimate(config.connections, config.size, config.pipeline);
    if memory > MAX_BENCH_MEMORY {
        return tool::fail(
            "bench",
            EXIT_SETUP,
            &format!(
                "{} connections of {}-byte messages, {} in flight each, would need about {} MiB \
                 of memory, more than the {} MiB bench allows; lower --connections, --size or \
                 --pipeline",
                config.connections,
                config.size,
                config.pipeline,
                memory >> 20,
                MAX_BENCH_MEMORY >> 20
            ),
        );
    }
    // Created before the load, so a path that cannot be written is told
    // at once, not after the whole run.
    let files = match Files::create(config) {
        Ok(files) => files,
        Err(text) => return tool::fail("bench", EXIT_SETUP, &text),
    };
    let threads = config.threads.min(config.connections);
    let setup = Setup {
        addr: config.addr.to_string(),
        transport: if config.udp { "udp" } else { "tcp" },
        concurrency: config.connections as usize,
        size,
        pipeline: config.pipeline as usize,
        reconnect: config.reconnect,
        rate: config.rate,
        threads: threads as usize,
    };
    let live = Arc::new(Live {
        stop: tool::on_interrupt(),
        timeline: Timeline::new(threads as usize),
        ..Live::default()
    });
    let start = Instant::now();
    // Checked, though --warmup and --duration keep both within a day.
    let Some((measure_from, end)) = start
        .checked_add(config.warmup)
        .and_then(|from| Some((from, from.checked_add(config.duration)?)))
    else {
        return tool::fail(
            "bench",
            EXIT_SETUP,
            "the warm-up and duration reach past what the clock can hold; shorten them",
        );
    };
    let mut workers = Vec::new();
    for t in 0..threads {
        let plan = Plan {
            worker: t as usize,
            addr: config.addr,
            ids: (t * config.connections / threads)..((t + 1) * config.connections / threads),
            total_connections: config.connections,
            size,
            pipeline: config.pipeline as usize,
            reconnect: config.reconnect,
            rate_per_connection: config.rate.map(|r| r / f64::from(config.connections)),
            start,
            measure_from,
            end,
            timeout: config.timeout,
        };
        let shared = Arc::clone(&live);
        let udp = config.udp;
        let spawned = thread::Builder::new()
            .name(format!("bench-{t}"))
            .spawn(move || {
                if udp {
                    udp::run(&plan, &shared)
                } else {
                    tcp::run(&plan, &shared)
                }
            });
        match spawned {
            Ok(handle) => workers.push(handle),
            Err(err) => {
                live.stop.store(true, Ordering::SeqCst);
                return tool::fail(
                    "bench",
                    EXIT_SETUP,
                    &format!("could not start a worker thread: {err}"),
                );
            }
        }
    }

    show_progress(config, &live, &workers, start, measure_from, end);

    let mut total = Stats::new();
    let mut measured = Duration::ZERO;
    for worker in workers {
        match worker.join() {
            Ok(Ok(result)) => {
                total.merge(&result.stats);
                measured = measured.max(result.measured);
            }
            Ok(Err(err)) => {
                return tool::fail(
                    "bench",
                    EXIT_SETUP,
                    &format!("a worker could not set up its event loop: {err}"),
                );
            }
            Err(_) => {
                return tool::fail("bench", EXIT_FAILED, "a worker thread panicked");
            }
        }
    }
    let window = Window {
        measured,
        interrupted: live.stop.load(Ordering::SeqCst),
        // Sending stops at the first turn after the end, some microseconds
        // late: that is no second of its own.
        seconds: live
            .timeline
            .seconds(timeline::seconds_begun(measured.min(config.duration))),
    };
    let unwritten = files.write(&window, &total).err();
    if live.gave_up.load(Ordering::SeqCst) {
        return give_up(config, &setup, &total, &window, &live);
    }
    if window.interrupted && measured < config.duration {
        eprintln!(
            "echod bench: interrupted; the report covers the {:.2} s measured",
            measured.as_secs_f64()
        );
    }
    let notes = live.notes.lock().map(|n| n.clone()).unwrap_or_default();
    for note in &notes {
        eprintln!("echod bench: {note}");
    }
    if !config.udp && total.errors.stalls > 0 && live.echoed.load(Ordering::SeqCst) == 0 {
        eprintln!(
            "echod bench: {}",
            tool::nothing_echoed_hint("message", config.addr)
        );
    }
    let report = if config.json {
        format!("{}\n", stats::json(&setup, &total, &window))
    } else {
        stats::text(&setup, &total, &window)
    };
    // A closed stdout (`| head -1`) is the reader's choice, not an error
    // (and `print!` would panic on it).
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(report.as_bytes()).and_then(|()| out.flush());
    if let Some(text) = unwritten {
        return tool::fail("bench", EXIT_SETUP, &text);
    }
    if total.errors.total() > 0 {
        return tool::fail(
            "bench",
            EXIT_FAILED,
            &format!(
                "{} error(s) were counted (the first are described above); not everything \
                 sent came back intact",
                total.errors.total()
            ),
        );
    }
    if total.messages == 0 {
        return tool::fail(
            "bench",
            EXIT_FAILED,
            "no message was echoed while measuring; is the warm-up longer than the server \
             takes to answer at all?",
        );
    }
    ExitCode::from(EXIT_OK)
}

/// The files `--csv` and `--hdr` asked for, created before the run.
struct Files {
    csv: Option<(File, PathBuf)>,
    hdr: Option<(File, PathBuf)>,
}

impl Files {
    /// Creates (empties) the files asked for; the error is a sentence.
    fn create(config: &BenchConfig) -> Result<Files, String> {
        let open = |path: &Option<PathBuf>| -> Result<Option<(File, PathBuf)>, String> {
            let Some(path) = path else {
                return Ok(None);
            };
            let file = File::create(path).map_err(|err| {
                format!(
                    "could not create {}: {err}; give a path in a directory you may write to",
                    path.display()
                )
            })?;
            Ok(Some((file, path.clone())))
        };
        Ok(Files {
            csv: open(&config.csv)?,
            hdr: open(&config.hdr)?,
        })
    }

    /// Writes the seconds to the CSV file and the latencies to the `.hgrm`
    /// file; the error is a sentence.
    fn write(self, window: &Window, total: &Stats) -> Result<(), String> {
        let csv = self
            .csv
            .map(|f| (f, timeline::csv(&window.seconds, window.measured)));
        let hdr = self
            .hdr
            .map(|f| (f, hgrm::percentile_distribution(&total.latency)));
        for ((mut file, path), text) in csv.into_iter().chain(hdr) {
            file.write_all(text.as_bytes())
                .and_then(|()| file.flush())
                .map_err(|err| {
                    format!(
                        "could not write {}: {err}; the report above is complete",
                        path.display()
                    )
                })?;
        }
        Ok(())
    }
}

/// Ends a run that never reached the server: one sentence on stderr
/// instead of a line per failed connect, the JSON report for scripts (no
/// text report: it would only count the same failure), exit status 1.
fn give_up(
    config: &BenchConfig,
    setup: &Setup,
    total: &Stats,
    window: &Window,
    live: &Live,
) -> ExitCode {
    if config.json {
        let report = format!("{}\n", stats::json(setup, total, window));
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(report.as_bytes()).and_then(|()| out.flush());
    }
    let why = live
        .first_connect_error
        .lock()
        .ok()
        .and_then(|first| first.clone())
        .unwrap_or_else(|| format!("{} could not be reached", config.addr));
    let never = if config.udp {
        "a single echo"
    } else {
        "a single connection"
    };
    tool::fail(
        "bench",
        EXIT_FAILED,
        &format!(
            "gave up after {:.1} s without {never}: {why}",
            GIVE_UP_AFTER.as_secs_f64()
        ),
    )
}

/// What a worker hands back.
pub struct WorkerResult {
    /// Its counts.
    pub stats: Stats,
    /// How long it measured (shorter than planned when stopped early).
    pub measured: Duration,
}

impl WorkerResult {
    /// The result of a worker that stopped sending at `stopped` (`None`:
    /// it never did before the loop ended, so the plan's end).
    fn new(stats: Stats, plan: &Plan, stopped: Option<Instant>) -> WorkerResult {
        let until = stopped.unwrap_or(plan.end);
        WorkerResult {
            stats,
            measured: until.saturating_duration_since(plan.measure_from),
        }
    }
}

/// Shows progress until the workers are done: a bar on a terminal, a line
/// a second on a pipe, nothing with `--json`.
fn show_progress(
    config: &BenchConfig,
    live: &Live,
    workers: &[thread::JoinHandle<std::io::Result<WorkerResult>>],
    start: Instant,
    measure_from: Instant,
    end: Instant,
) {
    const TICK: Duration = Duration::from_millis(100);
    let terminal = std::io::stderr().is_terminal() && !config.json;
    let total_ms = (end - start).as_millis() as u64;
    let bar = if terminal {
        let bar = indicatif::ProgressBar::new(total_ms);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {msg}",
        ) {
            bar.set_style(style);
        }
        Some(bar)
    } else {
        None
    };
    let (mut last_shown, mut last_echoed) = (start, 0);
    // Bounded: workers stop by `end` plus a drain of at most `--timeout`.
    while !workers.iter().all(|w| w.is_finished()) {
        thread::sleep(TICK);
        let now = Instant::now();
        if live.give_up_on_unreached(start, now) || live.unreached() {
            // Nothing to show but failed connects, which the end tells in
            // one sentence (the workers stop at their next turn if given up).
            continue;
        }
        if now - last_shown < PROGRESS_EVERY && bar.is_none() {
            continue;
        }
        let echoed = live.echoed.load(Ordering::Relaxed);
        let errors = live.errors.load(Ordering::Relaxed);
        let rate = (echoed - last_echoed) as f64 / (now - last_shown).as_secs_f64();
        let phase = if now < measure_from {
            "warming up"
        } else if now < end {
            "measuring"
        } else {
            "finishing"
        };
        let text = format!("{phase}: {rate:.0} messages/s, {errors} errors");
        match &bar {
            Some(bar) => {
                bar.set_position((now - start).as_millis().min(u128::from(total_ms)) as u64);
                if now - last_shown >= Duration::from_millis(500) {
                    bar.set_message(text);
                    (last_shown, last_echoed) = (now, echoed);
                }
            }
            None => {
                if !config.json {
                    eprintln!("echod bench: {:>5.1} s {text}", (now - start).as_secs_f64());
                }
                (last_shown, last_echoed) = (now, echoed);
            }
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}
