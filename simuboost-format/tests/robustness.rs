//! The manifest's authority, and damaged runs: every problem is an error naming the file.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use simuboost_format::{
    layout, CpuidEntry, FormatError, Run, RunWriter, FORMAT_VERSION, MAX_CPUID_ENTRIES, PAGE_SIZE,
};

const MEM_PAGES: u64 = 48;

/// Writes `checkpoints` checkpoints (consolidating every 2) and returns the run directory.
fn make_run(tmp: &Path, checkpoints: u64) -> (PathBuf, Vec<Vec<u8>>) {
    let dir = tmp.join("run");
    let mut w = RunWriter::create(&dir, meta(MEM_PAGES))
        .unwrap()
        .with_consolidate_every(2);
    let mut rng = Rng(3);
    let mut model = Model::new(MEM_PAGES);
    let mut images = Vec::new();
    for n in 0..checkpoints {
        let g = gen_checkpoint(&mut rng, n, MEM_PAGES, 16);
        apply(&mut model, &g);
        let access = (n > 0).then(|| access_of(n, &g, MEM_PAGES));
        write_with(&mut w, n, &g, access.as_deref(), None).unwrap();
        images.push(model.image());
    }
    (dir, images)
}

fn edit_manifest(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = layout::manifest(dir);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
}

fn names(e: &FormatError, file: &str) -> bool {
    // Printed so `--nocapture` shows what a user would read.
    eprintln!("error: {e}");
    e.path()
        .is_some_and(|p| p.to_string_lossy().ends_with(file))
        && e.to_string().contains(file)
}

#[test]
fn unknown_format_version_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = make_run(tmp.path(), 1);
    edit_manifest(&dir, |v| {
        v["format_version"] = 99.into();
        // A future version may change anything else too.
        v["checkpoints"] = "many".into();
    });
    let e = Run::open(&dir).unwrap_err();
    match &e {
        FormatError::UnsupportedVersion {
            found, supported, ..
        } => {
            assert_eq!((*found, *supported), (99, FORMAT_VERSION));
        }
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
    assert!(names(&e, "manifest.json"), "{e}");
    assert!(e.to_string().contains("format_version 99"), "{e}");
}

/// `meta.cpuid` round-trips, is optional (runs recorded before it have none), and is bounded.
#[test]
fn manifest_cpuid_is_kept_optional_and_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = make_run(tmp.path(), 1);
    assert!(Run::open(&dir).unwrap().manifest().meta.cpuid.is_empty());
    let leaf = CpuidEntry {
        function: 1,
        index: 0,
        flags: 0,
        eax: 0x00a0_0f11,
        ebx: 2,
        ecx: 0x7ed8_320b,
        edx: 0x178b_fbff,
    };
    edit_manifest(&dir, |v| {
        v["meta"]["cpuid"] = serde_json::to_value(vec![leaf]).unwrap();
    });
    assert_eq!(Run::open(&dir).unwrap().manifest().meta.cpuid, vec![leaf]);

    edit_manifest(&dir, |v| {
        v["meta"]["cpuid"] = serde_json::to_value(vec![leaf; MAX_CPUID_ENTRIES + 1]).unwrap();
    });
    let e = Run::open(&dir).unwrap_err();
    assert!(matches!(e, FormatError::Corrupt { .. }), "{e}");
    assert!(names(&e, "manifest.json"), "{e}");
    assert!(e.to_string().contains("meta.cpuid lists 257 leaves"), "{e}");

    edit_manifest(&dir, |v| v["meta"]["cpuid"] = "all of them".into());
    let e = Run::open(&dir).unwrap_err();
    assert!(matches!(e, FormatError::Corrupt { .. }), "{e}");
}

#[test]
fn not_a_run() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    assert!(matches!(
        Run::open(&missing),
        Err(FormatError::NotARun { .. })
    ));
    std::fs::create_dir(&missing).unwrap();
    let e = Run::open(&missing).unwrap_err();
    assert!(matches!(e, FormatError::NotARun { .. }));
    assert!(e.to_string().contains("nope"), "{e}");

    std::fs::write(missing.join("manifest.json"), b"{ not json").unwrap();
    let e = Run::open(&missing).unwrap_err();
    assert!(matches!(e, FormatError::Corrupt { .. }), "{e}");
    assert!(names(&e, "manifest.json"), "{e}");
}

/// A crash after a checkpoint's files were renamed into place but before the manifest said so:
/// readers see only what the manifest counts.
#[test]
fn stray_files_of_incomplete_checkpoint_are_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, images) = make_run(tmp.path(), 4);
    // Roll the manifest back to "3 complete": checkpoint 3's files and pages are now strays.
    let slots_after_2 = {
        // Slots of checkpoints 0..=2 = max slot referenced by them + 1.
        let run = Run::open(&dir).unwrap();
        (0..3)
            .flat_map(|n| run.checkpoint_pages(n).unwrap())
            .filter_map(|row| row.slot)
            .max()
            .map_or(0, |s| s + 1)
    };
    edit_manifest(&dir, |v| {
        v["checkpoints"] = 3.into();
        v["page_slots"] = slots_after_2.into();
    });
    assert!(layout::state_table(&dir, 3).exists());
    let run = Run::open(&dir).unwrap();
    assert_eq!(run.checkpoints(), 3);
    assert_eq!(run.intervals().unwrap().len(), 2);
    assert!(matches!(
        run.state(3),
        Err(FormatError::CheckpointOutOfRange {
            requested: 3,
            available: 3
        })
    ));
    assert!(matches!(
        run.events(2),
        Err(FormatError::IntervalOutOfRange {
            requested: 2,
            available: 2
        })
    ));
    assert_eq!(run.page_store().unwrap().slots(), slots_after_2);
    let mut out = vec![0u8; MEM_PAGES as usize * PAGE_SIZE];
    for n in 0..3 {
        run.reconstruct_memory(n, &mut out).unwrap();
        assert!(out == images[n as usize]);
    }
}

#[test]
fn truncated_pages_bin_is_corrupt_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = make_run(tmp.path(), 3);
    let pages = layout::pages(&dir);
    let len = std::fs::metadata(&pages).unwrap().len();
    // Cut into the middle of the last page.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&pages)
        .unwrap()
        .set_len(len - PAGE_SIZE as u64 - 100)
        .unwrap();
    let run = Run::open(&dir).unwrap();
    let mut out = vec![0u8; MEM_PAGES as usize * PAGE_SIZE];
    let e = run.reconstruct_memory(2, &mut out).unwrap_err();
    assert!(matches!(e, FormatError::Corrupt { .. }), "{e}");
    assert!(names(&e, "pages.bin"), "{e}");
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[test]
fn garbage_and_truncated_parquet_are_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = make_run(tmp.path(), 3);
    let run = Run::open(&dir).unwrap();

    // Garbage events file.
    let events = layout::events_table(&dir, 0);
    let mut rng = Rng(5);
    let garbage: Vec<u8> = (0..5000).map(|_| rng.next() as u8).collect();
    std::fs::write(&events, &garbage).unwrap();
    let e = run.events(0).unwrap_err();
    assert!(names(&e, "interval-000000.parquet"), "{e}");

    // Garbage that ends in a valid-looking Parquet trailer (footer length + PAR1).
    let mut fake = garbage.clone();
    fake.extend_from_slice(&100u32.to_le_bytes());
    fake.extend_from_slice(b"PAR1");
    std::fs::write(&events, &fake).unwrap();
    let e = run.events(0).unwrap_err();
    assert!(names(&e, "interval-000000.parquet"), "{e}");

    // Truncated state file.
    let state = layout::state_table(&dir, 1);
    let bytes = std::fs::read(&state).unwrap();
    for cut in [0, 4, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&state, &bytes[..cut]).unwrap();
        let e = run.state(1).unwrap_err();
        assert!(names(&e, "ckpt-000001.parquet"), "cut {cut}: {e}");
    }

    // A valid Parquet file of the wrong table in the state's place.
    std::fs::copy(layout::interval_table(&dir, 0), &state).unwrap();
    let e = run.state(1).unwrap_err();
    assert!(matches!(e, FormatError::Corrupt { .. }), "{e}");
    assert!(names(&e, "ckpt-000001.parquet"), "{e}");

    // A page table moved to another checkpoint's name.
    std::fs::copy(
        layout::checkpoint_table(&dir, 1),
        layout::checkpoint_table(&dir, 2),
    )
    .unwrap();
    let e = run.checkpoint_pages(2).unwrap_err();
    assert!(e.to_string().contains("misplaced"), "{e}");

    // A missing file the manifest promises.
    std::fs::remove_file(layout::interval_table(&dir, 1)).unwrap();
    let e = run.interval(1).unwrap_err();
    assert!(names(&e, "interval-000001.parquet"), "{e}");
}

#[test]
fn damaged_access_log_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = make_run(tmp.path(), 3);
    let run = Run::open(&dir).unwrap();
    let path = layout::access_table(&dir, 1);
    let good = std::fs::read(&path).unwrap();
    assert!(run.access(1).unwrap().is_some_and(|a| !a.is_empty()));

    for cut in [0, 4, good.len() / 2, good.len() - 1] {
        std::fs::write(&path, &good[..cut]).unwrap();
        for e in [run.access(1).unwrap_err(), run.working_set(1).unwrap_err()] {
            assert!(
                names(&e, "access/interval-000001.parquet"),
                "cut {cut}: {e}"
            );
        }
    }

    // Another interval's log under this name.
    std::fs::copy(layout::access_table(&dir, 0), &path).unwrap();
    for e in [run.access(1).unwrap_err(), run.working_set(1).unwrap_err()] {
        assert!(e.to_string().contains("misplaced"), "{e}");
        assert!(names(&e, "access/interval-000001.parquet"), "{e}");
    }

    // A valid Parquet file of another table.
    std::fs::copy(layout::interval_table(&dir, 1), &path).unwrap();
    for e in [run.access(1).unwrap_err(), run.working_set(1).unwrap_err()] {
        assert!(matches!(e, FormatError::Corrupt { .. }), "{e}");
        assert!(names(&e, "access/interval-000001.parquet"), "{e}");
    }

    // Guest memory shrunk under the log: its gfns no longer fit.
    std::fs::write(&path, &good).unwrap();
    edit_manifest(&dir, |v| {
        v["meta"]["mem_bytes"] = (2 * PAGE_SIZE as u64).into()
    });
    let run = Run::open(&dir).unwrap();
    for e in [run.access(1).unwrap_err(), run.working_set(1).unwrap_err()] {
        // A log with more rows than the smaller memory has pages is refused from its footer.
        assert!(
            e.to_string().contains("beyond guest memory") || e.to_string().contains("at most 2"),
            "{e}"
        );
        assert!(names(&e, "access/interval-000001.parquet"), "{e}");
    }
}

/// An access log's start pages are checked as a page table's: a slot the manifest does not
/// commit is reported, naming the log.
#[test]
fn access_log_start_slots_past_the_committed_ones_are_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = make_run(tmp.path(), 3);
    let run = Run::open(&dir).unwrap();
    let set = run.working_set(1).unwrap().unwrap();
    let highest = set
        .start_pages
        .unwrap()
        .iter()
        .flatten()
        .map(|&(slot, _)| slot)
        .max()
        .expect("the log has a non-zero start page");
    edit_manifest(&dir, |v| v["page_slots"] = highest.into());
    let run = Run::open(&dir).unwrap();
    for e in [run.working_set(1).unwrap_err(), run.access(1).unwrap_err()] {
        assert!(e.to_string().contains(&format!("slot {highest}")), "{e}");
        assert!(names(&e, "access/interval-000001.parquet"), "{e}");
    }
}

/// Slots beyond what the manifest commits and gfns beyond guest memory are reported, never
/// used to index memory.
#[test]
fn out_of_range_slots_and_gfns_are_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = make_run(tmp.path(), 2);
    edit_manifest(&dir, |v| v["page_slots"] = 1.into());
    let run = Run::open(&dir).unwrap();
    let e = run.page_map(1).unwrap_err();
    assert!(
        e.to_string().contains("past the 1 slots of pages.bin"),
        "{e}"
    );
    assert!(names(&e, "ckpt-000000.parquet"), "{e}");

    let (dir2, _) = {
        let t2 = tmp.path().join("b");
        std::fs::create_dir(&t2).unwrap();
        make_run(&t2, 2)
    };
    // Shrink guest memory: the recorded gfns no longer fit.
    edit_manifest(&dir2, |v| {
        v["meta"]["mem_bytes"] = (PAGE_SIZE as u64).into()
    });
    let run = Run::open(&dir2).unwrap();
    let e = run.page_map(0).unwrap_err();
    // A map with more rows than the one-page memory is refused from its footer.
    assert!(
        e.to_string().contains("beyond guest memory") || e.to_string().contains("at most 1"),
        "{e}"
    );
    let mut out = vec![0u8; 7];
    assert!(matches!(
        run.reconstruct_memory(0, &mut out),
        Err(FormatError::InvalidInput { .. })
    ));
}

/// Random byte damage to Parquet files yields errors (or, where the damage hits only values,
/// other values), never a panic that escapes or an out-of-bounds memory access.
#[test]
fn random_damage_never_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = make_run(tmp.path(), 3);
    let run = Run::open(&dir).unwrap();
    let mut rng = Rng(17);
    let mut out = vec![0u8; MEM_PAGES as usize * PAGE_SIZE];
    let files = [
        layout::checkpoint_table(&dir, 1),
        layout::pagemap_table(&dir, 2),
        layout::state_table(&dir, 2),
        layout::events_table(&dir, 1),
        layout::interval_table(&dir, 1),
        layout::access_table(&dir, 1),
    ];
    let mut errors = 0;
    for file in &files {
        let original = std::fs::read(file).unwrap();
        for _ in 0..25 {
            let mut bytes = original.clone();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(bytes.len() as u64) as usize;
                bytes[i] ^= 1 << rng.below(8);
            }
            std::fs::write(file, &bytes).unwrap();
            let results = [
                run.checkpoint_pages(1).err(),
                run.reconstruct_memory(2, &mut out).err(),
                run.state(2).err(),
                run.events(1).err(),
                run.interval(1).err(),
                run.access(1).err(),
            ];
            for e in results.into_iter().flatten() {
                errors += 1;
                assert!(e.path().is_some(), "{e}");
            }
        }
        std::fs::write(file, &original).unwrap();
    }
    eprintln!("{errors} errors from 150 damaged files");
    assert!(errors > 0);
}
