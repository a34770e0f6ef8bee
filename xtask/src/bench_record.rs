//! `cargo xtask bench record`: what continuous checkpointing costs, each figure beside its
//! baseline in the same run.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use simuboost_report::daemon::{RecordSummary, RunSummary};

use crate::{binary, root};

/// Records `simuboost-daemon run ARGS --json` into `dir` (replacing it) and returns the
/// daemon's summary; the run directory stays for the caller.
pub(crate) fn record_run(dir: &Path, args: &[&str]) -> Result<RunSummary> {
    record_run_under(&[], dir, args)
}

/// [`record_run`] with the daemon started by `wrapper` (`perf stat ... --`, say; empty: none).
pub(crate) fn record_run_under(wrapper: &[&str], dir: &Path, args: &[&str]) -> Result<RunSummary> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    let daemon = binary("simuboost-daemon", true);
    let mut command = match wrapper.split_first() {
        Some((program, wrapper_args)) => {
            let mut command = Command::new(program);
            command.args(wrapper_args).arg(&daemon);
            command
        }
        None => Command::new(&daemon),
    };
    let under = match wrapper.first() {
        Some(program) => format!(" under {program} (is it installed?)"),
        None => String::new(),
    };
    let out = command
        .arg("run")
        .args(args)
        .args(["--json", "--console-log", "/dev/null"])
        .arg("--out")
        .arg(dir)
        .output()
        .with_context(|| format!("cannot run simuboost-daemon{under}"))?;
    if !out.status.success() {
        bail!(
            "{}simuboost-daemon run {} failed ({}): {}",
            wrapper.first().map_or(String::new(), |p| format!("{p} ")),
            args.join(" "),
            out.status,
            tail(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("the daemon's --json output is not JSON")
}

/// The recorder's totals in a daemon summary.
pub(crate) fn recording(summary: &RunSummary) -> Result<&RecordSummary> {
    summary
        .recording
        .as_ref()
        .context("the daemon's summary has no recording (was it run with --no-record?)")
}

/// The last lines of a child's standard error, for error messages.
pub(crate) fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// One daemon run; returns its `--json` summary and removes the run directory.
/// The arena of `pattern` in the downtime-vs-VM-size runs: the same in every guest size.
pub(crate) const VM_SIZE_ARENA: &str = "128M";

/// Why the VM-size runs limit the arena.
pub(crate) const VM_SIZE_ARENA_WHY: &str = "Every guest runs `pattern` on the same arena \
    (`--arena`). Over all free memory the dirty set grew with the guest: `pattern` draws its pages \
    uniformly over the arena, and every page-table frame its touches mark (accessed and dirty \
    bits) is dirty too, one per 2 MiB touched. Measured 2026-12-06 that way: 3,169 dirty frames \
    per interval in a 256 MiB guest and 4,997 in a 4 GiB one, downtime 2.14 and 5.71 ms (2.67×), \
    most of it the copy of the extra frames.";

pub(crate) fn daemon_run(dir: &Path, args: &[&str]) -> Result<RunSummary> {
    // Checkpointing alone unless the caller asks for the tracer (see `trace`).
    let tracer: &[&str] = if args.contains(&"--tracer") {
        &[]
    } else {
        &["--tracer", "none"]
    };
    let args: Vec<&str> = args.iter().chain(tracer).copied().collect();
    let summary = record_run(dir, &args)?;
    // Keep the disk tidy: the figures are in the summary.
    fs::remove_dir_all(dir)?;
    Ok(summary)
}

/// The run directory a benchmark's daemon runs use (each run replaces it).
pub(crate) fn scratch_run(benchmark: &str) -> Result<PathBuf> {
    let scratch = root().join("target").join("bench").join(benchmark);
    fs::create_dir_all(&scratch)?;
    Ok(scratch.join("run"))
}

fn write_report(json_out: Option<&Path>, report: serde_json::Map<String, Value>) -> Result<()> {
    if let Some(path) = json_out {
        fs::write(path, serde_json::to_string_pretty(&Value::Object(report))?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn num(v: &Value, path: &[&str]) -> f64 {
    path.iter()
        .try_fold(v, |v, k| v.get(*k))
        .and_then(Value::as_f64)
        .unwrap_or(f64::NAN)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// memcpy of `bytes` between two already-populated buffers, GB/s (best of 5).
pub(crate) fn memcpy_gbps(bytes: usize) -> f64 {
    let src = vec![0x5au8; bytes];
    let mut dst = vec![0u8; bytes];
    (0..5)
        .map(|_| {
            let start = Instant::now();
            dst.copy_from_slice(&src);
            std::hint::black_box(&dst);
            bytes as f64 / start.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

pub fn run(json_out: Option<&Path>) -> Result<()> {
    let dir = scratch_run("record")?;
    let mut report = serde_json::Map::new();

    // 1. Downtime vs dirty-set size, dirty log vs dirty ring: stream dirties memory at a steady
    //    rate, so longer intervals mean larger dirty sets.
    println!("## Downtime vs dirty set (stream, 1 GiB guest)\n");
    println!("| tracking | interval | dirty pages/interval | mean downtime (ms) | copy GB/s | memcpy GB/s | copy/memcpy |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for tracking in ["log", "ring"] {
        for interval in ["50ms", "100ms", "200ms", "400ms", "800ms"] {
            let s = daemon_run(
                &dir,
                &[
                    "--workload",
                    "stream",
                    "--mem",
                    "1G",
                    "--duration",
                    "5s",
                    "--seed",
                    "1",
                    "--interval",
                    interval,
                    "--dirty-tracking",
                    tracking,
                ],
            )?;
            let dirty = recording(&s)?.mean_dirty_pages as f64;
            let downtime = recording(&s)?.mean_downtime_ms as f64;
            let copy = recording(&s)?.copy_gbps as f64;
            let memcpy = memcpy_gbps((dirty.max(1.0) as usize) * 4096);
            println!(
                "| {tracking} | {interval} | {dirty:.0} | {downtime:.2} | {copy:.2} | {memcpy:.2} | {:.2} |",
                copy / memcpy
            );
            rows.push(
                json!({"tracking": tracking, "interval": interval, "dirty_pages": dirty,
                "downtime_ms": downtime, "copy_gbps": copy, "memcpy_gbps": memcpy}),
            );
        }
    }
    report.insert("dirty_set_sweep".into(), Value::Array(rows));

    // 2. Downtime vs VM size at the same dirty set (VM_SIZE_ARENA_WHY): pattern writes 16 pages
    //    per step on the same arena in every guest, and an interval of 200 exits is 200 steps
    //    whatever the VM's size.
    println!(
        "\n## Downtime vs VM size at the same dirty set (pattern on a {VM_SIZE_ARENA} arena, 200 steps per interval)\n\n{VM_SIZE_ARENA_WHY}\n"
    );
    println!("| guest memory | dirty pages/interval | mean downtime (ms) | max downtime (ms) |");
    println!("|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for mem in ["256M", "512M", "1G", "2G", "4G"] {
        let s = daemon_run(
            &dir,
            &[
                "--workload",
                "pattern",
                "--mem",
                mem,
                "--arena",
                VM_SIZE_ARENA,
                "--work",
                "8000",
                "--seed",
                "1",
                "--interval-exits",
                "200",
            ],
        )?;
        let dirty = recording(&s)?.mean_dirty_pages as f64;
        let downtime = recording(&s)?.mean_downtime_ms as f64;
        let max = recording(&s)?.max_downtime_ms as f64;
        println!("| {mem} | {dirty:.0} | {downtime:.3} | {max:.3} |");
        rows.push(json!({"mem": mem, "dirty_pages": dirty, "downtime_ms": downtime, "max_downtime_ms": max}));
    }
    let first = num(&rows[0], &["downtime_ms"]);
    let last = num(&rows[rows.len() - 1], &["downtime_ms"]);
    println!(
        "\n4 GiB / 256 MiB downtime: {:.2}x (target <= 1.5x)",
        last / first
    );
    report.insert("vm_size_sweep".into(), Value::Array(rows));

    // 3. Recording overhead at 1 s intervals: the same work with and without checkpointing.
    println!("\n## Recording overhead (1 s intervals, 512 MiB guest, median of 3)\n");
    println!("| workload | units | plain (s) | recorded (s) | overhead |");
    println!("|---|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for (workload, units) in [("kvstore", "1500"), ("build", "1500")] {
        let (mut plain, mut recorded) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let base = [
                "--workload",
                workload,
                "--mem",
                "512M",
                "--work",
                units,
                "--seed",
                "1",
                "--interval",
                "1s",
            ];
            let mut args = base.to_vec();
            args.push("--no-record");
            plain.push(daemon_run(&dir, &args)?.wall_seconds);
            recorded.push(daemon_run(&dir, &base)?.wall_seconds);
        }
        let (p, r) = (median(plain), median(recorded));
        println!(
            "| {workload} | {units} | {p:.3} | {r:.3} | {:+.1}% |",
            (r / p - 1.0) * 100.0
        );
        rows.push(json!({"workload": workload, "plain_s": p, "recorded_s": r}));
    }
    report.insert("overhead".into(), Value::Array(rows));

    // 4. Storage per interval and what zero elision and dedup saved.
    println!("\n## Storage per interval (1 s intervals, 512 MiB guest, 8 s)\n");
    println!("| workload | intervals | captured pages | zero | deduplicated | stored | disk-read pages (new) | MiB written/interval | saved by zero+dedup |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for workload in ["kvstore", "build", "compress", "sort", "stream", "idle"] {
        let s = daemon_run(
            &dir,
            &[
                "--workload",
                workload,
                "--mem",
                "512M",
                "--duration",
                "8s",
                "--seed",
                "1",
            ],
        )?;
        let r = recording(&s)?;
        let saved = (r.zero_pages + r.dedup_pages) as f64 / r.captured_pages.max(1) as f64;
        println!(
            "| {workload} | {} | {} | {} | {} | {} | {} ({}) | {:.1} | {:.1}% |",
            r.intervals,
            r.captured_pages,
            r.zero_pages,
            r.dedup_pages,
            r.stored_pages,
            r.event_pages,
            r.event_stored_pages,
            r.bytes_written as f64 / r.intervals.max(1) as f64 / (1 << 20) as f64,
            saved * 100.0
        );
        rows.push(json!({"workload": workload, "recording": r}));
    }
    report.insert("storage".into(), Value::Array(rows));

    write_report(json_out, report)
}

/// `cargo xtask bench trace`: what the eBPF tracer (with per-interval re-arming) costs.
pub fn trace(json_out: Option<&Path>) -> Result<()> {
    let dir = scratch_run("trace")?;
    let mut report = serde_json::Map::new();

    println!("## Tracing overhead (recording at 1 s intervals, 512 MiB guest, median of 3)\n");
    println!("| workload | units | no tracer (s) | eBPF tracer (s) | slowdown | downtime without / with (ms) | working set (frames/interval) |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for (workload, units) in [("kvstore", "1500"), ("build", "1500"), ("compress", "600")] {
        let (mut off, mut on, mut down_off, mut down_on, mut ws) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..3 {
            for (tracer, times, downs) in [
                ("none", &mut off, &mut down_off),
                ("ebpf", &mut on, &mut down_on),
            ] {
                let s = daemon_run(
                    &dir,
                    &[
                        "--workload",
                        workload,
                        "--mem",
                        "512M",
                        "--work",
                        units,
                        "--seed",
                        "1",
                        "--interval",
                        "1s",
                        "--tracer",
                        tracer,
                    ],
                )?;
                times.push(s.wall_seconds);
                downs.push(recording(&s)?.mean_downtime_ms as f64);
                if tracer == "ebpf" {
                    ws.push(recording(&s)?.mean_working_set as f64);
                }
            }
        }
        let (a, b) = (median(off), median(on));
        println!(
            "| {workload} | {units} | {a:.3} | {b:.3} | {:+.1}% | {:.1} / {:.1} | {:.0} |",
            (b / a - 1.0) * 100.0,
            median(down_off),
            median(down_on),
            median(ws)
        );
        rows.push(json!({"workload": workload, "no_tracer_s": a, "tracer_s": b}));
    }
    report.insert("overhead".into(), Value::Array(rows));

    // Event rate: pattern touches 32 frames per ~25 µs step, the densest access stream of the
    // workloads; stream touches whole memory sequentially.
    println!("\n## Events the tracer sustains (ring sized to guest RAM: one event per frame)\n");
    println!("| workload | interval | traced frames/interval | frames/s | intervals with drops |");
    println!("|---|---|---:|---:|---:|");
    let mut rows = Vec::new();
    for (workload, mem, interval) in [
        ("pattern", "256M", "100ms"),
        ("stream", "1G", "100ms"),
        ("stream", "1G", "1s"),
    ] {
        let s = daemon_run(
            &dir,
            &[
                "--workload",
                workload,
                "--mem",
                mem,
                "--duration",
                "4s",
                "--seed",
                "1",
                "--interval",
                interval,
                "--tracer",
                "ebpf",
            ],
        )?;
        let ws = recording(&s)?.mean_working_set as f64;
        let intervals = recording(&s)?.intervals as f64;
        let wall = s.wall_seconds;
        let incomplete = recording(&s)?.incomplete_intervals as f64;
        println!(
            "| {workload} {mem} | {interval} | {ws:.0} | {:.0} | {incomplete:.0} of {intervals:.0} |",
            ws * intervals / wall
        );
        rows.push(
            json!({"workload": workload, "interval": interval, "working_set": ws,
            "frames_per_s": ws * intervals / wall, "incomplete": incomplete}),
        );
    }
    report.insert("event_rate".into(), Value::Array(rows));
    write_report(json_out, report)
}
