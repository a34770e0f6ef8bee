//! Throughput figures of the format on this machine:
//! `cargo run --release -p simuboost-format --example format_bench [MEM_MIB] [DIR]`.
//!
//! Writes checkpoint 0 of a guest of MEM_MIB (default 4096) with 60 % unique, 20 % duplicate and
//! 20 % zero pages, then 20 checkpoints of 2 % dirty pages, and times the writer, page-map
//! builds (consolidated and with 15 overlays), lookups and full memory reconstruction.

use std::path::PathBuf;
use std::time::Instant;

use simuboost_format::{
    page_hash, CheckpointInput, CheckpointPages, CheckpointState, IntervalRecord, Run, RunMeta,
    RunWriter, PAGE_SIZE,
};

fn rng(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `page` according to a class drawn from `r`: zero, one of 64 shared contents, or unique.
fn fill(page: &mut [u8], r: &mut u64) {
    let class = rng(r) % 10;
    let seed = match class {
        0 | 1 => {
            page.fill(0);
            return;
        }
        2 | 3 => rng(r) % 64 + 1,
        _ => rng(r) | 1 << 63,
    };
    // Only the first 64 bytes vary: generation stays cheap and hashing still sees 4 KiB.
    page.fill(0x5a);
    let mut s = seed;
    for chunk in page[..64].chunks_exact_mut(8) {
        chunk.copy_from_slice(&rng(&mut s).to_le_bytes());
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let mem_mib: u64 = args.get(1).map_or(Ok(4096), |s| s.parse())?;
    let dir = args.get(2).map_or_else(
        || std::env::temp_dir().join("simuboost-format-bench"),
        PathBuf::from,
    );
    let _ = std::fs::remove_dir_all(&dir);
    let mem_pages = mem_mib * 256;
    let meta = RunMeta {
        workload: "bench".into(),
        mem_bytes: mem_pages * PAGE_SIZE as u64,
        seed: 0,
        interval_ns: 100_000_000,
        dirty_tracking: "synthetic".into(),
        tracer: "none".into(),
        created_unix_ms: 0,
        guest_image_xxh3: String::new(),
        disk_image: None,
        cpuid: Vec::new(),
    };

    let mut r = 1u64;
    let mut memory = vec![0u8; mem_pages as usize * PAGE_SIZE];
    for page in memory.chunks_exact_mut(PAGE_SIZE) {
        fill(page, &mut r);
    }

    let t = Instant::now();
    let mut h = 0u128;
    for page in memory.chunks_exact(PAGE_SIZE) {
        h ^= page_hash(page);
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "hash (xxh3-128): {:.0} MiB/s ({h:x})",
        mem_mib as f64 / secs
    );

    let mut w = RunWriter::create(&dir, meta)?;
    let gfns: Vec<u64> = (0..mem_pages).collect();
    let state = |n: u64| CheckpointState {
        checkpoint: n,
        exit: n * 10,
        ..Default::default()
    };
    let t = Instant::now();
    let s = w.write_checkpoint(CheckpointInput::new(
        &state(0),
        CheckpointPages {
            gfns: &gfns,
            contents: &memory,
        },
    ))?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "checkpoint 0: {mem_mib} MiB in {secs:.2} s = {:.0} MiB/s of guest memory \
         ({} stored, {} dedup, {} zero; {:.0} MiB written = {:.0} MiB/s to disk)",
        mem_mib as f64 / secs,
        s.stored_pages,
        s.dedup_pages,
        s.zero_pages,
        s.bytes_written as f64 / (1 << 20) as f64,
        s.bytes_written as f64 / (1 << 20) as f64 / secs
    );

    let dirty = mem_pages / 50;
    let mut total_secs = 0.0;
    let mut total_pages = 0;
    for n in 1..=20u64 {
        let mut set: Vec<u64> = (0..dirty).map(|_| rng(&mut r) % mem_pages).collect();
        set.sort_unstable();
        set.dedup();
        let mut contents = vec![0u8; set.len() * PAGE_SIZE];
        for (&g, page) in set.iter().zip(contents.chunks_exact_mut(PAGE_SIZE)) {
            fill(page, &mut r);
            memory[g as usize * PAGE_SIZE..][..PAGE_SIZE].copy_from_slice(page);
        }
        let rec = IntervalRecord {
            interval: n - 1,
            start_exit: (n - 1) * 10,
            end_exit: n * 10,
            complete: true,
            ..Default::default()
        };
        let t = Instant::now();
        w.write_checkpoint(CheckpointInput {
            interval: Some(rec),
            ..CheckpointInput::new(
                &state(n),
                CheckpointPages {
                    gfns: &set,
                    contents: &contents,
                },
            )
        })?;
        total_secs += t.elapsed().as_secs_f64();
        total_pages += set.len();
    }
    println!(
        "checkpoints 1..=20: {} dirty pages each, {:.1} ms per checkpoint, {:.0} MiB/s",
        total_pages / 20,
        total_secs * 1000.0 / 20.0,
        total_pages as f64 / 256.0 / total_secs
    );

    let run = Run::open(&dir)?;
    for n in [16u64, 15, 20] {
        let t = Instant::now();
        let map = run.page_map(n)?;
        println!(
            "page_map({n}) (base {} + {} overlays): {} pages in {:.1} ms",
            run.consolidation_base(n),
            n - run.consolidation_base(n),
            map.len(),
            t.elapsed().as_secs_f64() * 1000.0
        );
    }
    let map = run.page_map(20)?;
    let probes: Vec<u64> = (0..mem_pages).map(|_| rng(&mut r) % mem_pages).collect();
    let t = Instant::now();
    let mut found = 0u64;
    for &g in &probes {
        found += map.get(g).is_some() as u64;
    }
    let ns = t.elapsed().as_nanos() as f64 / probes.len() as f64;
    println!(
        "PageMap::get: {ns:.1} ns per random lookup ({} lookups, {found} non-zero)",
        probes.len()
    );

    let mut out = vec![0u8; memory.len()];
    // Twice: the first pass also pays the page faults of the fresh buffer.
    for pass in ["fresh buffer", "warm buffer"] {
        let t = Instant::now();
        run.reconstruct_memory(20, &mut out)?;
        let secs = t.elapsed().as_secs_f64();
        println!(
            "reconstruct_memory(20), {pass}: {mem_mib} MiB in {secs:.2} s ({} preads)",
            map.runs().count()
        );
    }
    assert!(out == memory, "reconstructed memory differs");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
