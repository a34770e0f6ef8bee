//! `simuboost-replay`'s report and exit statuses.

use serde::{Deserialize, Serialize};

/// Exit statuses of `simuboost-replay`.
pub mod exit {
    /// Every replay verified.
    pub const OK: u8 = 0;
    /// A replay could not run (bad input, a damaged run, KVM).
    pub const ERROR: u8 = 1;
    /// A usage error (clap's).
    pub const USAGE: u8 = 2;
    /// A replay ran but did not match the recording.
    pub const DIVERGED: u8 = 3;
    /// `--all` was interrupted by SIGINT or SIGTERM (128 + SIGINT, as shells report it): the
    /// replays that had not finished were stopped.
    pub const INTERRUPTED: u8 = 130;
}

/// What executes a replayed interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// A KVM VM: the interval runs at hardware speed.
    #[default]
    Kvm,
    /// The functional simulator (`simuboost-sim`, unicorn): every instruction can be observed.
    Sim,
}

impl Engine {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Kvm => "kvm",
            Engine::Sim => "sim",
        }
    }
}

/// Which frames are loaded before the replay starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The interval's working set (from its access log), at its newest version as of N.
    Sparse,
    /// Every non-zero page of the state at N (the dense baseline).
    Full,
    /// Nothing: every page is a miss (the on-demand baseline of snapshot systems).
    Lazy,
}

impl Mode {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Sparse => "sparse",
            Mode::Full => "full",
            Mode::Lazy => "lazy",
        }
    }
}

/// The result of replaying one interval.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplayReport {
    /// The interval.
    pub interval: u64,
    /// The mode.
    pub mode: Mode,
    /// What executed the interval.
    #[serde(default)]
    pub engine: Engine,
    /// Frames installed before the replay started.
    pub pages_loaded: u64,
    /// Of those, zero pages (mapped, nothing read).
    pub zero_pages_loaded: u64,
    /// Bytes read from the run and copied into guest memory before the replay started.
    pub bytes_loaded: u64,
    /// Bytes read from the run's storage by this replay: tables and pages (for a run in object
    /// storage, `--run s3://...`, what was fetched over the network).
    #[serde(default)]
    pub bytes_fetched: u64,
    /// Read requests to the run's storage by this replay: whole tables, ranged reads of
    /// pages.bin (`pread`s locally, ranged GETs remotely) and size look-ups.
    #[serde(default)]
    pub requests: u64,
    /// Of `bytes_fetched`, bytes read from the page store (pages.bin): up front and on misses,
    /// for restore and verification. Compare with `bytes_loaded`: reads are coalesced, so a
    /// little more than what is loaded is read.
    #[serde(default)]
    pub page_store_bytes_read: u64,
    /// Of `requests`, reads of the page store.
    #[serde(default)]
    pub page_store_requests: u64,
    /// Frames in the interval's working set (0 without an access log).
    pub working_set_pages: u64,
    /// Time to restore: reading the state, events and page map, loading pages, and setting up
    /// the VM and vCPU, milliseconds.
    pub restore_ms: f64,
    /// Of which, reading the run's tables: vCPU and device state, events, access log and the
    /// page map as of N.
    pub read_ms: f64,
    /// Of which, installing pages (reading pages.bin and copying into guest memory).
    pub load_ms: f64,
    /// Frames served on demand during the replay.
    pub misses: u64,
    /// Of those, zero pages.
    pub zero_misses: u64,
    /// Peak resident guest memory, bytes.
    pub footprint_bytes: u64,
    /// Time from resuming the vCPU to the end boundary, milliseconds.
    pub replay_ms: f64,
    /// Time to verify, milliseconds.
    pub verify_ms: f64,
    /// Recorded length of the interval (wall clock while recording), milliseconds.
    pub recorded_ms: f64,
    /// Guest-initiated exits replayed.
    pub exits: u64,
    /// Exit count at the interval's start and end.
    pub start_exit: u64,
    /// Exit count at the interval's end boundary.
    pub end_exit: u64,
    /// Pages compared with the next checkpoint.
    pub pages_checked: u64,
    /// True when the final state equals checkpoint N+1.
    pub verified: bool,
    /// The first divergence, if any.
    pub divergence: Option<Divergence>,
    /// What only the simulator can tell (`--engine sim`).
    #[serde(default, skip_serializing_if = "Option::is_none", flatten)]
    pub simulation: Option<Simulation>,
}

/// What a simulated interval tells beyond "verified" (`--engine sim`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Simulation {
    /// Instructions the interval executed, exactly.
    pub instructions: u64,
    /// Distinct guest frames the interval read, wrote or fetched instructions from (by the
    /// guest's instructions, its page walks, or the device on its behalf).
    pub pages_accessed: u64,
    /// Of those, page-table frames read by page walks.
    pub page_table_pages: u64,
    /// Of those, frames only the device wrote (disk data, request results).
    pub device_pages: u64,
    /// Share of the accessed frames that sparse mode loads (the eBPF working set plus the
    /// frames the vCPU state points at): 1.0 means a sparse replay cannot miss. `None` without
    /// an access log.
    pub tracer_recall: Option<f64>,
    /// The same share for what the tracer, the dirty log and the VMM saw: the access log
    /// without its `vcpu` rows (the frames the recorder adds from the vCPU state). `None`
    /// without an access log.
    pub tracer_recall_log_only: Option<f64>,
    /// Share of those frames (the log without its `vcpu` rows) that the interval accessed.
    /// `None` without an access log.
    pub tracer_precision: Option<f64>,
    /// Time the simulator spent executing (excluding waits for the replayer), milliseconds.
    pub sim_ms: f64,
    /// What `--analysis` found (docs/ANALYSES.md); absent without `--analysis`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisSummary>,
}

/// One interval's analyses in brief (`--analysis`): the `--all` summary table, the JSON lines
/// and `DIR/summary/interval-N.json` show it. The full results are the Parquet files in
/// `files`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AnalysisSummary {
    /// The interval.
    pub interval: u64,
    /// Instructions executed.
    pub instructions: u64,
    /// Seconds spent simulating.
    pub sim_seconds: f64,
    /// Distinct frames read, written or fetched from (`pages`).
    pub working_set_frames: Option<u64>,
    /// The functions with the most instructions, most first (`blocks`), at most 5.
    pub top_functions: Vec<(String, u64)>,
    /// L1 misses / (hits + misses) (`cache`).
    pub cache_l1_miss_rate: Option<f64>,
    /// L2 misses / (hits + misses), if modelled.
    pub cache_l2_miss_rate: Option<f64>,
    /// Rows in the trace file (`trace`).
    pub trace_rows: Option<u64>,
    /// Rows `--trace-limit` left out.
    pub trace_dropped: Option<u64>,
    /// Size of the trace file in bytes.
    pub trace_bytes: Option<u64>,
    /// Why blocks are not symbolised, if they are not.
    pub warning: Option<String>,
    /// Files written, relative to the output directory.
    pub files: Vec<String>,
}

/// Where and how a replay left the recording.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Divergence {
    /// Guest-initiated exit count where it was detected.
    pub exit: u64,
    /// `request` (the guest asked for something else), `crash`, `timeout`, `register`,
    /// `memory`.
    pub kind: String,
    /// The register that differs, for `register`.
    pub register: Option<String>,
    /// The first (lowest) frame that differs, for `memory`.
    pub gfn: Option<u64>,
    /// How many pages differ, for `memory`.
    pub differing_pages: Option<u64>,
    /// One line for people.
    pub description: String,
}

impl Divergence {
    /// A divergence of `kind` at `exit`.
    pub fn new(exit: u64, kind: &'static str, description: String) -> Divergence {
        Divergence {
            exit,
            kind: kind.to_string(),
            register: None,
            gfn: None,
            differing_pages: None,
            description,
        }
    }

    /// The guest made another request than the recorded one.
    pub fn request(exit: u64, description: String) -> Divergence {
        Divergence::new(exit, "request", description)
    }

    /// The guest crashed.
    pub fn crash(exit: u64, description: String) -> Divergence {
        Divergence::new(exit, "crash", description)
    }

    /// The interval did not end in time.
    pub fn timeout(exit: u64, description: String) -> Divergence {
        Divergence::new(exit, "timeout", description)
    }
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}: {}", self.exit, self.description)
    }
}
