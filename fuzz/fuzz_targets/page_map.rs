//! pagemaps/ckpt-N.parquet (a consolidated page map): any bytes as the map of checkpoint 0,
//! read into the page map a replay restores from, whole and in part (row groups chosen by
//! their statistics); where both succeed they must agree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simuboost_format::layout;
use simuboost_fuzz::{MEM_BYTES, PAGE_SLOTS};

fuzz_target!(|data: &[u8]| {
    let run = simuboost_fuzz::run();
    simuboost_fuzz::put(&layout::pagemap_table(run.dir(), 0), data);
    let whole = run.page_map(0);
    if let Ok(partial) = run.partial_page_map(0) {
        let gfns: Vec<u64> = (0..MEM_BYTES / 4096).step_by(7).collect();
        if partial.load(&gfns).is_ok() {
            for &gfn in &gfns {
                let entry = partial.entry(gfn);
                if let (Ok(entry), Ok(map)) = (&entry, &whole) {
                    // A damaged part the partial read skipped may fail the whole read only.
                    assert_eq!(*entry, map.entry(gfn), "gfn {gfn:#x}");
                }
            }
        }
    }
    if let Ok(map) = whole {
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
