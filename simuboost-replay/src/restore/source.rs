//! Where restored pages come from: a checkpoint's page map and the run's page store.

use simuboost_format::{FormatError, PageMap, PageStore, PAGE_SIZE};

/// Where page contents come from: the page map of the checkpoint being restored and pages.bin.
pub struct PageSource {
    /// gfn → slot and hash as of the checkpoint.
    pub map: PageMap,
    /// pages.bin.
    pub store: PageStore,
    /// pages.bin mapped read-only (its readable slots), when it could be: bulk loads gather
    /// pages from the page cache with memcpy instead of one `pread` per run of slots (dedup and
    /// write order scatter the slots of consecutive frames, so runs are short).
    pub(super) mapped: Option<memmap2::Mmap>,
}

impl PageSource {
    /// Wraps a checkpoint's page map and the run's page store.
    pub fn new(map: PageMap, store: PageStore) -> PageSource {
        let len = store.slots() as usize * PAGE_SIZE;
        let mapped = (len > 0)
            .then(|| {
                // SAFETY: pages.bin is append-only and slots below `store.slots()` never
                // change (FORMAT.md); only that prefix is mapped, read-only.
                unsafe { memmap2::MmapOptions::new().len(len).map(store.file()) }
            })
            .and_then(|m| {
                m.map_err(
                    |e| tracing::debug!(error = %e, "cannot mmap pages.bin; reading it with pread"),
                )
                .ok()
            });
        PageSource { map, store, mapped }
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
        let start = slot as usize * PAGE_SIZE;
        match self
            .mapped
            .as_ref()
            .and_then(|m| m.get(start..start + PAGE_SIZE))
        {
            Some(page) => {
                // Copy first, then hash the copy while it is in cache.
                out.copy_from_slice(page);
                self.store.verify_page(slot, hash, gfn, out)
            }
            // Not mapped, or past the readable slots: the store reads it or names the problem.
            None => self.store.read_page_verified(slot, hash, gfn, out),
        }
    }
}
