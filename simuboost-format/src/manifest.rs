//! manifest.json: what the run is and how many of its checkpoints are complete.
//!
//! The manifest is the single source of truth for readers: they never list directories to find
//! out what exists, because a crash can leave the files of an incomplete checkpoint behind. The
//! writer replaces the manifest atomically as the very last step of a checkpoint.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::fsutil::{sync_dir, write_atomic};
use crate::storage::{LocalStorage, RunStorage};
use crate::{layout, FormatError, FORMAT_VERSION};

/// Largest guest RAM a manifest may declare (1 TiB): readers size their page maps by it, so a
/// damaged or crafted `meta.mem_bytes` must not make them allocate without bound.
pub const MAX_MEM_BYTES: u64 = 1 << 40;
/// A manifest is a few KiB; anything far larger is not one.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// Most CPUID leaves a manifest may list (KVM itself takes at most 80).
pub const MAX_CPUID_ENTRIES: usize = 256;

/// One CPUID leaf as the guest's vCPU was given it: KVM's `kvm_cpuid_entry2` without its
/// padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuidEntry {
    /// The leaf (EAX on entry to CPUID).
    pub function: u32,
    /// The subleaf (ECX on entry), where `flags` says it matters.
    pub index: u32,
    /// KVM's `KVM_CPUID_FLAG_*` bits.
    pub flags: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// How a run was recorded; written once at creation and never changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMeta {
    /// Workload name as given to the recorder (e.g. `kvstore`).
    pub workload: String,
    /// Guest RAM in bytes; a multiple of [`crate::PAGE_SIZE`].
    pub mem_bytes: u64,
    /// The seed handed to the workload.
    pub seed: u64,
    /// Target wall-clock length of an interval, in nanoseconds.
    pub interval_ns: u64,
    /// How dirty pages were found (e.g. `kvm-dirty-log`).
    pub dirty_tracking: String,
    /// The access tracer in use (e.g. `ebpf`, `none`).
    pub tracer: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// xxh3 hash of the guest ELF image as hex (the recorder picks the width), so replay can
    /// refuse a different guest.
    pub guest_image_xxh3: String,
    /// Path of the disk image, if the workload had one.
    pub disk_image: Option<String>,
    /// The CPUID the guest's vCPU was given, so that a replay gives it the same on any host
    /// (and need not ask KVM). Empty in runs recorded before 2026-12-06: a replay then gives
    /// the guest what the replaying host's KVM supports, as the recorder did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpuid: Vec<CpuidEntry>,
}

/// The contents of manifest.json.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT_VERSION`] when written by this crate; readers reject any other value.
    pub format_version: u32,
    pub meta: RunMeta,
    /// Number of complete checkpoints: checkpoints `0..checkpoints` are loadable.
    pub checkpoints: u64,
    /// A consolidated page map is written at every checkpoint that is a multiple of this.
    pub consolidate_every: u64,
    /// Number of slots of pages.bin that complete checkpoints may reference; pages.bin may be
    /// longer (pages of an incomplete checkpoint), never shorter.
    pub page_slots: u64,
    /// True once the recorder stopped and called `finish`.
    pub finished: bool,
    /// The guest's exit status, if it exited by itself.
    pub exit_status: Option<u64>,
    /// Why recording stopped (e.g. `guest exit`, `SIGINT`, `error: ...`).
    pub stop_reason: Option<String>,
}

impl Manifest {
    /// Number of guest pages (`mem_bytes / PAGE_SIZE`).
    pub fn mem_pages(&self) -> u64 {
        self.meta.mem_bytes / crate::PAGE_SIZE as u64
    }

    /// Number of complete intervals: interval i is complete once checkpoint i+1 is.
    pub fn intervals(&self) -> u64 {
        self.checkpoints.saturating_sub(1)
    }

    /// Reads and validates `<run>/manifest.json`.
    pub fn read(run: &Path) -> Result<Manifest, FormatError> {
        Manifest::read_from(&LocalStorage::new(run))
    }

    /// Reads and validates the manifest of the run in `storage`.
    pub fn read_from(storage: &dyn RunStorage) -> Result<Manifest, FormatError> {
        let run = storage.root();
        let path = layout::manifest(run);
        let bytes = match storage.get(&path, MAX_MANIFEST_BYTES)? {
            Some(b) => b,
            None => {
                return Err(FormatError::NotARun {
                    path: run.to_path_buf(),
                })
            }
        };
        // Look at format_version before anything else: a future version may have changed every
        // other field, and "unsupported version" is the useful message then, not a parse error.
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| FormatError::corrupt(&path, format!("not valid JSON: {e}")))?;
        let found = value
            .get("format_version")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| FormatError::corrupt(&path, "no numeric format_version field"))?;
        if found != u64::from(FORMAT_VERSION) {
            return Err(FormatError::UnsupportedVersion {
                path,
                found: u32::try_from(found).unwrap_or(u32::MAX),
                supported: FORMAT_VERSION,
            });
        }
        let manifest: Manifest = serde_json::from_value(value)
            .map_err(|e| FormatError::corrupt(&path, format!("bad manifest: {e}")))?;
        manifest.validate(&path)?;
        Ok(manifest)
    }

    fn validate(&self, path: &Path) -> Result<(), FormatError> {
        let page = crate::PAGE_SIZE as u64;
        if self.meta.mem_bytes == 0 || !self.meta.mem_bytes.is_multiple_of(page) {
            return Err(FormatError::corrupt(
                path,
                format!(
                    "meta.mem_bytes {} is not a positive multiple of {page}",
                    self.meta.mem_bytes
                ),
            ));
        }
        if self.meta.mem_bytes > MAX_MEM_BYTES {
            return Err(FormatError::corrupt(
                path,
                format!(
                    "meta.mem_bytes {} is more than the format's limit of {} GiB",
                    self.meta.mem_bytes,
                    MAX_MEM_BYTES >> 30
                ),
            ));
        }
        if self.consolidate_every == 0 {
            return Err(FormatError::corrupt(path, "consolidate_every is 0"));
        }
        if self.meta.cpuid.len() > MAX_CPUID_ENTRIES {
            return Err(FormatError::corrupt(
                path,
                format!(
                    "meta.cpuid lists {} leaves, more than the format's limit of \
                     {MAX_CPUID_ENTRIES}",
                    self.meta.cpuid.len()
                ),
            ));
        }
        Ok(())
    }

    /// Replaces `<run>/manifest.json` atomically (temp file, fsync, rename, fsync directory).
    pub(crate) fn write(&self, run: &Path) -> Result<(), FormatError> {
        let path = layout::manifest(run);
        let mut json = serde_json::to_vec_pretty(self)
            .map_err(|e| FormatError::corrupt(&path, format!("cannot serialize manifest: {e}")))?;
        json.push(b'\n');
        write_atomic(&path, |file, path| {
            file.write_all(&json)
                .map_err(|e| FormatError::io(path, "write", e))
        })?;
        sync_dir(run)
    }
}
