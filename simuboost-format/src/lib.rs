//! The on-disk format of a simuboost recorded run, and the only code that writes or reads it.
//!
//! A run directory holds a manifest (which checkpoints are complete), a packed store of unique
//! page contents (`pages.bin`, addressed by slot), and Parquet tables for everything else: the
//! page table of each checkpoint, consolidated page maps, vCPU/device state, the event log and
//! per-interval statistics. docs/FORMAT.md describes every file and column.
//!
//! - [`RunWriter`] is used by the recorder (simuboost-daemon): one call per checkpoint does the
//!   hashing, dedup, appends, tables, fsyncs and manifest update.
//! - [`Run`] is used by replay and tests: it opens a run, reads states, events and intervals,
//!   builds the page map as of any checkpoint and reconstructs memory.
//!
//! The guiding rules: readers trust only the manifest (never directory listings), a checkpoint
//! becomes visible only after all its data is durable, and every read is validated so that a
//! damaged run yields an error naming the file, never a panic or wrong memory.

mod error;
mod fsutil;
pub mod layout;
mod manifest;
mod pages;
mod reader;
mod records;
mod tables;
mod writer;

pub use error::FormatError;
pub use manifest::{Manifest, RunMeta};
pub use pages::{is_zero_page, page_hash, PageMap, PageStore};
pub use reader::Run;
pub use records::{
    CheckpointPages, CheckpointState, CheckpointStats, Event, GeneralRegs, IntervalRecord,
    VcpuState,
};
pub use writer::{RunWriter, DEFAULT_CONSOLIDATE_EVERY};

/// Version of the format written by this crate. Readers reject any other version: the format
/// changes by bumping this number, never silently.
pub const FORMAT_VERSION: u32 = 1;

/// Guest page size; pages.bin slots are this large.
pub const PAGE_SIZE: usize = 4096;
