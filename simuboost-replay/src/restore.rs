//! Guest memory restored through userfaultfd.
//!
//! Guest RAM is a private anonymous mapping registered with userfaultfd in missing mode before
//! anything touches it. The restore then installs the pages it chose up front, in bulk
//! (`UFFDIO_COPY` of runs of consecutive frames from a reused staging buffer, `UFFDIO_ZEROPAGE`
//! for zero pages), and a handler thread serves every other page on first access (by the vCPU
//! through KVM or by the VMM) from the checkpoint chain: a *miss*. So whatever was chosen up
//! front, the guest always sees the memory of the checkpoint; the choice only decides how many
//! misses (~90 µs each on this kind of host) the replay pays.
//!
//! Every page read from pages.bin is checked against the hash the page tables give it.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use userfaultfd::{Event, EventBuffer, IoctlFlags, Uffd, UffdBuilder};
use vmm_sys_util::eventfd::EventFd;

use simuboost_format::{FormatError, PageMap, PageStore, PAGE_SIZE};
use simuboost_vmm::vstate::memory::{host_region, huge_page_buffer, GuestMemory};

const PAGE: u64 = PAGE_SIZE as u64;

/// Pages installed per bulk step: the staging buffer holds this many (8 MiB).
const CHUNK_PAGES: usize = 2048;

/// Errors restoring guest memory.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// userfaultfd could not be set up.
    #[error("cannot set up userfaultfd for guest memory ({what}): {detail}")]
    Userfaultfd {
        /// The step that failed.
        what: &'static str,
        /// What the kernel said.
        detail: String,
    },
    /// Installing a page failed.
    #[error("cannot install guest frame {gfn:#x} ({what}): {detail}")]
    Install {
        /// The frame.
        gfn: u64,
        /// The ioctl.
        what: &'static str,
        /// What the kernel said.
        detail: String,
    },
    /// Reading the run failed (a damaged pages.bin, say).
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The miss handler thread could not be started or died.
    #[error("the page-fault handler thread failed: {0}")]
    Handler(String),
}

fn uffd_error(what: &'static str) -> impl FnOnce(userfaultfd::Error) -> RestoreError {
    move |e| RestoreError::Userfaultfd {
        what,
        detail: describe_uffd_error(&e),
    }
}

fn describe_uffd_error(e: &userfaultfd::Error) -> String {
    match e {
        userfaultfd::Error::CopyFailed(errno) | userfaultfd::Error::ZeropageFailed(errno) => {
            std::io::Error::from_raw_os_error(*errno as i32).to_string()
        }
        userfaultfd::Error::SystemError(errno) => {
            std::io::Error::from_raw_os_error(*errno as i32).to_string()
        }
        other => other.to_string(),
    }
}

/// One bit per guest frame: installed (resident with its checkpoint contents) or not.
pub struct InstalledFrames {
    words: Vec<AtomicU64>,
}

impl InstalledFrames {
    fn new(frames: u64) -> InstalledFrames {
        InstalledFrames {
            words: (0..frames.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    /// True if `gfn` has been installed.
    pub fn contains(&self, gfn: u64) -> bool {
        self.words[(gfn / 64) as usize].load(Ordering::Acquire) & (1 << (gfn % 64)) != 0
    }

    fn insert(&self, gfn: u64) {
        self.words[(gfn / 64) as usize].fetch_or(1 << (gfn % 64), Ordering::AcqRel);
    }

    /// Installed frames, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(i, word)| {
            let mut bits = word.load(Ordering::Acquire);
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let bit = bits.trailing_zeros() as u64;
                bits &= bits - 1;
                Some(i as u64 * 64 + bit)
            })
        })
    }

    /// Number of installed frames.
    pub fn count(&self) -> u64 {
        self.words
            .iter()
            .map(|w| u64::from(w.load(Ordering::Acquire).count_ones()))
            .sum()
    }
}

/// Where page contents come from: the page map of the checkpoint being restored and pages.bin.
pub struct PageSource {
    /// gfn → slot and hash as of the checkpoint.
    pub map: PageMap,
    /// pages.bin.
    pub store: PageStore,
    /// pages.bin mapped read-only (its readable slots), when it could be: bulk loads gather
    /// pages from the page cache with memcpy instead of one `pread` per run of slots (dedup and
    /// write order scatter the slots of consecutive frames, so runs are short).
    mapped: Option<memmap2::Mmap>,
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
    fn read_page(
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

/// What the up-front load did.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadStats {
    /// Frames installed (with contents or as zero pages).
    pub pages: u64,
    /// Of those, zero pages.
    pub zero_pages: u64,
    /// Bytes read from pages.bin and copied into guest memory.
    pub bytes: u64,
}

/// What the miss handler did.
#[derive(Clone, Copy, Debug, Default)]
pub struct MissStats {
    /// Frames served on demand.
    pub misses: u64,
    /// Of those, zero pages.
    pub zero_misses: u64,
    /// Time spent serving them (handler side).
    pub serve_time: Duration,
}

/// Guest memory registered with userfaultfd.
pub struct UffdMemory {
    uffd: Arc<Uffd>,
    base: usize,
    frames: u64,
    installed: Arc<InstalledFrames>,
}

impl UffdMemory {
    /// Registers all of `memory` (which nothing may have touched yet) in missing mode.
    pub fn register(memory: &GuestMemory) -> Result<UffdMemory, RestoreError> {
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
        })
    }

    /// Which frames are installed.
    pub fn installed(&self) -> &Arc<InstalledFrames> {
        &self.installed
    }

    fn host(&self, gfn: u64) -> *mut libc::c_void {
        (self.base + (gfn * PAGE) as usize) as *mut libc::c_void
    }

    /// Installs the frames from `gfn` on with the contents `src` (whole pages).
    fn copy(&self, src: &[u8], gfn: u64, wake: bool) -> Result<(), RestoreError> {
        install_copy(&self.uffd, src, self.host(gfn), gfn, wake)
    }

    fn zero(&self, gfn: u64, count: u64, wake: bool) -> Result<(), RestoreError> {
        install_zero(&self.uffd, self.host(gfn), gfn, count, wake)
    }

    /// Installs frames `gfns` (ascending, below guest memory size) with their contents from
    /// `source`, in bulk: every page is read (from the mmapped pages.bin, else one `pread` per
    /// run of consecutive slots) and checked against its hash, then one copy per run of
    /// consecutive frames. Frames already installed are skipped.
    pub fn install(&self, source: &PageSource, gfns: &[u64]) -> Result<LoadStats, RestoreError> {
        let mut stats = LoadStats::default();
        let mut data: Vec<(u64, u64, u128)> = Vec::with_capacity(gfns.len());
        let mut zeros: Vec<u64> = Vec::new();
        for &gfn in gfns.iter().filter(|&&g| g < self.frames) {
            if self.installed.contains(gfn) {
                continue;
            }
            match source.map.entry(gfn) {
                Some((slot, hash)) => data.push((gfn, slot, hash)),
                None => zeros.push(gfn),
            }
        }
        STAGING.with(|staging| {
            let mut staging = staging.borrow_mut();
            self.install_pages(source, &data, &mut staging)
        })?;
        for (first, count) in runs(&zeros) {
            self.zero(zeros[first], count as u64, false)?;
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

    /// Copies the pages `data` (`(gfn, slot, hash)`, gfns ascending) into guest memory through
    /// `staging`, a chunk at a time.
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
            if source.mapped.is_some() {
                for (i, page) in buffer.chunks_exact_mut(PAGE_SIZE).enumerate() {
                    source.read_page(slots[i], hashes[i], frames[i], page)?;
                }
            } else {
                source
                    .store
                    .read_pages_verified(&slots, &hashes, &frames, buffer)?;
            }
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

    /// Starts the miss handler: from now on a touch of a frame not installed is served from
    /// `source` on demand. If serving fails (a damaged pages.bin), the handler installs a zero
    /// page so that the faulting thread does not hang, records the error and sets `failed`;
    /// the replay then aborts the run and reports the error.
    pub fn serve(
        &self,
        source: Arc<PageSource>,
        failed: Arc<AtomicBool>,
    ) -> Result<PageServer, RestoreError> {
        let stop =
            EventFd::new(libc::EFD_NONBLOCK).map_err(|e| RestoreError::Handler(e.to_string()))?;
        let stop_handler = stop
            .try_clone()
            .map_err(|e| RestoreError::Handler(e.to_string()))?;
        let handler = Handler {
            uffd: self.uffd.clone(),
            base: self.base,
            frames: self.frames,
            installed: self.installed.clone(),
            source,
            failed,
            error: Arc::new(Mutex::new(None)),
        };
        let error = handler.error.clone();
        let thread = std::thread::Builder::new()
            .name("uffd-handler".into())
            .spawn(move || {
                let failed = handler.failed.clone();
                let result = handler.run(&stop_handler);
                if result.is_err() {
                    // Nobody serves faults any more: have the replay aborted.
                    failed.store(true, Ordering::SeqCst);
                }
                result
            })
            .map_err(|e| RestoreError::Handler(e.to_string()))?;
        Ok(PageServer {
            stop,
            thread: Some(thread),
            error,
        })
    }
}

fn install_copy(
    uffd: &Uffd,
    src: &[u8],
    dst: *mut libc::c_void,
    gfn: u64,
    wake: bool,
) -> Result<(), RestoreError> {
    let mut done = 0usize;
    while done < src.len() {
        // SAFETY: `dst + done .. dst + src.len()` lies inside the registered guest RAM mapping
        // (callers pass frames below its size) and `src` is a live buffer of that length.
        // UFFDIO_COPY only fills pages that are not present; it never overwrites.
        let result = unsafe {
            uffd.copy(
                src[done..].as_ptr().cast(),
                dst.cast::<u8>().add(done).cast(),
                src.len() - done,
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
                let single =
                    unsafe { uffd.copy(src[done..].as_ptr().cast(), dst_page, PAGE_SIZE, wake) };
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

fn install_zero(
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

/// `(start index, length)` of the runs of consecutive values in `values` (ascending).
fn runs(values: &[u64]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        if i >= values.len() {
            return None;
        }
        let start = i;
        i += 1;
        while i < values.len() && values[i] == values[i - 1] + 1 {
            i += 1;
        }
        Some((start, i - start))
    })
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

/// The miss handler thread's state.
struct Handler {
    uffd: Arc<Uffd>,
    base: usize,
    frames: u64,
    installed: Arc<InstalledFrames>,
    source: Arc<PageSource>,
    failed: Arc<AtomicBool>,
    error: Arc<Mutex<Option<RestoreError>>>,
}

impl Handler {
    fn run(self, stop: &EventFd) -> Result<MissStats, RestoreError> {
        let mut stats = MissStats::default();
        let mut events = EventBuffer::new(64);
        let mut page = vec![0u8; PAGE_SIZE];
        let mut fds = [
            libc::pollfd {
                fd: self.uffd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            // SAFETY: `fds` is a valid array of two pollfd structs that outlives the call.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(RestoreError::Handler(format!("poll: {e}")));
            }
            if fds[1].revents != 0 {
                return Ok(stats);
            }
            if fds[0].revents & libc::POLLIN == 0 {
                continue;
            }
            let read = self
                .uffd
                .read_events(&mut events)
                .map_err(|e| RestoreError::Handler(format!("reading userfaultfd events: {e}")))?;
            let faults: Vec<usize> = read
                .filter_map(|event| match event {
                    Ok(Event::Pagefault { addr, .. }) => Some(addr as usize),
                    _ => None,
                })
                .collect();
            for addr in faults {
                let began = Instant::now();
                let gfn = (addr - self.base) as u64 / PAGE;
                if let Err(e) = self.serve(gfn, &mut page, &mut stats) {
                    // Unblock the faulting thread with a zero page; the replay is aborted.
                    let host = (self.base + (gfn * PAGE) as usize) as *mut libc::c_void;
                    let _ = install_zero(&self.uffd, host, gfn, 1, true);
                    self.installed.insert(gfn);
                    if let Ok(mut slot) = self.error.lock() {
                        slot.get_or_insert(e);
                    }
                    self.failed.store(true, Ordering::SeqCst);
                }
                stats.serve_time += began.elapsed();
            }
        }
    }

    fn serve(&self, gfn: u64, page: &mut [u8], stats: &mut MissStats) -> Result<(), RestoreError> {
        if gfn >= self.frames {
            return Err(RestoreError::Handler(format!(
                "fault at frame {gfn:#x}, beyond guest memory"
            )));
        }
        let host = (self.base + (gfn * PAGE) as usize) as *mut libc::c_void;
        if self.installed.contains(gfn) {
            // Served already (a second fault on the page was queued): wake the waiter.
            let _ = self.uffd.wake(host, PAGE_SIZE);
            return Ok(());
        }
        stats.misses += 1;
        tracing::debug!(gfn, "miss: serving the frame on demand");
        match self.source.map.entry(gfn) {
            Some((slot, hash)) => {
                self.source.read_page(slot, hash, gfn, page)?;
                install_copy(&self.uffd, page, host, gfn, true)?;
            }
            None => {
                stats.zero_misses += 1;
                install_zero(&self.uffd, host, gfn, 1, true)?;
            }
        }
        self.installed.insert(gfn);
        Ok(())
    }
}

/// The running miss handler.
pub struct PageServer {
    stop: EventFd,
    thread: Option<JoinHandle<Result<MissStats, RestoreError>>>,
    error: Arc<Mutex<Option<RestoreError>>>,
}

impl PageServer {
    /// The first error the handler met, if any (taken: a second call returns `None`).
    pub fn take_error(&self) -> Option<RestoreError> {
        self.error.lock().ok().and_then(|mut e| e.take())
    }

    /// Stops the handler and returns its counters. Call only when no thread can fault on guest
    /// memory any more (the vCPU is stopped), or a fault would never be served.
    pub fn finish(mut self) -> Result<MissStats, RestoreError> {
        self.stop_thread()
    }

    fn stop_thread(&mut self) -> Result<MissStats, RestoreError> {
        let Some(thread) = self.thread.take() else {
            return Ok(MissStats::default());
        };
        self.stop
            .write(1)
            .map_err(|e| RestoreError::Handler(format!("cannot stop the handler: {e}")))?;
        thread
            .join()
            .map_err(|_| RestoreError::Handler("the handler thread panicked".into()))?
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        let _ = self.stop_thread();
    }
}

/// Bytes of the guest RAM mapping that are resident and private: what this replay's guest
/// memory costs. The shared zero page and pages never touched do not count.
pub fn resident_bytes(memory: &GuestMemory) -> std::io::Result<u64> {
    let (base, size) = host_region(memory);
    let (start, end) = (base as u64, base as u64 + size);
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut total_kib = 0u64;
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((lo, hi)) = range.split_once('-') {
                if let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16))
                {
                    inside = lo >= start && hi <= end;
                    continue;
                }
            }
        }
        if inside {
            if let Some(rest) = line.strip_prefix("Rss:") {
                let kib = rest.trim().trim_end_matches("kB").trim();
                total_kib += kib.parse::<u64>().unwrap_or(0);
            }
        }
    }
    Ok(total_kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_consecutive_frames() {
        let v = [1, 2, 3, 7, 9, 10];
        assert_eq!(runs(&v).collect::<Vec<_>>(), vec![(0, 3), (3, 1), (4, 2)]);
        assert_eq!(runs(&[]).count(), 0);
    }

    #[test]
    fn installed_frames_iterate_ascending() {
        let set = InstalledFrames::new(200);
        for gfn in [199, 0, 64, 63, 65] {
            set.insert(gfn);
        }
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0, 63, 64, 65, 199]);
        assert_eq!(set.count(), 5);
        assert!(set.contains(64) && !set.contains(66));
    }
}
