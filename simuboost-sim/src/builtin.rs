//! The analyses of issue 11 — `blocks`, `pages`, `trace`, `cache` — and `sizes`, the worked
//! example of docs/ANALYSES.md, each an [`Analysis`]. [`from_request`] builds the ones a
//! [`Start`] asks for.

use std::os::unix::net::UnixStream;

use simuboost_sim_proto::{
    write_trace, AccessKind, AnalysisRequest, BlockCache, BlockCount, CacheConfig, CacheResults,
    CustomResult, Final, LevelCounts, PageCount, TraceBatch, TraceRequest, TraceSummary,
};

use crate::analysis::{AddrMap, Analysis, BlockInfo, MemAccess, Needs};
use crate::cache::Cache;

/// Builds the analyses `request` asks for, in a fixed order. `trace_out` is where the trace
/// batches go (a clone of the protocol socket).
pub fn from_request(
    request: &AnalysisRequest,
    trace_out: impl FnOnce() -> std::io::Result<UnixStream>,
) -> Result<Vec<Box<dyn Analysis>>, String> {
    let mut out: Vec<Box<dyn Analysis>> = Vec::new();
    if request.blocks {
        out.push(Box::new(BlockProfile::default()));
    }
    if request.pages {
        out.push(Box::new(PageCounter::default()));
    }
    if let Some(trace) = request.trace {
        let stream = trace_out().map_err(|e| format!("cannot clone the socket: {e}"))?;
        out.push(Box::new(Tracer::new(trace, stream)));
    }
    if let Some(cache) = &request.cache {
        out.push(Box::new(CacheAnalysis::new(cache)?));
    }
    for name in &request.custom {
        out.push(match name.as_str() {
            "sizes" => Box::new(AccessSizes::default()),
            other => return Err(format!("no analysis named {other:?} in this simulator")),
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// blocks

/// Execution and instruction counts per basic block (QEMU's hotblocks).
#[derive(Default)]
pub struct BlockProfile {
    blocks: AddrMap<BlockCount>,
}

impl Analysis for BlockProfile {
    fn needs(&self) -> Needs {
        Needs {
            blocks: true,
            ..Needs::default()
        }
    }
    #[inline]
    fn on_block(&mut self, block: &BlockInfo) {
        let b = self.blocks.entry(block.vaddr).or_insert(BlockCount {
            vaddr: block.vaddr,
            size: block.size,
            icount: block.icount,
            executions: 0,
            instructions: 0,
        });
        b.executions += 1;
        b.instructions += u64::from(block.icount);
    }
    fn on_stop(&mut self, block: &BlockInfo, executed: u32) {
        if let Some(b) = self.blocks.get_mut(&block.vaddr) {
            b.instructions -= u64::from(block.icount.saturating_sub(executed));
        }
    }
    fn reset(&mut self) {
        self.blocks.clear();
    }
    fn finish(&mut self, out: &mut Final) {
        let mut blocks: Vec<BlockCount> = self.blocks.values().copied().collect();
        blocks.sort_unstable();
        out.analysis.blocks = blocks;
    }
}

// ---------------------------------------------------------------------------------------------
// pages

/// Reads, writes and instruction fetches per guest frame (QEMU's hotpages). Fetches come from
/// the block hook (each block knows how many of its instructions start in which frame), reads
/// and writes from the memory hooks.
#[derive(Default)]
pub struct PageCounter {
    /// Per frame, indexed by gfn: reads, writes, fetches. A flat array rather than a map: it
    /// is indexed on every access, and guest RAM bounds it (24 bytes per frame, grown on
    /// demand up to the highest frame accessed).
    frames: Vec<[u64; 3]>,
}

impl PageCounter {
    #[inline]
    fn frame(&mut self, gfn: u64) -> &mut [u64; 3] {
        let i = gfn as usize;
        if i >= self.frames.len() {
            self.frames.resize(i + 1, [0; 3]);
        }
        &mut self.frames[i]
    }
}

impl Analysis for PageCounter {
    fn needs(&self) -> Needs {
        Needs {
            blocks: true,
            accesses: true,
            instructions: false,
        }
    }
    #[inline]
    fn on_block(&mut self, block: &BlockInfo) {
        for p in block.parts() {
            self.frame(p.ppage >> 12)[2] += u64::from(p.instructions);
        }
    }
    #[inline]
    fn on_access(&mut self, a: &MemAccess) {
        match a.kind {
            AccessKind::Read => self.frame(a.paddr >> 12)[0] += 1,
            AccessKind::Write => self.frame(a.paddr >> 12)[1] += 1,
            // Counted per block in on_block (this analysis does not ask for per-instruction
            // fetches, but another one may have).
            AccessKind::Fetch => {}
        }
    }
    fn on_stop(&mut self, block: &BlockInfo, executed: u32) {
        // The instructions after the stop did not execute: take them off the frames they start
        // in, last part first.
        let mut undo = block.icount.saturating_sub(executed);
        for p in block.parts().iter().rev() {
            let n = undo.min(p.instructions);
            if let Some(f) = self.frames.get_mut((p.ppage >> 12) as usize) {
                f[2] -= u64::from(n).min(f[2]);
            }
            undo -= n;
        }
    }
    fn reset(&mut self) {
        self.frames.clear();
    }
    fn finish(&mut self, out: &mut Final) {
        out.analysis.pages = self
            .frames
            .iter()
            .enumerate()
            .filter(|(_, c)| c.iter().any(|&n| n != 0))
            .map(|(gfn, c)| PageCount {
                gfn: gfn as u64,
                reads: c[0],
                writes: c[1],
                fetches: c[2],
            })
            .collect();
    }
}

// ---------------------------------------------------------------------------------------------
// trace

/// The memory access stream, buffered in one preallocated [`TraceBatch`] that is sent to the
/// parent whenever it is full and at every exit: no allocation per access.
pub struct Tracer {
    batch: TraceBatch,
    rows_per_batch: usize,
    limit: u64,
    summary: TraceSummary,
    out: UnixStream,
    /// The first failure to send; reported at the next exit.
    failed: Option<String>,
}

impl Tracer {
    fn new(request: TraceRequest, out: UnixStream) -> Tracer {
        let rows = (request.batch_rows as usize).clamp(1, 1 << 20);
        Tracer {
            batch: TraceBatch::with_capacity(rows),
            rows_per_batch: rows,
            limit: if request.limit == 0 {
                u64::MAX
            } else {
                request.limit
            },
            summary: TraceSummary::default(),
            out,
            failed: None,
        }
    }

    fn send(&mut self) {
        if self.batch.is_empty() || self.failed.is_some() {
            return;
        }
        // Written from the batch's own columns, which are kept for the next rows.
        if let Err(e) = write_trace(&mut self.out, &self.batch) {
            self.failed = Some(format!("sending the trace failed: {e}"));
        }
        self.batch.clear();
    }
}

impl Analysis for Tracer {
    fn needs(&self) -> Needs {
        Needs {
            blocks: true,
            accesses: true,
            instructions: true,
        }
    }
    #[inline]
    fn on_access(&mut self, a: &MemAccess) {
        if self.summary.rows >= self.limit || self.failed.is_some() {
            self.summary.dropped += 1;
            return;
        }
        let b = &mut self.batch;
        b.icount.push(a.icount);
        b.rip.push(a.rip);
        b.vaddr.push(a.vaddr);
        b.paddr.push(a.paddr);
        b.size.push(a.size);
        b.kind.push(a.kind as u8);
        self.summary.rows += 1;
        if b.len() >= self.rows_per_batch {
            self.send();
        }
    }
    fn flush(&mut self) -> Result<(), String> {
        self.send();
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
    fn reset(&mut self) {
        self.batch.clear();
        self.summary = TraceSummary::default();
    }
    fn finish(&mut self, out: &mut Final) {
        out.analysis.trace = Some(self.summary);
    }
}

// ---------------------------------------------------------------------------------------------
// cache

/// The cache model fed with every data read and write, counted in total and per basic block.
pub struct CacheAnalysis {
    config: CacheConfig,
    cache: Cache,
    totals: Vec<LevelCounts>,
    /// Per block: counts of up to two levels.
    blocks: AddrMap<[LevelCounts; 2]>,
    /// The block whose accesses are being counted, and its counts so far (folded into
    /// `blocks` when another block accesses memory: one map lookup per block run, not per
    /// access).
    current: Option<(u64, [LevelCounts; 2])>,
}

impl CacheAnalysis {
    fn fold_current(&mut self) {
        if let Some((vaddr, counts)) = self.current.take() {
            let b = self.blocks.entry(vaddr).or_default();
            for (into, from) in b.iter_mut().zip(counts) {
                into.hits += from.hits;
                into.misses += from.misses;
            }
        }
    }
}

impl CacheAnalysis {
    fn new(config: &CacheConfig) -> Result<CacheAnalysis, String> {
        let cache = Cache::new(config)?;
        Ok(CacheAnalysis {
            totals: vec![LevelCounts::default(); cache.depth()],
            config: config.clone(),
            cache,
            blocks: AddrMap::default(),
            current: None,
        })
    }
}

impl Analysis for CacheAnalysis {
    fn needs(&self) -> Needs {
        Needs {
            blocks: true,
            accesses: true,
            instructions: false,
        }
    }
    #[inline]
    fn on_access(&mut self, a: &MemAccess) {
        if a.kind == AccessKind::Fetch {
            return;
        }
        if self.current.map(|(vaddr, _)| vaddr) != Some(a.block) {
            self.fold_current();
            self.current = Some((a.block, [LevelCounts::default(); 2]));
        }
        let depth = self.cache.depth();
        let mut counts = [LevelCounts::default(); 2];
        self.cache
            .access(a.paddr, u64::from(a.size), &mut counts[..depth]);
        if let Some((_, per_block)) = &mut self.current {
            for (i, c) in counts[..depth].iter().enumerate() {
                self.totals[i].hits += c.hits;
                self.totals[i].misses += c.misses;
                per_block[i].hits += c.hits;
                per_block[i].misses += c.misses;
            }
        }
    }
    fn reset(&mut self) {
        self.cache.clear();
        self.totals.fill(LevelCounts::default());
        self.blocks.clear();
        self.current = None;
    }
    fn finish(&mut self, out: &mut Final) {
        self.fold_current();
        let depth = self.cache.depth();
        let mut blocks: Vec<BlockCache> = self
            .blocks
            .iter()
            .map(|(&vaddr, c)| BlockCache {
                vaddr,
                levels: c[..depth].to_vec(),
            })
            .collect();
        blocks.sort_unstable_by_key(|b| b.vaddr);
        out.analysis.cache = Some(CacheResults {
            levels: self.config.levels.clone(),
            totals: self.totals.clone(),
            blocks,
        });
    }
}

// ---------------------------------------------------------------------------------------------
// sizes: the worked example of docs/ANALYSES.md

/// Data accesses by kind and size ("read 8: 1200"), the smallest useful custom analysis.
#[derive(Default)]
pub struct AccessSizes {
    /// `[kind][log2(size)]` for sizes 1..=16; anything else in the last slot.
    counts: [[u64; 6]; 2],
}

impl Analysis for AccessSizes {
    fn needs(&self) -> Needs {
        Needs {
            accesses: true,
            ..Needs::default()
        }
    }
    fn on_access(&mut self, a: &MemAccess) {
        let kind = match a.kind {
            AccessKind::Read => 0,
            AccessKind::Write => 1,
            AccessKind::Fetch => return,
        };
        let slot = match a.size {
            1 | 2 | 4 | 8 | 16 => a.size.trailing_zeros() as usize,
            _ => 5,
        };
        self.counts[kind][slot] += 1;
    }
    fn reset(&mut self) {
        self.counts = [[0; 6]; 2];
    }
    fn finish(&mut self, out: &mut Final) {
        let mut rows = Vec::new();
        for (kind, name) in [(0, "read"), (1, "write")] {
            for (slot, &n) in self.counts[kind].iter().enumerate() {
                if n != 0 {
                    let size = if slot < 5 {
                        (1u32 << slot).to_string()
                    } else {
                        "other".into()
                    };
                    rows.push((format!("{name} {size}"), n));
                }
            }
        }
        out.analysis.custom.push(CustomResult {
            name: "sizes".into(),
            rows,
        });
    }
}
