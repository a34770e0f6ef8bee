//! `simuboost-daemon`'s summary and exit statuses.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Exit statuses of `simuboost-daemon`.
pub mod exit {
    /// The run ended as asked (duration, work done, or a signal).
    pub const OK: u8 = 0;
    /// An error: bad input, KVM or the tracer unavailable, I/O.
    pub const ERROR: u8 = 1;
    /// A usage error (clap's).
    pub const USAGE: u8 = 2;
    /// The guest crashed (the exception and registers are printed).
    pub const GUEST_CRASH: u8 = 3;
    /// The guest exited with a failure status.
    pub const GUEST_FAILED: u8 = 4;
}

/// The summary of one `simuboost-daemon run`: printed with `--json`, and written as
/// `summary.json` into the run directory.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RunSummary {
    /// The workload's name.
    pub workload: String,
    /// Guest RAM, bytes.
    pub mem_bytes: u64,
    /// The workload's arena (guest RAM past the image and boot structures, up to `--arena`),
    /// bytes.
    pub arena_bytes: u64,
    /// Guest-physical address of the arena's first byte (page aligned). Summaries written
    /// before it existed read as 0; their arena ended at `mem_bytes`.
    #[serde(default)]
    pub arena_start: u64,
    /// Bytes of input data on the disk.
    pub disk_data_bytes: u64,
    /// `--work`, when given.
    pub work_units: Option<u64>,
    /// The seed of the workload and the random device.
    pub seed: u64,
    /// The guest's exit status, when it exited.
    pub exit_status: Option<u64>,
    /// True when the guest crashed.
    pub crashed: bool,
    /// Guest-initiated exits.
    pub guest_exits: u64,
    /// Wall-clock time of the run, seconds.
    pub wall_seconds: f64,
    /// Bytes the guest read from its disk.
    pub disk_read_bytes: u64,
    /// Bytes the guest wrote to its disk.
    pub disk_write_bytes: u64,
    /// The run directory.
    pub run_dir: PathBuf,
    /// What the recorder did (`None` with `--no-record`).
    pub recording: Option<RecordSummary>,
    /// What the tracer did in a `--trace-only` run (a benchmark's measurement of tracing
    /// alone; `None` otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TraceOnlySummary>,
}

/// The tracer's totals in a `--trace-only` run: access logs drained and tracking re-armed at
/// every interval boundary, with no dirty log and no checkpoints.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TraceOnlySummary {
    /// Interval boundaries (drain and re-arm) taken.
    pub intervals: u64,
    /// Mean frames in an interval's access log.
    pub mean_working_set: f64,
    /// Intervals whose access log lost events.
    pub incomplete_intervals: u64,
    /// Total time the guest was paused to drain the log and re-arm, milliseconds.
    pub paused_ms: f64,
}

/// The recorder's totals.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RecordSummary {
    /// Complete checkpoints.
    pub checkpoints: u64,
    /// Intervals recorded (checkpoints - 1).
    pub intervals: u64,
    /// Bytes written to the run directory for checkpoints.
    pub bytes_written: u64,
    /// Mean VM downtime per checkpoint, milliseconds.
    pub mean_downtime_ms: f64,
    /// Longest VM downtime of a checkpoint, milliseconds.
    pub max_downtime_ms: f64,
    /// Total time the VM waited for the writer (part of the downtime), milliseconds.
    pub backpressure_ms: f64,
    /// Mean dirty frames per interval (guest and VMM writes).
    pub mean_dirty_pages: f64,
    /// Frames captured in all checkpoints (checkpoint 0 included).
    pub captured_pages: u64,
    /// Of those, pages stored (new contents).
    pub stored_pages: u64,
    /// Of those, zero pages (not stored).
    pub zero_pages: u64,
    /// Of those, pages whose contents were already stored (deduplicated).
    pub dedup_pages: u64,
    /// Throughput of the dirty-page copies during downtime, GB/s.
    pub copy_gbps: f64,
    /// Intervals whose access log lost events.
    pub incomplete_intervals: u64,
    /// Mean frames in an interval's access log (0 without tracer).
    pub mean_working_set: f64,
    /// Pages of disk-read data held by reference in pages.bin (not counted in
    /// `captured_pages`).
    #[serde(default)]
    pub event_pages: u64,
    /// Of those, pages whose contents were new to the run (the rest zero or deduplicated).
    #[serde(default)]
    pub event_stored_pages: u64,
}
