//! Shared helpers of the integration tests: a deterministic generator of checkpoints and a model
//! of guest memory to check the reader against.
#![allow(dead_code)]

use std::collections::HashSet;

use simuboost_format::{
    Access, AccessKind, AccessSource, CheckpointInput, CheckpointPages, CheckpointState,
    CheckpointStats, Event, EventData, GeneralRegs, IntervalRecord, RunMeta, RunWriter, VcpuState,
    PAGE_SIZE,
};

/// splitmix64: small, deterministic, good enough for test data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The contents of a page identified by `id`; id 0 is the zero page. Equal ids give equal pages,
/// which is how the tests produce duplicates.
pub fn page_of(id: u64) -> Vec<u8> {
    let mut page = vec![0u8; PAGE_SIZE];
    if id != 0 {
        let mut r = Rng(id.wrapping_mul(0x1234_5678_9abc_def1));
        for chunk in page.chunks_exact_mut(8) {
            chunk.copy_from_slice(&r.next().to_le_bytes());
        }
    }
    page
}

pub fn meta(mem_pages: u64) -> RunMeta {
    RunMeta {
        workload: "test".into(),
        mem_bytes: mem_pages * PAGE_SIZE as u64,
        seed: 42,
        interval_ns: 1_000_000,
        dirty_tracking: "model".into(),
        tracer: "none".into(),
        created_unix_ms: 1_700_000_000_000,
        guest_image_xxh3: "0123456789abcdef".into(),
        disk_image: None,
        cpuid: Vec::new(),
    }
}

/// Deterministic machine state of checkpoint `n`, exercising every column.
pub fn state_of(n: u64) -> CheckpointState {
    let regs = GeneralRegs::from_values(std::array::from_fn(|i| n * 1000 + i as u64));
    CheckpointState {
        checkpoint: n,
        exit: exit_of(n),
        vcpu: VcpuState {
            regs,
            sregs: (0..312).map(|i| (i as u64 + n) as u8).collect(),
            fpu: vec![n as u8; 416],
            xcrs: vec![],
            debugregs: vec![0xdb; 128],
            vcpu_events: (0..64).map(|i| i as u8 ^ n as u8).collect(),
            msrs: (0..(n % 4) as u32)
                .map(|i| (0xc000_0080 + i, n << 32 | i as u64))
                .collect(),
        },
        device_json: format!(r#"{{"disk_pos":{n},"name":"pv\"dev"}}"#),
    }
}

/// Exit count at checkpoint `n`: boundaries fall on exits, an increasing function.
pub fn exit_of(n: u64) -> u64 {
    n * (n + 3)
}

/// The exits of interval `i` (between exit_of(i) and exit_of(i+1)), with every kind of data:
/// none, empty, a few bytes (inline), and two whole pages (a disk read, held by reference), the
/// first zero for even exits and the second repeating every other exit (deduplicated).
pub fn events_of(i: u64) -> Vec<Event> {
    (exit_of(i) + 1..=exit_of(i + 1))
        .enumerate()
        .map(|(k, exit)| Event {
            interval: i,
            exit,
            op: (k % 5) as u32,
            args: [exit, k as u64, u64::MAX - exit],
            status: k as u32 % 2,
            ret: exit * 7,
            // Inside the first four pages: readers refuse a buffer outside guest memory.
            data_gpa: (k % 4 != 0).then_some((exit * 64) % 4096),
            data: match k % 4 {
                0 => None,
                1 => Some(EventData::Bytes(vec![])),
                2 => Some(EventData::Bytes(
                    (0..(exit % 200) as usize).map(|b| b as u8).collect(),
                )),
                _ => Some(EventData::Bytes(disk_read_of(exit))),
            },
        })
        .collect()
}

/// Two pages of block-read data for the event at `exit` (see [`events_of`]).
pub fn disk_read_of(exit: u64) -> Vec<u8> {
    let mut data = vec![0u8; 2 * PAGE_SIZE];
    if exit % 2 == 1 {
        data[..PAGE_SIZE].copy_from_slice(&page_of(exit));
    }
    data[PAGE_SIZE..].copy_from_slice(&page_of(1_000_000 + exit / 2));
    data
}

/// The events of `interval` as `run` gives them, with data held by reference read back into
/// bytes (checked against its hashes): what [`events_of`] handed over.
pub fn read_events(run: &simuboost_format::Run, interval: u64) -> Vec<Event> {
    let store = run.page_store().expect("page store");
    run.events(interval)
        .expect("events")
        .into_iter()
        .map(|mut e| {
            if let Some(EventData::Pages(pages)) = &e.data {
                let mut bytes = vec![0u8; pages.len() * PAGE_SIZE];
                store
                    .read_event_pages(e.exit, pages, &mut bytes)
                    .expect("event pages");
                e.data = Some(EventData::Bytes(bytes));
            }
            e
        })
        .collect()
}

pub fn interval_of(i: u64) -> IntervalRecord {
    IntervalRecord {
        interval: i,
        start_exit: exit_of(i),
        end_exit: exit_of(i + 1),
        start_ns: i * 1_000_000,
        end_ns: (i + 1) * 1_000_000,
        downtime_ns: 5_000 + i,
        dirty_pages: 10 + i,
        vmm_written_pages: i % 3,
        // Every fourth interval lost tracer events.
        complete: i % 4 != 3,
        backpressure_ns: i * 11,
        trace_drops: if i % 4 == 3 { 100 + i } else { 0 },
        ..Default::default()
    }
}

/// The access log of interval `n - 1` for checkpoint `n`'s pages `g`: every page of `g` as a
/// write (some by DMA), plus reads of other frames (some by DMA, some the vCPU's system
/// frames); traced frames in a scrambled order first, then the untraced ones (DMA, vCPU, and
/// some writes known only from the dirty log) in gfn order.
/// Uses its own generator, so runs with and without access logs have the same pages.
pub fn access_of(n: u64, g: &Gen, mem_pages: u64) -> Vec<Access> {
    let mut rng = Rng(0xacce55 ^ n.wrapping_mul(0x9e37_79b9));
    let mut frames: Vec<(u64, AccessKind, AccessSource, bool)> = Vec::new();
    for &gfn in &g.gfns {
        let source = if rng.chance(20) {
            AccessSource::Dma
        } else {
            AccessSource::Mmu
        };
        let traced = source == AccessSource::Mmu && rng.chance(80);
        frames.push((gfn, AccessKind::Write, source, traced));
    }
    for _ in 0..1 + rng.below(mem_pages / 2) {
        let gfn = rng.below(mem_pages);
        if g.gfns.binary_search(&gfn).is_ok() || frames.iter().any(|f| f.0 == gfn) {
            continue;
        }
        let source = if rng.chance(15) {
            AccessSource::Dma
        } else if rng.chance(6) {
            AccessSource::Vcpu
        } else {
            AccessSource::Mmu
        };
        frames.push((gfn, AccessKind::Read, source, source == AccessSource::Mmu));
    }
    // Traced frames: a deterministic scramble; then untraced ones by gfn.
    let mut traced: Vec<_> = frames.iter().filter(|f| f.3).copied().collect();
    for i in (1..traced.len()).rev() {
        traced.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut untraced: Vec<_> = frames.iter().filter(|f| !f.3).copied().collect();
    untraced.sort_unstable_by_key(|f| f.0);
    traced
        .into_iter()
        .chain(untraced)
        .enumerate()
        .map(|(i, (gfn, kind, source, _))| Access {
            gfn,
            kind,
            source,
            first_touch: i as u32,
        })
        .collect()
}

/// A model of guest memory: one content id per page.
pub struct Model {
    pub ids: Vec<u64>,
    /// Ids of all non-zero contents stored so far (to predict dedup).
    pub seen: HashSet<u64>,
}

impl Model {
    pub fn new(mem_pages: u64) -> Model {
        Model {
            ids: vec![0; mem_pages as usize],
            seen: HashSet::new(),
        }
    }

    pub fn image(&self) -> Vec<u8> {
        let mut img = Vec::with_capacity(self.ids.len() * PAGE_SIZE);
        for &id in &self.ids {
            img.extend_from_slice(&page_of(id));
        }
        img
    }
}

/// One generated checkpoint: which pages changed and to what.
pub struct Gen {
    pub gfns: Vec<u64>,
    pub ids: Vec<u64>,
    pub contents: Vec<u8>,
}

/// Generates checkpoint `n`'s pages from `rng` (whole memory for n = 0, a random dirty set
/// otherwise). Content ids come from a small pool so duplicates within and across checkpoints
/// are frequent, and some pages become zero.
pub fn gen_checkpoint(rng: &mut Rng, n: u64, mem_pages: u64, dirty_max: u64) -> Gen {
    let gfns: Vec<u64> = if n == 0 {
        (0..mem_pages).collect()
    } else {
        let want = 1 + rng.below(dirty_max);
        let mut set: Vec<u64> = (0..want).map(|_| rng.below(mem_pages)).collect();
        set.sort_unstable();
        set.dedup();
        set
    };
    let ids: Vec<u64> = gfns
        .iter()
        .map(|_| {
            if rng.chance(15) {
                0
            } else if rng.chance(50) {
                1 + rng.below(12) // shared pool: duplicates
            } else {
                1000 + rng.below(1 << 40) // almost surely unique
            }
        })
        .collect();
    let mut contents = Vec::with_capacity(gfns.len() * PAGE_SIZE);
    for &id in &ids {
        contents.extend_from_slice(&page_of(id));
    }
    Gen {
        gfns,
        ids,
        contents,
    }
}

/// Applies `g` to the model and returns the stats the writer must report.
pub fn apply(model: &mut Model, g: &Gen) -> CheckpointStats {
    let mut stats = CheckpointStats::default();
    for (&gfn, &id) in g.gfns.iter().zip(&g.ids) {
        model.ids[gfn as usize] = id;
        if id == 0 {
            stats.zero_pages += 1;
        } else if model.seen.insert(id) {
            stats.stored_pages += 1;
        } else {
            stats.dedup_pages += 1;
        }
    }
    stats
}

/// Writes checkpoint `n` from `g` with the standard state/interval/events and no access log.
pub fn write(
    w: &mut RunWriter,
    n: u64,
    g: &Gen,
    dump: Option<&[u8]>,
) -> Result<CheckpointStats, simuboost_format::FormatError> {
    write_with(w, n, g, None, dump)
}

/// [`write`] with an access log for interval `n - 1`.
pub fn write_with(
    w: &mut RunWriter,
    n: u64,
    g: &Gen,
    access: Option<&[Access]>,
    dump: Option<&[u8]>,
) -> Result<CheckpointStats, simuboost_format::FormatError> {
    let (interval, events) = if n == 0 {
        (None, vec![])
    } else {
        (Some(interval_of(n - 1)), events_of(n - 1))
    };
    w.write_checkpoint(CheckpointInput {
        interval,
        events: &events,
        access,
        dump,
        ..CheckpointInput::new(
            &state_of(n),
            CheckpointPages {
                gfns: &g.gfns,
                contents: &g.contents,
            },
        )
    })
}
