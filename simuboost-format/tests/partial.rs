//! `Run::partial_page_map` gives exactly the answers of `Run::page_map`, reading only the row
//! groups of the frames asked for.

mod common;

use common::*;
use simuboost_format::{Run, RunWriter};

/// More rows than one row group holds (2 Ki), so the maps have several.
const MEM_PAGES: u64 = 6000;
const CHECKPOINTS: u64 = 9;
const CONSOLIDATE: u64 = 4;

#[test]
fn partial_page_map_equals_the_whole_one_and_reads_less() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut w = RunWriter::create(&dir, meta(MEM_PAGES))
        .unwrap()
        .with_consolidate_every(CONSOLIDATE);
    let mut rng = Rng(7);
    let mut model = Model::new(MEM_PAGES);
    for n in 0..CHECKPOINTS {
        // Some overlays larger than a row group, too.
        let g = gen_checkpoint(&mut rng, n, MEM_PAGES, 3000);
        apply(&mut model, &g);
        write(&mut w, n, &g, None).unwrap();
    }
    drop(w);
    let run = Run::open(&dir).unwrap();
    for n in 0..CHECKPOINTS {
        let whole = run.page_map(n).unwrap();
        // Asked for a few frames at one end: only their row groups are read.
        let partial = run.partial_page_map(n).unwrap();
        partial.load(&[1, 2, 3, 40]).unwrap();
        let stats = partial.stats();
        assert_eq!(stats.files as u64, 1 + n % CONSOLIDATE, "checkpoint {n}");
        assert!(
            stats.loaded < stats.row_groups && stats.loaded <= stats.files,
            "checkpoint {n}: {stats:?}"
        );
        for gfn in [1, 2, 3, 40] {
            assert_eq!(partial.entry(gfn).unwrap(), whole.entry(gfn), "{n}/{gfn}");
        }
        assert_eq!(partial.stats().loaded, stats.loaded, "no more reads");
        // Every other frame on demand, in a scattered order, and past guest memory.
        let mut gfn = 0u64;
        for _ in 0..MEM_PAGES {
            gfn = (gfn + 2477) % MEM_PAGES;
            assert_eq!(partial.entry(gfn).unwrap(), whole.entry(gfn), "{n}/{gfn}");
        }
        assert_eq!(partial.entry(MEM_PAGES).unwrap(), None);
        let stats = partial.stats();
        assert_eq!(stats.loaded, stats.row_groups, "checkpoint {n}");
    }
}
