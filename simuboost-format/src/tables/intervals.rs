//! `intervals/interval-N.parquet`: the statistics of interval N, one row.

use std::path::Path;

use super::columns::{
    read_one_row, write_table, BatchBuilder, Cols, Column,
    ColumnType::{Bool, U64},
    Settings, Table,
};
use crate::records::IntervalRecord;
use crate::storage::RunStorage;
use crate::{layout, FormatError};

const EXITS: &str = "Exit counts at checkpoint i and checkpoint i+1.";
const CLOCK: &str = "Wall clock at the two boundaries, ns since the run started.";

pub(crate) const TABLE: Table = Table {
    dir: layout::INTERVALS_DIR,
    columns: &[
        Column::new("interval", U64, "i."),
        Column::new("start_exit", U64, EXITS),
        Column::new("end_exit", U64, EXITS),
        Column::new("start_ns", U64, CLOCK),
        Column::new("end_ns", U64, CLOCK),
        Column::new(
            "downtime_ns",
            U64,
            "Time the guest was paused to take checkpoint i+1.",
        ),
        Column::new(
            "dirty_pages",
            U64,
            "Pages the dirty log reported for the interval.",
        ),
        Column::new(
            "vmm_written_pages",
            U64,
            "Pages the VMM wrote (DMA, request blocks) outside the dirty log.",
        ),
        Column::new(
            "stored_pages",
            U64,
            "Pages of checkpoint i+1 whose contents were new to the run (appended to pages.bin).",
        ),
        Column::new("zero_pages", U64, "Pages of checkpoint i+1 that were zero."),
        Column::new(
            "dedup_pages",
            U64,
            "Non-zero pages of checkpoint i+1 whose contents were already stored. `stored + zero \
             + dedup` = rows of `checkpoints/ckpt-(i+1)`.",
        ),
        Column::new(
            "bytes_written",
            U64,
            "Bytes checkpoint i+1 added to the run: pages.bin growth plus the sizes of its \
             `checkpoints/`, `pagemaps/`, `state/`, `events/`, `eventpages/`, `access/` and \
             `dumps/` files (not this file itself nor the manifest).",
        ),
        Column::new(
            "complete",
            Bool,
            "False if the access log of the interval may miss frames; always false when \
             `trace_drops > 0`. True when the run has no tracer.",
        ),
        Column::new(
            "backpressure_ns",
            U64,
            "Time the guest waited because the background checkpoint writer was behind.",
        ),
        Column::new(
            "traced_frames",
            U64,
            "Rows of `access/interval-i.parquet`; 0 when the interval has no access log.",
        ),
        Column::new(
            "trace_drops",
            U64,
            "Events the tracer lost during the interval; 0 without a tracer. Non-zero implies \
             `complete = false`.",
        ),
        Column::new(
            "event_pages",
            U64,
            "Pages of the interval's event data (disk reads) held by reference: rows of \
             `eventpages/interval-i.parquet`.",
        ),
        Column::new(
            "event_stored_pages",
            U64,
            "Of `event_pages`, the non-zero ones whose contents were new to the run (appended to \
             pages.bin); the rest were zero or already stored.",
        ),
    ],
    settings: Settings::Small,
};

pub(crate) fn write(path: &Path, rec: &IntervalRecord) -> Result<u64, FormatError> {
    let batch = BatchBuilder::new(&TABLE, 1)
        .number("interval", rec.interval)
        .u64s("start_exit", [rec.start_exit])
        .u64s("end_exit", [rec.end_exit])
        .u64s("start_ns", [rec.start_ns])
        .u64s("end_ns", [rec.end_ns])
        .u64s("downtime_ns", [rec.downtime_ns])
        .u64s("dirty_pages", [rec.dirty_pages])
        .u64s("vmm_written_pages", [rec.vmm_written_pages])
        .u64s("stored_pages", [rec.stored_pages])
        .u64s("zero_pages", [rec.zero_pages])
        .u64s("dedup_pages", [rec.dedup_pages])
        .u64s("bytes_written", [rec.bytes_written])
        .bools("complete", [rec.complete])
        .u64s("backpressure_ns", [rec.backpressure_ns])
        .u64s("traced_frames", [rec.traced_frames])
        .u64s("trace_drops", [rec.trace_drops])
        .u64s("event_pages", [rec.event_pages])
        .u64s("event_stored_pages", [rec.event_stored_pages])
        .finish(path)?;
    write_table(path, &TABLE, &[batch])
}

pub(crate) fn read(
    storage: &dyn RunStorage,
    path: &Path,
    interval: u64,
) -> Result<IntervalRecord, FormatError> {
    let batch = read_one_row(storage, path)?;
    let cols = Cols::new(&batch, path);
    cols.check_number("interval", interval)?;
    let u64_of = |name| cols.u64s(name).map(|v| v[0]);
    let rec = IntervalRecord {
        interval,
        start_exit: u64_of("start_exit")?,
        end_exit: u64_of("end_exit")?,
        start_ns: u64_of("start_ns")?,
        end_ns: u64_of("end_ns")?,
        downtime_ns: u64_of("downtime_ns")?,
        dirty_pages: u64_of("dirty_pages")?,
        vmm_written_pages: u64_of("vmm_written_pages")?,
        stored_pages: u64_of("stored_pages")?,
        zero_pages: u64_of("zero_pages")?,
        dedup_pages: u64_of("dedup_pages")?,
        bytes_written: u64_of("bytes_written")?,
        complete: cols.bools("complete")?.value(0),
        backpressure_ns: u64_of("backpressure_ns")?,
        traced_frames: u64_of("traced_frames")?,
        trace_drops: u64_of("trace_drops")?,
        event_pages: u64_of("event_pages")?,
        event_stored_pages: u64_of("event_stored_pages")?,
    };
    if rec.start_exit > rec.end_exit {
        return Err(FormatError::corrupt(
            path,
            format!(
                "start_exit {} is after end_exit {}",
                rec.start_exit, rec.end_exit
            ),
        ));
    }
    if rec.event_stored_pages > rec.event_pages {
        return Err(FormatError::corrupt(
            path,
            format!(
                "event_stored_pages {} exceeds event_pages {}",
                rec.event_stored_pages, rec.event_pages
            ),
        ));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer refuses such a record, so only a damaged or foreign file can hold one.
    #[test]
    fn marked_complete_despite_drops_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("interval-000004.parquet");
        let mut rec = IntervalRecord {
            interval: 4,
            complete: false,
            trace_drops: 9,
            traced_frames: 3,
            ..Default::default()
        };
        write(&path, &rec).unwrap();
        assert_eq!(
            read(&crate::storage::LocalStorage::new(tmp.path()), &path, 4).unwrap(),
            rec
        );
        rec.complete = true;
        write(&path, &rec).unwrap();
        let e = read(&crate::storage::LocalStorage::new(tmp.path()), &path, 4).unwrap_err();
        assert!(matches!(e, FormatError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("dropped 9 events"), "{e}");
    }
}
