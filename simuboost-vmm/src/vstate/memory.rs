//! Guest RAM: one anonymous private mapping at guest physical address 0.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use simuboost_abi::layout;

/// Guest RAM as the VMM sees it.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Guest RAM sizes must be a multiple of this (the guest maps RAM with 2 MiB pages).
pub const MEM_ALIGN: u64 = 2 << 20;
/// Smallest guest RAM the boot layout and a workload fit in.
pub const MIN_MEM_BYTES: u64 = 16 << 20;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The size is not a multiple of 2 MiB or outside the supported range.
    #[error(
        "guest memory of {bytes} bytes is not supported: it must be a multiple of 2 MiB between \
         {} MiB and {} GiB",
        MIN_MEM_BYTES >> 20,
        layout::MAX_MEM_BYTES >> 30
    )]
    BadSize {
        /// The size asked for.
        bytes: u64,
    },
    /// The memory file behind shared guest RAM could not be created.
    #[error("could not create a {bytes}-byte memory file for shared guest memory: {source}")]
    SharedFile {
        /// The size asked for.
        bytes: u64,
        /// What the kernel said.
        source: std::io::Error,
    },
    /// mmap failed.
    #[error("could not map {bytes} bytes of guest memory: {source}")]
    Map {
        /// The size asked for.
        bytes: u64,
        /// What vm-memory reported.
        source: vm_memory::mmap::FromRangesError,
    },
}

/// Maps `bytes` of zeroed guest RAM at guest physical address 0, backed by transparent huge
/// pages where the host allows.
pub fn create_guest_memory(bytes: u64) -> Result<GuestMemory, MemoryError> {
    create_guest_memory_backed(bytes, true)
}

/// Maps `bytes` of zeroed guest RAM; `huge_pages` asks for transparent huge pages. A restore
/// that fills memory page by page (userfaultfd) leaves it off: a huge page would make one
/// touched frame resident as 512.
pub fn create_guest_memory_backed(
    bytes: u64,
    huge_pages: bool,
) -> Result<GuestMemory, MemoryError> {
    if !bytes.is_multiple_of(MEM_ALIGN) || !(MIN_MEM_BYTES..=layout::MAX_MEM_BYTES).contains(&bytes)
    {
        return Err(MemoryError::BadSize { bytes });
    }
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), bytes as usize)])
        .map_err(|source| MemoryError::Map { bytes, source })?;
    let (host, size) = host_region(&memory);
    // A mapping of its own: with a flag no neighbour has, the kernel never merges guest RAM
    // into an adjacent anonymous mapping (which it did once a restore unregistered
    // userfaultfd), so its resident size stays measurable (`/proc/self/smaps`) and a child
    // process never inherits it. Best effort: without it only the measurement can fail.
    // SAFETY: advice on a mapping we own; it changes no contents.
    unsafe {
        libc::madvise(host.cast(), size as usize, libc::MADV_DONTFORK);
    }
    if !huge_pages {
        return Ok(memory);
    }
    // Transparent huge pages: on this kind of host the first touch of a 4 KiB page costs ~10 µs
    // in the host plus a shadow-paging fault in KVM; 2 MiB pages pay that once per 512 frames.
    // Best effort: without THP the guest is only slower.
    // SAFETY: advice on a mapping we own; it changes no contents.
    unsafe {
        libc::madvise(host.cast(), size as usize, libc::MADV_HUGEPAGE);
    }
    Ok(memory)
}

/// Maps `bytes` of zeroed guest RAM backed by a new memory file (memfd) and shared, so that
/// another process can map the same RAM (the simulator engine); returns the mapping and the
/// file. 4 KiB pages, like [`create_guest_memory_backed`] without huge pages.
pub fn create_shared_guest_memory(bytes: u64) -> Result<(GuestMemory, std::fs::File), MemoryError> {
    if !bytes.is_multiple_of(MEM_ALIGN) || !(MIN_MEM_BYTES..=layout::MAX_MEM_BYTES).contains(&bytes)
    {
        return Err(MemoryError::BadSize { bytes });
    }
    // SAFETY: the name is a valid NUL-terminated string; memfd_create has no other
    // preconditions and returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"simuboost-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::SharedFile {
            bytes,
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    file.set_len(bytes)
        .map_err(|source| MemoryError::SharedFile { bytes, source })?;
    let shared = file
        .try_clone()
        .map_err(|source| MemoryError::SharedFile { bytes, source })?;
    let memory = GuestMemoryMmap::from_ranges_with_files([(
        GuestAddress(0),
        bytes as usize,
        Some(vm_memory::FileOffset::new(shared, 0)),
    )])
    .map_err(|source| MemoryError::Map { bytes, source })?;
    Ok((memory, file))
}

/// An empty buffer with room for at least `bytes`, whose page-aligned part is advised to be
/// backed by transparent huge pages. For staging buffers that the VMM fills with page copies:
/// on this kind of host the first touch of a fresh 4 KiB page costs ~10 µs, and a huge page
/// pays that once per 512. Best effort, like the guest RAM's advice.
pub fn huge_page_buffer(bytes: usize) -> Vec<u8> {
    let page = simuboost_abi::PAGE_SIZE as usize;
    let mut buffer: Vec<u8> = Vec::with_capacity(bytes);
    let skip = buffer.as_ptr().align_offset(page);
    let len = buffer.capacity().saturating_sub(skip) & !(page - 1);
    if len > 0 {
        // SAFETY: advice on the buffer's own, not yet touched allocation (its page-aligned
        // part); it changes no contents.
        unsafe {
            libc::madvise(
                buffer.as_mut_ptr().add(skip).cast(),
                len,
                libc::MADV_HUGEPAGE,
            );
        }
    }
    buffer
}

/// Host address and size of the one RAM region.
pub fn host_region(memory: &GuestMemory) -> (*mut u8, u64) {
    let size: u64 = memory.iter().map(vm_memory::GuestMemoryRegion::len).sum();
    let base = memory
        .get_host_address(GuestAddress(0))
        .expect("guest RAM always starts at guest physical address 0");
    (base, size)
}
