//! A dense restore: every non-zero page of the checkpoint installed up front, and no miss
//! handler afterwards.
//!
//! A full restore leaves nothing to serve on demand (every frame is either loaded or zero), so
//! userfaultfd is only the means to install pages: registered for the load, unregistered after
//! it, so that the frames left out (zero pages) fault in as fresh anonymous memory, which reads
//! as zeros. For a local run the pages are copied by `UFFDIO_COPY` straight from a read-only
//! mapping of pages.bin: one copy from the page cache into guest memory, no staging buffer and
//! no zeroing of pages that are overwritten anyway (anonymous memory first touched, or huge
//! pages, are zeroed by the kernel first; on this kind of host that costs as much as the copy).
//! Measured on a 1 GiB `stream` checkpoint (640 MB non-zero): this load took a median 0.91 s
//! against 1.74 s for the staged copy and 1.51 s for `pread` into huge-page memory (machine
//! loaded, 6 rotations of the three). Each run's pages are checked against their hashes in
//! guest memory, after the copy, so what is checked is what the guest sees. A run in object
//! storage has no file to map: its pages are read as in a sparse restore (coalesced requests
//! into a staging buffer), then installed the same way.

use std::sync::Arc;

use memmap2::{Mmap, MmapOptions};

use simuboost_format::{PageMap, PAGE_SIZE};

use super::uffd::install_copy;
use super::{InstalledFrames, LoadStats, PageSource, RestoreError, UffdMemory, PAGE};

/// Threads that install at most: the copies are from the page cache, so more threads than
/// cores only contend.
const MAX_THREADS: usize = 8;

/// Unneeded pages of pages.bin a sparse load asks the kernel to read rather than split a
/// read-ahead request in two (32 pages: 128 KiB).
const WILLNEED_GAP_PAGES: u64 = 32;

/// Pages copied from the mapping of pages.bin at once (2 MiB), then dropped from it.
const PIECE_PAGES: u64 = 512;

/// The span of pages.bin an installer copies from before it drops what it mapped, however
/// little it copied (16 MiB). Each fault on the mapping maps up to 16 neighbouring pages that
/// are in the page cache (fault-around), so a sparse load's scattered pages mapped ~16 times
/// their size until the next drop: replaying interval 4 of a 1 GiB `build` run (3.6 k non-zero
/// pages), the replayer peaked at 99–107 MiB of file-backed memory, 117–125 MiB resident in
/// all, before the guest had run. With this bound: 26–34 MiB and 49–53 MiB; the load took
/// 12.5 against 11.95 ms (median of 8, alternating). 4 MiB saved no more memory and cost
/// 2.4 ms.
const DROP_SPAN_BYTES: usize = 16 << 20;

/// Installs every non-zero page of `map`, `source`'s checkpoint read whole, into `memory`,
/// which nothing has touched yet and no other process maps (nobody else's faults need
/// serving), then leaves userfaultfd. Returns what was loaded and the frames holding their
/// checkpoint contents: all of them.
pub fn load_dense(
    memory: &simuboost_vmm::vstate::memory::GuestMemory,
    source: &PageSource,
    map: &PageMap,
) -> Result<(LoadStats, Arc<InstalledFrames>), RestoreError> {
    let uffd = UffdMemory::register(memory, true)?;
    let frames = uffd.frames;
    let loaded = match source.store.local_file()? {
        Some(file) => install_from_mapping(&uffd, source, map, &file)?,
        None => {
            let nonzero: Vec<u64> = map.iter().map(|(gfn, _)| gfn).collect();
            uffd.install(source, &nonzero)?.bytes / PAGE
        }
    };
    // From here on a frame not installed is a zero page: an ordinary anonymous fault.
    uffd.unregister()?;
    Ok((
        LoadStats {
            pages: frames,
            zero_pages: frames - loaded,
            bytes: loaded * PAGE,
        },
        Arc::new(InstalledFrames::all(frames)),
    ))
}

/// Installs the page map's runs (consecutive in both gfn and slot) from a read-only mapping of
/// pages.bin, on every core; returns the number of pages installed.
fn install_from_mapping(
    uffd: &UffdMemory,
    source: &PageSource,
    map: &PageMap,
    file: &std::fs::File,
) -> Result<u64, RestoreError> {
    // In file order: the map's runs in gfn order jump around pages.bin (each checkpoint
    // appended the pages it wrote), which makes a load from a cold page cache random reads;
    // sorted by slot, each installer reads its share of the file front to back.
    let mut runs: Vec<(u64, u64, u64)> = map.runs().collect();
    runs.sort_unstable_by_key(|&(_, slot, _)| slot);
    let mut hashes = Vec::with_capacity(map.len());
    for &(gfn, _, pages) in &runs {
        if gfn + pages > uffd.frames {
            return Err(RestoreError::Install {
                gfn,
                what: "dense load",
                detail: format!("the page map's run of {pages} frames ends past guest memory"),
            });
        }
        hashes.extend_from_slice(map.run_hashes(gfn, pages));
    }
    // Most of the file is read once, in order: the kernel may read ahead as far as it likes.
    copy_runs_from_file(uffd, source, file, &runs, &hashes, Readahead::Sequential)
}

/// How the kernel should read pages.bin ahead of a load from its mapping.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Readahead {
    /// As far as it likes: the load reads most of the file in order (a dense load).
    Sequential,
    /// The runs the load copies, asked for up front (runs a few pages apart in one request),
    /// and nothing else: a sparse load reads a small part of the file, and readahead around
    /// it only fills memory.
    Exact,
}

/// Installs `runs` (`(first gfn, first slot, pages)`, consecutive in both) by `UFFDIO_COPY`
/// straight from a read-only mapping of pages.bin (`file`), shared out over every core, and
/// checks each page in guest memory against its hash (`hashes`: the runs' hashes, in run
/// order). The runs' frames must lie inside guest memory and not be installed yet. Returns the
/// number of pages installed.
pub(super) fn copy_runs_from_file(
    uffd: &UffdMemory,
    source: &PageSource,
    file: &std::fs::File,
    runs: &[(u64, u64, u64)],
    hashes: &[u128],
    readahead: Readahead,
) -> Result<u64, RestoreError> {
    let mut end_slot = 0;
    let mut starts = Vec::with_capacity(runs.len());
    let mut pages = 0u64;
    for &(_, slot, count) in runs {
        // Committed by the manifest and inside the file, or an error naming pages.bin.
        source.store.check_slots(slot, count)?;
        end_slot = end_slot.max(slot + count);
        starts.push(pages as usize);
        pages += count;
    }
    assert_eq!(hashes.len() as u64, pages, "one hash per page of the runs");
    if end_slot == 0 {
        return Ok(0);
    }
    let path = source.store.path();
    // SAFETY: a private read-only mapping of pages.bin; no Rust reference to its bytes is ever
    // made, only addresses handed to UFFDIO_COPY, whose kernel-side copy turns a page that is
    // gone (the file truncated meanwhile) into an error rather than a signal. The mapping covers
    // the slots checked above, which the file held when checked.
    let mapping: Mmap = unsafe {
        MmapOptions::new()
            .len((end_slot * PAGE) as usize)
            .map(file)
            .map_err(|source| RestoreError::MapPages {
                path: path.to_path_buf(),
                source,
            })?
    };
    // Advice only changes how the file is read, never what: a refusal only costs speed.
    match readahead {
        Readahead::Sequential => {
            let _ = mapping.advise(memmap2::Advice::Sequential);
        }
        Readahead::Exact => {
            let _ = mapping.advise(memmap2::Advice::Random);
            // One request per stretch of the file whose runs lie at most WILLNEED_GAP_PAGES
            // apart (the runs are in slot order): a scattered working set is mostly runs of one
            // page, and a syscall each cost more than reading the few pages between them.
            let mut stretch: Option<(u64, u64)> = None;
            let advise = |(first, end): (u64, u64)| {
                let _ = mapping.advise_range(
                    memmap2::Advice::WillNeed,
                    (first * PAGE) as usize,
                    ((end - first) * PAGE) as usize,
                );
            };
            for &(_, slot, count) in runs {
                stretch = match stretch {
                    Some((first, end)) if slot <= end + WILLNEED_GAP_PAGES => {
                        Some((first, end.max(slot + count)))
                    }
                    Some(done) => {
                        advise(done);
                        Some((slot, slot + count))
                    }
                    None => Some((slot, slot + count)),
                };
            }
            if let Some(done) = stretch {
                advise(done);
            }
        }
    }
    let source_base = mapping.as_ptr() as usize;

    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_THREADS);
    let indexed: Vec<(usize, (u64, u64, u64))> =
        starts.into_iter().zip(runs.iter().copied()).collect();
    let groups = split_by_pages(&indexed, pages.div_ceil(threads as u64).max(1));
    let mapping = &mapping;
    let install_group = |group: &[(usize, (u64, u64, u64))]| -> Result<(), RestoreError> {
        // Copied pages are dropped from the mapping about a piece at a time: the page cache
        // keeps the file's pages, but this process's resident memory (what a budget of
        // concurrent replays counts) holds at most about one piece per thread besides the
        // guest's. Not after every run: each drop shoots down the other installers' TLBs, an
        // interrupt to every core, which on a VM costs an exit (dropping per run, a sparse
        // load of `pattern`'s 763 scattered pages took 13.2 ms; in batches ~10 ms).
        let mut copied = Dropper::new(mapping);
        for &(start, (gfn, slot, count)) in group {
            let bytes = (count * PAGE) as usize;
            for piece in (0..count).step_by(PIECE_PAGES as usize) {
                let pages = PIECE_PAGES.min(count - piece);
                let offset = ((slot + piece) * PAGE) as usize;
                let from = (source_base + offset) as *const u8;
                let len = (pages * PAGE) as usize;
                install_copy(
                    &uffd.uffd,
                    from,
                    len,
                    uffd.host(gfn + piece),
                    gfn + piece,
                    false,
                )?;
                copied.copied(offset, len);
            }
            // SAFETY: the run's frames lie inside guest RAM (the caller's promise) and were just
            // installed, so they are resident and mapped; no VM runs yet and each thread reads
            // only its own runs, so nothing writes them while they are read.
            let installed =
                unsafe { std::slice::from_raw_parts(uffd.host(gfn).cast::<u8>(), bytes) };
            let run_hashes = &hashes[start..start + count as usize];
            for (k, (page, &hash)) in installed
                .chunks_exact(PAGE_SIZE)
                .zip(run_hashes)
                .enumerate()
            {
                let k = k as u64;
                source.store.verify_page(slot + k, hash, gfn + k, page)?;
            }
        }
        copied.drop_pending();
        Ok(())
    };
    std::thread::scope(|scope| {
        let (first, others) = groups
            .split_first()
            .map_or((&[][..], &[][..]), |(f, o)| (*f, o));
        let handles: Vec<_> = others
            .iter()
            .map(|&group| scope.spawn(move || install_group(group)))
            .collect();
        // This thread installs a share too.
        let mut result = install_group(first);
        for handle in handles {
            let joined = handle.join().unwrap_or_else(|_| {
                Err(RestoreError::Handler("an installer thread panicked".into()))
            });
            result = result.and(joined);
        }
        result
    })?;
    source
        .store
        .count_mapped_read(runs.len() as u64, pages * PAGE);
    Ok(pages)
}

/// Drops ranges of a mapping of pages.bin that a thread has copied from, a piece's worth
/// (about [`PIECE_PAGES`]) or a span of [`DROP_SPAN_BYTES`] at a time, whichever comes first,
/// with one `MADV_DONTNEED` over the span they cover.
struct Dropper<'a> {
    mapping: &'a Mmap,
    /// The span of the ranges copied since the last drop, bytes into the mapping.
    span: Option<(usize, usize)>,
    bytes: usize,
}

impl<'a> Dropper<'a> {
    fn new(mapping: &'a Mmap) -> Dropper<'a> {
        Dropper {
            mapping,
            span: None,
            bytes: 0,
        }
    }

    /// Notes that `len` bytes at `offset` (inside the mapping) have been copied.
    fn copied(&mut self, offset: usize, len: usize) {
        let end = offset + len;
        self.span = Some(match self.span {
            Some((start, last)) => (start.min(offset), last.max(end)),
            None => (offset, end),
        });
        self.bytes += len;
        let spread = self.span.map_or(0, |(start, end)| end - start);
        if self.bytes >= (PIECE_PAGES * PAGE) as usize || spread >= DROP_SPAN_BYTES {
            self.drop_pending();
        }
    }

    /// Drops what was copied since the last drop.
    fn drop_pending(&mut self) {
        if let Some((start, end)) = self.span.take() {
            // SAFETY: no Rust reference into the mapping exists (only the kernel read it, in
            // UFFDIO_COPY), and MADV_DONTNEED on a private read-only file mapping only unmaps
            // pages: a later read would fault them in again from the file. The span lies inside
            // the mapping (its slots were checked).
            let _ = unsafe {
                self.mapping.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start,
                    end - start,
                )
            };
        }
        self.bytes = 0;
    }
}

/// A run of frames that one copy installs: `(first gfn, first slot, pages)`.
type Run = (u64, u64, u64);

/// Consecutive groups of `runs` (`(_, run)`) of about `share` pages each.
fn split_by_pages<T>(runs: &[(T, Run)], share: u64) -> Vec<&[(T, Run)]> {
    let mut groups = Vec::new();
    let (mut start, mut in_group) = (0, 0);
    for (i, (_, (_, _, pages))) in runs.iter().enumerate() {
        in_group += pages;
        if in_group >= share {
            groups.push(&runs[start..=i]);
            (start, in_group) = (i + 1, 0);
        }
    }
    if start < runs.len() {
        groups.push(&runs[start..]);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_cover_every_run_once_in_order() {
        let runs = [
            (0, (0, 0, 5)),
            (1, (10, 7, 1)),
            (2, (20, 9, 3)),
            (3, (30, 40, 1)),
        ];
        let groups = split_by_pages(&runs, 5);
        assert_eq!(groups.concat(), runs.to_vec());
        assert_eq!(groups.len(), 2);
        assert!(split_by_pages::<u8>(&[], 5).is_empty());
    }

    /// Scattered copies are dropped once they span DROP_SPAN_BYTES, not only after a piece's
    /// worth of copying (which a sparse load's single pages take long to reach).
    #[test]
    fn copies_are_dropped_by_span_as_well_as_by_amount() {
        let file = tempfile::tempfile().unwrap();
        let len = DROP_SPAN_BYTES + 2 * PAGE_SIZE;
        file.set_len(len as u64).unwrap();
        // SAFETY: a private read-only mapping of a temporary file nothing else writes.
        let mapping = unsafe { MmapOptions::new().len(len).map(&file).unwrap() };
        let mut dropper = Dropper::new(&mapping);
        dropper.copied(0, PAGE_SIZE);
        dropper.copied(4 * PAGE_SIZE, PAGE_SIZE);
        assert_eq!(
            dropper.span,
            Some((0, 5 * PAGE_SIZE)),
            "two pages are not worth a drop"
        );
        dropper.copied(DROP_SPAN_BYTES, PAGE_SIZE);
        assert_eq!(dropper.span, None, "pages 16 MiB apart were not dropped");
        for k in 0..PIECE_PAGES as usize {
            dropper.copied(k * PAGE_SIZE, PAGE_SIZE);
        }
        assert_eq!(
            dropper.span, None,
            "a piece's worth of pages was not dropped"
        );
    }
}
