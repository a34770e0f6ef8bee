//! `Run::partial_page_map` gives exactly the answers of `Run::page_map`, reading only the row
//! groups of the frames asked for.

mod common;

use std::path::Path;

use common::*;
use simuboost_format::{Run, RunWriter};

/// More rows than one row group holds (2 Ki), so the maps have several.
const MEM_PAGES: u64 = 6000;
const CHECKPOINTS: u64 = 9;
const CONSOLIDATE: u64 = 4;

/// A run of `CHECKPOINTS` random checkpoints in `dir`, from `seed`.
fn write_run(dir: &Path, seed: u64) -> Run {
    let mut w = RunWriter::create(dir, meta(MEM_PAGES))
        .unwrap()
        .with_consolidate_every(CONSOLIDATE);
    let mut rng = Rng(seed);
    let mut model = Model::new(MEM_PAGES);
    for n in 0..CHECKPOINTS {
        // Some overlays larger than a row group, too.
        let g = gen_checkpoint(&mut rng, n, MEM_PAGES, 3000);
        apply(&mut model, &g);
        write(&mut w, n, &g, None).unwrap();
    }
    drop(w);
    Run::open(dir).unwrap()
}

#[test]
fn partial_page_map_equals_the_whole_one_and_reads_less() {
    let tmp = tempfile::tempdir().unwrap();
    let run = write_run(&tmp.path().join("run"), 7);
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

/// `entries` (a sorted list looked up in one pass per table) answers as `entry` does one frame
/// at a time: on a fresh map, on one loaded in part by earlier asks, and for an unsorted list
/// or frames past guest memory.
#[test]
fn bulk_entries_equal_single_lookups() {
    let tmp = tempfile::tempdir().unwrap();
    let run = write_run(&tmp.path().join("run"), 11);
    for n in 0..CHECKPOINTS {
        let whole = run.page_map(n).unwrap();
        // Every third frame, a run of neighbours, and two frames past guest memory.
        let mut asked: Vec<u64> = (0..MEM_PAGES).step_by(3).collect();
        asked.extend(2100..2200);
        asked.extend([MEM_PAGES, MEM_PAGES + 5]);
        asked.sort_unstable();
        asked.dedup();
        let expected: Vec<_> = asked.iter().map(|&g| whole.entry(g)).collect();

        let fresh = run.partial_page_map(n).unwrap();
        assert_eq!(
            fresh.entries(&asked).unwrap(),
            expected,
            "checkpoint {n}, fresh"
        );

        // Some frames asked before, one at a time and as a load, so spans are in every
        // state: untouched, asked in part, read whole.
        let part = run.partial_page_map(n).unwrap();
        part.load(&[5, 6, 4000]).unwrap();
        part.entry(3001).unwrap();
        assert_eq!(
            part.entries(&asked).unwrap(),
            expected,
            "checkpoint {n}, in part"
        );
        assert_eq!(
            part.entries(&asked).unwrap(),
            expected,
            "checkpoint {n}, again"
        );

        let mut shuffled = asked.clone();
        shuffled.reverse();
        let mut expected_rev = expected.clone();
        expected_rev.reverse();
        let other = run.partial_page_map(n).unwrap();
        assert_eq!(
            other.entries(&shuffled).unwrap(),
            expected_rev,
            "checkpoint {n}, unsorted"
        );
        assert_eq!(other.entries(&[]).unwrap(), vec![]);
    }
}
