//! The one error type of the crate.
//!
//! Every variant that comes from a file names it: a reader of a damaged run, or a recorder that
//! ran out of disk, must be able to tell from the message alone which file is at fault.

use std::path::PathBuf;

/// What went wrong while writing or reading a recorded run.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// An I/O call on `path` failed (open, write, fsync, rename, read, ...).
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        /// The operation that failed, e.g. "fsync" or "rename to ckpt-000003.parquet".
        op: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// The Parquet library rejected `path` (unreadable footer, bad page, unwritable file, ...).
    #[error("{path}: {source}")]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },

    /// Arrow rejected data read from or written to `path`.
    #[error("{path}: {source}")]
    Arrow {
        path: PathBuf,
        #[source]
        source: arrow_schema::ArrowError,
    },

    /// `path` is readable but its contents break the format (wrong column type, a slot beyond
    /// the end of pages.bin, a gfn outside guest memory, ...).
    #[error("{path}: corrupt: {what}")]
    Corrupt { path: PathBuf, what: String },

    /// The object store holding the run failed a request (unreachable endpoint, bad
    /// credentials, no such bucket, ...), after its retries.
    #[cfg(feature = "s3")]
    #[error("{path}: {source}")]
    Storage {
        path: PathBuf,
        #[source]
        source: object_store::Error,
    },

    /// The run was written by a format version this reader does not know.
    #[error(
        "{path}: format_version {found} is not supported (this build reads version {supported}); \
         use a simuboost build that matches the recorder"
    )]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    /// `path` is not a recorded run: it does not exist or has no manifest.json.
    #[error("{path}: not a simuboost run (no manifest.json)")]
    NotARun { path: PathBuf },

    /// `RunWriter::create` was given a directory that already holds files.
    #[error("{path}: run directory already exists and is not empty")]
    DirNotEmpty { path: PathBuf },

    /// A checkpoint was requested that the run does not (yet) hold complete.
    #[error(
        "checkpoint {requested} is out of range: the run has {available} complete checkpoints"
    )]
    CheckpointOutOfRange { requested: u64, available: u64 },

    /// An interval was requested whose end checkpoint is not (yet) complete.
    #[error("interval {requested} is out of range: the run has {available} complete intervals")]
    IntervalOutOfRange { requested: u64, available: u64 },

    /// The caller handed the writer something that breaks the format's rules (a checkpoint out
    /// of order, unsorted gfns, a page beyond guest memory, ...). Nothing was written.
    #[error("invalid input to the run writer: {what}")]
    InvalidInput { what: String },
}

impl FormatError {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Self {
        FormatError::Io {
            path: path.into(),
            op,
            source,
        }
    }

    pub(crate) fn invalid(what: impl Into<String>) -> Self {
        FormatError::InvalidInput { what: what.into() }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        FormatError::Corrupt {
            path: path.into(),
            what: what.into(),
        }
    }

    #[cfg(feature = "s3")]
    pub(crate) fn storage(path: impl Into<PathBuf>, source: object_store::Error) -> Self {
        FormatError::Storage {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn parquet(path: impl Into<PathBuf>, source: parquet::errors::ParquetError) -> Self {
        FormatError::Parquet {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn arrow(path: impl Into<PathBuf>, source: arrow_schema::ArrowError) -> Self {
        FormatError::Arrow {
            path: path.into(),
            source,
        }
    }

    /// The file this error is about, when it is about one.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            FormatError::Io { path, .. }
            | FormatError::Parquet { path, .. }
            | FormatError::Arrow { path, .. }
            | FormatError::Corrupt { path, .. }
            | FormatError::UnsupportedVersion { path, .. }
            | FormatError::NotARun { path }
            | FormatError::DirNotEmpty { path } => Some(path),
            #[cfg(feature = "s3")]
            FormatError::Storage { path, .. } => Some(path),
            FormatError::CheckpointOutOfRange { .. }
            | FormatError::IntervalOutOfRange { .. }
            | FormatError::InvalidInput { .. } => None,
        }
    }
}
