//! manifest.json: any bytes as a run's manifest, read and validated as `Run::open` does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simuboost_format::{layout, Manifest, Run, FORMAT_VERSION, MAX_MEM_BYTES, PAGE_SIZE};

fuzz_target!(|data: &[u8]| {
    let dir = simuboost_fuzz::scratch().join("manifest");
    simuboost_fuzz::put(&layout::manifest(&dir), data);
    if let Ok(manifest) = Manifest::read(&dir) {
        // What validation promises every reader.
        assert_eq!(manifest.format_version, FORMAT_VERSION);
        assert!(manifest.meta.mem_bytes > 0 && manifest.meta.mem_bytes <= MAX_MEM_BYTES);
        assert_eq!(manifest.meta.mem_bytes % PAGE_SIZE as u64, 0);
        assert!(manifest.consolidate_every > 0);
        // Opening the run checks its tree against the counts (no state files here): it must
        // refuse or accept without panicking, and an accepted run answers its questions.
        if let Ok(run) = Run::open(&dir) {
            let _ = run.consolidation_base(run.checkpoints().saturating_sub(1));
            let _ = run.interval_count();
        }
    }
});
