//! Benchmarks: harnesses that run a figure and its baseline side by side and report the ratio.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use simuboost_abi::WorkloadId;
use simuboost_workloads::needs_disk;

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
    /// The simulator engine: simulated vs KVM replay time of the same intervals, instructions
    /// per second, sparse vs full vs lazy restore into the simulator, tracer recall/precision.
    Sim,
    /// Executors and pipelining: Slurm overhead per task vs the local executor, and
    /// `--all --follow` during the recording vs record-then-replay.
    Scale,
    /// Runs in object storage: bytes and requests a replay fetches from S3 (moto_server on
    /// 127.0.0.1) sparse vs full vs lazy, and bytes read from the local page store.
    S3,
}

pub fn run(benchmark: Benchmark, json: Option<&Path>) -> Result<()> {
    match benchmark {
        Benchmark::GuestSpeed => guest_speed(json),
        Benchmark::Record => crate::bench_record::run(json),
        Benchmark::Trace => crate::bench_record::trace(json),
        Benchmark::Replay => crate::bench_replay::run(json),
        Benchmark::Sim => crate::bench_sim::run(json),
        Benchmark::Scale => crate::bench_scale::run(json),
        Benchmark::S3 => crate::bench_s3::run(json),
    }
}

/// Guest memory of the guest-speed runs.
const MEM_BYTES: u64 = 512 << 20;
const SEED: u64 = 42;
/// Runs per side; the median is reported.
const REPEATS: usize = 3;

/// Work units per workload, chosen for runs of a few seconds.
fn bench_units(workload: WorkloadId) -> Option<u64> {
    match workload {
        WorkloadId::Kvstore => Some(300),
        WorkloadId::Build => Some(300),
        WorkloadId::Compress => Some(150),
        WorkloadId::Sort => Some(1000),
        WorkloadId::Stream => Some(1500),
        WorkloadId::Pattern => Some(20000),
        // Idle waits for the clock: its runtime is the same anywhere by construction.
        WorkloadId::Idle => None,
    }
}

#[derive(Serialize)]
struct GuestSpeedRow {
    workload: &'static str,
    units: u64,
    vm_seconds: f64,
    host_seconds: f64,
    ratio: f64,
    guest_exits: u64,
    exits_per_second: f64,
    checksums_match: bool,
}

/// What one VM run reported.
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

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn guest_speed(json: Option<&Path>) -> Result<()> {
    let scratch: PathBuf = root().join("target").join("bench").join("guest-speed");
    let mut rows = Vec::new();
    eprintln!(
        "guest-speed: {} MiB guest, seed {SEED}, median of {REPEATS} runs per side",
        MEM_BYTES >> 20
    );
    for workload in WorkloadId::ALL {
        let Some(units) = bench_units(workload) else {
            eprintln!(
                "guest-speed: {} skipped (it waits on the clock)",
                workload.name()
            );
            continue;
        };
        let dir = scratch.join(workload.name());
        let (mut vm_times, mut host_times) = (Vec::new(), Vec::new());
        let (mut vm_sum, mut host_sum) = (String::new(), String::new());
        let mut exits = 0;
        for _ in 0..REPEATS {
            if dir.exists() {
                fs::remove_dir_all(&dir)?;
            }
            fs::create_dir_all(&dir)?;
            let vm = vm_run(workload, units, &dir)?;
            let (host_seconds, checksum) = host_run(workload, units, &vm, &dir)?;
            vm_times.push(vm.seconds);
            host_times.push(host_seconds);
            exits = vm.guest_exits;
            vm_sum = vm.checksum;
            host_sum = checksum;
        }
        let (vm_seconds, host_seconds) = (median(vm_times), median(host_times));
        let row = GuestSpeedRow {
            workload: workload.name(),
            units,
            vm_seconds,
            host_seconds,
            ratio: vm_seconds / host_seconds,
            guest_exits: exits,
            exits_per_second: exits as f64 / vm_seconds,
            checksums_match: vm_sum == host_sum,
        };
        eprintln!(
            "guest-speed: {:<9} vm {:>7.3} s  host {:>7.3} s  ratio {:.3}  ({} exits, {:.0}/s, checksums {})",
            row.workload,
            row.vm_seconds,
            row.host_seconds,
            row.ratio,
            row.guest_exits,
            row.exits_per_second,
            if row.checksums_match { "match" } else { "DIFFER" }
        );
        rows.push(row);
    }
    println!("| workload | units | VM (s) | host (s) | VM/host | guest exits/s | same checksum |");
    println!("|---|---:|---:|---:|---:|---:|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.3} | {:.3} | {:.3} | {:.0} | {} |",
            r.workload,
            r.units,
            r.vm_seconds,
            r.host_seconds,
            r.ratio,
            r.exits_per_second,
            if r.checksums_match { "yes" } else { "no" }
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
