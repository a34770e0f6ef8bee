//! `cargo xtask bench replay`: what sparse replay saves and costs, each figure beside its
//! baseline in the same run.
//!
//! 1. Sparse vs full vs lazy restore of the same intervals, per workload: footprint, restore
//!    and load time, misses, replay time.
//! 2. Restore throughput of the full-mode restores vs memcpy of the same bytes (into populated
//!    and into freshly allocated memory).
//! 3. Restore time of interval 1 vs the last intervals of a run of more than 200 intervals.
//! 4. Parallel replay: `--all --jobs 1` vs `--jobs 2`.
//!
//! Every replay must verify against its next checkpoint; the bench fails otherwise.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};

use simuboost_report::daemon::RunSummary;
use simuboost_report::replay::ReplayReport;

use crate::bench_record::{memcpy_gbps, record_run, recording, tail};
use crate::{binary, root};

const PAGE: u64 = 4096;
const MIB: f64 = (1u64 << 20) as f64;
const SEED: &str = "1";

/// A recorded run kept on disk for replays.
pub(crate) struct Recording {
    pub(crate) dir: PathBuf,
    pub(crate) mem_bytes: u64,
    /// Complete checkpoints (manifest): intervals `0..checkpoints - 1` can be replayed.
    checkpoints: u64,
    pub(crate) summary: RunSummary,
}

impl Recording {
    pub(crate) fn intervals(&self) -> u64 {
        self.checkpoints.saturating_sub(1)
    }

    pub(crate) fn remove(self) -> Result<()> {
        fs::remove_dir_all(&self.dir)
            .with_context(|| format!("cannot remove {}", self.dir.display()))
    }
}

pub(crate) fn scratch() -> Result<PathBuf> {
    let dir = root().join("target").join("bench").join("replay");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Records a run into `dir` (replacing it) with the eBPF tracer on, and keeps it.
pub(crate) fn record(dir: &Path, args: &[&str]) -> Result<Recording> {
    eprintln!("bench replay: recording {}", args.join(" "));
    let mut args = args.to_vec();
    args.extend(["--seed", SEED]);
    let summary = record_run(dir, &args)?;
    let manifest_path = dir.join("manifest.json");
    let manifest: Value = serde_json::from_slice(
        &fs::read(&manifest_path)
            .with_context(|| format!("cannot read {}", manifest_path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", manifest_path.display()))?;
    let checkpoints = manifest
        .get("checkpoints")
        .and_then(Value::as_u64)
        .context("the manifest has no `checkpoints`")?;
    let mem_bytes = manifest
        .pointer("/meta/mem_bytes")
        .and_then(Value::as_u64)
        .context("the manifest has no `meta.mem_bytes`")?;
    let recording = recording(&summary)?;
    ensure!(
        recording.incomplete_intervals == 0,
        "recording {} has {} intervals whose working set is incomplete (tracer drops)",
        args.join(" "),
        recording.incomplete_intervals
    );
    eprintln!(
        "bench replay:   {} intervals in {:.1} s, mean working set {:.0} pages",
        checkpoints.saturating_sub(1),
        summary.wall_seconds,
        recording.mean_working_set
    );
    Ok(Recording {
        dir: dir.to_path_buf(),
        mem_bytes,
        checkpoints,
        summary,
    })
}

fn num(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

/// Runs `simuboost-replay --run DIR ARGS --json`; returns its rows and its wall time in seconds.
/// Fails unless the process succeeded and every replay verified.
pub(crate) fn replay(run: &Path, args: &[&str]) -> Result<(Vec<ReplayReport>, f64)> {
    let start = Instant::now();
    let out = replay_command(run, args)
        .output()
        .context("cannot run simuboost-replay")?;
    let wall = start.elapsed().as_secs_f64();
    let rows = replay_rows(run, args, &out)?;
    Ok((rows, wall))
}

/// `simuboost-replay --run DIR ARGS --json`, not yet started.
pub(crate) fn replay_command(run: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(binary("simuboost-replay", true));
    cmd.arg("--run").arg(run).args(args).arg("--json");
    cmd
}

/// The rows a finished `replay_command` printed; fails unless the process succeeded and every
/// replay verified.
pub(crate) fn replay_rows(
    run: &Path,
    args: &[&str],
    out: &std::process::Output,
) -> Result<Vec<ReplayReport>> {
    let what = format!(
        "simuboost-replay --run {} {}",
        run.display(),
        args.join(" ")
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rows = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<ReplayReport>(l)
                .with_context(|| format!("{what}: unexpected output line {l:?}"))
        })
        .collect::<Result<Vec<_>>>();
    let diverged: Vec<String> = rows
        .iter()
        .flatten()
        .filter(|r| !r.verified)
        .map(|r| {
            format!(
                "interval {} ({}): {}",
                r.interval,
                r.mode.name(),
                r.divergence
                    .as_ref()
                    .map_or("no divergence reported".to_string(), ToString::to_string)
            )
        })
        .collect();
    if !diverged.is_empty()
        || out.status.code() == Some(i32::from(simuboost_report::replay::exit::DIVERGED))
    {
        bail!(
            "REPLAY DIVERGED: {what} ({}); the run is kept for inspection\n{}\n{}",
            out.status,
            diverged.join("\n"),
            tail(&out.stderr)
        );
    }
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, tail(&out.stderr));
    }
    let rows = rows?;
    ensure!(!rows.is_empty(), "{what} reported no replay");
    Ok(rows)
}

/// Median; the mean of the middle two for an even count.
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if !n.is_multiple_of(2) {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Percent saved by `new` relative to `base`.
pub(crate) fn reduction(new: f64, base: f64) -> f64 {
    (1.0 - new / base) * 100.0
}

pub(crate) fn mib(bytes: f64) -> f64 {
    bytes / MIB
}

pub(crate) fn ram_label(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

/// memcpy of `bytes` into freshly allocated memory (first touch of every page), MB/s, median
/// of 3. Each destination is larger than glibc's largest dynamic mmap threshold (32 MiB), so it
/// is always a new anonymous mapping that no earlier allocation has touched.
fn memcpy_fresh_mbps(bytes: usize) -> f64 {
    let src = vec![0x5au8; bytes];
    let alloc = bytes.max(40 << 20);
    let times = (0..3)
        .map(|_| {
            let mut dst = vec![0u8; alloc];
            let start = Instant::now();
            dst[..bytes].copy_from_slice(&src);
            std::hint::black_box(&dst);
            bytes as f64 / start.elapsed().as_secs_f64() / 1e6
        })
        .collect();
    median(times)
}

/// `/proc/stat`'s total and idle (idle + iowait) time of all CPUs, in ticks.
fn cpu_sample() -> Result<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    let line = stat.lines().next().context("/proc/stat is empty")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    ensure!(fields.len() >= 5, "unexpected /proc/stat line {line:?}");
    let total: u64 = fields.iter().sum();
    let idle = fields[3] + fields[4];
    Ok((total, idle))
}

/// Percent of all CPUs' time that was busy between two samples: shows how much else (another
/// job on this shared machine) ran during a measurement.
fn busy_percent(before: (u64, u64), after: (u64, u64)) -> f64 {
    let total = after.0.saturating_sub(before.0) as f64;
    let idle = after.1.saturating_sub(before.1) as f64;
    (1.0 - idle / total.max(1.0)) * 100.0
}

/// Up to three intervals from the steady state at the end of a run: the last three before the
/// final one (which ends wherever the guest stopped), never interval 0 (it includes boot).
/// Workloads set up their data first (kvstore clears and fills its table), so early intervals
/// are not representative.
pub(crate) fn steady_intervals(intervals: u64) -> Vec<u64> {
    let end = intervals.saturating_sub(1);
    (end.saturating_sub(3).max(1)..end).collect()
}

/// Medians over the replayed intervals of one workload, per mode.
#[derive(Serialize)]
pub(crate) struct ModeRow {
    pub(crate) workload: String,
    pub(crate) mem_bytes: u64,
    pub(crate) intervals: Vec<u64>,
    pub(crate) working_set_pages: f64,
    pub(crate) working_set_percent: f64,
    pub(crate) footprint_mib: [f64; 3],
    pub(crate) footprint_reduction_percent: f64,
    pub(crate) footprint_reduction_vs_all_ram_percent: f64,
    pub(crate) restore_ms: [f64; 3],
    pub(crate) restore_reduction_percent: f64,
    pub(crate) load_ms: [f64; 2],
    pub(crate) load_reduction_percent: f64,
    pub(crate) lazy_misses: f64,
    pub(crate) replay_ms: [f64; 3],
    /// Full-mode restores: bytes of non-zero pages copied, and pages installed.
    pub(crate) full_bytes_loaded: f64,
    pub(crate) full_pages_loaded: f64,
    pub(crate) full_zero_pages_loaded: f64,
    pub(crate) full_load_ms: f64,
    pub(crate) full_load_mbps: f64,
    pub(crate) replays: Vec<ReplayReport>,
}

pub(crate) const MODES: [&str; 3] = ["sparse", "full", "lazy"];

/// Replays the steady intervals of `rec` in every mode, `repeats` times each (alternating
/// intervals, so that a slow stretch of a shared machine is spread over them); medians over all.
pub(crate) fn sparse_full_lazy(label: &str, rec: &Recording, repeats: usize) -> Result<ModeRow> {
    let intervals = steady_intervals(rec.intervals());
    ensure!(
        !intervals.is_empty(),
        "{label}: only {} intervals recorded, too few to pick steady-state ones",
        rec.intervals()
    );
    let mut replays = Vec::new();
    for &i in intervals
        .iter()
        .cycle()
        .take(intervals.len() * repeats.max(1))
    {
        let (rows, _) = replay(
            &rec.dir,
            &["--interval", &i.to_string(), "--mode", "sparse,full,lazy"],
        )
        .with_context(|| format!("replaying {label} interval {i}"))?;
        for mode in MODES {
            ensure!(
                rows.iter()
                    .any(|r| r.mode.name() == mode && r.interval == i),
                "{label} interval {i}: no {mode} replay reported"
            );
        }
        replays.extend(rows);
    }
    let of = |mode: &str, f: fn(&ReplayReport) -> f64| -> f64 {
        median(
            replays
                .iter()
                .filter(|r| r.mode.name() == mode)
                .map(f)
                .collect(),
        )
    };
    let ws = of("sparse", |r| r.working_set_pages as f64);
    let fp = MODES.map(|m| of(m, |r| mib(r.footprint_bytes as f64)));
    let restore = MODES.map(|m| of(m, |r| r.restore_ms));
    let load = [of("sparse", |r| r.load_ms), of("full", |r| r.load_ms)];
    let replay_ms = MODES.map(|m| of(m, |r| r.replay_ms));
    let row = ModeRow {
        workload: label.to_string(),
        mem_bytes: rec.mem_bytes,
        intervals,
        working_set_pages: ws,
        working_set_percent: ws * PAGE as f64 / rec.mem_bytes as f64 * 100.0,
        footprint_mib: fp,
        footprint_reduction_percent: reduction(fp[0], fp[1]),
        footprint_reduction_vs_all_ram_percent: reduction(fp[0], mib(rec.mem_bytes as f64)),
        restore_ms: restore,
        restore_reduction_percent: reduction(restore[0], restore[1]),
        load_ms: load,
        load_reduction_percent: reduction(load[0], load[1]),
        lazy_misses: of("lazy", |r| r.misses as f64),
        replay_ms,
        full_bytes_loaded: of("full", |r| r.bytes_loaded as f64),
        full_pages_loaded: of("full", |r| r.pages_loaded as f64),
        full_zero_pages_loaded: of("full", |r| r.zero_pages_loaded as f64),
        full_load_ms: of("full", |r| r.load_ms),
        full_load_mbps: of("full", |r| r.bytes_loaded as f64 / 1e6 / (r.load_ms / 1e3)),
        replays,
    };
    eprintln!(
        "bench replay:   {label}: working set {:.0} pages, footprint {:.1}/{:.1}/{:.1} MiB, restore {:.1}/{:.1}/{:.1} ms (sparse/full/lazy)",
        row.working_set_pages, fp[0], fp[1], fp[2], restore[0], restore[1], restore[2]
    );
    Ok(row)
}

pub fn run(json_out: Option<&Path>) -> Result<()> {
    let began = Instant::now();
    let scratch = scratch()?;
    let mut report = serde_json::Map::new();

    // 1. Sparse vs full vs lazy, per workload, at 1 s intervals.
    let workloads: [(&str, &str, &[&str]); 6] = [
        ("build", "1G", &["--duration", "6s"]),
        // kvstore first clears and fills its table (most of RAM), ~8 s when recorded at 1 GiB.
        ("kvstore", "1G", &["--duration", "14s"]),
        ("compress", "1G", &["--duration", "6s"]),
        ("sort", "1G", &["--duration", "6s"]),
        ("stream", "1G", &["--duration", "6s"]),
        // pattern stops after its work; 11000 steps take about 6 s recorded.
        ("pattern", "1G", &["--work", "11000"]),
    ];
    let mut rows = Vec::new();
    for (workload, mem, extra) in workloads {
        let mut args = vec!["--workload", workload, "--mem", mem, "--interval", "1s"];
        args.extend_from_slice(extra);
        let rec = record(&scratch.join(format!("{workload}-{mem}")), &args)?;
        let label = if mem == "1G" {
            workload.to_string()
        } else {
            format!("{workload} ({})", ram_label(rec.mem_bytes))
        };
        rows.push(sparse_full_lazy(&label, &rec, 1)?);
        rec.remove()?;
    }

    println!("## 1. Sparse vs full vs lazy restore (guest RAM 1 GiB unless noted, 1 s intervals, median of the last 3 intervals before the final one)\n");
    println!(
        "| workload | working set: pages (% of RAM) | footprint MiB sparse / full / lazy | footprint saved, sparse vs full | (vs all guest RAM) | restore ms sparse / full / lazy | restore time saved, sparse vs full | load ms sparse / full | lazy misses | replay ms lazy / sparse |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.0} ({:.2}%) | {:.1} / {:.1} / {:.1} | {:.1}% | {:.1}% | {:.1} / {:.1} / {:.1} | {:.1}% | {:.1} / {:.1} | {:.0} | {:.0} / {:.0} ({:.2}x) |",
            r.workload,
            r.working_set_pages,
            r.working_set_percent,
            r.footprint_mib[0],
            r.footprint_mib[1],
            r.footprint_mib[2],
            r.footprint_reduction_percent,
            r.footprint_reduction_vs_all_ram_percent,
            r.restore_ms[0],
            r.restore_ms[1],
            r.restore_ms[2],
            r.restore_reduction_percent,
            r.load_ms[0],
            r.load_ms[1],
            r.lazy_misses,
            r.replay_ms[2],
            r.replay_ms[0],
            r.replay_ms[2] / r.replay_ms[0],
        );
    }
    println!(
        "\nFootprint is guest memory resident after the replay; `full` installs every non-zero page \
         and maps the rest to the zero page, so it too is far below guest RAM when memory is mostly zero."
    );

    println!(
        "\n### Targets (sparse vs full; published: sparse checkpointing, Linux kernel build)\n"
    );
    println!("| workload | figure | measured | published | target | |");
    println!("|---|---|---:|---:|---:|---|");
    let mut targets = Vec::new();
    for r in &rows {
        let target = match r.workload.as_str() {
            "build" => 90.0,
            w if w.starts_with("kvstore") => 95.0,
            _ => continue,
        };
        let published = |p: &'static str| if r.workload == "build" { p } else { "-" };
        for (figure, measured, reference) in [
            (
                "footprint saved",
                r.footprint_reduction_percent,
                published("up to 79%"),
            ),
            (
                "restore time saved",
                r.restore_reduction_percent,
                published("up to 89%"),
            ),
        ] {
            let met = measured >= target;
            println!(
                "| {} | {figure} | {measured:.1}% | {reference} | >= {target:.0}% | {} |",
                r.workload,
                if met { "met" } else { "not met" }
            );
            targets.push(
                json!({"workload": r.workload, "figure": figure, "measured_percent": measured,
                "target_percent": target, "met": met}),
            );
        }
    }

    // 2. Restore throughput of the full-mode restores vs memcpy of the same bytes.
    println!("\n## 2. Full restore throughput vs memcpy of the same bytes\n");
    println!("| workload | MiB copied (non-zero pages) | zero pages installed | load ms | restore MB/s | memcpy populated MB/s | memcpy fresh MB/s | restore / populated | restore / fresh |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut throughput = Vec::new();
    for r in &rows {
        let bytes = (r.full_bytes_loaded as usize).max(PAGE as usize);
        let populated = memcpy_gbps(bytes) * 1e3;
        let fresh = memcpy_fresh_mbps(bytes);
        println!(
            "| {} | {:.1} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} | {:.3} | {:.3} |",
            r.workload,
            mib(r.full_bytes_loaded),
            r.full_zero_pages_loaded,
            r.full_load_ms,
            r.full_load_mbps,
            populated,
            fresh,
            r.full_load_mbps / populated,
            r.full_load_mbps / fresh
        );
        throughput.push(json!({"workload": r.workload, "bytes": r.full_bytes_loaded,
            "zero_pages": r.full_zero_pages_loaded, "load_ms": r.full_load_ms,
            "restore_mbps": r.full_load_mbps, "memcpy_populated_mbps": populated,
            "memcpy_fresh_mbps": fresh}));
    }
    println!(
        "\nload ms covers reading and hash-checking the pages and installing them (UFFDIO_COPY for \
         non-zero, UFFDIO_ZEROPAGE for zero pages); MB/s counts the non-zero bytes only, so rows \
         that copy only a few MiB measure mostly zero-page installs."
    );
    report.insert(
        "guest_ram_bytes".into(),
        json!(rows.first().map(|r| r.mem_bytes)),
    );
    report.insert("sparse_full_lazy".into(), serde_json::to_value(&rows)?);
    report.insert("targets".into(), Value::Array(targets));
    report.insert("restore_throughput".into(), Value::Array(throughput));

    // 3. Interval 1 vs the last intervals of a long run: restoring N reads the checkpoint chain
    //    up to N, which must not make late intervals slower to restore.
    report.insert(
        "long_run".into(),
        long_run(
            &scratch,
            "pattern",
            &[
                "--work",
                "6000",
                "--interval-exits",
                &LONG_RUN_EXITS.to_string(),
            ],
        )?,
    );
    // idle's working set is the same every interval: only the length of the chain changes.
    report.insert(
        "long_run_idle".into(),
        long_run(
            &scratch,
            "idle",
            &["--duration", "6s", "--interval", "20ms"],
        )?,
    );

    // 4. Parallel replay.
    report.insert("parallel".into(), parallel(&scratch)?);

    let seconds = began.elapsed().as_secs_f64();
    eprintln!("bench replay: done in {seconds:.0} s");
    report.insert("bench_seconds".into(), json!(seconds));
    if let Some(path) = json_out {
        fs::write(path, serde_json::to_string_pretty(&Value::Object(report))?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Exits per interval of the long run.
const LONG_RUN_EXITS: u64 = 25;
const LONG_RUN_REPEATS: usize = 5;

fn long_run(scratch: &Path, workload: &str, extra: &[&str]) -> Result<Value> {
    let mut args = vec!["--workload", workload, "--mem", "256M"];
    args.extend_from_slice(extra);
    let rec = record(&scratch.join(format!("long-{workload}")), &args)?;
    ensure!(
        rec.checkpoints >= 201,
        "the long run has only {} checkpoints (201 needed)",
        rec.checkpoints
    );
    let last = rec.intervals() - 1;
    // The last interval ends at the guest's exit, usually a few exits after the last boundary;
    // the one before it is the last of the run's full length.
    let (probe, _) = replay(
        &rec.dir,
        &["--interval", &last.to_string(), "--mode", "sparse"],
    )?;
    let mut picks = vec![(1, "first")];
    let typical_exits = (rec.summary.guest_exits as f64 / rec.intervals().max(1) as f64) as u64;
    if probe[0].exits * 2 < typical_exits {
        picks.push((last - 1, "last full interval"));
        picks.push((last, "last interval, a short tail"));
    } else {
        picks.push((last, "last interval"));
    }
    let mut samples: Vec<Vec<ReplayReport>> = vec![Vec::new(); picks.len()];
    for _ in 0..LONG_RUN_REPEATS {
        for (k, (interval, _)) in picks.iter().enumerate() {
            let (rows, _) = replay(
                &rec.dir,
                &["--interval", &interval.to_string(), "--mode", "sparse"],
            )?;
            samples[k].extend(rows);
        }
    }
    println!(
        "\n## 3. Restore time early vs late in a long run ({workload}, 256 MiB, {} intervals ({}), sparse, median of {LONG_RUN_REPEATS}, alternating)\n",
        rec.intervals(),
        extra.join(" ")
    );
    println!("| interval | exits | working set pages (zero at N) | restore ms | read tables ms | load ms | restore µs per working-set page | vs interval 1 (restore) | vs interval 1 (per page) |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    let (mut first_ms, mut first_per_page) = (f64::NAN, f64::NAN);
    for ((interval, name), s) in picks.iter().zip(&samples) {
        let restore = median(s.iter().map(|r| r.restore_ms).collect());
        let load = median(s.iter().map(|r| r.load_ms).collect());
        let read = median(s.iter().map(|r| r.read_ms).collect());
        let ws = s[0].working_set_pages;
        let per_page = restore * 1e3 / ws.max(1) as f64;
        if *interval == 1 {
            (first_ms, first_per_page) = (restore, per_page);
        }
        println!(
            "| {interval} ({name}) | {} | {ws} ({}) | {restore:.2} | {read:.2} | {load:.2} | {per_page:.2} | {:.2}x | {:.2}x |",
            s[0].exits,
            s[0].zero_pages_loaded,
            restore / first_ms,
            per_page / first_per_page
        );
        rows.push(
            json!({"interval": interval, "name": name, "exits": s[0].exits,
            "working_set_pages": ws, "restore_ms": restore, "read_ms": read, "load_ms": load,
            "restore_us_per_page": per_page, "ratio": restore / first_ms,
            "ratio_per_page": per_page / first_per_page, "replays": s}),
        );
    }
    let headline = &rows[1];
    let ratio = num(headline, "ratio");
    println!(
        "\ninterval {} ({}) / interval 1 restore time: {ratio:.2}x (target <= 1.2x: {})",
        headline["interval"],
        headline["name"].as_str().unwrap_or("last"),
        if ratio <= 1.2 { "met" } else { "not met" }
    );
    println!(
        "\nload ms grows with the non-zero pages of the working set (zero pages are cheap to \
         install); read tables is the state, events, access log and the page map at N (a \
         consolidated map every 16 checkpoints plus at most 15 checkpoint tables)."
    );
    let result = json!({"checkpoints": rec.checkpoints, "intervals": rows,
        "ratio": ratio, "target": 1.2, "met": ratio <= 1.2,
        "recording": rec.summary.recording});
    rec.remove()?;
    Ok(result)
}

const PARALLEL_REPEATS: usize = 2;

fn parallel(scratch: &Path) -> Result<Value> {
    let rec = record(
        &scratch.join("parallel"),
        &[
            "--workload",
            "build",
            "--mem",
            "512M",
            "--duration",
            "8s",
            "--interval",
            "300ms",
        ],
    )?;
    if !(20..=30).contains(&rec.intervals()) {
        eprintln!(
            "bench replay: warning: the parallel run has {} intervals (20-30 intended)",
            rec.intervals()
        );
    }
    let jobs = [1usize, 2];
    let mut walls = vec![Vec::new(); jobs.len()];
    let mut busy = vec![Vec::new(); jobs.len()];
    let mut work_ms = vec![Vec::new(); jobs.len()];
    let mut replays = Vec::new();
    for _ in 0..PARALLEL_REPEATS {
        for (k, j) in jobs.iter().enumerate() {
            let before = cpu_sample()?;
            let (rows, wall) = replay(
                &rec.dir,
                &["--all", "--jobs", &j.to_string(), "--mode", "sparse"],
            )?;
            busy[k].push(busy_percent(before, cpu_sample()?));
            ensure!(
                rows.len() as u64 == rec.intervals(),
                "--all --jobs {j} replayed {} intervals of {}",
                rows.len(),
                rec.intervals()
            );
            walls[k].push(wall);
            work_ms[k].push(
                rows.iter()
                    .map(|r| r.restore_ms + r.replay_ms + r.verify_ms)
                    .sum::<f64>(),
            );
            eprintln!("bench replay:   --all --jobs {j}: {wall:.2} s");
            replays.push(json!({"jobs": j, "wall_s": wall, "rows": rows}));
        }
    }
    let recorded_s: f64 = replays[0]["rows"]
        .as_array()
        .map(|rows| rows.iter().map(|r| num(r, "recorded_ms")).sum::<f64>() / 1e3)
        .unwrap_or(f64::NAN);
    println!(
        "\n## 4. Parallel replay (build, 512 MiB, {} intervals of 300 ms, {recorded_s:.1} s recorded, sparse, median of {PARALLEL_REPEATS}, alternating)\n",
        rec.intervals()
    );
    println!("| jobs | wall s | sum of per-interval restore+replay+verify s | machine CPU busy (all cores) |");
    println!("|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for (k, j) in jobs.iter().enumerate() {
        let wall = median(walls[k].clone());
        let work = median(work_ms[k].clone()) / 1e3;
        let cpu = median(busy[k].clone());
        println!("| {j} | {wall:.2} | {work:.2} | {cpu:.0}% |");
        rows.push(
            json!({"jobs": j, "wall_s": wall, "walls": walls[k], "work_s": work,
            "cpu_busy_percent": cpu}),
        );
    }
    let speedup = num(&rows[0], "wall_s") / num(&rows[1], "wall_s");
    println!(
        "\nspeedup jobs 2 vs jobs 1: {speedup:.2}x (target >= 1.8x on 2 cores: {})",
        if speedup >= 1.8 { "met" } else { "not met" }
    );
    let result = json!({"intervals": rec.intervals(), "recorded_s": recorded_s, "rows": rows,
        "speedup": speedup, "target": 1.8, "met": speedup >= 1.8, "replays": replays});
    rec.remove()?;
    Ok(result)
}
