//! eventpages/interval-N.parquet: any bytes as the disk-read pages of interval 0 of a real run
//! (written by `RunWriter`) whose events table announces them, then reading the pages the file
//! names from pages.bin, checked against their hashes.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use simuboost_format::{
    layout, CheckpointInput, CheckpointPages, CheckpointState, Event, EventData, IntervalRecord,
    Run, RunMeta, RunWriter, PAGE_SIZE,
};

/// A run whose interval 0 has two disk reads (3 pages: data, zeros, the data again; and 1 page)
/// and a small inline read.
fn run() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = simuboost_fuzz::scratch().join("eventpages");
        let _ = std::fs::remove_dir_all(&dir);
        let meta = RunMeta {
            workload: "fuzz".into(),
            mem_bytes: simuboost_fuzz::MEM_BYTES,
            seed: 0,
            interval_ns: 1,
            dirty_tracking: "model".into(),
            tracer: "none".into(),
            created_unix_ms: 0,
            guest_image_xxh3: String::new(),
            disk_image: None,
            cpuid: Vec::new(),
        };
        let mut w = RunWriter::create(&dir, meta).expect("create the run");
        let page = vec![0x5au8; PAGE_SIZE];
        let s0 = CheckpointState::default();
        w.write_checkpoint(CheckpointInput::new(
            &s0,
            CheckpointPages {
                gfns: &[1],
                contents: &page,
            },
        ))
        .expect("checkpoint 0");
        let mut read = vec![0u8; 3 * PAGE_SIZE];
        read[..PAGE_SIZE].fill(1);
        read[2 * PAGE_SIZE..].fill(1);
        let event = |exit, data: Vec<u8>| Event {
            exit,
            op: 4,
            data_gpa: Some(0x10000),
            data: Some(EventData::Bytes(data)),
            ..Default::default()
        };
        let events = [
            event(1, read),
            event(2, vec![3; PAGE_SIZE]),
            event(3, vec![1, 2, 3]),
        ];
        let s1 = CheckpointState {
            checkpoint: 1,
            exit: 3,
            ..Default::default()
        };
        w.write_checkpoint(CheckpointInput {
            interval: Some(IntervalRecord {
                interval: 0,
                end_exit: 3,
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
        .expect("checkpoint 1");
        Run::open(&dir).expect("the run opens")
    })
}

fuzz_target!(|data: &[u8]| {
    let run = run();
    let (_, data) = simuboost_fuzz::numbered(data, 1);
    simuboost_fuzz::put(&layout::eventpages_table(run.dir(), 0), data);
    let Ok(events) = run.events(0) else {
        return;
    };
    let store = run.page_store().expect("pages.bin opens");
    for e in &events {
        if let Some(EventData::Pages(pages)) = &e.data {
            for &(slot, _) in pages.iter().flatten() {
                assert!(slot < run.manifest().page_slots, "slot past page_slots");
            }
            let mut out = vec![0u8; pages.len() * PAGE_SIZE];
            let _ = store.read_event_pages(e.exit, pages, &mut out);
        }
    }
});
