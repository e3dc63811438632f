//! The loop every bench worker runs, TCP or UDP: warm-up, stop, sweep,
//! the open loop's due times, the poll deadline, and publishing progress.
//! What differs between the transports is behind [`Load`].

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::{Events, Poll};

use super::stats::Stats;
use super::{Live, Plan, Published, WorkerResult};

/// What the workers of both transports keep alike.
pub struct Core<'a> {
    /// What to do.
    pub plan: &'a Plan,
    /// Progress and notes shared with the main thread.
    pub live: &'a Live,
    /// This worker's figures.
    pub stats: Stats,
    /// Messages echoed intact, warm-up included (for the progress line).
    pub echoed: u64,
    /// What of `echoed` and the errors was already published.
    pub published: Published,
    /// False once the run's end (or Ctrl-C) has come: nothing new is sent.
    pub sending: bool,
    /// Open loop: units (connections, sockets) by the time their next
    /// message is due.
    pub due: BinaryHeap<Reverse<(Instant, usize)>>,
}

impl<'a> Core<'a> {
    /// A worker that has sent nothing yet.
    pub fn new(plan: &'a Plan, live: &'a Live) -> Core<'a> {
        Core {
            plan,
            live,
            stats: Stats::new(),
            echoed: 0,
            published: Published::default(),
            sending: true,
            due: BinaryHeap::new(),
        }
    }

    /// Moves this worker's counts to the shared progress counters.
    pub fn publish(&mut self) {
        let errors = self.stats.errors.total();
        self.live.publish(&mut self.published, self.echoed, errors);
    }
}

/// One transport's part of the loop.
pub trait Load<'a> {
    /// How often [`Load::sweep`] runs.
    const SWEEP_EVERY: Duration;
    /// Whether the echoes in flight are waited for up to `--timeout` once
    /// sending stops; false when the sweep itself ends them (UDP counts
    /// them lost by then).
    const DRAIN: bool;

    /// The shared part.
    fn core(&mut self) -> &mut Core<'a>;
    /// Sending just stopped.
    fn on_stop(&mut self);
    /// True when nothing is in flight.
    fn idle(&self) -> bool;
    /// Checks the timers of every unit: stalls, losses, pauses ended.
    fn sweep(&mut self, now: Instant);
    /// Unit `i` was scheduled for `when` (open loop), which has come.
    fn on_due(&mut self, i: usize, when: Instant);
    /// Serves the units that have work left without waiting for an event.
    fn serve_ready(&mut self);
    /// True when [`Load::serve_ready`] has work: the poll must not wait.
    fn busy(&self) -> bool;
    /// Takes one event and serves its unit.
    fn on_event(&mut self, event: &Event);
    /// The loop has ended: count what never came back.
    fn finish(&mut self);
}

/// Runs `load` until the plan's end and its echoes are in (or given up).
pub fn run<'a, L: Load<'a>>(load: &mut L, poll: &mut Poll) -> io::Result<WorkerResult> {
    let mut events = Events::with_capacity(1024);
    let plan = load.core().plan;
    let timeout = plan.timeout;
    let mut warm = plan.measure_from <= plan.start;
    let mut measured_until = None;
    let mut drain_until = None;
    let mut next_sweep = Instant::now();
    loop {
        let now = Instant::now();
        let core = load.core();
        if !warm && now >= plan.measure_from {
            core.stats.end_warmup();
            warm = true;
        }
        if core.sending && (now >= plan.end || core.live.stopping()) {
            // Stop sending; wait a little for the echoes in flight.
            core.sending = false;
            measured_until = Some(now.max(plan.measure_from));
            if L::DRAIN {
                drain_until = Some(now + timeout);
            }
            load.on_stop();
        }
        let stopped = !load.core().sending;
        if stopped && (load.idle() || drain_until.is_some_and(|until| now >= until)) {
            break;
        }
        if now >= next_sweep {
            load.sweep(now);
            next_sweep = now + L::SWEEP_EVERY;
        }
        while let Some(&Reverse((when, i))) = load.core().due.peek() {
            if when > now {
                break;
            }
            load.core().due.pop();
            load.on_due(i, when);
        }
        load.serve_ready();
        load.core().publish();

        let core = load.core();
        let mut deadline = next_sweep;
        if core.sending {
            deadline = deadline.min(plan.end);
        }
        if let Some(Reverse((when, _))) = core.due.peek() {
            deadline = deadline.min(*when);
        }
        if !warm {
            deadline = deadline.min(plan.measure_from);
        }
        if let Some(until) = drain_until {
            deadline = deadline.min(until);
        }
        let wait = if load.busy() {
            Duration::ZERO
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        match poll.poll(&mut events, Some(wait)) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
        for event in events.iter() {
            load.on_event(event);
        }
    }
    load.finish();
    let core = load.core();
    core.publish();
    let stats = std::mem::take(&mut core.stats);
    Ok(WorkerResult::new(stats, plan, measured_until))
}
