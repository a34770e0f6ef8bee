//! `checkpoints/ckpt-N.parquet`: the page table of checkpoint N, the pages written during
//! interval N-1 (all non-zero pages for N = 0), sorted by gfn. Hand-written column by column:
//! it is the largest table and on the recorder's critical path.

use arrow_array::{Array, FixedSizeBinaryArray};
use std::path::Path;

use super::columns::{
    hash_at, read_batches, write_table, BatchBuilder, Cols, Column, ColumnType, Settings, Table,
};
use super::PageLimits;
use crate::storage::RunStorage;
use crate::{layout, FormatError};

pub(crate) const TABLE: Table = Table {
    dir: layout::CHECKPOINTS_DIR,
    columns: &[
        Column::new("checkpoint", ColumnType::U64, "N."),
        Column::new("gfn", ColumnType::U64, "Guest frame number."),
        Column::nullable(
            "slot",
            ColumnType::U64,
            "Slot in pages.bin holding the page's contents at boundary N. **NULL = the page is \
             zero** at checkpoint N.",
        ),
        Column::nullable(
            "hash",
            ColumnType::Hash,
            "xxh3-128 of the contents, big-endian (the canonical xxh3 byte order); NULL for a \
             zero page.",
        ),
    ],
    settings: Settings::PageTable,
};

/// One row of a checkpoint's page table: a page written in the interval before the checkpoint
/// and what it holds at the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PageRow {
    /// Guest frame number.
    pub gfn: u64,
    /// Slot of pages.bin holding the page's contents; `None` when the page is zero.
    pub slot: Option<u64>,
    /// xxh3-128 of the contents; `None` exactly when `slot` is.
    pub hash: Option<u128>,
}

impl PageRow {
    /// `(slot, hash)` of a non-zero page, `None` for a zero page: the shape of a
    /// [`crate::PageMap`] entry.
    pub fn entry(&self) -> Option<(u64, u128)> {
        self.slot.zip(self.hash)
    }
}

pub(crate) fn write(path: &Path, checkpoint: u64, rows: &[PageRow]) -> Result<u64, FormatError> {
    let batch = BatchBuilder::new(&TABLE, rows.len())
        .number("checkpoint", checkpoint)
        .u64s("gfn", rows.iter().map(|r| r.gfn))
        .opt_u64s("slot", rows.iter().map(|r| r.slot))
        .opt_hashes("hash", rows.iter().map(|r| r.hash))
        .finish(path)?;
    write_table(path, &TABLE, &[batch])
}

/// Reads a checkpoint's page table, calling `f(gfn, entry)` per row in file order, where `entry`
/// is `Some((slot, hash))` for a non-zero page and `None` for a zero one. A row with a slot but
/// no hash, or a hash but no slot, is corrupt: the writer sets both or neither.
pub(crate) fn read(
    storage: &dyn RunStorage,
    path: &Path,
    checkpoint: u64,
    limits: PageLimits,
    mut f: impl FnMut(u64, Option<(u64, u128)>),
) -> Result<(), FormatError> {
    let names: Vec<&str> = TABLE.names().collect();
    for batch in read_batches(storage, path, Some(&names), limits.mem_pages)? {
        let cols = Cols::new(&batch, path);
        cols.check_number("checkpoint", checkpoint)?;
        let gfns = cols.u64s("gfn")?;
        let slots = cols.opt_u64s("slot")?;
        let hashes = cols.hashes("hash", true)?;
        for (i, &gfn) in gfns.iter().enumerate() {
            let slot = slots.is_valid(i).then(|| slots.value(i));
            limits.check(path, gfn, slot)?;
            f(
                gfn,
                entry_at(path, format_args!("gfn {gfn:#x}"), slot, hashes, i)?,
            );
        }
    }
    Ok(())
}

/// Row `i`'s page entry from its `slot` and the `hash` column: `Some((slot, hash))` for a
/// non-zero page, `None` for a zero one. A slot without a hash, or a hash without a slot, is
/// corrupt: the writer sets both or neither. `row` names the row in the error (`gfn 0x2a`).
pub(crate) fn entry_at(
    path: &Path,
    row: std::fmt::Arguments<'_>,
    slot: Option<u64>,
    hashes: &FixedSizeBinaryArray,
    i: usize,
) -> Result<Option<(u64, u128)>, FormatError> {
    match (slot, hashes.is_valid(i)) {
        (Some(slot), true) => Ok(Some((slot, hash_at(hashes, i)))),
        (None, false) => Ok(None),
        (Some(slot), false) => Err(FormatError::corrupt(
            path,
            format!("{row} has slot {slot} but a NULL hash"),
        )),
        (None, true) => Err(FormatError::corrupt(
            path,
            format!("{row} has a hash but a NULL slot (a zero page has neither)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::LIMITS;
    use super::*;

    /// In a checkpoint's page table a slot comes with a hash and NULL with NULL; anything else
    /// is corrupt, naming the file and the gfn.
    #[test]
    fn rows_need_slot_and_hash_together() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("ckpt-000002.parquet");
        let row = |gfn, slot, hash| PageRow { gfn, slot, hash };
        let good = [row(1, Some(3), Some(7u128 << 100)), row(2, None, None)];
        write(&path, 2, &good).unwrap();
        let mut got = Vec::new();
        read(
            &crate::storage::LocalStorage::new(tmp.path()),
            &path,
            2,
            LIMITS,
            |g, e| got.push((g, e)),
        )
        .unwrap();
        assert_eq!(got, vec![(1, Some((3, 7u128 << 100))), (2, None)]);

        for (bad, msg) in [
            (
                row(0x2a, Some(3), None),
                "gfn 0x2a has slot 3 but a NULL hash",
            ),
            (
                row(0x2b, None, Some(1)),
                "gfn 0x2b has a hash but a NULL slot",
            ),
        ] {
            write(&path, 2, &[bad]).unwrap();
            let e = read(
                &crate::storage::LocalStorage::new(tmp.path()),
                &path,
                2,
                LIMITS,
                |_, _| {},
            )
            .unwrap_err();
            assert!(matches!(e, FormatError::Corrupt { .. }), "{e}");
            assert!(e.to_string().contains(msg), "{msg}: {e}");
            assert_eq!(e.path(), Some(path.as_path()));
        }
    }
}
