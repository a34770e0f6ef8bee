//! `access/interval-N.parquet`: the working set of interval N, one row per frame touched, in
//! `first_touch` order; and the rules an access log obeys, checked here for the writer's input
//! and for what the reader reads alike.

use std::path::Path;

use arrow_array::{Array, FixedSizeBinaryArray, UInt64Array};

use super::columns::{
    read_batches, write_table, BatchBuilder, Cols, Column,
    ColumnType::{Hash, Utf8, U32, U64},
    Settings, Table,
};
use super::PageLimits;
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
        Column::new("source", Utf8, "`mmu`, `dma` or `vcpu` (below)."),
        Column::new(
            "first_touch",
            U32,
            "Order of the frame's first touch in the interval, 0 = first frame touched (below). \
             Equals the row number.",
        ),
        Column::nullable(
            "start_slot",
            U64,
            "Slot in pages.bin of the frame's contents at the interval's start (checkpoint i), \
             as the page map of checkpoint i gives it. **NULL = the page was zero** then (below).",
        ),
        Column::nullable(
            "start_hash",
            Hash,
            "xxh3-128 of those contents, big-endian; NULL exactly when `start_slot` is.",
        ),
    ],
    // `kind` and `source` are short strings, dictionary-encoded in the file.
    settings: Settings::Access,
};

/// Writes the access log of `interval`; `access` has passed [`check`], and `start` holds, row
/// by row, the frame's page map entry at the interval's start (`None`: zero). An empty log
/// gives a zero-row file.
pub(crate) fn write(
    path: &Path,
    interval: u64,
    access: &[Access],
    start: &[Option<(u64, u128)>],
) -> Result<u64, FormatError> {
    let batch = BatchBuilder::new(&TABLE, access.len())
        .number("interval", interval)
        .u64s("gfn", access.iter().map(|a| a.gfn))
        .strs("kind", access.iter().map(|a| a.kind.as_str()))
        .strs("source", access.iter().map(|a| a.source.as_str()))
        .u32s("first_touch", access.iter().map(|a| a.first_touch))
        .opt_u64s("start_slot", start.iter().map(|e| e.map(|(slot, _)| slot)))
        .opt_hashes("start_hash", start.iter().map(|e| e.map(|(_, hash)| hash)))
        .finish(path)?;
    write_table(path, &TABLE, &[batch])
}

/// Reads an access log and checks it like the writer checked its input ([`check`]), plus that
/// `kind` and `source` hold only the documented values and the start pages are well formed
/// (as [`read_working_set`] checks them).
pub(crate) fn read(
    storage: &dyn RunStorage,
    path: &Path,
    interval: u64,
    limits: PageLimits,
) -> Result<Vec<Access>, FormatError> {
    let mem_pages = limits.mem_pages;
    let mut access = Vec::new();
    let mut start = StartPages::default();
    // One row per frame touched.
    let batches = read_batches(storage, path, None, mem_pages)?;
    let rows = batches.iter().map(|b| b.num_rows()).sum();
    for batch in batches {
        let cols = Cols::new(&batch, path);
        cols.check_number("interval", interval)?;
        let gfns = cols.u64s("gfn")?;
        let start_columns = start.batch(&cols, rows)?;
        let kinds = cols.strs("kind")?;
        let sources = cols.strs("source")?;
        let first_touch = cols.u32s("first_touch")?;
        for (i, &gfn) in gfns.iter().enumerate() {
            start.row(start_columns, path, limits, gfn, i)?;
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
                        "row {row}: source {:?} is none of \"mmu\", \"dma\", \"vcpu\"",
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

/// What a restore needs of an access log: its frames, and where their contents were at the
/// interval's start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkingSet {
    /// The frames, in first-touch order.
    pub frames: Vec<u64>,
    /// Per frame, its page map entry at the interval's start (`(slot, hash)`, `None` for a
    /// zero page): a sparse restore looks up nothing else. `None` for a log written before
    /// the `start_slot` and `start_hash` columns existed (the page map has the answers).
    pub start_pages: Option<Vec<Option<(u64, u128)>>>,
}

/// Reads the [`WorkingSet`] of an access log: `interval` and `gfn` checked as [`read`] checks
/// them (in guest memory, each once), `start_slot` and `start_hash` as a page table's slot and
/// hash (a slot inside what the manifest commits, slot and hash NULL together); `kind`,
/// `source` and `first_touch` are not decoded, which makes this several times cheaper than
/// [`read`] for a large working set.
pub(crate) fn read_working_set(
    storage: &dyn RunStorage,
    path: &Path,
    interval: u64,
    limits: PageLimits,
) -> Result<WorkingSet, FormatError> {
    let mem_pages = limits.mem_pages;
    let mut frames = Vec::new();
    let mut start = StartPages::default();
    let mut seen = GfnSet::new(mem_pages);
    let columns = ["interval", "gfn", "start_slot", "start_hash"];
    let batches = read_batches(storage, path, Some(&columns), mem_pages)?;
    let rows = batches.iter().map(|b| b.num_rows()).sum();
    frames.reserve_exact(rows);
    for batch in batches {
        let cols = Cols::new(&batch, path);
        cols.check_number("interval", interval)?;
        let start_columns = start.batch(&cols, rows)?;
        for (i, &gfn) in cols.u64s("gfn")?.iter().enumerate() {
            check_frame(&mut seen, gfn, mem_pages)
                .map_err(|what| FormatError::corrupt(path, what))?;
            frames.push(gfn);
            start.row(start_columns, path, limits, gfn, i)?;
        }
    }
    Ok(WorkingSet {
        frames,
        start_pages: start.finish(),
    })
}

/// The `start_slot` and `start_hash` columns of a log, read batch by batch: absent in logs
/// written before they existed, else in every batch, each row checked as a page table's slot
/// and hash are (the slot inside what the manifest commits, slot and hash NULL together).
#[derive(Default)]
struct StartPages {
    /// Whether the first batch has been seen.
    begun: bool,
    pages: Option<Vec<Option<(u64, u128)>>>,
}

/// One batch's start columns.
type StartColumns<'a> = Option<(&'a UInt64Array, &'a FixedSizeBinaryArray)>;

impl StartPages {
    /// The start columns of the next batch (`None` in a log without them).
    /// `rows`: how many rows the log has in all.
    fn batch<'a>(&mut self, cols: &Cols<'a>, rows: usize) -> Result<StartColumns<'a>, FormatError> {
        let has = |name| cols.batch.column_by_name(name).is_some();
        let present = match (has("start_slot"), has("start_hash")) {
            (slot, hash) if slot == hash => slot,
            _ => {
                return Err(FormatError::corrupt(
                    cols.path,
                    "has one of `start_slot` and `start_hash` without the other",
                ))
            }
        };
        if !self.begun {
            self.begun = true;
            self.pages = present.then(|| Vec::with_capacity(rows));
        } else if present != self.pages.is_some() {
            return Err(FormatError::corrupt(
                cols.path,
                "has `start_slot` in some batches and not in others",
            ));
        }
        if !present {
            return Ok(None);
        }
        Ok(Some((
            cols.opt_u64s("start_slot")?,
            cols.hashes("start_hash", true)?,
        )))
    }

    /// The start pages of every row; a log without rows has them all (there are none).
    fn finish(self) -> Option<Vec<Option<(u64, u128)>>> {
        if self.begun {
            self.pages
        } else {
            Some(Vec::new())
        }
    }

    /// Row `i` of `columns` (from [`StartPages::batch`]), for frame `gfn`.
    fn row(
        &mut self,
        columns: StartColumns<'_>,
        path: &Path,
        limits: PageLimits,
        gfn: u64,
        i: usize,
    ) -> Result<(), FormatError> {
        let (Some(pages), Some((slots, hashes))) = (self.pages.as_mut(), columns) else {
            return Ok(());
        };
        let slot = slots.is_valid(i).then(|| slots.value(i));
        limits.check(path, gfn, slot)?;
        pages.push(super::checkpoint::entry_at(
            path,
            format_args!("gfn {gfn:#x}"),
            slot,
            hashes,
            i,
        )?);
        Ok(())
    }
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
    use arrow_array::{
        ArrayRef, FixedSizeBinaryArray, RecordBatch, StringArray, UInt32Array, UInt64Array,
    };
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
        let limits = |mem_pages| PageLimits {
            mem_pages,
            page_slots: 4,
        };
        let good = [a(7, 0), a(1, 1)];
        let start = [Some((3, 0xabc)), None];
        write(&path, 2, &good, &start).unwrap();
        assert_eq!(
            read(
                &crate::storage::LocalStorage::new(tmp.path()),
                &path,
                2,
                limits(8)
            )
            .unwrap(),
            good
        );
        let storage = crate::storage::LocalStorage::new(tmp.path());
        assert_eq!(
            read_working_set(&storage, &path, 2, limits(8)).unwrap(),
            WorkingSet {
                frames: vec![7, 1],
                start_pages: Some(start.to_vec()),
            }
        );
        for (rows, mem_pages, msg) in [
            (vec![a(7, 0), a(7, 1)], 8, "appears twice"),
            (vec![a(1, 1), a(7, 0)], 8, "first-touch order"),
            (vec![a(7, 0)], 7, "beyond guest memory"),
        ] {
            write(&path, 2, &rows, &vec![None; rows.len()]).unwrap();
            let e = read(&storage, &path, 2, limits(mem_pages)).unwrap_err();
            assert!(e.to_string().contains(msg), "{msg}: {e}");
            assert_eq!(e.path(), Some(path.as_path()));
            // The frames-only read checks what it reads: not `first_touch`.
            match read_working_set(&storage, &path, 2, limits(mem_pages)) {
                Ok(set) => {
                    assert_eq!(msg, "first-touch order");
                    assert_eq!(set.frames, [1, 7]);
                }
                Err(e) => {
                    assert!(e.to_string().contains(msg), "{msg}: {e}");
                    assert_eq!(e.path(), Some(path.as_path()));
                }
            }
        }
        let e = read_working_set(&storage, &path, 3, limits(8)).unwrap_err();
        assert!(e.to_string().contains("misplaced"), "{e}");
        // Start pages are checked as a page table's: a slot past what the manifest commits,
        // or a slot without its hash.
        write(&path, 2, &good, &[Some((4, 1)), None]).unwrap();
        let e = read_working_set(&storage, &path, 2, limits(8)).unwrap_err();
        assert!(e.to_string().contains("slot 4"), "{e}");
        // A one-row log of interval 2 (gfn 1, source `mmu`, no start hash), written as is.
        let write_row = |kind: &str, start_slot: Option<u64>| {
            let columns: Vec<ArrayRef> = vec![
                Arc::new(UInt64Array::from(vec![2])),
                Arc::new(UInt64Array::from(vec![1])),
                Arc::new(StringArray::from(vec![kind])),
                Arc::new(StringArray::from(vec!["mmu"])),
                Arc::new(UInt32Array::from(vec![0])),
                Arc::new(UInt64Array::from(vec![start_slot])),
                Arc::new(FixedSizeBinaryArray::new_null(16, 1)),
            ];
            let b = RecordBatch::try_new(TABLE.schema(), columns).unwrap();
            write_file(&path, TABLE.schema(), &[b], Settings::Access).unwrap();
        };
        write_row("read", Some(1));
        let e = read_working_set(&storage, &path, 2, limits(8)).unwrap_err();
        assert!(e.to_string().contains("NULL hash"), "{e}");
        // A log written before the start columns existed: frames, no start pages.
        let old: Vec<&Column> = TABLE.columns.iter().take(5).collect();
        let schema = Arc::new(arrow_schema::Schema::new(
            old.iter()
                .map(|c| arrow_schema::Field::new(c.name, c.ty.data_type(), c.nullable))
                .collect::<Vec<_>>(),
        ));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from(vec![2, 2])),
            Arc::new(UInt64Array::from(vec![7, 1])),
            Arc::new(StringArray::from(vec!["read", "write"])),
            Arc::new(StringArray::from(vec!["mmu", "mmu"])),
            Arc::new(UInt32Array::from(vec![0, 1])),
        ];
        let b = RecordBatch::try_new(schema.clone(), columns).unwrap();
        write_file(&path, schema, &[b], Settings::Access).unwrap();
        assert_eq!(
            read_working_set(&storage, &path, 2, limits(8)).unwrap(),
            WorkingSet {
                frames: vec![7, 1],
                start_pages: None,
            }
        );
        // An unknown kind.
        write_row("execute", None);
        let e = read(
            &crate::storage::LocalStorage::new(tmp.path()),
            &path,
            2,
            limits(8),
        )
        .unwrap_err();
        assert!(e.to_string().contains("\"execute\""), "{e}");
    }
}
