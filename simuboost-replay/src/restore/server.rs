//! The miss handler: serves every first touch of a frame that was not installed up front.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use userfaultfd::{Event, EventBuffer, Uffd};
use vmm_sys_util::eventfd::EventFd;

use simuboost_format::PAGE_SIZE;

use super::uffd::{install_copy, install_zero};
use super::{InstalledFrames, MissStats, PageSource, RestoreError, UffdMemory, PAGE};

/// Another process's userfaultfd over the same guest RAM (a shared memfd): the simulator
/// registers its own mapping and hands the descriptor over, so that its first touches are
/// served — and counted — exactly like the replayer's own.
pub struct PeerUffd {
    /// The peer's userfaultfd.
    pub uffd: Uffd,
    /// Where guest RAM starts in the peer's address space (its faults name those addresses).
    pub base: u64,
}

/// One userfaultfd the handler serves, with the address guest frame 0 has behind it.
struct Faults {
    uffd: Arc<Uffd>,
    base: usize,
}

impl Faults {
    fn host(&self, gfn: u64) -> *mut libc::c_void {
        (self.base + (gfn * PAGE) as usize) as *mut libc::c_void
    }
}

impl UffdMemory {
    /// Starts the miss handler: from now on a touch of a frame not installed — through this
    /// mapping or through any of `peers` — is served from `source` on demand. If serving fails
    /// (a damaged pages.bin), the handler installs a zero page so that the faulting thread does
    /// not hang, records the error and sets `failed`; the replay then aborts the run and
    /// reports the error.
    pub fn serve(
        &self,
        source: Arc<PageSource>,
        failed: Arc<AtomicBool>,
        peers: Vec<PeerUffd>,
    ) -> Result<PageServer, RestoreError> {
        let stop =
            EventFd::new(libc::EFD_NONBLOCK).map_err(|e| RestoreError::Handler(e.to_string()))?;
        let stop_handler = stop
            .try_clone()
            .map_err(|e| RestoreError::Handler(e.to_string()))?;
        let mut faults = vec![Faults {
            uffd: self.uffd.clone(),
            base: self.base,
        }];
        faults.extend(peers.into_iter().map(|peer| Faults {
            uffd: Arc::new(peer.uffd),
            base: peer.base as usize,
        }));
        let handler = Handler {
            faults,
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

/// The miss handler thread's state.
struct Handler {
    faults: Vec<Faults>,
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
        // The stop event first, then one entry per userfaultfd.
        let mut fds: Vec<libc::pollfd> = std::iter::once(stop.as_raw_fd())
            .chain(self.faults.iter().map(|f| f.uffd.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        loop {
            // SAFETY: `fds` is a valid array of pollfd structs that outlives the call.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(RestoreError::Handler(format!("poll: {e}")));
            }
            if fds[0].revents != 0 {
                return Ok(stats);
            }
            for (faults, fd) in self.faults.iter().zip(&fds[1..]) {
                if fd.revents & libc::POLLIN == 0 {
                    continue;
                }
                let read = faults.uffd.read_events(&mut events).map_err(|e| {
                    RestoreError::Handler(format!("reading userfaultfd events: {e}"))
                })?;
                let addresses: Vec<usize> = read
                    .filter_map(|event| match event {
                        Ok(Event::Pagefault { addr, .. }) => Some(addr as usize),
                        _ => None,
                    })
                    .collect();
                for addr in addresses {
                    let began = Instant::now();
                    let gfn = (addr.wrapping_sub(faults.base)) as u64 / PAGE;
                    if let Err(e) = self.serve(faults, gfn, &mut page, &mut stats) {
                        // Unblock the faulting thread with a zero page; the replay is aborted.
                        if gfn < self.frames {
                            let _ = install_zero(&faults.uffd, faults.host(gfn), gfn, 1, true);
                            self.installed.insert(gfn);
                        }
                        if let Ok(mut slot) = self.error.lock() {
                            slot.get_or_insert(e);
                        }
                        self.failed.store(true, Ordering::SeqCst);
                    }
                    stats.serve_time += began.elapsed();
                }
            }
        }
    }

    fn serve(
        &self,
        faults: &Faults,
        gfn: u64,
        page: &mut [u8],
        stats: &mut MissStats,
    ) -> Result<(), RestoreError> {
        if gfn >= self.frames {
            return Err(RestoreError::Handler(format!(
                "fault at frame {gfn:#x}, beyond guest memory"
            )));
        }
        let host = faults.host(gfn);
        if self.installed.contains(gfn) {
            // Served already (a second fault on the page was queued, or, with shared memory,
            // the page came in through another mapping): wake the waiter.
            let _ = faults.uffd.wake(host, PAGE_SIZE);
            return Ok(());
        }
        stats.misses += 1;
        tracing::debug!(gfn, "miss: serving the frame on demand");
        match self.source.entry(gfn)? {
            Some((slot, hash)) => {
                self.source.read_page(slot, hash, gfn, page)?;
                install_copy(&faults.uffd, page.as_ptr(), page.len(), host, gfn, true)?;
            }
            None => {
                stats.zero_misses += 1;
                install_zero(&faults.uffd, host, gfn, 1, true)?;
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
