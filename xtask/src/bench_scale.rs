//! `cargo xtask bench scale`: the executors and replay while recording.
//!
//! 1. Slurm overhead per task: the same intervals replayed with `--executor local` and with
//!    `--executor slurm` on a one-node Slurm cluster on 127.0.0.1 (started here, as the tests
//!    do), same `--jobs`; the difference in wall time per task, and the time from submission to
//!    the first task's start (from the start stamp each task's batch script logs).
//! 2. Pipelined: a recording with `--all --follow` started next to it vs record-then-replay:
//!    the time from the end of the recording to the last interval verified.
//!
//! Medians over [`REPEATS`] alternating repetitions; every replay must verify.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use simuboost_report::replay::ReplayReport;
use simuboost_tests::slurm::SlurmCluster;

use crate::bench_record::{record_run, tail};
use crate::bench_replay::median;
use crate::{binary, root};

const REPEATS: usize = 3;
const JOBS: &str = "2";
/// The recording both parts replay: `build` (the workload whose sparse replay matters most),
/// short intervals so there are many tasks.
const RECORD: &[&str] = &[
    "--workload",
    "build",
    "--mem",
    "256M",
    "--duration",
    "4s",
    "--interval",
    "250ms",
    "--seed",
    "1",
];

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

/// Runs `simuboost-replay ARGS --json`, checks every report verified; returns the reports
/// and the wall time, seconds.
fn replay(cmd: &mut Command, what: &str) -> Result<(Vec<ReplayReport>, f64)> {
    let began = Instant::now();
    let out = cmd
        .arg("--json")
        .output()
        .context("cannot run simuboost-replay")?;
    let wall = began.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, tail(&out.stderr));
    }
    let reports = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<ReplayReport>(l).with_context(|| format!("{what}: {l}")))
        .collect::<Result<Vec<_>>>()?;
    ensure!(
        reports.iter().all(|r| r.verified),
        "{what}: a replay did not verify"
    );
    Ok((reports, wall))
}

/// The earliest task start stamp in a Slurm log directory, Unix ns.
fn first_task_start(dir: &Path) -> Result<u128> {
    let mut first = u128::MAX;
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "err") {
            let text = fs::read_to_string(&path)?;
            for line in text.lines() {
                if let Some(ns) = line.strip_prefix("simuboost-task-start-unix-ns ") {
                    first = first.min(ns.trim().parse().unwrap_or(u128::MAX));
                }
            }
        }
    }
    ensure!(
        first != u128::MAX,
        "no task start stamp in {}",
        dir.display()
    );
    Ok(first)
}

pub fn run(json_out: Option<&Path>) -> Result<()> {
    let scratch = root().join("target").join("bench").join("scale");
    fs::create_dir_all(&scratch)?;
    let Some(cluster) = SlurmCluster::start() else {
        bail!("Slurm is not installed: run `cargo xtask setup`");
    };
    let exe = binary("simuboost-replay", true);

    // 1. Overhead per task.
    let run = scratch.join("run");
    eprintln!("bench scale: recording {}", RECORD.join(" "));
    record_run(&run, RECORD)?;
    let (mut local_walls, mut slurm_walls, mut first_starts) = (vec![], vec![], vec![]);
    let mut tasks = 0usize;
    for rep in 0..REPEATS {
        let (reports, wall) = replay(
            Command::new(&exe)
                .arg("--run")
                .arg(&run)
                .args(["--all", "--jobs", JOBS]),
            "local replay",
        )?;
        tasks = reports.len();
        local_walls.push(wall);
        let dir = scratch.join(format!("slurm-{rep}"));
        let _ = fs::remove_dir_all(&dir);
        let submitted = unix_ns();
        let (_, wall) = replay(
            Command::new(&exe)
                .env("SLURM_CONF", cluster.conf())
                .arg("--run")
                .arg(&run)
                .args(["--all", "--executor", "slurm", "--jobs", JOBS])
                .arg("--slurm-dir")
                .arg(&dir),
            "Slurm replay",
        )?;
        slurm_walls.push(wall);
        first_starts.push((first_task_start(&dir)?.saturating_sub(submitted)) as f64 / 1e6);
        eprintln!(
            "bench scale:   repetition {rep}: local {:.2} s, Slurm {wall:.2} s",
            local_walls[rep]
        );
    }
    let (local, slurm) = (median(local_walls), median(slurm_walls));
    let jobs: f64 = JOBS.parse().unwrap_or(1.0);
    // Tasks run `jobs` at a time: each wave of `jobs` tasks adds the per-task overhead once.
    let per_task_ms = (slurm - local) * 1e3 / (tasks as f64 / jobs).max(1.0);
    let first_start_ms = median(first_starts);

    // 2. Pipelined vs record-then-replay.
    let (mut pipelined, mut sequential, mut last_replay) = (vec![], vec![], vec![]);
    for rep in 0..REPEATS {
        for follow in [true, false] {
            let dir = scratch.join(format!("pipe-{rep}-{follow}"));
            let _ = fs::remove_dir_all(&dir);
            let mut recorder = Command::new(binary("simuboost-daemon", true))
                .arg("run")
                .args(RECORD)
                .args(["--console-log", "/dev/null", "--out"])
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot run simuboost-daemon")?;
            let follower = if follow {
                Some(
                    Command::new(&exe)
                        .arg("--run")
                        .arg(&dir)
                        .args(["--all", "--follow", "--jobs", JOBS, "--json"])
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()
                        .context("cannot run simuboost-replay")?,
                )
            } else {
                None
            };
            let status = recorder.wait()?;
            ensure!(status.success(), "the recording failed: {status}");
            let ended = Instant::now();
            let reports: Vec<ReplayReport> = match follower {
                Some(child) => {
                    let out = child.wait_with_output()?;
                    ensure!(
                        out.status.success(),
                        "--follow failed: {}",
                        tail(&out.stderr)
                    );
                    String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .map(|l| serde_json::from_str(l).context("a report"))
                        .collect::<Result<_>>()?
                }
                None => {
                    replay(
                        Command::new(&exe)
                            .arg("--run")
                            .arg(&dir)
                            .args(["--all", "--jobs", JOBS]),
                        "record-then-replay",
                    )?
                    .0
                }
            };
            let after = ended.elapsed().as_secs_f64();
            ensure!(
                reports.iter().all(|r| r.verified),
                "a replay did not verify"
            );
            if follow {
                pipelined.push(after);
                if let Some(last) = reports.iter().max_by_key(|r| r.interval) {
                    last_replay.push((last.restore_ms + last.replay_ms + last.verify_ms) / 1e3);
                }
            } else {
                sequential.push(after);
            }
            let _ = fs::remove_dir_all(&dir);
            eprintln!("bench scale:   repetition {rep}, follow {follow}: {after:.2} s after the recording");
        }
    }
    let (pipelined, sequential, last_replay) =
        (median(pipelined), median(sequential), median(last_replay));

    println!("### Executors: Slurm overhead per task ({tasks} intervals of `{}`, --jobs {JOBS}, one-node Slurm 22.05 on 127.0.0.1, median of {REPEATS})\n", RECORD.join(" "));
    println!(
        "| executor | wall s | overhead per task (ms) | submission to first task start (ms) |"
    );
    println!("|---|---:|---:|---:|");
    println!("| local | {local:.2} | - | - |");
    println!("| slurm | {slurm:.2} | {per_task_ms:.0} | {first_start_ms:.0} |");
    println!();
    println!("### Replay while recording (same recording, --jobs {JOBS}, median of {REPEATS})\n");
    println!("| | s from the end of recording to the last interval verified |");
    println!("|---|---:|");
    println!("| record, then `--all` | {sequential:.2} |");
    println!("| `--all --follow` during the recording | {pipelined:.2} |");
    println!("| (one interval's restore+replay+verify: the last) | {last_replay:.2} |");
    if let Some(path) = json_out {
        let value: Value = json!({
            "tasks": tasks, "jobs": JOBS, "local_wall_s": local, "slurm_wall_s": slurm,
            "slurm_overhead_per_task_ms": per_task_ms, "first_task_start_ms": first_start_ms,
            "record_then_replay_s": sequential, "pipelined_s": pipelined,
            "last_interval_replay_s": last_replay,
        });
        fs::write(path, serde_json::to_string_pretty(&value)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    drop(cluster);
    Ok(())
}
