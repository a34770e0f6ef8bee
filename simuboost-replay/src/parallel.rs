//! Replaying every interval, K at a time: SimuBoost's parallel simulation.
//!
//! Each interval is independent, so K workers simply take the next interval until none is left.
//! Each replay runs in its own process (this binary with `--interval N --json`): replays in one
//! process share its address space, and every guest-memory fault, zero-page copy and unmap of
//! one replay then serialises with the others' (one mmap lock, and KVM's MMU notifiers fire for
//! every VM in the process). Measured on the 2-core development machine: two replays in two
//! processes ran as fast as one alone, two in one process 25% slower. Separate processes also
//! keep a crashing or hanging replay from taking the others down.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use simuboost_report::replay::{exit, Engine};

use crate::replay::{Mode, ReplayReport};

/// The outcome of one interval.
pub struct IntervalOutcome {
    /// The interval.
    pub interval: u64,
    /// Its report, or why it could not be replayed.
    pub result: Result<ReplayReport, String>,
}

/// How to run the worker processes.
pub struct Workers {
    /// The `simuboost-replay` executable.
    pub exe: PathBuf,
    /// Replays running at once.
    pub jobs: usize,
    /// The flags every replay gets besides `--run`, `--interval` and `--json`: mode, engine,
    /// timeout (see [`child_args`]).
    pub child_args: Vec<String>,
}

/// The flags that make a child replay one interval the way `options` says.
pub fn child_args(mode: Mode, engine: Engine, timeout: Option<Duration>) -> Vec<String> {
    let mut args = vec![
        "--mode".to_string(),
        mode.name().to_string(),
        "--engine".to_string(),
        engine.name().to_string(),
    ];
    if let Some(timeout) = timeout {
        args.extend([
            "--timeout".to_string(),
            format!("{}ms", timeout.as_millis()),
        ]);
    }
    args
}

/// Replays `intervals` of the run in `run_dir`. `on_done` is called on the calling thread as
/// each interval finishes (in completion order); the outcomes are returned in interval order
/// with the wall time of the whole batch.
pub fn replay_all(
    run_dir: &Path,
    intervals: std::ops::Range<u64>,
    workers: &Workers,
    mut on_done: impl FnMut(&IntervalOutcome),
) -> (Vec<IntervalOutcome>, Duration) {
    let began = Instant::now();
    let next = AtomicU64::new(intervals.start);
    let end = intervals.end;
    let (tx, rx) = mpsc::channel::<IntervalOutcome>();
    let mut outcomes = Vec::new();
    std::thread::scope(|scope| {
        for worker in 0..workers.jobs.max(1) {
            let tx = tx.clone();
            let next = &next;
            let spawned = std::thread::Builder::new()
                .name(format!("replay-{worker}"))
                .spawn_scoped(scope, move || loop {
                    let interval = next.fetch_add(1, Ordering::SeqCst);
                    if interval >= end {
                        return;
                    }
                    let result = replay_in_child(run_dir, interval, workers);
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
    outcomes.sort_by_key(|o| o.interval);
    (outcomes, began.elapsed())
}

/// Replays one interval in a child process and reads its JSON report.
fn replay_in_child(
    run_dir: &Path,
    interval: u64,
    workers: &Workers,
) -> Result<ReplayReport, String> {
    let mut cmd = Command::new(&workers.exe);
    cmd.arg("--run")
        .arg(run_dir)
        .args(["--interval", &interval.to_string()])
        .args(&workers.child_args)
        .arg("--json")
        .stdin(Stdio::null());
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", workers.exe.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = stdout
        .lines()
        .find_map(|line| serde_json::from_str::<ReplayReport>(line).ok());
    // Verified and diverged replays both report; any other status is a replay that could not run.
    let reported = |code: i32| code == i32::from(exit::OK) || code == i32::from(exit::DIVERGED);
    match (out.status.code(), report) {
        (Some(code), Some(report)) if reported(code) => Ok(report),
        (code, _) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let message = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| l.trim_start_matches("simuboost-replay: ").to_string())
                .unwrap_or_default();
            Err(match code {
                Some(code) => format!("the replay exited with status {code}: {message}"),
                None => format!("the replay was killed by a signal: {message}"),
            })
        }
    }
}
