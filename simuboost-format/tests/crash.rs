//! SIGKILL at an arbitrary moment leaves every checkpoint the manifest names loadable.
//!
//! The test re-runs its own binary as a child (selected by an environment variable) that
//! writes checkpoints as fast as it can; the parent kills it with SIGKILL after a varying
//! delay, then regenerates the same deterministic checkpoints and checks every complete one.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use simuboost_format::{Run, RunWriter, PAGE_SIZE};

const CHILD_ENV: &str = "SIMUBOOST_FORMAT_CRASH_CHILD";
const TEST_NAME: &str = "sigkill_leaves_complete_checkpoints_loadable";
const MEM_PAGES: u64 = 512;
const MAX_CHECKPOINTS: u64 = 400;
const SEED: u64 = 0x5eed;

fn child(dir: &Path) {
    let mut w = RunWriter::create(dir, meta(MEM_PAGES))
        .unwrap()
        .with_consolidate_every(3);
    let mut rng = Rng(SEED);
    for n in 0..MAX_CHECKPOINTS {
        let g = gen_checkpoint(&mut rng, n, MEM_PAGES, 200);
        write(&mut w, n, &g, None).unwrap();
    }
}

#[test]
fn sigkill_leaves_complete_checkpoints_loadable() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&dir));
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for (attempt, delay_ms) in [20u64, 100, 250, 450].into_iter().enumerate() {
        let dir = tmp.path().join(format!("run{attempt}"));
        let mut proc = Command::new(std::env::current_exe().unwrap())
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        // Child::kill sends SIGKILL.
        proc.kill().unwrap();
        proc.wait().unwrap();

        let run = match Run::open(&dir) {
            Ok(r) => r,
            // Killed before the first manifest existed: nothing to check.
            Err(simuboost_format::FormatError::NotARun { .. }) => continue,
            Err(e) => panic!("attempt {attempt}: {e}"),
        };
        let complete = run.checkpoints();
        eprintln!("attempt {attempt}: killed after {delay_ms} ms, {complete} complete checkpoints");
        let mut rng = Rng(SEED);
        let mut model = Model::new(MEM_PAGES);
        let mut out = vec![0u8; MEM_PAGES as usize * PAGE_SIZE];
        for n in 0..complete {
            let g = gen_checkpoint(&mut rng, n, MEM_PAGES, 200);
            apply(&mut model, &g);
            run.reconstruct_memory(n, &mut out).unwrap();
            assert!(
                out == model.image(),
                "attempt {attempt}: memory of checkpoint {n}"
            );
            assert_eq!(run.state(n).unwrap(), state_of(n));
            if n > 0 {
                assert_eq!(read_events(&run, n - 1), events_of(n - 1));
                assert_eq!(run.interval(n - 1).unwrap().interval, n - 1);
            }
        }
    }
}
