//! Copying a run into object storage, whole or as it is recorded.
//!
//! [`Uploader::sync`] reads the local manifest and uploads what it names that is not uploaded
//! yet: the files of every complete checkpoint and interval (they never change once
//! committed), the guest image, pages.bin up to the manifest's `page_slots`, and **the
//! manifest last** — the very bytes read at the start of the sync. A remote reader trusts only
//! the manifest, exactly like a local one, so it never sees an interval whose files are not
//! all there. The local run is only read, never changed: a failed upload loses nothing, and
//! the next sync (or `simuboost-daemon upload`) starts over from what is missing.
//!
//! pages.bin is uploaded in one of two layouts, both of which [`crate::ObjectStorage`] reads:
//!
//! - [`PagesLayout::Plain`]: one object `pages.bin`, exactly the local file (up to
//!   `page_slots`): what a plain copy of the directory gives. For a run that is finished.
//! - [`PagesLayout::Segments`]: objects `pages.bin.segments/NNNNNN`, each [`SEGMENT_BYTES`] of
//!   pages.bin (the last one shorter), plus `pages.bin.segments.json` saying how many bytes
//!   they hold. Objects cannot be appended to, so while a run grows only its last segment is
//!   uploaded again: each sync costs what the interval added plus at most one segment.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::storage::{LocalStorage, ObjectStorage, RunStorage};
use crate::{layout, FormatError, Manifest, PAGE_SIZE};

/// Bytes per segment of a segmented pages.bin (16 MiB, 4096 pages).
pub const SEGMENT_BYTES: u64 = 16 << 20;
/// Directory of the segments of pages.bin in object storage.
pub const SEGMENTS_DIR: &str = "pages.bin.segments";
/// The index of a segmented pages.bin.
pub const SEGMENTS_INDEX: &str = "pages.bin.segments.json";

/// `pages.bin.segments.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentsIndex {
    /// Bytes per segment (every segment but the last holds exactly this many).
    pub segment_bytes: u64,
    /// Bytes of pages.bin the segments hold together.
    pub bytes: u64,
}

/// `pages.bin.segments/000003`
pub fn segment_path(run: &Path, segment: u64) -> PathBuf {
    run.join(SEGMENTS_DIR).join(format!("{segment:06}"))
}

/// How pages.bin is stored remotely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagesLayout {
    /// One object, as a plain copy of the directory has it.
    Plain,
    /// Segments that a growing run can extend (see the module documentation).
    Segments,
}

/// What uploads have done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadStats {
    /// Complete checkpoints the remote manifest names.
    pub checkpoints: u64,
    /// Objects written.
    pub objects: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Attempts that failed and were retried.
    pub retries: u64,
}

/// Part size of multipart uploads.
const PART_BYTES: usize = 16 << 20;

/// Uploads a local run to `s3://bucket/prefix`, incrementally.
pub struct Uploader {
    local: PathBuf,
    remote: ObjectStorage,
    layout: PagesLayout,
    /// Files (relative paths) already uploaded; they never change once committed.
    done: HashSet<PathBuf>,
    /// Bytes of pages.bin uploaded in full segments (segmented layout).
    segments_done: u64,
    /// The manifest last uploaded.
    last_manifest: Option<Bytes>,
    /// Attempts per object before a sync gives up.
    attempts: u32,
    stats: UploadStats,
}

impl Uploader {
    /// An uploader of the run in `local` to `location` (`s3://bucket/prefix`). Nothing is
    /// uploaded until [`Uploader::sync`].
    pub fn new(local: &Path, location: &str, layout: PagesLayout) -> Result<Uploader, FormatError> {
        Ok(Uploader::with_storage(
            local,
            ObjectStorage::open(location)?,
            layout,
        ))
    }

    /// An uploader of the run in `local` to `remote`.
    pub fn with_storage(local: &Path, remote: ObjectStorage, layout: PagesLayout) -> Uploader {
        Uploader {
            local: local.to_path_buf(),
            remote,
            layout,
            done: HashSet::new(),
            segments_done: 0,
            last_manifest: None,
            attempts: 3,
            stats: UploadStats::default(),
        }
    }

    /// Where the run goes.
    pub fn remote(&self) -> &Path {
        self.remote.root()
    }

    /// What has been uploaded so far.
    pub fn stats(&self) -> UploadStats {
        self.stats
    }

    /// Uploads what the local manifest names and the remote copy lacks, the manifest last.
    /// Each object is tried a few times (object_store retries transient errors within each
    /// try); `on_retry` hears about each failed try. On error the remote manifest still names
    /// only what was complete before, and the next sync picks up from there.
    pub fn sync(
        &mut self,
        on_retry: &mut dyn FnMut(&FormatError),
    ) -> Result<UploadStats, FormatError> {
        let local = LocalStorage::new(&self.local);
        let manifest_path = layout::manifest(&self.local);
        let Some(manifest_bytes) = local.get(&manifest_path, 1 << 20)? else {
            return Err(FormatError::NotARun {
                path: self.local.clone(),
            });
        };
        if self.last_manifest.as_ref() == Some(&manifest_bytes) {
            return Ok(self.stats);
        }
        let manifest = Manifest::read_from(&local)?;
        let image = Path::new(layout::GUEST_IMAGE);
        if !self.done.contains(image) && self.local.join(image).exists() {
            self.put_file(image, on_retry)?;
        }
        for c in 0..manifest.checkpoints {
            let mut files = vec![
                layout::checkpoint_table(Path::new(""), c),
                layout::state_table(Path::new(""), c),
            ];
            if c % manifest.consolidate_every == 0 {
                files.push(layout::pagemap_table(Path::new(""), c));
            }
            let dump = layout::dump_file(Path::new(""), c);
            if self.local.join(&dump).exists() {
                files.push(dump);
            }
            if c > 0 {
                files.push(layout::events_table(Path::new(""), c - 1));
                files.push(layout::interval_table(Path::new(""), c - 1));
                // Optional tables: whether the file exists is the answer (as for readers).
                for optional in [
                    layout::access_table(Path::new(""), c - 1),
                    layout::eventpages_table(Path::new(""), c - 1),
                ] {
                    if self.local.join(&optional).exists() {
                        files.push(optional);
                    }
                }
            }
            for file in files {
                if !self.done.contains(&file) {
                    self.put_file(&file, on_retry)?;
                }
            }
        }
        let pages_bytes = manifest.page_slots * PAGE_SIZE as u64;
        match self.layout {
            PagesLayout::Plain => {
                let pages = layout::pages(&self.local);
                let remote = layout::pages(self.remote.root());
                self.retry(on_retry, |r| {
                    r.remote.put_file(&remote, &pages, pages_bytes, PART_BYTES)
                })?;
                self.count(pages_bytes);
            }
            PagesLayout::Segments => self.put_segments(pages_bytes, on_retry)?,
        }
        self.put_bytes(&manifest_path, manifest_bytes.clone(), on_retry)?;
        self.last_manifest = Some(manifest_bytes);
        self.stats.checkpoints = manifest.checkpoints;
        Ok(self.stats)
    }

    fn count(&mut self, bytes: u64) {
        self.stats.objects += 1;
        self.stats.bytes += bytes;
    }

    fn retry(
        &mut self,
        on_retry: &mut dyn FnMut(&FormatError),
        mut put: impl FnMut(&Self) -> Result<(), FormatError>,
    ) -> Result<(), FormatError> {
        let mut attempt = 1;
        loop {
            match put(self) {
                Ok(()) => return Ok(()),
                Err(e) if attempt < self.attempts => {
                    on_retry(&e);
                    self.stats.retries += 1;
                    std::thread::sleep(Duration::from_millis(500 << attempt));
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Uploads the local file `rel` (relative to the run) whole.
    fn put_file(
        &mut self,
        rel: &Path,
        on_retry: &mut dyn FnMut(&FormatError),
    ) -> Result<(), FormatError> {
        let local = self.local.join(rel);
        let len = std::fs::metadata(&local)
            .map_err(|e| FormatError::io(&local, "stat", e))?
            .len();
        let remote = self.remote.root().join(rel);
        self.retry(on_retry, |r| {
            r.remote.put_file(&remote, &local, len, PART_BYTES)
        })?;
        self.count(len);
        self.done.insert(rel.to_path_buf());
        Ok(())
    }

    fn put_bytes(
        &mut self,
        local_path: &Path,
        bytes: Bytes,
        on_retry: &mut dyn FnMut(&FormatError),
    ) -> Result<(), FormatError> {
        let rel = local_path.strip_prefix(&self.local).unwrap_or(local_path);
        let remote = self.remote.root().join(rel);
        let len = bytes.len() as u64;
        self.retry(on_retry, |r| r.remote.put(&remote, bytes.clone()))?;
        self.count(len);
        Ok(())
    }

    /// Uploads pages.bin up to `bytes` as segments: the ones not complete remotely yet, then
    /// the index.
    fn put_segments(
        &mut self,
        bytes: u64,
        on_retry: &mut dyn FnMut(&FormatError),
    ) -> Result<(), FormatError> {
        let local = layout::pages(&self.local);
        let file = std::fs::File::open(&local).map_err(|e| FormatError::io(&local, "open", e))?;
        let mut at = self.segments_done;
        while at < bytes {
            let segment = at / SEGMENT_BYTES;
            let end = ((segment + 1) * SEGMENT_BYTES).min(bytes);
            let start = segment * SEGMENT_BYTES;
            let mut data = vec![0u8; (end - start) as usize];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut data, start)
                .map_err(|e| FormatError::io(&local, "read", e))?;
            let data = Bytes::from(data);
            let remote = segment_path(self.remote.root(), segment);
            self.retry(on_retry, |r| r.remote.put(&remote, data.clone()))?;
            self.count(end - start);
            if end - start == SEGMENT_BYTES {
                self.segments_done = end;
            }
            at = end;
        }
        let index = SegmentsIndex {
            segment_bytes: SEGMENT_BYTES,
            bytes,
        };
        let json = serde_json::to_vec(&index)
            .map_err(|e| FormatError::invalid(format!("cannot encode the segment index: {e}")))?;
        let remote = self.remote.root().join(SEGMENTS_INDEX);
        let len = json.len() as u64;
        let json = Bytes::from(json);
        self.retry(on_retry, |r| r.remote.put(&remote, json.clone()))?;
        self.count(len);
        Ok(())
    }
}
