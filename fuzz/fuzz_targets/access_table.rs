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
    let set = run.working_set(interval);
    // A restore's read (frames and start pages) accepts whatever the whole read accepts, with
    // the same frames; it checks fewer columns, so it may accept more.
    if let Ok(Some(access)) = &whole {
        let gfns: Vec<u64> = access.iter().map(|a| a.gfn).collect();
        assert_eq!(
            set.as_ref().ok().map(|s| s.as_ref().map(|s| &s.frames)),
            Some(Some(&gfns)),
            "the working-set read differs"
        );
    }
    if let Ok(Some(set)) = &set {
        let frames = &set.frames;
        if let Some(pages) = &set.start_pages {
            assert_eq!(pages.len(), frames.len(), "a start page per frame");
            let slots = run.manifest().page_slots;
            assert!(
                pages.iter().flatten().all(|&(slot, _)| slot < slots),
                "a start slot past the committed slots"
            );
        }
        let mut distinct = frames.to_vec();
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
