//! Where restored pages come from: a checkpoint's page map and the run's page store.

use simuboost_format::{FormatError, PageMap, PageStore, PartialPageMap};
use simuboost_vmm::devices::replay::StoredPages;

/// The page map of the checkpoint being restored: whole (full and lazy restores, which need
/// every page's entry), or read in part (sparse restores: the row groups of the working set,
/// the rest on demand).
pub enum PageLookup {
    /// Every entry, read up front.
    Whole(PageMap),
    /// The entries a restore asked for, and any other read when first asked.
    Partial(PartialPageMap),
}

/// Where page contents come from: the page map of the checkpoint being restored and pages.bin
/// (a local file or an object in object storage).
///
/// Bulk loads read pages.bin through [`PageStore::read_pages_verified`]: the slots a load needs,
/// in slot order, coalesced into few reads (`pread`s locally, ranged GETs remotely), so a
/// restore reads what it loads and little else. (An mmap of pages.bin, as before, let kernel
/// readahead pull in several times the working set.) A miss reads its one page.
pub struct PageSource {
    /// gfn → slot and hash as of the checkpoint.
    pub map: PageLookup,
    /// Frames whose entries are known without the map, ascending: the access log's frames,
    /// whose start pages are the map's entries for them (docs/FORMAT.md).
    known_gfns: Vec<u64>,
    /// Their entries, in the same order.
    known_entries: Vec<Option<(u64, u128)>>,
    /// pages.bin.
    pub store: PageStore,
}

impl PageSource {
    /// Wraps a checkpoint's page map and the run's page store.
    pub fn new(map: PageLookup, store: PageStore) -> PageSource {
        PageSource {
            map,
            known_gfns: Vec::new(),
            known_entries: Vec::new(),
            store,
        }
    }

    /// Answers for `frames` from `entries` (one per frame) from now on, before the map.
    pub fn set_known(&mut self, frames: &[u64], entries: Vec<Option<(u64, u128)>>) {
        // Sorted as (gfn, index) pairs, a quarter the size of (gfn, entry): a sparse restore
        // does this for every frame of its working set before it loads any.
        let mut order: Vec<(u64, usize)> = frames.iter().copied().zip(0..entries.len()).collect();
        order.sort_unstable();
        self.known_gfns = order.iter().map(|&(gfn, _)| gfn).collect();
        self.known_entries = order.iter().map(|&(_, i)| entries[i]).collect();
    }

    /// Whether `gfn`'s entry is known without the map.
    pub fn knows(&self, gfn: u64) -> bool {
        self.known_entry(gfn).is_some()
    }

    fn known_entry(&self, gfn: u64) -> Option<Option<(u64, u128)>> {
        self.known_gfns
            .binary_search(&gfn)
            .ok()
            .map(|i| self.known_entries[i])
    }

    /// `(slot, hash)` of `gfn` as of the checkpoint, `None` for a zero page. A partial map
    /// reads the part of the map that holds `gfn` if it has not yet.
    pub fn entry(&self, gfn: u64) -> Result<Option<(u64, u128)>, FormatError> {
        if let Some(entry) = self.known_entry(gfn) {
            return Ok(entry);
        }
        match &self.map {
            PageLookup::Whole(map) => Ok(map.entry(gfn)),
            PageLookup::Partial(map) => map.entry(gfn),
        }
    }

    /// The entries of `gfns`, as [`PageSource::entry`] gives them one by one: the known ones
    /// first, then the rest from the map together.
    pub fn entries(&self, gfns: &[u64]) -> Result<Vec<Option<(u64, u128)>>, FormatError> {
        let mut entries = Vec::with_capacity(gfns.len());
        // Those not known: where they go in `entries`, and their frames.
        let (mut unknown_at, mut unknown) = (Vec::new(), Vec::new());
        for &gfn in gfns {
            match self.known_entry(gfn) {
                Some(entry) => entries.push(entry),
                None => {
                    unknown_at.push(entries.len());
                    unknown.push(gfn);
                    entries.push(None);
                }
            }
        }
        if !unknown.is_empty() {
            let from_map = match &self.map {
                PageLookup::Whole(map) => unknown.iter().map(|&gfn| map.entry(gfn)).collect(),
                PageLookup::Partial(map) => map.entries(&unknown)?,
            };
            for (at, entry) in unknown_at.into_iter().zip(from_map) {
                entries[at] = entry;
            }
        }
        Ok(entries)
    }

    /// The whole map, if it was read whole.
    pub fn whole(&self) -> Option<&PageMap> {
        match &self.map {
            PageLookup::Whole(map) => Some(map),
            PageLookup::Partial(_) => None,
        }
    }

    /// Copies the page in `slot` (which the page tables say hashes to `hash`, for `gfn`) into
    /// `out`, verified.
    pub(super) fn read_page(
        &self,
        slot: u64,
        hash: u128,
        gfn: u64,
        out: &mut [u8],
    ) -> Result<(), FormatError> {
        self.store.read_page_verified(slot, hash, gfn, out)
    }
}

/// The data of events a run holds by reference (disk reads) comes from the same pages.bin.
impl StoredPages for PageSource {
    fn read(
        &self,
        exit: u64,
        pages: &[Option<(u64, u128)>],
        out: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.store.read_event_pages(exit, pages, out)?)
    }
}
