//! The Slurm executor: one job array per batch of intervals, one array task per interval.
//!
//! Each [`Executor::submit`] is one `sbatch --parsable --array=A-B[%K]` of a small batch script
//! (written once into the executor's directory) that runs
//! `simuboost-replay --run RUN --interval $SLURM_ARRAY_TASK_ID <child args> --json`, with each
//! task's stdout and stderr in `DIR/<array job>_<task>.out|.err`. `--all` submits one array;
//! `--follow` one array per batch of newly committed intervals. The executor then polls
//! `squeue` (every [`SlurmOptions::poll`]) for the state and wait status of every task of its
//! arrays, and turns each finished task's report line into an [`IntervalOutcome`]; a task that
//! failed, was cancelled, timed out or ran out of memory is an error naming `JOBID_TASK`, its
//! state and its log files. A task Slurm has already forgotten (older than `MinJobAge`) is
//! looked up with `sacct` when accounting is enabled, else judged by its log. Polling `squeue`
//! rather than `sbatch --wait` reports each interval as it finishes, not when the whole array
//! does. [`Executor::cancel`] and dropping the executor with tasks outstanding `scancel` the
//! arrays.
//!
//! The executable, the run and the executor's directory must be visible at the same paths on
//! the compute nodes (a shared file system), as usual for Slurm batch jobs; the tasks get this
//! process's environment (`sbatch`'s default `--export=ALL`).

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use simuboost_format::Run;
use simuboost_report::replay::Mode;

use super::{outcome_from_output, Executor, ExecutorError, IntervalOutcome, ReplayTask};

/// How to submit the array tasks.
#[derive(Clone, Debug)]
pub struct SlurmOptions {
    /// Where the batch script and the tasks' logs go (never inside the run).
    pub dir: PathBuf,
    /// At most this many tasks of an array run at once (`--array=...%K`).
    pub jobs: Option<usize>,
    /// `--partition`.
    pub partition: Option<String>,
    /// `--time` (rounded up to whole seconds).
    pub time_limit: Option<Duration>,
    /// `--mem` per task, MiB; `None`: [`task_memory_mib`] of each submitted batch in `mode`.
    pub mem_per_task_mib: Option<u64>,
    /// The replay mode, for the memory estimate.
    pub mode: Mode,
    /// Further `sbatch` arguments, passed as given (`--slurm-arg=...`).
    pub extra_args: Vec<String>,
    /// How often to ask `squeue` about the tasks.
    pub poll: Duration,
}

/// Process overhead of one replay besides guest memory: the binary, the run's tables and page
/// map, KVM's structures, with room to spare.
const TASK_BASE_MIB: u64 = 256;

/// Memory a replay of `intervals` in `mode` needs, MiB: guest memory is private anonymous
/// memory that only fills as pages are installed or touched, so a full replay needs the guest's
/// RAM, and a sparse or lazy one about its working set — the largest of these intervals' access
/// logs, doubled for the pages the interval touches beyond it — plus [`TASK_BASE_MIB`].
pub fn task_memory_mib(run: &Run, intervals: Range<u64>, mode: Mode) -> u64 {
    let mem_mib = run.manifest().meta.mem_bytes.div_ceil(1 << 20);
    let guest_mib = match mode {
        Mode::Full => mem_mib,
        Mode::Sparse | Mode::Lazy => {
            let mut largest = 0u64;
            for interval in intervals {
                match run.access(interval) {
                    Ok(Some(access)) => largest = largest.max(access.len() as u64),
                    // No access log (recorded without a tracer) or unreadable: assume the worst.
                    Ok(None) | Err(_) => {
                        largest = run.manifest().mem_pages();
                        break;
                    }
                }
            }
            let bytes = largest * 2 * simuboost_format::PAGE_SIZE as u64;
            bytes.div_ceil(1 << 20).min(mem_mib)
        }
    };
    guest_mib + TASK_BASE_MIB
}

/// One submitted array and the tasks whose outcome is not known yet.
struct Array {
    job_id: String,
    /// Outstanding tasks; the value counts polls in which `squeue` did not list the task.
    pending: BTreeMap<u64, u32>,
}

/// Slurm job arrays, one task per interval.
pub struct SlurmExecutor {
    task: ReplayTask,
    options: SlurmOptions,
    script: PathBuf,
    arrays: Vec<Array>,
    ready: VecDeque<IntervalOutcome>,
    last_poll: Option<Instant>,
    /// Consecutive failed `squeue` calls (a restarting controller is retried for a while).
    squeue_failures: u32,
}

/// `squeue` failures in a row before the executor gives up.
const SQUEUE_RETRIES: u32 = 30;

impl SlurmExecutor {
    /// Creates `options.dir` and writes the batch script into it.
    pub fn new(task: ReplayTask, options: SlurmOptions) -> Result<SlurmExecutor, ExecutorError> {
        std::fs::create_dir_all(&options.dir).map_err(|source| ExecutorError::Io {
            what: "cannot create the Slurm directory",
            path: options.dir.clone(),
            source,
        })?;
        let script = options.dir.join("replay-task.sh");
        let mut command = vec![
            quote(&task.exe.to_string_lossy()),
            "--run".to_string(),
            quote(&task.run_dir.to_string_lossy()),
            "--interval".to_string(),
            "\"$SLURM_ARRAY_TASK_ID\"".to_string(),
        ];
        command.extend(task.child_args.iter().map(|a| quote(a)));
        command.push("--json".to_string());
        let text = format!(
            "#!/bin/sh\n\
             # Written by simuboost-replay --executor slurm: array task N replays interval N.\n\
             # The start time lets the overhead from submission to start be measured.\n\
             echo \"simuboost-task-start-unix-ns $(date +%s%N)\" >&2\n\
             exec {}\n",
            command.join(" ")
        );
        std::fs::write(&script, text).map_err(|source| ExecutorError::Io {
            what: "cannot write the batch script",
            path: script.clone(),
            source,
        })?;
        Ok(SlurmExecutor {
            task,
            options,
            script,
            arrays: Vec::new(),
            ready: VecDeque::new(),
            last_poll: None,
            squeue_failures: 0,
        })
    }

    /// The directory of the batch script and the logs.
    pub fn dir(&self) -> &Path {
        &self.options.dir
    }

    /// `--mem` for a batch: as given, or estimated from the run (read again: with `--follow`
    /// it grows).
    fn memory_mib(&self, intervals: Range<u64>) -> u64 {
        if let Some(mib) = self.options.mem_per_task_mib {
            return mib;
        }
        match crate::runs::open_run(&self.task.run_dir) {
            Ok(run) => task_memory_mib(&run, intervals, self.options.mode),
            // The replay itself will report an unreadable run; ask for a generous amount.
            Err(_) => 4096,
        }
    }

    /// The log files of one task.
    fn logs(&self, job_id: &str, interval: u64) -> (PathBuf, PathBuf) {
        (
            self.options.dir.join(format!("{job_id}_{interval}.out")),
            self.options.dir.join(format!("{job_id}_{interval}.err")),
        )
    }

    /// The outcome of a finished task: its report if it printed one and exited 0 or 3.
    fn finished(
        &self,
        job_id: &str,
        interval: u64,
        state: &str,
        wait_status: Option<i32>,
    ) -> IntervalOutcome {
        let (out, err) = self.logs(job_id, interval);
        let stdout = std::fs::read_to_string(&out).unwrap_or_default();
        let stderr = std::fs::read_to_string(&err).unwrap_or_default();
        // squeue's exit_code is the raw wait status: the exit code in bits 8..16, a signal in
        // the low bits.
        let code = wait_status.and_then(|s| ((s & 0x7f) == 0).then_some((s >> 8) & 0xff));
        let context = format!(
            " (Slurm task {job_id}_{interval}, state {state}; logs {} and {})",
            out.display(),
            err.display()
        );
        let mut outcome = outcome_from_output(interval, code, &stdout, &stderr, &context);
        if state != "COMPLETED" && state != "FAILED" {
            // Cancelled, timed out, out of memory, node failure: say what Slurm says, even if
            // the task managed to print something.
            outcome.result = Err(format!(
                "the Slurm task ended {state}: {}{context}",
                super::last_line(&stderr)
            ));
        }
        outcome
    }

    /// Asks `squeue` about every outstanding task and moves finished ones to `ready`.
    fn poll(&mut self) -> Result<(), ExecutorError> {
        self.last_poll = Some(Instant::now());
        let mut finished = Vec::new();
        for index in 0..self.arrays.len() {
            let job_id = self.arrays[index].job_id.clone();
            let listed = match squeue(&job_id) {
                Ok(listed) => {
                    self.squeue_failures = 0;
                    listed
                }
                Err(e) => {
                    self.squeue_failures += 1;
                    if self.squeue_failures >= SQUEUE_RETRIES {
                        return Err(e);
                    }
                    tracing::warn!(error = %e, "squeue failed; retrying");
                    return Ok(());
                }
            };
            let array = &mut self.arrays[index];
            for (&interval, unseen) in array.pending.iter_mut() {
                match listed.get(&interval) {
                    Some(task) if is_terminal(&task.state) => {
                        finished.push((job_id.clone(), interval, Some(task.clone())));
                    }
                    Some(_) => *unseen = 0,
                    None => {
                        // Gone from the controller's memory before we saw it end.
                        *unseen += 1;
                        if *unseen >= 2 {
                            finished.push((job_id.clone(), interval, None));
                        }
                    }
                }
            }
        }
        for (job_id, interval, task) in finished {
            let outcome = match task {
                Some(task) => self.finished(&job_id, interval, &task.state, task.wait_status),
                None => match sacct(&job_id, interval) {
                    Some((state, code)) => self.finished(&job_id, interval, &state, code),
                    // No accounting: the log tells whether it reported.
                    None => self.finished(&job_id, interval, "COMPLETED", Some(0)),
                },
            };
            if let Some(array) = self.arrays.iter_mut().find(|a| a.job_id == job_id) {
                array.pending.remove(&interval);
            }
            self.ready.push_back(outcome);
        }
        self.arrays.retain(|a| !a.pending.is_empty());
        Ok(())
    }

    fn scancel(&mut self) {
        let ids: Vec<String> = self.arrays.iter().map(|a| a.job_id.clone()).collect();
        if ids.is_empty() {
            return;
        }
        match Command::new("scancel")
            .args(&ids)
            .stdin(Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => {
                eprintln!("simuboost-replay: cancelled Slurm job(s) {}", ids.join(" "));
            }
            Ok(out) => tracing::warn!(
                jobs = %ids.join(" "),
                error = %String::from_utf8_lossy(&out.stderr).trim(),
                "scancel failed"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot run scancel"),
        }
    }
}

impl Executor for SlurmExecutor {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn submit(&mut self, intervals: Range<u64>) -> Result<(), ExecutorError> {
        if intervals.is_empty() {
            return Ok(());
        }
        let mut array = format!("--array={}-{}", intervals.start, intervals.end - 1);
        if let Some(jobs) = self.options.jobs {
            array.push_str(&format!("%{jobs}"));
        }
        let dir = self.options.dir.display();
        let mut args = vec![
            "--parsable".to_string(),
            array,
            "--job-name=simuboost-replay".to_string(),
            format!("--output={dir}/%A_%a.out"),
            format!("--error={dir}/%A_%a.err"),
            format!("--mem={}M", self.memory_mib(intervals.clone())),
            "--ntasks=1".to_string(),
            "--cpus-per-task=1".to_string(),
        ];
        if let Some(partition) = &self.options.partition {
            args.push(format!("--partition={partition}"));
        }
        if let Some(limit) = self.options.time_limit {
            let secs = limit.as_secs() + u64::from(limit.subsec_nanos() > 0);
            args.push(format!(
                "--time={}:{:02}:{:02}",
                secs / 3600,
                secs / 60 % 60,
                secs % 60
            ));
        }
        // Last, so a user's --slurm-arg overrides the defaults above.
        args.extend(self.options.extra_args.iter().cloned());
        args.push(self.script.display().to_string());
        let command = format!("sbatch {}", args.join(" "));
        let out = Command::new("sbatch")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| ExecutorError::Command {
                command: command.clone(),
                message: format!("cannot run sbatch: {e} (is Slurm's client installed?)"),
            })?;
        if !out.status.success() {
            return Err(ExecutorError::Command {
                command,
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        // --parsable prints "jobid" or "jobid;cluster".
        let stdout = String::from_utf8_lossy(&out.stdout);
        let job_id = stdout
            .trim()
            .split(';')
            .next()
            .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| ExecutorError::Command {
                command: command.clone(),
                message: format!("unexpected output {:?}", stdout.trim()),
            })?
            .to_string();
        tracing::info!(job_id, intervals = ?intervals, "submitted a Slurm job array");
        self.arrays.push(Array {
            job_id,
            pending: intervals.map(|i| (i, 0)).collect(),
        });
        Ok(())
    }

    fn next(&mut self, timeout: Duration) -> Result<Option<IntervalOutcome>, ExecutorError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(outcome) = self.ready.pop_front() {
                return Ok(Some(outcome));
            }
            if self.arrays.is_empty() {
                return Ok(None);
            }
            let now = Instant::now();
            let due = self.last_poll.map_or(now, |last| last + self.options.poll);
            if due > now {
                if due > deadline {
                    std::thread::sleep(deadline.saturating_duration_since(now));
                    return Ok(None);
                }
                std::thread::sleep(due - now);
            }
            self.poll()?;
            if self.ready.is_empty() && Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    fn outstanding(&self) -> usize {
        self.ready.len() + self.arrays.iter().map(|a| a.pending.len()).sum::<usize>()
    }

    fn cancel(&mut self) {
        self.scancel();
    }
}

impl Drop for SlurmExecutor {
    fn drop(&mut self) {
        // An error or a signal left tasks queued: they would replay for nobody.
        self.scancel();
    }
}

/// What `squeue` says about one array task.
#[derive(Clone, Debug)]
struct TaskState {
    state: String,
    /// Raw wait status (`exit_code`), once the task ended.
    wait_status: Option<i32>,
}

fn is_terminal(state: &str) -> bool {
    !matches!(
        state,
        "PENDING"
            | "RUNNING"
            | "CONFIGURING"
            | "COMPLETING"
            | "SUSPENDED"
            | "REQUEUED"
            | "REQUEUE_HOLD"
            | "REQUEUE_FED"
            | "RESIZING"
            | "SIGNALING"
            | "STAGE_OUT"
            | "STOPPED"
            | "RESV_DEL_HOLD"
    )
}

/// The tasks of array `job_id` that the controller still knows, by task id. An array it has
/// forgotten entirely is an empty map.
fn squeue(job_id: &str) -> Result<BTreeMap<u64, TaskState>, ExecutorError> {
    let format = "ArrayTaskID:|,State:|,exit_code:|";
    let args = ["-h", "-r", "-t", "all", "-j", job_id, "-O", format];
    let command = format!("squeue {}", args.join(" "));
    let out = Command::new("squeue")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ExecutorError::Command {
            command: command.clone(),
            message: format!("cannot run squeue: {e}"),
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // Once every task is older than MinJobAge the controller forgets the job id.
        if stderr.contains("Invalid job id") {
            return Ok(BTreeMap::new());
        }
        return Err(ExecutorError::Command {
            command,
            message: stderr.trim().to_string(),
        });
    }
    let mut tasks = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let fields: Vec<&str> = line.split('|').map(str::trim).collect();
        let [task, state, status, ..] = fields.as_slice() else {
            continue;
        };
        // A pending array not yet split into tasks lists its range ("0-9%2") as one line: its
        // tasks are all pending, which is what "not terminal" means for them below.
        let Ok(task) = task.parse::<u64>() else {
            if let Some(range) = task.split('%').next() {
                for id in expand_range(range) {
                    tasks.insert(
                        id,
                        TaskState {
                            state: state.to_string(),
                            wait_status: None,
                        },
                    );
                }
            }
            continue;
        };
        tasks.insert(
            task,
            TaskState {
                state: state.to_string(),
                wait_status: status.parse().ok(),
            },
        );
    }
    Ok(tasks)
}

/// Task ids of a Slurm range expression such as `3-5,7`.
fn expand_range(range: &str) -> Vec<u64> {
    let mut ids = Vec::new();
    for part in range.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u64>(), b.parse::<u64>()) {
                    ids.extend(a..=b);
                }
            }
            None => ids.extend(part.parse::<u64>().ok()),
        }
    }
    ids
}

/// State and wait status of a task from accounting, when the cluster has it.
fn sacct(job_id: &str, interval: u64) -> Option<(String, Option<i32>)> {
    let out = Command::new("sacct")
        .args(["-n", "-P", "-X", "-o", "State,ExitCode", "-j"])
        .arg(format!("{job_id}_{interval}"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?;
    let (state, exit) = line.split_once('|')?;
    // sacct's ExitCode is "code:signal"; rebuild a wait status from it.
    let (code, signal) = exit.split_once(':')?;
    let (code, signal) = (code.parse::<i32>().ok()?, signal.parse::<i32>().ok()?);
    let state = state.split_whitespace().next()?.to_string();
    Some((state, Some((code << 8) | (signal & 0x7f))))
}

/// `text` as one single-quoted shell word.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_expand() {
        assert_eq!(expand_range("3-5,7"), vec![3, 4, 5, 7]);
        assert_eq!(expand_range("0"), vec![0]);
    }

    #[test]
    fn words_are_quoted() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn terminal_states() {
        assert!(is_terminal("COMPLETED"));
        assert!(is_terminal("TIMEOUT"));
        assert!(is_terminal("OUT_OF_MEMORY"));
        assert!(!is_terminal("PENDING"));
        assert!(!is_terminal("RUNNING"));
    }
}
