//! Where restored pages come from: a checkpoint's page map and the run's page store.

use simuboost_format::{FormatError, PageMap, PageStore};

/// Where page contents come from: the page map of the checkpoint being restored and pages.bin
/// (a local file or an object in object storage).
///
/// Bulk loads read pages.bin through [`PageStore::read_pages_verified`]: the slots a load needs,
/// in slot order, coalesced into few reads (`pread`s locally, ranged GETs remotely), so a
/// restore reads what it loads and little else. (An mmap of pages.bin, as before, let kernel
/// readahead pull in several times the working set.) A miss reads its one page.
pub struct PageSource {
    /// gfn → slot and hash as of the checkpoint.
    pub map: PageMap,
    /// pages.bin.
    pub store: PageStore,
}

impl PageSource {
    /// Wraps a checkpoint's page map and the run's page store.
    pub fn new(map: PageMap, store: PageStore) -> PageSource {
        PageSource { map, store }
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
