//! Page maps carry each page's content hash, and reads from pages.bin are checked against it:
//! a damaged pages.bin is an error naming it, the slot and the gfn, never wrong memory.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::*;
use simuboost_format::{
    layout, page_hash, FormatError, PageMap, Run, RunWriter, FORMAT_VERSION, PAGE_SIZE,
};

const MEM_PAGES: u64 = 80;
const CHECKPOINTS: u64 = 11;
/// Small, so the run has several consolidation points (0, 3, 6, 9) and overlays between them.
const CONSOLIDATE: u64 = 3;

/// Writes a run and returns it with the memory image at each checkpoint.
fn make_run(tmp: &Path) -> (PathBuf, Vec<Vec<u8>>) {
    let dir = tmp.join("run");
    let mut w = RunWriter::create(&dir, meta(MEM_PAGES))
        .unwrap()
        .with_consolidate_every(CONSOLIDATE);
    let mut rng = Rng(23);
    let mut model = Model::new(MEM_PAGES);
    let mut images = Vec::new();
    let mut writer_maps = Vec::new();
    for n in 0..CHECKPOINTS {
        let g = gen_checkpoint(&mut rng, n, MEM_PAGES, 30);
        apply(&mut model, &g);
        write(&mut w, n, &g, None).unwrap();
        images.push(model.image());
        writer_maps.push(w.page_map().clone());
    }
    // The reader's map (consolidated file + overlays) is the writer's, hashes included.
    let run = Run::open(&dir).unwrap();
    for (n, want) in writer_maps.iter().enumerate() {
        assert_eq!(&run.page_map(n as u64).unwrap(), want, "page_map({n})");
    }
    (dir, images)
}

fn page(image: &[u8], gfn: u64) -> &[u8] {
    &image[gfn as usize * PAGE_SIZE..][..PAGE_SIZE]
}

/// Slots, hashes and gfns of every non-zero page of `map`, in gfn order.
fn columns(map: &PageMap) -> (Vec<u64>, Vec<u128>, Vec<u64>) {
    let mut cols = (Vec::new(), Vec::new(), Vec::new());
    for (gfn, slot, hash) in map.entries() {
        cols.0.push(slot);
        cols.1.push(hash);
        cols.2.push(gfn);
    }
    cols
}

#[test]
fn page_map_carries_content_hashes_across_consolidations() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, images) = make_run(tmp.path());
    let run = Run::open(&dir).unwrap();
    let mut bases = Vec::new();
    for n in 0..CHECKPOINTS {
        bases.push(run.consolidation_base(n));
        let map = run.page_map(n).unwrap();
        let image = &images[n as usize];
        for gfn in 0..MEM_PAGES {
            let want = page(image, gfn);
            let zero = want.iter().all(|&b| b == 0);
            let want_hash = (!zero).then(|| page_hash(want));
            assert_eq!(map.hash(gfn), want_hash, "checkpoint {n} gfn {gfn}");
            assert_eq!(map.entry(gfn).map(|e| e.0), map.get(gfn));
            assert_eq!(map.entry(gfn).map(|e| e.1), want_hash);
        }
        assert_eq!(map.entries().count(), map.len());
        assert!(map.entries().map(|(g, s, _)| (g, s)).eq(map.iter()));
        assert_eq!(map.hash(MEM_PAGES), None);
    }
    // Both consolidated maps and overlays on top of them were exercised.
    assert_eq!(bases, [0, 0, 0, 3, 3, 3, 6, 6, 6, 9, 9]);
    assert!(layout::pagemap_table(&dir, 9).exists());
}

#[test]
fn verified_reads_accept_good_pages() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, images) = make_run(tmp.path());
    let run = Run::open(&dir).unwrap();
    let store = run.page_store().unwrap();
    for n in [0, 4, CHECKPOINTS - 1] {
        let map = run.page_map(n).unwrap();
        let (slots, hashes, gfns) = columns(&map);
        let mut out = vec![0u8; slots.len() * PAGE_SIZE];
        store
            .read_pages_verified(&slots, &hashes, &gfns, &mut out)
            .unwrap();
        for (i, &gfn) in gfns.iter().enumerate() {
            assert_eq!(
                &out[i * PAGE_SIZE..][..PAGE_SIZE],
                page(&images[n as usize], gfn)
            );
        }
        let mut one = vec![0u8; PAGE_SIZE];
        for (gfn, slot, hash) in map.entries() {
            store.read_page_verified(slot, hash, gfn, &mut one).unwrap();
            assert_eq!(one, page(&images[n as usize], gfn));
        }
    }
    // Nothing to read is fine.
    store.read_pages_verified(&[], &[], &[], &mut []).unwrap();
}

/// Flips one bit of one slot in pages.bin: every verified read of that slot fails naming
/// pages.bin, the slot and the gfn; other slots still read.
#[test]
fn flipped_byte_in_pages_bin_is_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = make_run(tmp.path());
    let run = Run::open(&dir).unwrap();
    let n = CHECKPOINTS - 1;
    let map = run.page_map(n).unwrap();
    let (slots, hashes, gfns) = columns(&map);
    // A page in the middle of the list, so the reads before it succeed.
    let k = slots.len() / 2;
    let (slot, gfn) = (slots[k], gfns[k]);
    // With dedup the slot may back an earlier gfn too; that one is reported first.
    let first_gfn = gfns[slots.iter().position(|&s| s == slot).unwrap()];

    let pages_path = layout::pages(&dir);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pages_path)
        .unwrap();
    let at = slot * PAGE_SIZE as u64 + 1234;
    let mut b = [0u8];
    file.read_exact_at(&mut b, at).unwrap();
    file.write_all_at(&[b[0] ^ 0x10], at).unwrap();

    let store = run.page_store().unwrap();
    let check = |e: FormatError, gfn: u64| {
        eprintln!("error: {e}");
        assert!(matches!(e, FormatError::Corrupt { .. }), "{e}");
        assert_eq!(e.path(), Some(pages_path.as_path()));
        let msg = e.to_string();
        assert!(msg.contains("pages.bin"), "{msg}");
        assert!(
            msg.contains(&format!("slot {slot} (gfn {gfn:#x})")),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("{:032x}", map.hash(gfn).unwrap())),
            "{msg}"
        );
    };

    let mut out = vec![0u8; slots.len() * PAGE_SIZE];
    let e = store
        .read_pages_verified(&slots, &hashes, &gfns, &mut out)
        .unwrap_err();
    check(e, first_gfn);

    let mut one = vec![0u8; PAGE_SIZE];
    let e = store
        .read_page_verified(slot, hashes[k], gfn, &mut one)
        .unwrap_err();
    check(e, gfn);
    // The unverified read still returns the damaged bytes: verification is the reader's choice.
    store.read_page(slot, &mut one).unwrap();
    assert_ne!(page_hash(&one), hashes[k]);

    // Pages in other slots are unaffected.
    let (s, h, g) = (slots[0], hashes[0], gfns[0]);
    if s != slot {
        store.read_page_verified(s, h, g, &mut one).unwrap();
    }

    // Whole-memory reconstruction verifies too.
    let mut mem = vec![0u8; MEM_PAGES as usize * PAGE_SIZE];
    let e = run.reconstruct_memory(n, &mut mem).unwrap_err();
    check(e, first_gfn);
}

#[test]
fn truncated_pages_bin_is_still_reported_as_truncated() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = make_run(tmp.path());
    let run = Run::open(&dir).unwrap();
    let map = run.page_map(CHECKPOINTS - 1).unwrap();
    let (slots, hashes, gfns) = columns(&map);
    let pages_path = layout::pages(&dir);
    // Cut into the middle of the highest slot the map uses.
    let cut = *slots.iter().max().unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&pages_path)
        .unwrap()
        .set_len(cut * PAGE_SIZE as u64 + 100)
        .unwrap();
    let store = run.page_store().unwrap();
    let check = |e: FormatError| {
        eprintln!("error: {e}");
        assert!(matches!(e, FormatError::Corrupt { .. }), "{e}");
        assert_eq!(e.path(), Some(pages_path.as_path()));
        assert!(e.to_string().contains("truncated"), "{e}");
    };
    let mut out = vec![0u8; slots.len() * PAGE_SIZE];
    check(
        store
            .read_pages_verified(&slots, &hashes, &gfns, &mut out)
            .unwrap_err(),
    );
    let k = slots.iter().position(|&s| s == cut).unwrap();
    let mut one = vec![0u8; PAGE_SIZE];
    check(
        store
            .read_page_verified(cut, hashes[k], gfns[k], &mut one)
            .unwrap_err(),
    );
}

/// Runs of earlier format versions are refused, not misread: version 1 (page maps without
/// hashes), version 2 (disk reads inline, which a version-3 reader would take for events
/// without data held by reference) and version 3 (access logs without the `vcpu` rows a sparse
/// restore now finds its system frames in).
#[test]
fn older_versions_are_refused() {
    assert_eq!(FORMAT_VERSION, 4);
    for old in [1u32, 2, 3] {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, _) = make_run(tmp.path());
        let path = layout::manifest(&dir);
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["format_version"], 4);
        v["format_version"] = old.into();
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        let e = Run::open(&dir).unwrap_err();
        match &e {
            FormatError::UnsupportedVersion {
                found, supported, ..
            } => assert_eq!((*found, *supported), (old, 4)),
            other => panic!("expected UnsupportedVersion, got {other:?}"),
        }
        assert_eq!(e.path(), Some(path.as_path()));
        assert!(
            e.to_string().contains(&format!(
                "format_version {old} is not supported (this build reads version 4)"
            )),
            "{e}"
        );
    }
}
