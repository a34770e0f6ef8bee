//! Guest memory registered with userfaultfd, and the bulk installation of pages into it.

use std::sync::Arc;

use userfaultfd::{IoctlFlags, Uffd, UffdBuilder};

use simuboost_format::PAGE_SIZE;
use simuboost_vmm::vstate::memory::{host_region, huge_page_buffer, GuestMemory};

use super::dense::{copy_runs_from_file, Readahead};
use super::{
    describe_uffd_error, runs, uffd_error, InstalledFrames, LoadStats, PageSource, RestoreError,
    CHUNK_PAGES, PAGE,
};

/// Guest memory registered with userfaultfd.
pub struct UffdMemory {
    pub(super) uffd: Arc<Uffd>,
    pub(super) base: usize,
    pub(super) frames: u64,
    pub(super) installed: Arc<InstalledFrames>,
    /// Only this process maps the memory: see [`UffdMemory::register`].
    private: bool,
}

/// The shortest run of zero frames that a load into private memory takes out of userfaultfd
/// instead of installing: 16 pages. Each such run splits guest RAM's mapping in up to two
/// more, so shorter runs would cost the kernel more mappings than they save ioctl time.
const UNREGISTERED_ZERO_RUN: usize = 16;

/// Most runs of zero frames one load takes out of userfaultfd; the rest get the zero page.
/// A scattered working set of a large guest could otherwise split its mapping past the
/// kernel's limit on mappings per process (`vm.max_map_count`, 65,530 by default), and the
/// load would fail.
const MAX_UNREGISTERED_ZERO_RUNS: usize = 4096;

impl UffdMemory {
    /// Registers all of `memory` (which nothing may have touched yet) in missing mode.
    /// `private`: no other process maps the memory, so a frame taken out of userfaultfd reads
    /// as zeros to everyone who touches it (for shared memory only our own mapping would be).
    pub fn register(memory: &GuestMemory, private: bool) -> Result<UffdMemory, RestoreError> {
        let uffd = UffdBuilder::new()
            .close_on_exec(true)
            .non_blocking(true)
            // KVM touches guest memory from the kernel (get_user_pages); those faults must come
            // to us too.
            .user_mode_only(false)
            .create()
            .map_err(uffd_error("create"))?;
        let (base, size) = host_region(memory);
        let ioctls = uffd
            .register(base.cast(), size as usize)
            .map_err(uffd_error("register guest memory"))?;
        let needed = IoctlFlags::COPY | IoctlFlags::ZEROPAGE | IoctlFlags::WAKE;
        if !ioctls.contains(needed) {
            return Err(RestoreError::Userfaultfd {
                what: "register guest memory",
                detail: format!("the kernel offers {ioctls:?}, COPY, ZEROPAGE and WAKE are needed"),
            });
        }
        let frames = size / PAGE;
        Ok(UffdMemory {
            uffd: Arc::new(uffd),
            base: base as usize,
            frames,
            installed: Arc::new(InstalledFrames::new(frames)),
            private,
        })
    }

    /// Which frames are installed.
    pub fn installed(&self) -> &Arc<InstalledFrames> {
        &self.installed
    }

    pub(super) fn host(&self, gfn: u64) -> *mut libc::c_void {
        (self.base + (gfn * PAGE) as usize) as *mut libc::c_void
    }

    /// Leaves userfaultfd: from now on a frame not installed faults in as fresh anonymous
    /// memory (zeros), with no handler involved. For a restore that has installed all it will.
    pub(super) fn unregister(&self) -> Result<(), RestoreError> {
        self.uffd
            .unregister(
                self.base as *mut libc::c_void,
                (self.frames * PAGE) as usize,
            )
            .map_err(uffd_error("unregister guest memory"))
    }

    /// Takes the `count` frames from `gfn` on out of userfaultfd: a first touch of one faults
    /// in fresh anonymous memory (zeros), with no handler involved.
    fn leave(&self, gfn: u64, count: u64) -> Result<(), RestoreError> {
        self.uffd
            .unregister(self.host(gfn), (count * PAGE) as usize)
            .map_err(uffd_error("unregister a run of zero frames"))
    }

    /// Installs the frames from `gfn` on with the contents `src` (whole pages).
    fn copy(&self, src: &[u8], gfn: u64, wake: bool) -> Result<(), RestoreError> {
        install_copy(
            &self.uffd,
            src.as_ptr(),
            src.len(),
            self.host(gfn),
            gfn,
            wake,
        )
    }

    fn zero(&self, gfn: u64, count: u64, wake: bool) -> Result<(), RestoreError> {
        install_zero(&self.uffd, self.host(gfn), gfn, count, wake)
    }

    /// Installs frames `gfns` (ascending, below guest memory size) with their contents from
    /// `source`, in bulk: the pages are read from pages.bin in slot order, coalesced into few
    /// reads, and checked against their hashes, then one copy per run of consecutive frames. Frames already installed are skipped.
    pub fn install(&self, source: &PageSource, gfns: &[u64]) -> Result<LoadStats, RestoreError> {
        let mut stats = LoadStats::default();
        let mut data: Vec<(u64, u64, u128)> = Vec::with_capacity(gfns.len());
        let mut zeros: Vec<u64> = Vec::new();
        // Looked up together: a partial page map answers a sorted list with one pass per
        // table instead of a search per frame in each.
        let wanted: Vec<u64> = gfns
            .iter()
            .copied()
            .filter(|&g| g < self.frames && !self.installed.contains(g))
            .collect();
        for (gfn, entry) in wanted.iter().zip(source.entries(&wanted)?) {
            match entry {
                Some((slot, hash)) => data.push((*gfn, slot, hash)),
                None => zeros.push(*gfn),
            }
        }
        // In slot order: each chunk then covers a compact part of pages.bin, which the page
        // store reads with few requests (the recorder appends a checkpoint's new pages in gfn
        // order, so runs of consecutive frames mostly stay runs of consecutive slots).
        data.sort_unstable_by_key(|&(gfn, slot, _)| (slot, gfn));
        let mut data_runs: Vec<(u64, u64, u64)> = Vec::new();
        for &(gfn, slot, _) in &data {
            match data_runs.last_mut() {
                Some((g, s, n)) if *g + *n == gfn && *s + *n == slot => *n += 1,
                _ => data_runs.push((gfn, slot, 1)),
            }
        }
        // A local run: one copy per run straight from a mapping of pages.bin, on every core,
        // as a dense load does, instead of a `pread` into a staging buffer and a second copy
        // on one core. Measured alternating on 1 GiB guests (load ms, sparse): `sort` 50–55
        // against 90–118, `kvstore` (80 k scattered pages) 808–913 against 851–951, `build`
        // 13–17 against 14–18.
        match source.store.local_file()? {
            Some(file) => {
                let hashes: Vec<u128> = data.iter().map(|&(_, _, hash)| hash).collect();
                // A load of most of the file reads it in order; anything sparser reads exactly
                // its runs.
                let span = data.last().map_or(0, |&(_, slot, _)| slot + 1);
                let readahead = if 2 * data.len() as u64 >= span {
                    Readahead::Sequential
                } else {
                    Readahead::Exact
                };
                copy_runs_from_file(self, source, &file, &data_runs, &hashes, readahead)?;
            }
            None => STAGING.with(|staging| {
                let mut staging = staging.borrow_mut();
                self.install_pages(source, &data, &mut staging)
            })?,
        }
        let mut unregistered = 0;
        for (first, count) in runs(&zeros) {
            if self.private
                && count >= UNREGISTERED_ZERO_RUN
                && unregistered < MAX_UNREGISTERED_ZERO_RUNS
            {
                unregistered += 1;
                // Out of userfaultfd the kernel fills a first touch with zeros itself, as a
                // dense load leaves every zero page: mapping the zero page into each frame
                // of a run costs ~0.1 µs per page here (`compress`, interval 4: 20 MiB of
                // zeros, 0.5 ms).
                self.leave(zeros[first], count as u64)?;
            } else {
                self.zero(zeros[first], count as u64, false)?;
            }
        }
        for &(gfn, _, _) in &data {
            self.installed.insert(gfn);
        }
        for &gfn in &zeros {
            self.installed.insert(gfn);
        }
        stats.pages = (data.len() + zeros.len()) as u64;
        stats.zero_pages = zeros.len() as u64;
        stats.bytes = data.len() as u64 * PAGE;
        Ok(stats)
    }

    /// Copies the pages `data` (`(gfn, slot, hash)`, in slot order) into guest memory through
    /// `staging`, a chunk at a time: one read of the chunk's slots, then one copy per run of
    /// consecutive frames.
    fn install_pages(
        &self,
        source: &PageSource,
        data: &[(u64, u64, u128)],
        staging: &mut Staging,
    ) -> Result<(), RestoreError> {
        let (mut slots, mut hashes, mut frames) = (Vec::new(), Vec::new(), Vec::new());
        for chunk in data.chunks(CHUNK_PAGES) {
            slots.clear();
            hashes.clear();
            frames.clear();
            for &(gfn, slot, hash) in chunk {
                frames.push(gfn);
                slots.push(slot);
                hashes.push(hash);
            }
            let buffer = staging.get(chunk.len());
            source
                .store
                .read_pages_verified(&slots, &hashes, &frames, buffer)?;
            for (first, count) in runs(&frames) {
                let offset = first * PAGE_SIZE;
                self.copy(
                    &buffer[offset..offset + count * PAGE_SIZE],
                    frames[first],
                    false,
                )?;
            }
        }
        Ok(())
    }

    /// Maps the zero page at every frame not installed yet, in as few calls as possible: what a
    /// dense restore leaves as fresh (zero) anonymous memory.
    pub fn install_zero_rest(&self) -> Result<u64, RestoreError> {
        let mut installed = 0;
        let mut gfn = 0;
        while gfn < self.frames {
            if self.installed.contains(gfn) {
                gfn += 1;
                continue;
            }
            let first = gfn;
            while gfn < self.frames && !self.installed.contains(gfn) {
                gfn += 1;
            }
            self.zero(first, gfn - first, false)?;
            installed += gfn - first;
        }
        for gfn in 0..self.frames {
            self.installed.insert(gfn);
        }
        Ok(installed)
    }
}

/// Installs `len` bytes (whole pages) from `src` at `dst`, guest frames from `gfn` on.
/// `src` is read by the kernel only: a buffer of ours, or a mapping of pages.bin.
pub(super) fn install_copy(
    uffd: &Uffd,
    src: *const u8,
    len: usize,
    dst: *mut libc::c_void,
    gfn: u64,
    wake: bool,
) -> Result<(), RestoreError> {
    let mut done = 0usize;
    while done < len {
        // SAFETY: `dst + done .. dst + len` lies inside the registered guest RAM mapping
        // (callers pass frames below its size), and `src .. src + len` is mapped readable
        // memory of the caller's (if it is not, the kernel's copy fails with EFAULT).
        // UFFDIO_COPY only fills pages that are not present; it never overwrites.
        let result = unsafe {
            uffd.copy(
                src.add(done).cast(),
                dst.cast::<u8>().add(done).cast(),
                len - done,
                wake,
            )
        };
        match result {
            Ok(n) => done += n,
            Err(userfaultfd::Error::PartiallyCopied(n)) => done += n,
            Err(userfaultfd::Error::CopyFailed(errno)) if errno as i32 == libc::EEXIST => {
                // Some page of the range is already there (another fault raced us); install
                // the rest page by page, leaving present pages alone.
                let page_gfn = gfn + (done / PAGE_SIZE) as u64;
                let dst_page = (dst as usize + done) as *mut libc::c_void;
                // SAFETY: as above, one page.
                let single = unsafe { uffd.copy(src.add(done).cast(), dst_page, PAGE_SIZE, wake) };
                match single {
                    Ok(_) => {}
                    Err(userfaultfd::Error::CopyFailed(errno)) if errno as i32 == libc::EEXIST => {
                        if wake {
                            let _ = uffd.wake(dst_page, PAGE_SIZE);
                        }
                    }
                    Err(e) => {
                        return Err(RestoreError::Install {
                            gfn: page_gfn,
                            what: "UFFDIO_COPY",
                            detail: describe_uffd_error(&e),
                        })
                    }
                }
                done += PAGE_SIZE;
            }
            Err(e) => {
                return Err(RestoreError::Install {
                    gfn: gfn + (done / PAGE_SIZE) as u64,
                    what: "UFFDIO_COPY",
                    detail: describe_uffd_error(&e),
                })
            }
        }
    }
    Ok(())
}

pub(super) fn install_zero(
    uffd: &Uffd,
    dst: *mut libc::c_void,
    gfn: u64,
    count: u64,
    wake: bool,
) -> Result<(), RestoreError> {
    // SAFETY: `count` frames from `dst` lie inside the registered guest RAM mapping; the
    // ioctl maps the shared zero page only where nothing is present.
    match unsafe { uffd.zeropage(dst, (count * PAGE) as usize, wake) } {
        Ok(_) => Ok(()),
        Err(userfaultfd::Error::ZeropageFailed(errno))
            if errno as i32 == libc::EEXIST && count == 1 =>
        {
            if wake {
                let _ = uffd.wake(dst, PAGE_SIZE);
            }
            Ok(())
        }
        Err(userfaultfd::Error::ZeropageFailed(errno)) if errno as i32 == libc::EEXIST => {
            for i in 0..count {
                install_zero(
                    uffd,
                    (dst as usize + (i * PAGE) as usize) as *mut libc::c_void,
                    gfn + i,
                    1,
                    wake,
                )?;
            }
            Ok(())
        }
        Err(e) => Err(RestoreError::Install {
            gfn,
            what: "UFFDIO_ZEROPAGE",
            detail: describe_uffd_error(&e),
        }),
    }
}

thread_local! {
    /// Each thread's staging buffer, kept between restores: first touches of fresh memory are
    /// expensive on this kind of host (~10 µs per 4 KiB page), and `--all` restores many
    /// intervals per worker thread.
    static STAGING: std::cell::RefCell<Staging> = const { std::cell::RefCell::new(Staging { buffer: Vec::new() }) };
}

/// A buffer for bulk loads, backed by huge pages where possible.
struct Staging {
    buffer: Vec<u8>,
}

impl Staging {
    fn allocate(pages: usize) -> Vec<u8> {
        let mut buffer = huge_page_buffer(pages * PAGE_SIZE);
        buffer.resize(pages * PAGE_SIZE, 0);
        buffer
    }

    fn get(&mut self, pages: usize) -> &mut [u8] {
        if self.buffer.len() < pages * PAGE_SIZE {
            // Exactly what is asked (at most a chunk): a small working set should not pay for
            // populating a whole chunk.
            self.buffer = Staging::allocate(pages);
        }
        &mut self.buffer[..pages * PAGE_SIZE]
    }
}
