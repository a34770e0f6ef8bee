//! The recording overhead split of `bench report` (issue #15 item 5): the same work with no
//! recording, checkpointing only (dirty log), tracing only (the eBPF tracer, re-armed every
//! interval, `simuboost-daemon run --trace-only`) and both, and an account of where the time
//! goes: the faults KVM handled (counted by `perf stat` on the tracepoint
//! `kvmmmu:kvm_mmu_spte_requested`, which fires once per page fault KVM resolves in its slow
//! path) times a per-fault cost calibrated on `stream` in the same run, plus the time the
//! guest was paused (checkpoint downtime, or drain and re-arm), against the measured overhead.
//! What the model does not explain is reported, not hidden.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::bench_record::{record_run_under, scratch_run};
use crate::bench_report::Spread;

/// Assumed costs on a hardware-virtualized (VMX) host with Page Modification Logging. Nothing
/// here was measured (this host is PVM, no VMX host is available): they are the usual orders of
/// magnitude for KVM on recent Intel CPUs, and the projection is only as good as they are.
/// With PML the CPU logs written pages itself and exits once per 512 logged pages.
pub(crate) const VMX_PML_EXIT_US: f64 = 3.0;
pub(crate) const PML_ENTRIES: f64 = 512.0;
/// An EPT violation resolved by KVM's TDP MMU (the re-armed first touch the tracer sees).
pub(crate) const VMX_EPT_FAULT_US: f64 = 1.5;

/// The tracepoint that counts page faults KVM resolved in its slow path (on PVM: every
/// write-protection fault of the dirty log and every re-armed first touch; MACHINE notes).
const FAULT_EVENT: &str = "kvmmmu:kvm_mmu_spte_requested";

#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum Mode {
    Plain,
    Checkpointing,
    Tracing,
    Both,
}

pub(crate) const MODES: [Mode; 4] = [Mode::Plain, Mode::Checkpointing, Mode::Tracing, Mode::Both];

impl Mode {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Plain => "no recording",
            Mode::Checkpointing => "checkpointing only (dirty log)",
            Mode::Tracing => "tracing only (eBPF, re-armed)",
            Mode::Both => "both",
        }
    }

    fn flags(self) -> &'static [&'static str] {
        match self {
            Mode::Plain => &["--no-record"],
            Mode::Checkpointing => &["--tracer", "none"],
            Mode::Tracing => &["--trace-only", "--tracer", "ebpf"],
            Mode::Both => &["--tracer", "ebpf"],
        }
    }
}

/// One daemon run under `perf stat`.
#[derive(Clone, Copy, Serialize)]
pub(crate) struct Sample {
    wall_s: f64,
    /// Page faults KVM resolved in its slow path (all of the daemon's threads).
    faults: f64,
    /// CPU time of all of the daemon's threads (perf's task-clock), seconds.
    cpu_s: f64,
    /// Time the guest was paused by the recorder or tracer, milliseconds.
    paused_ms: f64,
    /// Of that, time waiting for the writer (back-pressure), milliseconds.
    backpressure_ms: f64,
    /// Dirty pages per interval (checkpointing) or traced frames per interval (tracing).
    dirty_per_interval: f64,
    traced_per_interval: f64,
    intervals: f64,
}

/// perf stat's CSV (`-x,`): the value of each event by name.
fn perf_value(csv: &str, event: &str) -> Option<f64> {
    csv.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let fields: Vec<&str> = l.split(',').collect();
        (fields.get(2) == Some(&event)).then(|| fields[0].parse().ok())?
    })
}

fn measured_run(dir: &Path, args: &[&str], mode: Mode) -> Result<Sample> {
    let perf_out = dir.with_extension("perf.csv");
    let events = format!("{FAULT_EVENT},task-clock");
    let perf_out_arg = perf_out.to_string_lossy();
    let wrapper = [
        "perf",
        "stat",
        "-x",
        ",",
        "-e",
        &events,
        "-o",
        &perf_out_arg,
        "--",
    ];
    let args: Vec<&str> = args.iter().chain(mode.flags()).copied().collect();
    let summary = record_run_under(&wrapper, dir, &args)?;
    let csv = fs::read_to_string(&perf_out)
        .with_context(|| format!("cannot read {}", perf_out.display()))?;
    fs::remove_file(&perf_out)?;
    fs::remove_dir_all(dir)?;
    let faults = perf_value(&csv, FAULT_EVENT)
        .with_context(|| format!("perf stat counted no {FAULT_EVENT}:\n{csv}"))?;
    // perf reports task-clock in milliseconds.
    let cpu_ms = perf_value(&csv, "task-clock")
        .with_context(|| format!("perf stat counted no task-clock:\n{csv}"))?;
    let mut sample = Sample {
        wall_s: summary.wall_seconds,
        faults,
        cpu_s: cpu_ms / 1e3,
        paused_ms: 0.0,
        backpressure_ms: 0.0,
        dirty_per_interval: 0.0,
        traced_per_interval: 0.0,
        intervals: 0.0,
    };
    if let Some(r) = &summary.recording {
        sample.paused_ms = r.mean_downtime_ms * r.checkpoints as f64;
        sample.backpressure_ms = r.backpressure_ms;
        sample.dirty_per_interval = r.mean_dirty_pages;
        sample.traced_per_interval = r.mean_working_set;
        sample.intervals = r.intervals as f64;
    }
    if let Some(t) = &summary.tracing {
        sample.paused_ms = t.paused_ms;
        sample.traced_per_interval = t.mean_working_set;
        sample.intervals = t.intervals as f64;
    }
    Ok(sample)
}

/// Runs `base` in every mode, `repeats` times, alternating modes within a repetition so that a
/// slow stretch of the shared machine does not always hit the same mode.
fn sweep(base: &[&str], repeats: usize) -> Result<Vec<[Sample; 4]>> {
    let dir = scratch_run("overhead")?;
    let mut out = Vec::new();
    for _ in 0..repeats {
        let mut row = Vec::new();
        for mode in MODES {
            let s = measured_run(&dir, base, mode)?;
            eprintln!(
                "bench report: {} [{}]: {:.2} s, {:.0} faults, {:.0} ms paused",
                base.join(" "),
                mode.name(),
                s.wall_s,
                s.faults,
                s.paused_ms
            );
            row.push(s);
        }
        let row: [Sample; 4] = row
            .try_into()
            .map_err(|_| anyhow::anyhow!("one sample per mode"))?;
        out.push(row);
    }
    Ok(out)
}

/// Seconds per extra fault in `mode`, per repetition: the run's time beyond the plain run's,
/// less the time the guest was paused, over the faults beyond the plain run's.
fn fault_cost_us(samples: &[[Sample; 4]], m: usize) -> Spread {
    Spread::of(samples.iter().map(|s| {
        let extra = s[m].wall_s - s[0].wall_s - s[m].paused_ms / 1e3;
        extra / (s[m].faults - s[0].faults) * 1e6
    }))
}

/// The calibration: `stream` writes its whole arena sequentially, with little work per page, so
/// its overhead is almost all faults and pauses.
#[derive(Serialize)]
pub(crate) struct Calibration {
    pub(crate) args: Vec<String>,
    /// Cost per extra fault in µs, per recording mode (checkpointing, tracing, both).
    pub(crate) cost_us: [Spread; 3],
    pub(crate) faults: [Spread; 4],
    pub(crate) samples: Vec<[Sample; 4]>,
}

/// One recording mode of one workload, against the plain runs of the same repetitions.
#[derive(Serialize)]
pub(crate) struct ModeAccount {
    pub(crate) mode: Mode,
    pub(crate) wall_s: Spread,
    /// (mode / plain − 1) × 100, paired per repetition.
    pub(crate) overhead_percent: Spread,
    pub(crate) intervals: f64,
    /// Per interval, milliseconds (medians over repetitions).
    pub(crate) measured_ms: f64,
    pub(crate) extra_faults: f64,
    pub(crate) fault_ms: f64,
    pub(crate) paused_ms: f64,
    pub(crate) backpressure_ms: f64,
    pub(crate) unexplained_ms: f64,
    /// CPU time of all of the daemon's threads beyond the plain run's, per interval: the
    /// vCPU's time in faults plus the writer's and the drain's work. (CPU time minus wall time
    /// does not isolate the writer: on this shared host the vCPU thread's own CPU time is
    /// below its wall time, waiting for a core.)
    pub(crate) extra_cpu_ms: f64,
    /// Projected overhead on VMX with PML, percent of the plain run.
    pub(crate) vmx_pml_percent: f64,
}

#[derive(Serialize)]
pub(crate) struct WorkloadOverhead {
    pub(crate) label: String,
    pub(crate) plain_s: Spread,
    pub(crate) modes: Vec<ModeAccount>,
    pub(crate) samples: Vec<[Sample; 4]>,
}

#[derive(Serialize)]
pub(crate) struct Overhead {
    pub(crate) repeats: usize,
    pub(crate) calibration: Calibration,
    pub(crate) workloads: Vec<WorkloadOverhead>,
}

fn account(samples: &[[Sample; 4]], m: usize, cost_us: f64, mode: Mode) -> ModeAccount {
    let med = |f: &dyn Fn(&[Sample; 4]) -> f64| Spread::of(samples.iter().map(f)).median;
    let intervals = med(&|s| s[m].intervals).max(1.0);
    let per_interval = |v: f64| v / intervals;
    let measured_ms = per_interval(med(&|s| (s[m].wall_s - s[0].wall_s) * 1e3));
    let extra_faults = per_interval(med(&|s| s[m].faults - s[0].faults));
    let fault_ms = extra_faults * cost_us / 1e3;
    let paused_ms = per_interval(med(&|s| s[m].paused_ms));
    let plain_ms = med(&|s| s[0].wall_s) * 1e3;
    // VMX with PML: the dirty log costs one exit per 512 written pages instead of a fault per
    // page; a re-armed first touch is still a fault (an EPT violation). Pauses as measured here.
    let vmx_fault_ms = match mode {
        Mode::Checkpointing => {
            med(&|s| s[m].dirty_per_interval) / PML_ENTRIES * VMX_PML_EXIT_US / 1e3
        }
        _ => {
            extra_faults * VMX_EPT_FAULT_US / 1e3
                + if mode == Mode::Both {
                    med(&|s| s[m].dirty_per_interval) / PML_ENTRIES * VMX_PML_EXIT_US / 1e3
                } else {
                    0.0
                }
        }
    };
    ModeAccount {
        mode,
        wall_s: Spread::of(samples.iter().map(|s| s[m].wall_s)),
        overhead_percent: Spread::of(
            samples
                .iter()
                .map(|s| (s[m].wall_s / s[0].wall_s - 1.0) * 100.0),
        ),
        intervals,
        measured_ms,
        extra_faults,
        fault_ms,
        paused_ms,
        backpressure_ms: per_interval(med(&|s| s[m].backpressure_ms)),
        unexplained_ms: measured_ms - fault_ms - paused_ms,
        extra_cpu_ms: per_interval(med(&|s| (s[m].cpu_s - s[0].cpu_s) * 1e3)),
        vmx_pml_percent: (vmx_fault_ms + paused_ms) * intervals / plain_ms * 100.0,
    }
}

/// What the report measures: the calibration run's arguments and each workload's.
pub(crate) struct OverheadPlan {
    pub(crate) calibration: &'static [&'static str],
    pub(crate) workloads: Vec<(String, Vec<&'static str>)>,
    pub(crate) repeats: usize,
}

pub(crate) fn measure(plan: &OverheadPlan) -> Result<Overhead> {
    let mut calibration_args = plan.calibration.to_vec();
    calibration_args.extend(["--seed", "1"]);
    let samples = sweep(&calibration_args, plan.repeats)?;
    let cost_us = [1, 2, 3].map(|m| fault_cost_us(&samples, m));
    let calibration = Calibration {
        args: plan.calibration.iter().map(|s| s.to_string()).collect(),
        cost_us,
        faults: [0, 1, 2, 3].map(|m| Spread::of(samples.iter().map(|s| s[m].faults))),
        samples,
    };
    let mut workloads = Vec::new();
    for (label, args) in &plan.workloads {
        let mut args = args.clone();
        args.extend(["--seed", "1"]);
        let samples = sweep(&args, plan.repeats)?;
        let modes = [Mode::Checkpointing, Mode::Tracing, Mode::Both]
            .iter()
            .enumerate()
            .map(|(k, &mode)| account(&samples, k + 1, calibration.cost_us[k].median, mode))
            .collect();
        workloads.push(WorkloadOverhead {
            label: label.clone(),
            plain_s: Spread::of(samples.iter().map(|s| s[0].wall_s)),
            modes,
            samples,
        });
    }
    Ok(Overhead {
        repeats: plan.repeats,
        calibration,
        workloads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_csv_values_by_event() {
        let csv = "# started on Mon\n\n178857,,kvmmmu:kvm_mmu_spte_requested,7262324422,100.00,,\n7262.32,msec,task-clock,7262324422,100.00,1.271,CPUs utilized\n";
        assert_eq!(perf_value(csv, FAULT_EVENT), Some(178857.0));
        assert_eq!(perf_value(csv, "task-clock"), Some(7262.32));
        assert_eq!(perf_value(csv, "cycles"), None);
    }
}
