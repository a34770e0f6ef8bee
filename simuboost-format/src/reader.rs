//! The replay side: [`Run`] opens a recorded run and reads any complete checkpoint or interval.
//!
//! Everything goes through the manifest: only checkpoints `0..manifest.checkpoints` exist for
//! a reader, whatever else a crash left in the directories. Every file is checked as it is read
//! (column types, the checkpoint/interval number it carries, gfns inside guest memory, slots
//! inside pages.bin) and problems come back as errors naming the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::manifest::Manifest;
use crate::pages::{PageMap, PageStore};
use crate::partial::PartialPageMap;
use crate::records::{Access, CheckpointState, Event, EventData, IntervalRecord};
use crate::storage::{open_storage, LocalStorage, RunStorage, StorageStats};
use crate::tables::{self, PageLimits, PageRow, WorkingSet};
use crate::{layout, FormatError, PAGE_SIZE};

/// The largest guest image a reader accepts.
const MAX_GUEST_IMAGE_BYTES: u64 = 256 << 20;
/// The largest debug dump a reader accepts besides its required size (guest RAM).
const MAX_DUMP_BYTES: u64 = 1 << 40;

/// An opened run: a directory, or a prefix in object storage.
#[derive(Debug, Clone)]
pub struct Run {
    dir: PathBuf,
    storage: Arc<dyn RunStorage>,
    manifest: Manifest,
}

impl Run {
    /// Opens a run directory: reads and validates manifest.json. A directory without one is
    /// [`FormatError::NotARun`]; a manifest of another format version is
    /// [`FormatError::UnsupportedVersion`].
    pub fn open(dir: &Path) -> Result<Run, FormatError> {
        // A local run is a directory tree: refuse symbolic links before anything is read
        // through it.
        crate::tree::check_run_tree(dir)?;
        Run::open_in(Arc::new(LocalStorage::new(dir)))
    }

    /// Opens the run at `location`: `s3://bucket/prefix` (see [`crate::storage`]) or a
    /// directory.
    pub fn open_location(location: &str) -> Result<Run, FormatError> {
        if crate::storage::is_remote(location) {
            Run::open_in(open_storage(location)?)
        } else {
            Run::open(Path::new(location))
        }
    }

    /// Opens the run in `storage`.
    pub fn open_in(storage: Arc<dyn RunStorage>) -> Result<Run, FormatError> {
        let manifest = Manifest::read_from(storage.as_ref())?;
        // A reader of "every interval" loops and allocates in proportion to the manifest's
        // count: bound it by the states the run holds (one per complete checkpoint). Which
        // checkpoints exist is still the manifest's word alone.
        let state_dir = storage.root().join(layout::STATE_DIR);
        let states = storage.count_files(&state_dir, manifest.checkpoints)?;
        if states < manifest.checkpoints {
            return Err(FormatError::corrupt(
                layout::manifest(storage.root()),
                format!(
                    "it counts {} complete checkpoints, but {} holds the state of only {states}",
                    manifest.checkpoints,
                    state_dir.display()
                ),
            ));
        }
        Ok(Run {
            dir: storage.root().to_path_buf(),
            storage,
            manifest,
        })
    }

    /// Where the run is read from.
    pub fn storage(&self) -> &Arc<dyn RunStorage> {
        &self.storage
    }

    /// Requests and bytes read from the run's storage so far, by this run and everything opened
    /// from it (page stores included).
    pub fn storage_stats(&self) -> StorageStats {
        self.storage.stats()
    }

    /// The guest ELF the run booted (`guest.elf`), checked against the manifest's
    /// `meta.guest_image_xxh3`; `None` for a run recorded without the copy.
    pub fn guest_image(&self) -> Result<Option<Vec<u8>>, FormatError> {
        let path = layout::guest_image(&self.dir);
        let Some(image) = self.storage.get(&path, MAX_GUEST_IMAGE_BYTES)? else {
            return Ok(None);
        };
        let hash = format!("{:032x}", crate::page_hash(&image));
        if hash != self.manifest().meta.guest_image_xxh3 {
            return Err(FormatError::corrupt(
                &path,
                format!(
                    "its xxh3 is {hash}, the manifest says {}: not the guest this run booted",
                    self.manifest().meta.guest_image_xxh3
                ),
            ));
        }
        Ok(Some(image.to_vec()))
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of complete checkpoints (`0..checkpoints()` are loadable).
    pub fn checkpoints(&self) -> u64 {
        self.manifest.checkpoints
    }

    /// Number of complete intervals (interval i is complete once checkpoint i+1 is).
    pub fn interval_count(&self) -> u64 {
        self.manifest.intervals()
    }

    fn check_checkpoint(&self, checkpoint: u64) -> Result<(), FormatError> {
        if checkpoint >= self.manifest.checkpoints {
            return Err(FormatError::CheckpointOutOfRange {
                requested: checkpoint,
                available: self.manifest.checkpoints,
            });
        }
        Ok(())
    }

    fn check_interval(&self, interval: u64) -> Result<(), FormatError> {
        if interval >= self.manifest.intervals() {
            return Err(FormatError::IntervalOutOfRange {
                requested: interval,
                available: self.manifest.intervals(),
            });
        }
        Ok(())
    }

    fn limits(&self) -> PageLimits {
        PageLimits {
            mem_pages: self.manifest.mem_pages(),
            page_slots: self.manifest.page_slots,
        }
    }

    /// The records of all complete intervals, in order.
    pub fn intervals(&self) -> Result<Vec<IntervalRecord>, FormatError> {
        (0..self.manifest.intervals())
            .map(|i| self.interval(i))
            .collect()
    }

    /// The record of interval `i`.
    pub fn interval(&self, i: u64) -> Result<IntervalRecord, FormatError> {
        self.check_interval(i)?;
        tables::intervals::read(
            self.storage.as_ref(),
            &layout::interval_table(&self.dir, i),
            i,
        )
    }

    /// vCPU and device state at `checkpoint`.
    pub fn state(&self, checkpoint: u64) -> Result<CheckpointState, FormatError> {
        self.check_checkpoint(checkpoint)?;
        tables::state::read(
            self.storage.as_ref(),
            &layout::state_table(&self.dir, checkpoint),
            checkpoint,
        )
    }

    /// The guest-initiated exits of `interval`, ascending. Data held by reference (disk reads)
    /// comes back as [`EventData::Pages`], checked against the manifest's slots but not read:
    /// see [`PageStore::read_event_pages`].
    pub fn events(&self, interval: u64) -> Result<Vec<Event>, FormatError> {
        self.check_interval(interval)?;
        let events_path = layout::events_table(&self.dir, interval);
        let (mut events, by_reference) = tables::events::read(
            self.storage.as_ref(),
            &events_path,
            interval,
            self.manifest.meta.mem_bytes,
        )?;
        if by_reference.is_empty() {
            return Ok(events);
        }
        let announced = by_reference
            .iter()
            .fold(0u64, |sum, &(_, pages)| sum.saturating_add(pages));
        let path = layout::eventpages_table(&self.dir, interval);
        if self.storage.size(&path)?.is_none() {
            return Err(FormatError::corrupt(
                &path,
                format!(
                    "missing, but {} announces {announced} pages of event data held by \
                     reference",
                    events_path.display()
                ),
            ));
        }
        let rows = tables::eventpages::read(
            self.storage.as_ref(),
            &path,
            interval,
            self.manifest.page_slots,
            announced,
        )?;
        // Rows come in (exit, page) order, each event's pages 0.. in a block.
        let mut rows = rows.into_iter().peekable();
        for (index, pages) in by_reference {
            let exit = events[index].exit;
            let mut entries = Vec::with_capacity(pages.min(1 << 16) as usize);
            for page in 0..pages {
                match rows.next() {
                    Some(row) if row.exit == exit && row.page == page => entries.push(row.entry),
                    Some(row) => {
                        return Err(FormatError::corrupt(
                            &path,
                            format!(
                                "expected page {page} of exit {exit}, found page {} of exit {} \
                                 (rows are ordered by exit and page, one per announced page)",
                                row.page, row.exit
                            ),
                        ))
                    }
                    None => {
                        return Err(FormatError::corrupt(
                            &path,
                            format!(
                                "ends before page {page} of exit {exit} ({} announces {pages})",
                                events_path.display()
                            ),
                        ))
                    }
                }
            }
            events[index].data = Some(EventData::Pages(entries));
        }
        if let Some(row) = rows.next() {
            return Err(FormatError::corrupt(
                &path,
                format!(
                    "page {} of exit {} belongs to no event that holds its data by reference",
                    row.page, row.exit
                ),
            ));
        }
        Ok(events)
    }

    /// The access log (working set) of `interval`, in first-touch order; `None` when the run
    /// has none for it (recorded without a tracer, `meta.tracer == "none"`).
    pub fn access(&self, interval: u64) -> Result<Option<Vec<Access>>, FormatError> {
        self.read_access(interval, tables::access::read)
    }

    /// What a restore needs of the access log of `interval`: its frames in first-touch order
    /// and where their contents were at the interval's start (checked as [`Run::access`]
    /// checks a log, except for the columns not read, and as a page table's slots and hashes);
    /// `None` when the run has no log for it.
    pub fn working_set(&self, interval: u64) -> Result<Option<WorkingSet>, FormatError> {
        self.read_access(interval, tables::access::read_working_set)
    }

    /// The access log of `interval` read by `read` (storage, path, interval, limits), or
    /// `None` when the run has none for it.
    fn read_access<T>(
        &self,
        interval: u64,
        read: impl FnOnce(&dyn RunStorage, &Path, u64, PageLimits) -> Result<T, FormatError>,
    ) -> Result<Option<T>, FormatError> {
        self.check_interval(interval)?;
        let path = layout::access_table(&self.dir, interval);
        // Unlike the other tables, an access log is optional, so whether the file exists is the
        // answer. Only intervals the manifest counts get here, so a crash's strays are not seen.
        if self.storage.size(&path)?.is_none() {
            return Ok(None);
        }
        read(self.storage.as_ref(), &path, interval, self.limits()).map(Some)
    }

    /// The page table of `checkpoint`, in gfn order: the pages written in the interval before
    /// it (every non-zero page for checkpoint 0), with `slot`/`hash` `None` for a page that is
    /// zero at this checkpoint.
    pub fn checkpoint_pages(&self, checkpoint: u64) -> Result<Vec<PageRow>, FormatError> {
        self.check_checkpoint(checkpoint)?;
        let mut rows = Vec::new();
        tables::checkpoint::read(
            self.storage.as_ref(),
            &layout::checkpoint_table(&self.dir, checkpoint),
            checkpoint,
            self.limits(),
            |gfn, entry| {
                rows.push(PageRow {
                    gfn,
                    slot: entry.map(|e| e.0),
                    hash: entry.map(|e| e.1),
                })
            },
        )?;
        Ok(rows)
    }

    /// The consolidated checkpoint that [`Run::page_map`] starts from for `checkpoint`: the
    /// largest multiple of `consolidate_every` not above it.
    pub fn consolidation_base(&self, checkpoint: u64) -> u64 {
        checkpoint - checkpoint % self.manifest.consolidate_every
    }

    /// The page map as of `checkpoint`: gfn → slot and content hash of every non-zero page.
    /// Reads the consolidated map at [`Run::consolidation_base`] and overlays the page tables of
    /// the checkpoints after it, so the cost is bounded by `consolidate_every` files whatever
    /// `checkpoint` is. Read pages with [`PageStore::read_pages_verified`] and the map's hashes
    /// so a damaged pages.bin is reported rather than loaded.
    pub fn page_map(&self, checkpoint: u64) -> Result<PageMap, FormatError> {
        self.check_checkpoint(checkpoint)?;
        let limits = self.limits();
        let base = self.consolidation_base(checkpoint);
        let mut map = PageMap::new(limits.mem_pages);
        tables::pagemap::read(
            self.storage.as_ref(),
            &layout::pagemap_table(&self.dir, base),
            base,
            limits,
            &mut map,
        )?;
        for c in base + 1..=checkpoint {
            tables::checkpoint::read(
                self.storage.as_ref(),
                &layout::checkpoint_table(&self.dir, c),
                c,
                limits,
                |gfn, entry| {
                    map.set(gfn, entry);
                },
            )?;
        }
        Ok(map)
    }

    /// The page map as of `checkpoint`, like [`Run::page_map`], but read only where it is
    /// asked ([`PartialPageMap`]): the first question reads the footers of the consolidated map
    /// and the page tables after it; [`PartialPageMap::load`] reads the row groups of the frames
    /// a restore loads, and [`PartialPageMap::entry`] any other frame's on demand.
    pub fn partial_page_map(&self, checkpoint: u64) -> Result<PartialPageMap, FormatError> {
        self.check_checkpoint(checkpoint)?;
        let base = self.consolidation_base(checkpoint);
        let mut files = vec![(layout::pagemap_table(&self.dir, base), base, true)];
        files.extend(
            (base + 1..=checkpoint).map(|c| (layout::checkpoint_table(&self.dir, c), c, false)),
        );
        Ok(PartialPageMap::open(
            self.storage.clone(),
            files,
            self.limits(),
        ))
    }

    /// Opens pages.bin. Only the slots the manifest counts as committed are readable.
    pub fn page_store(&self) -> Result<PageStore, FormatError> {
        PageStore::open(
            self.storage.clone(),
            &layout::pages(&self.dir),
            self.manifest.page_slots,
        )
    }

    /// Reconstructs guest memory as of `checkpoint` into `out`, which must be `mem_bytes` long.
    /// `out` is zero-filled first; runs of pages that are consecutive in both gfn and slot are
    /// read with one `pread` straight into place, then every page is checked against its hash
    /// in the page map (a mismatch is [`FormatError::Corrupt`] naming pages.bin).
    pub fn reconstruct_memory(&self, checkpoint: u64, out: &mut [u8]) -> Result<(), FormatError> {
        if out.len() as u64 != self.manifest.meta.mem_bytes {
            return Err(FormatError::invalid(format!(
                "reconstruct_memory: buffer is {} bytes, guest memory is {}",
                out.len(),
                self.manifest.meta.mem_bytes
            )));
        }
        let map = self.page_map(checkpoint)?;
        let store = self.page_store()?;
        out.fill(0);
        for (gfn, slot, pages) in map.runs() {
            let start = gfn as usize * PAGE_SIZE;
            let run = &mut out[start..start + pages as usize * PAGE_SIZE];
            store.read_run_verified(slot, map.run_hashes(gfn, pages), gfn, run)?;
        }
        Ok(())
    }

    /// The debug memory dump of `checkpoint`, if the recorder wrote one.
    pub fn dump(&self, checkpoint: u64) -> Result<Option<Vec<u8>>, FormatError> {
        self.check_checkpoint(checkpoint)?;
        let path = layout::dump_file(&self.dir, checkpoint);
        let limit = self.manifest.meta.mem_bytes.min(MAX_DUMP_BYTES);
        let Some(bytes) = self.storage.get(&path, limit)? else {
            return Ok(None);
        };
        if bytes.len() as u64 != self.manifest.meta.mem_bytes {
            return Err(FormatError::corrupt(
                &path,
                format!(
                    "{} bytes, guest memory is {}",
                    bytes.len(),
                    self.manifest.meta.mem_bytes
                ),
            ));
        }
        Ok(Some(bytes.to_vec()))
    }
}
