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
    /// pages.bin.
    pub store: PageStore,
}

impl PageSource {
    /// Wraps a checkpoint's page map and the run's page store.
    pub fn new(map: PageLookup, store: PageStore) -> PageSource {
        PageSource { map, store }
    }

    /// `(slot, hash)` of `gfn` as of the checkpoint, `None` for a zero page. A partial map
    /// reads the part of the map that holds `gfn` if it has not yet.
    pub fn entry(&self, gfn: u64) -> Result<Option<(u64, u128)>, FormatError> {
        match &self.map {
            PageLookup::Whole(map) => Ok(map.entry(gfn)),
            PageLookup::Partial(map) => map.entry(gfn),
        }
    }

    /// The entries of `gfns`, as [`PageSource::entry`] gives them one by one.
    pub fn entries(&self, gfns: &[u64]) -> Result<Vec<Option<(u64, u128)>>, FormatError> {
        match &self.map {
            PageLookup::Whole(map) => Ok(gfns.iter().map(|&gfn| map.entry(gfn)).collect()),
            PageLookup::Partial(map) => map.entries(gfns),
        }
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
