//! Checks of a run directory's tree made when it is opened: a run is untrusted input, so a
//! reader refuses symbolic links inside it (they could lead it to any file of the machine).
//! The bound on the manifest's checkpoint count holds for every storage ([`crate::Run::open_in`]).

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

/// Refuses symbolic links among the entries of `dir`.
fn check_entries(dir: &Path) -> Result<(), FormatError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // A subdirectory a run never needed (none is required to exist); the reads that need
        // a file report it missing, naming it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(FormatError::io(dir, "read directory", e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| FormatError::io(dir, "read directory", e))?;
        let kind = entry
            .file_type()
            .map_err(|e| FormatError::io(entry.path(), "stat", e))?;
        if kind.is_symlink() {
            return Err(symlink_error(&entry.path()));
        }
    }
    Ok(())
}

/// Checks the tree of the run at `dir`.
pub(crate) fn check_run_tree(dir: &Path) -> Result<(), FormatError> {
    check_entries(dir)?;
    for sub in layout::SUBDIRS {
        let path = dir.join(sub);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => return Err(symlink_error(&path)),
            _ => {}
        }
        check_entries(&path)?;
    }
    Ok(())
}
