//! `run --trace-only`: the eBPF tracer without the recorder, so that a benchmark can tell what
//! tracing costs apart from what checkpointing costs. At every interval boundary it does what
//! the recorder does for the tracer (drain the log, clean the page-table bits, drop KVM's
//! mappings) and nothing else: the dirty log is enabled (it keeps KVM's mappings at 4 KiB) but
//! never harvested, and there are no copies and no writer.

use std::time::{Duration, Instant};

use simuboost_report::daemon::TraceOnlySummary;
use simuboost_vmm::machine::{ExitObserver, Machine, ObserverError};

use crate::interval::IntervalClock;
use crate::trace::Tracer;

pub struct TraceOnly {
    tracer: Tracer,
    clock: IntervalClock,
    frames: Vec<u64>,
    traced_frames: u64,
    summary: TraceOnlySummary,
    paused: Duration,
}

impl TraceOnly {
    pub fn new(tracer: Tracer, interval: Duration, interval_exits: Option<u64>) -> TraceOnly {
        TraceOnly {
            tracer,
            clock: IntervalClock::new(interval, interval_exits),
            frames: Vec::new(),
            traced_frames: 0,
            summary: TraceOnlySummary::default(),
            paused: Duration::ZERO,
        }
    }

    /// Drains the interval's log and re-arms; `count` is false for the boot drain.
    fn boundary(&mut self, machine: &mut Machine, count: bool) -> Result<(), ObserverError> {
        let began = Instant::now();
        self.frames.clear();
        let drops = self.tracer.drain(&mut self.frames)?;
        // The same re-arm as the recorder's (Recorder::harvest), whose cost is part of tracing.
        machine.rearm_access_tracing()?;
        if count {
            self.summary.intervals += 1;
            self.traced_frames += self.frames.len() as u64;
            self.summary.incomplete_intervals += u64::from(drops > 0);
            self.paused += began.elapsed();
        }
        self.clock.restart(machine.guest_exits());
        Ok(())
    }

    pub fn finish(self) -> TraceOnlySummary {
        TraceOnlySummary {
            mean_working_set: self.traced_frames as f64 / self.summary.intervals.max(1) as f64,
            paused_ms: self.paused.as_secs_f64() * 1e3,
            ..self.summary
        }
    }
}

impl ExitObserver for TraceOnly {
    fn before_start(&mut self, machine: &mut Machine) -> Result<(), ObserverError> {
        self.boundary(machine, false)
    }

    fn after_exit(&mut self, machine: &mut Machine) -> Result<(), ObserverError> {
        if self.clock.is_due(machine.guest_exits()) {
            self.boundary(machine, true)?;
        }
        Ok(())
    }

    fn before_shutdown(&mut self, machine: &mut Machine, _: u64) -> Result<(), ObserverError> {
        // The last interval, as the recorder's final checkpoint ends it.
        self.boundary(machine, true)
    }
}
