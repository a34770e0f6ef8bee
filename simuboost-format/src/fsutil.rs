//! Crash-safe file replacement.
//!
//! Every file of a run except pages.bin is written whole under a temporary name, fsynced, then
//! renamed over its final name; the directory is fsynced afterwards so the rename itself is on
//! disk. A SIGKILL or power cut therefore leaves either the old file, the new file, or no file,
//! never a torn one, under the final name.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::FormatError;

/// The temporary name a file is written under before the rename: hidden and without the
/// `.parquet` suffix, so DuckDB globs such as `events/*.parquet` never pick up a half-written
/// file.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Writes `path` atomically: `fill` writes the contents into a fresh temporary file, which is
/// then fsynced and renamed over `path`. The caller fsyncs the parent directory (once per batch
/// of renames, see [`sync_dir`]). Returns the size of the file written.
pub(crate) fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut File, &Path) -> Result<(), FormatError>,
) -> Result<u64, FormatError> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| FormatError::io(&tmp, "create", e))?;
        fill(&mut file, path)?;
        // fsync before the rename: otherwise the rename can reach the disk before the data and a
        // crash leaves an empty or torn file under the final name.
        file.sync_all()
            .map_err(|e| FormatError::io(path, "fsync", e))?;
        let len = file
            .metadata()
            .map_err(|e| FormatError::io(path, "stat", e))?
            .len();
        std::fs::rename(&tmp, path).map_err(|e| FormatError::io(path, "rename into place", e))?;
        Ok(len)
    })();
    if result.is_err() {
        // Best effort: a stray temporary file is harmless (readers never list directories), but
        // on a full disk it holds space the retry may need.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// fsyncs a directory so that renames and creations inside it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), FormatError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FormatError::io(dir, "fsync directory", e))
}
