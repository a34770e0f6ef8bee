//! End-to-end tests of access tracking with real eBPF on a real KVM VM: the access log of every
//! interval, checkpoints with tracing on and off, and the drop path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use simuboost_abi::{Op, GUEST_HEAP_BYTES, PAGE_SIZE};
use simuboost_format::{AccessSource, Run};
use simuboost_tests::{kvm_and_root_available, summary, Finished};
use simuboost_vmm::machine::MachineSnapshot;
use simuboost_vmm::persist::Persist;
use simuboost_workloads::pattern;

const MEM: &str = "64M";
const SEED: u64 = 5;
const STEPS: &str = "2000";

/// Records `pattern` into `dir` with 400-exit intervals (plus `extra` flags).
fn record(dir: &Path, extra: &[&str]) -> Finished {
    let seed = SEED.to_string();
    let mut args = vec!["--workload", "pattern", "--mem", MEM, "--work", STEPS];
    args.extend(["--seed", &seed, "--interval-exits", "400"]);
    args.extend(extra);
    let run = simuboost_tests::record(dir, &args);
    run.expect_code(0);
    run
}

/// Where the arena starts and how many pattern pages it has.
fn arena(dir: &Path) -> (u64, u64, u64) {
    let s = summary(dir);
    let (mem, arena_bytes) = (s.mem_bytes, s.arena_bytes);
    let start = s.arena_start;
    assert_eq!(
        start + arena_bytes,
        mem,
        "without --arena the arena ends with RAM"
    );
    let (_, pages) = pattern::aligned_pages(start as usize, arena_bytes as usize);
    (mem, start, pages)
}

#[test]
fn pattern_access_log_is_exactly_the_touched_pages() {
    if !kvm_and_root_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("run");
    record(&dir, &["--tracer", "ebpf"]);
    let (_, arena_start, arena_pages) = arena(&dir);
    let arena_gfn = arena_start / PAGE_SIZE;
    let run = Run::open(&dir).expect("run");
    assert_eq!(run.manifest().meta.tracer, "ebpf");
    let intervals = run.intervals().expect("intervals");
    assert!(intervals.len() >= 4);
    let mut step = 0;
    for interval in &intervals {
        assert!(
            interval.complete,
            "interval {} lost events",
            interval.interval
        );
        let (mut touched, mut written) = (BTreeSet::new(), BTreeSet::new());
        for event in run.events(interval.interval).expect("events") {
            if event.op == Op::Yield as u32 {
                let pages = pattern::step_pages(SEED, step, arena_pages);
                touched.extend(
                    pages
                        .reads
                        .iter()
                        .chain(&pages.writes)
                        .map(|p| arena_gfn + p),
                );
                written.extend(pages.writes.iter().map(|p| arena_gfn + p));
                step += 1;
            }
        }
        let log = run
            .access(interval.interval)
            .expect("access log readable")
            .expect("access log present");
        let in_arena: BTreeSet<u64> = log
            .iter()
            .map(|a| a.gfn)
            .filter(|&g| g >= arena_gfn)
            .collect();
        assert_eq!(
            in_arena, touched,
            "interval {}: the access log differs from the pages its steps touched",
            interval.interval
        );
        let logged_writes: BTreeSet<u64> = log
            .iter()
            .filter(|a| a.gfn >= arena_gfn && a.kind == simuboost_format::AccessKind::Write)
            .map(|a| a.gfn)
            .collect();
        assert_eq!(
            logged_writes, written,
            "interval {}: writes",
            interval.interval
        );
        // Everything else is the guest's own: image code and data, stack, heap, page tables.
        let outside = log.iter().filter(|a| a.gfn < arena_gfn).count();
        assert!(
            outside < 80,
            "interval {}: {outside} frames below the arena",
            interval.interval
        );
        // first_touch numbers the log 0..n.
        let mut order: Vec<u32> = log.iter().map(|a| a.first_touch).collect();
        order.sort_unstable();
        assert!(order.iter().enumerate().all(|(i, &o)| o as usize == i));
        // The frames the vCPU's system registers pointed at when the interval began are in the
        // log; those nothing else touched are `vcpu` reads, last.
        let state = run.state(interval.interval).expect("state");
        let machine = MachineSnapshot::restore((), &state).expect("machine state");
        let system: BTreeSet<u64> = machine
            .vcpu
            .system_frames(run.manifest().meta.mem_bytes)
            .into_iter()
            .collect();
        assert!(!system.is_empty());
        let logged: BTreeSet<u64> = log.iter().map(|a| a.gfn).collect();
        assert!(
            system.is_subset(&logged),
            "interval {}: system frames {system:?} missing from the log",
            interval.interval
        );
        let vcpu_rows: Vec<_> = log
            .iter()
            .filter(|a| a.source == AccessSource::Vcpu)
            .collect();
        for (i, a) in vcpu_rows.iter().enumerate() {
            assert!(system.contains(&a.gfn), "{a:?} is no system frame");
            assert_eq!(a.kind, simuboost_format::AccessKind::Read, "{a:?}");
            assert_eq!(
                a.first_touch as usize,
                log.len() - vcpu_rows.len() + i,
                "vcpu rows come last"
            );
        }
    }
}

/// gfn → content hash of every frame of checkpoint `n`, leaving out the guest page tables,
/// whose accessed/dirty bits are KVM's bookkeeping and differ when the tracer re-arms.
fn checkpoint_frames(
    run: &Run,
    n: u64,
    page_tables: &std::ops::Range<u64>,
) -> BTreeMap<u64, Option<u128>> {
    run.checkpoint_pages(n)
        .expect("checkpoint pages")
        .into_iter()
        .filter(|row| !page_tables.contains(&row.gfn))
        .map(|row| (row.gfn, row.hash))
        .collect()
}

#[test]
fn checkpoints_are_identical_with_tracing_on_and_off() {
    if !kvm_and_root_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let (on, off) = (tmp.path().join("on"), tmp.path().join("off"));
    record(&on, &["--tracer", "ebpf"]);
    record(&off, &["--tracer", "none"]);
    let (mem, arena_start, _) = arena(&on);
    // The page tables end where the guest's heap begins; one frame per 2 MiB of RAM.
    let tables_end = (arena_start - GUEST_HEAP_BYTES) / PAGE_SIZE;
    let page_tables = tables_end - mem / (2 << 20)..tables_end;
    let (on, off) = (Run::open(&on).expect("on"), Run::open(&off).expect("off"));
    assert_eq!(on.checkpoints(), off.checkpoints());
    for n in 0..on.checkpoints() {
        assert_eq!(
            checkpoint_frames(&on, n, &page_tables),
            checkpoint_frames(&off, n, &page_tables),
            "checkpoint {n} differs with tracing on and off"
        );
        assert_eq!(
            on.state(n).expect("state").vcpu.regs,
            off.state(n).expect("state").vcpu.regs
        );
    }
    assert!(
        off.access(0).expect("readable").is_none(),
        "no access log without tracer"
    );
}

#[test]
fn a_full_event_ring_marks_the_interval_incomplete() {
    if !kvm_and_root_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("run");
    // 4 KiB hold 256 events; an interval of 400 steps touches thousands of frames.
    record(&dir, &["--tracer", "ebpf", "--trace-ring-bytes", "4096"]);
    let run = Run::open(&dir).expect("run");
    let intervals = run.intervals().expect("intervals");
    let incomplete: Vec<_> = intervals.iter().filter(|i| !i.complete).collect();
    assert!(!incomplete.is_empty(), "no interval was marked incomplete");
    assert!(incomplete.iter().all(|i| i.trace_drops > 0));
    assert!(intervals
        .iter()
        .filter(|i| i.complete)
        .all(|i| i.trace_drops == 0));
}
