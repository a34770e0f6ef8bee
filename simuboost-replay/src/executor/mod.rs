//! Replaying many intervals: SimuBoost's parallel simulation, behind one seam.
//!
//! Every interval is independent, so replaying a run means handing intervals to something that
//! runs `simuboost-replay --run RUN --interval N --json <child args>` somewhere and collecting
//! each task's JSON report line. An [`Executor`] is that something:
//!
//! - [`local::LocalExecutor`]: K child processes of this binary on this machine.
//! - [`slurm::SlurmExecutor`]: Slurm job arrays (`sbatch --array`), one task per interval,
//!   watched with `squeue`/`scontrol`, cancelled with `scancel`.
//!
//! The seam is submit/next rather than "replay this range": `--follow` submits intervals as the
//! recorder commits them while earlier ones are still running, and the caller keeps one
//! progress bar and one summary for both executors. Both run the replay as a separate
//! process that reads the run itself, so an executor only moves interval numbers and report
//! lines, never run data (a remote run would change only what `--run` names).

pub mod local;
pub mod slurm;

use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use simuboost_report::replay::{exit, Engine};

use crate::replay::{Mode, ReplayReport};

/// The outcome of one interval.
pub struct IntervalOutcome {
    /// The interval.
    pub interval: u64,
    /// Its report, or why it could not be replayed (for Slurm, with the task's job id and log).
    pub result: Result<ReplayReport, String>,
}

/// What every replay task runs: `exe --run run_dir --interval N <child_args> --json`.
#[derive(Clone, Debug)]
pub struct ReplayTask {
    /// The `simuboost-replay` executable (for Slurm: its path on the compute nodes too).
    pub exe: PathBuf,
    /// The run, as the task will see it.
    pub run_dir: PathBuf,
    /// The flags every replay gets besides `--run`, `--interval` and `--json` (see
    /// [`child_args`]).
    pub child_args: Vec<String>,
}

/// Why an executor could not do its job (as opposed to one interval failing, which is an
/// [`IntervalOutcome`] with an error).
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// A scheduler command could not run or refused.
    #[error("`{command}` failed: {message}")]
    Command {
        /// The command line, for people.
        command: String,
        /// Its error output, or why it could not start.
        message: String,
    },
    /// Reading or writing the executor's own files.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Every worker is gone while intervals are outstanding.
    #[error("the replay workers stopped with {0} interval(s) outstanding")]
    WorkersGone(usize),
}

/// Something that replays intervals somewhere and reports them back.
pub trait Executor {
    /// A short name for messages (`local`, `slurm`).
    fn name(&self) -> &'static str;

    /// Starts replaying `intervals` and returns without waiting for them. May be called again
    /// while earlier intervals are still running (`--follow`).
    fn submit(&mut self, intervals: Range<u64>) -> Result<(), ExecutorError>;

    /// Waits up to `timeout` for an interval to finish; `Ok(None)` when none did in time or
    /// none is outstanding.
    fn next(&mut self, timeout: Duration) -> Result<Option<IntervalOutcome>, ExecutorError>;

    /// Intervals submitted whose outcome has not been returned by [`Executor::next`] yet.
    fn outstanding(&self) -> usize;

    /// Stops everything outstanding (on SIGINT/SIGTERM): kills local children, `scancel`s
    /// Slurm arrays. Best effort; problems are logged.
    fn cancel(&mut self);
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

/// Turns what a replay task printed and its exit status into an outcome. `status` is `None`
/// when it was killed by a signal; `context` (e.g. a Slurm job id and log path) is appended to
/// errors.
pub fn outcome_from_output(
    interval: u64,
    status: Option<i32>,
    stdout: &str,
    stderr: &str,
    context: &str,
) -> IntervalOutcome {
    let report = stdout
        .lines()
        .find_map(|line| serde_json::from_str::<ReplayReport>(line).ok());
    // Verified and diverged replays both report; any other status is a replay that could not run.
    let reported = |code: i32| code == i32::from(exit::OK) || code == i32::from(exit::DIVERGED);
    let result = match (status, report) {
        (Some(code), Some(report)) if reported(code) => Ok(report),
        (code, _) => {
            let message = last_line(stderr);
            let mut text = match code {
                Some(code) => format!("the replay exited with status {code}: {message}"),
                None => format!("the replay was killed by a signal: {message}"),
            };
            text.push_str(context);
            Err(text)
        }
    };
    IntervalOutcome { interval, result }
}

/// The last non-empty line of a replay's error output, without the program name.
pub fn last_line(stderr: &str) -> String {
    stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim_start_matches("simuboost-replay: ").to_string())
        .unwrap_or_default()
}
