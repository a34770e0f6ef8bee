//! The Parquet tables of a run: their Arrow schemas, how records become batches and back, and
//! the checks a reader makes on every file.
//!
//! Every table carries its `checkpoint` or `interval` number as a real column (not only in the
//! file name) so that a DuckDB glob over a directory can group by it. Readers check that column
//! against the number they asked for, so a misnamed or misplaced file is reported, not used.

use std::fs::File;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, BinaryArray, BooleanArray, FixedSizeBinaryArray, ListArray, RecordBatch,
    StringArray, StructArray, UInt32Array, UInt64Array,
};
use arrow_buffer::{Buffer, OffsetBuffer};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{WriterProperties, WriterVersion};
use parquet::schema::types::ColumnPath;

use crate::fsutil::write_atomic;
use crate::pages::PageMap;
use crate::records::{
    Access, AccessKind, AccessSource, CheckpointState, Event, GeneralRegs, IntervalRecord,
    VcpuState,
};
use crate::{FormatError, FORMAT_VERSION};

/// Rows per row group of the page tables. Row-group statistics on `gfn` let DuckDB (and a
/// future reader) skip groups when looking for a few gfns; 128 Ki rows keeps a group around
/// 1-3 MiB.
const PAGE_TABLE_ROW_GROUP: usize = 128 * 1024;
/// Events are written in batches of at most this many rows or [`EVENT_BATCH_BYTES`] of data, so
/// a `Binary` column's i32 offsets never overflow and memory stays bounded.
const EVENT_BATCH_ROWS: usize = 16 * 1024;
const EVENT_BATCH_BYTES: usize = 64 << 20;
/// Rows per batch when reading.
const READ_BATCH: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// Schemas

/// Width of a `hash` column value: an xxh3-128, big-endian.
const HASH_BYTES: i32 = 16;

fn u64_field(name: &str) -> Field {
    Field::new(name, DataType::UInt64, false)
}

/// `checkpoints/ckpt-N.parquet`: the pages written during interval N-1 (all non-zero pages for
/// N = 0), sorted by gfn.
pub(crate) fn checkpoint_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        u64_field("checkpoint"),
        u64_field("gfn"),
        Field::new("slot", DataType::UInt64, true),
        Field::new("hash", DataType::FixedSizeBinary(HASH_BYTES), true),
    ]))
}

/// `pagemaps/ckpt-N.parquet`: every non-zero page as of checkpoint N, sorted by gfn, with the
/// hash of its contents (same encoding as the checkpoint tables' `hash`, but never null).
pub(crate) fn pagemap_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        u64_field("checkpoint"),
        u64_field("gfn"),
        u64_field("slot"),
        Field::new("hash", DataType::FixedSizeBinary(HASH_BYTES), false),
    ]))
}

fn msr_fields() -> Fields {
    Fields::from(vec![
        Field::new("index", DataType::UInt32, false),
        Field::new("value", DataType::UInt64, false),
    ])
}

fn msr_item_field() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Struct(msr_fields()), false))
}

const BLOB_COLUMNS: [&str; 5] = ["sregs", "fpu", "xcrs", "debugregs", "vcpu_events"];

/// `state/ckpt-N.parquet`: one row.
pub(crate) fn state_schema() -> SchemaRef {
    let mut fields = vec![u64_field("checkpoint"), u64_field("exit")];
    fields.extend(GeneralRegs::NAMES.iter().map(|n| u64_field(n)));
    fields.extend(
        BLOB_COLUMNS
            .iter()
            .map(|n| Field::new(*n, DataType::Binary, false)),
    );
    fields.push(Field::new("msrs", DataType::List(msr_item_field()), false));
    fields.push(Field::new("device", DataType::Utf8, false));
    Arc::new(Schema::new(fields))
}

/// `events/interval-N.parquet`: one row per guest-initiated exit, exits ascending.
pub(crate) fn events_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        u64_field("interval"),
        u64_field("exit"),
        Field::new("op", DataType::UInt32, false),
        u64_field("arg0"),
        u64_field("arg1"),
        u64_field("arg2"),
        Field::new("status", DataType::UInt32, false),
        u64_field("ret"),
        Field::new("data_gpa", DataType::UInt64, true),
        Field::new("data", DataType::Binary, true),
    ]))
}

const INTERVAL_U64_COLUMNS: [&str; 12] = [
    "interval",
    "start_exit",
    "end_exit",
    "start_ns",
    "end_ns",
    "downtime_ns",
    "dirty_pages",
    "vmm_written_pages",
    "stored_pages",
    "zero_pages",
    "dedup_pages",
    "bytes_written",
];

/// `intervals/interval-N.parquet`: one row.
pub(crate) fn interval_schema() -> SchemaRef {
    let mut fields: Vec<Field> = INTERVAL_U64_COLUMNS.iter().map(|n| u64_field(n)).collect();
    fields.push(Field::new("complete", DataType::Boolean, false));
    fields.push(u64_field("backpressure_ns"));
    fields.push(u64_field("traced_frames"));
    fields.push(u64_field("trace_drops"));
    Arc::new(Schema::new(fields))
}

/// `access/interval-N.parquet`: one row per frame touched in interval N, in `first_touch`
/// order. `kind` and `source` are short strings, dictionary-encoded in the file.
pub(crate) fn access_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        u64_field("interval"),
        u64_field("gfn"),
        Field::new("kind", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("first_touch", DataType::UInt32, false),
    ]))
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Which writer settings a table gets.
#[derive(Clone, Copy)]
enum Kind {
    /// Large, mostly unique u64s and hashes: snappy (cheap), no dictionaries except for the
    /// constant `checkpoint` column.
    PageTable,
    /// Small tables and the event log: zstd, which shrinks the event data buffers well.
    Small,
    /// Access logs: zstd; dictionaries only for the constant `interval` and the two string
    /// enums (`gfn` and `first_touch` are all distinct, a dictionary would only add to them).
    Access,
}

fn properties(kind: Kind) -> WriterProperties {
    let builder = WriterProperties::builder()
        .set_writer_version(WriterVersion::PARQUET_1_0)
        .set_created_by(format!("simuboost-format {}", env!("CARGO_PKG_VERSION")))
        .set_key_value_metadata(Some(vec![KeyValue::new(
            "simuboost.format_version".to_string(),
            FORMAT_VERSION.to_string(),
        )]));
    match kind {
        Kind::PageTable => builder
            .set_compression(Compression::SNAPPY)
            .set_dictionary_enabled(false)
            .set_column_dictionary_enabled(ColumnPath::from("checkpoint"), true)
            .set_max_row_group_row_count(Some(PAGE_TABLE_ROW_GROUP))
            .build(),
        Kind::Small => builder
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .build(),
        Kind::Access => builder
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_dictionary_enabled(false)
            .set_column_dictionary_enabled(ColumnPath::from("interval"), true)
            .set_column_dictionary_enabled(ColumnPath::from("kind"), true)
            .set_column_dictionary_enabled(ColumnPath::from("source"), true)
            .build(),
    }
}

/// Writes `batches` to `path` atomically; returns the file's size.
fn write_table(
    path: &Path,
    schema: SchemaRef,
    batches: &[RecordBatch],
    kind: Kind,
) -> Result<u64, FormatError> {
    write_atomic(path, |file, path| {
        let mut writer = ArrowWriter::try_new(&mut *file, schema, Some(properties(kind)))
            .map_err(|e| FormatError::parquet(path, e))?;
        for batch in batches {
            writer
                .write(batch)
                .map_err(|e| FormatError::parquet(path, e))?;
        }
        writer.close().map_err(|e| FormatError::parquet(path, e))?;
        Ok(())
    })
}

fn batch(
    path: &Path,
    schema: SchemaRef,
    columns: Vec<ArrayRef>,
) -> Result<RecordBatch, FormatError> {
    RecordBatch::try_new(schema, columns).map_err(|e| FormatError::arrow(path, e))
}

/// One row of a checkpoint's page table.
pub(crate) struct PageRow {
    pub gfn: u64,
    pub slot: Option<u64>,
    pub hash: Option<u128>,
}

pub(crate) fn write_checkpoint_table(
    path: &Path,
    checkpoint: u64,
    rows: &[PageRow],
) -> Result<u64, FormatError> {
    let schema = checkpoint_schema();
    let hashes = FixedSizeBinaryArray::try_from_sparse_iter_with_size(
        rows.iter().map(|r| r.hash.map(u128::to_be_bytes)),
        HASH_BYTES,
    );
    // try_from_sparse_iter_with_size cannot infer a length from an empty iterator.
    let hashes = if rows.is_empty() {
        FixedSizeBinaryArray::new_null(HASH_BYTES, 0)
    } else {
        hashes.map_err(|e| FormatError::arrow(path, e))?
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from(vec![checkpoint; rows.len()])),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.gfn))),
        Arc::new(UInt64Array::from_iter(rows.iter().map(|r| r.slot))),
        Arc::new(hashes),
    ];
    let b = batch(path, schema.clone(), columns)?;
    write_table(path, schema, &[b], Kind::PageTable)
}

pub(crate) fn write_pagemap_table(
    path: &Path,
    checkpoint: u64,
    map: &PageMap,
) -> Result<u64, FormatError> {
    let schema = pagemap_schema();
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
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from(vec![checkpoint; gfns.len()])),
        Arc::new(UInt64Array::from(gfns)),
        Arc::new(UInt64Array::from(slots)),
        Arc::new(hashes),
    ];
    let b = batch(path, schema.clone(), columns)?;
    write_table(path, schema, &[b], Kind::PageTable)
}

pub(crate) fn write_state_table(path: &Path, state: &CheckpointState) -> Result<u64, FormatError> {
    let schema = state_schema();
    let vcpu = &state.vcpu;
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from(vec![state.checkpoint])),
        Arc::new(UInt64Array::from(vec![state.exit])),
    ];
    columns.extend(
        vcpu.regs
            .values()
            .into_iter()
            .map(|v| Arc::new(UInt64Array::from(vec![v])) as ArrayRef),
    );
    for blob in [
        &vcpu.sregs,
        &vcpu.fpu,
        &vcpu.xcrs,
        &vcpu.debugregs,
        &vcpu.vcpu_events,
    ] {
        columns.push(Arc::new(BinaryArray::from_iter_values([blob.as_slice()])));
    }
    let msr_values = StructArray::try_new(
        msr_fields(),
        vec![
            Arc::new(UInt32Array::from_iter_values(vcpu.msrs.iter().map(|m| m.0))),
            Arc::new(UInt64Array::from_iter_values(vcpu.msrs.iter().map(|m| m.1))),
        ],
        None,
    )
    .map_err(|e| FormatError::arrow(path, e))?;
    let msrs = ListArray::try_new(
        msr_item_field(),
        OffsetBuffer::from_lengths([vcpu.msrs.len()]),
        Arc::new(msr_values),
        None,
    )
    .map_err(|e| FormatError::arrow(path, e))?;
    columns.push(Arc::new(msrs));
    columns.push(Arc::new(StringArray::from(vec![state
        .device_json
        .as_str()])));
    let b = batch(path, schema.clone(), columns)?;
    write_table(path, schema, &[b], Kind::Small)
}

fn events_batch(
    path: &Path,
    schema: &SchemaRef,
    events: &[Event],
) -> Result<RecordBatch, FormatError> {
    let u64s = |f: &dyn Fn(&Event) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(events.iter().map(f)))
    };
    let columns: Vec<ArrayRef> = vec![
        u64s(&|e| e.interval),
        u64s(&|e| e.exit),
        Arc::new(UInt32Array::from_iter_values(events.iter().map(|e| e.op))),
        u64s(&|e| e.args[0]),
        u64s(&|e| e.args[1]),
        u64s(&|e| e.args[2]),
        Arc::new(UInt32Array::from_iter_values(
            events.iter().map(|e| e.status),
        )),
        u64s(&|e| e.ret),
        Arc::new(UInt64Array::from_iter(events.iter().map(|e| e.data_gpa))),
        Arc::new(BinaryArray::from_iter(
            events.iter().map(|e| e.data.as_deref()),
        )),
    ];
    batch(path, schema.clone(), columns)
}

pub(crate) fn write_events_table(path: &Path, events: &[Event]) -> Result<u64, FormatError> {
    let schema = events_schema();
    let mut batches = Vec::new();
    let mut start = 0;
    while start < events.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < events.len() && end - start < EVENT_BATCH_ROWS {
            let len = events[end].data.as_ref().map_or(0, Vec::len);
            if end > start && bytes + len > EVENT_BATCH_BYTES {
                break;
            }
            bytes += len;
            end += 1;
        }
        batches.push(events_batch(path, &schema, &events[start..end])?);
        start = end;
    }
    if batches.is_empty() {
        // An interval without exits still gets a (zero-row) file, so every complete interval
        // has one and globs see a consistent set.
        batches.push(RecordBatch::new_empty(schema.clone()));
    }
    write_table(path, schema, &batches, Kind::Small)
}

pub(crate) fn write_interval_table(path: &Path, rec: &IntervalRecord) -> Result<u64, FormatError> {
    let schema = interval_schema();
    let values = [
        rec.interval,
        rec.start_exit,
        rec.end_exit,
        rec.start_ns,
        rec.end_ns,
        rec.downtime_ns,
        rec.dirty_pages,
        rec.vmm_written_pages,
        rec.stored_pages,
        rec.zero_pages,
        rec.dedup_pages,
        rec.bytes_written,
    ];
    let mut columns: Vec<ArrayRef> = values
        .into_iter()
        .map(|v| Arc::new(UInt64Array::from(vec![v])) as ArrayRef)
        .collect();
    columns.push(Arc::new(BooleanArray::from(vec![rec.complete])));
    for v in [rec.backpressure_ns, rec.traced_frames, rec.trace_drops] {
        columns.push(Arc::new(UInt64Array::from(vec![v])));
    }
    let b = batch(path, schema.clone(), columns)?;
    write_table(path, schema, &[b], Kind::Small)
}

/// Writes the access log of `interval`; `access` is in `first_touch` order (checked by the
/// writer). An empty log gives a zero-row file.
pub(crate) fn write_access_table(
    path: &Path,
    interval: u64,
    access: &[Access],
) -> Result<u64, FormatError> {
    let schema = access_schema();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from(vec![interval; access.len()])),
        Arc::new(UInt64Array::from_iter_values(access.iter().map(|a| a.gfn))),
        Arc::new(StringArray::from_iter_values(
            access.iter().map(|a| a.kind.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            access.iter().map(|a| a.source.as_str()),
        )),
        Arc::new(UInt32Array::from_iter_values(
            access.iter().map(|a| a.first_touch),
        )),
    ];
    let b = batch(path, schema.clone(), columns)?;
    write_table(path, schema, &[b], Kind::Access)
}

// ---------------------------------------------------------------------------------------------
// Reading

/// Reads all rows of `path` (only `columns`, if given).
///
/// The decoder runs under `catch_unwind`: the parquet crate is not documented to be panic-free
/// on arbitrary input, and a damaged file must come back as an error naming it, never abort a
/// replay.
fn read_batches(path: &Path, columns: Option<&[&str]>) -> Result<Vec<RecordBatch>, FormatError> {
    let file = File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            FormatError::corrupt(path, "missing, but the manifest lists it as complete")
        } else {
            FormatError::io(path, "open", e)
        }
    })?;
    let decoded = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| FormatError::parquet(path, e))?;
        let builder = match columns {
            Some(cols) => {
                let mask = ProjectionMask::columns(builder.parquet_schema(), cols.iter().copied());
                builder.with_projection(mask)
            }
            None => builder,
        };
        let reader = builder
            .with_batch_size(READ_BATCH)
            .build()
            .map_err(|e| FormatError::parquet(path, e))?;
        reader
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| FormatError::arrow(path, e))
    }));
    decoded.unwrap_or_else(|_| {
        Err(FormatError::corrupt(
            path,
            "the Parquet decoder panicked on this file",
        ))
    })
}

/// Typed, checked access to the columns of one batch.
struct Cols<'a> {
    batch: &'a RecordBatch,
    path: &'a Path,
}

impl<'a> Cols<'a> {
    fn get<A: Array + 'static>(&self, name: &str, expected: &str) -> Result<&'a A, FormatError> {
        let col = self
            .batch
            .column_by_name(name)
            .ok_or_else(|| FormatError::corrupt(self.path, format!("no column `{name}`")))?;
        col.as_any().downcast_ref::<A>().ok_or_else(|| {
            FormatError::corrupt(
                self.path,
                format!(
                    "column `{name}` has type {}, expected {expected}",
                    col.data_type()
                ),
            )
        })
    }

    /// A column that the format declares non-null; nulls in it mean the file is damaged.
    fn required<A: Array + 'static>(
        &self,
        name: &str,
        expected: &str,
    ) -> Result<&'a A, FormatError> {
        let a = self.get::<A>(name, expected)?;
        if a.null_count() != 0 {
            return Err(FormatError::corrupt(
                self.path,
                format!(
                    "column `{name}` has {} NULLs; it must have none",
                    a.null_count()
                ),
            ));
        }
        Ok(a)
    }

    /// Values of a non-null u64 column.
    fn u64s(&self, name: &str) -> Result<&'a [u64], FormatError> {
        Ok(self.required::<UInt64Array>(name, "UInt64")?.values())
    }

    fn u32s(&self, name: &str) -> Result<&'a [u32], FormatError> {
        Ok(self.required::<UInt32Array>(name, "UInt32")?.values())
    }

    fn opt_u64s(&self, name: &str) -> Result<&'a UInt64Array, FormatError> {
        self.get::<UInt64Array>(name, "UInt64")
    }

    fn binary(&self, name: &str) -> Result<&'a BinaryArray, FormatError> {
        self.get::<BinaryArray>(name, "Binary")
    }

    /// A `hash` column: FixedSizeBinary of exactly [`HASH_BYTES`], NULL-free unless `nullable`.
    fn hashes(&self, name: &str, nullable: bool) -> Result<&'a FixedSizeBinaryArray, FormatError> {
        const TYPE: &str = "FixedSizeBinary(16)";
        let h = if nullable {
            self.get::<FixedSizeBinaryArray>(name, TYPE)?
        } else {
            self.required::<FixedSizeBinaryArray>(name, TYPE)?
        };
        if h.value_length() != HASH_BYTES {
            return Err(FormatError::corrupt(
                self.path,
                format!(
                    "column `{name}` is {} bytes wide, expected {HASH_BYTES}",
                    h.value_length()
                ),
            ));
        }
        Ok(h)
    }

    /// Checks that the `column` (`checkpoint` or `interval`) holds `expected` in every row.
    fn check_number(&self, column: &str, expected: u64) -> Result<(), FormatError> {
        if let Some(bad) = self.u64s(column)?.iter().find(|&&v| v != expected) {
            return Err(FormatError::corrupt(
                self.path,
                format!("column `{column}` holds {bad}, expected {expected} (misplaced file?)"),
            ));
        }
        Ok(())
    }
}

/// Limits a page table is checked against.
#[derive(Clone, Copy)]
pub(crate) struct PageLimits {
    /// gfns must be below this (`mem_bytes / PAGE_SIZE`).
    pub mem_pages: u64,
    /// slots must be below this (the manifest's `page_slots`).
    pub page_slots: u64,
}

impl PageLimits {
    fn check(&self, path: &Path, gfn: u64, slot: Option<u64>) -> Result<(), FormatError> {
        if gfn >= self.mem_pages {
            return Err(FormatError::corrupt(
                path,
                format!(
                    "gfn {gfn:#x} is beyond guest memory ({} pages)",
                    self.mem_pages
                ),
            ));
        }
        if let Some(slot) = slot.filter(|&s| s >= self.page_slots) {
            return Err(FormatError::corrupt(
                path,
                format!(
                    "gfn {gfn:#x} refers to slot {slot}, past the {} slots of pages.bin the manifest commits",
                    self.page_slots
                ),
            ));
        }
        Ok(())
    }
}

/// Value `i` of a `hash` column checked by [`Cols::hashes`] (big-endian).
fn hash_at(h: &FixedSizeBinaryArray, i: usize) -> u128 {
    let mut b = [0u8; HASH_BYTES as usize];
    b.copy_from_slice(h.value(i));
    u128::from_be_bytes(b)
}

/// Reads a checkpoint's page table, calling `f(gfn, entry)` per row in file order, where `entry`
/// is `Some((slot, hash))` for a non-zero page and `None` for a zero one. A row with a slot but
/// no hash, or a hash but no slot, is corrupt: the writer sets both or neither.
pub(crate) fn read_checkpoint_table(
    path: &Path,
    checkpoint: u64,
    limits: PageLimits,
    mut f: impl FnMut(u64, Option<(u64, u128)>),
) -> Result<(), FormatError> {
    for batch in read_batches(path, Some(&["checkpoint", "gfn", "slot", "hash"]))? {
        let cols = Cols {
            batch: &batch,
            path,
        };
        cols.check_number("checkpoint", checkpoint)?;
        let gfns = cols.u64s("gfn")?;
        let slots = cols.opt_u64s("slot")?;
        let hashes = cols.hashes("hash", true)?;
        for (i, &gfn) in gfns.iter().enumerate() {
            let slot = slots.is_valid(i).then(|| slots.value(i));
            limits.check(path, gfn, slot)?;
            let entry = match (slot, hashes.is_valid(i)) {
                (Some(slot), true) => Some((slot, hash_at(hashes, i))),
                (None, false) => None,
                (Some(slot), false) => {
                    return Err(FormatError::corrupt(
                        path,
                        format!("gfn {gfn:#x} has slot {slot} but a NULL hash"),
                    ))
                }
                (None, true) => {
                    return Err(FormatError::corrupt(
                        path,
                        format!(
                            "gfn {gfn:#x} has a hash but a NULL slot (a zero page has neither)"
                        ),
                    ))
                }
            };
            f(gfn, entry);
        }
    }
    Ok(())
}

/// Reads a consolidated page map into `map` (which must be empty).
pub(crate) fn read_pagemap_table(
    path: &Path,
    checkpoint: u64,
    limits: PageLimits,
    map: &mut PageMap,
) -> Result<(), FormatError> {
    for batch in read_batches(path, None)? {
        let cols = Cols {
            batch: &batch,
            path,
        };
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

/// Reads a table that must hold exactly one row.
fn read_one_row(path: &Path) -> Result<RecordBatch, FormatError> {
    let mut rows: Vec<RecordBatch> = read_batches(path, None)?
        .into_iter()
        .filter(|b| b.num_rows() > 0)
        .collect();
    match (rows.len(), rows.first().map(RecordBatch::num_rows)) {
        (1, Some(1)) => Ok(rows.remove(0)),
        _ => Err(FormatError::corrupt(
            path,
            format!(
                "holds {} rows, expected exactly 1",
                rows.iter().map(RecordBatch::num_rows).sum::<usize>()
            ),
        )),
    }
}

pub(crate) fn read_state_table(
    path: &Path,
    checkpoint: u64,
) -> Result<CheckpointState, FormatError> {
    let batch = read_one_row(path)?;
    let cols = Cols {
        batch: &batch,
        path,
    };
    cols.check_number("checkpoint", checkpoint)?;
    let mut regs = [0u64; 18];
    for (v, name) in regs.iter_mut().zip(GeneralRegs::NAMES) {
        *v = cols.u64s(name)?[0];
    }
    let mut blobs: Vec<Vec<u8>> = Vec::with_capacity(BLOB_COLUMNS.len());
    for name in BLOB_COLUMNS {
        blobs.push(
            cols.required::<BinaryArray>(name, "Binary")?
                .value(0)
                .to_vec(),
        );
    }
    let msr_list =
        cols.required::<ListArray>("msrs", "List<Struct<index UInt32, value UInt64>>")?;
    let msr_row = msr_list.value(0);
    let msr_struct = msr_row
        .as_any()
        .downcast_ref::<StructArray>()
        .ok_or_else(|| FormatError::corrupt(path, "column `msrs` items are not structs"))?;
    let field = |name: &str| {
        msr_struct
            .column_by_name(name)
            .ok_or_else(|| FormatError::corrupt(path, format!("column `msrs` has no `{name}`")))
    };
    let index = field("index")?
        .as_any()
        .downcast_ref::<UInt32Array>()
        .ok_or_else(|| FormatError::corrupt(path, "msrs.index is not UInt32"))?;
    let value = field("value")?
        .as_any()
        .downcast_ref::<UInt64Array>()
        .ok_or_else(|| FormatError::corrupt(path, "msrs.value is not UInt64"))?;
    if index.null_count() != 0 || value.null_count() != 0 || msr_struct.null_count() != 0 {
        return Err(FormatError::corrupt(path, "column `msrs` has NULLs"));
    }
    let msrs = index
        .values()
        .iter()
        .copied()
        .zip(value.values().iter().copied())
        .collect();
    let device = cols
        .required::<StringArray>("device", "Utf8")?
        .value(0)
        .to_string();
    let [sregs, fpu, xcrs, debugregs, vcpu_events]: [Vec<u8>; 5] = blobs
        .try_into()
        .map_err(|_| FormatError::corrupt(path, "blob columns"))?;
    Ok(CheckpointState {
        checkpoint,
        exit: cols.u64s("exit")?[0],
        vcpu: VcpuState {
            regs: GeneralRegs::from_values(regs),
            sregs,
            fpu,
            xcrs,
            debugregs,
            vcpu_events,
            msrs,
        },
        device_json: device,
    })
}

pub(crate) fn read_events_table(path: &Path, interval: u64) -> Result<Vec<Event>, FormatError> {
    let mut events = Vec::new();
    for batch in read_batches(path, None)? {
        let cols = Cols {
            batch: &batch,
            path,
        };
        cols.check_number("interval", interval)?;
        let exit = cols.u64s("exit")?;
        let op = cols.u32s("op")?;
        let arg0 = cols.u64s("arg0")?;
        let arg1 = cols.u64s("arg1")?;
        let arg2 = cols.u64s("arg2")?;
        let status = cols.u32s("status")?;
        let ret = cols.u64s("ret")?;
        let data_gpa = cols.opt_u64s("data_gpa")?;
        let data = cols.binary("data")?;
        for i in 0..batch.num_rows() {
            events.push(Event {
                interval,
                exit: exit[i],
                op: op[i],
                args: [arg0[i], arg1[i], arg2[i]],
                status: status[i],
                ret: ret[i],
                data_gpa: data_gpa.is_valid(i).then(|| data_gpa.value(i)),
                data: data.is_valid(i).then(|| data.value(i).to_vec()),
            });
        }
    }
    Ok(events)
}

pub(crate) fn read_interval_table(
    path: &Path,
    interval: u64,
) -> Result<IntervalRecord, FormatError> {
    let batch = read_one_row(path)?;
    let cols = Cols {
        batch: &batch,
        path,
    };
    cols.check_number("interval", interval)?;
    let mut v = [0u64; INTERVAL_U64_COLUMNS.len()];
    for (v, name) in v.iter_mut().zip(INTERVAL_U64_COLUMNS) {
        *v = cols.u64s(name)?[0];
    }
    let [interval, start_exit, end_exit, start_ns, end_ns, downtime_ns, dirty_pages, vmm_written_pages, stored_pages, zero_pages, dedup_pages, bytes_written] =
        v;
    let rec = IntervalRecord {
        interval,
        start_exit,
        end_exit,
        start_ns,
        end_ns,
        downtime_ns,
        dirty_pages,
        vmm_written_pages,
        stored_pages,
        zero_pages,
        dedup_pages,
        bytes_written,
        complete: cols
            .required::<BooleanArray>("complete", "Boolean")?
            .value(0),
        backpressure_ns: cols.u64s("backpressure_ns")?[0],
        traced_frames: cols.u64s("traced_frames")?[0],
        trace_drops: cols.u64s("trace_drops")?[0],
    };
    if rec.trace_drops > 0 && rec.complete {
        return Err(FormatError::corrupt(
            path,
            format!(
                "complete is true although the tracer dropped {} events",
                rec.trace_drops
            ),
        ));
    }
    Ok(rec)
}

/// Reads an access log, checking it the way the writer checked its input: gfns inside guest
/// memory (`mem_pages`) and each at most once, `first_touch` equal to the row number, and only
/// the documented `kind` and `source` values.
pub(crate) fn read_access_table(
    path: &Path,
    interval: u64,
    mem_pages: u64,
) -> Result<Vec<Access>, FormatError> {
    let mut access = Vec::new();
    let mut seen = vec![0u64; mem_pages.div_ceil(64) as usize];
    for batch in read_batches(path, None)? {
        let cols = Cols {
            batch: &batch,
            path,
        };
        cols.check_number("interval", interval)?;
        let gfns = cols.u64s("gfn")?;
        let kinds = cols.required::<StringArray>("kind", "Utf8")?;
        let sources = cols.required::<StringArray>("source", "Utf8")?;
        let first_touch = cols.u32s("first_touch")?;
        for (i, &gfn) in gfns.iter().enumerate() {
            let row = access.len();
            if gfn >= mem_pages {
                return Err(FormatError::corrupt(
                    path,
                    format!("gfn {gfn:#x} is beyond guest memory ({mem_pages} pages)"),
                ));
            }
            let (word, bit) = ((gfn / 64) as usize, 1u64 << (gfn % 64));
            if seen[word] & bit != 0 {
                return Err(FormatError::corrupt(
                    path,
                    format!("gfn {gfn:#x} appears twice"),
                ));
            }
            seen[word] |= bit;
            if first_touch[i] as usize != row {
                return Err(FormatError::corrupt(
                    path,
                    format!(
                        "row {row} has first_touch {}, expected {row} (rows are in first-touch order)",
                        first_touch[i]
                    ),
                ));
            }
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
    Ok(access)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer refuses such a record, so only a damaged or foreign file can hold one.
    #[test]
    fn interval_marked_complete_despite_drops_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("interval-000004.parquet");
        let mut rec = IntervalRecord {
            interval: 4,
            complete: false,
            trace_drops: 9,
            traced_frames: 3,
            ..Default::default()
        };
        write_interval_table(&path, &rec).unwrap();
        assert_eq!(read_interval_table(&path, 4).unwrap(), rec);
        rec.complete = true;
        write_interval_table(&path, &rec).unwrap();
        let e = read_interval_table(&path, 4).unwrap_err();
        assert!(matches!(e, FormatError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("dropped 9 events"), "{e}");
    }

    const LIMITS: PageLimits = PageLimits {
        mem_pages: 64,
        page_slots: 100,
    };

    /// A consolidated page map comes back with the same slots and hashes, empty or not.
    #[test]
    fn pagemap_round_trip_includes_hashes() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("ckpt-000004.parquet");
        let mut map = PageMap::new(LIMITS.mem_pages);
        for (gfn, slot) in [(0, 7), (1, 8), (5, 7), (63, 99)] {
            // Distinct bytes at both ends, to catch a byte-order mistake.
            let hash = u128::from_be_bytes(std::array::from_fn(|i| (gfn * 16 + i as u64) as u8));
            map.set(gfn, Some((slot, hash)));
        }
        for m in [map, PageMap::new(LIMITS.mem_pages)] {
            write_pagemap_table(&path, 4, &m).unwrap();
            let mut back = PageMap::new(LIMITS.mem_pages);
            read_pagemap_table(&path, 4, LIMITS, &mut back).unwrap();
            assert_eq!(back, m);
        }
        // Big-endian in the file: the first byte of the value is the hash's top byte.
        let mut map = PageMap::new(LIMITS.mem_pages);
        map.set(3, Some((1, 0xaa << 120 | 0xbb)));
        write_pagemap_table(&path, 4, &map).unwrap();
        let b = &read_batches(&path, Some(&["hash"])).unwrap()[0];
        let h = b.column(0).as_any().downcast_ref::<FixedSizeBinaryArray>();
        let v = h.unwrap().value(0);
        assert_eq!((v[0], v[15]), (0xaa, 0xbb));
    }

    fn write_pagemap_with_hash(path: &Path, hash: ArrayRef) {
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
        let b = batch(path, schema.clone(), columns).unwrap();
        write_table(path, schema, &[b], Kind::PageTable).unwrap();
    }

    /// A pagemap hash column of the wrong width, or with NULLs, is corrupt, naming the file.
    #[test]
    fn bad_pagemap_hashes_are_corrupt() {
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
            write_pagemap_with_hash(&path, hash);
            let mut map = PageMap::new(LIMITS.mem_pages);
            let e = read_pagemap_table(&path, 0, LIMITS, &mut map).unwrap_err();
            assert!(matches!(e, FormatError::Corrupt { .. }), "{e}");
            assert!(e.to_string().contains(msg), "{msg}: {e}");
            assert!(e.to_string().contains("`hash`"), "{e}");
            assert_eq!(e.path(), Some(path.as_path()));
        }
    }

    /// In a checkpoint's page table a slot comes with a hash and NULL with NULL; anything else
    /// is corrupt, naming the file and the gfn.
    #[test]
    fn checkpoint_rows_need_slot_and_hash_together() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("ckpt-000002.parquet");
        let row = |gfn, slot, hash| PageRow { gfn, slot, hash };
        let good = [row(1, Some(3), Some(7u128 << 100)), row(2, None, None)];
        write_checkpoint_table(&path, 2, &good).unwrap();
        let mut got = Vec::new();
        read_checkpoint_table(&path, 2, LIMITS, |g, e| got.push((g, e))).unwrap();
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
            write_checkpoint_table(&path, 2, &[bad]).unwrap();
            let e = read_checkpoint_table(&path, 2, LIMITS, |_, _| {}).unwrap_err();
            assert!(matches!(e, FormatError::Corrupt { .. }), "{e}");
            assert!(e.to_string().contains(msg), "{msg}: {e}");
            assert_eq!(e.path(), Some(path.as_path()));
        }
    }

    /// Access logs that break the rules are reported, naming the file.
    #[test]
    fn bad_access_logs_are_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("interval-000002.parquet");
        let a = |gfn, first_touch| Access {
            gfn,
            kind: AccessKind::Read,
            source: AccessSource::Dma,
            first_touch,
        };
        let good = [a(7, 0), a(1, 1)];
        write_access_table(&path, 2, &good).unwrap();
        assert_eq!(read_access_table(&path, 2, 8).unwrap(), good);
        for (rows, mem_pages, msg) in [
            (vec![a(7, 0), a(7, 1)], 8, "appears twice"),
            (vec![a(1, 1), a(7, 0)], 8, "first-touch order"),
            (vec![a(7, 0)], 7, "beyond guest memory"),
        ] {
            write_access_table(&path, 2, &rows).unwrap();
            let e = read_access_table(&path, 2, mem_pages).unwrap_err();
            assert!(e.to_string().contains(msg), "{msg}: {e}");
            assert_eq!(e.path(), Some(path.as_path()));
        }
        // An unknown kind.
        let schema = access_schema();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from(vec![2])),
            Arc::new(UInt64Array::from(vec![1])),
            Arc::new(StringArray::from(vec!["execute"])),
            Arc::new(StringArray::from(vec!["mmu"])),
            Arc::new(UInt32Array::from(vec![0])),
        ];
        let b = batch(&path, schema.clone(), columns).unwrap();
        write_table(&path, schema, &[b], Kind::Access).unwrap();
        let e = read_access_table(&path, 2, 8).unwrap_err();
        assert!(e.to_string().contains("\"execute\""), "{e}");
    }
}
