//! access/interval-N.parquet: any bytes as the access log (working set) of the interval the first byte chooses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simuboost_format::layout;
use simuboost_fuzz::{CHECKPOINTS, MEM_BYTES};

fuzz_target!(|data: &[u8]| {
    let run = simuboost_fuzz::run();
    let (interval, data) = simuboost_fuzz::numbered(data, CHECKPOINTS - 1);
    simuboost_fuzz::put(&layout::access_table(run.dir(), interval), data);
    if let Ok(Some(access)) = run.access(interval) {
        assert!(
            access.len() as u64 <= MEM_BYTES / 4096,
            "more rows than guest pages"
        );
        for a in &access {
            assert!(
                a.gfn < MEM_BYTES / 4096,
                "gfn {:#x} outside guest memory",
                a.gfn
            );
        }
    }
});
