//! Benchmarks: harnesses that run a figure and its baseline side by side and report the ratio.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use simuboost_abi::WorkloadId;
use simuboost_workloads::needs_disk;

use crate::bench_replay::median;
use crate::{binary, root, run_command};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Benchmark {
    /// Each workload's runtime in the VM vs the same code run natively on the host.
    GuestSpeed,
    /// Continuous checkpointing: downtime vs dirty set and VM size, copy throughput vs memcpy,
    /// recording overhead, storage per interval (zero elision, dedup), dirty log vs ring.
    Record,
    /// Access tracing: runtime and downtime with the eBPF tracer vs without, events per second.
    Trace,
    /// Sparse replay: sparse vs full vs lazy restore (footprint, restore time), restore
    /// throughput vs memcpy, restore time early vs late in a long run, parallel replay speedup.
    Replay,
    /// Restore time of interval 1 vs a late interval of a long run (#15), the page map read
    /// in part vs whole, with the tables' and pages.bin's bytes read.
    RestorePosition,
    /// The simulator engine: simulated vs KVM replay time of the same intervals, instructions
    /// per second, sparse vs full vs lazy restore into the simulator, tracer recall/precision.
    Sim,
    /// The simulator's analyses: simulated replay time per analysis level (none, blocks,
    /// pages, cache, trace, trace with a limit, all) vs the KVM replay; trace size per second.
    Analyses,
    /// Executors and pipelining: Slurm overhead per task vs the local executor, and
    /// `--all --follow` during the recording vs record-then-replay.
    Scale,
    /// Runs in object storage: bytes and requests a replay fetches from S3 (moto_server on
    /// 127.0.0.1) sparse vs full vs lazy, and bytes read from the local page store.
    S3,
    /// A real peer: QEMU's snapshot restore (eager `migrate` to a file, and lazy file-backed RAM
    /// with `x-ignore-shared`) vs simuboost's full and sparse restore of the same memory.
    Qemu,
    /// The main figures with repetitions, medians and spreads, written to docs/BENCHMARKS.md
    /// with PNG plots in docs/plots/ (`--quick`: small sizes, a few minutes).
    Report,
}

pub fn run(benchmark: Benchmark, json: Option<&Path>, quick: bool) -> Result<()> {
    if quick && !matches!(benchmark, Benchmark::Report) {
        bail!("--quick applies to `bench report` only");
    }
    match benchmark {
        Benchmark::GuestSpeed => guest_speed(json),
        Benchmark::Record => crate::bench_record::run(json),
        Benchmark::Trace => crate::bench_record::trace(json),
        Benchmark::Replay => crate::bench_replay::run(json),
        Benchmark::RestorePosition => crate::bench_position::run(json),
        Benchmark::Sim => crate::bench_sim::run(json),
        Benchmark::Analyses => crate::bench_analyses::run(json),
        Benchmark::Scale => crate::bench_scale::run(json),
        Benchmark::S3 => crate::bench_s3::run(json),
        Benchmark::Qemu => crate::bench_qemu::run(json),
        Benchmark::Report => crate::bench_report::run(quick, json),
    }
}

/// Guest memory of the guest-speed runs.
const MEM_BYTES: u64 = 512 << 20;
const SEED: u64 = 42;
/// Runs per side, alternating which side goes first; the median and the spread are reported.
const REPEATS: usize = 5;

/// Work units per workload, chosen for runs of a few seconds on each side (runs of a fraction
/// of a second gave ratios that moved by ±30% from one try to the next).
pub(crate) fn bench_units(workload: WorkloadId) -> Option<u64> {
    match workload {
        WorkloadId::Kvstore => Some(900),
        WorkloadId::Build => Some(600),
        WorkloadId::Compress => Some(600),
        WorkloadId::Sort => Some(4000),
        WorkloadId::Stream => Some(3000),
        WorkloadId::Pattern => Some(80000),
        // Idle waits for the clock: its runtime is the same anywhere by construction.
        WorkloadId::Idle => None,
    }
}

#[derive(Serialize)]
pub(crate) struct GuestSpeedRow {
    pub(crate) workload: &'static str,
    pub(crate) units: u64,
    pub(crate) vm_seconds: f64,
    pub(crate) host_seconds: f64,
    /// Fastest and slowest run of each side.
    pub(crate) vm_spread: [f64; 2],
    pub(crate) host_spread: [f64; 2],
    pub(crate) ratio: f64,
    /// Ratio of the fastest VM run to the fastest host run: noise on a shared machine only
    /// ever slows a run down.
    pub(crate) best_ratio: f64,
    pub(crate) guest_exits: u64,
    pub(crate) exits_per_second: f64,
    pub(crate) checksums_match: bool,
    /// VM/host per repetition (each pair run back to back).
    pub(crate) ratios: Vec<f64>,
    /// What one guest exit costs the VM, in µs, measured in the same run on `pattern` (see
    /// [`EXIT_COST_WORKLOAD`]); the same in every row.
    pub(crate) exit_cost_us: f64,
    /// The row's exits at that cost.
    pub(crate) exit_seconds: f64,
    /// VM/host per repetition with the exits' time taken out of the VM's: what is left is
    /// the cost of running the guest's code in the VM, not of leaving it.
    pub(crate) ratios_without_exits: Vec<f64>,
    /// Times per repetition, VM and host (pairs).
    #[serde(skip)]
    pub(crate) times: Vec<(f64, f64)>,
}

/// The workload that measures what an exit costs: `pattern` yields after every ~20 µs step
/// (it is a test workload), so ~90 % of its time in the VM is exits. Its cost per exit is
/// (VM − host) / exits, per repetition, median: all of its gap is put down to its exits, so
/// the figure is an upper bound.
pub(crate) const EXIT_COST_WORKLOAD: WorkloadId = WorkloadId::Pattern;

/// What one VM run reported.
#[derive(Clone)]
struct VmRun {
    seconds: f64,
    arena_bytes: u64,
    disk_data_bytes: u64,
    guest_exits: u64,
    checksum: String,
}

fn vm_run(workload: WorkloadId, units: u64, dir: &Path) -> Result<VmRun> {
    let console = dir.join("console.log");
    let out = Command::new(binary("simuboost-daemon", true))
        // Guest speed alone: no checkpoints, no tracer.
        .args([
            "run",
            "--workload",
            workload.name(),
            "--json",
            "--no-record",
        ])
        .arg("--mem")
        .arg(format!("{}M", MEM_BYTES >> 20))
        .arg("--work")
        .arg(units.to_string())
        .arg("--seed")
        .arg(SEED.to_string())
        .arg("--console-log")
        .arg(&console)
        .arg("--out")
        .arg(dir)
        .output()
        .context("cannot run simuboost-daemon")?;
    if !out.status.success() {
        bail!(
            "simuboost-daemon failed for {}: {}",
            workload.name(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let summary: simuboost_report::daemon::RunSummary = serde_json::from_slice(&out.stdout)
        .context("the daemon's --json output is not its summary")?;
    let console_text = fs::read_to_string(&console).context("cannot read the console log")?;
    Ok(VmRun {
        seconds: summary.wall_seconds,
        arena_bytes: summary.arena_bytes,
        disk_data_bytes: summary.disk_data_bytes,
        guest_exits: summary.guest_exits,
        checksum: result_checksum(&console_text).unwrap_or_default(),
    })
}

/// The checksum in the guest's `result:` line.
fn result_checksum(console: &str) -> Option<String> {
    let line = console.lines().find(|l| l.starts_with("result:"))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("checksum="))
        .map(str::to_string)
}

/// Runs the workload natively with `simuboost-hostrun` on a copy of the VM run's initial disk.
fn host_run(workload: WorkloadId, units: u64, vm: &VmRun, dir: &Path) -> Result<(f64, String)> {
    let mut cmd = Command::new(binary("simuboost-hostrun", true));
    cmd.args(["--workload", workload.name()])
        .arg("--work")
        .arg(units.to_string())
        .arg("--seed")
        .arg(SEED.to_string())
        .arg("--arena-bytes")
        .arg(vm.arena_bytes.to_string());
    if needs_disk(workload) {
        // The daemon generated disk.img from the same seed; regenerate an untouched one.
        let disk = dir.join("host-disk.img");
        let data = vm.disk_data_bytes.to_string();
        run_command(
            Command::new(binary("simuboost-daemon", true))
                .args(["mkdisk", "--workload", workload.name(), "--data", &data])
                .arg("--seed")
                .arg(SEED.to_string())
                .arg(&disk),
        )?;
        cmd.arg("--disk").arg(&disk);
    }
    let out = cmd.output().context("cannot run simuboost-hostrun")?;
    if !out.status.success() {
        bail!(
            "simuboost-hostrun failed for {}: {}",
            workload.name(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let result: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("simuboost-hostrun's output is not JSON")?;
    let seconds = result
        .get("seconds")
        .and_then(serde_json::Value::as_f64)
        .context("simuboost-hostrun reported no time")?;
    let checksum = result
        .get("checksum")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_string();
    Ok((seconds, checksum))
}

/// VM vs host runs of each `(workload, units)`, `repeats` times per side, alternating; the report
/// calls this too.
pub(crate) fn guest_speed_rows(
    workloads: &[(WorkloadId, u64)],
    repeats: usize,
) -> Result<Vec<GuestSpeedRow>> {
    let scratch: PathBuf = root().join("target").join("bench").join("guest-speed");
    let mut rows: Vec<GuestSpeedRow> = Vec::new();
    // Every table accounts for the exits, so the workload that measures their cost always runs.
    let mut workloads = workloads.to_vec();
    if !workloads.iter().any(|&(w, _)| w == EXIT_COST_WORKLOAD) {
        let units = bench_units(EXIT_COST_WORKLOAD).context("the exit-cost workload has units")?;
        workloads.push((EXIT_COST_WORKLOAD, units));
    }
    eprintln!(
        "guest-speed: {} MiB guest, seed {SEED}, median of {repeats} runs per side, alternating",
        MEM_BYTES >> 20
    );
    for &(workload, units) in &workloads {
        let dir = scratch.join(workload.name());
        let (mut vm_times, mut host_times) = (Vec::new(), Vec::new());
        let (mut vm_sum, mut host_sum) = (String::new(), String::new());
        let mut exits = 0;
        // The host run needs the VM run's arena size (and disk), so the first repeat runs the
        // VM first; after that the order alternates, so that a slow stretch of a shared
        // machine does not always hit the same side.
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir_all(&dir)?;
        let first = vm_run(workload, units, &dir)?;
        for repeat in 0..repeats {
            let vm_first = repeat % 2 == 1;
            let vm = if vm_first {
                Some(vm_run(workload, units, &dir.join(format!("vm-{repeat}")))?)
            } else {
                None
            };
            let (host_seconds, checksum) = host_run(workload, units, &first, &dir)?;
            let vm = match vm {
                Some(vm) => vm,
                None if repeat == 0 => first.clone(),
                None => vm_run(workload, units, &dir.join(format!("vm-{repeat}")))?,
            };
            vm_times.push(vm.seconds);
            host_times.push(host_seconds);
            exits = vm.guest_exits;
            vm_sum = vm.checksum;
            host_sum = checksum;
        }
        let spread = |v: &[f64]| {
            [
                v.iter().copied().fold(f64::INFINITY, f64::min),
                v.iter().copied().fold(0.0, f64::max),
            ]
        };
        let (vm_spread, host_spread) = (spread(&vm_times), spread(&host_times));
        let times: Vec<(f64, f64)> = vm_times
            .iter()
            .copied()
            .zip(host_times.iter().copied())
            .collect();
        let ratios = times.iter().map(|(vm, host)| vm / host).collect();
        let (vm_seconds, host_seconds) = (median(vm_times), median(host_times));
        let row = GuestSpeedRow {
            workload: workload.name(),
            units,
            vm_seconds,
            host_seconds,
            vm_spread,
            host_spread,
            ratio: vm_seconds / host_seconds,
            best_ratio: vm_spread[0] / host_spread[0],
            guest_exits: exits,
            exits_per_second: exits as f64 / vm_seconds,
            checksums_match: vm_sum == host_sum,
            ratios,
            exit_cost_us: 0.0,
            exit_seconds: 0.0,
            ratios_without_exits: Vec::new(),
            times,
        };
        // The runs' directories (guest disks, summaries) are not needed past this point.
        fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        eprintln!(
            "guest-speed: {:<9} vm {:>7.3} s ({:.3}-{:.3})  host {:>7.3} s ({:.3}-{:.3})  ratio {:.3} (best {:.3})  ({} exits, {:.0}/s, checksums {})",
            row.workload,
            row.vm_seconds,
            row.vm_spread[0],
            row.vm_spread[1],
            row.host_seconds,
            row.host_spread[0],
            row.host_spread[1],
            row.ratio,
            row.best_ratio,
            row.guest_exits,
            row.exits_per_second,
            if row.checksums_match { "match" } else { "DIFFER" }
        );
        rows.push(row);
    }
    account_for_exits(&mut rows)?;
    Ok(rows)
}

/// Fills in each row's exit cost, exit time and VM/host without the exits, from the
/// [`EXIT_COST_WORKLOAD`] row's repetitions.
fn account_for_exits(rows: &mut [GuestSpeedRow]) -> Result<()> {
    let probe = rows
        .iter()
        .find(|r| r.workload == EXIT_COST_WORKLOAD.name())
        .context("the exit-cost workload was not measured")?;
    let exits = probe.guest_exits.max(1) as f64;
    let exit_cost = median(
        probe
            .times
            .iter()
            .map(|(vm, host)| (vm - host) / exits)
            .collect(),
    );
    for row in rows.iter_mut() {
        row.exit_cost_us = exit_cost * 1e6;
        row.exit_seconds = row.guest_exits as f64 * exit_cost;
        row.ratios_without_exits = row
            .times
            .iter()
            .map(|(vm, host)| (vm - row.exit_seconds) / host)
            .collect();
    }
    eprintln!(
        "guest-speed: one exit costs {:.1} µs ({} in this run)",
        exit_cost * 1e6,
        EXIT_COST_WORKLOAD.name()
    );
    Ok(())
}

fn guest_speed(json: Option<&Path>) -> Result<()> {
    let mut workloads = Vec::new();
    for workload in WorkloadId::ALL {
        match bench_units(workload) {
            Some(units) => workloads.push((workload, units)),
            None => eprintln!(
                "guest-speed: {} skipped (it waits on the clock)",
                workload.name()
            ),
        }
    }
    let rows = guest_speed_rows(&workloads, REPEATS)?;
    println!(
        "| workload | units | VM (s), median (min-max) | host (s), median (min-max) | VM/host | fastest/fastest | guest exits/s | exits' time (s) | VM/host without exits | same checksum |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.3} ({:.3}-{:.3}) | {:.3} ({:.3}-{:.3}) | {:.3} | {:.3} | {:.0} | {:.3} | {:.3} | {} |",
            r.workload,
            r.units,
            r.vm_seconds,
            r.vm_spread[0],
            r.vm_spread[1],
            r.host_seconds,
            r.host_spread[0],
            r.host_spread[1],
            r.ratio,
            r.best_ratio,
            r.exits_per_second,
            r.exit_seconds,
            median(r.ratios_without_exits.clone()),
            if r.checksums_match { "yes" } else { "no" }
        );
    }
    if let Some(r) = rows.first() {
        println!(
            "\nOne exit: {:.1} µs, from `{}` in this run ((VM − host) / exits, median over the repetitions).",
            r.exit_cost_us,
            EXIT_COST_WORKLOAD.name()
        );
    }
    if let Some(path) = json {
        fs::write(path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if rows.iter().any(|r| !r.checksums_match) {
        bail!("a workload computed a different checksum in the VM than on the host");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(workload: WorkloadId, exits: u64, times: &[(f64, f64)]) -> GuestSpeedRow {
        GuestSpeedRow {
            workload: workload.name(),
            units: 1,
            vm_seconds: 0.0,
            host_seconds: 0.0,
            vm_spread: [0.0; 2],
            host_spread: [0.0; 2],
            ratio: 0.0,
            best_ratio: 0.0,
            guest_exits: exits,
            exits_per_second: 0.0,
            checksums_match: true,
            ratios: Vec::new(),
            exit_cost_us: 0.0,
            exit_seconds: 0.0,
            ratios_without_exits: Vec::new(),
            times: times.to_vec(),
        }
    }

    /// The exit cost is the probe's (VM − host) / exits, median over the repetitions, and
    /// every row's exits at that cost come out of its VM time.
    #[test]
    fn exits_are_accounted_at_the_probes_cost() {
        let mut rows = vec![
            row(WorkloadId::Sort, 10_000, &[(2.0, 1.5), (2.2, 1.6)]),
            // 100 000 exits: 20, 25 and 30 µs each.
            row(
                EXIT_COST_WORKLOAD,
                100_000,
                &[(2.2, 0.2), (2.7, 0.2), (3.2, 0.2)],
            ),
        ];
        account_for_exits(&mut rows).unwrap();
        assert!((rows[0].exit_cost_us - 25.0).abs() < 1e-9);
        assert!((rows[0].exit_seconds - 0.25).abs() < 1e-9);
        let expected = [(2.0 - 0.25) / 1.5, (2.2 - 0.25) / 1.6];
        for (got, want) in rows[0].ratios_without_exits.iter().zip(expected) {
            assert!((got - want).abs() < 1e-9, "{got} vs {want}");
        }
        assert!(account_for_exits(&mut rows[..1]).is_err());
    }
}
