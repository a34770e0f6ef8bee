//! The on-disk format of a simuboost recorded run, and the only code that writes or reads it.
//!
//! A run directory holds a manifest (which checkpoints are complete), a packed store of unique
//! page contents (`pages.bin`, addressed by slot), and Parquet tables for everything else: the
//! page table of each checkpoint, consolidated page maps, vCPU/device state, the event log,
//! per-interval statistics and, when the recorder traces accesses, each interval's access log.
//! docs/FORMAT.md describes every file and column.
//!
//! - [`RunWriter`] is used by the recorder (simuboost-daemon): one call per checkpoint does the
//!   hashing, dedup, appends, tables, fsyncs and manifest update.
//! - [`Run`] is used by replay and tests: it opens a run (a directory, or `s3://bucket/prefix`
//!   through [`storage`]), reads states, events and intervals,
//!   builds the page map (slot and content hash of every page) as of any checkpoint and
//!   reconstructs memory; [`PageStore`] reads pages and verifies them against those hashes.
//!
//! The guiding rules: readers trust only the manifest (never directory listings), a checkpoint
//! becomes visible only after all its data is durable, and every read is validated so that a
//! damaged run yields an error naming the file, never a panic or wrong memory (page contents
//! are checked against their xxh3-128 hashes as they are read).
//!
//! ```no_run
//! use simuboost_format::*;
//! # fn main() -> Result<(), FormatError> {
//! # let dir = std::path::Path::new("/tmp/run");
//! # let meta: RunMeta = unimplemented!();
//! # let memory = vec![0u8; 1 << 20];
//! // Recorder: checkpoint 0 is the whole memory, later ones the dirty pages.
//! let mut w = RunWriter::create(dir, meta)?;
//! let gfns: Vec<u64> = (0..(memory.len() / PAGE_SIZE) as u64).collect();
//! let state = CheckpointState { checkpoint: 0, ..Default::default() };
//! let pages = CheckpointPages { gfns: &gfns, contents: &memory };
//! w.write_checkpoint(CheckpointInput::new(&state, pages))?;
//! w.finish(Some(0), "guest exit")?;
//!
//! // Replay: the newest version of every page as of checkpoint 0, read by slot and checked
//! // against its hash.
//! let run = Run::open(dir)?;
//! let map = run.page_map(0)?;
//! let store = run.page_store()?;
//! let mut page = vec![0u8; PAGE_SIZE];
//! if let Some((slot, hash)) = map.entry(0x100) {
//!     store.read_page_verified(slot, hash, 0x100, &mut page)?;
//! }
//! # Ok(())
//! # }
//! ```

mod error;
mod fsutil;
pub mod layout;
mod manifest;
mod pages;
mod partial;
mod reader;
mod records;
pub mod storage;
mod tables;
mod tree;
#[cfg(feature = "s3")]
pub mod upload;
mod writer;

pub use error::FormatError;
pub use manifest::{CpuidEntry, Manifest, RunMeta, MAX_CPUID_ENTRIES, MAX_MEM_BYTES};
pub use pages::{is_zero_page, page_hash, PageMap, PageStore};
pub use partial::{PartialPageMap, PartialStats};
pub use reader::Run;
pub use records::{
    Access, AccessKind, AccessSource, CheckpointPages, CheckpointState, CheckpointStats, Event,
    EventData, GeneralRegs, IntervalRecord, VcpuState,
};
#[cfg(feature = "s3")]
pub use storage::ObjectStorage;
pub use storage::{is_remote, LocalStorage, RunStorage, StorageStats};
pub use tables::{spawn_reads, PageRow, PendingReads, WorkingSet};
#[cfg(feature = "s3")]
pub use upload::{PagesLayout, UploadStats, Uploader};
pub use writer::{write_guest_image, CheckpointInput, RunWriter, DEFAULT_CONSOLIDATE_EVERY};

/// Version of the format written by this crate. Readers reject any other version: the format
/// changes by bumping this number, never silently.
///
/// Version 2: consolidated page maps carry each page's hash, and readers verify page contents.
/// Version 3: event data of whole pages (disk reads) is held by reference in pages.bin
/// (`events.data_pages`, the `eventpages/` table, two more `intervals/` columns).
/// Version 4: access logs hold the frames the vCPU's system registers point at (source `vcpu`).
pub const FORMAT_VERSION: u32 = 4;

/// Guest page size; pages.bin slots are this large.
pub const PAGE_SIZE: usize = 4096;
