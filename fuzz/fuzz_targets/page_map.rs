//! pagemaps/ckpt-N.parquet (a consolidated page map): any bytes as the map of checkpoint 0,
//! read into the page map a replay restores from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simuboost_format::layout;
use simuboost_fuzz::{MEM_BYTES, PAGE_SLOTS};

fuzz_target!(|data: &[u8]| {
    let run = simuboost_fuzz::run();
    simuboost_fuzz::put(&layout::pagemap_table(run.dir(), 0), data);
    if let Ok(map) = run.page_map(0) {
        let mut pages = 0;
        for (gfn, slot, hash) in map.entries() {
            assert!(gfn < MEM_BYTES / 4096, "gfn {gfn:#x} outside guest memory");
            assert!(slot < PAGE_SLOTS, "slot {slot} past the committed ones");
            assert_eq!(map.entry(gfn), Some((slot, hash)));
            pages += 1;
        }
        assert_eq!(pages, map.len());
        let in_runs: u64 = map.runs().map(|(_, _, n)| n).sum();
        assert_eq!(in_runs, pages as u64);
    }
});
