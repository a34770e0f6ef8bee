//! The page map as of a checkpoint, read only where it is asked: [`PartialPageMap`].

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::storage::RunStorage;
use crate::tables::pruned::{decode_pending, decode_tails, open_tail, Kind, PrunedTable};
use crate::tables::PageLimits;
use crate::{FormatError, PAGE_SIZE};

/// The columns read: the same four in page tables and page maps.
const NAMES: &[&str] = &["checkpoint", "gfn", "slot", "hash"];

/// The page map as of checkpoint N (the same answers as [`crate::Run::page_map`]), of which
/// only the parts that are asked for are read: the consolidated map and the page tables after
/// it are opened by their footers when first asked anything, [`PartialPageMap::load`] reads the
/// row groups that can hold a set of frames (one read per file), and [`PartialPageMap::entry`]
/// reads, on demand, the groups of a frame not loaded yet. So a sparse restore reads the part
/// of the map its working set needs, however large the written part of guest memory has grown,
/// and a miss still finds every frame's slot and hash.
#[derive(Debug)]
pub struct PartialPageMap {
    storage: Arc<dyn RunStorage>,
    limits: PageLimits,
    /// The files (path, checkpoint, whether it is the consolidated map).
    files: Vec<(PathBuf, u64, bool)>,
    /// Their tables, in the same order, once opened: a restore that finds its working set in
    /// the access log may never ask the map anything.
    tables: Mutex<Option<Vec<PrunedTable>>>,
}

/// How much of a [`PartialPageMap`] has been read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartialStats {
    /// Files (the consolidated map and the page tables after it).
    pub files: usize,
    /// Row groups of those files (a file without usable statistics counts as one).
    pub row_groups: usize,
    /// Of those, read and decoded.
    pub loaded: usize,
}

impl PartialPageMap {
    /// The map made of `files` (path, checkpoint, whether it is the consolidated map), read
    /// nothing of yet.
    pub(crate) fn open(
        storage: Arc<dyn RunStorage>,
        files: Vec<(PathBuf, u64, bool)>,
        limits: PageLimits,
    ) -> PartialPageMap {
        PartialPageMap {
            storage,
            limits,
            files,
            tables: Mutex::new(None),
        }
    }

    /// Runs `f` on the tables, opening them (reading their footers) first if need be.
    fn with_tables<R>(
        &self,
        f: impl FnOnce(&mut Vec<PrunedTable>) -> Result<R, FormatError>,
    ) -> Result<R, FormatError> {
        let mut guard = self
            .tables
            .lock()
            .map_err(|_| FormatError::invalid("a page map reader thread panicked"))?;
        let tables = match &mut *guard {
            Some(tables) => tables,
            none => none.insert(self.read_footers()?),
        };
        f(tables)
    }

    fn read_footers(&self) -> Result<Vec<PrunedTable>, FormatError> {
        let tails = self
            .files
            .iter()
            .map(|(path, checkpoint, consolidated)| {
                let kind = if *consolidated {
                    Kind::Consolidated
                } else {
                    Kind::Overlay
                };
                open_tail(self.storage.as_ref(), path, *checkpoint, kind)
            })
            .collect::<Result<Vec<_>, _>>()?;
        decode_tails(tails, NAMES, self.limits)
    }

    /// Number of guest pages the map covers.
    pub fn mem_pages(&self) -> u64 {
        self.limits.mem_pages
    }

    /// Reads the row groups that can hold any of `gfns` (any order; gfns past guest memory are
    /// ignored), with one read per file.
    pub fn load(&self, gfns: &[u64]) -> Result<(), FormatError> {
        let mut sorted: Vec<u64> = gfns
            .iter()
            .copied()
            .filter(|&g| g < self.limits.mem_pages)
            .collect();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.is_empty() {
            return Ok(());
        }
        self.with_tables(|tables| self.load_locked(tables, &sorted))
    }

    fn load_locked(&self, tables: &mut [PrunedTable], gfns: &[u64]) -> Result<(), FormatError> {
        let gap = self.storage.coalesce_gap_pages() * PAGE_SIZE as u64;
        let mut pending = Vec::new();
        for (i, table) in tables.iter_mut().enumerate() {
            let missing = table.missing(gfns);
            if let Some(p) = table.fetch(i, missing, self.storage.as_ref(), gap)? {
                pending.push(p);
            }
        }
        for decoded in decode_pending(pending, NAMES, self.limits)? {
            let table = decoded.table;
            tables[table].store(decoded);
        }
        Ok(())
    }

    /// `(slot, hash)` of `gfn` as of the checkpoint, or `None` if the page is zero (or beyond
    /// guest memory). Reads the row groups that can hold it if they are not loaded yet.
    pub fn entry(&self, gfn: u64) -> Result<Option<(u64, u128)>, FormatError> {
        if gfn >= self.limits.mem_pages {
            return Ok(None);
        }
        self.with_tables(|tables| self.entry_locked(tables, gfn))
    }

    fn entry_locked(
        &self,
        tables: &mut [PrunedTable],
        gfn: u64,
    ) -> Result<Option<(u64, u128)>, FormatError> {
        // On demand, a frame's row groups are read whole: misses and verification ask for
        // frames near each other, answered then without decoding the groups again.
        let gap = self.storage.coalesce_gap_pages() * PAGE_SIZE as u64;
        let mut pending = Vec::new();
        for (i, table) in tables.iter_mut().enumerate() {
            if let Some(wanted) = table.missing_whole(gfn) {
                if let Some(p) = table.fetch(i, vec![wanted], self.storage.as_ref(), gap)? {
                    pending.push(p);
                }
            }
        }
        for decoded in decode_pending(pending, NAMES, self.limits)? {
            let table = decoded.table;
            tables[table].store(decoded);
        }
        // The newest table with a row for the frame decides, as overlaying them in order would.
        for table in tables.iter().rev() {
            if let Some(entry) = table.lookup(gfn)? {
                return Ok(entry);
            }
        }
        Ok(None)
    }

    /// The entries of `gfns` (`(slot, hash)`, `None` for a zero page or one beyond guest
    /// memory), reading the row groups that hold them if they are not loaded yet: the bulk
    /// form of [`PartialPageMap::entry`], a merge per table instead of a search per frame in
    /// every table (60 k frames over 16 tables: ~60 ms as look-ups one by one).
    pub fn entries(&self, gfns: &[u64]) -> Result<Vec<Option<(u64, u128)>>, FormatError> {
        let ascending = gfns.windows(2).all(|w| w[0] < w[1]);
        if !ascending {
            return gfns.iter().map(|&gfn| self.entry(gfn)).collect();
        }
        let inside = gfns.partition_point(|&g| g < self.limits.mem_pages);
        let mut found: Vec<Option<Option<(u64, u128)>>> = vec![None; gfns.len()];
        if inside > 0 {
            self.with_tables(|tables| {
                self.load_locked(tables, &gfns[..inside])?;
                for table in tables.iter() {
                    table.overlay(&gfns[..inside], &mut found[..inside])?;
                }
                Ok(())
            })?;
        }
        Ok(found.into_iter().map(Option::flatten).collect())
    }

    /// How much has been read (no row groups while the files are not opened yet).
    pub fn stats(&self) -> PartialStats {
        let mut stats = PartialStats {
            files: self.files.len(),
            ..PartialStats::default()
        };
        let Ok(guard) = self.tables.lock() else {
            return stats;
        };
        for t in guard.iter().flatten() {
            let (all, loaded) = t.spans();
            stats.row_groups += all;
            stats.loaded += loaded;
        }
        stats
    }
}
