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
    /// Entries known without the map, sorted by gfn: the access log's start pages, which are
    /// the map's entries for the log's frames (docs/FORMAT.md).
    known: Vec<(u64, Option<(u64, u128)>)>,
    /// pages.bin.
    pub store: PageStore,
}

impl PageSource {
    /// Wraps a checkpoint's page map and the run's page store.
    pub fn new(map: PageLookup, store: PageStore) -> PageSource {
        PageSource {
            map,
            known: Vec::new(),
            store,
        }
    }

    /// Answers for `frames` from `entries` (one per frame) from now on, before the map.
    pub fn set_known(&mut self, frames: &[u64], entries: Vec<Option<(u64, u128)>>) {
        self.known = frames.iter().copied().zip(entries).collect();
        self.known.sort_unstable_by_key(|&(gfn, _)| gfn);
    }

    /// Whether `gfn`'s entry is known without the map.
    pub fn knows(&self, gfn: u64) -> bool {
        self.known_entry(gfn).is_some()
    }

    fn known_entry(&self, gfn: u64) -> Option<Option<(u64, u128)>> {
        self.known
            .binary_search_by_key(&gfn, |&(g, _)| g)
            .ok()
            .map(|i| self.known[i].1)
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
        let known: Vec<Option<Option<(u64, u128)>>> =
            gfns.iter().map(|&gfn| self.known_entry(gfn)).collect();
        let rest: Vec<u64> = gfns
            .iter()
            .zip(&known)
            .filter(|(_, k)| k.is_none())
            .map(|(&gfn, _)| gfn)
            .collect();
        let mut from_map = match &self.map {
            PageLookup::Whole(map) => rest.iter().map(|&gfn| map.entry(gfn)).collect(),
            PageLookup::Partial(map) => map.entries(&rest)?,
        }
        .into_iter();
        Ok(known
            .into_iter()
            .map(|k| k.unwrap_or_else(|| from_map.next().flatten()))
            .collect())
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
