//! Which guest frames the guest wrote: KVM's dirty bitmap (`KVM_GET_DIRTY_LOG`, with manual
//! protect when the host has it) or the per-vCPU dirty ring (`KVM_CAP_DIRTY_LOG_RING`).
//!
//! Both leave out the VMM's own writes into guest memory (device DMA); the device tracks those.

use std::sync::atomic::{AtomicU32, Ordering};

use kvm_bindings::{
    kvm_clear_dirty_log, kvm_dirty_gfn, kvm_enable_cap, KVM_CAP_DIRTY_LOG_RING,
    KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
    KVM_DIRTY_LOG_PAGE_OFFSET,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use vmm_sys_util::ioctl::{ioctl, ioctl_with_ref};
use vmm_sys_util::{ioctl_io_nr, ioctl_iowr_nr};

use simuboost_abi::PAGE_SIZE;

use super::vm::RAM_SLOT;

// Not wrapped by kvm-ioctls: KVM_CLEAR_DIRTY_LOG and KVM_RESET_DIRTY_RINGS.
const KVMIO: u32 = 0xAE;
ioctl_iowr_nr!(KVM_CLEAR_DIRTY_LOG, KVMIO, 0xc0, kvm_clear_dirty_log);
ioctl_io_nr!(KVM_RESET_DIRTY_RINGS, KVMIO, 0xc7);

/// Flag bits of a dirty-ring entry.
const DIRTY_GFN_F_DIRTY: u32 = 1 << 0;
const DIRTY_GFN_F_RESET: u32 = 1 << 1;

/// Size of the dirty ring per vCPU (entries of 16 bytes): 64 Ki entries.
pub const DIRTY_RING_BYTES: u32 = 1 << 20;

/// How the recorder learns which frames the guest wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirtyTracking {
    /// `KVM_GET_DIRTY_LOG` (+ `KVM_CLEAR_DIRTY_LOG` with manual protect): a bitmap of all RAM.
    Log,
    /// The per-vCPU dirty ring: one entry per newly dirtied frame.
    Ring,
}

impl DirtyTracking {
    /// Command-line name.
    pub fn name(self) -> &'static str {
        match self {
            DirtyTracking::Log => "log",
            DirtyTracking::Ring => "ring",
        }
    }
}

/// Errors of dirty tracking.
#[derive(Debug, thiserror::Error)]
pub enum DirtyError {
    /// The host lacks the capability.
    #[error("this host's KVM does not support {0}")]
    Unsupported(&'static str),
    /// A KVM call failed.
    #[error("KVM {what} failed: {source}")]
    Ioctl {
        /// The operation.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn os_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> DirtyError {
    move |e| DirtyError::Ioctl {
        what,
        source: std::io::Error::from_raw_os_error(e.errno()),
    }
}

/// A set of guest frames, as a bitmap over all of RAM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirtyBitmap {
    words: Vec<u64>,
    frames: u64,
}

impl DirtyBitmap {
    /// An empty set over `frames` frames.
    pub fn new(frames: u64) -> DirtyBitmap {
        DirtyBitmap {
            words: vec![0; frames.div_ceil(64) as usize],
            frames,
        }
    }

    /// Adds frame `gfn` (ignored beyond RAM).
    pub fn set(&mut self, gfn: u64) {
        if gfn < self.frames {
            self.words[(gfn / 64) as usize] |= 1 << (gfn % 64);
        }
    }

    /// Adds every frame of the guest-physical range `[gpa, gpa + len)`.
    pub fn set_range(&mut self, gpa: u64, len: u64) {
        if len == 0 {
            return;
        }
        for gfn in gpa / PAGE_SIZE..=(gpa + len - 1) / PAGE_SIZE {
            self.set(gfn);
        }
    }

    /// Whether frame `gfn` is in the set.
    pub fn contains(&self, gfn: u64) -> bool {
        gfn < self.frames && self.words[(gfn / 64) as usize] & (1 << (gfn % 64)) != 0
    }

    /// Adds the frames of a KVM-layout bitmap (bit i of word j = frame 64j+i).
    pub fn or_words(&mut self, words: &[u64]) {
        for (dst, src) in self.words.iter_mut().zip(words) {
            *dst |= src;
        }
    }

    /// Adds every frame of `other`.
    pub fn or(&mut self, other: &DirtyBitmap) {
        self.or_words(&other.words);
    }

    /// Number of frames in the set.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// The frames in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &word)| {
            let mut w = word;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros();
                w &= w - 1;
                Some(i as u64 * 64 + u64::from(bit))
            })
        })
    }

    /// Empties the set.
    pub fn clear(&mut self) {
        self.words.fill(0);
    }
}

/// Something that reports the frames the guest wrote since it was last asked.
pub trait DirtyTracker: Send {
    /// Adds the frames written since the last harvest to `into`, and re-arms tracking so that
    /// the next write to any of them is reported again.
    fn harvest(&mut self, vm: &VmFd, into: &mut DirtyBitmap) -> Result<(), DirtyError>;
}

/// `KVM_GET_DIRTY_LOG`, with `KVM_CLEAR_DIRTY_LOG` when manual protect is available (then the
/// get does not write-protect all of RAM under the MMU lock; only the harvested frames are).
pub struct DirtyLog {
    mem_bytes: u64,
    manual_protect: bool,
}

impl DirtyLog {
    /// Enables manual protect if the host has it. Call before the memslot gets
    /// `KVM_MEM_LOG_DIRTY_PAGES`.
    pub fn new(kvm: &Kvm, vm: &VmFd, mem_bytes: u64) -> Result<DirtyLog, DirtyError> {
        let manual_protect =
            kvm.check_extension_raw(u64::from(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)) > 0;
        if manual_protect {
            let cap = kvm_enable_cap {
                cap: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
                args: [u64::from(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE), 0, 0, 0],
                ..Default::default()
            };
            vm.enable_cap(&cap)
                .map_err(os_err("enable manual dirty-log protect"))?;
        }
        Ok(DirtyLog {
            mem_bytes,
            manual_protect,
        })
    }
}

impl DirtyTracker for DirtyLog {
    fn harvest(&mut self, vm: &VmFd, into: &mut DirtyBitmap) -> Result<(), DirtyError> {
        let mut words = vm
            .get_dirty_log(RAM_SLOT, self.mem_bytes as usize)
            .map_err(os_err("get dirty log"))?;
        into.or_words(&words);
        if self.manual_protect && words.iter().any(|&w| w != 0) {
            let frames = self.mem_bytes / PAGE_SIZE;
            let mut clear = kvm_clear_dirty_log {
                slot: RAM_SLOT,
                num_pages: frames as u32,
                first_page: 0,
                ..Default::default()
            };
            clear.__bindgen_anon_1.dirty_bitmap = words.as_mut_ptr().cast();
            // SAFETY: `clear` is a valid kvm_clear_dirty_log whose bitmap points to `words`, which
            // covers all `num_pages` frames and outlives the call; KVM only reads it.
            let rc = unsafe { ioctl_with_ref(vm, KVM_CLEAR_DIRTY_LOG(), &clear) };
            if rc < 0 {
                return Err(DirtyError::Ioctl {
                    what: "clear dirty log",
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        Ok(())
    }
}

/// The vCPU's dirty ring, mapped from the vCPU file descriptor.
pub struct DirtyRing {
    entries: *mut kvm_dirty_gfn,
    count: u32,
    next: u32,
}

// SAFETY: the ring mapping is owned by this struct and only touched through &mut self (and by
// KVM, which synchronises through the entries' flags).
unsafe impl Send for DirtyRing {}

impl DirtyRing {
    /// Enables the dirty ring on the VM. Must be called before any vCPU is created.
    pub fn enable(kvm: &Kvm, vm: &VmFd) -> Result<(), DirtyError> {
        let max = kvm.check_extension_int(Cap::DirtyLogRing);
        if max <= 0 || (max as u32) < DIRTY_RING_BYTES {
            return Err(DirtyError::Unsupported(
                "a 1 MiB dirty ring (KVM_CAP_DIRTY_LOG_RING)",
            ));
        }
        let cap = kvm_enable_cap {
            cap: KVM_CAP_DIRTY_LOG_RING,
            args: [u64::from(DIRTY_RING_BYTES), 0, 0, 0],
            ..Default::default()
        };
        vm.enable_cap(&cap).map_err(os_err("enable dirty ring"))
    }

    /// Maps the ring of `vcpu`.
    pub fn map(vcpu: &VcpuFd) -> Result<DirtyRing, DirtyError> {
        use std::os::fd::AsRawFd;
        // SAFETY: mapping KVM's dirty ring from the vCPU fd at the documented offset with the
        // size enabled on the VM; the result is checked and owned (unmapped in Drop).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                DIRTY_RING_BYTES as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                (u64::from(KVM_DIRTY_LOG_PAGE_OFFSET) * PAGE_SIZE) as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(DirtyError::Ioctl {
                what: "map the dirty ring",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(DirtyRing {
            entries: ptr.cast(),
            count: DIRTY_RING_BYTES / std::mem::size_of::<kvm_dirty_gfn>() as u32,
            next: 0,
        })
    }
}

impl Drop for DirtyRing {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping created in `map`, which nothing uses after this.
        unsafe {
            libc::munmap(self.entries.cast(), DIRTY_RING_BYTES as usize);
        }
    }
}

impl DirtyTracker for DirtyRing {
    fn harvest(&mut self, vm: &VmFd, into: &mut DirtyBitmap) -> Result<(), DirtyError> {
        let mut harvested = 0u32;
        loop {
            // SAFETY: index < count, so the entry lies inside the mapping.
            let entry = unsafe { self.entries.add((self.next % self.count) as usize) };
            // SAFETY: `flags` is the first u32 of a live, aligned entry that KVM publishes with
            // release semantics; reading it through an atomic pairs with that.
            let flags = unsafe { AtomicU32::from_ptr(std::ptr::addr_of_mut!((*entry).flags)) };
            if flags.load(Ordering::Acquire) & DIRTY_GFN_F_DIRTY == 0 {
                break;
            }
            // SAFETY: the entry is dirty, so KVM has finished writing slot and offset.
            let (slot, offset) = unsafe { ((*entry).slot, (*entry).offset) };
            if slot == RAM_SLOT {
                into.set(offset);
            }
            flags.store(DIRTY_GFN_F_RESET, Ordering::Release);
            self.next = self.next.wrapping_add(1);
            harvested += 1;
        }
        if harvested > 0 {
            // SAFETY: KVM_RESET_DIRTY_RINGS takes no argument; `vm` is a valid VM fd.
            let rc = unsafe { ioctl(vm, KVM_RESET_DIRTY_RINGS()) };
            if rc < 0 {
                return Err(DirtyError::Ioctl {
                    what: "reset dirty rings",
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        Ok(())
    }
}
