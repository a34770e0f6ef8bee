//! Checks of a run directory's tree made when it is opened: a run is untrusted input, so a
//! reader refuses symbolic links inside it (they could lead it to any file of the machine), and
//! a manifest that counts more checkpoints than the directory holds (an absurd count would make
//! a reader of "every interval" allocate and loop in proportion to a number read from disk).
//!
//! Directory listings are used only as these bounds: which checkpoints exist is still the
//! manifest's word alone.

use std::path::Path;

use crate::{layout, FormatError};

/// A symbolic link inside the run, as an error naming it and where it points.
fn symlink_error(path: &Path) -> FormatError {
    let target = std::fs::read_link(path)
        .map(|t| t.display().to_string())
        .unwrap_or_else(|_| "?".to_string());
    FormatError::corrupt(
        path,
        format!(
            "a symbolic link (to {target}); a run holds only regular files and directories, and \
             a reader does not follow links out of it"
        ),
    )
}

/// Refuses symbolic links among the entries of `dir`; returns how many entries are
/// `ckpt-*.parquet` files.
fn check_entries(dir: &Path) -> Result<u64, FormatError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // A subdirectory a run never needed (none is required to exist); the reads that need
        // a file report it missing, naming it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(FormatError::io(dir, "read directory", e)),
    };
    let mut checkpoints = 0;
    for entry in entries {
        let entry = entry.map_err(|e| FormatError::io(dir, "read directory", e))?;
        let kind = entry
            .file_type()
            .map_err(|e| FormatError::io(entry.path(), "stat", e))?;
        if kind.is_symlink() {
            return Err(symlink_error(&entry.path()));
        }
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if kind.is_file() && name.starts_with("ckpt-") && name.ends_with(".parquet") {
            checkpoints += 1;
        }
    }
    Ok(checkpoints)
}

/// Checks the tree of the run at `dir` whose manifest counts `checkpoints` complete ones.
pub(crate) fn check_run_tree(dir: &Path, checkpoints: u64) -> Result<(), FormatError> {
    check_entries(dir)?;
    for sub in layout::SUBDIRS {
        let path = dir.join(sub);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => return Err(symlink_error(&path)),
            _ => {}
        }
        let states = check_entries(&path)?;
        if sub == layout::STATE_DIR && states < checkpoints {
            return Err(FormatError::corrupt(
                layout::manifest(dir),
                format!(
                    "it counts {checkpoints} complete checkpoints, but {} holds the state of \
                     only {states}",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}
