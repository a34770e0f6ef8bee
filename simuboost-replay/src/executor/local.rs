//! The local executor: K replay processes at a time on this machine.
//!
//! K worker threads take the next interval from a queue until it closes. Each replay runs in
//! its own process (this binary with `--interval N --json`): replays in one process share its
//! address space, and every guest-memory fault, zero-page copy and unmap of one replay then
//! serialises with the others' (one mmap lock, and KVM's MMU notifiers fire for every VM in the
//! process). Measured on the 2-core development machine: two replays in two processes ran as
//! fast as one alone, two in one process 25% slower. Separate processes also keep a crashing or
//! hanging replay from taking the others down.

use std::collections::HashSet;
use std::ops::Range;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{outcome_from_output, Executor, ExecutorError, IntervalOutcome, ReplayTask};

/// K replay processes at a time on this machine.
pub struct LocalExecutor {
    /// Intervals to replay; dropping it lets the workers finish.
    queue: Option<mpsc::Sender<u64>>,
    results: mpsc::Receiver<IntervalOutcome>,
    /// Process ids of the running replays, for [`Executor::cancel`].
    children: Arc<Mutex<HashSet<u32>>>,
    /// Set by [`Executor::cancel`]: the workers start no more replays (the queue may still
    /// hold intervals).
    cancelled: Arc<AtomicBool>,
    outstanding: usize,
    workers: Vec<JoinHandle<()>>,
}

impl LocalExecutor {
    /// Starts `jobs` workers (at least one) that replay what [`Executor::submit`] queues.
    pub fn new(task: ReplayTask, jobs: usize) -> Result<LocalExecutor, ExecutorError> {
        let (queue, intervals) = mpsc::channel::<u64>();
        let intervals = Arc::new(Mutex::new(intervals));
        let (done, results) = mpsc::channel::<IntervalOutcome>();
        let children = Arc::new(Mutex::new(HashSet::new()));
        let cancelled = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for worker in 0..jobs.max(1) {
            let (intervals, done, children, cancelled, task) = (
                intervals.clone(),
                done.clone(),
                children.clone(),
                cancelled.clone(),
                task.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("replay-{worker}"))
                .spawn(move || loop {
                    // The lock is held only while waiting for the next interval.
                    let next = match intervals.lock() {
                        Ok(queue) => queue.recv(),
                        Err(_) => return,
                    };
                    let Ok(interval) = next else {
                        return;
                    };
                    let Some(outcome) = replay_in_child(&task, interval, &children, &cancelled)
                    else {
                        return;
                    };
                    if done.send(outcome).is_err() {
                        return;
                    }
                });
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(e) => tracing::warn!(worker, error = %e, "cannot start a replay worker"),
            }
        }
        if workers.is_empty() {
            return Err(ExecutorError::WorkersGone(0));
        }
        Ok(LocalExecutor {
            queue: Some(queue),
            results,
            children,
            cancelled,
            outstanding: 0,
            workers,
        })
    }
}

impl Executor for LocalExecutor {
    fn name(&self) -> &'static str {
        "local"
    }

    fn submit(&mut self, intervals: Range<u64>) -> Result<(), ExecutorError> {
        let Some(queue) = &self.queue else {
            return Err(ExecutorError::WorkersGone(self.outstanding));
        };
        for interval in intervals {
            queue
                .send(interval)
                .map_err(|_| ExecutorError::WorkersGone(self.outstanding))?;
            self.outstanding += 1;
        }
        Ok(())
    }

    fn next(&mut self, timeout: Duration) -> Result<Option<IntervalOutcome>, ExecutorError> {
        if self.outstanding == 0 {
            return Ok(None);
        }
        match self.results.recv_timeout(timeout) {
            Ok(outcome) => {
                self.outstanding -= 1;
                Ok(Some(outcome))
            }
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                Err(ExecutorError::WorkersGone(self.outstanding))
            }
        }
    }

    fn outstanding(&self) -> usize {
        self.outstanding
    }

    fn cancel(&mut self) {
        self.queue = None;
        // Under the lock that spawning holds: a replay is either in the set (and stopped here)
        // or never started.
        let pids: Vec<u32> = match self.children.lock() {
            Ok(children) => {
                self.cancelled.store(true, Ordering::SeqCst);
                children.iter().copied().collect()
            }
            Err(_) => return,
        };
        for pid in pids {
            let Ok(pid) = libc::pid_t::try_from(pid) else {
                continue;
            };
            // SAFETY: kill has no memory-safety preconditions. The pid is one of our children
            // that has not been waited for yet (it is removed from the set only after its
            // wait), so it cannot have been reused by another process.
            if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
                tracing::warn!(pid, error = %std::io::Error::last_os_error(), "cannot stop a replay");
            }
        }
    }
}

impl Drop for LocalExecutor {
    fn drop(&mut self) {
        self.queue = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// Replays one interval in a child process and reads its JSON report; `None` once the
/// executor was cancelled (no replay started).
fn replay_in_child(
    task: &ReplayTask,
    interval: u64,
    children: &Mutex<HashSet<u32>>,
    cancelled: &AtomicBool,
) -> Option<IntervalOutcome> {
    let mut cmd = Command::new(&task.exe);
    cmd.arg("--run")
        .arg(&task.run_dir)
        .args(["--interval", &interval.to_string()])
        .args(&task.child_args)
        .arg("--json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Spawn under the lock that cancel takes, so that a cancel cannot miss this child.
    let child = {
        let Ok(mut set) = children.lock() else {
            return None;
        };
        if cancelled.load(Ordering::SeqCst) {
            return None;
        }
        match cmd.spawn() {
            Ok(child) => {
                set.insert(child.id());
                child
            }
            Err(e) => {
                return Some(IntervalOutcome {
                    interval,
                    result: Err(format!("cannot run {}: {e}", task.exe.display())),
                })
            }
        }
    };
    let pid = child.id();
    let out = child.wait_with_output();
    if let Ok(mut set) = children.lock() {
        set.remove(&pid);
    }
    Some(match out {
        Ok(out) => outcome_from_output(
            interval,
            out.status.code(),
            &String::from_utf8_lossy(&out.stdout),
            &String::from_utf8_lossy(&out.stderr),
            "",
        ),
        Err(e) => IntervalOutcome {
            interval,
            result: Err(format!("cannot wait for the replay: {e}")),
        },
    })
}
