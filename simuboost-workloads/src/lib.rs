//! The workloads simuboost's guest runs, as `no_std` code that also runs on the host.
//!
//! The guest binary (`simuboost-guest`) implements [`Platform`] with the paravirtual device; the
//! host benchmark implements it with ordinary files and clocks, so that the guest-speed benchmark
//! compares the very same code.
//!
//! Every workload calls [`Platform::yield_now`] at least about every millisecond of work: those
//! calls are the guest-initiated exits on which interval boundaries fall.
#![no_std]

extern crate alloc;

pub mod build;
pub mod compress;
pub mod dataset;
pub mod idle;
pub mod kvstore;
pub mod pattern;
pub mod rng;
pub mod sort;
pub mod stream;
mod util;

use simuboost_abi::WorkloadId;

/// Size of one disk block.
pub const BLOCK_SIZE: usize = simuboost_abi::PAGE_SIZE as usize;

/// A disk operation failed (out of range, no disk, or a host I/O error).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskError {
    /// The device status code (see `simuboost_abi::status`).
    pub status: u32,
}

/// What a workload needs from the machine it runs on.
pub trait Platform {
    /// Writes text to the console.
    fn console_write(&mut self, bytes: &[u8]);
    /// Monotonic clock, nanoseconds.
    fn clock_ns(&mut self) -> u64;
    /// Fills `buf` with random bytes.
    fn random(&mut self, buf: &mut [u8]);
    /// Reads `buf.len() / BLOCK_SIZE` blocks starting at `block`. `buf.len()` is a multiple of
    /// [`BLOCK_SIZE`].
    fn block_read(&mut self, block: u64, buf: &mut [u8]) -> Result<(), DiskError>;
    /// Writes `buf.len() / BLOCK_SIZE` blocks starting at `block`.
    fn block_write(&mut self, block: u64, buf: &[u8]) -> Result<(), DiskError>;
    /// A deliberate exit point; returns `true` when the host asks the workload to stop.
    fn yield_now(&mut self) -> bool;
}

/// How to run a workload.
#[derive(Clone, Copy, Debug)]
pub struct RunConfig {
    /// Which workload.
    pub workload: WorkloadId,
    /// Seed of every pseudo-random choice.
    pub seed: u64,
    /// Units of work (workload-specific, see each module); 0 = until `yield_now` says stop.
    pub work_units: u64,
    /// Disk size in blocks (0 = no disk).
    pub disk_blocks: u64,
    /// Bytes of input data at the start of the disk.
    pub disk_data_bytes: u64,
}

/// Result of a workload run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// A checksum over the workload's results: equal runs give equal checksums.
    pub checksum: u64,
    /// Units of work completed.
    pub units_done: u64,
}

/// Why a workload could not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadError {
    /// The arena is smaller than the workload needs.
    ArenaTooSmall {
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// The workload needs a disk with input data and has none (or too little).
    NoDisk,
    /// A disk operation failed.
    Disk(DiskError),
}

impl From<DiskError> for WorkloadError {
    fn from(e: DiskError) -> Self {
        WorkloadError::Disk(e)
    }
}

/// Smallest arena each workload accepts, in bytes.
pub fn min_arena_bytes(workload: WorkloadId) -> u64 {
    match workload {
        WorkloadId::Kvstore => kvstore::MIN_ARENA,
        WorkloadId::Build => build::MIN_ARENA,
        WorkloadId::Compress => compress::MIN_ARENA,
        WorkloadId::Sort => sort::MIN_ARENA,
        WorkloadId::Stream => stream::MIN_ARENA,
        WorkloadId::Idle => idle::MIN_ARENA,
        WorkloadId::Pattern => pattern::MIN_ARENA,
    }
}

/// Whether the workload reads input data from the disk (and so needs a data set there).
pub fn needs_disk(workload: WorkloadId) -> bool {
    matches!(workload, WorkloadId::Compress | WorkloadId::Sort)
}

/// Runs a workload over `arena` (its working memory, contents unspecified at entry).
pub fn run(
    cfg: &RunConfig,
    platform: &mut dyn Platform,
    arena: &mut [u8],
) -> Result<Outcome, WorkloadError> {
    let needed = min_arena_bytes(cfg.workload);
    if (arena.len() as u64) < needed {
        return Err(WorkloadError::ArenaTooSmall {
            needed,
            available: arena.len() as u64,
        });
    }
    match cfg.workload {
        WorkloadId::Kvstore => kvstore::run(cfg, platform, arena),
        WorkloadId::Build => build::run(cfg, platform, arena),
        WorkloadId::Compress => compress::run(cfg, platform, arena),
        WorkloadId::Sort => sort::run(cfg, platform, arena),
        WorkloadId::Stream => stream::run(cfg, platform, arena),
        WorkloadId::Idle => idle::run(cfg, platform, arena),
        WorkloadId::Pattern => pattern::run(cfg, platform, arena),
    }
}
