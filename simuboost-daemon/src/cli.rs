//! Command-line interface.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use simuboost_abi::layout::MAX_MEM_BYTES;
use simuboost_abi::WorkloadId;
use simuboost_vmm::machine::min_mem_bytes;
use simuboost_vmm::vstate::memory::{MEM_ALIGN, MIN_MEM_BYTES};

/// Runs a workload in a KVM VM at hardware speed.
///
/// Without a subcommand it runs the default workload (`run` with its defaults).
#[derive(Debug, Parser)]
#[command(
    name = "simuboost-daemon",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub run: RunArgs,

    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot the guest and run a workload.
    Run(RunArgs),
    /// List the workloads, one per line.
    Workloads,
    /// Create a disk image holding a workload's input data set.
    Mkdisk(MkdiskArgs),
    /// Upload a recorded run to object storage (`s3://bucket/prefix`; endpoint and credentials
    /// from the AWS_* environment variables), its manifest last.
    Upload(UploadArgs),
}

#[derive(Debug, Args)]
pub struct UploadArgs {
    /// The run directory.
    pub run: PathBuf,
    /// Where to: `s3://bucket/prefix`.
    #[arg(value_parser = parse_s3_url)]
    pub to: String,
}

#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Workload to run (see `simuboost-daemon workloads`).
    #[arg(long, default_value = "build", value_parser = parse_workload)]
    pub workload: String,

    /// Guest memory, e.g. 256M or 2G (binary units; a multiple of 2 MiB).
    #[arg(long, default_value = "512M", value_parser = parse_guest_mem)]
    pub mem: u64,

    /// Disk image (for compress and sort a data set is generated into the run directory
    /// when this is left out).
    #[arg(long)]
    pub disk: Option<PathBuf>,

    /// Ask the guest to stop after this long, e.g. 10s or 2min.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Stop after this many units of work instead (deterministic amount of work).
    #[arg(long)]
    pub work: Option<u64>,

    /// Largest arena the workload may use, in whole MiB (e.g. 128M; default: all of the guest's
    /// free memory). Guests of different sizes then run the workload on the same memory.
    #[arg(long, value_parser = parse_arena)]
    pub arena: Option<u64>,

    /// Seed of the workload's choices and of the random device (default: random).
    #[arg(long)]
    pub seed: Option<u64>,

    /// Run directory (default: ./simuboost-runs/<timestamp>).
    #[arg(long)]
    pub out: Option<PathBuf>,

    /// Write the guest console to this file instead of standard output.
    #[arg(long)]
    pub console_log: Option<PathBuf>,

    /// Guest ELF image to boot instead of the built-in one.
    #[arg(long)]
    pub guest: Option<PathBuf>,

    /// Checkpoint interval: an interval ends at the first guest-initiated exit after this long.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,

    /// End intervals after this many guest-initiated exits instead of after --interval: a
    /// deterministic boundary, for experiments and tests that compare runs.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub interval_exits: Option<u64>,

    /// How the recorder learns which pages the guest wrote: KVM's dirty bitmap or dirty ring.
    #[arg(long, value_enum, default_value = "log")]
    pub dirty_tracking: DirtyTrackingArg,

    /// Access tracking: eBPF programs on KVM's MMU tracepoints record each interval's working
    /// set (needs root or CAP_BPF+CAP_PERFMON and tracefs), or none.
    #[arg(long, value_enum, default_value = "ebpf")]
    pub tracer: TracerArg,

    /// Size of the tracer's event ring in bytes (a power of two, at least 4096). The default
    /// holds one event for every frame of guest RAM, which the programs report at most once
    /// per interval, so it cannot overflow.
    #[arg(long, hide = true, value_parser = parse_ring_bytes)]
    pub trace_ring_bytes: Option<u32>,

    /// Run without recording: no checkpoints, no event log.
    #[arg(long)]
    pub no_record: bool,

    /// Benchmarks only: run the eBPF tracer alone (drain and re-arm at every interval), with
    /// no checkpoints (the dirty log is enabled, for 4 KiB mappings, but never harvested), to
    /// separate what tracing costs from what checkpointing costs. Nothing is recorded.
    #[arg(long, hide = true, conflicts_with_all = ["no_record", "upload", "verify_dumps"])]
    pub trace_only: bool,

    /// Debug: also store a full memory dump at every checkpoint.
    #[arg(long)]
    pub verify_dumps: bool,

    /// Upload every interval to object storage as soon as it is committed locally:
    /// `s3://bucket/prefix` (endpoint and credentials from the AWS_* environment variables).
    /// The local run is kept; a failed upload is retried and reported.
    #[arg(long, value_parser = parse_s3_url, conflicts_with = "no_record")]
    pub upload: Option<String>,

    /// Print a JSON summary on standard output (the console then goes to standard error
    /// unless --console-log is given).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct MkdiskArgs {
    /// Workload whose data set to generate (compress or sort).
    #[arg(long, value_parser = parse_workload)]
    pub workload: String,

    /// Bytes of input data, e.g. 64M.
    #[arg(long, default_value = "64M", value_parser = parse_bytes)]
    pub data: u64,

    /// Total disk size (at least the data; the rest is room for the workload's output).
    #[arg(long, value_parser = parse_bytes)]
    pub size: Option<u64>,

    /// Seed of the data set.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Path of the image to create.
    pub path: PathBuf,
}

/// `--tracer` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TracerArg {
    /// eBPF programs on KVM's MMU tracepoints.
    Ebpf,
    /// No access logs.
    None,
}

/// `--dirty-tracking` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DirtyTrackingArg {
    /// KVM_GET_DIRTY_LOG (+ KVM_CLEAR_DIRTY_LOG): a bitmap of all guest memory.
    Log,
    /// The per-vCPU dirty ring: one entry per newly dirtied page.
    Ring,
}

fn parse_s3_url(text: &str) -> Result<String, String> {
    if simuboost_format::is_remote(text) {
        Ok(text.to_string())
    } else {
        Err("expected s3://bucket/prefix".to_string())
    }
}

fn parse_bytes(text: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(text)
        .map_err(|e| format!("{e} (examples: 256M, 1G, 1048576)"))
}

/// A workload name: one of `simuboost-daemon workloads` (a usage error otherwise).
fn parse_workload(name: &str) -> Result<String, String> {
    match WorkloadId::from_name(name) {
        Some(w) => Ok(w.name().to_string()),
        None => {
            let names: Vec<&str> = WorkloadId::ALL.iter().map(|w| w.name()).collect();
            Err(format!(
                "unknown workload `{name}`; valid workloads: {}",
                names.join(", ")
            ))
        }
    }
}

/// The checks of values that depend on each other (clap checks each on its own): a failure is
/// a usage error, like a bad value.
pub fn check_values(command: &Command) -> Result<(), String> {
    match command {
        Command::Run(args) => {
            // The workload was checked by its parser.
            if let Some(workload) = WorkloadId::from_name(&args.workload) {
                let needed = min_mem_bytes(workload);
                if args.mem < needed {
                    return Err(format!(
                        "--mem {} MiB is too small: {} needs at least {} MiB; use --mem {}M or \
                         more",
                        args.mem >> 20,
                        workload.name(),
                        needed >> 20,
                        needed >> 20
                    ));
                }
                // The guest checks the upper end exactly (its free memory depends on the image).
                let smallest = simuboost_workloads::min_arena_bytes(workload);
                match args.arena {
                    Some(arena) if arena < smallest => {
                        return Err(format!(
                            "--arena {} MiB is too small: {} needs at least {} MiB",
                            arena >> 20,
                            workload.name(),
                            smallest.div_ceil(1 << 20)
                        ));
                    }
                    Some(arena) if arena >= args.mem => {
                        return Err(format!(
                            "--arena {} MiB does not fit a {} MiB guest (the image and its heap \
                             come first)",
                            arena >> 20,
                            args.mem >> 20
                        ));
                    }
                    _ => {}
                }
            }
        }
        Command::Mkdisk(args) => {
            if let Some(workload) = WorkloadId::from_name(&args.workload) {
                if !simuboost_workloads::needs_disk(workload) {
                    return Err(format!(
                        "--workload {}: it reads no data set from the disk; data sets exist for \
                         compress and sort",
                        workload.name()
                    ));
                }
            }
            if let Some(size) = args.size.filter(|&size| size < args.data) {
                return Err(format!(
                    "--size {size} is smaller than --data {}",
                    args.data
                ));
            }
        }
        Command::Workloads | Command::Upload(_) => {}
    }
    Ok(())
}

/// Guest RAM: a size that is a multiple of 2 MiB within what the VMM supports.
fn parse_guest_mem(text: &str) -> Result<u64, String> {
    let bytes = parse_bytes(text)?;
    if !bytes.is_multiple_of(MEM_ALIGN) || !(MIN_MEM_BYTES..=MAX_MEM_BYTES).contains(&bytes) {
        return Err(format!(
            "{bytes} bytes is not a multiple of 2 MiB between {} MiB and {} GiB",
            MIN_MEM_BYTES >> 20,
            MAX_MEM_BYTES >> 30
        ));
    }
    Ok(bytes)
}

/// An arena limit: whole MiB, at least 1 MiB.
fn parse_arena(text: &str) -> Result<u64, String> {
    let bytes = parse_bytes(text)?;
    if bytes == 0 || !bytes.is_multiple_of(1 << 20) || bytes >> 20 > u64::from(u32::MAX) {
        return Err(format!(
            "{bytes} bytes is not a whole number of MiB (e.g. 128M)"
        ));
    }
    Ok(bytes)
}

/// The tracer's ring size: a power of two of at least 4096 bytes.
fn parse_ring_bytes(text: &str) -> Result<u32, String> {
    let bytes: u32 = text
        .parse()
        .map_err(|e| format!("{e} (a number of bytes, e.g. 1048576)"))?;
    if !bytes.is_power_of_two() || bytes < 4096 {
        return Err(format!("{bytes} is not a power of two of at least 4096"));
    }
    Ok(bytes)
}
