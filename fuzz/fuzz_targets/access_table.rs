//! access/interval-N.parquet: any bytes as the access log (working set) of the interval the first byte chooses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simuboost_format::layout;
use simuboost_fuzz::{CHECKPOINTS, MEM_BYTES};

fuzz_target!(|data: &[u8]| {
    let run = simuboost_fuzz::run();
    let (interval, data) = simuboost_fuzz::numbered(data, CHECKPOINTS - 1);
    simuboost_fuzz::put(&layout::access_table(run.dir(), interval), data);
    let whole = run.access(interval);
    let frames = run.access_frames(interval);
    // The frames-only read (a restore's) accepts whatever the whole read accepts, with the
    // same frames; it checks fewer columns, so it may accept more.
    if let Ok(Some(access)) = &whole {
        let gfns: Vec<u64> = access.iter().map(|a| a.gfn).collect();
        assert_eq!(
            frames.as_ref().ok(),
            Some(&Some(gfns)),
            "frames-only read differs"
        );
    }
    if let Ok(Some(frames)) = &frames {
        let mut distinct = frames.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), frames.len(), "a frame twice");
        assert!(
            frames.iter().all(|&g| g < MEM_BYTES / 4096),
            "frame outside guest memory"
        );
    }
    if let Ok(Some(access)) = whole {
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
