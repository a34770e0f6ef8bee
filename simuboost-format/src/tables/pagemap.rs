//! `pagemaps/ckpt-N.parquet`: the consolidated page map at checkpoint N, every non-zero page
//! as of N with the hash of its contents (encoded like the page table's `hash`, but never
//! NULL), sorted by gfn. Hand-written like the page table, for the same reason.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{FixedSizeBinaryArray, UInt64Array};
use arrow_buffer::Buffer;

use super::columns::{
    hash_at, read_batches, write_table, BatchBuilder, Cols, Column, ColumnType, Settings, Table,
    HASH_BYTES,
};
use super::PageLimits;
use crate::pages::PageMap;
use crate::storage::RunStorage;
use crate::{layout, FormatError};

pub(crate) const TABLE: Table = Table {
    dir: layout::PAGEMAPS_DIR,
    columns: &[
        Column::new("checkpoint", ColumnType::U64, "N."),
        Column::new("gfn", ColumnType::U64, "Guest frame number."),
        Column::new(
            "slot",
            ColumnType::U64,
            "Slot holding the page's contents as of checkpoint N (never NULL).",
        ),
        Column::new(
            "hash",
            ColumnType::Hash,
            "xxh3-128 of the contents (never NULL), big-endian like the page tables' `hash`: the \
             same value as the `hash` of the page-table row that set this slot. Lets replay \
             verify what it reads from pages.bin and compare replayed memory with the expected \
             state without reading pages.bin.",
        ),
    ],
    settings: Settings::PageTable,
};

pub(crate) fn write(path: &Path, checkpoint: u64, map: &PageMap) -> Result<u64, FormatError> {
    let mut gfns = Vec::with_capacity(map.len());
    let mut slots = Vec::with_capacity(map.len());
    // The hash column's values buffer directly: no per-row allocation, and it works for an
    // empty map, which the iterator constructors of FixedSizeBinaryArray cannot size.
    let mut hashes = Vec::with_capacity(map.len() * HASH_BYTES as usize);
    for (gfn, slot, hash) in map.entries() {
        gfns.push(gfn);
        slots.push(slot);
        hashes.extend_from_slice(&hash.to_be_bytes());
    }
    let hashes = FixedSizeBinaryArray::try_new(HASH_BYTES, Buffer::from_vec(hashes), None)
        .map_err(|e| FormatError::arrow(path, e))?;
    let batch = BatchBuilder::new(&TABLE, gfns.len())
        .number("checkpoint", checkpoint)
        .set("gfn", Arc::new(UInt64Array::from(gfns)))
        .set("slot", Arc::new(UInt64Array::from(slots)))
        .set("hash", Arc::new(hashes))
        .finish(path)?;
    write_table(path, &TABLE, &[batch])
}

/// Reads a consolidated page map into `map` (which must be empty).
pub(crate) fn read(
    storage: &dyn RunStorage,
    path: &Path,
    checkpoint: u64,
    limits: PageLimits,
    map: &mut PageMap,
) -> Result<(), FormatError> {
    for batch in read_batches(storage, path, None, limits.mem_pages)? {
        let cols = Cols::new(&batch, path);
        cols.check_number("checkpoint", checkpoint)?;
        let gfns = cols.u64s("gfn")?;
        let slots = cols.u64s("slot")?;
        let hashes = cols.hashes("hash", false)?;
        for (i, (&gfn, &slot)) in gfns.iter().zip(slots).enumerate() {
            limits.check(path, gfn, Some(slot))?;
            if map.set(gfn, Some((slot, hash_at(hashes, i)))).is_some() {
                return Err(FormatError::corrupt(
                    path,
                    format!("gfn {gfn:#x} appears twice"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::columns::{write_file, Settings};
    use super::super::tests::LIMITS;
    use super::*;
    use arrow_array::{Array, ArrayRef, BinaryArray, RecordBatch};
    use arrow_schema::{DataType, Field, Schema};

    /// A consolidated page map comes back with the same slots and hashes, empty or not.
    #[test]
    fn round_trip_includes_hashes() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("ckpt-000004.parquet");
        let mut map = PageMap::new(LIMITS.mem_pages);
        for (gfn, slot) in [(0, 7), (1, 8), (5, 7), (63, 99)] {
            // Distinct bytes at both ends, to catch a byte-order mistake.
            let hash = u128::from_be_bytes(std::array::from_fn(|i| (gfn * 16 + i as u64) as u8));
            map.set(gfn, Some((slot, hash)));
        }
        for m in [map, PageMap::new(LIMITS.mem_pages)] {
            write(&path, 4, &m).unwrap();
            let mut back = PageMap::new(LIMITS.mem_pages);
            read(
                &crate::storage::LocalStorage::new(tmp.path()),
                &path,
                4,
                LIMITS,
                &mut back,
            )
            .unwrap();
            assert_eq!(back, m);
        }
        // Big-endian in the file: the first byte of the value is the hash's top byte.
        let mut map = PageMap::new(LIMITS.mem_pages);
        map.set(3, Some((1, 0xaa << 120 | 0xbb)));
        write(&path, 4, &map).unwrap();
        let b = &read_batches(
            &crate::storage::LocalStorage::new(tmp.path()),
            &path,
            Some(&["hash"]),
            u64::MAX,
        )
        .unwrap()[0];
        let h = b.column(0).as_any().downcast_ref::<FixedSizeBinaryArray>();
        let v = h.unwrap().value(0);
        assert_eq!((v[0], v[15]), (0xaa, 0xbb));
    }

    fn write_with_hash(path: &Path, hash: ArrayRef) {
        let u64_field = |name| Field::new(name, DataType::UInt64, false);
        let schema = Arc::new(Schema::new(vec![
            u64_field("checkpoint"),
            u64_field("gfn"),
            u64_field("slot"),
            Field::new("hash", hash.data_type().clone(), true),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from(vec![0, 0])),
            Arc::new(UInt64Array::from(vec![1, 2])),
            Arc::new(UInt64Array::from(vec![3, 4])),
            hash,
        ];
        let b = RecordBatch::try_new(schema.clone(), columns).unwrap();
        write_file(path, schema, &[b], Settings::PageTable).unwrap();
    }

    /// A pagemap hash column of the wrong width, or with NULLs, is corrupt, naming the file.
    #[test]
    fn bad_hashes_are_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("ckpt-000000.parquet");
        let cases: [(ArrayRef, &str); 3] = [
            (
                Arc::new(
                    FixedSizeBinaryArray::try_from_iter([[1u8; 8], [2u8; 8]].into_iter()).unwrap(),
                ),
                "8 bytes wide, expected 16",
            ),
            (
                Arc::new(
                    FixedSizeBinaryArray::try_from_sparse_iter_with_size(
                        [Some([1u8; 16]), None].into_iter(),
                        16,
                    )
                    .unwrap(),
                ),
                "1 NULLs",
            ),
            (
                Arc::new(BinaryArray::from_iter_values([[1u8; 16], [2u8; 16]])),
                "expected FixedSizeBinary(16)",
            ),
        ];
        for (hash, msg) in cases {
            write_with_hash(&path, hash);
            let mut map = PageMap::new(LIMITS.mem_pages);
            let e = read(
                &crate::storage::LocalStorage::new(tmp.path()),
                &path,
                0,
                LIMITS,
                &mut map,
            )
            .unwrap_err();
            assert!(matches!(e, FormatError::Corrupt { .. }), "{e}");
            assert!(e.to_string().contains(msg), "{msg}: {e}");
            assert!(e.to_string().contains("`hash`"), "{e}");
            assert_eq!(e.path(), Some(path.as_path()));
        }
    }
}
