//! `eventpages/interval-N.parquet`: the pages of event data that interval N's events hold by
//! reference (disk reads), one row per page, ordered by exit and page. Written only for an
//! interval that has such data; the events table's `data_pages` says how many rows each event
//! owns.

use arrow_array::Array;
use std::path::Path;

use super::checkpoint::entry_at;
use super::columns::{
    read_batches, write_table, BatchBuilder, Cols, Column, ColumnType, Settings, Table,
};
use crate::storage::RunStorage;
use crate::{layout, FormatError};

pub(crate) const TABLE: Table = Table {
    dir: layout::EVENTPAGES_DIR,
    columns: &[
        Column::new("interval", ColumnType::U64, "i."),
        Column::new(
            "exit",
            ColumnType::U64,
            "The event's exit (a row of `events/` with `data_pages` set).",
        ),
        Column::new(
            "page",
            ColumnType::U64,
            "Index of the page in the event's data: bytes `page * 4096 ..` of it, written at \
             `data_gpa + page * 4096`.",
        ),
        Column::nullable(
            "slot",
            ColumnType::U64,
            "Slot in pages.bin holding the page. **NULL = the page is zero.**",
        ),
        Column::nullable(
            "hash",
            ColumnType::Hash,
            "xxh3-128 of the contents, big-endian; NULL for a zero page.",
        ),
    ],
    settings: Settings::PageTable,
};

/// One page of an event's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EventPage {
    pub exit: u64,
    pub page: u64,
    /// `(slot, hash)`, `None` for a zero page.
    pub entry: Option<(u64, u128)>,
}

pub(crate) fn write(path: &Path, interval: u64, rows: &[EventPage]) -> Result<u64, FormatError> {
    let batch = BatchBuilder::new(&TABLE, rows.len())
        .number("interval", interval)
        .u64s("exit", rows.iter().map(|r| r.exit))
        .u64s("page", rows.iter().map(|r| r.page))
        .opt_u64s("slot", rows.iter().map(|r| r.entry.map(|(s, _)| s)))
        .opt_hashes("hash", rows.iter().map(|r| r.entry.map(|(_, h)| h)))
        .finish(path)?;
    write_table(path, &TABLE, &[batch])
}

/// Reads the rows of interval `interval`'s event pages, checking each row's slot against the
/// `page_slots` the manifest commits and that the file holds at most `max_rows` rows (what the
/// events table announces).
pub(crate) fn read(
    storage: &dyn RunStorage,
    path: &Path,
    interval: u64,
    page_slots: u64,
    max_rows: u64,
) -> Result<Vec<EventPage>, FormatError> {
    let names: Vec<&str> = TABLE.names().collect();
    let batches = read_batches(storage, path, Some(&names), max_rows)?;
    let mut rows = Vec::with_capacity(batches.iter().map(|b| b.num_rows()).sum());
    for batch in batches {
        let cols = Cols::new(&batch, path);
        cols.check_number("interval", interval)?;
        let exits = cols.u64s("exit")?;
        let pages = cols.u64s("page")?;
        let slots = cols.opt_u64s("slot")?;
        let hashes = cols.hashes("hash", true)?;
        for i in 0..batch.num_rows() {
            let slot = slots.is_valid(i).then(|| slots.value(i));
            if let Some(slot) = slot.filter(|&s| s >= page_slots) {
                return Err(FormatError::corrupt(
                    path,
                    format!(
                        "page {} of exit {} refers to slot {slot}, past the {page_slots} slots \
                         of pages.bin the manifest commits",
                        pages[i], exits[i]
                    ),
                ));
            }
            let (exit, page) = (exits[i], pages[i]);
            let entry = entry_at(
                path,
                format_args!("page {page} of exit {exit}"),
                slot,
                hashes,
                i,
            )?;
            rows.push(EventPage { exit, page, entry });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        CheckpointInput, CheckpointPages, CheckpointState, Event, EventData, FormatError,
        IntervalRecord, Run, RunMeta, RunWriter, PAGE_SIZE,
    };

    const MEM_PAGES: u64 = 16;

    /// A run of two checkpoints whose interval 0 has one disk read of three pages (the second
    /// zero, the third equal to the first) and one small inline read.
    fn run_with_a_disk_read(dir: &Path) -> (Vec<u8>, RunWriter) {
        let meta = RunMeta {
            workload: "test".into(),
            mem_bytes: MEM_PAGES * PAGE_SIZE as u64,
            seed: 1,
            interval_ns: 1,
            dirty_tracking: "model".into(),
            tracer: "none".into(),
            created_unix_ms: 0,
            guest_image_xxh3: "0".into(),
            disk_image: None,
            cpuid: Vec::new(),
        };
        let mut w = RunWriter::create(dir, meta).unwrap();
        let memory = vec![7u8; PAGE_SIZE];
        let state = |checkpoint, exit| CheckpointState {
            checkpoint,
            exit,
            ..Default::default()
        };
        let s0 = state(0, 0);
        let pages = CheckpointPages {
            gfns: &[1],
            contents: &memory,
        };
        w.write_checkpoint(CheckpointInput::new(&s0, pages))
            .unwrap();
        let mut data = vec![0u8; 3 * PAGE_SIZE];
        data[..PAGE_SIZE].fill(9);
        data[2 * PAGE_SIZE..].fill(9);
        let event = |exit, data: Vec<u8>| Event {
            interval: 0,
            exit,
            op: 4,
            data_gpa: Some(0x2000),
            data: Some(EventData::Bytes(data)),
            ..Default::default()
        };
        let events = [event(1, data.clone()), event(2, vec![1, 2, 3])];
        let s1 = state(1, 2);
        let stats = w
            .write_checkpoint(CheckpointInput {
                interval: Some(IntervalRecord {
                    interval: 0,
                    start_exit: 0,
                    end_exit: 2,
                    complete: true,
                    ..Default::default()
                }),
                events: &events,
                ..CheckpointInput::new(
                    &s1,
                    CheckpointPages {
                        gfns: &[],
                        contents: &[],
                    },
                )
            })
            .unwrap();
        // One new page: the zero page is not stored and the third is the first again.
        assert_eq!((stats.event_pages, stats.event_stored_pages), (3, 1));
        (data, w)
    }

    #[test]
    fn disk_reads_are_held_by_reference_and_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let (data, _) = run_with_a_disk_read(&dir);
        let run = Run::open(&dir).unwrap();
        let events = run.events(0).unwrap();
        let Some(EventData::Pages(pages)) = &events[0].data else {
            panic!("expected pages, got {:?}", events[0].data);
        };
        assert_eq!(pages.len(), 3);
        assert_eq!(pages[1], None);
        assert_eq!(pages[0], pages[2]);
        assert_eq!(events[1].data, Some(EventData::Bytes(vec![1, 2, 3])));
        let mut out = vec![1u8; 3 * PAGE_SIZE];
        run.page_store()
            .unwrap()
            .read_event_pages(1, pages, &mut out)
            .unwrap();
        assert_eq!(out, data);
        let rec = run.interval(0).unwrap();
        assert_eq!((rec.event_pages, rec.event_stored_pages), (3, 1));
    }

    /// Each kind of damage to the event pages is an error naming the file and what is wrong.
    #[test]
    fn damaged_event_pages_are_errors_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let (_, _) = run_with_a_disk_read(&dir);
        let path = layout::eventpages_table(&dir, 0);
        let run = Run::open(&dir).unwrap();
        let Some(EventData::Pages(good)) = run.events(0).unwrap()[0].data.clone() else {
            panic!("expected pages");
        };
        let row = |exit, page, entry| EventPage { exit, page, entry };
        let rows = |entries: &[Option<(u64, u128)>]| -> Vec<EventPage> {
            entries
                .iter()
                .enumerate()
                .map(|(k, &e)| row(1, k as u64, e))
                .collect()
        };
        let expect = |what: &str, rows: Vec<EventPage>| {
            write(&path, 0, &rows).unwrap();
            let e = run.events(0).unwrap_err();
            assert!(matches!(e, FormatError::Corrupt { .. }), "{what}: {e}");
            assert_eq!(e.path(), Some(path.as_path()), "{what}: {e}");
            assert!(e.to_string().contains(what), "{what}: {e}");
        };
        expect("ends before page 2 of exit 1", rows(&good[..2]));
        let mut extra = rows(&good);
        extra.push(row(1, 3, None));
        expect("this table holds at most 3", extra);
        let mut swapped = rows(&good);
        swapped.swap(0, 1);
        expect("expected page 0 of exit 1, found page 1", swapped);
        expect(
            "expected page 0 of exit 1, found page 0 of exit 2",
            vec![row(2, 0, None); 3],
        );
        let past = good[0].map(|(_, h)| (99, h));
        expect(
            "page 0 of exit 1 refers to slot 99, past the",
            rows(&[past, None, good[2]]),
        );

        // A hash that is not the page's: found when the page is read.
        let (slot, hash) = good[0].unwrap();
        let wrong = [Some((slot, hash ^ 1)), None, good[2]];
        write(&path, 0, &rows(&wrong)).unwrap();
        let Some(EventData::Pages(read)) = run.events(0).unwrap()[0].data.clone() else {
            panic!("expected pages");
        };
        let mut out = vec![0u8; 3 * PAGE_SIZE];
        let e = run
            .page_store()
            .unwrap()
            .read_event_pages(1, &read, &mut out)
            .unwrap_err();
        assert!(
            e.to_string().contains("page 0 of the data of exit 1"),
            "{e}"
        );
        assert_eq!(e.path(), Some(layout::pages(&dir).as_path()));

        std::fs::remove_file(&path).unwrap();
        let e = run.events(0).unwrap_err();
        assert_eq!(e.path(), Some(path.as_path()), "{e}");
        assert!(e.to_string().contains("missing, but"), "{e}");
    }
}
