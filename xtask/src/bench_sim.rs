//! `cargo xtask bench sim`: the simulator engine beside the KVM engine on the same intervals.
//!
//! Per workload: a run recorded with the eBPF tracer; the same steady-state intervals replayed
//! in KVM and simulated (`--engine sim`) in sparse, full and lazy mode, alternating; medians
//! over the intervals. Reported: the simulated interval's time against the KVM replay's (the
//! slowdown; SimuBoost's anchor: QEMU ~30x a hardware-assisted VM, ~60x with memory tracing),
//! instructions per second, restore (load time, footprint, misses) into the simulator, and the
//! tracer's recall and precision against the simulator's exact accessed frames.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use serde::Serialize;
use serde_json::json;

use simuboost_report::replay::ReplayReport;

use crate::bench_replay::{median, record, replay, scratch, steady_intervals};
use crate::bench_report::Spread;

/// Workloads and how they are recorded: a 256 MiB guest, intervals short enough that a
/// simulated interval takes about a second.
pub(crate) const RUNS: [(&str, &[&str]); 6] = [
    ("kvstore", &["--work", "40", "--interval-exits", "8"]),
    ("build", &["--work", "200", "--interval-exits", "40"]),
    ("compress", &["--work", "60", "--interval-exits", "12"]),
    ("sort", &["--work", "6", "--interval-exits", "5"]),
    ("stream", &["--work", "6", "--interval-exits", "1"]),
    ("pattern", &["--work", "4000", "--interval-exits", "800"]),
];

#[derive(Serialize)]
pub(crate) struct SimRow {
    pub(crate) workload: String,
    pub(crate) intervals: Vec<u64>,
    pub(crate) instructions: f64,
    pub(crate) kvm_replay_ms: f64,
    pub(crate) sim_replay_ms: f64,
    pub(crate) slowdown: f64,
    pub(crate) mips: f64,
    /// Spreads over the intervals: simulated (full) / KVM time of the same interval, and
    /// instructions per second.
    pub(crate) slowdown_spread: Spread,
    pub(crate) mips_spread: Spread,
    /// sparse, full, lazy
    pub(crate) load_ms: [f64; 3],
    pub(crate) footprint_mib: [f64; 3],
    pub(crate) misses: [f64; 3],
    pub(crate) pages_accessed: f64,
    pub(crate) tracer_recall: f64,
    pub(crate) tracer_recall_log_only: f64,
    pub(crate) tracer_precision: f64,
}

fn one(rows: &[ReplayReport], f: impl Fn(&ReplayReport) -> f64) -> f64 {
    median(rows.iter().map(f).collect())
}

/// Records each `(workload, flags)` run and replays its steady intervals in KVM and simulated;
/// the report calls this too.
pub(crate) fn sim_rows(runs: &[(&str, &[&str])]) -> Result<Vec<SimRow>> {
    let scratch = scratch()?;
    let mut rows = Vec::new();
    for &(workload, extra) in runs {
        let dir = scratch.join(format!("sim-{workload}"));
        let mut args = vec!["--workload", workload, "--mem", "256M"];
        args.extend(extra);
        let rec = record(&dir, &args)?;
        let intervals = steady_intervals(rec.intervals());
        ensure!(!intervals.is_empty(), "{workload}: too few intervals");
        let (mut kvm, mut sim) = (Vec::new(), [Vec::new(), Vec::new(), Vec::new()]);
        for &i in &intervals {
            let interval = i.to_string();
            let (r, _) = replay(&rec.dir, &["--interval", &interval, "--mode", "full"])
                .with_context(|| format!("{workload} interval {i} in KVM"))?;
            kvm.extend(r);
            for (m, mode) in ["sparse", "full", "lazy"].iter().enumerate() {
                let (r, _) = replay(
                    &rec.dir,
                    &["--interval", &interval, "--mode", mode, "--engine", "sim"],
                )
                .with_context(|| format!("{workload} interval {i} simulated ({mode})"))?;
                sim[m].extend(r);
            }
        }
        let sim_of =
            |r: &ReplayReport, f: &dyn Fn(&simuboost_report::replay::Simulation) -> f64| {
                r.simulation.as_ref().map_or(f64::NAN, f)
            };
        let instructions = one(&sim[1], |r| sim_of(r, &|s| s.instructions as f64));
        let kvm_ms = one(&kvm, |r| r.replay_ms);
        let sim_ms = one(&sim[1], |r| r.replay_ms);
        let row = SimRow {
            workload: workload.to_string(),
            intervals,
            instructions,
            kvm_replay_ms: kvm_ms,
            sim_replay_ms: sim_ms,
            slowdown: sim_ms / kvm_ms,
            mips: instructions / sim_ms / 1e3,
            // The KVM and simulated replays of one interval are paired.
            slowdown_spread: Spread::of(
                sim[1]
                    .iter()
                    .zip(&kvm)
                    .map(|(s, k)| s.replay_ms / k.replay_ms),
            ),
            mips_spread: Spread::of(
                sim[1]
                    .iter()
                    .map(|r| sim_of(r, &|s| s.instructions as f64) / r.replay_ms / 1e3),
            ),
            load_ms: [0, 1, 2].map(|m| one(&sim[m], |r| r.load_ms)),
            footprint_mib: [0, 1, 2]
                .map(|m| one(&sim[m], |r| r.footprint_bytes as f64 / (1 << 20) as f64)),
            misses: [0, 1, 2].map(|m| one(&sim[m], |r| r.misses as f64)),
            pages_accessed: one(&sim[1], |r| sim_of(r, &|s| s.pages_accessed as f64)),
            tracer_recall: one(&sim[0], |r| {
                sim_of(r, &|s| s.tracer_recall.unwrap_or(f64::NAN))
            }),
            tracer_recall_log_only: one(&sim[0], |r| {
                sim_of(r, &|s| s.tracer_recall_log_only.unwrap_or(f64::NAN))
            }),
            tracer_precision: one(&sim[0], |r| {
                sim_of(r, &|s| s.tracer_precision.unwrap_or(f64::NAN))
            }),
        };
        rows.push(row);
        rec.remove()?;
    }
    Ok(rows)
}

pub fn run(json_out: Option<&Path>) -> Result<()> {
    println!("## Simulator engine vs KVM replay (256 MiB guest, median over 3 steady intervals)\n");
    println!("| workload | instructions | KVM replay (ms) | simulated (ms) | slowdown | M instr/s | load sparse/full/lazy (ms) | footprint sparse/full/lazy (MiB) | misses sparse/full/lazy | frames accessed | recall (with vCPU frames / log only) | precision |");
    println!("|---|---:|---:|---:|---:|---:|---|---|---|---:|---|---:|");
    let rows = sim_rows(&RUNS)?;
    for row in &rows {
        println!(
                "| {} | {:.0} | {:.2} | {:.1} | {:.1}x | {:.0} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} / {:.1} | {:.0} / {:.0} / {:.0} | {:.0} | {:.4} / {:.4} | {:.4} |",
                row.workload,
                row.instructions,
                row.kvm_replay_ms,
                row.sim_replay_ms,
                row.slowdown,
                row.mips,
                row.load_ms[0],
                row.load_ms[1],
                row.load_ms[2],
                row.footprint_mib[0],
                row.footprint_mib[1],
                row.footprint_mib[2],
                row.misses[0],
                row.misses[1],
                row.misses[2],
                row.pages_accessed,
                row.tracer_recall,
                row.tracer_recall_log_only,
                row.tracer_precision
            );
    }
    println!(
        "\nTargets (issue 10): slowdown <= 20x with exact instruction counting and the exact \
         per-frame access set (the TLB-fill route; no per-access hook). Anchor (SimuBoost \
         thesis): QEMU ~30x a hardware-assisted VM, ~60x with memory tracing."
    );
    if let Some(path) = json_out {
        std::fs::write(path, serde_json::to_string_pretty(&json!({ "sim": rows }))?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
