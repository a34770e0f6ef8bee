//! [`ObjectStorage`]: a run in an S3-compatible object store (the `s3` feature).

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt};

use super::{ranges_len, too_large, Counters, RunStorage, StorageStats};
use crate::FormatError;

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
        if index.segment_bytes == 0 || !index.segment_bytes.is_multiple_of(crate::PAGE_SIZE as u64)
        {
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

/// Whether the object `location` lies directly in the "directory" `dir` (a listing is
/// recursive).
fn directly_under(location: &object_store::path::Path, dir: &object_store::path::Path) -> bool {
    location
        .prefix_match(dir)
        .is_some_and(|mut rest| rest.next().is_some() && rest.next().is_none())
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

    fn count_files(&self, dir: &Path, stop_at: u64) -> Result<u64, FormatError> {
        let key = self.key(dir)?;
        let counted = self.runtime.block_on(async {
            // One LIST request per page of up to 1000 keys; stop once `stop_at` are seen.
            let mut listing = self.store.list(Some(&key));
            let mut files = 0u64;
            while files < stop_at {
                match listing.next().await {
                    Some(Ok(meta)) if directly_under(&meta.location, &key) => files += 1,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e),
                    None => break,
                }
            }
            Ok(files)
        });
        let files = counted.map_err(|e| FormatError::storage(dir, e))?;
        self.counters.add(1 + files / 1000, 0);
        Ok(files)
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
    }
}
