//! The `run`, `workloads` and `mkdisk` commands.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};

use crate::guest_image::GUEST_ELF;
use simuboost_abi::WorkloadId;
use simuboost_vmm::devices::disk::Disk;
use simuboost_vmm::machine::{min_mem_bytes, Machine, MachineConfig, MachineError, RunControl};

use crate::cli::{DirtyTrackingArg, MkdiskArgs, RunArgs, TracerArg};
use crate::record::{RecordConfig, Recorder};
use crate::trace::Tracer;
use simuboost_report::daemon::RunSummary;
use simuboost_vmm::vstate::dirty::DirtyTracking;

pub use simuboost_report::daemon::exit::{
    ERROR as EXIT_ERROR, GUEST_CRASH as EXIT_GUEST_CRASH, GUEST_FAILED as EXIT_GUEST_FAILED,
};

/// How long the guest has to exit after being asked to stop.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// How a command ended, when it did not fail outright.
pub enum Outcome {
    Success,
    GuestCrashed,
    GuestFailed,
}

impl Outcome {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Outcome::Success => ExitCode::SUCCESS,
            Outcome::GuestCrashed => ExitCode::from(EXIT_GUEST_CRASH),
            Outcome::GuestFailed => ExitCode::from(EXIT_GUEST_FAILED),
        }
    }
}

pub fn print_workloads() {
    for w in WorkloadId::ALL {
        let what = match w {
            WorkloadId::Kvstore => "hash table filled to most of RAM, Zipf-skewed gets and puts",
            WorkloadId::Build => "kernel-build-like jobs over an in-memory source tree",
            WorkloadId::Compress => "DEFLATE-compresses a data set read from the disk",
            WorkloadId::Sort => "external merge sort of records on the disk",
            WorkloadId::Stream => "sequential read-modify-write passes over all memory",
            WorkloadId::Idle => "waits on the clock, touches almost nothing",
            WorkloadId::Pattern => "touches an exact, seeded set of pages per step (for tests)",
        };
        println!(
            "{:<9} min {:>4} MiB  {}",
            w.name(),
            min_mem_bytes(w) >> 20,
            what
        );
    }
}

fn parse_workload(name: &str) -> Result<WorkloadId> {
    WorkloadId::from_name(name).with_context(|| {
        let names: Vec<&str> = WorkloadId::ALL.iter().map(|w| w.name()).collect();
        format!(
            "unknown workload `{name}`; valid workloads: {}",
            names.join(", ")
        )
    })
}

/// Bytes of physical memory on the host.
fn host_ram_bytes() -> Option<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn default_run_dir() -> PathBuf {
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace(':', "-");
    PathBuf::from("simuboost-runs").join(stamp)
}

/// Size of the data set generated for a disk workload run without --disk.
fn default_data_bytes(mem_bytes: u64) -> u64 {
    (mem_bytes / 4).clamp(4 << 20, 256 << 20)
}

/// Adds the command-line fix to the machine errors that have one (the library does not know
/// the daemon's flags).
fn with_cli_hint(e: MachineError) -> anyhow::Error {
    let hint = match &e {
        MachineError::MemoryTooSmall { needed_mib, .. } => {
            format!("use --mem {needed_mib}M or more")
        }
        MachineError::NoDataSet { workload, .. } => format!(
            "create a data set with `simuboost-daemon mkdisk --workload {workload} PATH` or leave \
             out --disk"
        ),
        _ => return e.into(),
    };
    anyhow::anyhow!("{e}; {hint}")
}

fn load_guest_image(args: &RunArgs) -> Result<Vec<u8>> {
    match &args.guest {
        None => Ok(GUEST_ELF.to_vec()),
        Some(path) => {
            fs::read(path).with_context(|| format!("cannot read guest image {}", path.display()))
        }
    }
}

/// The eBPF tracer, when the run records with one.
fn start_tracer(args: &RunArgs) -> Result<Option<Tracer>> {
    if args.no_record || !matches!(args.tracer, TracerArg::Ebpf) {
        return Ok(None);
    }
    // The command line checked a given size (a power of two of at least 4096).
    let ring_bytes = args
        .trace_ring_bytes
        .unwrap_or_else(|| crate::trace::ring_bytes_for(args.mem));
    let tracer = Tracer::start(args.mem, ring_bytes)?;
    if !args.json {
        eprintln!(
            "simuboost-daemon: tracing frame accesses with {}",
            tracer.active().join(", ")
        );
    }
    Ok(Some(tracer))
}

/// Creates the run directory (it must be new) and, unless `--no-record`, the recorder that
/// writes into it.
fn start_recorder(
    args: &RunArgs,
    run_dir: &Path,
    meta: simuboost_format::RunMeta,
    tracer: Option<Tracer>,
) -> Result<Option<Recorder>> {
    if args.no_record || args.trace_only {
        // Without a recorder the daemon still writes summary.json (and a generated disk.img)
        // into the directory: the same rule as a recording, never into one that holds files.
        if fs::read_dir(run_dir).is_ok_and(|mut entries| entries.next().is_some()) {
            bail!(
                "{}: run directory already exists and is not empty",
                run_dir.display()
            );
        }
        fs::create_dir_all(run_dir)
            .with_context(|| format!("cannot create run directory {}", run_dir.display()))?;
        return Ok(None);
    }
    Ok(Some(Recorder::start(
        run_dir,
        meta,
        RecordConfig {
            interval: args.interval,
            interval_exits: args.interval_exits,
            verify_dumps: args.verify_dumps,
            progress: !args.json && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        },
        tracer,
    )?))
}

/// The disk: `--disk`, or a data set generated into the run directory for the workloads that
/// read one.
fn prepare_disk(
    args: &RunArgs,
    workload: WorkloadId,
    run_dir: &Path,
    seed: u64,
) -> Result<Option<PathBuf>> {
    Ok(match &args.disk {
        Some(path) => Some(path.clone()),
        None if simuboost_workloads::needs_disk(workload) => {
            let path = run_dir.join("disk.img");
            let data = default_data_bytes(args.mem);
            tracing::info!(path = %path.display(), data, "generating the data set");
            Disk::create_dataset(&path, workload, data, data * 3, seed)?;
            Some(path)
        }
        None => None,
    })
}

fn open_console(args: &RunArgs) -> Result<Box<dyn Write + Send>> {
    Ok(match (&args.console_log, args.json) {
        (Some(path), _) => Box::new(io::BufWriter::new(
            File::create(path)
                .with_context(|| format!("cannot create console log {}", path.display()))?,
        )),
        (None, true) => Box::new(io::stderr()),
        (None, false) => Box::new(io::stdout()),
    })
}

/// SIGINT/SIGTERM ask the guest to stop at its next yield; a second one ends the daemon.
fn install_signal_handlers(control: &RunControl) -> Result<()> {
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, control.stop.clone())
            .context("cannot install signal handlers")?;
        signal_hook::flag::register(signal, control.stop.clone())
            .context("cannot install signal handlers")?;
    }
    Ok(())
}

pub fn run(args: &RunArgs) -> Result<Outcome> {
    let workload = parse_workload(&args.workload)?;
    if let Some(host) = host_ram_bytes() {
        if args.mem > host {
            bail!(
                "--mem {} MiB is more than this host's {} MiB of RAM",
                args.mem >> 20,
                host >> 20
            );
        }
    }
    let guest_image = load_guest_image(args)?;
    let run_dir = args.out.clone().unwrap_or_else(default_run_dir);
    let seed = args.seed.unwrap_or_else(rand::random);
    let dirty_tracking = match args.dirty_tracking {
        DirtyTrackingArg::Log => DirtyTracking::Log,
        DirtyTrackingArg::Ring => DirtyTracking::Ring,
    };
    if args.trace_only && !matches!(args.tracer, TracerArg::Ebpf) {
        bail!("--trace-only runs the eBPF tracer; it cannot be combined with --tracer none");
    }
    let tracer = start_tracer(args)?;
    // --trace-only: the tracer runs on its own, without a recorder.
    let (tracer_alone, tracer) = if args.trace_only {
        (tracer, None)
    } else {
        (None, tracer)
    };
    // Asked before the run exists, kept in it, and given to the vCPU from it: a replay on
    // another host gives the guest the same CPUID. Where KVM cannot be opened, creating the
    // machine below fails with that error, after `--out` has been checked, as it always did.
    let cpuid = simuboost_vmm::vstate::vm::host_cpuid().ok();
    let meta = simuboost_format::RunMeta {
        workload: workload.name().to_string(),
        mem_bytes: args.mem,
        seed,
        interval_ns: args.interval.as_nanos() as u64,
        dirty_tracking: dirty_tracking.name().to_string(),
        tracer: if tracer.is_some() { "ebpf" } else { "none" }.to_string(),
        created_unix_ms: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        guest_image_xxh3: format!("{:032x}", simuboost_format::page_hash(&guest_image)),
        disk_image: args.disk.as_ref().map(|p| p.display().to_string()),
        cpuid: cpuid
            .as_ref()
            .map(simuboost_vmm::persist::save_cpuid)
            .unwrap_or_default(),
    };
    let recorder = start_recorder(args, &run_dir, meta, tracer)?;
    if recorder.is_some() {
        // The run keeps the guest it booted, so that a simulator replay can symbolise it.
        simuboost_format::write_guest_image(&run_dir, &guest_image)
            .context("cannot copy the guest image into the run")?;
    }
    let live_upload = match (&args.upload, &recorder) {
        (Some(to), Some(_)) => Some(crate::upload::LiveUpload::start(&run_dir, to)?),
        _ => None,
    };
    let disk = prepare_disk(args, workload, &run_dir, seed)?;
    let control = RunControl::default();
    install_signal_handlers(&control)?;
    let mut machine = Machine::new(
        MachineConfig {
            workload,
            mem_bytes: args.mem,
            work_units: args.work.unwrap_or(0),
            // In range: the parser accepts at most u32::MAX MiB.
            arena_limit_mib: args.arena.map_or(0, |bytes| (bytes >> 20) as u32),
            seed,
            disk,
            guest_image,
            console: open_console(args)?,
            // --trace-only keeps KVM's dirty logging on (never harvested): it is what makes KVM
            // map guest memory in 4 KiB pages. Without it KVM maps 2 MiB pages and the tracer
            // sees one first touch per 2 MiB, which is not the tracing a recording does.
            dirty_tracking: (recorder.is_some() || args.trace_only).then_some(dirty_tracking),
            record_events: recorder.is_some(),
            cpuid,
        },
        control,
    )
    .map_err(with_cli_hint)?;
    let deadline = if args.work.is_some() {
        None
    } else {
        Some(args.duration)
    };
    let mut summary = RunSummary {
        workload: workload.name().to_string(),
        mem_bytes: args.mem,
        arena_bytes: machine.arena_bytes(),
        arena_start: simuboost_abi::arena_start(machine.boot_config().free_start),
        disk_data_bytes: machine.boot_config().disk_data_bytes,
        work_units: args.work,
        seed,
        run_dir: run_dir.clone(),
        ..RunSummary::default()
    };
    tracing::info!(
        workload = workload.name(),
        mem = args.mem,
        seed,
        "starting the guest"
    );
    let (result, recorder) = match recorder {
        Some(mut recorder) => (
            machine.run(deadline, STOP_GRACE, &mut recorder),
            Some(recorder),
        ),
        None => match tracer_alone {
            Some(tracer) => {
                let mut observer =
                    crate::trace_only::TraceOnly::new(tracer, args.interval, args.interval_exits);
                let result = machine.run(deadline, STOP_GRACE, &mut observer);
                summary.tracing = Some(observer.finish());
                (result, None)
            }
            None => (
                machine.run(
                    deadline,
                    STOP_GRACE,
                    &mut simuboost_vmm::machine::NoObserver,
                ),
                None,
            ),
        },
    };
    if let Some(recorder) = recorder {
        let (status, reason) = match &result {
            Ok(report) => (report.exit_status, "guest exited"),
            Err(MachineError::GuestCrash(_)) => (None, "guest crashed"),
            Err(_) => (None, "recording failed"),
        };
        match recorder.finish(status, reason) {
            Ok(recording) => summary.recording = Some(recording),
            // The first error is the one to report.
            Err(e) if result.is_ok() => return Err(e.into()),
            Err(e) => tracing::warn!(error = %e, "finishing the recording failed too"),
        }
    }
    // The recording is finished (or failed) locally: upload what is left.
    let uploaded = live_upload.map(crate::upload::LiveUpload::finish);
    let outcome = match &result {
        Ok(report) => {
            summary.exit_status = report.exit_status;
            summary.guest_exits = report.guest_exits;
            summary.wall_seconds = report.wall.as_secs_f64();
            summary.disk_read_bytes = report.device.disk_read_bytes;
            summary.disk_write_bytes = report.device.disk_write_bytes;
            // The live device never pauses the machine, so the guest always exited.
            match report.exit_status {
                Some(0) => Outcome::Success,
                Some(status) => {
                    eprintln!("simuboost-daemon: the guest exited with status {status}");
                    Outcome::GuestFailed
                }
                None => {
                    eprintln!("simuboost-daemon: the guest was paused before it exited");
                    Outcome::GuestFailed
                }
            }
        }
        Err(MachineError::GuestCrash(crash)) => {
            eprintln!("simuboost-daemon: {crash}");
            summary.crashed = true;
            summary.guest_exits = crash.exits;
            Outcome::GuestCrashed
        }
        Err(_) => {
            return result
                .map(|_| Outcome::Success)
                .map_err(anyhow::Error::from)
        }
    };
    let json = serde_json::to_string_pretty(&summary).context("cannot encode the summary")?;
    fs::write(run_dir.join("summary.json"), &json)
        .with_context(|| format!("cannot write {}", run_dir.join("summary.json").display()))?;
    if args.json {
        println!("{json}");
    } else if result.is_ok() {
        print_summary(&summary);
    }
    if let Some(Err(e)) = uploaded {
        return Err(e);
    }
    Ok(outcome)
}

/// The summary for people, on stderr.
fn print_summary(summary: &RunSummary) {
    eprintln!(
        "simuboost-daemon: {} finished with status {} after {:.2} s, {} guest exits ({:.1} µs \
         of guest time between exits); run directory {}",
        summary.workload,
        summary.exit_status.unwrap_or_default(),
        summary.wall_seconds,
        summary.guest_exits,
        summary.wall_seconds * 1e6 / summary.guest_exits.max(1) as f64,
        summary.run_dir.display()
    );
    if let Some(r) = &summary.recording {
        eprintln!(
            "simuboost-daemon: recorded {} intervals ({} checkpoints): {:.0} dirty pages and {} \
             per interval, downtime {:.1} ms mean / {:.1} ms max, {:.1} MiB written \
             ({:.0}% of captured pages were zero or duplicates)",
            r.intervals,
            r.checkpoints,
            r.mean_dirty_pages,
            if r.mean_working_set > 0.0 {
                format!("a working set of {:.0} frames", r.mean_working_set)
            } else {
                "no access log".to_string()
            },
            r.mean_downtime_ms,
            r.max_downtime_ms,
            r.bytes_written as f64 / (1 << 20) as f64,
            (r.zero_pages + r.dedup_pages) as f64 * 100.0 / r.captured_pages.max(1) as f64
        );
    }
}

pub fn mkdisk(args: &MkdiskArgs) -> Result<()> {
    let workload = parse_workload(&args.workload)?;
    if !simuboost_workloads::needs_disk(workload) {
        bail!(
            "{} does not read a data set from the disk; data sets exist for compress and sort",
            workload.name()
        );
    }
    let size = args.size.unwrap_or(args.data * 3);
    if size < args.data {
        bail!("--size {} is smaller than --data {}", size, args.data);
    }
    Disk::create_dataset(&args.path, workload, args.data, size, args.seed)?;
    eprintln!(
        "created {} ({} MiB of {} data, {} MiB in all)",
        args.path.display(),
        args.data >> 20,
        workload.name(),
        size >> 20
    );
    Ok(())
}
