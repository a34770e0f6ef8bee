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
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt};

use crate::FormatError;

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
        Ok(Arc::new(ObjectStorage::open(location)?))
    } else {
        Ok(Arc::new(LocalStorage::new(Path::new(location))))
    }
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

    fn coalesce_gap_pages(&self) -> u64 {
        2
    }

    fn stats(&self) -> StorageStats {
        self.counters.get()
    }
}

/// Ranged GETs in flight at once.
const CONCURRENT_REQUESTS: usize = 8;

/// A run in an S3-compatible object store, under `s3://bucket/prefix`.
#[derive(Debug)]
pub struct ObjectStorage {
    root: PathBuf,
    bucket: String,
    prefix: String,
    store: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Runtime,
    counters: Counters,
    /// Segment size when pages.bin is stored as segments (see [`crate::upload`]); set by
    /// [`RunStorage::size`] of pages.bin, which a [`crate::PageStore`] asks first.
    segment_bytes: Mutex<Option<u64>>,
}

impl ObjectStorage {
    /// `s3://bucket/prefix` (the prefix may be empty), with endpoint, region and credentials
    /// from the AWS environment variables. Nothing is requested yet.
    pub fn open(location: &str) -> Result<ObjectStorage, FormatError> {
        ObjectStorage::open_with(location, &[])
    }

    /// [`ObjectStorage::open`], with `config` (`aws_endpoint`, `aws_access_key_id`, ... as
    /// object_store names them) applied over the environment.
    pub fn open_with(
        location: &str,
        config: &[(&str, &str)],
    ) -> Result<ObjectStorage, FormatError> {
        let (bucket, prefix) = parse_s3(location)?;
        let mut builder = object_store::aws::AmazonS3Builder::from_env();
        for (key, value) in config {
            let key: object_store::aws::AmazonS3ConfigKey =
                key.parse().map_err(|e| FormatError::storage(location, e))?;
            builder = builder.with_config(key, *value);
        }
        let store = builder
            .with_bucket_name(&bucket)
            // object_store retries transient failures itself; bounded so that an unreachable
            // endpoint is an error within a minute rather than a hang.
            .with_retry(object_store::RetryConfig {
                backoff: object_store::BackoffConfig::default(),
                max_retries: 4,
                retry_timeout: Duration::from_secs(60),
            })
            .build()
            .map_err(|e| FormatError::storage(location, e))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("object-store")
            .enable_all()
            .build()
            .map_err(|e| FormatError::io(location, "start the object store's runtime", e))?;
        let root = if prefix.is_empty() {
            format!("s3://{bucket}")
        } else {
            format!("s3://{bucket}/{prefix}")
        };
        Ok(ObjectStorage {
            root: PathBuf::from(root),
            bucket,
            prefix,
            store: Arc::new(store),
            runtime,
            counters: Counters::default(),
            segment_bytes: Mutex::new(None),
        })
    }

    fn is_pages(&self, path: &Path) -> bool {
        path == crate::layout::pages(&self.root)
    }

    fn segments(&self) -> Option<u64> {
        self.segment_bytes.lock().ok().and_then(|s| *s)
    }

    /// The size of a segmented pages.bin, from its index; `None` without one.
    fn segmented_size(&self) -> Result<Option<u64>, FormatError> {
        let path = self.root.join(crate::upload::SEGMENTS_INDEX);
        let Some(json) = self.get(&path, 1 << 20)? else {
            return Ok(None);
        };
        let index: crate::upload::SegmentsIndex = serde_json::from_slice(&json)
            .map_err(|e| FormatError::corrupt(&path, format!("not a segment index: {e}")))?;
        if index.segment_bytes == 0 || index.segment_bytes % crate::PAGE_SIZE as u64 != 0 {
            return Err(FormatError::corrupt(
                &path,
                format!(
                    "segment_bytes {} is not a multiple of a page",
                    index.segment_bytes
                ),
            ));
        }
        if let Ok(mut s) = self.segment_bytes.lock() {
            *s = Some(index.segment_bytes);
        }
        Ok(Some(index.bytes))
    }

    /// Ranged GETs of `(key, range)`, `CONCURRENT_REQUESTS` at a time, in order.
    fn get_ranges(
        &self,
        path: &Path,
        requests: Vec<(object_store::path::Path, Range<u64>)>,
    ) -> Result<Vec<Bytes>, FormatError> {
        let store = &self.store;
        self.runtime
            .block_on(
                futures::stream::iter(requests)
                    .map(|(key, range)| async move { store.get_range(&key, range).await })
                    .buffered(CONCURRENT_REQUESTS)
                    .try_collect(),
            )
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => {
                    FormatError::corrupt(path, "missing, but the manifest lists it as complete")
                }
                e => FormatError::storage(path, e),
            })
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The object key of `path`, a path under [`RunStorage::root`] (or relative to it).
    pub fn key(&self, path: &Path) -> Result<object_store::path::Path, FormatError> {
        let rel = path.strip_prefix(&self.root).unwrap_or(path);
        let mut parts: Vec<String> = Vec::new();
        if !self.prefix.is_empty() {
            parts.push(self.prefix.clone());
        }
        for c in rel.components() {
            match c {
                std::path::Component::Normal(name) => parts.push(
                    name.to_str()
                        .ok_or_else(|| {
                            FormatError::invalid(format!("{} is not UTF-8", path.display()))
                        })?
                        .to_string(),
                ),
                _ => {
                    return Err(FormatError::invalid(format!(
                        "{} is not a path inside {}",
                        path.display(),
                        self.root.display()
                    )))
                }
            }
        }
        object_store::path::Path::parse(parts.join("/"))
            .map_err(|e| FormatError::storage(path, object_store::Error::from(e)))
    }

    /// Stores `bytes` as the object at `path` (one PUT, or a multipart upload for large
    /// payloads, which object_store splits itself).
    pub fn put(&self, path: &Path, bytes: Bytes) -> Result<(), FormatError> {
        let key = self.key(path)?;
        self.runtime
            .block_on(self.store.put(&key, bytes.into()))
            .map(|_| ())
            .map_err(|e| FormatError::storage(path, e))
    }

    /// Uploads `len` bytes of the local file `local` as the object at `path`, streaming it
    /// in parts of `part` bytes (a multipart upload), so a large pages.bin is never in memory
    /// whole. A failure aborts the multipart upload; nothing of it becomes visible.
    pub fn put_file(
        &self,
        path: &Path,
        local: &Path,
        len: u64,
        part: usize,
    ) -> Result<(), FormatError> {
        if len <= part as u64 {
            let file = File::open(local).map_err(|e| FormatError::io(local, "open", e))?;
            let mut bytes = vec![0u8; len as usize];
            file.read_exact_at(&mut bytes, 0)
                .map_err(|e| FormatError::io(local, "read", e))?;
            return self.put(path, Bytes::from(bytes));
        }
        let key = self.key(path)?;
        let file = File::open(local).map_err(|e| FormatError::io(local, "open", e))?;
        self.runtime.block_on(async {
            let upload = self
                .store
                .put_multipart(&key)
                .await
                .map_err(|e| FormatError::storage(path, e))?;
            let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, part);
            let mut offset = 0u64;
            let mut buffer = vec![0u8; part];
            while offset < len {
                let n = part.min((len - offset) as usize);
                if let Err(e) = file.read_exact_at(&mut buffer[..n], offset) {
                    let _ = writer.abort().await;
                    return Err(FormatError::io(local, "read", e));
                }
                if let Err(e) = writer.wait_for_capacity(4).await {
                    let _ = writer.abort().await;
                    return Err(FormatError::storage(path, e));
                }
                writer.write(&buffer[..n]);
                offset += n as u64;
            }
            writer
                .finish()
                .await
                .map(|_| ())
                .map_err(|e| FormatError::storage(path, e))
        })
    }
}

/// `s3://bucket/prefix/...` → (bucket, prefix without surrounding slashes).
fn parse_s3(location: &str) -> Result<(String, String), FormatError> {
    let rest = location
        .strip_prefix("s3://")
        .ok_or_else(|| FormatError::invalid(format!("{location}: not an s3:// URL")))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.len() < 3 {
        return Err(FormatError::invalid(format!(
            "{location}: the bucket name must have at least 3 characters"
        )));
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|p| p == "." || p == "..") {
        return Err(FormatError::invalid(format!(
            "{location}: the prefix may not contain . or .. segments"
        )));
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

fn not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

impl RunStorage for ObjectStorage {
    fn root(&self) -> &Path {
        &self.root
    }

    fn get(&self, path: &Path, limit: u64) -> Result<Option<Bytes>, FormatError> {
        let key = self.key(path)?;
        let result = self.runtime.block_on(async {
            let got = match self.store.get(&key).await {
                Ok(got) => got,
                Err(e) if not_found(&e) => return Ok(None),
                Err(e) => return Err(FormatError::storage(path, e)),
            };
            // The size is known from the response headers before the body is read.
            if got.meta.size > limit {
                return Err(too_large(path, got.meta.size, limit));
            }
            got.bytes()
                .await
                .map(Some)
                .map_err(|e| FormatError::storage(path, e))
        })?;
        if let Some(bytes) = &result {
            if bytes.len() as u64 > limit {
                return Err(too_large(path, bytes.len() as u64, limit));
            }
            self.counters.add(1, bytes.len() as u64);
        } else {
            self.counters.add(1, 0);
        }
        Ok(result)
    }

    fn size(&self, path: &Path) -> Result<Option<u64>, FormatError> {
        let key = self.key(path)?;
        self.counters.add(1, 0);
        match self.runtime.block_on(self.store.head(&key)) {
            Ok(meta) => Ok(Some(meta.size)),
            // A run uploaded while it was recorded keeps pages.bin as segments.
            Err(e) if not_found(&e) && self.is_pages(path) => self.segmented_size(),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(FormatError::storage(path, e)),
        }
    }

    fn read_ranges(
        &self,
        path: &Path,
        ranges: &[Range<u64>],
        out: &mut [u8],
    ) -> Result<(), FormatError> {
        ranges_len(path, ranges, out)?;
        // Each range is one request, or one per segment it touches.
        let mut requests = Vec::with_capacity(ranges.len());
        match self.segments().filter(|_| self.is_pages(path)) {
            Some(segment) => {
                for range in ranges {
                    let mut at = range.start;
                    while at < range.end {
                        let k = at / segment;
                        let end = range.end.min((k + 1) * segment);
                        let key = self.key(&crate::upload::segment_path(&self.root, k))?;
                        requests.push((key, at - k * segment..end - k * segment));
                        at = end;
                    }
                }
            }
            None => {
                let key = self.key(path)?;
                requests.extend(ranges.iter().map(|r| (key.clone(), r.clone())));
            }
        }
        let count = requests.len() as u64;
        let lengths: Vec<u64> = requests.iter().map(|(_, r)| r.end - r.start).collect();
        let parts = self.get_ranges(path, requests)?;
        let mut at = 0usize;
        for (&len, part) in lengths.iter().zip(&parts) {
            let len = len as usize;
            if part.len() != len {
                return Err(FormatError::corrupt(
                    path,
                    format!(
                        "{len} bytes asked for at byte {at} of the ranges read, {} returned: the \
                         object ends early",
                        part.len()
                    ),
                ));
            }
            out[at..at + len].copy_from_slice(part);
            at += len;
        }
        self.counters.add(count, out.len() as u64);
        Ok(())
    }

    fn coalesce_gap_pages(&self) -> u64 {
        // A request costs a round trip; 16 pages (64 KiB) cost little more on the wire.
        16
    }

    fn stats(&self) -> StorageStats {
        self.counters.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_parse() {
        assert_eq!(
            parse_s3("s3://bucket/a/b/").unwrap(),
            ("bucket".into(), "a/b".into())
        );
        assert_eq!(
            parse_s3("s3://bucket").unwrap(),
            ("bucket".into(), "".into())
        );
        assert!(parse_s3("s3://ab/x").is_err());
        assert!(parse_s3("s3://bucket/a/../b").is_err());
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
