//! `cargo xtask bench report [--quick]`: one run of the main figures, written to
//! docs/BENCHMARKS.md with PNG plots in docs/plots/.
//!
//! It measures nothing of its own: recordings and replays come from `bench_replay`, daemon runs
//! from `bench_record`; this file repeats them, keeps every sample, and reports the median and
//! the spread (min–max) of each figure beside the published ones (shared ANCHORS: SimuBoost's
//! sparse checkpointing, the working-set study). The one new measurement is the peak resident
//! memory of concurrent replays, which the OS reports per child (`wait4`'s rusage).

use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{anyhow, ensure, Context, Result};
use plotters::prelude::*;
use serde::Serialize;
use serde_json::{json, Value};

use simuboost_report::replay::ReplayReport;

use simuboost_abi::WorkloadId;

use crate::bench::GuestSpeedRow;
use crate::bench_analyses::LevelRow;
use crate::bench_overhead::{Overhead, OverheadPlan, VMX_EPT_FAULT_US, VMX_PML_EXIT_US};
use crate::bench_record::{daemon_run, recording, scratch_run};
use crate::bench_replay::{
    median, mib, ram_label, record, reduction, replay, replay_command, replay_rows, scratch,
    sparse_full_lazy, ModeRow, Recording, MODES,
};
use crate::bench_sim::SimRow;
use crate::root;

/// Published figures (shared ANCHORS): sparse checkpointing of a Linux kernel build, and the
/// largest working set of one interval in the working-set study.
const PUBLISHED_FOOTPRINT_SAVED: f64 = 79.0;
const PUBLISHED_LOADING_SAVED: f64 = 89.0;
const PUBLISHED_MAX_WORKING_SET: f64 = 7.94;
/// The memory budget that concurrent replays must share ("more concurrent simulations on a
/// single workstation"), and the target ratio of sparse to full replays fitting into it.
const BUDGET_BYTES: u64 = 1 << 30;
const CONCURRENCY_TARGET: f64 = 10.0;
const PAGE: f64 = 4096.0;

/// One recording: the workload, guest memory, interval, and how long it runs.
struct RecordingSpec {
    workload: &'static str,
    mem: &'static str,
    interval: &'static str,
    extra: &'static [&'static str],
    /// Also measure concurrent replays of it (section 2).
    concurrency: bool,
}

const fn spec(
    workload: &'static str,
    mem: &'static str,
    interval: &'static str,
    extra: &'static [&'static str],
) -> RecordingSpec {
    RecordingSpec {
        workload,
        mem,
        interval,
        extra,
        concurrency: false,
    }
}

impl RecordingSpec {
    const fn with_concurrency(self) -> RecordingSpec {
        RecordingSpec {
            concurrency: true,
            ..self
        }
    }
}

/// `stream` work for the per-fault cost calibration (it writes its whole arena each pass).
const QUICK_STREAM_WORK: &str = "300";
const FULL_STREAM_WORK: &str = "500";

/// The overhead split's workloads: `(workload, work units)` at 1 s intervals in `mem`.
fn overhead_workloads(
    mem: &'static str,
    runs: &[(&'static str, &'static str)],
) -> Vec<(String, Vec<&'static str>)> {
    runs.iter()
        .map(|&(workload, units)| {
            (
                format!("{workload} {mem} --work {units}"),
                vec![
                    "--workload",
                    workload,
                    "--mem",
                    mem,
                    "--work",
                    units,
                    "--interval",
                    "1s",
                ],
            )
        })
        .collect()
}

/// What a report run measures; `--quick` shrinks sizes and repetitions to a few minutes.
struct Plan {
    quick: bool,
    /// Repetitions of every replay and daemon run (each figure is a median over them).
    repeats: usize,
    /// The first is `build`: it also feeds the parallel-replay section, and the concurrency
    /// section's detailed table; the ones marked `concurrency` feed its summary.
    recordings: Vec<RecordingSpec>,
    /// Replays started at once in the concurrency section.
    concurrent: usize,
    /// Downtime vs dirty set: stream at these intervals.
    dirty_set_mem: &'static str,
    dirty_set_duration: &'static str,
    dirty_set_intervals: &'static [&'static str],
    /// Downtime vs VM size: pattern, 200 steps per interval, this much work.
    vm_sizes: &'static [&'static str],
    vm_size_work: &'static str,
    /// Recording overhead split: a calibration run and the workloads.
    overhead: OverheadPlan,
    /// Guest speed vs native: workloads and work units.
    guest_speed: Vec<(WorkloadId, u64)>,
    /// Simulator vs KVM replay, and per analysis level.
    sim_runs: Vec<(&'static str, &'static [&'static str])>,
    analyses_runs: Vec<(&'static str, &'static [&'static str])>,
    analyses_levels: Vec<(&'static str, &'static [&'static str])>,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                repeats: 2,
                // Short runs: a recording of `build` stores ~70 MiB per second of guest time,
                // and development machines share a small disk.
                recordings: vec![
                    spec("build", "256M", "1s", &["--duration", "5s"]).with_concurrency(),
                    spec("build", "256M", "500ms", &["--duration", "3s"]).with_concurrency(),
                    spec("build", "512M", "1s", &["--duration", "4s"]),
                    // kvstore first clears and fills its table (most of RAM).
                    spec("kvstore", "256M", "1s", &["--duration", "5s"]).with_concurrency(),
                    spec("compress", "256M", "1s", &["--duration", "4s"]),
                ],
                concurrent: 4,
                dirty_set_mem: "256M",
                dirty_set_duration: "2s",
                dirty_set_intervals: &["100ms", "400ms"],
                vm_sizes: &["256M", "1G"],
                vm_size_work: "2000",
                overhead: OverheadPlan {
                    calibration: &[
                        "--workload",
                        "stream",
                        "--mem",
                        "256M",
                        "--work",
                        QUICK_STREAM_WORK,
                        "--interval",
                        "1s",
                    ],
                    // kvstore under tracing faults on most of its table every interval: ~40 s
                    // for 600 units here, so a small amount of it.
                    workloads: overhead_workloads("256M", &[("build", "600"), ("kvstore", "200")]),
                    repeats: 2,
                },
                guest_speed: [WorkloadId::Build, WorkloadId::Kvstore, WorkloadId::Compress]
                    .into_iter()
                    .filter_map(|w| Some((w, crate::bench::bench_units(w)?)))
                    .collect(),
                sim_runs: crate::bench_sim::RUNS
                    .into_iter()
                    .filter(|(w, _)| ["build", "compress"].contains(w))
                    .collect(),
                analyses_runs: crate::bench_analyses::RUNS
                    .into_iter()
                    .filter(|(w, _)| *w == "compress")
                    .collect(),
                analyses_levels: crate::bench_analyses::LEVELS
                    .into_iter()
                    .filter(|(l, _)| {
                        !l.starts_with("blocks") && !l.starts_with("trace,") && *l != "all"
                    })
                    .collect(),
            }
        } else {
            Plan {
                quick,
                repeats: 3,
                recordings: vec![
                    spec("build", "1G", "1s", &["--duration", "12s"]).with_concurrency(),
                    spec("build", "1G", "500ms", &["--duration", "6s"]).with_concurrency(),
                    spec("build", "512M", "1s", &["--duration", "8s"]),
                    spec("kvstore", "1G", "1s", &["--duration", "14s"]).with_concurrency(),
                    spec("kvstore", "512M", "1s", &["--duration", "10s"]),
                    spec("compress", "1G", "1s", &["--duration", "6s"]).with_concurrency(),
                    spec("sort", "1G", "1s", &["--duration", "6s"]),
                    spec("stream", "1G", "1s", &["--duration", "6s"]),
                ],
                concurrent: 6,
                dirty_set_mem: "1G",
                dirty_set_duration: "5s",
                dirty_set_intervals: &["50ms", "100ms", "200ms", "400ms", "800ms"],
                vm_sizes: &["256M", "512M", "1G", "2G", "4G"],
                vm_size_work: "8000",
                overhead: OverheadPlan {
                    calibration: &[
                        "--workload",
                        "stream",
                        "--mem",
                        "256M",
                        "--work",
                        FULL_STREAM_WORK,
                        "--interval",
                        "1s",
                    ],
                    // Smaller than `bench record`'s 512 MiB and 1500 units: with tracing on,
                    // kvstore's run time grows more than tenfold here.
                    workloads: overhead_workloads(
                        "256M",
                        &[("build", "600"), ("kvstore", "400"), ("compress", "600")],
                    ),
                    repeats: 3,
                },
                guest_speed: WorkloadId::ALL
                    .into_iter()
                    .filter_map(|w| Some((w, crate::bench::bench_units(w)?)))
                    .collect(),
                sim_runs: crate::bench_sim::RUNS.to_vec(),
                analyses_runs: crate::bench_analyses::RUNS.to_vec(),
                analyses_levels: crate::bench_analyses::LEVELS.to_vec(),
            }
        }
    }
}

/// Median and spread of repeated samples.
#[derive(Clone, Copy, Serialize)]
pub(crate) struct Spread {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) samples: usize,
}

impl Spread {
    pub(crate) fn of(values: impl IntoIterator<Item = f64>) -> Spread {
        let values: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
        Spread {
            median: median(values.clone()),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            samples: values.len(),
        }
    }

    /// `median (min–max)` with `decimals` decimals.
    pub(crate) fn show(&self, decimals: usize) -> String {
        format!(
            "{:.d$} ({:.d$}–{:.d$})",
            self.median,
            self.min,
            self.max,
            d = decimals
        )
    }
}

/// The host, read from the OS: every figure depends on it.
#[derive(Serialize)]
struct Machine {
    cores: usize,
    memory_gib: f64,
    cpu: String,
    kvm_backend: String,
    kernel: String,
    load_average_before: String,
}

fn machine() -> Machine {
    let read = |path: &str| fs::read_to_string(path).unwrap_or_default();
    let meminfo = read("/proc/meminfo");
    let mem_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN);
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into());
    // Which KVM module is loaded names the backend; PVM (software, shadow paging) makes
    // every guest exit and shadow page fault ~25 µs, which shapes most figures.
    let module = |name: &str| Path::new("/sys/module").join(name).exists();
    let kvm_backend = if module("kvm_pvm") {
        "PVM (kvm_pvm: software virtualization, shadow paging)"
    } else if module("kvm_intel") {
        "VMX (kvm_intel)"
    } else if module("kvm_amd") {
        "SVM (kvm_amd)"
    } else {
        "unknown"
    }
    .to_string();
    Machine {
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        memory_gib: mem_kib / (1u64 << 20) as f64,
        cpu,
        kvm_backend,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        load_average_before: load_average(),
    }
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown date".into())
}

/// Section 1 and 3 results of one recording.
#[derive(Serialize)]
struct RecordingResult {
    label: String,
    workload: &'static str,
    mem_bytes: u64,
    interval: &'static str,
    modes: ModeRow,
    footprint_mib: [Spread; 3],
    restore_ms: [Spread; 3],
    lazy_misses: Spread,
    /// Sparse footprint saved vs full and vs a whole-RAM image, per sample pair.
    footprint_saved_vs_full: Spread,
    footprint_saved_vs_ram: Spread,
    restore_saved_vs_full: Spread,
    /// Access-log frames per interval (the tracer's working set), in interval order.
    working_set_frames: Vec<u64>,
    captured_pages: u64,
    zero_pages: u64,
    dedup_pages: u64,
    stored_pages: u64,
    bytes_written_per_interval: f64,
    intervals: u64,
}

/// Samples of one field of one mode's replays.
fn mode_samples(rows: &[ReplayReport], mode: &str, field: fn(&ReplayReport) -> f64) -> Vec<f64> {
    rows.iter()
        .filter(|r| r.mode.name() == mode)
        .map(field)
        .collect()
}

/// Per-sample reductions: the sparse and full replays of one `--mode sparse,full,lazy` call
/// are paired (same interval, same moment), so their ratio is not mixed across repetitions.
fn paired_saving(rows: &[ReplayReport], field: fn(&ReplayReport) -> f64) -> Spread {
    let sparse = mode_samples(rows, "sparse", field);
    let full = mode_samples(rows, "full", field);
    Spread::of(sparse.iter().zip(&full).map(|(s, f)| reduction(*s, *f)))
}

/// The tracer's frames per interval, from the run's Parquet interval table (DuckDB).
fn working_set_frames(run: &Path) -> Result<Vec<u64>> {
    const QUERY: &str = r#"
import sys, duckdb
rows = duckdb.sql(f"SELECT traced_frames FROM '{sys.argv[1]}/intervals/*.parquet' ORDER BY interval").fetchall()
print(" ".join(str(r[0]) for r in rows))
"#;
    let out = Command::new("python3")
        .args(["-c", QUERY])
        .arg(run)
        .output()
        .context("cannot run python3 (cargo xtask setup installs duckdb)")?;
    ensure!(
        out.status.success(),
        "the DuckDB query of {} failed: {}",
        run.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|v| v.parse().context("DuckDB printed a non-number"))
        .collect()
}

fn measure_recording(spec: &RecordingSpec, plan: &Plan) -> Result<(RecordingResult, Recording)> {
    let mut args = vec![
        "--workload",
        spec.workload,
        "--mem",
        spec.mem,
        "--interval",
        spec.interval,
    ];
    args.extend_from_slice(spec.extra);
    let dir = scratch()?.join(format!(
        "report-{}-{}-{}",
        spec.workload, spec.mem, spec.interval
    ));
    let rec = record(&dir, &args)?;
    let label = format!(
        "{} {} {}",
        spec.workload,
        ram_label(rec.mem_bytes),
        spec.interval
    );
    let modes = sparse_full_lazy(&label, &rec, plan.repeats)?;
    let rows = &modes.replays;
    let ram_mib = mib(rec.mem_bytes as f64);
    let footprint_mib = MODES.map(|m| {
        Spread::of(mode_samples(rows, m, |r| {
            r.footprint_bytes as f64 / (1u64 << 20) as f64
        }))
    });
    let restore_ms = MODES.map(|m| Spread::of(mode_samples(rows, m, |r| r.restore_ms)));
    let sparse_fp = mode_samples(rows, "sparse", |r| r.footprint_bytes as f64);
    let totals = recording(&rec.summary)?;
    let result = RecordingResult {
        label,
        workload: spec.workload,
        mem_bytes: rec.mem_bytes,
        interval: spec.interval,
        footprint_mib,
        restore_ms,
        lazy_misses: Spread::of(mode_samples(rows, "lazy", |r| r.misses as f64)),
        footprint_saved_vs_full: paired_saving(rows, |r| r.footprint_bytes as f64),
        footprint_saved_vs_ram: Spread::of(sparse_fp.iter().map(|b| reduction(mib(*b), ram_mib))),
        restore_saved_vs_full: paired_saving(rows, |r| r.restore_ms),
        working_set_frames: working_set_frames(&rec.dir)?,
        captured_pages: totals.captured_pages,
        zero_pages: totals.zero_pages,
        dedup_pages: totals.dedup_pages,
        stored_pages: totals.stored_pages,
        bytes_written_per_interval: totals.bytes_written as f64 / totals.intervals.max(1) as f64,
        intervals: rec.intervals(),
        modes,
    };
    Ok((result, rec))
}

/// Waits for child `pid` and returns its exit status and peak resident memory in bytes.
fn wait_with_peak_rss(pid: u32) -> Result<(ExitStatus, u64)> {
    let pid = libc::pid_t::try_from(pid).context("child pid out of range")?;
    let mut status: libc::c_int = 0;
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    loop {
        // SAFETY: `pid` is a child of this process that nobody has waited for yet, and both
        // out-pointers point to live, writable values of the types wait4 expects.
        let r = unsafe { libc::wait4(pid, &mut status, 0, usage.as_mut_ptr()) };
        if r == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).context("wait4 for a replay failed");
        }
    }
    // SAFETY: the rusage was zero-initialised (a valid value of this plain C struct) and wait4
    // has filled it in.
    let usage = unsafe { usage.assume_init() };
    // Linux reports ru_maxrss in KiB.
    let peak = u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024;
    Ok((ExitStatus::from_raw(status), peak))
}

fn read_all(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        // A read error leaves what was read; the replay's own status says whether it failed.
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// One replay of a concurrent batch: its report and its peak resident memory.
#[derive(Serialize)]
struct PeakReplay {
    interval: u64,
    peak_rss_bytes: u64,
    footprint_bytes: u64,
}

/// Starts one replay per interval at once and waits for all; every replay must verify.
fn concurrent_batch(run: &Path, intervals: &[u64], mode: &str) -> Result<Vec<PeakReplay>> {
    let args: Vec<Vec<String>> = intervals
        .iter()
        .map(|i| {
            ["--interval", &i.to_string(), "--mode", mode]
                .map(String::from)
                .to_vec()
        })
        .collect();
    let mut children = Vec::new();
    for a in &args {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let mut child = replay_command(run, &a)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start simuboost-replay")?;
        let stdout = read_all(child.stdout.take().context("no stdout pipe")?);
        let stderr = read_all(child.stderr.take().context("no stderr pipe")?);
        // Reaped by wait4 below, not by `Child::wait`: std cannot report the peak memory.
        children.push((child.id(), stdout, stderr));
    }
    let mut replays = Vec::new();
    for ((pid, stdout, stderr), (a, &interval)) in
        children.into_iter().zip(args.iter().zip(intervals))
    {
        let (status, peak) = wait_with_peak_rss(pid)?;
        let output = Output {
            status,
            stdout: stdout
                .join()
                .map_err(|_| anyhow!("stdout reader panicked"))?,
            stderr: stderr
                .join()
                .map_err(|_| anyhow!("stderr reader panicked"))?,
        };
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let rows = replay_rows(run, &a, &output)?;
        replays.push(PeakReplay {
            interval,
            peak_rss_bytes: peak,
            footprint_bytes: rows.iter().map(|r| r.footprint_bytes).max().unwrap_or(0),
        });
    }
    Ok(replays)
}

#[derive(Serialize)]
struct ConcurrencyMode {
    mode: &'static str,
    peak_rss_mib: Spread,
    footprint_mib: Spread,
    /// Sum of the peaks of one batch (all started at once), over the repetitions.
    batch_total_mib: Spread,
    /// Replays that fit the budget at the median peak, and at the largest peak.
    fit_median: u64,
    fit_worst: u64,
    replays: Vec<Vec<PeakReplay>>,
}

#[derive(Serialize)]
struct Concurrency {
    recording: String,
    intervals: Vec<u64>,
    budget_bytes: u64,
    modes: Vec<ConcurrencyMode>,
    ratio_median: f64,
    ratio_worst: f64,
}

fn concurrency(rec: &Recording, label: &str, plan: &Plan) -> Result<Concurrency> {
    // Different intervals, the latest before the final one (a short tail) and never interval
    // 0 (boot), as section 1 picks its steady intervals: the first seconds of a run fill the
    // guest's memory, so their checkpoints hold less for a full restore than a run's later
    // (and, in a long run, nearly all) intervals. Wraps around on a short run.
    let replayable: Vec<u64> = match rec.intervals() {
        0 | 1 => Vec::new(),
        2 => vec![1],
        n => (1..n - 1).collect(),
    };
    ensure!(!replayable.is_empty(), "{label}: too few intervals");
    let latest = &replayable[replayable.len().saturating_sub(plan.concurrent)..];
    let intervals: Vec<u64> = latest
        .iter()
        .copied()
        .cycle()
        .take(plan.concurrent)
        .collect();
    let mut modes = Vec::new();
    for mode in ["sparse", "full"] {
        let mut batches = Vec::new();
        for _ in 0..plan.repeats {
            eprintln!(
                "bench report: {} concurrent {mode} replays of {label}",
                intervals.len()
            );
            batches.push(concurrent_batch(&rec.dir, &intervals, mode)?);
        }
        let peaks = Spread::of(
            batches
                .iter()
                .flatten()
                .map(|r| mib(r.peak_rss_bytes as f64)),
        );
        let budget = mib(BUDGET_BYTES as f64);
        modes.push(ConcurrencyMode {
            mode,
            peak_rss_mib: peaks,
            footprint_mib: Spread::of(
                batches
                    .iter()
                    .flatten()
                    .map(|r| mib(r.footprint_bytes as f64)),
            ),
            batch_total_mib: Spread::of(
                batches
                    .iter()
                    .map(|b| b.iter().map(|r| mib(r.peak_rss_bytes as f64)).sum::<f64>()),
            ),
            fit_median: (budget / peaks.median).floor() as u64,
            fit_worst: (budget / peaks.max).floor() as u64,
            replays: batches,
        });
    }
    let ratio = |f: fn(&ConcurrencyMode) -> u64| f(&modes[0]) as f64 / f(&modes[1]).max(1) as f64;
    Ok(Concurrency {
        recording: label.to_string(),
        intervals,
        budget_bytes: BUDGET_BYTES,
        ratio_median: ratio(|m| m.fit_median),
        ratio_worst: ratio(|m| m.fit_worst),
        modes,
    })
}

#[derive(Serialize)]
struct ParallelRow {
    jobs: usize,
    wall_s: Spread,
    speedup: f64,
}

/// `--all --jobs J` for J = 1..=cores, alternating J within each repetition.
fn parallel(rec: &Recording, cores: usize, plan: &Plan) -> Result<Vec<ParallelRow>> {
    let jobs: Vec<usize> = (1..=cores.max(2)).collect();
    let mut walls = vec![Vec::new(); jobs.len()];
    for _ in 0..plan.repeats {
        for (k, j) in jobs.iter().enumerate() {
            let (rows, wall) = replay(
                &rec.dir,
                &["--all", "--jobs", &j.to_string(), "--mode", "sparse"],
            )?;
            ensure!(
                rows.len() as u64 == rec.intervals(),
                "--all --jobs {j} replayed {} of {} intervals",
                rows.len(),
                rec.intervals()
            );
            eprintln!("bench report: --all --jobs {j}: {wall:.2} s");
            walls[k].push(wall);
        }
    }
    let base = median(walls[0].clone());
    Ok(jobs
        .iter()
        .zip(walls)
        .map(|(&jobs, w)| {
            let wall_s = Spread::of(w);
            ParallelRow {
                jobs,
                speedup: base / wall_s.median,
                wall_s,
            }
        })
        .collect())
}

#[derive(Serialize)]
struct DowntimePoint {
    /// The swept setting: an interval length or a guest size.
    setting: String,
    dirty_pages: Spread,
    downtime_ms: Spread,
    max_downtime_ms: Spread,
}

/// Daemon runs (no tracer) of `base` plus each setting, `repeats` times, alternating settings.
fn downtime_sweep(
    flag: &str,
    settings: &[&str],
    base: &[&str],
    repeats: usize,
) -> Result<Vec<DowntimePoint>> {
    let dir = scratch_run("report")?;
    let mut samples = vec![Vec::new(); settings.len()];
    for _ in 0..repeats {
        for (k, &setting) in settings.iter().enumerate() {
            let mut args = base.to_vec();
            args.extend([flag, setting, "--seed", "1"]);
            let s = daemon_run(&dir, &args)?;
            let r = recording(&s)?;
            eprintln!(
                "bench report: {} {flag} {setting}: {:.0} dirty pages, {:.1} ms downtime",
                base.join(" "),
                r.mean_dirty_pages,
                r.mean_downtime_ms
            );
            samples[k].push((r.mean_dirty_pages, r.mean_downtime_ms, r.max_downtime_ms));
        }
    }
    Ok(settings
        .iter()
        .zip(samples)
        .map(|(setting, s)| DowntimePoint {
            setting: setting.to_string(),
            dirty_pages: Spread::of(s.iter().map(|v| v.0)),
            downtime_ms: Spread::of(s.iter().map(|v| v.1)),
            max_downtime_ms: Spread::of(s.iter().map(|v| v.2)),
        })
        .collect())
}

pub fn run(quick: bool, json_out: Option<&Path>) -> Result<()> {
    let began = Instant::now();
    let plan = Plan::new(quick);
    let machine = machine();
    let docs = root().join("docs");
    let plots = docs.join("plots");
    fs::create_dir_all(&plots).with_context(|| format!("cannot create {}", plots.display()))?;

    // 1 and 3: every recording, replayed sparse/full/lazy. The first (build) also feeds
    // 2 (concurrent replays in one memory budget) and 4 (parallel replay); each recording is
    // removed as soon as it is measured, since recordings take hundreds of MiB of disk.
    let mut results = Vec::new();
    let mut parallel_rows = None;
    let mut concurrencies = Vec::new();
    for spec in &plan.recordings {
        let (result, rec) = measure_recording(spec, &plan)?;
        if spec.concurrency || concurrencies.is_empty() {
            concurrencies.push(concurrency(&rec, &result.label, &plan)?);
        }
        if parallel_rows.is_none() {
            parallel_rows = Some(parallel(&rec, machine.cores, &plan)?);
        }
        results.push(result);
        rec.remove()?;
    }
    let parallel = parallel_rows.context("the plan has no recording")?;

    // 4. Downtime sweeps.
    let dirty_sweep = downtime_sweep(
        "--interval",
        plan.dirty_set_intervals,
        &[
            "--workload",
            "stream",
            "--mem",
            plan.dirty_set_mem,
            "--duration",
            plan.dirty_set_duration,
        ],
        plan.repeats,
    )?;
    let size_sweep = downtime_sweep(
        "--mem",
        plan.vm_sizes,
        &[
            "--workload",
            "pattern",
            "--arena",
            crate::bench_record::VM_SIZE_ARENA,
            "--work",
            plan.vm_size_work,
            "--interval-exits",
            "200",
        ],
        plan.repeats,
    )?;

    let qemu_json = root().join("target").join("bench").join("qemu.json");
    let qemu: Option<Value> = match fs::read(&qemu_json) {
        Ok(bytes) => Some(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not JSON", qemu_json.display()))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", qemu_json.display())),
    };

    // 6–8: recording overhead split, guest speed vs native, the simulator.
    let overhead = crate::bench_overhead::measure(&plan.overhead)?;
    let guest_speed = crate::bench::guest_speed_rows(&plan.guest_speed, plan.repeats)?;
    // A simulated replay that diverges is a finding, not a reason to lose the whole report:
    // each workload's failure is reported in its section, the other workloads still run.
    let (mut sim, mut analyses, mut sim_failures) = (Vec::new(), Vec::new(), Vec::new());
    for run in &plan.sim_runs {
        match crate::bench_sim::sim_rows(std::slice::from_ref(run)) {
            Ok(rows) => sim.extend(rows),
            Err(e) => {
                eprintln!("bench report: simulator, {}: {e:#}", run.0);
                sim_failures.push(format!("simulator, {}: {e:#}", run.0));
            }
        }
    }
    for run in &plan.analyses_runs {
        match crate::bench_analyses::analyses_rows(
            std::slice::from_ref(run),
            &plan.analyses_levels,
            crate::bench_analyses::ROUNDS,
        ) {
            Ok(rows) => analyses.extend(rows),
            Err(e) => {
                eprintln!("bench report: analyses, {}: {e:#}", run.0);
                sim_failures.push(format!("analyses, {}: {e:#}", run.0));
            }
        }
    }

    let seconds = began.elapsed().as_secs_f64();
    let report = Report {
        plan: &plan,
        machine: &machine,
        load_average_after: load_average(),
        date: utc_now(),
        seconds,
        results: &results,
        concurrency: &concurrencies,
        parallel: &parallel,
        dirty_sweep: &dirty_sweep,
        size_sweep: &size_sweep,
        qemu: qemu.as_ref(),
        overhead: &overhead,
        guest_speed: &guest_speed,
        sim: &sim,
        analyses: &analyses,
        sim_failures: &sim_failures,
    };
    plot_restore(&plots.join("restore.png"), &results)?;
    plot_working_sets(&plots.join("working-set.png"), &results)?;
    plot_downtime(&plots.join("downtime.png"), &dirty_sweep, &size_sweep)?;
    plot_concurrency(&plots.join("concurrency.png"), &concurrencies)?;
    plot_overhead(&plots.join("overhead.png"), &overhead)?;
    let markdown = report.markdown();
    let out = docs.join("BENCHMARKS.md");
    fs::write(&out, markdown).with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!(
        "bench report: wrote {} and {} in {seconds:.0} s",
        out.display(),
        plots.display()
    );

    let data = json!({
        "quick": plan.quick, "repeats": plan.repeats, "machine": machine,
        "recordings": results, "concurrency": concurrencies, "parallel": parallel,
        "downtime_vs_dirty_set": dirty_sweep, "downtime_vs_vm_size": size_sweep,
        "recording_overhead": overhead, "guest_speed": guest_speed, "sim": sim,
        "analyses": analyses, "sim_failures": sim_failures, "bench_seconds": seconds,
    });
    let path = json_out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| root().join("target").join("bench").join("report.json"));
    fs::write(&path, serde_json::to_string_pretty(&data)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Everything BENCHMARKS.md shows.
struct Report<'a> {
    plan: &'a Plan,
    machine: &'a Machine,
    load_average_after: String,
    date: String,
    seconds: f64,
    results: &'a [RecordingResult],
    /// The first is the detailed one (the plan's first recording).
    concurrency: &'a [Concurrency],
    parallel: &'a [ParallelRow],
    dirty_sweep: &'a [DowntimePoint],
    size_sweep: &'a [DowntimePoint],
    qemu: Option<&'a Value>,
    overhead: &'a Overhead,
    guest_speed: &'a [GuestSpeedRow],
    sim: &'a [SimRow],
    analyses: &'a [LevelRow],
    /// Workloads whose simulated replays failed, with the error.
    sim_failures: &'a [String],
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "not met"
    }
}

impl Report<'_> {
    fn markdown(&self) -> String {
        let mut md = String::new();
        // Writing into a String cannot fail.
        let _ = self.write(&mut md);
        md
    }

    fn write(&self, md: &mut String) -> std::fmt::Result {
        let m = self.machine;
        let plan = self.plan;
        let build = if crate::bench_debug() {
            "debug profile (SIMUBOOST_BENCH_DEBUG=1; simuboost's binaries built optimised, times not comparable with a release build)"
        } else {
            "release build"
        };
        writeln!(md, "# Benchmarks\n")?;
        writeln!(
            md,
            "Generated by `cargo xtask bench report{}` on {} in {:.0} s; do not edit by hand, \
             rerun it. The machine's JSON is in `target/bench/report.json`.\n",
            if plan.quick { " --quick" } else { "" },
            self.date,
            self.seconds
        )?;
        writeln!(md, "**Machine** (read from the host): {} cores, {:.1} GiB memory, KVM backend **{}**, CPU {}, kernel {}. Load average before / after: {} / {} (other builds share this machine, so times are noisy). Binaries: {build}.\n",
            m.cores, m.memory_gib, m.kvm_backend, m.cpu, m.kernel, m.load_average_before, self.load_average_after)?;
        writeln!(md, "**Repetitions**: every replay and daemon run below is repeated {} times; each figure is the **median (min–max)** over all samples (repetitions × intervals), never a single run. Recordings themselves are made once per configuration (their byte counts come from that one recording).\n", plan.repeats)?;
        if plan.quick {
            writeln!(md, "**This is a `--quick` run**: short recordings (3–5 s) of 256–512 MiB guests, {} repetitions, fewer workloads, two interval lengths and two guest sizes only for `build`, short downtime sweeps. `cargo xtask bench report` (without `--quick`) runs 512 MiB–1 GiB guests, more workloads and the full sweeps with 3 repetitions.\n", plan.repeats)?;
        }
        self.write_restore(md)?;
        self.write_concurrency(md)?;
        self.write_working_sets(md)?;
        self.write_recording(md)?;
        self.write_qemu(md)?;
        write_overhead(md, self.overhead)?;
        write_guest_speed(md, self.guest_speed, self.plan.repeats)?;
        write_simulator(md, self.sim, self.analyses, self.sim_failures)?;
        Ok(())
    }

    fn write_restore(&self, md: &mut String) -> std::fmt::Result {
        writeln!(md, "## 1. Sparse vs full vs lazy restore\n")?;
        writeln!(md, "Each recording (eBPF tracer on) is replayed in its last steady intervals (up to 3, never interval 0 or the final one), in all three modes, {} times. **sparse** restores the interval's working set up front; **full** restores every non-zero page of the checkpoint and maps the rest to the shared zero page (already a stronger baseline than a whole-RAM image); **lazy** restores nothing up front and serves each first touch through userfaultfd (one miss each). Footprint is guest memory resident after the replay. The thesis' baseline was a whole-RAM image, so the saving is also given against all of guest RAM.\n", self.plan.repeats)?;
        writeln!(
            md,
            "![footprint, restore time and misses per mode](plots/restore.png)\n"
        )?;
        writeln!(md, "| recording | working set (% of RAM) | footprint MiB sparse | full | lazy | restore ms sparse | full | lazy | lazy misses |")?;
        writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|")?;
        for r in self.results {
            writeln!(
                md,
                "| {} | {:.0} ({:.2}%) | {} | {} | {} | {} | {} | {} | {} |",
                r.label,
                r.modes.working_set_pages,
                r.modes.working_set_percent,
                r.footprint_mib[0].show(1),
                r.footprint_mib[1].show(1),
                r.footprint_mib[2].show(1),
                r.restore_ms[0].show(1),
                r.restore_ms[1].show(1),
                r.restore_ms[2].show(1),
                r.lazy_misses.show(0),
            )?;
        }
        writeln!(
            md,
            "\n### Reduction by sparse restore, beside the published figures\n"
        )?;
        writeln!(md, "Published (SimuBoost sparse checkpointing, Linux kernel build): memory footprint down by up to **{PUBLISHED_FOOTPRINT_SAVED}%**, checkpoint loading time down by up to **{PUBLISHED_LOADING_SAVED}%**, both against loading the whole checkpoint (all of guest RAM).\n")?;
        writeln!(md, "| recording | footprint saved vs full (zero pages already skipped) | footprint saved vs whole-RAM image | restore time saved vs full |")?;
        writeln!(md, "|---|---:|---:|---:|")?;
        for r in self.results {
            writeln!(
                md,
                "| {} | {}% | {}% | {}% |",
                r.label,
                r.footprint_saved_vs_full.show(1),
                r.footprint_saved_vs_ram.show(1),
                r.restore_saved_vs_full.show(1),
            )?;
        }
        writeln!(md, "\nThe sparse and full replays of one sample are paired (same interval, same moment) before taking the reduction. Restore time against a whole-RAM load is not measured: no mode loads zero pages byte by byte.\n")?;
        Ok(())
    }

    fn write_concurrency(&self, md: &mut String) -> std::fmt::Result {
        let Some(c) = self.concurrency.first() else {
            return Ok(());
        };
        writeln!(md, "## 2. Concurrent replays in one memory budget\n")?;
        writeln!(md, "The thesis' claim: sparse checkpoints let more simulations run at once on one workstation. Here {} replays of different intervals of `{}` ({:?}: the latest before the final one, never interval 0, since the run's first seconds fill the guest's memory and their checkpoints hold less for a full restore than the rest of a long run) are started at once, as separate `simuboost-replay` processes, {} times per mode. Each one's **peak resident memory** is the kernel's `ru_maxrss` for that process (from `wait4`), which covers guest memory, page-store reads and the binary itself. Replays fitting a budget of {} = ⌊budget / peak⌋, once at the median peak and once at the largest peak seen (worst case).\n",
            c.intervals.len(), c.recording, c.intervals, self.plan.repeats, ram_label(c.budget_bytes))?;
        writeln!(
            md,
            "![peak memory per concurrent replay](plots/concurrency.png)\n"
        )?;
        writeln!(md, "| mode | peak RSS per replay MiB | guest footprint MiB | sum of one batch's peaks MiB | fit in {} (median peak) | fit (largest peak) |", ram_label(c.budget_bytes))?;
        writeln!(md, "|---|---:|---:|---:|---:|---:|")?;
        for m in &c.modes {
            writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                m.mode,
                m.peak_rss_mib.show(1),
                m.footprint_mib.show(1),
                m.batch_total_mib.show(1),
                m.fit_median,
                m.fit_worst
            )?;
        }
        writeln!(md, "\nSparse / full replays fitting the budget: **{:.1}×** at the median peak, {:.1}× at the largest (target ≥ {CONCURRENCY_TARGET:.0}×: {}). The ratio is bounded by what every replay needs whatever the mode (the replayer's own memory and the pages the interval writes), and by how much of the guest's memory is non-zero, since `full` skips zero pages.\n",
            c.ratio_median, c.ratio_worst, met(c.ratio_median >= CONCURRENCY_TARGET))?;
        write_concurrency_rows(md, self.concurrency, self.plan.repeats)
    }

    fn write_working_sets(&self, md: &mut String) -> std::fmt::Result {
        writeln!(md, "## 3. Working set per interval over time\n")?;
        writeln!(md, "Frames the eBPF tracer logged in each interval (the run's `intervals/` table, `traced_frames`), as a share of guest RAM; interval 0 includes boot. Intervals are wall-clock time: on a busier machine the guest gets less work done per interval and touches fewer frames, and each recording is made once, so these shares move between report runs. Published: the largest working set of one interval was **{PUBLISHED_MAX_WORKING_SET}% of guest RAM** (working-set study).\n")?;
        writeln!(md, "![working set per interval](plots/working-set.png)\n")?;
        writeln!(md, "| recording | intervals | working set % of RAM, median (min–max) over intervals 1.. | largest |")?;
        writeln!(md, "|---|---:|---:|---:|")?;
        for r in self.results {
            let shares: Vec<f64> = share_of_ram(r).into_iter().skip(1).collect();
            let s = Spread::of(shares);
            writeln!(
                md,
                "| {} | {} | {}% | {:.2}% |",
                r.label,
                r.working_set_frames.len(),
                s.show(2),
                s.max
            )?;
        }
        let above: Vec<&str> = self
            .results
            .iter()
            .filter(|r| {
                share_of_ram(r)
                    .into_iter()
                    .skip(1)
                    .any(|s| s > PUBLISHED_MAX_WORKING_SET)
            })
            .map(|r| r.label.as_str())
            .collect();
        writeln!(
            md,
            "\nAbove the published maximum in some interval after the first: {}.",
            if above.is_empty() {
                "none".to_string()
            } else {
                above.join(", ")
            }
        )?;
        writeln!(md, "`kvstore`'s working set is far larger than the published maximum by construction: it first clears and fills a table spanning most of guest memory, then serves Zipf-distributed requests over the whole table, so one interval touches a large share of all frames.\n")?;
        Ok(())
    }

    fn write_recording(&self, md: &mut String) -> std::fmt::Result {
        writeln!(
            md,
            "## 4. Checkpointing: downtime, storage, parallel replay\n"
        )?;
        writeln!(
            md,
            "![downtime vs dirty set and vs VM size](plots/downtime.png)\n"
        )?;
        writeln!(
            md,
            "### Downtime vs dirty set (stream, {} guest, dirty log, no tracer)\n",
            self.plan.dirty_set_mem
        )?;
        writeln!(
            md,
            "| interval | dirty pages/interval | mean downtime ms | max downtime ms |"
        )?;
        writeln!(md, "|---|---:|---:|---:|")?;
        for p in self.dirty_sweep {
            writeln!(
                md,
                "| {} | {} | {} | {} |",
                p.setting,
                p.dirty_pages.show(0),
                p.downtime_ms.show(2),
                p.max_downtime_ms.show(1)
            )?;
        }
        writeln!(
            md,
            "\n### Downtime vs VM size at the same dirty set (pattern on a {} arena, 200 steps per interval)\n",
            crate::bench_record::VM_SIZE_ARENA
        )?;
        writeln!(md, "{}\n", crate::bench_record::VM_SIZE_ARENA_WHY)?;
        writeln!(
            md,
            "| guest memory | dirty pages/interval | mean downtime ms | max downtime ms |"
        )?;
        writeln!(md, "|---|---:|---:|---:|")?;
        for p in self.size_sweep {
            writeln!(
                md,
                "| {} | {} | {} | {} |",
                p.setting,
                p.dirty_pages.show(0),
                p.downtime_ms.show(2),
                p.max_downtime_ms.show(1)
            )?;
        }
        if let (Some(first), Some(last)) = (self.size_sweep.first(), self.size_sweep.last()) {
            let ratio = last.downtime_ms.median / first.downtime_ms.median;
            writeln!(md, "\n{} / {} mean downtime (medians): {ratio:.2}× (target ≤ 1.5×: {}). Each row's mean is over the run's intervals, the spread over repetitions.\n", last.setting, first.setting, met(ratio <= 1.5))?;
        }
        writeln!(
            md,
            "### Storage per interval (the recordings of section 1)\n"
        )?;
        writeln!(md, "Published: dedup by content hash saved up to 42% of pages, 40–50% of the duplicates being zero pages.\n")?;
        writeln!(md, "| recording | intervals | captured pages | zero | deduplicated | stored | MiB written/interval | saved by zero+dedup |")?;
        writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|")?;
        for r in self.results {
            let saved =
                (r.zero_pages + r.dedup_pages) as f64 / r.captured_pages.max(1) as f64 * 100.0;
            writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {:.1} | {saved:.1}% |",
                r.label,
                r.intervals,
                r.captured_pages,
                r.zero_pages,
                r.dedup_pages,
                r.stored_pages,
                mib(r.bytes_written_per_interval)
            )?;
        }
        writeln!(
            md,
            "\nOne recording per row: these are counts of that recording, not repeated.\n"
        )?;
        writeln!(
            md,
            "### Parallel replay (`--all --jobs N`, sparse, {})\n",
            self.results
                .first()
                .map_or("the first recording", |r| r.label.as_str())
        )?;
        writeln!(md, "| jobs | wall s | speedup vs 1 job (medians) |")?;
        writeln!(md, "|---:|---:|---:|")?;
        for p in self.parallel {
            writeln!(
                md,
                "| {} | {} | {:.2}× |",
                p.jobs,
                p.wall_s.show(2),
                p.speedup
            )?;
        }
        writeln!(
            md,
            "\nOn {} cores the ideal speedup is {}×; jobs beyond the core count only share them.\n",
            self.machine.cores, self.machine.cores
        )?;
        Ok(())
    }

    fn write_qemu(&self, md: &mut String) -> std::fmt::Result {
        writeln!(md, "## 5. Peer: QEMU snapshot restore\n")?;
        writeln!(md, "<!-- Fed by target/bench/qemu.json (written by `cargo xtask bench qemu --json target/bench/qemu.json`). -->\n")?;
        match self.qemu {
            None => writeln!(md, "**Not run**: `target/bench/qemu.json` was absent when this report was generated. Run `cargo xtask bench qemu --json target/bench/qemu.json`, then this report, to fill this section. (Earlier manual measurement, shared notes: QEMU 10.0.2 restoring a 1 GiB guest with 540 MB non-zero took 0.14–0.85 s and 573 MiB resident eagerly; 0.05–0.10 s and 43–49 MiB with file-backed lazy RAM.)\n")?,
            Some(v) => write_qemu_rows(md, v)?,
        }
        Ok(())
    }
}

/// Renders `cargo xtask bench qemu`'s JSON (its schema: the doc comment of bench_qemu.rs): one
/// row per system and cache state, then its targets. A file of another shape is shown as is.
fn write_qemu_rows(md: &mut String, v: &Value) -> std::fmt::Result {
    let Some(rows) = v.get("rows").and_then(Value::as_array) else {
        return writeln!(
            md,
            "`target/bench/qemu.json` has no `rows`; as written:\n\n```json\n{}\n```\n",
            serde_json::to_string_pretty(v).unwrap_or_default()
        );
    };
    let text = |key: &str| {
        v.get(key).map_or_else(String::new, |x| match x {
            Value::String(s) => s.clone(),
            Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(" "),
            other => other.to_string(),
        })
    };
    let mib = |bytes: f64| bytes / f64::from(1u32 << 20);
    let nonzero = v
        .get("image_nonzero_bytes")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    writeln!(
        md,
        "{} (`-accel {}`) and simuboost restore the same guest memory: checkpoint {} of `{}`, {:.1} MiB non-zero, rebuilt into QEMU's RAM image. Median (min–max) of {} alternating repetitions, warm and cold (caches dropped before each restore). What each column means, and the runs before this one: the README's QEMU section.\n",
        text("qemu_version"),
        text("accel"),
        text("interval"),
        text("record_args"),
        mib(nonzero),
        text("repetitions"),
    )?;
    writeln!(md, "| system | cache | restore to runnable ms | process start to running ms | MiB loaded | guest MiB at resume | guest MiB after the interval |")?;
    writeln!(md, "|---|---|---:|---:|---:|---:|---:|")?;
    let stat = |row: &Value, key: &str, scale: f64| -> String {
        let get = |which: &str| row.get(key)?.get(which)?.as_f64().map(|x| x * scale);
        match (get("median"), get("min"), get("max")) {
            (Some(m), Some(lo), Some(hi)) if (hi - lo).abs() > f64::EPSILON => {
                format!("{m:.1} ({lo:.1}–{hi:.1})")
            }
            (Some(m), _, _) => format!("{m:.1}"),
            _ => "–".to_string(),
        }
    };
    let to_mib = 1.0 / f64::from(1u32 << 20);
    for row in rows {
        let field = |key: &str| row.get(key).and_then(Value::as_str).unwrap_or("?");
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            field("system"),
            field("cache"),
            stat(row, "restore_ms", 1.0),
            stat(row, "start_to_running_ms", 1.0),
            stat(row, "bytes_loaded", to_mib),
            stat(row, "guest_resident_at_resume_bytes", to_mib),
            stat(row, "guest_resident_after_interval_bytes", to_mib),
        )?;
    }
    writeln!(md)?;
    if let Some(targets) = v.get("targets").and_then(Value::as_array) {
        writeln!(md, "| target | measured | |")?;
        writeln!(md, "|---|---:|---|")?;
        for t in targets {
            let name = t.get("name").and_then(Value::as_str).unwrap_or("?");
            let goal = t.get("target").and_then(Value::as_str).unwrap_or("?");
            let measured = t
                .get("measured")
                .and_then(Value::as_f64)
                .unwrap_or(f64::NAN);
            let ok = t.get("met").and_then(Value::as_bool).unwrap_or(false);
            writeln!(md, "| {name} ({goal}) | {measured:.2}× | {} |", met(ok))?;
        }
        writeln!(md)?;
    }
    Ok(())
}

/// Section 2's summary: every configuration measured, each against the target.
fn write_concurrency_rows(
    md: &mut String,
    rows: &[Concurrency],
    repeats: usize,
) -> std::fmt::Result {
    writeln!(md, "### Every configuration measured\n")?;
    writeln!(md, "The same measurement ({repeats} batches per mode, peaks from `wait4`) for every recording the plan marks for it; all rows are shown.\n")?;
    writeln!(md, "| recording | replays at once | peak RSS MiB sparse | full | fit sparse | fit full | sparse/full (median peak) | (largest peak) | target ≥ {CONCURRENCY_TARGET:.0}× |")?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---|")?;
    for c in rows {
        let mode = |name: &str| c.modes.iter().find(|m| m.mode == name);
        let (Some(sparse), Some(full)) = (mode("sparse"), mode("full")) else {
            continue;
        };
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {:.1}× | {:.1}× | {} |",
            c.recording,
            c.intervals.len(),
            sparse.peak_rss_mib.show(1),
            full.peak_rss_mib.show(1),
            sparse.fit_median,
            full.fit_median,
            c.ratio_median,
            c.ratio_worst,
            met(c.ratio_median >= CONCURRENCY_TARGET)
        )?;
    }
    let hits = rows
        .iter()
        .filter(|c| c.ratio_median >= CONCURRENCY_TARGET)
        .count();
    writeln!(md, "\nTarget met in {hits} of {} configurations. A replay's peak is bounded below by the replayer's own resident memory and the pages the interval writes, whatever the mode; `full` is bounded above by the non-zero pages of the checkpoint, so the ratio is largest where the guest's memory is mostly non-zero and the working set small.\n", rows.len())?;
    Ok(())
}

/// `a (b–c)` of a spread, or `–` when it has no samples.
fn show_or_dash(s: &Spread, decimals: usize) -> String {
    if s.samples == 0 {
        "–".to_string()
    } else {
        s.show(decimals)
    }
}

/// Section 6: the recording overhead split and its account (bench_overhead.rs).
fn write_overhead(md: &mut String, o: &Overhead) -> std::fmt::Result {
    use crate::bench_overhead::Mode;
    writeln!(
        md,
        "## 6. Recording overhead: checkpointing, tracing, both\n"
    )?;
    writeln!(md, "The same amount of work (`--work`, so every mode does the same guest work; 1 s intervals) run {} times in each of four modes, alternating modes within each repetition: **no recording** (`--no-record`), **checkpointing only** (dirty log, `--tracer none`), **tracing only** (the eBPF tracer drained and re-armed every interval, no checkpoints: `--trace-only`, a benchmark mode; KVM's dirty logging stays enabled but is never harvested, because it is what makes KVM map 4 KiB pages: without it KVM maps 2 MiB pages and the tracer saw ~130 first touches per interval of a 256 MiB guest instead of tens of thousands) and **both** (a normal recording). Run time is the daemon's wall time; overhead is mode / no recording − 1, paired per repetition. Median (min–max) over the repetitions.\n", o.repeats)?;
    writeln!(md, "![run time per mode](plots/overhead.png)\n")?;
    writeln!(md, "| workload | no recording s | checkpointing only s | overhead | tracing only s | overhead | both s | overhead |")?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|")?;
    for w in &o.workloads {
        write!(md, "| {} | {} |", w.label, w.plain_s.show(2))?;
        for m in &w.modes {
            write!(
                md,
                " {} | {}% |",
                m.wall_s.show(2),
                show_or_dash(&m.overhead_percent, 0)
            )?;
        }
        writeln!(md)?;
    }
    let c = &o.calibration;
    writeln!(md, "\n### Where the time goes, per interval\n")?;
    writeln!(md, "**Faults** are counted, not estimated: `perf stat -e kvmmmu:kvm_mmu_spte_requested` on the daemon (all its threads); the tracepoint fires once per page fault KVM resolves in its slow path, which on this PVM host is every write-protection fault of the dirty log and every re-armed first touch (`kvm:kvm_page_fault` does not fire here). The table counts faults beyond the no-recording run's. **Cost per fault** is measured in the same run on `{}` (it writes its whole arena in sequence, little work per page): (run time − no-recording run time − time paused) / extra faults, per repetition. Measured: checkpointing {} µs, tracing {} µs, both {} µs per fault (median (min–max); extra faults per run: {:.0} / {:.0} / {:.0}). The shared machine notes give ~10–28 µs per fault for this host.\n",
        c.args.join(" "),
        c.cost_us[0].show(1), c.cost_us[1].show(1), c.cost_us[2].show(1),
        c.faults[1].median - c.faults[0].median,
        c.faults[2].median - c.faults[0].median,
        c.faults[3].median - c.faults[0].median)?;
    writeln!(md, "**Paused** is the time the guest was stopped: checkpoint downtime (harvest, copy, state; back-pressure, the wait for a free staging buffer from the writer, is part of it), or for tracing only the drain and re-arm. **Extra CPU** is the CPU time of all of the daemon's threads (perf's task-clock) beyond the no-recording run's: the vCPU's time in faults plus the writer's (hash, compress, write) and the tracer drain's work. Where it exceeds the measured overhead, the rest ran beside the vCPU on the second core, which this machine shares with other users; the writer's competition for that core is not separated from the unexplained rest. All per-interval figures are medians over the repetitions, in ms.\n")?;
    writeln!(md, "| workload | mode | intervals | measured overhead | extra faults | faults × cost | paused | of which back-pressure | unexplained | extra CPU |")?;
    writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for w in &o.workloads {
        for m in &w.modes {
            let share = if m.measured_ms.abs() > f64::EPSILON {
                format!(" ({:.0}%)", m.unexplained_ms / m.measured_ms * 100.0)
            } else {
                String::new()
            };
            writeln!(
                md,
                "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.0}{share} | {:.0} |",
                w.label,
                m.mode.name(),
                m.intervals,
                m.measured_ms,
                m.extra_faults,
                m.fault_ms,
                m.paused_ms,
                m.backpressure_ms,
                m.unexplained_ms,
                m.extra_cpu_ms
            )?;
        }
    }
    writeln!(md, "\n### Projection for a VMX host with PML\n")?;
    writeln!(md, "Assumed costs (**not measured**: this host is PVM and no VMX host is available; typical orders of magnitude for KVM on recent Intel CPUs): with Page Modification Logging the CPU logs written pages itself and exits once per 512 of them, {VMX_PML_EXIT_US} µs per exit, so the dirty log costs no fault per page; a re-armed first touch is an EPT violation resolved by the TDP MMU, {VMX_EPT_FAULT_US} µs. The pauses are kept as measured here (copies and the re-arm are memory work, not virtualization). Projected overhead = (dirty pages / 512 × {VMX_PML_EXIT_US} µs + re-armed faults × {VMX_EPT_FAULT_US} µs + paused) per interval × intervals / no-recording run time. The unexplained rest is left out: what it is has not been established.\n")?;
    writeln!(
        md,
        "| workload | mode | measured here | projected on VMX + PML |"
    )?;
    writeln!(md, "|---|---|---:|---:|")?;
    for w in &o.workloads {
        for m in &w.modes {
            writeln!(
                md,
                "| {} | {} | {:+.0}% | {:+.1}% |",
                w.label,
                m.mode.name(),
                m.overhead_percent.median,
                m.vmx_pml_percent
            )?;
        }
    }
    let worst = o
        .workloads
        .iter()
        .flat_map(|w| w.modes.iter().map(move |m| (w, m)))
        .filter(|(_, m)| m.mode == Mode::Both)
        .max_by(|a, b| {
            a.1.overhead_percent
                .median
                .total_cmp(&b.1.overhead_percent.median)
        });
    if let Some((w, m)) = worst {
        writeln!(md, "\nPublished (ANCHORS): ReVirt logs at 0–8%, DoublePlay 15–28%; SimuBoost ran a whole kernel build under simulation in 16% more time than a plain VM. The largest recording overhead here, both on, is {} at {:+.0}%; projected on VMX + PML {:+.1}%.\n", w.label, m.overhead_percent.median, m.vmx_pml_percent)?;
    }
    Ok(())
}

/// Section 7: each workload's run time in the VM against the same code run natively.
fn write_guest_speed(md: &mut String, rows: &[GuestSpeedRow], repeats: usize) -> std::fmt::Result {
    writeln!(md, "## 7. Guest speed vs native\n")?;
    writeln!(md, "`cargo xtask bench guest-speed` in this run: each workload's `--work` in a 512 MiB VM with no recording (`simuboost-daemon run --no-record`) and the same code run natively by `simuboost-hostrun` on the same inputs, {repeats} times per side, alternating which side goes first. VM/host is paired per repetition; median (min–max). The guest's ring-3 code runs natively on PVM, but every guest exit and every first touch of a page goes through the software hypervisor.\n")?;
    if let Some(first) = rows.first() {
        writeln!(md, "**Exits' time** is the run's guest exits × what one exit costs, measured in this run on `{}` ((VM − host) / exits, median over the repetitions: **{:.1} µs**; all of its gap is put down to its exits, so this is an upper bound). **Without exits** is VM/host with that time taken out of the VM's: the cost of running the guest's code in the VM rather than of leaving it (`{}` itself is ~1 by construction).\n", crate::bench::EXIT_COST_WORKLOAD.name(), first.exit_cost_us, crate::bench::EXIT_COST_WORKLOAD.name())?;
    }
    writeln!(
        md,
        "| workload | units | VM s | host s | VM/host | guest exits/s | exits' time s | VM/host without exits | same checksum |"
    )?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---|")?;
    for r in rows {
        let spread = |v: f64, range: [f64; 2]| Spread {
            median: v,
            min: range[0],
            max: range[1],
            samples: repeats,
        };
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {:.0} | {:.3} | {} | {} |",
            r.workload,
            r.units,
            spread(r.vm_seconds, r.vm_spread).show(3),
            spread(r.host_seconds, r.host_spread).show(3),
            Spread::of(r.ratios.iter().copied()).show(2),
            r.exits_per_second,
            r.exit_seconds,
            Spread::of(r.ratios_without_exits.iter().copied()).show(2),
            if r.checksums_match { "yes" } else { "**no**" }
        )?;
    }
    writeln!(md)?;
    Ok(())
}

/// SimuBoost's anchors: QEMU's functional simulation against a hardware-assisted VM.
const SIM_ANCHOR_PLAIN: f64 = 30.0;
const SIM_ANCHOR_MEMORY: f64 = 60.0;

/// Section 8: the simulator engine's speed and its slowdown against the KVM replay.
fn write_simulator(
    md: &mut String,
    sim: &[SimRow],
    analyses: &[LevelRow],
    failures: &[String],
) -> std::fmt::Result {
    writeln!(md, "## 8. Simulator vs KVM replay\n")?;
    writeln!(md, "`cargo xtask bench sim` and `bench analyses` in this run: a recording per workload (eBPF tracer on), its last steady intervals (up to 3) replayed once in KVM (full restore) and simulated (`--engine sim`); slowdown = simulated / KVM replay time of the same interval. Median (min–max) **over the intervals**, one replay each (intervals, not repetitions). Published (SimuBoost thesis): QEMU's functional simulation is ~{SIM_ANCHOR_PLAIN:.0}× slower than a hardware-assisted VM, ~{SIM_ANCHOR_MEMORY:.0}× with memory-access tracing. The KVM replay runs on PVM here (ring 0 emulated, each exit and first touch in software), so it is slower than on VMX and these ratios are smaller than they would be there.\n")?;
    writeln!(md, "| workload | instructions / interval | KVM replay ms | simulated ms | slowdown | M instr/s | vs anchor ({SIM_ANCHOR_PLAIN:.0}×) |")?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|---|")?;
    for r in sim {
        writeln!(
            md,
            "| {} | {:.0} | {:.1} | {:.1} | {}× | {} | {} |",
            r.workload,
            r.instructions,
            r.kvm_replay_ms,
            r.sim_replay_ms,
            r.slowdown_spread.show(1),
            r.mips_spread.show(0),
            if r.slowdown_spread.median <= SIM_ANCHOR_PLAIN {
                "at or below"
            } else {
                "above"
            }
        )?;
    }
    writeln!(
        md,
        "\n### Per analysis level (128 MiB guest, full restore)\n"
    )?;
    writeln!(md, "Each interval is simulated at every level in turn, beside its KVM replay, {} times (the levels' order rotated each round); median (min–max) over the intervals and rounds, each simulated replay paired with its round's KVM replay. Anchor: ~{SIM_ANCHOR_PLAIN:.0}× without instrumentation, ~{SIM_ANCHOR_MEMORY:.0}× with memory tracing (the `pages`, `cache` and `trace` levels observe memory accesses).\n", crate::bench_analyses::ROUNDS)?;
    writeln!(md, "| workload | analysis | simulated ms | vs KVM replay | vs plain simulation | M instr/s | anchor |")?;
    writeln!(md, "|---|---|---:|---:|---:|---:|---|")?;
    for r in analyses {
        let memory = ["pages", "cache", "trace", "all"]
            .iter()
            .any(|l| r.level.starts_with(l));
        let anchor = if memory {
            SIM_ANCHOR_MEMORY
        } else {
            SIM_ANCHOR_PLAIN
        };
        writeln!(
            md,
            "| {} | {} | {:.0} | {}× | {:.1}× | {} | {}× ({}) |",
            r.workload,
            r.level,
            r.sim_replay_ms,
            r.slowdown_spread.show(1),
            r.slowdown_vs_plain_sim,
            r.mips_spread.show(0),
            anchor,
            if r.slowdown_spread.median <= anchor {
                "at or below"
            } else {
                "above"
            }
        )?;
    }
    writeln!(md)?;
    if !failures.is_empty() {
        writeln!(md, "**Failed in this run** (these workloads have no row above; the run directory of a diverged replay is kept for inspection):
")?;
        for f in failures {
            // The error's first line: the rest repeats the replayer's own output.
            writeln!(md, "- {}", f.lines().next().unwrap_or_default())?;
        }
        writeln!(md)?;
    }
    Ok(())
}

/// Working set per interval as a percentage of guest RAM.
fn share_of_ram(r: &RecordingResult) -> Vec<f64> {
    r.working_set_frames
        .iter()
        .map(|&f| f as f64 * PAGE / r.mem_bytes as f64 * 100.0)
        .collect()
}

// ---- Plots ----

const MODE_COLORS: [RGBColor; 3] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
];
const LINE_COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn draw_error(path: &Path, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("cannot draw {}: {e}", path.display())
}

/// Text needs a font: the embedded DejaVu Sans, so that no system font is needed.
fn register_font() -> Result<()> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| anyhow!("the embedded DejaVu Sans font is not a valid font"))
}

/// One panel of grouped bars: one group per label, one bar per series, with min–max whiskers.
struct BarPanel<'a> {
    title: &'a str,
    y_label: &'a str,
    series: Vec<(&'a str, RGBColor, Vec<Spread>)>,
}

fn draw_bar_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    labels: &[String],
    panel: &BarPanel<'_>,
) -> Result<(), String> {
    let top = panel
        .series
        .iter()
        .flat_map(|(_, _, v)| v.iter().map(|s| s.max))
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.15;
    let n = labels.len();
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5..(n as f64 - 0.5), 0.0..top)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(2 * n + 2)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
                labels[i as usize].clone()
            } else {
                String::new()
            }
        })
        .y_desc(panel.y_label)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| e.to_string())?;
    let k = panel.series.len() as f64;
    let width = 0.8 / k;
    for (s, (name, color, values)) in panel.series.iter().enumerate() {
        let color = *color;
        let left = |g: usize| g as f64 - 0.4 + s as f64 * width;
        chart
            .draw_series(values.iter().enumerate().map(|(g, v)| {
                Rectangle::new(
                    [(left(g) + 0.01, 0.0), (left(g) + width - 0.01, v.median)],
                    color.filled(),
                )
            }))
            .map_err(|e| e.to_string())?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        chart
            .draw_series(values.iter().enumerate().map(|(g, v)| {
                let c = left(g) + width / 2.0;
                PathElement::new(vec![(c, v.min), (c, v.max)], BLACK.stroke_width(2))
            }))
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn plot_restore(path: &Path, results: &[RecordingResult]) -> Result<()> {
    register_font()?;
    let labels: Vec<String> = results.iter().map(|r| r.label.clone()).collect();
    let ram = |r: &RecordingResult| {
        let m = mib(r.mem_bytes as f64);
        Spread {
            median: m,
            min: m,
            max: m,
            samples: 1,
        }
    };
    let panels = [
        BarPanel {
            title: "Guest memory footprint after the replay (median, min-max)",
            y_label: "MiB",
            series: vec![
                (
                    "sparse",
                    MODE_COLORS[0],
                    results.iter().map(|r| r.footprint_mib[0]).collect(),
                ),
                (
                    "full (zero pages skipped)",
                    MODE_COLORS[1],
                    results.iter().map(|r| r.footprint_mib[1]).collect(),
                ),
                (
                    "lazy",
                    MODE_COLORS[2],
                    results.iter().map(|r| r.footprint_mib[2]).collect(),
                ),
                (
                    "whole guest RAM",
                    RGBColor(160, 160, 160),
                    results.iter().map(ram).collect(),
                ),
            ],
        },
        BarPanel {
            title: "Restore time (median, min-max)",
            y_label: "ms",
            series: MODES
                .iter()
                .enumerate()
                .map(|(m, name)| {
                    (
                        *name,
                        MODE_COLORS[m],
                        results.iter().map(|r| r.restore_ms[m]).collect(),
                    )
                })
                .collect(),
        },
        BarPanel {
            title: "Misses during the replay: lazy (sparse and full have none)",
            y_label: "page faults served",
            series: vec![(
                "lazy",
                MODE_COLORS[2],
                results.iter().map(|r| r.lazy_misses).collect(),
            )],
        },
    ];
    let root_area = BitMapBackend::new(path, (1400, 1500)).into_drawing_area();
    root_area.fill(&WHITE).map_err(|e| draw_error(path, e))?;
    for (area, panel) in root_area.split_evenly((3, 1)).iter().zip(&panels) {
        draw_bar_panel(area, &labels, panel).map_err(|e| draw_error(path, e))?;
    }
    root_area.present().map_err(|e| draw_error(path, e))
}

fn plot_concurrency(path: &Path, configs: &[Concurrency]) -> Result<()> {
    register_font()?;
    let modes: Vec<(&Concurrency, &ConcurrencyMode)> = configs
        .iter()
        .flat_map(|c| c.modes.iter().map(move |m| (c, m)))
        .collect();
    let labels: Vec<String> = modes
        .iter()
        .map(|(c, m)| {
            format!(
                "{}: {} (fit {} in {})",
                c.recording,
                m.mode,
                m.fit_median,
                ram_label(c.budget_bytes)
            )
        })
        .collect();
    let panel = BarPanel {
        title: "Peak resident memory per concurrent replay (median, min-max)",
        y_label: "MiB",
        series: vec![
            (
                "peak RSS (ru_maxrss)",
                MODE_COLORS[0],
                modes.iter().map(|(_, m)| m.peak_rss_mib).collect(),
            ),
            (
                "guest footprint",
                MODE_COLORS[2],
                modes.iter().map(|(_, m)| m.footprint_mib).collect(),
            ),
        ],
    };
    let width = (330 * labels.len()).max(1000) as u32;
    let root_area = BitMapBackend::new(path, (width, 500)).into_drawing_area();
    root_area.fill(&WHITE).map_err(|e| draw_error(path, e))?;
    draw_bar_panel(&root_area, &labels, &panel).map_err(|e| draw_error(path, e))?;
    root_area.present().map_err(|e| draw_error(path, e))
}

fn plot_overhead(path: &Path, o: &Overhead) -> Result<()> {
    register_font()?;
    let labels: Vec<String> = o.workloads.iter().map(|w| w.label.clone()).collect();
    let mut series = vec![(
        "no recording",
        RGBColor(160, 160, 160),
        o.workloads.iter().map(|w| w.plain_s).collect(),
    )];
    for (k, color) in MODE_COLORS.iter().enumerate() {
        let name = o
            .workloads
            .first()
            .and_then(|w| w.modes.get(k))
            .map_or("", |m| m.mode.name());
        series.push((
            name,
            *color,
            o.workloads
                .iter()
                .filter_map(|w| w.modes.get(k).map(|m| m.wall_s))
                .collect(),
        ));
    }
    let panel = BarPanel {
        title: "Run time of the same work per recording mode (median, min-max)",
        y_label: "s",
        series,
    };
    let root_area = BitMapBackend::new(path, (1200, 550)).into_drawing_area();
    root_area.fill(&WHITE).map_err(|e| draw_error(path, e))?;
    draw_bar_panel(&root_area, &labels, &panel).map_err(|e| draw_error(path, e))?;
    root_area.present().map_err(|e| draw_error(path, e))
}

fn plot_working_sets(path: &Path, results: &[RecordingResult]) -> Result<()> {
    register_font()?;
    let series: Vec<(&str, Vec<f64>)> = results
        .iter()
        .map(|r| (r.label.as_str(), share_of_ram(r)))
        .collect();
    let top = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(PUBLISHED_MAX_WORKING_SET, f64::max)
        * 1.1;
    let longest = series.iter().map(|(_, v)| v.len()).max().unwrap_or(1) as f64;
    let root_area = BitMapBackend::new(path, (1200, 700)).into_drawing_area();
    root_area.fill(&WHITE).map_err(|e| draw_error(path, e))?;
    let mut chart = ChartBuilder::on(&root_area)
        .caption(
            "Working set per interval (share of guest RAM)",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..longest, 0.0..top)
        .map_err(|e| draw_error(path, e))?;
    chart
        .configure_mesh()
        .x_desc("interval")
        .y_desc("% of guest RAM")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| draw_error(path, e))?;
    for (k, (name, values)) in series.iter().enumerate() {
        let color = LINE_COLORS[k % LINE_COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                values.iter().enumerate().map(|(i, v)| (i as f64, *v)),
                color.stroke_width(2),
            ))
            .map_err(|e| draw_error(path, e))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Circle::new((i as f64, *v), 3, color.filled())),
            )
            .map_err(|e| draw_error(path, e))?;
    }
    chart
        .draw_series(LineSeries::new(
            [
                (0.0, PUBLISHED_MAX_WORKING_SET),
                (longest, PUBLISHED_MAX_WORKING_SET),
            ],
            BLACK.stroke_width(1),
        ))
        .map_err(|e| draw_error(path, e))?
        .label("published largest interval working set (7.94%)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| draw_error(path, e))?;
    root_area.present().map_err(|e| draw_error(path, e))
}

/// One scatter panel: points with min–max whiskers in both directions, each labelled.
fn draw_scatter_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    x_label: &str,
    points: &[(String, Spread, Spread)],
) -> Result<(), String> {
    let x_top = points.iter().map(|p| p.1.max).fold(1.0, f64::max) * 1.15;
    let y_top = points.iter().map(|p| p.2.max).fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_top, 0.0..y_top)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc("mean downtime (ms)")
        .x_label_formatter(&|x| {
            format!("{x:.2}")
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string()
        })
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| e.to_string())?;
    let color = MODE_COLORS[0];
    for (label, x, y) in points {
        chart
            .draw_series([
                PathElement::new(
                    vec![(x.median, y.min), (x.median, y.max)],
                    BLACK.stroke_width(1),
                ),
                PathElement::new(
                    vec![(x.min, y.median), (x.max, y.median)],
                    BLACK.stroke_width(1),
                ),
            ])
            .map_err(|e| e.to_string())?;
        chart
            .draw_series([Circle::new((x.median, y.median), 5, color.filled())])
            .map_err(|e| e.to_string())?;
        chart
            .draw_series([Text::new(
                label.clone(),
                (x.median, y.median),
                ("sans-serif", 14),
            )])
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn plot_downtime(path: &Path, dirty: &[DowntimePoint], sizes: &[DowntimePoint]) -> Result<()> {
    register_font()?;
    let root_area = BitMapBackend::new(path, (1400, 600)).into_drawing_area();
    root_area.fill(&WHITE).map_err(|e| draw_error(path, e))?;
    let halves = root_area.split_evenly((1, 2));
    let dirty_points: Vec<(String, Spread, Spread)> = dirty
        .iter()
        .map(|p| (format!(" {}", p.setting), p.dirty_pages, p.downtime_ms))
        .collect();
    draw_scatter_panel(
        &halves[0],
        "Downtime vs dirty set (stream; label: interval)",
        "dirty pages per interval",
        &dirty_points,
    )
    .map_err(|e| draw_error(path, e))?;
    let size_points: Vec<(String, Spread, Spread)> = sizes
        .iter()
        .map(|p| {
            let gib = parse_size_gib(&p.setting);
            let x = Spread {
                median: gib,
                min: gib,
                max: gib,
                samples: p.downtime_ms.samples,
            };
            (
                format!(" {} ({:.0} dirty)", p.setting, p.dirty_pages.median),
                x,
                p.downtime_ms,
            )
        })
        .collect();
    draw_scatter_panel(
        &halves[1],
        "Downtime vs VM size (pattern, same dirty set)",
        "guest memory (GiB)",
        &size_points,
    )
    .map_err(|e| draw_error(path, e))?;
    root_area.present().map_err(|e| draw_error(path, e))
}

/// `256M` / `4G` in GiB (the sweep's own settings).
fn parse_size_gib(size: &str) -> f64 {
    let (number, unit) = size.split_at(size.len().saturating_sub(1));
    let n: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "G" => n,
        "M" => n / 1024.0,
        _ => f64::NAN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_rows_render_as_tables() {
        let v = json!({
            "accel": "kvm", "interval": 3, "repetitions": 5,
            "image_nonzero_bytes": 2.0 * 1048576.0,
            "qemu_version": "QEMU emulator version 10.0.2",
            "record_args": ["--workload", "stream"],
            "rows": [{
                "system": "qemu-eager", "cache": "warm",
                "restore_ms": {"median": 10.0, "min": 9.0, "max": 12.5},
                "start_to_running_ms": {"median": 20.0, "min": 20.0, "max": 20.0},
                "bytes_loaded": {"median": 1048576.0, "min": 1048576.0, "max": 1048576.0}
            }],
            "targets": [{"name": "warm: full / eager", "target": "<= 1.0", "measured": 1.25, "met": false}]
        });
        let mut md = String::new();
        write_qemu_rows(&mut md, &v).unwrap();
        assert!(md.contains("2.0 MiB non-zero"), "{md}");
        assert!(
            md.contains("| qemu-eager | warm | 10.0 (9.0–12.5) | 20.0 | 1.0 | – | – |"),
            "{md}"
        );
        assert!(
            md.contains("| warm: full / eager (<= 1.0) | 1.25× | not met |"),
            "{md}"
        );
        let mut other = String::new();
        write_qemu_rows(&mut other, &json!({"x": 1})).unwrap();
        assert!(other.contains("has no `rows`"), "{other}");
    }
    fn spread(median: f64, min: f64, max: f64) -> Spread {
        Spread {
            median,
            min,
            max,
            samples: 3,
        }
    }

    #[test]
    fn concurrency_rows_state_the_target_per_row() {
        let mode = |name: &'static str, peak: f64, fit: u64| ConcurrencyMode {
            mode: name,
            peak_rss_mib: spread(peak, peak - 1.0, peak + 1.0),
            footprint_mib: spread(peak, peak, peak),
            batch_total_mib: spread(peak * 6.0, peak * 6.0, peak * 6.0),
            fit_median: fit,
            fit_worst: fit,
            replays: Vec::new(),
        };
        let config = |label: &str, sparse: u64, full: u64| Concurrency {
            recording: label.to_string(),
            intervals: vec![1, 2, 3],
            budget_bytes: BUDGET_BYTES,
            ratio_median: sparse as f64 / full as f64,
            ratio_worst: sparse as f64 / full as f64,
            modes: vec![mode("sparse", 20.0, sparse), mode("full", 400.0, full)],
        };
        let mut md = String::new();
        write_concurrency_rows(
            &mut md,
            &[
                config("build 1 GiB 1s", 8, 2),
                config("compress 1 GiB 1s", 40, 4),
            ],
            3,
        )
        .unwrap();
        assert!(
            md.contains("| build 1 GiB 1s | 3 | 20.0 (19.0–21.0) | 400.0 (399.0–401.0) | 8 | 2 | 4.0× | 4.0× | not met |"),
            "{md}"
        );
        assert!(md.contains("| compress 1 GiB 1s | 3 |"), "{md}");
        assert!(md.contains("10.0× | 10.0× | met |"), "{md}");
        assert!(md.contains("Target met in 1 of 2 configurations"), "{md}");
    }

    #[test]
    fn overhead_section_accounts_per_interval() {
        use crate::bench_overhead::{Calibration, Mode, ModeAccount, WorkloadOverhead};
        let account = |mode: Mode, pct: f64| ModeAccount {
            mode,
            wall_s: spread(5.0, 4.8, 5.5),
            overhead_percent: spread(pct, pct - 5.0, pct + 5.0),
            intervals: 5.0,
            measured_ms: 300.0,
            extra_faults: 30000.0,
            fault_ms: 200.0,
            paused_ms: 80.0,
            backpressure_ms: 0.5,
            unexplained_ms: 20.0,
            extra_cpu_ms: 150.0,
            vmx_pml_percent: 9.5,
        };
        let o = Overhead {
            repeats: 3,
            calibration: Calibration {
                args: vec!["--workload".into(), "stream".into()],
                cost_us: [
                    spread(6.5, 6.0, 7.0),
                    spread(8.0, 7.5, 9.0),
                    spread(7.0, 6.8, 7.2),
                ],
                faults: [
                    spread(300.0, 300.0, 300.0),
                    spread(100300.0, 100000.0, 100500.0),
                    spread(90300.0, 90000.0, 90500.0),
                    spread(110300.0, 110000.0, 110500.0),
                ],
                samples: Vec::new(),
            },
            workloads: vec![WorkloadOverhead {
                label: "build 512M --work 1500".into(),
                plain_s: spread(4.0, 3.9, 4.2),
                modes: vec![
                    account(Mode::Checkpointing, 40.0),
                    account(Mode::Tracing, 30.0),
                    account(Mode::Both, 60.0),
                ],
                samples: Vec::new(),
            }],
        };
        let mut md = String::new();
        write_overhead(&mut md, &o).unwrap();
        assert!(md.contains("## 6. Recording overhead"), "{md}");
        assert!(
            md.contains(
                "| build 512M --work 1500 | 4.00 (3.90–4.20) | 5.00 (4.80–5.50) | 40 (35–45)% |"
            ),
            "{md}"
        );
        assert!(md.contains("checkpointing 6.5 (6.0–7.0) µs"), "{md}");
        assert!(
            md.contains("extra faults per run: 100000 / 90000 / 110000"),
            "{md}"
        );
        assert!(
            md.contains("| build 512M --work 1500 | both | 5 | 300 | 30000 | 200 | 80 | 0.5 | 20 (7%) | 150 |"),
            "{md}"
        );
        assert!(
            md.contains("| build 512M --work 1500 | both | +60% | +9.5% |"),
            "{md}"
        );
        assert!(
            md.contains("both on, is build 512M --work 1500 at +60%"),
            "{md}"
        );
    }

    #[test]
    fn guest_speed_and_simulator_sections_render() {
        let row = GuestSpeedRow {
            workload: "build",
            units: 600,
            vm_seconds: 2.5,
            host_seconds: 2.0,
            vm_spread: [2.4, 2.7],
            host_spread: [1.9, 2.2],
            ratio: 1.25,
            best_ratio: 1.26,
            guest_exits: 1000,
            exits_per_second: 400.0,
            checksums_match: true,
            ratios: vec![1.2, 1.25, 1.3],
            exit_cost_us: 25.0,
            exit_seconds: 0.025,
            ratios_without_exits: vec![1.19, 1.24, 1.29],
            times: Vec::new(),
        };
        let mut md = String::new();
        write_guest_speed(&mut md, &[row], 3).unwrap();
        assert!(
            md.contains("| build | 600 | 2.500 (2.400–2.700) | 2.000 (1.900–2.200) | 1.25 (1.20–1.30) | 400 | 0.025 | 1.24 (1.19–1.29) | yes |"),
            "{md}"
        );
        assert!(md.contains("**25.0 µs**"), "{md}");
        let sim = SimRow {
            workload: "compress".into(),
            intervals: vec![1, 2, 3],
            instructions: 5e7,
            kvm_replay_ms: 10.0,
            sim_replay_ms: 250.0,
            slowdown: 25.0,
            mips: 200.0,
            slowdown_spread: spread(25.0, 20.0, 31.0),
            mips_spread: spread(200.0, 180.0, 220.0),
            load_ms: [1.0; 3],
            footprint_mib: [1.0; 3],
            misses: [0.0; 3],
            pages_accessed: 100.0,
            tracer_recall: 1.0,
            tracer_recall_log_only: 1.0,
            tracer_precision: 1.0,
        };
        let level = LevelRow {
            workload: "compress".into(),
            level: "cache (32K:8:64)".into(),
            intervals: vec![1, 2, 3],
            instructions: 5e7,
            kvm_replay_ms: 10.0,
            sim_replay_ms: 900.0,
            slowdown_vs_kvm: 90.0,
            slowdown_vs_plain_sim: 3.6,
            mips: 55.0,
            slowdown_spread: spread(90.0, 80.0, 95.0),
            mips_spread: spread(55.0, 50.0, 60.0),
            trace_rows_per_guest_second: f64::NAN,
            trace_mb_per_guest_second: f64::NAN,
            trace_bytes_per_row: f64::NAN,
        };
        let mut md = String::new();
        let failure = "simulator, build: REPLAY DIVERGED: interval 17\nmore".to_string();
        write_simulator(&mut md, &[sim], &[level], &[failure]).unwrap();
        assert!(
            md.contains("- simulator, build: REPLAY DIVERGED: interval 17\n"),
            "{md}"
        );
        assert!(
            md.contains("| compress | 50000000 | 10.0 | 250.0 | 25.0 (20.0–31.0)× | 200 (180–220) | at or below |"),
            "{md}"
        );
        assert!(
            md.contains("| compress | cache (32K:8:64) | 900 | 90.0 (80.0–95.0)× | 3.6× | 55 (50–60) | 60× (above) |"),
            "{md}"
        );
    }
}
