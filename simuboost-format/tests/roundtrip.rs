//! Write a run against a model of guest memory, read everything back, compare.

mod common;

use common::*;
use simuboost_format::{
    layout, page_hash, Access, AccessKind, AccessSource, CheckpointInput, CheckpointPages,
    FormatError, Run, RunWriter, WorkingSet, PAGE_SIZE,
};

const MEM_PAGES: u64 = 96;
const CHECKPOINTS: u64 = 15;
const CONSOLIDATE: u64 = 4;

#[test]
fn round_trip_against_model() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut w = RunWriter::create(&dir, meta(MEM_PAGES))
        .unwrap()
        .with_consolidate_every(CONSOLIDATE);
    let mut rng = Rng(7);
    let mut model = Model::new(MEM_PAGES);
    let mut images = Vec::new();
    let mut gens = Vec::new();
    let mut expected_stats = Vec::new();
    // Access log of interval n-1 at index n; every third interval has none.
    let mut accesses = Vec::new();

    for n in 0..CHECKPOINTS {
        let g = gen_checkpoint(&mut rng, n, MEM_PAGES, 40);
        let want = apply(&mut model, &g);
        let image = model.image();
        let dump = (n == 5).then_some(image.as_slice());
        let access = (n > 0 && n % 3 != 0).then(|| access_of(n, &g, MEM_PAGES));
        let stats = write_with(&mut w, n, &g, access.as_deref(), dump).unwrap();
        accesses.push(access);
        assert_eq!(
            (stats.stored_pages, stats.zero_pages, stats.dedup_pages),
            (want.stored_pages, want.zero_pages, want.dedup_pages),
            "stats of checkpoint {n}"
        );
        assert!(stats.bytes_written >= stats.stored_pages * PAGE_SIZE as u64);
        assert_eq!(w.checkpoints(), n + 1);
        images.push(image);
        gens.push(g);
        expected_stats.push(stats);
    }
    // The generator must actually have produced the cases under test.
    let total = expected_stats.iter().fold((0, 0, 0), |a, s| {
        (
            a.0 + s.stored_pages,
            a.1 + s.zero_pages,
            a.2 + s.dedup_pages,
        )
    });
    assert!(total.0 > 0 && total.1 > 0 && total.2 > 0, "{total:?}");
    w.finish(Some(3), "guest exit").unwrap();

    let run = Run::open(&dir).unwrap();
    let m = run.manifest();
    assert_eq!(m.checkpoints, CHECKPOINTS);
    assert_eq!(m.consolidate_every, CONSOLIDATE);
    assert!(m.finished);
    assert_eq!(m.exit_status, Some(3));
    assert_eq!(m.stop_reason.as_deref(), Some("guest exit"));
    assert_eq!(m.meta, meta(MEM_PAGES));
    // pages.bin holds the checkpoints' new pages and the events' (disk reads): the zero and
    // repeated pages among the latter cost no slot.
    assert_eq!(
        m.page_slots,
        expected_stats
            .iter()
            .map(|s| s.stored_pages + s.event_stored_pages)
            .sum::<u64>()
    );
    let event_pages: u64 = expected_stats.iter().map(|s| s.event_pages).sum();
    let event_stored: u64 = expected_stats.iter().map(|s| s.event_stored_pages).sum();
    assert!(
        event_stored > 0 && event_stored < event_pages,
        "{event_stored} of {event_pages} event pages stored"
    );

    let store = run.page_store().unwrap();
    assert_eq!(store.slots(), m.page_slots);
    let mut out = vec![0xaau8; (MEM_PAGES as usize) * PAGE_SIZE];
    let mut page = vec![0u8; PAGE_SIZE];
    for n in 0..CHECKPOINTS {
        // Memory.
        run.reconstruct_memory(n, &mut out).unwrap();
        assert!(out == images[n as usize], "memory of checkpoint {n}");

        // Page map: exactly the non-zero pages, each slot holding the right contents.
        let map = run.page_map(n).unwrap();
        let image = &images[n as usize];
        let nonzero = image
            .chunks_exact(PAGE_SIZE)
            .filter(|p| p.iter().any(|&b| b != 0))
            .count();
        assert_eq!(map.len(), nonzero, "page_map({n}).len()");
        for gfn in 0..MEM_PAGES {
            let want = &image[gfn as usize * PAGE_SIZE..][..PAGE_SIZE];
            match map.get(gfn) {
                Some(slot) => {
                    store.read_page(slot, &mut page).unwrap();
                    assert_eq!(page, want, "checkpoint {n} gfn {gfn}");
                }
                None => assert!(want.iter().all(|&b| b == 0), "checkpoint {n} gfn {gfn}"),
            }
        }
        assert_eq!(map.iter().count(), nonzero);

        // Page table: the dirty set, zero pages as NULL (elided at checkpoint 0).
        let rows = run.checkpoint_pages(n).unwrap();
        let g = &gens[n as usize];
        let expect: Vec<(u64, bool, Option<u128>)> = g
            .gfns
            .iter()
            .zip(&g.ids)
            .filter(|(_, &id)| n > 0 || id != 0)
            .map(|(&gfn, &id)| (gfn, id != 0, (id != 0).then(|| page_hash(&page_of(id)))))
            .collect();
        let got: Vec<(u64, bool, Option<u128>)> = rows
            .iter()
            .map(|r| (r.gfn, r.slot.is_some(), r.hash))
            .collect();
        assert_eq!(got, expect, "page table of checkpoint {n}");

        // State.
        assert_eq!(run.state(n).unwrap(), state_of(n));

        // Dumps.
        let dump = run.dump(n).unwrap();
        assert_eq!(dump.as_ref(), (n == 5).then(|| &images[5]));
    }

    // Intervals and events.
    let intervals = run.intervals().unwrap();
    assert_eq!(intervals.len() as u64, CHECKPOINTS - 1);
    for (i, rec) in intervals.iter().enumerate() {
        let s = expected_stats[i + 1];
        let mut want = interval_of(i as u64);
        want.stored_pages = s.stored_pages;
        want.zero_pages = s.zero_pages;
        want.dedup_pages = s.dedup_pages;
        want.bytes_written = s.bytes_written;
        want.event_pages = s.event_pages;
        want.event_stored_pages = s.event_stored_pages;
        let access = &accesses[i + 1];
        want.traced_frames = access.as_ref().map_or(0, |a| a.len() as u64);
        assert_eq!(rec, &want);
        assert_eq!(run.interval(i as u64).unwrap(), want);
        assert_eq!(read_events(&run, i as u64), events_of(i as u64));
        assert_eq!(&run.access(i as u64).unwrap(), access, "access log {i}");
        // A restore's read: the frames, each with its page map entry at the interval's
        // start (checkpoint i).
        let map = run.page_map(i as u64).unwrap();
        assert_eq!(
            run.working_set(i as u64).unwrap(),
            access.as_ref().map(|a| WorkingSet {
                frames: a.iter().map(|a| a.gfn).collect(),
                start_pages: Some(a.iter().map(|a| map.entry(a.gfn)).collect()),
            }),
            "working set {i}"
        );
        assert_eq!(
            layout::access_table(&dir, i as u64).exists(),
            access.is_some()
        );
    }
    // The generated logs cover every kind, source and the interval flags.
    let all: Vec<&Access> = accesses.iter().flatten().flatten().collect();
    for (kind, source) in [
        (AccessKind::Read, AccessSource::Mmu),
        (AccessKind::Read, AccessSource::Dma),
        (AccessKind::Read, AccessSource::Vcpu),
        (AccessKind::Write, AccessSource::Mmu),
        (AccessKind::Write, AccessSource::Dma),
    ] {
        assert!(
            all.iter().any(|a| a.kind == kind && a.source == source),
            "{kind:?} {source:?}"
        );
    }
    assert!(intervals.iter().any(|r| !r.complete && r.trace_drops > 0));
    assert!(intervals.iter().any(|r| r.complete && r.trace_drops == 0));
    assert!(matches!(
        run.access(CHECKPOINTS - 1),
        Err(FormatError::IntervalOutOfRange { .. })
    ));

    // Only consolidation points have page maps.
    for n in 0..CHECKPOINTS {
        assert_eq!(
            layout::pagemap_table(&dir, n).exists(),
            n % CONSOLIDATE == 0,
            "pagemap {n}"
        );
    }
    assert!(matches!(
        run.state(CHECKPOINTS),
        Err(FormatError::CheckpointOutOfRange {
            requested: CHECKPOINTS,
            available: CHECKPOINTS
        })
    ));
    assert!(matches!(
        run.events(CHECKPOINTS - 1),
        Err(FormatError::IntervalOutOfRange { .. })
    ));
}

#[test]
fn invalid_input_is_rejected_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut w = RunWriter::create(&dir, meta(8)).unwrap();
    let g = Gen {
        gfns: vec![1, 2],
        ids: vec![5, 6],
        contents: [page_of(5), page_of(6)].concat(),
    };
    let state = state_of(0);
    let contents = g.contents.clone();

    let try_write = |w: &mut RunWriter, gfns: &[u64], contents: &[u8], n: u64| {
        let mut s = state.clone();
        s.checkpoint = n;
        w.write_checkpoint(CheckpointInput::new(&s, CheckpointPages { gfns, contents }))
    };
    let err = |r: Result<_, FormatError>| match r {
        Err(FormatError::InvalidInput { what }) => what,
        other => panic!("expected InvalidInput, got {other:?}"),
    };
    assert!(err(try_write(&mut w, &[1, 2], &contents, 1)).contains("next checkpoint is 0"));
    assert!(err(try_write(&mut w, &[2, 1], &contents, 0)).contains("ascending"));
    assert!(err(try_write(&mut w, &[1, 1], &contents, 0)).contains("ascending"));
    assert!(err(try_write(&mut w, &[1, 8], &contents, 0)).contains("beyond guest memory"));
    assert!(err(try_write(&mut w, &[1], &contents, 0)).contains("bytes of contents"));
    // Checkpoint 1 without its interval record.
    write(&mut w, 0, &g, None).unwrap();
    let mut s1 = state_of(1);
    s1.checkpoint = 1;
    let r = w.write_checkpoint(CheckpointInput::new(
        &s1,
        CheckpointPages {
            gfns: &[],
            contents: &[],
        },
    ));
    assert!(err(r).contains("missing the IntervalRecord"));
    // An interval whose exits do not match the checkpoints.
    let mut rec = interval_of(0);
    rec.end_exit += 1;
    let r = w.write_checkpoint(CheckpointInput {
        interval: Some(rec),
        ..CheckpointInput::new(
            &s1,
            CheckpointPages {
                gfns: &[],
                contents: &[],
            },
        )
    });
    assert!(err(r).contains("spans exits"));
    // Tracer drops in an interval marked complete.
    let mut rec = interval_of(0);
    rec.trace_drops = 1;
    rec.complete = true;
    let r = w.write_checkpoint(CheckpointInput {
        interval: Some(rec),
        ..CheckpointInput::new(
            &s1,
            CheckpointPages {
                gfns: &[],
                contents: &[],
            },
        )
    });
    assert!(err(r).contains("tracer dropped 1 events"));
    // Access logs that break the rules. Checkpoint 1 writes gfns 3 and 5.
    let dirty = [3u64, 5];
    let contents = [page_of(7), page_of(8)].concat();
    let a = |gfn, kind, first_touch| Access {
        gfn,
        kind,
        source: AccessSource::Mmu,
        first_touch,
    };
    use AccessKind::{Read, Write};
    let good = vec![a(5, Write, 0), a(0, Read, 1), a(3, Write, 2)];
    for (access, msg) in [
        (
            vec![a(5, Write, 0), a(0, Read, 2), a(3, Write, 1)],
            "first-touch order",
        ),
        (
            vec![a(5, Write, 0), a(5, Write, 1), a(3, Write, 2)],
            "appears twice",
        ),
        (
            vec![a(5, Write, 0), a(8, Read, 1), a(3, Write, 2)],
            "beyond guest memory",
        ),
        (
            vec![a(5, Write, 0), a(0, Write, 1), a(3, Write, 2)],
            "is a write but not",
        ),
        (vec![a(5, Write, 0), a(3, Read, 1)], "is a read but"),
        (vec![a(5, Write, 0), a(0, Read, 1)], "e.g. gfn 0x3"),
    ] {
        let r = w.write_checkpoint(CheckpointInput {
            interval: Some(interval_of(0)),
            events: &events_of(0),
            access: Some(&access),
            ..CheckpointInput::new(
                &s1,
                CheckpointPages {
                    gfns: &dirty,
                    contents: &contents,
                },
            )
        });
        let what = err(r);
        assert!(what.contains(msg), "{msg}: {what}");
        assert!(what.contains("access log of interval 0"), "{what}");
    }
    // No access log before checkpoint 0.
    let mut w0 = RunWriter::create(&tmp.path().join("w0"), meta(8)).unwrap();
    let r = w0.write_checkpoint(CheckpointInput {
        access: Some(&[]),
        ..CheckpointInput::new(
            &state,
            CheckpointPages {
                gfns: &[],
                contents: &[],
            },
        )
    });
    assert!(err(r).contains("checkpoint 0 has no interval"));
    assert_eq!(w.checkpoints(), 1);
    assert!(!layout::access_table(&dir, 0).exists());
    // The valid log is accepted.
    w.write_checkpoint(CheckpointInput {
        interval: Some(interval_of(0)),
        events: &events_of(0),
        access: Some(&good),
        ..CheckpointInput::new(
            &s1,
            CheckpointPages {
                gfns: &dirty,
                contents: &contents,
            },
        )
    })
    .unwrap();
    assert_eq!(Run::open(&dir).unwrap().access(0).unwrap(), Some(good));
    assert!(RunWriter::create(&dir, meta(8))
        .is_err_and(|e| matches!(e, FormatError::DirNotEmpty { .. })));
    assert!(RunWriter::create(&tmp.path().join("x"), meta(0)).is_err());
}

/// A checkpoint whose files cannot all be written leaves the manifest alone, and the writer can
/// retry it once the obstacle is gone.
#[test]
fn failed_checkpoint_is_invisible_and_retryable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut w = RunWriter::create(&dir, meta(32)).unwrap();
    let mut rng = Rng(99);
    let mut model = Model::new(32);
    let g0 = gen_checkpoint(&mut rng, 0, 32, 10);
    apply(&mut model, &g0);
    write(&mut w, 0, &g0, None).unwrap();
    let image0 = model.image();

    let g1 = gen_checkpoint(&mut rng, 1, 32, 20);
    // Block the state file's temporary name with a directory: creating it fails.
    let state1 = layout::state_table(&dir, 1);
    let blocker = state1.with_file_name(".ckpt-000001.parquet.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let e = write(&mut w, 1, &g1, None).unwrap_err();
    assert!(matches!(e, FormatError::Io { .. }), "{e}");
    assert!(e.to_string().contains("ckpt-000001.parquet"), "{e}");
    assert_eq!(w.checkpoints(), 1);
    let run = Run::open(&dir).unwrap();
    assert_eq!(run.checkpoints(), 1);
    // The partial checkpoint's files were cleaned up, pages.bin cut back.
    assert!(!layout::checkpoint_table(&dir, 1).exists());
    assert_eq!(
        std::fs::metadata(layout::pages(&dir)).unwrap().len(),
        run.manifest().page_slots * PAGE_SIZE as u64
    );
    let mut out = vec![0u8; 32 * PAGE_SIZE];
    run.reconstruct_memory(0, &mut out).unwrap();
    assert!(out == image0);

    std::fs::remove_dir(&blocker).unwrap();
    let want = apply(&mut model, &g1);
    let stats = write(&mut w, 1, &g1, None).unwrap();
    assert_eq!(
        (stats.stored_pages, stats.zero_pages, stats.dedup_pages),
        (want.stored_pages, want.zero_pages, want.dedup_pages)
    );
    let run = Run::open(&dir).unwrap();
    run.reconstruct_memory(1, &mut out).unwrap();
    assert!(out == model.image());
    run.reconstruct_memory(0, &mut out).unwrap();
    assert!(out == image0);
}

/// A checkpoint that fails after its access log was renamed into place removes it again; the
/// retry writes it.
#[test]
fn failed_checkpoint_removes_its_access_log() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut w = RunWriter::create(&dir, meta(32)).unwrap();
    let mut rng = Rng(5);
    let g0 = gen_checkpoint(&mut rng, 0, 32, 10);
    write(&mut w, 0, &g0, None).unwrap();
    let g1 = gen_checkpoint(&mut rng, 1, 32, 20);
    let access = access_of(1, &g1, 32);
    // The intervals file is written after the access log: block its temporary name.
    let blocker = layout::interval_table(&dir, 0).with_file_name(".interval-000000.parquet.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let e = write_with(&mut w, 1, &g1, Some(&access), None).unwrap_err();
    assert!(e.to_string().contains("interval-000000.parquet"), "{e}");
    assert!(!layout::access_table(&dir, 0).exists());
    assert!(!layout::events_table(&dir, 0).exists());
    assert_eq!(Run::open(&dir).unwrap().checkpoints(), 1);

    std::fs::remove_dir(&blocker).unwrap();
    write_with(&mut w, 1, &g1, Some(&access), None).unwrap();
    let run = Run::open(&dir).unwrap();
    assert_eq!(run.access(0).unwrap(), Some(access.clone()));
    assert_eq!(run.interval(0).unwrap().traced_frames, access.len() as u64);
}

#[test]
fn empty_checkpoints_and_empty_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut w = RunWriter::create(&dir, meta(4)).unwrap();
    let empty = Gen {
        gfns: vec![],
        ids: vec![],
        contents: vec![],
    };
    for n in 0..3 {
        let s = write(&mut w, n, &empty, None).unwrap();
        assert_eq!(s.stored_pages + s.zero_pages + s.dedup_pages, 0);
    }
    let run = Run::open(&dir).unwrap();
    let mut out = vec![1u8; 4 * PAGE_SIZE];
    run.reconstruct_memory(2, &mut out).unwrap();
    assert!(out.iter().all(|&b| b == 0));
    assert!(run.page_map(2).unwrap().is_empty());
    assert!(run.checkpoint_pages(1).unwrap().is_empty());
    assert_eq!(read_events(&run, 0), events_of(0));
    assert_eq!(run.access(0).unwrap(), None);
    assert_eq!(run.interval(0).unwrap().traced_frames, 0);

    // An empty access log is a zero-row file, distinct from none.
    let dir = tmp.path().join("run2");
    let mut w = RunWriter::create(&dir, meta(4)).unwrap();
    write(&mut w, 0, &empty, None).unwrap();
    write_with(&mut w, 1, &empty, Some(&[]), None).unwrap();
    assert_eq!(Run::open(&dir).unwrap().access(0).unwrap(), Some(vec![]));
    assert_eq!(
        Run::open(&dir).unwrap().working_set(0).unwrap(),
        Some(WorkingSet {
            frames: vec![],
            start_pages: Some(vec![]),
        })
    );
}

/// The recorder drives the writer from a background thread; replay may share readers.
#[test]
fn thread_safety() {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}
    send::<RunWriter>();
    send_sync::<Run>();
    send_sync::<simuboost_format::PageStore>();
    send_sync::<simuboost_format::PageMap>();
    send_sync::<FormatError>();
}
