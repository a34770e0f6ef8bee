//! `events/interval-N.parquet`: one row per guest-initiated exit of interval N, exits ascending.

use std::path::Path;

use arrow_array::{Array, RecordBatch};

use super::columns::{
    read_batches, write_table, BatchBuilder, Cols, Column,
    ColumnType::{Binary, U32, U64},
    Settings, Table,
};
use crate::records::{Event, EventData};
use crate::storage::RunStorage;
use crate::{layout, FormatError};

/// Events are written in batches of at most this many rows or [`BATCH_BYTES`] of data, so
/// a `Binary` column's i32 offsets never overflow and memory stays bounded.
const BATCH_ROWS: usize = 16 * 1024;
const BATCH_BYTES: usize = 64 << 20;

pub(crate) const TABLE: Table = Table {
    dir: layout::EVENTS_DIR,
    columns: &[
        Column::new("interval", U64, "i."),
        Column::new("exit", U64, "Exit count of this exit since boot."),
        Column::new("op", U32, "Request opcode (`simuboost-abi`)."),
        Column::new("arg0", U64, "Request arguments."),
        Column::new("arg1", U64, "Request arguments."),
        Column::new("arg2", U64, "Request arguments."),
        Column::new(
            "status",
            U32,
            "Status the VMM wrote into the request block.",
        ),
        Column::new("ret", U64, "Result the VMM wrote into the request block."),
        Column::nullable(
            "data_gpa",
            U64,
            "Guest physical address of `data`; NULL when the VMM wrote no buffer.",
        ),
        Column::nullable(
            "data",
            Binary,
            "Bytes the VMM wrote into guest memory besides status/ret (clock value, random \
             bytes, ...). NULL = nothing written, or the data is held by reference \
             (`data_pages`); an empty value is distinct from NULL.",
        ),
        Column::nullable(
            "data_pages",
            U64,
            "Set when the data is whole pages (block-read data) held by reference in pages.bin: \
             how many, listed in `eventpages/` under this exit. `data` is then NULL.",
        ),
    ],
    settings: Settings::Small,
};

/// An event's data as this table stores it: inline bytes, or a count of pages held by
/// reference.
fn stored_data(event: &Event) -> (Option<&[u8]>, Option<u64>) {
    match &event.data {
        None => (None, None),
        Some(EventData::Bytes(bytes)) => (Some(bytes), None),
        Some(EventData::Pages(pages)) => (None, Some(pages.len() as u64)),
    }
}

fn batch(path: &Path, events: &[Event]) -> Result<RecordBatch, FormatError> {
    BatchBuilder::new(&TABLE, events.len())
        .u64s("interval", events.iter().map(|e| e.interval))
        .u64s("exit", events.iter().map(|e| e.exit))
        .u32s("op", events.iter().map(|e| e.op))
        .u64s("arg0", events.iter().map(|e| e.args[0]))
        .u64s("arg1", events.iter().map(|e| e.args[1]))
        .u64s("arg2", events.iter().map(|e| e.args[2]))
        .u32s("status", events.iter().map(|e| e.status))
        .u64s("ret", events.iter().map(|e| e.ret))
        .opt_u64s("data_gpa", events.iter().map(|e| e.data_gpa))
        .opt_binaries("data", events.iter().map(|e| stored_data(e).0))
        .opt_u64s("data_pages", events.iter().map(|e| stored_data(e).1))
        .finish(path)
}

/// Writes `events`; the data of an event is inline ([`EventData::Bytes`]) or a page count
/// ([`EventData::Pages`], whose entries go to the `eventpages` table).
pub(crate) fn write(path: &Path, events: &[Event]) -> Result<u64, FormatError> {
    let mut batches = Vec::new();
    let mut start = 0;
    while start < events.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < events.len() && end - start < BATCH_ROWS {
            let len = stored_data(&events[end]).0.map_or(0, <[u8]>::len);
            if end > start && bytes + len > BATCH_BYTES {
                break;
            }
            bytes += len;
            end += 1;
        }
        batches.push(batch(path, &events[start..end])?);
        start = end;
    }
    if batches.is_empty() {
        // An interval without exits still gets a (zero-row) file, so every complete interval
        // has one and globs see a consistent set.
        batches.push(RecordBatch::new_empty(TABLE.schema()));
    }
    write_table(path, &TABLE, &batches)
}

/// Reads the events of `interval` from `path`, checking that exits ascend and that every
/// buffer lies inside guest memory (`mem_bytes`). Data held by reference comes back as an
/// empty [`EventData::Pages`], with the event's index and announced page count in the second
/// list: the caller fills the entries in from the `eventpages` table.
pub(crate) fn read(
    storage: &dyn RunStorage,
    path: &Path,
    interval: u64,
    mem_bytes: u64,
) -> Result<(Vec<Event>, Vec<ByReference>), FormatError> {
    // Not bounded here: an interval has as many exits as it has (the replayer checks the
    // interval's boundaries against the checkpoints' states).
    let batches = read_batches(storage, path, None, u64::MAX)?;
    let mut events = Vec::with_capacity(batches.iter().map(|b| b.num_rows()).sum());
    let mut by_reference = Vec::new();
    for batch in batches {
        let cols = Cols::new(&batch, path);
        cols.check_number("interval", interval)?;
        let exit = cols.u64s("exit")?;
        let op = cols.u32s("op")?;
        let arg0 = cols.u64s("arg0")?;
        let arg1 = cols.u64s("arg1")?;
        let arg2 = cols.u64s("arg2")?;
        let status = cols.u32s("status")?;
        let ret = cols.u64s("ret")?;
        let data_gpa = cols.opt_u64s("data_gpa")?;
        let data = cols.opt_binaries("data")?;
        let data_pages = cols.opt_u64s("data_pages")?;
        for i in 0..batch.num_rows() {
            if let Some(prev) = events.last().map(|e: &Event| e.exit) {
                if exit[i] <= prev {
                    return Err(FormatError::corrupt(
                        path,
                        format!(
                            "row {}: exit {} does not follow exit {prev} (exits ascend)",
                            events.len(),
                            exit[i]
                        ),
                    ));
                }
            }
            let row = events.len();
            let corrupt = |what: String| FormatError::corrupt(path, format!("row {row}: {what}"));
            let stored = match (data.is_valid(i), data_pages.is_valid(i)) {
                (false, false) => None,
                (true, false) => Some(Stored::Bytes(data.value(i))),
                (false, true) => Some(Stored::Pages(data_pages.value(i))),
                (true, true) => {
                    return Err(corrupt(
                        "data and data_pages are both set (data is inline or by reference)".into(),
                    ))
                }
            };
            if data_gpa.is_valid(i) != stored.is_some() {
                return Err(corrupt(
                    "data_gpa must be set exactly when data or data_pages is".into(),
                ));
            }
            if let Some(stored) = &stored {
                let gpa = data_gpa.value(i);
                let len = match stored {
                    Stored::Bytes(bytes) => Some(bytes.len() as u64),
                    Stored::Pages(pages) => pages.checked_mul(crate::PAGE_SIZE as u64),
                };
                if len
                    .and_then(|len| gpa.checked_add(len))
                    .is_none_or(|end| end > mem_bytes)
                {
                    return Err(corrupt(format!(
                        "its {}-byte buffer at {gpa:#x} lies outside guest memory ({mem_bytes} \
                         bytes)",
                        len.map_or_else(|| "overflowing".to_string(), |l| l.to_string())
                    )));
                }
            }
            events.push(Event {
                interval,
                exit: exit[i],
                op: op[i],
                args: [arg0[i], arg1[i], arg2[i]],
                status: status[i],
                ret: ret[i],
                data_gpa: data_gpa.is_valid(i).then(|| data_gpa.value(i)),
                data: stored.map(|stored| match stored {
                    Stored::Bytes(bytes) => EventData::Bytes(bytes.to_vec()),
                    Stored::Pages(pages) => {
                        by_reference.push((row, pages));
                        EventData::Pages(Vec::new())
                    }
                }),
            });
        }
    }
    Ok((events, by_reference))
}

/// An event whose data is held by reference: its index in the events read, and its page count.
pub(crate) type ByReference = (usize, u64);

/// An event's data as read from a row.
enum Stored<'a> {
    Bytes(&'a [u8]),
    Pages(u64),
}
