//! The analyses a simulated interval can run (issue 11), as the protocol carries them: what the
//! parent asks for in [`crate::Start::analyses`], the memory trace the simulator streams in
//! [`crate::FromSim::Trace`] batches while it runs, and the per-interval results in
//! [`crate::Final::analysis`]. Plain records only: the replayer turns them into Parquet (the
//! simulator links nothing that writes it, see the crate's licence note).

use serde::{Deserialize, Serialize};

/// Which analyses to run. All off is the plain replay.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnalysisRequest {
    /// Execution and instruction counts per basic block ([`BlockCount`]).
    pub blocks: bool,
    /// Reads, writes and instruction fetches per guest frame ([`PageCount`]).
    pub pages: bool,
    /// The memory access stream ([`TraceBatch`]).
    pub trace: Option<TraceRequest>,
    /// A set-associative cache model fed by the data accesses ([`CacheResults`]).
    pub cache: Option<CacheConfig>,
    /// Analyses added to the simulator by name (docs/ANALYSES.md, "Write your own"); their
    /// results come as [`CustomResult`]s.
    pub custom: Vec<String>,
}

impl AnalysisRequest {
    /// Whether any analysis is on.
    pub fn any(&self) -> bool {
        self.blocks
            || self.pages
            || self.trace.is_some()
            || self.cache.is_some()
            || !self.custom.is_empty()
    }
}

/// How to stream the trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceRequest {
    /// Stop recording after this many rows (0: no limit). The analyses that do not write the
    /// trace keep running; [`TraceSummary::dropped`] counts what was not sent.
    pub limit: u64,
    /// Rows per [`TraceBatch`] (the simulator's buffer; it is reused, never grown).
    pub batch_rows: u32,
}

/// One cache level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheLevel {
    /// Capacity in bytes.
    pub size: u64,
    /// Ways per set (associativity); `size / (ways * line)` sets, a power of two.
    pub ways: u32,
    /// Line size in bytes, a power of two.
    pub line: u32,
}

impl CacheLevel {
    /// Number of sets, if the geometry is valid (non-zero, powers of two, size divisible).
    pub fn sets(&self) -> Option<u64> {
        let (ways, line) = (u64::from(self.ways), u64::from(self.line));
        if ways == 0 || !line.is_power_of_two() || self.size == 0 {
            return None;
        }
        let way_bytes = ways.checked_mul(line)?;
        if !self.size.is_multiple_of(way_bytes) {
            return None;
        }
        let sets = self.size / way_bytes;
        sets.is_power_of_two().then_some(sets)
    }
}

/// The cache model: one or two levels (L1, then L2 on an L1 miss), LRU, write-allocate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheConfig {
    /// L1 first; at most two.
    pub levels: Vec<CacheLevel>,
}

/// Kind of a memory access, as [`TraceBatch::kind`] stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum AccessKind {
    /// Data read.
    Read = 0,
    /// Data write.
    Write = 1,
    /// Instruction fetch (one per executed instruction, its length as the size).
    Fetch = 2,
}

impl AccessKind {
    /// The name used in output files (`read`, `write`, `fetch`).
    pub fn as_str(self) -> &'static str {
        match self {
            AccessKind::Read => "read",
            AccessKind::Write => "write",
            AccessKind::Fetch => "fetch",
        }
    }

    /// From the byte [`TraceBatch::kind`] stores.
    pub fn from_u8(v: u8) -> Option<AccessKind> {
        match v {
            0 => Some(AccessKind::Read),
            1 => Some(AccessKind::Write),
            2 => Some(AccessKind::Fetch),
            _ => None,
        }
    }
}

/// A batch of trace rows, column by column (every vector has the same length). The simulator
/// fills one preallocated batch and sends it when full or at an exit.
///
/// On the wire a batch is one byte string — the row count, then each column's values
/// little-endian, back to back — not a sequence of serde values: a trace is tens of millions of
/// rows per second of guest time, and encoding each value on its own cost a third of the
/// simulator's time (bincode's varints).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceBatch {
    /// Instructions executed in the interval up to and including the accessing instruction.
    pub icount: Vec<u64>,
    /// Virtual address of the accessing instruction.
    pub rip: Vec<u64>,
    /// Virtual address accessed.
    pub vaddr: Vec<u64>,
    /// Guest-physical address accessed.
    pub paddr: Vec<u64>,
    /// Bytes accessed.
    pub size: Vec<u8>,
    /// [`AccessKind`] as its `u8`.
    pub kind: Vec<u8>,
}

impl TraceBatch {
    /// An empty batch with room for `rows` rows.
    pub fn with_capacity(rows: usize) -> TraceBatch {
        TraceBatch {
            icount: Vec::with_capacity(rows),
            rip: Vec::with_capacity(rows),
            vaddr: Vec::with_capacity(rows),
            paddr: Vec::with_capacity(rows),
            size: Vec::with_capacity(rows),
            kind: Vec::with_capacity(rows),
        }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.icount.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.icount.is_empty()
    }

    /// Removes every row, keeping the capacity.
    pub fn clear(&mut self) {
        self.icount.clear();
        self.rip.clear();
        self.vaddr.clear();
        self.paddr.clear();
        self.size.clear();
        self.kind.clear();
    }

    /// Whether every column has the same length (checked on receipt).
    pub fn is_consistent(&self) -> bool {
        let n = self.icount.len();
        [
            self.rip.len(),
            self.vaddr.len(),
            self.paddr.len(),
            self.size.len(),
            self.kind.len(),
        ]
        .iter()
        .all(|&l| l == n)
    }
}

#[cfg(not(target_endian = "little"))]
compile_error!("the trace's wire form assumes a little-endian host");

/// Bytes per row on the wire: four `u64` columns and two `u8` columns.
pub(crate) const TRACE_ROW_BYTES: usize = 4 * 8 + 2;

/// Bytes per value of each column, in wire order (see [`TraceBatch::wire_columns`]).
const COLUMN_WIDTHS: [usize; 6] = [8, 8, 8, 8, 1, 1];

/// Spent batches whose memory the next batch received reuses ([`TraceBatch::recycle`]).
static SPARE_BATCHES: std::sync::Mutex<Vec<TraceBatch>> = std::sync::Mutex::new(Vec::new());

/// Spent batches kept, at most: the replayer's trace queue plus the ones in flight.
const MAX_SPARE_BATCHES: usize = 4;

/// Makes `column` `rows` long, keeping what it holds (it is about to be overwritten): only
/// growth is zeroed.
fn fit<T: Copy + Default>(column: &mut Vec<T>, rows: usize) {
    if column.len() >= rows {
        column.truncate(rows);
    } else {
        column.resize(rows, T::default());
    }
}

impl TraceBatch {
    /// Gives a spent batch's memory back: the next batch received from the simulator is read
    /// into it. Received into freshly zeroed columns, the zeroing of 34 bytes a row (memory
    /// the allocator had just reused) was a tenth of the replayer's CPU time in a trace.
    pub fn recycle(self) {
        if let Ok(mut spare) = SPARE_BATCHES.lock() {
            if spare.len() < MAX_SPARE_BATCHES {
                spare.push(self);
            }
        }
    }

    /// `rows` rows to be overwritten through [`Self::wire_columns_mut`]: a recycled batch's
    /// memory if there is one (its old values stay until overwritten), else zeros.
    pub(crate) fn for_rows(rows: usize) -> TraceBatch {
        let spare = SPARE_BATCHES.lock().ok().and_then(|mut spare| spare.pop());
        match spare {
            Some(mut b) => {
                for column in [&mut b.icount, &mut b.rip, &mut b.vaddr, &mut b.paddr] {
                    fit(column, rows);
                }
                fit(&mut b.size, rows);
                fit(&mut b.kind, rows);
                b
            }
            None => TraceBatch::zeroed(rows),
        }
    }

    /// `rows` rows of zeros, to be filled through [`Self::wire_columns_mut`].
    pub(crate) fn zeroed(rows: usize) -> TraceBatch {
        TraceBatch {
            icount: vec![0; rows],
            rip: vec![0; rows],
            vaddr: vec![0; rows],
            paddr: vec![0; rows],
            size: vec![0; rows],
            kind: vec![0; rows],
        }
    }

    /// The columns' memory, in their order on the wire. The replayer and the simulator run on
    /// the same little-endian (x86-64) host: the values' memory is their wire form.
    pub(crate) fn wire_columns(&self) -> [&[u8]; 6] {
        let bytes = zerocopy::IntoBytes::as_bytes;
        [
            bytes(self.icount.as_slice()),
            bytes(self.rip.as_slice()),
            bytes(self.vaddr.as_slice()),
            bytes(self.paddr.as_slice()),
            &self.size,
            &self.kind,
        ]
    }

    /// [`Self::wire_columns`], to be read into.
    pub(crate) fn wire_columns_mut(&mut self) -> [&mut [u8]; 6] {
        let bytes = zerocopy::IntoBytes::as_mut_bytes;
        [
            bytes(self.icount.as_mut_slice()),
            bytes(self.rip.as_mut_slice()),
            bytes(self.vaddr.as_mut_slice()),
            bytes(self.paddr.as_mut_slice()),
            &mut self.size,
            &mut self.kind,
        ]
    }

    /// The wire form (see the type's documentation).
    pub fn to_bytes(&self) -> Vec<u8> {
        let n = self.len();
        let mut out = Vec::with_capacity(8 + n * TRACE_ROW_BYTES);
        out.extend_from_slice(&(n as u64).to_le_bytes());
        for (column, width) in self.wire_columns().into_iter().zip(COLUMN_WIDTHS) {
            out.extend_from_slice(&column[..(n * width).min(column.len())]);
        }
        out
    }

    /// Reads the wire form; `None` if its length does not match its row count.
    pub fn from_bytes(bytes: &[u8]) -> Option<TraceBatch> {
        let (head, body) = bytes.split_first_chunk::<8>()?;
        let n = usize::try_from(u64::from_le_bytes(*head)).ok()?;
        if n.checked_mul(TRACE_ROW_BYTES)? != body.len() {
            return None;
        }
        let mut batch = TraceBatch::zeroed(n);
        let mut rest = body;
        for column in batch.wire_columns_mut() {
            let (values, after) = rest.split_at(column.len());
            column.copy_from_slice(values);
            rest = after;
        }
        Some(batch)
    }
}

impl Serialize for TraceBatch {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if !self.is_consistent() {
            return Err(serde::ser::Error::custom(
                "a trace batch whose columns differ in length",
            ));
        }
        serializer.serialize_bytes(&self.to_bytes())
    }
}

impl<'de> Deserialize<'de> for TraceBatch {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl serde::de::Visitor<'_> for Bytes {
            type Value = TraceBatch;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a trace batch as bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<TraceBatch, E> {
                TraceBatch::from_bytes(v)
                    .ok_or_else(|| E::custom("a trace batch whose length does not match its rows"))
            }
        }
        deserializer.deserialize_bytes(Bytes)
    }
}

/// One basic block's counts in the interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlockCount {
    /// Virtual address of the block's first instruction.
    pub vaddr: u64,
    /// Bytes of code in the block.
    pub size: u32,
    /// Instructions in the block.
    pub icount: u32,
    /// Times the block was entered.
    pub executions: u64,
    /// Instructions executed in it (executions × icount, less what a stop inside it left out).
    pub instructions: u64,
}

/// One guest frame's access counts in the interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PageCount {
    /// Guest frame number.
    pub gfn: u64,
    /// Data reads by guest instructions.
    pub reads: u64,
    /// Data writes by guest instructions.
    pub writes: u64,
    /// Instructions executed whose first byte lies in the frame.
    pub fetches: u64,
}

/// Hits and misses of one cache level.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LevelCounts {
    /// Accesses that found their line.
    pub hits: u64,
    /// Accesses that did not (and were passed to the next level).
    pub misses: u64,
}

/// The cache model's counts for the accesses made by one basic block's instructions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockCache {
    /// Virtual address of the block.
    pub vaddr: u64,
    /// Per level, L1 first.
    pub levels: Vec<LevelCounts>,
}

/// The cache model's results.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheResults {
    /// The geometry simulated.
    pub levels: Vec<CacheLevel>,
    /// Totals per level, L1 first. An access that spans two lines counts once per line.
    pub totals: Vec<LevelCounts>,
    /// Per basic block, sorted by address (blocks without data accesses left out).
    pub blocks: Vec<BlockCache>,
}

/// What the trace sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceSummary {
    /// Rows sent in [`TraceBatch`]es.
    pub rows: u64,
    /// Rows not sent because of [`TraceRequest::limit`].
    pub dropped: u64,
}

/// The result of an analysis added by name: a table of (key, value) rows, which the replayer
/// writes as `<name>` Parquet like the built-in ones.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomResult {
    /// The analysis's name, as requested.
    pub name: String,
    /// Its rows, in the order it chose.
    pub rows: Vec<(String, u64)>,
}

/// The analyses' results of one interval, in [`crate::Final::analysis`]. Each part is empty when
/// its analysis was off.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnalysisResults {
    /// Per basic block, sorted by address.
    pub blocks: Vec<BlockCount>,
    /// Per accessed frame, sorted by gfn.
    pub pages: Vec<PageCount>,
    /// The cache model.
    pub cache: Option<CacheResults>,
    /// The trace.
    pub trace: Option<TraceSummary>,
    /// Analyses added by name, in request order.
    pub custom: Vec<CustomResult>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{read_frame, write_frame, FromSim};

    #[test]
    fn trace_batches_cross_the_wire_as_bytes() {
        let batch = TraceBatch {
            icount: vec![1, 2, u64::MAX],
            rip: vec![0x1000, 0x1004, 0x1004],
            vaddr: vec![0x1000, 0x5008, 1 << 47],
            paddr: vec![0x1000, 0x9008, 0x9010],
            size: vec![4, 8, 16],
            kind: vec![2, 0, 1],
        };
        let mut wire = Vec::new();
        write_frame(&mut wire, &FromSim::Trace(batch.clone())).unwrap();
        // Row count, 3 rows of 34 bytes, and the frame's few bytes of envelope.
        assert!(wire.len() < 8 + 3 * 34 + 16, "{} bytes", wire.len());
        let back: FromSim = read_frame(&mut wire.as_slice()).unwrap();
        assert_eq!(back, FromSim::Trace(batch.clone()));
        // A length that does not match the row count, and an inconsistent batch, are refused.
        let bytes = batch.to_bytes();
        assert!(TraceBatch::from_bytes(&bytes[..bytes.len() - 1]).is_none());
        assert!(TraceBatch::from_bytes(&[]).is_none());
        let mut bad = batch;
        bad.kind.pop();
        assert!(write_frame(&mut Vec::new(), &FromSim::Trace(bad)).is_err());
    }
}
