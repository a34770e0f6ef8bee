//! The virtual disk: a host file of 4 KiB blocks behind a one-block header.
//!
//! Block 0 of the file is a [`DiskHeader`] saying how many bytes of input data follow (for the
//! `compress` and `sort` workloads); the guest sees the file's blocks 1.. as its blocks 0..
//! A file without the header is a plain disk with no input data.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice, WriteVolatile};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use simuboost_abi::{WorkloadId, PAGE_SIZE};

/// Disk block size.
pub const BLOCK_SIZE: u64 = PAGE_SIZE;
/// Magic bytes at the start of a simuboost disk image.
pub const DISK_MAGIC: [u8; 8] = *b"SIMUDISK";
/// Version of the header layout.
pub const DISK_VERSION: u32 = 1;

/// Errors opening or creating a disk image.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The file does not exist.
    #[error("disk image {0} does not exist")]
    Missing(PathBuf),
    /// Opening, reading or writing the file failed.
    #[error("disk image {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file is too small or its header is inconsistent.
    #[error("disk image {path} is not usable: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The header in block 0 of a disk image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskHeader {
    /// The workload whose data set the image holds.
    pub workload: Option<WorkloadId>,
    /// Bytes of input data starting at guest block 0.
    pub data_bytes: u64,
    /// Seed the data set was generated with.
    pub seed: u64,
}

/// Block 0's header as stored (little-endian fields, as the guest and host both are).
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct StoredHeader {
    magic: [u8; 8],
    version: u32,
    /// A [`WorkloadId`] as `u32`, 0 for none.
    workload: u32,
    data_bytes: u64,
    seed: u64,
}

const _: () = assert!(std::mem::size_of::<StoredHeader>() == 32);

impl DiskHeader {
    fn encode(&self) -> Vec<u8> {
        let stored = StoredHeader {
            magic: DISK_MAGIC,
            version: DISK_VERSION,
            workload: self.workload.map_or(0, |w| w as u32),
            data_bytes: self.data_bytes,
            seed: self.seed,
        };
        let mut block = vec![0u8; BLOCK_SIZE as usize];
        block[..std::mem::size_of::<StoredHeader>()].copy_from_slice(stored.as_bytes());
        block
    }

    fn decode(block: &[u8]) -> Option<Result<DiskHeader, String>> {
        let (stored, _) = StoredHeader::read_from_prefix(block).ok()?;
        if stored.magic != DISK_MAGIC {
            return None;
        }
        if stored.version != DISK_VERSION {
            return Some(Err(format!(
                "header version {} is not supported (this build reads version {DISK_VERSION})",
                stored.version
            )));
        }
        Some(Ok(DiskHeader {
            workload: WorkloadId::from_raw(stored.workload),
            data_bytes: stored.data_bytes,
            seed: stored.seed,
        }))
    }
}

/// An open disk image.
#[derive(Debug)]
pub struct Disk {
    file: File,
    path: PathBuf,
    /// Blocks visible to the guest.
    blocks: u64,
    /// Offset of guest block 0 in the file.
    base: u64,
    header: Option<DiskHeader>,
}

impl Disk {
    /// Opens an existing disk image for reading and writing.
    pub fn open(path: &Path) -> Result<Disk, DiskError> {
        let io_err = |source| DiskError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => DiskError::Missing(path.to_path_buf()),
                _ => io_err(e),
            })?;
        let len = file.metadata().map_err(io_err)?.len();
        let mut first = vec![0u8; BLOCK_SIZE.min(len) as usize];
        file.read_exact_at(&mut first, 0).map_err(io_err)?;
        let invalid = |reason: String| DiskError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let header = match DiskHeader::decode(&first) {
            None => None,
            Some(Ok(h)) => Some(h),
            Some(Err(reason)) => return Err(invalid(reason)),
        };
        let base = if header.is_some() { BLOCK_SIZE } else { 0 };
        let blocks = len.saturating_sub(base) / BLOCK_SIZE;
        if blocks == 0 {
            return Err(invalid(format!(
                "it holds no complete {BLOCK_SIZE}-byte block ({len} bytes)"
            )));
        }
        if let Some(h) = header {
            if h.data_bytes > blocks * BLOCK_SIZE {
                return Err(invalid(format!(
                    "the header promises {} bytes of data but the image holds only {} bytes",
                    h.data_bytes,
                    blocks * BLOCK_SIZE
                )));
            }
        }
        Ok(Disk {
            file,
            path: path.to_path_buf(),
            blocks,
            base,
            header,
        })
    }

    /// Creates a disk image of `total_bytes` (rounded up to blocks) whose first `data_bytes`
    /// hold the input data set of `workload`, generated from `seed`.
    pub fn create_dataset(
        path: &Path,
        workload: WorkloadId,
        data_bytes: u64,
        total_bytes: u64,
        seed: u64,
    ) -> Result<Disk, DiskError> {
        let io_err = |source| DiskError::Io {
            path: path.to_path_buf(),
            source,
        };
        let data_bytes = data_bytes.div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
        let total = total_bytes.max(data_bytes).div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
        let file = File::create(path).map_err(io_err)?;
        let header = DiskHeader {
            workload: Some(workload),
            data_bytes,
            seed,
        };
        file.write_all_at(&header.encode(), 0).map_err(io_err)?;
        let mut chunk = vec![0u8; 1 << 20];
        let mut offset = 0;
        while offset < data_bytes {
            let n = (data_bytes - offset).min(chunk.len() as u64) as usize;
            let buf = &mut chunk[..n];
            match workload {
                WorkloadId::Sort => {
                    simuboost_workloads::dataset::fill_sort_input(seed, offset, buf)
                }
                _ => simuboost_workloads::dataset::fill_compress_input(seed, offset, buf),
            }
            file.write_all_at(buf, BLOCK_SIZE + offset)
                .map_err(io_err)?;
            offset += n as u64;
        }
        file.set_len(BLOCK_SIZE + total).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        drop(file);
        Disk::open(path)
    }

    /// Blocks visible to the guest.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Bytes of input data at the start of the disk (0 without a header).
    pub fn data_bytes(&self) -> u64 {
        self.header.map_or(0, |h| h.data_bytes)
    }

    /// The image's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `count` blocks at `block` lie on the disk.
    pub fn in_range(&self, block: u64, count: u64) -> bool {
        block
            .checked_add(count)
            .is_some_and(|end| end <= self.blocks)
    }

    /// Reads whole blocks starting at `block` into `buf`.
    pub fn read(&self, block: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, self.base + block * BLOCK_SIZE)
    }

    /// Writes whole blocks starting at `block` from `buf`.
    pub fn write(&self, block: u64, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, self.base + block * BLOCK_SIZE)
    }

    /// The disk's bytes from `block` on, as a stream that guest memory can be read from or
    /// written to directly (`GuestMemory::read_exact_volatile_from`/`write_all_volatile_to`),
    /// with no buffer between them.
    pub fn stream_at(&self, block: u64) -> DiskStream<'_> {
        DiskStream {
            disk: self,
            offset: self.base + block * BLOCK_SIZE,
        }
    }
}

/// A position on a [`Disk`] that moves on as bytes are transferred: `pread`/`pwrite` at the
/// position, so the file's own offset is never used.
#[derive(Debug)]
pub struct DiskStream<'a> {
    disk: &'a Disk,
    offset: u64,
}

impl DiskStream<'_> {
    fn offset(&self) -> Result<libc::off_t, VolatileMemoryError> {
        libc::off_t::try_from(self.offset).map_err(|_| {
            VolatileMemoryError::IOError(io::Error::from_raw_os_error(libc::EOVERFLOW))
        })
    }
}

impl ReadVolatile for DiskStream<'_> {
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let offset = self.offset()?;
        let guard = buf.ptr_guard_mut();
        // SAFETY: a `VolatileSlice`'s pointer is valid for writes of its `len()` bytes (its
        // constructor's invariant), and the descriptor is the disk's open file, borrowed for as
        // long as `self` lives.
        let read = unsafe {
            libc::pread(
                self.disk.file.as_raw_fd(),
                guard.as_ptr().cast(),
                buf.len(),
                offset,
            )
        };
        // Whatever the outcome, the kernel may have written some of the buffer.
        let Ok(read) = usize::try_from(read) else {
            buf.bitmap().mark_dirty(0, buf.len());
            return Err(VolatileMemoryError::IOError(io::Error::last_os_error()));
        };
        buf.bitmap().mark_dirty(0, read);
        self.offset += read as u64;
        Ok(read)
    }
}

impl WriteVolatile for DiskStream<'_> {
    fn write_volatile<B: BitmapSlice>(
        &mut self,
        buf: &VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let offset = self.offset()?;
        let guard = buf.ptr_guard();
        // SAFETY: a `VolatileSlice`'s pointer is valid for reads of its `len()` bytes, and the
        // descriptor is the disk's open file, borrowed for as long as `self` lives.
        let written = unsafe {
            libc::pwrite(
                self.disk.file.as_raw_fd(),
                guard.as_ptr().cast(),
                buf.len(),
                offset,
            )
        };
        let written = usize::try_from(written)
            .map_err(|_| VolatileMemoryError::IOError(io::Error::last_os_error()))?;
        self.offset += written as u64;
        Ok(written)
    }
}
