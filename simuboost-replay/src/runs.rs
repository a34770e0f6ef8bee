//! Finding the run to replay.

use std::path::{Path, PathBuf};

use simuboost_format::{is_remote, FormatError, Run};

/// True when `location` names a run in object storage (`s3://bucket/prefix`).
pub fn is_remote_path(location: &Path) -> bool {
    location.to_str().is_some_and(is_remote)
}

/// Opens the run `location` names: a directory, or `s3://bucket/prefix`.
pub fn open_run(location: &Path) -> Result<Run, FormatError> {
    match location.to_str() {
        Some(url) if is_remote(url) => Run::open_location(url),
        _ => Run::open(location),
    }
}

/// Where the daemon puts runs when not told otherwise (`simuboost-daemon run --out`).
pub const DEFAULT_RUNS_DIR: &str = "simuboost-runs";

/// Errors finding a run.
#[derive(Debug, thiserror::Error)]
pub enum RunsError {
    /// No run directory exists.
    #[error(
        "no recorded run found in {0} (record one with `simuboost-daemon run`, or name one with \
         --run DIR)"
    )]
    NoRuns(PathBuf),
    /// The directory cannot be listed.
    #[error("cannot list {path}: {source}")]
    List {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// `path` made absolute with its symbolic links resolved as far as it exists; the part that
/// does not exist yet is appended as given. "Is this output inside the run?" must see through
/// links, or a link to the run would let a replay write into it.
pub fn resolve_path(path: &Path) -> std::io::Result<PathBuf> {
    let absolute = std::path::absolute(path)?;
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => break,
        }
    }
    let mut resolved = existing.canonicalize()?;
    resolved.extend(rest.iter().rev());
    Ok(resolved)
}

/// Whether `out` (which may not exist yet) lies inside the run directory `run`, links
/// resolved. A run in object storage has nothing local to write into.
pub fn is_inside_run(out: &Path, run: &Path) -> std::io::Result<bool> {
    if is_remote_path(run) {
        return Ok(false);
    }
    let Ok(run) = run.canonicalize() else {
        return Ok(false);
    };
    Ok(resolve_path(out)?.starts_with(run))
}

/// The newest run in `dir`: the subdirectory with a manifest whose name sorts last (the
/// daemon names runs by their RFC 3339 start time).
pub fn newest_run(dir: &Path) -> Result<PathBuf, RunsError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(RunsError::NoRuns(dir.to_path_buf()))
        }
        Err(source) => {
            return Err(RunsError::List {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("manifest.json").is_file())
        .max()
        .ok_or_else(|| RunsError::NoRuns(dir.to_path_buf()))
}
