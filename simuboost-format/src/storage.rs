//! Where a run lives: a local directory or an object store (`s3://bucket/prefix`).
//!
//! Everything the reader ([`crate::Run`], [`crate::PageStore`]) reads goes through one small
//! seam, [`RunStorage`]: a whole object (the manifest, a Parquet table, the guest image), the
//! size of an object, and byte ranges of an object (slots of pages.bin). Paths are the ones
//! [`crate::layout`] builds under the storage's [`RunStorage::root`], so error messages name
//! `s3://bucket/prefix/checkpoints/ckpt-000003.parquet` exactly as they name a local file.
//!
//! - [`LocalStorage`]: a directory; ranges are `pread`s.
//! - [`ObjectStorage`]: an S3-compatible object store through the `object_store` crate; ranges
//!   are ranged GETs, issued concurrently. It owns one tokio runtime and blocks on it at the
//!   seam, so the format's API stays blocking. Endpoint and credentials come from the usual
//!   AWS environment variables (`AWS_ENDPOINT_URL` or `AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`,
//!   `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ALLOW_HTTP=true` for a plain-http endpoint).
//!
//! Both count what they read ([`RunStorage::stats`]): requests and bytes, so a replay can report
//! what it cost to fetch. A run in storage is untrusted input: every whole-object read is
//! bounded by a limit the caller gives before anything is allocated.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::FormatError;

#[cfg(feature = "s3")]
mod object;
#[cfg(feature = "s3")]
pub use object::ObjectStorage;

/// What a storage has read since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Read requests: whole-object reads, ranged reads (one per range) and size look-ups.
    pub requests: u64,
    /// Bytes read.
    pub bytes: u64,
}

impl StorageStats {
    /// What was read between `earlier` and `self`.
    pub fn since(self, earlier: StorageStats) -> StorageStats {
        StorageStats {
            requests: self.requests.saturating_sub(earlier.requests),
            bytes: self.bytes.saturating_sub(earlier.bytes),
        }
    }
}

/// Counters shared by the implementations.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    requests: AtomicU64,
    bytes: AtomicU64,
}

impl Counters {
    pub(crate) fn add(&self, requests: u64, bytes: u64) {
        self.requests.fetch_add(requests, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> StorageStats {
        StorageStats {
            requests: self.requests.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

/// Where a run's files are read from. Paths are those [`crate::layout`] builds under
/// [`RunStorage::root`].
pub trait RunStorage: Send + Sync + std::fmt::Debug {
    /// The run's location: a directory, or `s3://bucket/prefix`.
    fn root(&self) -> &Path;

    /// The whole object at `path`, or `None` when there is none. An object larger than `limit`
    /// bytes is refused ([`FormatError::Corrupt`]) before it is read.
    fn get(&self, path: &Path, limit: u64) -> Result<Option<Bytes>, FormatError>;

    /// The size of the object at `path`, or `None` when there is none.
    fn size(&self, path: &Path) -> Result<Option<u64>, FormatError>;

    /// Reads the byte `ranges` of the object at `path` into `out`, back to back (`out` is as
    /// long as the ranges together). One request per range; the caller coalesces. Every range
    /// must lie inside the object: reading past its end is [`FormatError::Corrupt`].
    fn read_ranges(
        &self,
        path: &Path,
        ranges: &[Range<u64>],
        out: &mut [u8],
    ) -> Result<(), FormatError>;

    /// How many files (objects) lie directly in the directory `dir`, counting up to `stop_at`
    /// (listing stops there: the count bounds a number read from the manifest, and an absurd
    /// number must not cost an absurd listing).
    fn count_files(&self, dir: &Path, stop_at: u64) -> Result<u64, FormatError>;

    /// The open file behind `path` when the run is a local directory (`None` for an object
    /// store): what a reader that maps the file, rather than reading it, needs.
    fn local_file(&self, path: &Path) -> Result<Option<Arc<File>>, FormatError> {
        let _ = path;
        Ok(None)
    }

    /// Counts `bytes` in `requests` that a reader read through a mapping of a
    /// [`RunStorage::local_file`], so that [`RunStorage::stats`] covers every read of the run.
    fn count_mapped_read(&self, requests: u64, bytes: u64) {
        let _ = (requests, bytes);
    }

    /// How many unneeded pages between two needed ones are worth reading to save a request:
    /// a few for a local file (a syscall), many more for an object store (a round trip).
    fn coalesce_gap_pages(&self) -> u64;

    /// Requests and bytes read so far.
    fn stats(&self) -> StorageStats;
}

/// `s3://...`: a run in object storage rather than a directory.
pub fn is_remote(location: &str) -> bool {
    location.starts_with("s3://")
}

/// Opens the storage `location` names: `s3://bucket/prefix` or a directory.
pub fn open_storage(location: &str) -> Result<Arc<dyn RunStorage>, FormatError> {
    if is_remote(location) {
        open_remote(location)
    } else {
        Ok(Arc::new(LocalStorage::new(Path::new(location))))
    }
}

#[cfg(feature = "s3")]
fn open_remote(location: &str) -> Result<Arc<dyn RunStorage>, FormatError> {
    Ok(Arc::new(ObjectStorage::open(location)?))
}

#[cfg(not(feature = "s3"))]
fn open_remote(location: &str) -> Result<Arc<dyn RunStorage>, FormatError> {
    Err(FormatError::invalid(format!(
        "{location}: this build reads no object storage (simuboost-format without its `s3` feature)"
    )))
}

fn too_large(path: &Path, size: u64, limit: u64) -> FormatError {
    FormatError::corrupt(
        path,
        format!("{size} bytes, more than the {limit} a file of this kind may have"),
    )
}

fn ranges_len(path: &Path, ranges: &[Range<u64>], out: &[u8]) -> Result<(), FormatError> {
    let total: u64 = ranges.iter().map(|r| r.end.saturating_sub(r.start)).sum();
    if ranges.iter().any(|r| r.end < r.start) || total != out.len() as u64 {
        return Err(FormatError::invalid(format!(
            "read_ranges of {}: {} bytes of ranges for a {}-byte buffer",
            path.display(),
            total,
            out.len()
        )));
    }
    Ok(())
}

/// A run in a local directory.
#[derive(Debug)]
pub struct LocalStorage {
    root: PathBuf,
    /// Files opened for ranged reads (pages.bin), kept open between reads.
    open: Mutex<HashMap<PathBuf, Arc<File>>>,
    counters: Counters,
}

impl LocalStorage {
    /// The run directory `root`.
    pub fn new(root: &Path) -> LocalStorage {
        LocalStorage {
            root: root.to_path_buf(),
            open: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        }
    }

    fn file(&self, path: &Path) -> Result<Arc<File>, FormatError> {
        let mut open = self
            .open
            .lock()
            .map_err(|_| FormatError::invalid("a reader thread panicked"))?;
        if let Some(file) = open.get(path) {
            return Ok(file.clone());
        }
        let file = Arc::new(File::open(path).map_err(|e| FormatError::io(path, "open", e))?);
        open.insert(path.to_path_buf(), file.clone());
        Ok(file)
    }
}

impl RunStorage for LocalStorage {
    fn root(&self) -> &Path {
        &self.root
    }

    fn get(&self, path: &Path, limit: u64) -> Result<Option<Bytes>, FormatError> {
        use std::io::Read;
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(FormatError::io(path, "open", e)),
        };
        let size = file
            .metadata()
            .map_err(|e| FormatError::io(path, "stat", e))?
            .len();
        if size > limit {
            return Err(too_large(path, size, limit));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        // Bounded again in case the file grows while it is read.
        file.take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| FormatError::io(path, "read", e))?;
        if bytes.len() as u64 > limit {
            return Err(too_large(path, bytes.len() as u64, limit));
        }
        self.counters.add(1, bytes.len() as u64);
        Ok(Some(Bytes::from(bytes)))
    }

    fn size(&self, path: &Path) -> Result<Option<u64>, FormatError> {
        self.counters.add(1, 0);
        match std::fs::metadata(path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(FormatError::io(path, "stat", e)),
        }
    }

    fn local_file(&self, path: &Path) -> Result<Option<Arc<File>>, FormatError> {
        self.file(path).map(Some)
    }

    fn count_mapped_read(&self, requests: u64, bytes: u64) {
        self.counters.add(requests, bytes);
    }

    fn read_ranges(
        &self,
        path: &Path,
        ranges: &[Range<u64>],
        out: &mut [u8],
    ) -> Result<(), FormatError> {
        ranges_len(path, ranges, out)?;
        let file = self.file(path)?;
        let mut at = 0usize;
        for range in ranges {
            let len = (range.end - range.start) as usize;
            file.read_exact_at(&mut out[at..at + len], range.start)
                .map_err(|e| {
                    if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        FormatError::corrupt(
                            path,
                            format!("file ends inside bytes {}..{}", range.start, range.end),
                        )
                    } else {
                        FormatError::io(path, "read", e)
                    }
                })?;
            at += len;
        }
        self.counters.add(ranges.len() as u64, out.len() as u64);
        Ok(())
    }

    fn count_files(&self, dir: &Path, stop_at: u64) -> Result<u64, FormatError> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(FormatError::io(dir, "read directory", e)),
        };
        let mut files = 0;
        for entry in entries {
            if files >= stop_at {
                break;
            }
            let entry = entry.map_err(|e| FormatError::io(dir, "read directory", e))?;
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                files += 1;
            }
        }
        self.counters.add(1, 0);
        Ok(files)
    }

    fn coalesce_gap_pages(&self) -> u64 {
        2
    }

    fn stats(&self) -> StorageStats {
        self.counters.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_locations_are_s3_urls() {
        assert!(is_remote("s3://x/y") && !is_remote("/tmp/s3:/x"));
    }

    #[test]
    fn local_storage_reads_ranges_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, (0..=255u8).collect::<Vec<_>>()).unwrap();
        let s = LocalStorage::new(dir.path());
        let mut out = [0u8; 5];
        s.read_ranges(&path, &[1..3, 250..253], &mut out).unwrap();
        assert_eq!(out, [1, 2, 250, 251, 252]);
        assert_eq!(
            s.stats(),
            StorageStats {
                requests: 2,
                bytes: 5
            }
        );
        assert!(s
            .read_ranges(&path, std::slice::from_ref(&(254..259)), &mut [0; 5])
            .is_err());
        assert!(s.get(&path, 100).is_err(), "over the limit");
        assert_eq!(s.get(&path, 256).unwrap().unwrap().len(), 256);
        assert!(s.get(&dir.path().join("none"), 1).unwrap().is_none());
    }
}
