//! pages.bin: any file contents and any committed slot count, read by slot, by run and by slot
//! list, with and without hash verification. Every read must succeed exactly when its slots
//! are committed and in the file, return the file's bytes, and verify exactly when the hash
//! matches.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simuboost_format::{layout, page_hash, PAGE_SIZE};

#[derive(Debug)]
enum Hash {
    /// The hash of the page the file holds at the slot (if it holds one).
    Right,
    Given(u128),
}

#[derive(Debug)]
struct Read {
    slot: u64,
    /// Pages in the run read from `slot` (at most 255: the buffer is the caller's).
    pages: u8,
    hash: Hash,
}

/// The input: the manifest's committed slot count (u64 LE), a read count (u8), that many reads
/// (slot u64 LE, pages u8, a byte whose low bit says "the right hash", a u128 LE hash), then the
/// contents of pages.bin. Missing bytes read as zero.
struct Input {
    committed: u64,
    reads: Vec<Read>,
    file: Vec<u8>,
}

fn take<const N: usize>(data: &mut &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = N.min(data.len());
    out[..n].copy_from_slice(&data[..n]);
    *data = &data[n..];
    out
}

impl Input {
    fn parse(mut data: &[u8]) -> Input {
        let committed = u64::from_le_bytes(take(&mut data));
        let [count] = take(&mut data);
        let reads = (0..count)
            .map(|_| {
                let slot = u64::from_le_bytes(take(&mut data));
                let [pages] = take(&mut data);
                let [right] = take(&mut data);
                let given = u128::from_le_bytes(take(&mut data));
                let hash = if right & 1 == 1 {
                    Hash::Right
                } else {
                    Hash::Given(given)
                };
                Read { slot, pages, hash }
            })
            .collect();
        Input {
            committed,
            reads,
            file: data.to_vec(),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let input = Input::parse(data);
    let dir = simuboost_fuzz::scratch().join("store");
    simuboost_fuzz::put(&layout::pages(&dir), &input.file);
    let run = simuboost_fuzz::open_run("store", input.committed);
    let store = run.page_store().expect("pages.bin opens");
    let file_slots = input.file.len() as u64 / PAGE_SIZE as u64;
    assert_eq!(store.slots(), file_slots.min(input.committed));
    let readable = |slot: u64, pages: u64| {
        slot.checked_add(pages)
            .is_some_and(|end| end <= store.slots())
    };
    let page_at = |slot: u64| &input.file[slot as usize * PAGE_SIZE..][..PAGE_SIZE];

    for read in input.reads.iter() {
        let pages = u64::from(read.pages);
        let mut buf = vec![0u8; pages as usize * PAGE_SIZE];
        let result = store.read_run(read.slot, &mut buf);
        assert_eq!(
            result.is_ok(),
            readable(read.slot, pages),
            "read_run {read:?}: {result:?}"
        );
        if result.is_ok() {
            let start = read.slot as usize * PAGE_SIZE;
            assert!(
                buf == input.file[start..start + buf.len()],
                "read_run returned other bytes"
            );
        }

        let mut page = vec![0u8; PAGE_SIZE];
        let ok = readable(read.slot, 1);
        let hash = match read.hash {
            Hash::Right if ok => page_hash(page_at(read.slot)),
            Hash::Right => 0,
            Hash::Given(h) => h,
        };
        let result = store.read_page_verified(read.slot, hash, 0x1000, &mut page);
        let matches = ok && page_hash(page_at(read.slot)) == hash;
        assert_eq!(
            result.is_ok(),
            matches,
            "read_page_verified {read:?}: {result:?}"
        );
    }

    // The reads' first slots as one list (one pread per run of consecutive slots).
    let slots: Vec<u64> = input.reads.iter().map(|r| r.slot).collect();
    let hashes: Vec<u128> = slots
        .iter()
        .map(|&s| {
            if readable(s, 1) {
                page_hash(page_at(s))
            } else {
                0
            }
        })
        .collect();
    let gfns: Vec<u64> = (0..slots.len() as u64).collect();
    let mut out = vec![0u8; slots.len() * PAGE_SIZE];
    let result = store.read_pages_verified(&slots, &hashes, &gfns, &mut out);
    assert_eq!(
        result.is_ok(),
        slots.iter().all(|&s| readable(s, 1)),
        "read_pages_verified: {result:?}"
    );
    if result.is_ok() {
        for (i, &s) in slots.iter().enumerate() {
            assert!(out[i * PAGE_SIZE..][..PAGE_SIZE] == *page_at(s));
        }
    }
});
