//! Page contents: hashing, the packed page store (pages.bin) and page maps.
//!
//! Why a packed file next to the Parquet tables rather than pages inside Parquet: a replay of
//! interval N needs only the pages of its working set, and must read them with I/O proportional
//! to that set. pages.bin is addressed by slot (`offset = slot * PAGE_SIZE`), so one `pread` per
//! run of consecutive slots fetches exactly the bytes needed, and the file can be mmapped. A
//! Parquet column of 4 KiB binaries would have to decode whole pages of the column chunk to get
//! at one value. The Parquet tables hold only the small, queryable part: which gfn maps to which
//! slot.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::storage::{Counters, RunStorage, StorageStats};
use crate::{FormatError, PAGE_SIZE};

const PAGE: u64 = PAGE_SIZE as u64;

/// xxh3-128 of a page's contents: the dedup key of pages.bin and the `hash` column of the
/// checkpoint tables (stored big-endian, i.e. `u128::to_be_bytes`, the canonical xxh3 byte order).
pub fn page_hash(page: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(page)
}

/// True if every byte of `page` is zero. Checked 64 bytes at a time so the compiler vectorizes
/// the OR-reduction; the early exit per chunk keeps non-zero pages cheap.
pub fn is_zero_page(page: &[u8]) -> bool {
    let mut chunks = page.chunks_exact(64);
    let whole = chunks
        .by_ref()
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0);
    whole && chunks.remainder().iter().all(|&b| b == 0)
}

/// pages.bin opened for reading: slot `s` is the [`PAGE_SIZE`] bytes at offset `s * PAGE_SIZE`,
/// read through the run's storage (a local file or an object store).
///
/// Bulk reads ([`PageStore::read_pages`], [`PageStore::read_pages_verified`]) read the slots
/// asked for in slot order, coalesced into ranges: consecutive slots, and slots separated by at
/// most the storage's [`RunStorage::coalesce_gap_pages`] unneeded ones, are one request (a
/// `pread` locally, a ranged GET remotely). So a restore reads what it loads and little else,
/// and [`PageStore::stats`] says how much that was.
#[derive(Debug)]
pub struct PageStore {
    storage: Arc<dyn RunStorage>,
    path: PathBuf,
    /// Readable slots: the committed ones that the file actually holds.
    slots: u64,
    /// Slots the manifest commits (`page_slots`); more than `slots` if the file was truncated.
    committed: u64,
    /// Reads of pages.bin through this store.
    counters: Counters,
    /// Buffer of coalesced reads, reused between bulk reads.
    scratch: Mutex<Vec<u8>>,
}

/// The longest range one request reads (2048 pages, 8 MiB): longer ones are split so that
/// several requests can be in flight.
const MAX_RANGE_PAGES: u64 = 2048;

impl PageStore {
    /// Opens `path` in `storage`. `committed_slots` is the manifest's `page_slots`: slots past
    /// it belong to an incomplete checkpoint and are not readable. A file shorter than that is
    /// not refused here (the pages before the damage are still useful); reading past its end is
    /// an error.
    pub(crate) fn open(
        storage: Arc<dyn RunStorage>,
        path: &Path,
        committed_slots: u64,
    ) -> Result<PageStore, FormatError> {
        let len = storage.size(path)?.ok_or_else(|| {
            FormatError::corrupt(path, "missing, but the manifest lists it as complete")
        })?;
        Ok(PageStore {
            storage,
            path: path.to_path_buf(),
            slots: (len / PAGE).min(committed_slots),
            committed: committed_slots,
            counters: Counters::default(),
            scratch: Mutex::new(Vec::new()),
        })
    }

    /// Number of readable slots.
    pub fn slots(&self) -> u64 {
        self.slots
    }

    /// Path of pages.bin.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Requests and bytes this store has read from pages.bin.
    pub fn stats(&self) -> StorageStats {
        self.counters.get()
    }

    /// Reads the page in `slot` into `out`.
    ///
    /// # Panics
    /// If `out.len() != PAGE_SIZE` (a caller bug, not a property of the file).
    pub fn read_page(&self, slot: u64, out: &mut [u8]) -> Result<(), FormatError> {
        assert_eq!(out.len(), PAGE_SIZE, "read_page needs a PAGE_SIZE buffer");
        self.read_run(slot, out)
    }

    /// Checks that slots `first..first + count` are readable: committed by the manifest and
    /// held by the file. An error names pages.bin and says which of the two failed.
    pub fn check_slots(&self, first_slot: u64, count: u64) -> Result<(), FormatError> {
        let end = first_slot.checked_add(count);
        if end.is_none_or(|end| end > self.slots) {
            let range = format!("slots {first_slot}..{}", first_slot.saturating_add(count));
            let what = if end.is_none_or(|end| end > self.committed) {
                format!(
                    "{range} are past the {} slots the manifest commits",
                    self.committed
                )
            } else {
                format!(
                    "{range} are past the end of the file, which holds {} of the {} committed \
                     slots (truncated?)",
                    self.slots, self.committed
                )
            };
            return Err(FormatError::corrupt(&self.path, what));
        }
        Ok(())
    }

    /// Reads `out.len() / PAGE_SIZE` consecutive slots starting at `first_slot` with one request.
    ///
    /// # Panics
    /// If `out.len()` is not a multiple of `PAGE_SIZE`.
    pub fn read_run(&self, first_slot: u64, out: &mut [u8]) -> Result<(), FormatError> {
        assert_eq!(
            out.len() % PAGE_SIZE,
            0,
            "read_run needs a multiple of PAGE_SIZE"
        );
        let count = (out.len() / PAGE_SIZE) as u64;
        self.check_slots(first_slot, count)?;
        let start = first_slot * PAGE;
        let range = start..start + count * PAGE;
        self.storage
            .read_ranges(&self.path, std::slice::from_ref(&range), out)?;
        self.counters.add(1, out.len() as u64);
        Ok(())
    }

    /// Reads the pages of `slots` into `out` (page i at `i * PAGE_SIZE`): in slot order,
    /// coalesced into ranges (see [`PageStore`]).
    ///
    /// # Panics
    /// If `out.len() != slots.len() * PAGE_SIZE`.
    pub fn read_pages(&self, slots: &[u64], out: &mut [u8]) -> Result<(), FormatError> {
        assert_eq!(out.len(), slots.len() * PAGE_SIZE, "read_pages buffer size");
        if slots.is_empty() {
            return Ok(());
        }
        for &slot in slots {
            self.check_slots(slot, 1)?;
        }
        let mut order: Vec<u32> = (0..slots.len() as u32).collect();
        order.sort_unstable_by_key(|&i| slots[i as usize]);
        let ranges = coalesce(
            order.iter().map(|&i| slots[i as usize]),
            self.storage.coalesce_gap_pages(),
        );
        let fetched: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        let mut scratch = self
            .scratch
            .lock()
            .map_err(|_| FormatError::invalid("a page reader thread panicked"))?;
        let bytes = (fetched * PAGE) as usize;
        if scratch.len() < bytes {
            *scratch = huge_page_buffer(bytes);
        }
        let byte_ranges: Vec<Range<u64>> = ranges
            .iter()
            .map(|r| r.start * PAGE..r.end * PAGE)
            .collect();
        self.storage
            .read_ranges(&self.path, &byte_ranges, &mut scratch[..bytes])?;
        self.counters.add(ranges.len() as u64, bytes as u64);
        // Scatter: walk the slots in order alongside the ranges.
        let mut range = 0;
        let mut base = 0u64; // scratch page index of ranges[range].start
        for &i in &order {
            let slot = slots[i as usize];
            while slot >= ranges[range].end {
                base += ranges[range].end - ranges[range].start;
                range += 1;
            }
            let from = ((base + slot - ranges[range].start) * PAGE) as usize;
            let to = i as usize * PAGE_SIZE;
            out[to..to + PAGE_SIZE].copy_from_slice(&scratch[from..from + PAGE_SIZE]);
        }
        Ok(())
    }

    /// [`PageStore::read_run`] straight into `out`, then checks each page in place: page k of the
    /// run (slot `first_slot + k`, read for guest frame `first_gfn + k`) must hash to
    /// `hashes[k]`. The way to restore a run of frames that is also a run of slots with one
    /// request and no copy besides the read itself.
    ///
    /// # Panics
    /// If `out.len() != hashes.len() * PAGE_SIZE`.
    pub fn read_run_verified(
        &self,
        first_slot: u64,
        hashes: &[u128],
        first_gfn: u64,
        out: &mut [u8],
    ) -> Result<(), FormatError> {
        assert_eq!(out.len(), hashes.len() * PAGE_SIZE, "read_run_verified");
        self.read_run(first_slot, out)?;
        for (k, (page, &hash)) in out.chunks_exact(PAGE_SIZE).zip(hashes).enumerate() {
            let k = k as u64;
            self.verify_page(first_slot + k, hash, first_gfn + k, page)?;
        }
        Ok(())
    }

    /// Counts `bytes` of pages.bin read in `requests` by a reader of its mapping
    /// ([`PageStore::local_file`]), so that [`PageStore::stats`] and the run's storage
    /// statistics (of which the page store's are a part) cover them too.
    pub fn count_mapped_read(&self, requests: u64, bytes: u64) {
        self.counters.add(requests, bytes);
        self.storage.count_mapped_read(requests, bytes);
    }

    /// pages.bin's open file when the run is a local directory (`None` in an object store), for
    /// a reader that maps it. Only slots [`PageStore::check_slots`] accepts may be read from
    /// such a mapping, and they must still be checked against their hashes.
    pub fn local_file(&self) -> Result<Option<Arc<std::fs::File>>, FormatError> {
        self.storage.local_file(&self.path)
    }

    /// [`PageStore::read_pages`], then checks each page against its expected hash: page i must
    /// hash ([`page_hash`]) to `hashes[i]`. `gfns[i]` is the guest frame the page is read for,
    /// only used to name it in the error. A mismatch is [`FormatError::Corrupt`] naming
    /// pages.bin, the slot and the gfn.
    ///
    /// # Panics
    /// If `slots`, `hashes` and `gfns` differ in length or `out.len() != slots.len() * PAGE_SIZE`.
    pub fn read_pages_verified(
        &self,
        slots: &[u64],
        hashes: &[u128],
        gfns: &[u64],
        out: &mut [u8],
    ) -> Result<(), FormatError> {
        assert!(
            hashes.len() == slots.len() && gfns.len() == slots.len(),
            "read_pages_verified: {} slots, {} hashes, {} gfns",
            slots.len(),
            hashes.len(),
            gfns.len()
        );
        self.read_pages(slots, out)?;
        for (i, page) in out.chunks_exact(PAGE_SIZE).enumerate() {
            self.verify_page(slots[i], hashes[i], gfns[i], page)?;
        }
        Ok(())
    }

    /// [`PageStore::read_page`], then checks that the page hashes to `hash`; see
    /// [`PageStore::read_pages_verified`].
    ///
    /// # Panics
    /// If `out.len() != PAGE_SIZE`.
    pub fn read_page_verified(
        &self,
        slot: u64,
        hash: u128,
        gfn: u64,
        out: &mut [u8],
    ) -> Result<(), FormatError> {
        self.read_page(slot, out)?;
        self.verify_page(slot, hash, gfn, out)
    }

    /// Reads the data of the event at `exit` held by reference (the entries of an
    /// [`crate::EventData::Pages`]) into `out`: page k from its slot, checked against its hash,
    /// or zeros for a `None` entry. The slots are read in one coalesced batch, as a restore
    /// reads them. A mismatch is [`FormatError::Corrupt`] naming pages.bin, the slot and the
    /// event's page.
    ///
    /// # Panics
    /// If `out.len() != pages.len() * PAGE_SIZE`.
    pub fn read_event_pages(
        &self,
        exit: u64,
        pages: &[Option<(u64, u128)>],
        out: &mut [u8],
    ) -> Result<(), FormatError> {
        assert_eq!(out.len(), pages.len() * PAGE_SIZE, "read_event_pages");
        let stored: Vec<(usize, u64, u128)> = pages
            .iter()
            .enumerate()
            .filter_map(|(k, e)| e.map(|(slot, hash)| (k, slot, hash)))
            .collect();
        let slots: Vec<u64> = stored.iter().map(|&(_, slot, _)| slot).collect();
        if stored.len() == pages.len() {
            // No zero page, the common case: straight into `out`.
            self.read_pages(&slots, out)?;
        } else {
            let mut read = vec![0u8; slots.len() * PAGE_SIZE];
            self.read_pages(&slots, &mut read)?;
            out.fill(0);
            for (page, &(k, _, _)) in read.chunks_exact(PAGE_SIZE).zip(&stored) {
                out[k * PAGE_SIZE..(k + 1) * PAGE_SIZE].copy_from_slice(page);
            }
        }
        for &(k, slot, hash) in &stored {
            let found = page_hash(&out[k * PAGE_SIZE..(k + 1) * PAGE_SIZE]);
            if found != hash {
                return Err(FormatError::corrupt(
                    &self.path,
                    format!(
                        "slot {slot} (page {k} of the data of exit {exit}) has hash \
                         {found:032x}, the event pages table says {hash:032x}"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks that `page`, read from `slot` for `gfn` (e.g. through an mmap of
    /// [`PageStore::file`]), hashes to `hash`, the hash the page tables give it.
    #[inline]
    pub fn verify_page(
        &self,
        slot: u64,
        hash: u128,
        gfn: u64,
        page: &[u8],
    ) -> Result<(), FormatError> {
        let found = page_hash(page);
        if found == hash {
            Ok(())
        } else {
            Err(self.hash_mismatch(slot, gfn, found, hash))
        }
    }

    #[cold]
    fn hash_mismatch(&self, slot: u64, gfn: u64, found: u128, expected: u128) -> FormatError {
        FormatError::corrupt(
            &self.path,
            format!(
                "slot {slot} (gfn {gfn:#x}) has hash {found:032x}, the page tables say \
                 {expected:032x}"
            ),
        )
    }
}

/// A zeroed buffer of `bytes`, backed by transparent huge pages where the kernel allows: first
/// touches of fresh memory cost ~10 µs per 4 KiB page on the hosts measured (a virtual
/// machine), about three times less per byte with huge pages, and a restore's reads land in
/// fresh memory.
fn huge_page_buffer(bytes: usize) -> Vec<u8> {
    let mut buffer: Vec<u8> = Vec::with_capacity(bytes);
    let skip = buffer.as_ptr().align_offset(PAGE_SIZE);
    let len = buffer.capacity().saturating_sub(skip) & !(PAGE_SIZE - 1);
    if len > 0 {
        // SAFETY: advice on the buffer's own allocation (its page-aligned part), not touched
        // yet; it changes no contents. A refusal only loses the speed-up.
        unsafe {
            libc::madvise(
                buffer.as_mut_ptr().add(skip).cast(),
                len,
                libc::MADV_HUGEPAGE,
            );
        }
    }
    buffer.resize(bytes, 0);
    buffer
}

/// Ranges of slots (end exclusive) covering the ascending `slots`: a gap of at most `gap`
/// unneeded slots joins two ranges, and no range is longer than [`MAX_RANGE_PAGES`].
fn coalesce(slots: impl Iterator<Item = u64>, gap: u64) -> Vec<Range<u64>> {
    let mut ranges: Vec<Range<u64>> = Vec::new();
    for slot in slots {
        match ranges.last_mut() {
            Some(last) if slot < last.end => {} // a duplicate
            Some(last) if slot - last.end <= gap && slot + 1 - last.start <= MAX_RANGE_PAGES => {
                last.end = slot + 1
            }
            _ => ranges.push(slot..slot + 1),
        }
    }
    ranges
}

/// Sentinel for "this page is zero" in the dense map.
const ZERO: u64 = u64::MAX;

/// gfn → slot and content hash of every non-zero page at one checkpoint.
///
/// Dense: per guest page one u64 slot (`u64::MAX` meaning zero) and, in a parallel vector, its
/// u128 xxh3 hash (0 for a zero page, never read): 24 bytes per guest page, 96 MiB for a 4 GiB
/// guest. Lookups are a single index, overlays are a single store, and iteration in gfn order
/// is a linear scan, which beats a sorted vector or a hash map for the sizes here (every guest
/// page is a candidate key). Two vectors rather than one of pairs because a `(u64, u128)` pads
/// to 32 bytes, and `get`/`runs` only touch the slots.
/// A set of guest frames, one bit per frame of guest memory.
pub(crate) struct GfnSet {
    words: Vec<u64>,
}

impl GfnSet {
    /// An empty set for gfns below `mem_pages`.
    pub(crate) fn new(mem_pages: u64) -> GfnSet {
        GfnSet {
            words: vec![0; mem_pages.div_ceil(64) as usize],
        }
    }

    fn locate(gfn: u64) -> (usize, u64) {
        ((gfn / 64) as usize, 1 << (gfn % 64))
    }

    /// Adds `gfn`, which the caller has checked is below `mem_pages`; false if it was already
    /// in the set.
    pub(crate) fn insert(&mut self, gfn: u64) -> bool {
        let (word, bit) = Self::locate(gfn);
        let fresh = self.words[word] & bit == 0;
        self.words[word] |= bit;
        fresh
    }

    /// Whether `gfn` is in the set (false for any gfn past `mem_pages`).
    pub(crate) fn contains(&self, gfn: u64) -> bool {
        let (word, bit) = Self::locate(gfn);
        self.words.get(word).is_some_and(|w| w & bit != 0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageMap {
    slots: Vec<u64>,
    hashes: Vec<u128>,
    len: usize,
}

impl PageMap {
    /// An all-zero map of `mem_pages` pages.
    pub fn new(mem_pages: u64) -> PageMap {
        PageMap {
            slots: vec![ZERO; mem_pages as usize],
            hashes: vec![0; mem_pages as usize],
            len: 0,
        }
    }

    /// The slot of `gfn`, or `None` if the page is zero (or beyond guest memory).
    #[inline]
    pub fn get(&self, gfn: u64) -> Option<u64> {
        match self.slots.get(usize::try_from(gfn).ok()?) {
            Some(&s) if s != ZERO => Some(s),
            _ => None,
        }
    }

    /// The xxh3-128 hash of `gfn`'s contents (see [`page_hash`]), or `None` if the page is zero
    /// (or beyond guest memory).
    #[inline]
    pub fn hash(&self, gfn: u64) -> Option<u128> {
        self.entry(gfn).map(|(_, h)| h)
    }

    /// `(slot, hash)` of `gfn`, or `None` if the page is zero (or beyond guest memory).
    #[inline]
    pub fn entry(&self, gfn: u64) -> Option<(u64, u128)> {
        let i = usize::try_from(gfn).ok()?;
        match self.slots.get(i) {
            Some(&s) if s != ZERO => Some((s, self.hashes[i])),
            _ => None,
        }
    }

    /// Number of non-zero pages.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if every page is zero.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of guest pages the map covers.
    pub fn mem_pages(&self) -> u64 {
        self.slots.len() as u64
    }

    /// `(gfn, slot)` of every non-zero page, gfns ascending.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, &s)| s != ZERO)
            .map(|(g, &s)| (g as u64, s))
    }

    /// `(gfn, slot, hash)` of every non-zero page, gfns ascending.
    pub fn entries(&self) -> impl Iterator<Item = (u64, u64, u128)> + '_ {
        self.slots
            .iter()
            .zip(&self.hashes)
            .enumerate()
            .filter(|(_, (&s, _))| s != ZERO)
            .map(|(g, (&s, &h))| (g as u64, s, h))
    }

    /// Maximal runs where both gfn and slot advance by one: `(first gfn, first slot, pages)`.
    /// Each run can be restored with one `pread` straight into guest memory.
    pub fn runs(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        let mut it = self.iter().peekable();
        std::iter::from_fn(move || {
            let (gfn, slot) = it.next()?;
            let mut n = 1u64;
            while it
                .next_if(|&(g, s)| g == gfn + n && s == slot + n)
                .is_some()
            {
                n += 1;
            }
            Some((gfn, slot, n))
        })
    }

    /// Hashes of the `pages` pages from `gfn` on, e.g. of a run from [`PageMap::runs`] (the
    /// entries of zero pages among them are 0). The range must be inside the map.
    pub fn run_hashes(&self, gfn: u64, pages: u64) -> &[u128] {
        &self.hashes[gfn as usize..(gfn + pages) as usize]
    }

    /// Sets `gfn` to `(slot, hash)` (`None` = zero), returning the previous entry. `gfn` must be
    /// below [`PageMap::mem_pages`]; callers validate it first.
    pub(crate) fn set(&mut self, gfn: u64, entry: Option<(u64, u128)>) -> Option<(u64, u128)> {
        let i = gfn as usize;
        let old = (self.slots[i] != ZERO).then(|| (self.slots[i], self.hashes[i]));
        // A zero page's hash is reset too, so equal maps compare equal.
        let (slot, hash) = entry.unwrap_or((ZERO, 0));
        self.slots[i] = slot;
        self.hashes[i] = hash;
        match (old.is_some(), entry.is_some()) {
            (false, true) => self.len += 1,
            (true, false) => self.len -= 1,
            _ => {}
        }
        old
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        let mut p = vec![0u8; PAGE_SIZE];
        assert!(is_zero_page(&p));
        p[4095] = 1;
        assert!(!is_zero_page(&p));
        p[4095] = 0;
        p[0] = 0x80;
        assert!(!is_zero_page(&p));
        assert!(!is_zero_page(&[0, 0, 1]));
    }

    #[test]
    fn coalescing_joins_small_gaps_and_bounds_ranges() {
        // A gap of two slots (4, 5) joins; three (7..=9) does not; duplicates are one slot.
        let r = coalesce([1, 2, 2, 3, 6, 10, 20].into_iter(), 2);
        assert_eq!(r, vec![1..7, 10..11, 20..21]);
        assert_eq!(coalesce([1, 2, 6].into_iter(), 2), vec![1..3, 6..7]);
        let r = coalesce([1, 3, 6].into_iter(), 2);
        assert_eq!(r, vec![1..7]);
        assert_eq!(coalesce([5, 6].into_iter(), 0), vec![5..7]);
        let long = coalesce(0..MAX_RANGE_PAGES + 1, 0);
        assert_eq!(
            long,
            vec![0..MAX_RANGE_PAGES, MAX_RANGE_PAGES..MAX_RANGE_PAGES + 1]
        );
    }

    #[test]
    fn page_map_runs_and_len() {
        let mut m = PageMap::new(16);
        for (g, s) in [(1, 10), (2, 11), (3, 12), (5, 13), (6, 2), (15, 3)] {
            m.set(g, Some((s, u128::from(s) << 64 | 0xab)));
        }
        assert_eq!(m.len(), 6);
        assert_eq!(
            m.runs().collect::<Vec<_>>(),
            vec![(1, 10, 3), (5, 13, 1), (6, 2, 1), (15, 3, 1)]
        );
        assert_eq!(m.set(2, None), Some((11, 11 << 64 | 0xab)));
        assert_eq!(m.set(2, None), None);
        assert_eq!(m.len(), 5);
        assert_eq!(m.get(2), None);
        assert_eq!(m.hash(2), None);
        assert_eq!(m.get(3), Some(12));
        assert_eq!(m.hash(3), Some(12 << 64 | 0xab));
        assert_eq!(m.entry(15), Some((3, 3 << 64 | 0xab)));
        assert_eq!(m.get(1 << 40), None);
        assert_eq!(m.entry(1 << 40), None);
        assert_eq!(
            m.entries()
                .map(|(g, s, h)| (g, s, h as u8))
                .collect::<Vec<_>>(),
            vec![
                (1, 10, 0xab),
                (3, 12, 0xab),
                (5, 13, 0xab),
                (6, 2, 0xab),
                (15, 3, 0xab)
            ]
        );
        // Clearing resets the hash: a map built the other way round is equal.
        let mut other = m.clone();
        other.set(4, Some((9, 1)));
        other.set(4, None);
        assert_eq!(other, m);
    }
}
