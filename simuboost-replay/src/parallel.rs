//! Replaying every interval, K at a time: SimuBoost's parallel simulation. Each interval is
//! independent (its own VM, guest memory and miss handler), so K workers simply take the next
//! interval until none is left.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use simuboost_format::Run;

use crate::replay::{replay_interval, ReplayError, ReplayOptions, ReplayReport};

/// The outcome of one interval.
pub struct IntervalOutcome {
    /// The interval.
    pub interval: u64,
    /// Its report, or why it could not be replayed.
    pub result: Result<ReplayReport, ReplayError>,
}

/// Replays `intervals` with `jobs` workers. `on_done` is called on the calling thread as each
/// interval finishes (in completion order); the outcomes are returned in interval order with
/// the wall time of the whole batch.
pub fn replay_all(
    run: &Run,
    intervals: std::ops::Range<u64>,
    options: ReplayOptions,
    jobs: usize,
    mut on_done: impl FnMut(&IntervalOutcome),
) -> (Vec<IntervalOutcome>, Duration) {
    let began = Instant::now();
    let next = AtomicU64::new(intervals.start);
    let end = intervals.end;
    let (tx, rx) = mpsc::channel::<IntervalOutcome>();
    let mut outcomes = Vec::new();
    std::thread::scope(|scope| {
        for worker in 0..jobs.max(1) {
            let tx = tx.clone();
            let next = &next;
            let spawned = std::thread::Builder::new()
                .name(format!("replay-{worker}"))
                .spawn_scoped(scope, move || loop {
                    let interval = next.fetch_add(1, Ordering::SeqCst);
                    if interval >= end {
                        return;
                    }
                    let result = replay_interval(run, interval, options);
                    if tx.send(IntervalOutcome { interval, result }).is_err() {
                        return;
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(worker, error = %e, "cannot start a replay worker");
            }
        }
        drop(tx);
        for outcome in rx {
            on_done(&outcome);
            outcomes.push(outcome);
        }
    });
    // Intervals no worker could take (every worker failed to start) are reported as such.
    outcomes.sort_by_key(|o| o.interval);
    (outcomes, began.elapsed())
}
