//! The recorder's side: [`RunWriter`] turns checkpoints into files, durably and in order.
//!
//! One `write_checkpoint` call does everything for checkpoint N, in this order, so that a
//! SIGKILL at any point leaves the run readable up to the last complete checkpoint:
//!
//! 1. hash and dedup the pages, append the new contents to pages.bin (large `pwrite`s at the
//!    committed end of the file), fsync pages.bin;
//! 2. write each Parquet file (and the optional dump) under a temporary name, fsync, rename;
//!    fsync the directories;
//! 3. replace manifest.json, now saying `checkpoints: N+1`.
//!
//! Until step 3 lands nothing a reader looks at refers to the new data: readers go by the
//! manifest's checkpoint count and `page_slots`, never by directory listings or file sizes.
//! On an error the writer's in-memory state (dedup index, page map, slot count) is rolled back,
//! so the same checkpoint can be retried (e.g. after freeing disk space).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::fsutil::{sync_dir, write_atomic};
use crate::manifest::{Manifest, RunMeta};
use crate::pages::{is_zero_page, page_hash, PageMap};
use crate::records::{
    Access, CheckpointPages, CheckpointState, CheckpointStats, Event, EventData, IntervalRecord,
};
use crate::tables::eventpages::EventPage;
use crate::tables::{self, PageRow};
use crate::{layout, FormatError, FORMAT_VERSION, PAGE_SIZE};

const PAGE: u64 = PAGE_SIZE as u64;

/// Default distance between consolidated page maps.
pub const DEFAULT_CONSOLIDATE_EVERY: u64 = 16;

/// New unique pages are gathered into a buffer of this size and written with one `pwrite`, so
/// pages.bin sees few large writes without the writer copying a whole 4 GiB checkpoint 0.
const APPEND_BUFFER: usize = 8 << 20;

/// Writes a run directory. Not thread-safe by design: the recorder owns it from its one
/// background writer thread.
#[derive(Debug)]
pub struct RunWriter {
    dir: PathBuf,
    manifest: Manifest,
    pages: File,
    pages_path: PathBuf,
    /// xxh3-128 of contents → slot, for every slot of pages.bin. 128-bit hashes make an
    /// accidental collision negligible (about 2^-64 for 2^32 distinct pages), so contents are
    /// not compared on a hit.
    dedup: HashMap<u128, u64>,
    /// The page map (slots and hashes) as of the last complete checkpoint; written out at
    /// consolidation points.
    map: PageMap,
    /// Exit count of the last complete checkpoint.
    last_exit: Option<u64>,
    append: Vec<u8>,
}

/// Everything [`RunWriter::write_checkpoint`] needs for one checkpoint N.
///
/// Checkpoint 0 takes only `state` and `pages` ([`CheckpointInput::new`]); a later checkpoint
/// also describes the interval before it:
///
/// ```no_run
/// # use simuboost_format::*;
/// # fn next(w: &mut RunWriter, state: &CheckpointState, pages: CheckpointPages<'_>,
/// #         rec: IntervalRecord, events: &[Event]) -> Result<(), FormatError> {
/// w.write_checkpoint(CheckpointInput {
///     interval: Some(rec),
///     events,
///     ..CheckpointInput::new(state, pages)
/// })?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct CheckpointInput<'a> {
    /// vCPU and device state at boundary N; `state.checkpoint` must be N, the next checkpoint.
    pub state: &'a CheckpointState,
    /// For N = 0 every non-zero page (zero pages may be included; they are left out of the
    /// page table). For N > 0 the pages written during interval N-1, with their contents at
    /// boundary N.
    pub pages: CheckpointPages<'a>,
    /// The record of interval N-1 (`None` for checkpoint 0). The writer fills in its
    /// `stored_pages`, `zero_pages`, `dedup_pages`, `bytes_written` and `traced_frames`.
    pub interval: Option<IntervalRecord>,
    /// The guest-initiated exits of interval N-1, ascending (empty for checkpoint 0).
    pub events: &'a [Event],
    /// The access log of interval N-1, or `None` when the recorder traces no accesses (then no
    /// access file is written). It must be in first-touch order (`access[i].first_touch ==
    /// i`), name each gfn once, and its `Write` rows must be exactly `pages.gfns`.
    pub access: Option<&'a [Access]>,
    /// The whole guest memory, kept as a debug file, if wanted.
    pub dump: Option<&'a [u8]>,
}

impl<'a> CheckpointInput<'a> {
    /// The input of checkpoint 0, or the base to fill in for a later one: no interval, events,
    /// access log or dump.
    pub fn new(state: &'a CheckpointState, pages: CheckpointPages<'a>) -> Self {
        CheckpointInput {
            state,
            pages,
            interval: None,
            events: &[],
            access: None,
            dump: None,
        }
    }
}

/// Where a checkpoint's new pages go in pages.bin.
struct Append {
    /// The slot the next new page gets.
    next_slot: u64,
    /// The slot the append buffer starts at (everything before it is written).
    flushed_slot: u64,
}

/// Whether event data is held by reference in pages.bin: whole pages (a disk read), where
/// the page store's dedup pays (the guest reads back what it wrote or what a checkpoint holds)
/// and a replay reads them at their exit instead of with the event log. Anything else (clock
/// values, a few random bytes) stays inline.
fn held_by_reference(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.len().is_multiple_of(PAGE_SIZE)
}

/// `event` without its data.
fn event_header(event: &Event) -> Event {
    Event {
        data: None,
        data_gpa: event.data_gpa,
        ..*event
    }
}

/// What to undo if a checkpoint fails half-way.
#[derive(Default)]
struct Undo {
    new_hashes: Vec<u128>,
    /// `(gfn, previous (slot, hash))` for every page-map change, in order.
    map: Vec<(u64, Option<(u64, u128)>)>,
    /// Files renamed into place for the failed checkpoint.
    files: Vec<PathBuf>,
    /// Set once the manifest write has started: if it failed after its rename (in the directory
    /// fsync), the checkpoint may be visible to readers, so its files and pages must stay.
    keep_disk: bool,
}

/// Writes the copy of the guest ELF into a run created by [`RunWriter::create`] (once, right
/// after it): refuses an image whose hash is not the manifest's `meta.guest_image_xxh3`.
pub fn write_guest_image(dir: &Path, image: &[u8]) -> Result<(), FormatError> {
    let manifest = Manifest::read(dir)?;
    let hash = format!("{:032x}", crate::page_hash(image));
    if hash != manifest.meta.guest_image_xxh3 {
        return Err(FormatError::invalid(format!(
            "the guest image's xxh3 is {hash}, the manifest says {}",
            manifest.meta.guest_image_xxh3
        )));
    }
    let path = layout::guest_image(dir);
    write_atomic(&path, |file, path| {
        std::io::Write::write_all(file, image).map_err(|e| FormatError::io(path, "write", e))
    })?;
    sync_dir(dir)
}

impl RunWriter {
    /// Creates the run directory (which must not exist or be empty) with its subdirectories, an
    /// empty pages.bin and a manifest saying `checkpoints: 0`.
    pub fn create(dir: &Path, meta: RunMeta) -> Result<RunWriter, FormatError> {
        if meta.mem_bytes == 0 || !meta.mem_bytes.is_multiple_of(PAGE) {
            return Err(FormatError::invalid(format!(
                "mem_bytes {} is not a positive multiple of {PAGE}",
                meta.mem_bytes
            )));
        }
        match std::fs::read_dir(dir) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(FormatError::DirNotEmpty {
                        path: dir.to_path_buf(),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| FormatError::io(dir, "create directory", e))?;
                if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                    sync_dir(parent)?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
                return Err(FormatError::io(dir, "use as the run directory", e))
            }
            Err(e) => return Err(FormatError::io(dir, "read directory", e)),
        }
        for sub in layout::SUBDIRS {
            let p = dir.join(sub);
            std::fs::create_dir(&p).map_err(|e| FormatError::io(&p, "create directory", e))?;
        }
        let pages_path = layout::pages(dir);
        let pages = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&pages_path)
            .map_err(|e| FormatError::io(&pages_path, "create", e))?;
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            meta,
            checkpoints: 0,
            consolidate_every: DEFAULT_CONSOLIDATE_EVERY,
            page_slots: 0,
            finished: false,
            exit_status: None,
            stop_reason: None,
        };
        // Also fsyncs the run directory, making the subdirectories and pages.bin durable.
        manifest.write(dir)?;
        let mem_pages = manifest.mem_pages();
        Ok(RunWriter {
            dir: dir.to_path_buf(),
            manifest,
            pages,
            pages_path,
            dedup: HashMap::new(),
            map: PageMap::new(mem_pages),
            last_exit: None,
            append: Vec::new(),
        })
    }

    /// Sets how often a consolidated page map is written (default 16; 0 is taken as 1). Only
    /// effective before the first checkpoint, since readers rely on one value for the whole run;
    /// later calls are ignored. The manifest picks it up with the next checkpoint.
    pub fn with_consolidate_every(mut self, n: u64) -> Self {
        if self.manifest.checkpoints == 0 {
            self.manifest.consolidate_every = n.max(1);
        }
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Number of complete checkpoints, i.e. the number of the next one to write.
    pub fn checkpoints(&self) -> u64 {
        self.manifest.checkpoints
    }

    /// The page map as of the last complete checkpoint.
    pub fn page_map(&self) -> &PageMap {
        &self.map
    }

    /// Writes checkpoint `input.state.checkpoint`, which must be the next one (see
    /// [`CheckpointInput`] for what each part must hold).
    ///
    /// Returns once everything, manifest included, is on disk. On error nothing a reader sees
    /// has changed and the same checkpoint may be written again.
    pub fn write_checkpoint(
        &mut self,
        input: CheckpointInput<'_>,
    ) -> Result<CheckpointStats, FormatError> {
        self.validate(&input)?;
        let mut undo = Undo::default();
        let base_slots = self.manifest.page_slots;
        match self.commit(input, &mut undo) {
            Ok(stats) => Ok(stats),
            Err(e) => {
                self.rollback(undo, base_slots);
                Err(e)
            }
        }
    }

    /// Marks the run finished: records the guest's exit status (if it exited by itself) and why
    /// recording stopped.
    pub fn finish(
        &mut self,
        exit_status: Option<u64>,
        stop_reason: &str,
    ) -> Result<(), FormatError> {
        let mut next = self.manifest.clone();
        next.finished = true;
        next.exit_status = exit_status;
        next.stop_reason = Some(stop_reason.to_string());
        next.write(&self.dir)?;
        self.manifest = next;
        Ok(())
    }

    fn validate(&self, input: &CheckpointInput<'_>) -> Result<(), FormatError> {
        let CheckpointInput {
            state,
            pages,
            interval,
            events,
            access,
            dump,
        } = input;
        let n = self.manifest.checkpoints;
        let bad = |what: String| Err(FormatError::invalid(format!("checkpoint {n}: {what}")));
        if state.checkpoint != n {
            return bad(format!(
                "state.checkpoint is {}, but the next checkpoint is {n}",
                state.checkpoint
            ));
        }
        if pages.contents.len() != pages.gfns.len() * PAGE_SIZE {
            return bad(format!(
                "{} gfns but {} bytes of contents (expected {})",
                pages.gfns.len(),
                pages.contents.len(),
                pages.gfns.len() * PAGE_SIZE
            ));
        }
        let mem_pages = self.manifest.mem_pages();
        if let Some(w) = pages.gfns.windows(2).find(|w| w[0] >= w[1]) {
            return bad(format!(
                "gfns must be ascending and unique: {:#x} then {:#x}",
                w[0], w[1]
            ));
        }
        if let Some(&g) = pages.gfns.last().filter(|&&g| g >= mem_pages) {
            return bad(format!(
                "gfn {g:#x} is beyond guest memory ({mem_pages} pages)"
            ));
        }
        if let Some(d) = dump.filter(|d| d.len() as u64 != self.manifest.meta.mem_bytes) {
            return bad(format!(
                "dump is {} bytes, guest memory is {}",
                d.len(),
                self.manifest.meta.mem_bytes
            ));
        }
        match (n, interval) {
            (0, None) if events.is_empty() && access.is_none() => return Ok(()),
            (0, _) => {
                return bad("checkpoint 0 has no interval, events or access log before it".into())
            }
            (_, None) => return bad(format!("missing the IntervalRecord of interval {}", n - 1)),
            (_, Some(rec)) => {
                if rec.interval != n - 1 {
                    return bad(format!(
                        "IntervalRecord is for interval {}, expected {}",
                        rec.interval,
                        n - 1
                    ));
                }
                if Some(rec.start_exit) != self.last_exit || rec.end_exit != state.exit {
                    return bad(format!(
                        "interval {} spans exits {}..{}, but its checkpoints are at exits {:?} and {}",
                        n - 1,
                        rec.start_exit,
                        rec.end_exit,
                        self.last_exit,
                        state.exit
                    ));
                }
                if rec.trace_drops > 0 && rec.complete {
                    return bad(format!(
                        "interval {} is marked complete although the tracer dropped {} events",
                        n - 1,
                        rec.trace_drops
                    ));
                }
            }
        }
        if let Some(access) = access {
            let checked = tables::access::check(access, mem_pages)
                .and_then(|seen| tables::access::check_writes(access, pages.gfns, &seen));
            if let Err(what) = checked {
                return bad(format!("access log of interval {}: {what}", n - 1));
            }
        }
        if let Some(e) = events.iter().find(|e| e.interval != n - 1) {
            return bad(format!(
                "event at exit {} is labelled interval {}, expected {}",
                e.exit,
                e.interval,
                n - 1
            ));
        }
        if let Some(e) = events
            .iter()
            .find(|e| matches!(e.data, Some(EventData::Pages(_))))
        {
            return bad(format!(
                "the event at exit {} hands over page references; the writer takes event data \
                 as bytes and decides itself what to hold by reference",
                e.exit
            ));
        }
        if let Some(w) = events.windows(2).find(|w| w[0].exit >= w[1].exit) {
            return bad(format!(
                "event exits must be ascending: {} then {}",
                w[0].exit, w[1].exit
            ));
        }
        Ok(())
    }

    fn commit(
        &mut self,
        input: CheckpointInput<'_>,
        undo: &mut Undo,
    ) -> Result<CheckpointStats, FormatError> {
        let CheckpointInput {
            state,
            pages,
            interval,
            events,
            access,
            dump,
        } = input;
        let n = state.checkpoint;
        let dir = self.dir.clone();
        let mut stats = CheckpointStats::default();

        // 1. Dedup and append page contents: the checkpoint's pages, then the pages of event
        //    data held by reference (disk reads, which often hold what a checkpoint holds too).
        let base_slots = self.manifest.page_slots;
        let mut append = Append {
            next_slot: base_slots,
            flushed_slot: base_slots,
        };
        let mut rows = Vec::with_capacity(pages.gfns.len());
        self.append.clear();
        for (&gfn, page) in pages
            .gfns
            .iter()
            .zip(pages.contents.chunks_exact(PAGE_SIZE))
        {
            let (entry, new) = self.store_page(page, &mut append, undo)?;
            match (entry, new) {
                (None, _) => stats.zero_pages += 1,
                (Some(_), true) => stats.stored_pages += 1,
                (Some(_), false) => stats.dedup_pages += 1,
            }
            // Checkpoint 0 lists only non-zero pages: everything else is zero by definition.
            if entry.is_some() || n > 0 {
                rows.push(PageRow {
                    gfn,
                    slot: entry.map(|(slot, _)| slot),
                    hash: entry.map(|(_, hash)| hash),
                });
            }
        }
        let mut stored_events = Vec::with_capacity(events.len());
        let mut event_pages = Vec::new();
        for event in events {
            let whole_pages = match &event.data {
                Some(EventData::Bytes(bytes)) if held_by_reference(bytes) => bytes,
                _ => {
                    stored_events.push(event.clone());
                    continue;
                }
            };
            let mut entries = Vec::with_capacity(whole_pages.len() / PAGE_SIZE);
            for (k, page) in whole_pages.chunks_exact(PAGE_SIZE).enumerate() {
                let (entry, new) = self.store_page(page, &mut append, undo)?;
                stats.event_pages += 1;
                stats.event_stored_pages += u64::from(new);
                entries.push(entry);
                event_pages.push(EventPage {
                    exit: event.exit,
                    page: k as u64,
                    entry,
                });
            }
            stored_events.push(Event {
                data: Some(EventData::Pages(entries)),
                ..event_header(event)
            });
        }
        self.flush_append(append.flushed_slot)?;
        let next_slot = append.next_slot;
        if next_slot != base_slots {
            // fdatasync also persists the file size, which is what a grown file needs.
            self.pages
                .sync_data()
                .map_err(|e| FormatError::io(&self.pages_path, "fsync", e))?;
        }
        stats.bytes_written = (next_slot - base_slots) * PAGE;

        // The access log says where the interval's frames were at its start (checkpoint n-1,
        // the map before this checkpoint's pages go in): a sparse restore then needs no page map.
        let start_pages: Option<Vec<Option<(u64, u128)>>> =
            access.map(|log| log.iter().map(|a| self.map.entry(a.gfn)).collect());

        // 2. Page map (needed in memory for the next consolidation point).
        for row in &rows {
            let entry = row.slot.zip(row.hash);
            undo.map.push((row.gfn, self.map.set(row.gfn, entry)));
        }

        // 3. Tables. Each helper renames its file into place; directories are fsynced after.
        let mut dirs: Vec<&str> = Vec::new();
        let mut put = |undo: &mut Undo, path: PathBuf, sub: &'static str, size: u64| {
            undo.files.push(path);
            if !dirs.contains(&sub) {
                dirs.push(sub);
            }
            size
        };
        let path = layout::checkpoint_table(&dir, n);
        let size = tables::checkpoint::write(&path, n, &rows)?;
        stats.bytes_written += put(undo, path, layout::CHECKPOINTS_DIR, size);

        if n % self.manifest.consolidate_every == 0 {
            let path = layout::pagemap_table(&dir, n);
            let size = tables::pagemap::write(&path, n, &self.map)?;
            stats.bytes_written += put(undo, path, layout::PAGEMAPS_DIR, size);
        }

        let path = layout::state_table(&dir, n);
        let size = tables::state::write(&path, state)?;
        stats.bytes_written += put(undo, path, layout::STATE_DIR, size);

        if let Some(dump) = dump {
            let path = layout::dump_file(&dir, n);
            let size = write_atomic(&path, |file, path| write_sparse(file, path, dump))?;
            stats.bytes_written += put(undo, path, layout::DUMPS_DIR, size);
        }

        if let Some(mut rec) = interval {
            let i = n - 1;
            let path = layout::events_table(&dir, i);
            let size = tables::events::write(&path, &stored_events)?;
            stats.bytes_written += put(undo, path, layout::EVENTS_DIR, size);
            if !event_pages.is_empty() {
                let path = layout::eventpages_table(&dir, i);
                let size = tables::eventpages::write(&path, i, &event_pages)?;
                stats.bytes_written += put(undo, path, layout::EVENTPAGES_DIR, size);
            }

            if let (Some(access), Some(start)) = (access, &start_pages) {
                let path = layout::access_table(&dir, i);
                let size = tables::access::write(&path, i, access, start)?;
                stats.bytes_written += put(undo, path, layout::ACCESS_DIR, size);
            }

            rec.traced_frames = access.map_or(0, |a| a.len() as u64);
            rec.stored_pages = stats.stored_pages;
            rec.zero_pages = stats.zero_pages;
            rec.dedup_pages = stats.dedup_pages;
            rec.bytes_written = stats.bytes_written;
            rec.event_pages = stats.event_pages;
            rec.event_stored_pages = stats.event_stored_pages;
            let path = layout::interval_table(&dir, i);
            let size = tables::intervals::write(&path, &rec)?;
            put(undo, path, layout::INTERVALS_DIR, size);
        }
        for sub in dirs {
            sync_dir(&dir.join(sub))?;
        }

        // 4. The manifest: from here on checkpoint n exists.
        let mut next = self.manifest.clone();
        next.checkpoints = n + 1;
        next.page_slots = next_slot;
        undo.keep_disk = true;
        next.write(&dir)?;
        self.manifest = next;
        self.last_exit = Some(state.exit);
        Ok(stats)
    }

    /// Finds `page` in pages.bin or appends it: `(Some((slot, hash)), new)`, or `(None, _)` for
    /// a zero page (never stored).
    fn store_page(
        &mut self,
        page: &[u8],
        append: &mut Append,
        undo: &mut Undo,
    ) -> Result<(Option<(u64, u128)>, bool), FormatError> {
        if is_zero_page(page) {
            return Ok((None, false));
        }
        let hash = page_hash(page);
        if let Some(&slot) = self.dedup.get(&hash) {
            return Ok((Some((slot, hash)), false));
        }
        if self.append.len() + PAGE_SIZE > APPEND_BUFFER {
            append.flushed_slot = self.flush_append(append.flushed_slot)?;
        }
        let slot = append.next_slot;
        self.dedup.insert(hash, slot);
        undo.new_hashes.push(hash);
        self.append.extend_from_slice(page);
        append.next_slot += 1;
        Ok((Some((slot, hash)), true))
    }

    /// Writes the append buffer at slot `at` and empties it; returns the slot after it.
    fn flush_append(&mut self, at: u64) -> Result<u64, FormatError> {
        if self.append.is_empty() {
            return Ok(at);
        }
        self.pages
            .write_all_at(&self.append, at * PAGE)
            .map_err(|e| FormatError::io(&self.pages_path, "write", e))?;
        let next = at + (self.append.len() / PAGE_SIZE) as u64;
        self.append.clear();
        Ok(next)
    }

    fn rollback(&mut self, undo: Undo, base_slots: u64) {
        for hash in undo.new_hashes {
            self.dedup.remove(&hash);
        }
        for (gfn, old) in undo.map.into_iter().rev() {
            self.map.set(gfn, old);
        }
        self.append.clear();
        if undo.keep_disk {
            // A retry rewrites the same files and slots (slot assignment is deterministic given
            // the same pages), so keeping them is consistent either way.
            return;
        }
        // Best effort: these files are invisible to readers (the manifest does not count the
        // checkpoint), but they and the tail of pages.bin hold space a retry may need.
        for path in undo.files {
            let _ = std::fs::remove_file(path);
        }
        let _ = self.pages.set_len(base_slots * PAGE);
    }
}

/// Writes `bytes` to `file` leaving all-zero pages as holes: a debug dump is the whole guest
/// memory at every checkpoint, mostly zeros, and written densely a test's dumps of a 512 MiB
/// guest filled a CI disk. Readers see the holes as zeros.
fn write_sparse(file: &mut File, path: &Path, bytes: &[u8]) -> Result<(), FormatError> {
    let mut offset = 0;
    for chunk in bytes.chunks(PAGE_SIZE) {
        if !is_zero_page(chunk) {
            file.write_all_at(chunk, offset as u64)
                .map_err(|e| FormatError::io(path, "write", e))?;
        }
        offset += chunk.len();
    }
    file.set_len(bytes.len() as u64)
        .map_err(|e| FormatError::io(path, "set length", e))
}
