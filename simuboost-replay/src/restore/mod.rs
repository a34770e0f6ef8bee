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
//! The exception is a full restore into memory only this process maps (the KVM engine): with
//! nothing left to serve on demand it leaves userfaultfd once the load is done, and loads by
//! copying straight from a mapping of pages.bin ([`load_dense`]).
//!
//! Every page read from pages.bin is checked against the hash the page tables give it.

mod dense;
mod footprint;
mod frames;
mod server;
mod source;
mod uffd;

use std::time::Duration;

pub use dense::load_dense;
pub use footprint::{resident_bytes, shared_resident_bytes};
pub use frames::InstalledFrames;
pub use server::{PageServer, PeerUffd};
pub use source::{PageLookup, PageSource};
pub use uffd::UffdMemory;

use simuboost_format::{FormatError, PAGE_SIZE};

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
    /// pages.bin could not be mapped for a dense restore.
    #[error("cannot map {path} for reading: {source}")]
    MapPages {
        /// pages.bin.
        path: std::path::PathBuf,
        /// What the kernel said.
        source: std::io::Error,
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

/// `(start index, length)` of the runs of consecutive values in `values` (each one more than
/// the one before).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_consecutive_frames() {
        let v = [1, 2, 3, 7, 9, 10];
        assert_eq!(runs(&v).collect::<Vec<_>>(), vec![(0, 3), (3, 1), (4, 2)]);
        assert_eq!(runs(&[]).count(), 0);
    }
}
