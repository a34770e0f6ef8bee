//! `access/interval-N.parquet`: the working set of interval N, one row per frame touched, in
//! `first_touch` order; and the rules an access log obeys, checked here for the writer's input
//! and for what the reader reads alike.

use std::path::Path;

use super::columns::{
    read_batches, write_table, BatchBuilder, Cols, Column,
    ColumnType::{Utf8, U32, U64},
    Settings, Table,
};
use crate::pages::GfnSet;
use crate::records::{Access, AccessKind, AccessSource};
use crate::storage::RunStorage;
use crate::{layout, FormatError};

pub(crate) const TABLE: Table = Table {
    dir: layout::ACCESS_DIR,
    columns: &[
        Column::new("interval", U64, "i."),
        Column::new("gfn", U64, "Guest frame number, below `mem_bytes / 4096`."),
        Column::new("kind", Utf8, "`read` or `write` (below)."),
        Column::new("source", Utf8, "`mmu` or `dma` (below)."),
        Column::new(
            "first_touch",
            U32,
            "Order of the frame's first touch in the interval, 0 = first frame touched (below). \
             Equals the row number.",
        ),
    ],
    // `kind` and `source` are short strings, dictionary-encoded in the file.
    settings: Settings::Access,
};

/// Writes the access log of `interval`; `access` has passed [`check`]. An empty log gives a
/// zero-row file.
pub(crate) fn write(path: &Path, interval: u64, access: &[Access]) -> Result<u64, FormatError> {
    let batch = BatchBuilder::new(&TABLE, access.len())
        .number("interval", interval)
        .u64s("gfn", access.iter().map(|a| a.gfn))
        .strs("kind", access.iter().map(|a| a.kind.as_str()))
        .strs("source", access.iter().map(|a| a.source.as_str()))
        .u32s("first_touch", access.iter().map(|a| a.first_touch))
        .finish(path)?;
    write_table(path, &TABLE, &[batch])
}

/// Reads an access log and checks it like the writer checked its input ([`check`]), plus that
/// `kind` and `source` hold only the documented values.
pub(crate) fn read(
    storage: &dyn RunStorage,
    path: &Path,
    interval: u64,
    mem_pages: u64,
) -> Result<Vec<Access>, FormatError> {
    let mut access = Vec::new();
    // One row per frame touched.
    for batch in read_batches(storage, path, None, mem_pages)? {
        let cols = Cols::new(&batch, path);
        cols.check_number("interval", interval)?;
        let gfns = cols.u64s("gfn")?;
        let kinds = cols.strs("kind")?;
        let sources = cols.strs("source")?;
        let first_touch = cols.u32s("first_touch")?;
        for (i, &gfn) in gfns.iter().enumerate() {
            let row = access.len();
            let kind = AccessKind::from_name(kinds.value(i)).ok_or_else(|| {
                FormatError::corrupt(
                    path,
                    format!(
                        "row {row}: kind {:?} is neither \"read\" nor \"write\"",
                        kinds.value(i)
                    ),
                )
            })?;
            let source = AccessSource::from_name(sources.value(i)).ok_or_else(|| {
                FormatError::corrupt(
                    path,
                    format!(
                        "row {row}: source {:?} is neither \"mmu\" nor \"dma\"",
                        sources.value(i)
                    ),
                )
            })?;
            access.push(Access {
                gfn,
                kind,
                source,
                first_touch: first_touch[i],
            });
        }
    }
    check(&access, mem_pages).map_err(|what| FormatError::corrupt(path, what))?;
    Ok(access)
}

/// Reads only the frames of an access log, in first-touch order: what a restore needs. The
/// `interval` and `gfn` columns are checked as [`read`] checks them (in guest memory, each
/// once); `kind`, `source` and `first_touch` are not decoded, which makes this several times
/// cheaper than [`read`] for a large working set.
pub(crate) fn read_frames(
    storage: &dyn RunStorage,
    path: &Path,
    interval: u64,
    mem_pages: u64,
) -> Result<Vec<u64>, FormatError> {
    let mut frames = Vec::new();
    let mut seen = GfnSet::new(mem_pages);
    for batch in read_batches(storage, path, Some(&["interval", "gfn"]), mem_pages)? {
        let cols = Cols::new(&batch, path);
        cols.check_number("interval", interval)?;
        for &gfn in cols.u64s("gfn")? {
            check_frame(&mut seen, gfn, mem_pages)
                .map_err(|what| FormatError::corrupt(path, what))?;
            frames.push(gfn);
        }
    }
    Ok(frames)
}

/// The rules of every access log: row i has `first_touch` i, every gfn is inside guest memory
/// (`mem_pages`) and appears once. Returns the set of its gfns.
pub(crate) fn check(access: &[Access], mem_pages: u64) -> Result<GfnSet, String> {
    let mut seen = GfnSet::new(mem_pages);
    for (i, a) in access.iter().enumerate() {
        if u64::from(a.first_touch) != i as u64 {
            return Err(format!(
                "row {i} (gfn {:#x}) has first_touch {}; rows must be in first-touch order, row \
                 i having first_touch i",
                a.gfn, a.first_touch
            ));
        }
        check_frame(&mut seen, a.gfn, mem_pages)?;
    }
    Ok(seen)
}

/// The rules of one frame of an access log: inside guest memory, and not in `seen` yet (it is
/// added).
fn check_frame(seen: &mut GfnSet, gfn: u64, mem_pages: u64) -> Result<(), String> {
    if gfn >= mem_pages {
        return Err(format!(
            "gfn {gfn:#x} is beyond guest memory ({mem_pages} pages)"
        ));
    }
    if !seen.insert(gfn) {
        return Err(format!("gfn {gfn:#x} appears twice"));
    }
    Ok(())
}

/// The writer's extra rule, which needs the checkpoint's pages: the `write` rows are exactly
/// `dirty` (the checkpoint's gfns, ascending). `seen` is what [`check`] returned.
pub(crate) fn check_writes(access: &[Access], dirty: &[u64], seen: &GfnSet) -> Result<(), String> {
    let mut writes = 0usize;
    for a in access {
        match (a.kind, dirty.binary_search(&a.gfn).is_ok()) {
            (AccessKind::Write, true) => writes += 1,
            (AccessKind::Read, false) => {}
            (AccessKind::Write, false) => {
                return Err(format!(
                    "gfn {:#x} is a write but not one of the checkpoint's pages",
                    a.gfn
                ))
            }
            (AccessKind::Read, true) => {
                return Err(format!(
                    "gfn {:#x} is a read but is one of the checkpoint's (written) pages",
                    a.gfn
                ))
            }
        }
    }
    if writes != dirty.len() {
        let missing = dirty
            .iter()
            .find(|&&g| !seen.contains(g))
            .copied()
            .unwrap_or_default();
        return Err(format!(
            "{} of the checkpoint's {} pages are missing, e.g. gfn {missing:#x}; every written \
             page must appear as a write",
            dirty.len() - writes,
            dirty.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::columns::write_file;
    use super::*;
    use arrow_array::{ArrayRef, RecordBatch, StringArray, UInt32Array, UInt64Array};
    use std::sync::Arc;

    /// Access logs that break the rules are reported, naming the file.
    #[test]
    fn bad_logs_are_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("interval-000002.parquet");
        let a = |gfn, first_touch| Access {
            gfn,
            kind: AccessKind::Read,
            source: AccessSource::Dma,
            first_touch,
        };
        let good = [a(7, 0), a(1, 1)];
        write(&path, 2, &good).unwrap();
        assert_eq!(
            read(&crate::storage::LocalStorage::new(tmp.path()), &path, 2, 8).unwrap(),
            good
        );
        let storage = crate::storage::LocalStorage::new(tmp.path());
        assert_eq!(read_frames(&storage, &path, 2, 8).unwrap(), [7, 1]);
        for (rows, mem_pages, msg) in [
            (vec![a(7, 0), a(7, 1)], 8, "appears twice"),
            (vec![a(1, 1), a(7, 0)], 8, "first-touch order"),
            (vec![a(7, 0)], 7, "beyond guest memory"),
        ] {
            write(&path, 2, &rows).unwrap();
            let e = read(&storage, &path, 2, mem_pages).unwrap_err();
            assert!(e.to_string().contains(msg), "{msg}: {e}");
            assert_eq!(e.path(), Some(path.as_path()));
            // The frames-only read checks what it reads: not `first_touch`.
            match read_frames(&storage, &path, 2, mem_pages) {
                Ok(frames) => {
                    assert_eq!(msg, "first-touch order");
                    assert_eq!(frames, [1, 7]);
                }
                Err(e) => {
                    assert!(e.to_string().contains(msg), "{msg}: {e}");
                    assert_eq!(e.path(), Some(path.as_path()));
                }
            }
        }
        let e = read_frames(&storage, &path, 3, 8).unwrap_err();
        assert!(e.to_string().contains("misplaced"), "{e}");
        // An unknown kind.
        let columns: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from(vec![2])),
            Arc::new(UInt64Array::from(vec![1])),
            Arc::new(StringArray::from(vec!["execute"])),
            Arc::new(StringArray::from(vec!["mmu"])),
            Arc::new(UInt32Array::from(vec![0])),
        ];
        let b = RecordBatch::try_new(TABLE.schema(), columns).unwrap();
        write_file(&path, TABLE.schema(), &[b], Settings::Access).unwrap();
        let e = read(&crate::storage::LocalStorage::new(tmp.path()), &path, 2, 8).unwrap_err();
        assert!(e.to_string().contains("\"execute\""), "{e}");
    }
}
