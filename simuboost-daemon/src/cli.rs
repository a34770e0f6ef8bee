//! Command-line interface.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

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
    #[arg(long, default_value = "build")]
    pub workload: String,

    /// Guest memory, e.g. 256M or 2G (binary units; a multiple of 2 MiB).
    #[arg(long, default_value = "512M", value_parser = parse_bytes)]
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
    #[arg(long, hide = true)]
    pub trace_ring_bytes: Option<u32>,

    /// Run without recording: no checkpoints, no event log.
    #[arg(long)]
    pub no_record: bool,

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
    #[arg(long)]
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
