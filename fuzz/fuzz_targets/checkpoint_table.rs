//! checkpoints/ckpt-N.parquet (a checkpoint's page table): any bytes as the page table of
//! the checkpoint the first byte chooses, read as the list of its rows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simuboost_format::layout;
use simuboost_fuzz::{CHECKPOINTS, MEM_BYTES, PAGE_SLOTS};

fuzz_target!(|data: &[u8]| {
    let run = simuboost_fuzz::run();
    let (checkpoint, data) = simuboost_fuzz::numbered(data, CHECKPOINTS);
    simuboost_fuzz::put(&layout::checkpoint_table(run.dir(), checkpoint), data);
    if let Ok(rows) = run.checkpoint_pages(checkpoint) {
        for row in &rows {
            assert!(
                row.gfn < MEM_BYTES / 4096,
                "gfn {:#x} outside guest memory",
                row.gfn
            );
            assert_eq!(row.slot.is_some(), row.hash.is_some());
            if let Some(slot) = row.slot {
                assert!(slot < PAGE_SLOTS, "slot {slot} past the committed ones");
            }
        }
    }
});
