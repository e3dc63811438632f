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
use super::timeline::{FINISHED, seconds_begun};
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
    /// Where this worker is in the measured window's seconds.
    clock: Clock,
}

/// A worker's place in the time series: the second of the measured window
/// it counts in, and the last second it may count in.
#[derive(Debug)]
struct Clock {
    /// The second now counted in `Stats::second`, from 0.
    second: u64,
    /// The window's last second: echoes after the window (the drain) count
    /// in it. Set from `--duration`, lowered when sending stops early.
    last: u64,
    /// Errors counted before the current second began.
    errors_before: u64,
}

impl Clock {
    /// The second `now` falls in, within the window's seconds.
    fn second_at(&self, plan: &Plan, now: Instant) -> u64 {
        now.saturating_duration_since(plan.measure_from)
            .as_secs()
            .min(self.last)
    }

    /// When the current second ends, if a later one is to come.
    fn next_boundary(&self, plan: &Plan) -> Option<Instant> {
        if self.second >= self.last {
            return None;
        }
        let secs = Duration::from_secs(self.second + 1);
        plan.measure_from.checked_add(secs)
    }
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
            clock: Clock {
                second: 0,
                last: seconds_begun(plan.end - plan.measure_from).saturating_sub(1),
                errors_before: 0,
            },
        }
    }

    /// Starts the time series: the warm-up is over (its errors are not in
    /// any second).
    fn start_seconds(&mut self) {
        self.clock.second = 0;
        self.clock.errors_before = self.stats.errors.total();
    }

    /// Hands the current second to the timeline if `now` is past it.
    fn tick(&mut self, now: Instant) {
        let second = self.clock.second_at(self.plan, now);
        if second > self.clock.second {
            self.hand_over(second);
        }
    }

    /// Hands the current second's counts to the timeline; this worker is
    /// in second `now_in` from then on ([`FINISHED`]: no more).
    fn hand_over(&mut self, now_in: u64) {
        let errors = self.stats.errors.total();
        self.stats.second.errors = errors - self.clock.errors_before;
        let (timeline, worker) = (&self.live.timeline, self.plan.worker);
        timeline.add(worker, self.clock.second, &self.stats.second, now_in);
        self.stats.second.reset();
        self.clock.errors_before = errors;
        self.clock.second = now_in;
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
            core.start_seconds();
            warm = true;
        }
        if warm {
            core.tick(now);
        }
        if core.sending && (now >= plan.end || core.live.stopping()) {
            // Stop sending; wait a little for the echoes in flight.
            core.sending = false;
            let until = now.max(plan.measure_from);
            measured_until = Some(until);
            // Stopped early: the window ends in the second it stopped in.
            // (Not before the second already counted in, should the stop
            // fall exactly on its start.)
            let seconds = seconds_begun(until - plan.measure_from).max(1);
            core.clock.last = core.clock.last.min(seconds - 1).max(core.clock.second);
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
        } else if let Some(boundary) = core.clock.next_boundary(plan) {
            deadline = deadline.min(boundary);
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
    if warm {
        core.hand_over(FINISHED);
    } else {
        // Stopped during the warm-up: no second to count in.
        core.live
            .timeline
            .add(plan.worker, 0, &Default::default(), FINISHED);
    }
    let stats = std::mem::take(&mut core.stats);
    Ok(WorkerResult::new(stats, plan, measured_until))
}
