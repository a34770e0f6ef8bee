//! The records a run is made of, as plain Rust values: what the recorder hands the writer and
//! what the reader gives back. Their Parquet shape lives in `tables/`.

/// The general-purpose registers of the vCPU, plus RIP and RFLAGS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct GeneralRegs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
}

impl GeneralRegs {
    /// Register names in the order of [`GeneralRegs::values`] and of the state table's columns.
    pub const NAMES: [&'static str; 18] = [
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15", "rip", "rflags",
    ];

    /// The registers in [`GeneralRegs::NAMES`] order.
    pub fn values(&self) -> [u64; 18] {
        [
            self.rax,
            self.rbx,
            self.rcx,
            self.rdx,
            self.rsi,
            self.rdi,
            self.rsp,
            self.rbp,
            self.r8,
            self.r9,
            self.r10,
            self.r11,
            self.r12,
            self.r13,
            self.r14,
            self.r15,
            self.rip,
            self.rflags,
        ]
    }

    /// The inverse of [`GeneralRegs::values`].
    pub fn from_values(v: [u64; 18]) -> GeneralRegs {
        let [rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp, r8, r9, r10, r11, r12, r13, r14, r15, rip, rflags] =
            v;
        GeneralRegs {
            rax,
            rbx,
            rcx,
            rdx,
            rsi,
            rdi,
            rsp,
            rbp,
            r8,
            r9,
            r10,
            r11,
            r12,
            r13,
            r14,
            r15,
            rip,
            rflags,
        }
    }

    /// The first register (in [`GeneralRegs::NAMES`] order) whose value differs, as
    /// `(name, self's value, other's value)`; `None` if all are equal. Replay verification uses
    /// it to report a divergence in one line.
    pub fn diff(&self, other: &GeneralRegs) -> Option<(&'static str, u64, u64)> {
        Self::NAMES
            .iter()
            .zip(self.values().into_iter().zip(other.values()))
            .find(|(_, (a, b))| a != b)
            .map(|(name, (a, b))| (*name, a, b))
    }
}

/// The full vCPU state at a boundary. The blobs are the raw bytes of the corresponding KVM
/// structures (`kvm_sregs`, `kvm_xsave` in `fpu`, `kvm_xcrs`, `kvm_debugregs`, `kvm_vcpu_events`)
/// as the VMM read them; this crate stores them opaquely.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VcpuState {
    pub regs: GeneralRegs,
    pub sregs: Vec<u8>,
    pub fpu: Vec<u8>,
    pub xcrs: Vec<u8>,
    pub debugregs: Vec<u8>,
    pub vcpu_events: Vec<u8>,
    /// `(MSR index, value)` pairs, in the order the VMM saved them.
    pub msrs: Vec<(u32, u64)>,
}

/// The machine state at checkpoint `checkpoint` (everything but memory).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointState {
    pub checkpoint: u64,
    /// Number of guest-initiated exits from boot up to this boundary.
    pub exit: u64,
    pub vcpu: VcpuState,
    /// Device state, serialized by the VMM as JSON; opaque to this crate.
    pub device_json: String,
}

/// One guest-initiated exit (a doorbell request) and what the VMM answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    /// The interval the exit falls in.
    pub interval: u64,
    /// Exit count of this exit since boot.
    pub exit: u64,
    /// Request opcode.
    pub op: u32,
    /// The request's three arguments.
    pub args: [u64; 3],
    /// Status the VMM wrote into the request block.
    pub status: u32,
    /// Result the VMM wrote into the request block.
    pub ret: u64,
    /// Guest physical address of `data`, when the VMM wrote a buffer.
    pub data_gpa: Option<u64>,
    /// What the VMM wrote into guest memory at `data_gpa`, besides status/ret.
    pub data: Option<EventData>,
}

/// The data of an [`Event`]: the bytes themselves, or whole pages held in pages.bin.
///
/// A recorder hands the writer [`EventData::Bytes`]; the writer keeps data of whole pages (a
/// disk read) in pages.bin by reference, deduplicated against every page of the run, so a reader
/// gets [`EventData::Pages`] for those and reads them when it needs them
/// ([`crate::PageStore::read_event_pages`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventData {
    /// The bytes, inline in the events table.
    Bytes(Vec<u8>),
    /// [`crate::PAGE_SIZE`] bytes per entry, in order: `(slot, hash)` of pages.bin, `None` for
    /// a page of zeros.
    Pages(Vec<Option<(u64, u128)>>),
}

impl EventData {
    /// Length of the data in bytes.
    pub fn len(&self) -> u64 {
        match self {
            EventData::Bytes(bytes) => bytes.len() as u64,
            EventData::Pages(pages) => pages.len() as u64 * crate::PAGE_SIZE as u64,
        }
    }

    /// True if the data is empty (which is distinct from no data).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes, when they are inline.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            EventData::Bytes(bytes) => Some(bytes),
            EventData::Pages(_) => None,
        }
    }
}

/// Statistics of one interval, one row of `intervals/`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntervalRecord {
    pub interval: u64,
    /// Exit count at the interval's start boundary (= exit of checkpoint `interval`).
    pub start_exit: u64,
    /// Exit count at the interval's end boundary (= exit of checkpoint `interval + 1`).
    pub end_exit: u64,
    /// Wall clock at the start boundary, ns since the run started.
    pub start_ns: u64,
    /// Wall clock at the end boundary, ns since the run started.
    pub end_ns: u64,
    /// How long the guest was paused to take the end checkpoint.
    pub downtime_ns: u64,
    /// Pages the dirty log reported for the interval.
    pub dirty_pages: u64,
    /// Pages the VMM wrote (DMA, request blocks) that the dirty log does not see.
    pub vmm_written_pages: u64,
    /// Filled in by the writer: pages whose contents were new to the run (appended to pages.bin).
    pub stored_pages: u64,
    /// Filled in by the writer: pages that were zero at the end boundary.
    pub zero_pages: u64,
    /// Filled in by the writer: non-zero pages whose contents were already stored.
    pub dedup_pages: u64,
    /// Filled in by the writer: bytes the checkpoint added to the run directory (see FORMAT.md).
    pub bytes_written: u64,
    /// False if the access log of the interval may miss frames: always false when
    /// `trace_drops > 0` (the writer rejects a record saying otherwise). True when the run has
    /// no tracer.
    pub complete: bool,
    /// Time the guest waited because the background writer was behind.
    pub backpressure_ns: u64,
    /// Filled in by the writer: rows of the interval's access log (0 when it has none).
    pub traced_frames: u64,
    /// Events the tracer lost during the interval (0 without a tracer). Non-zero implies
    /// `complete == false`.
    pub trace_drops: u64,
    /// Filled in by the writer: pages of the interval's event data held by reference.
    pub event_pages: u64,
    /// Filled in by the writer: of `event_pages`, those appended to pages.bin (new contents).
    pub event_stored_pages: u64,
}

/// Whether a frame of an access log was written during its interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AccessKind {
    /// Touched but not written: not in the interval's dirty set.
    Read,
    /// Written: in the interval's dirty set (the pages of the checkpoint ending the interval).
    Write,
}

impl AccessKind {
    /// The value of the access table's `kind` column: `read` or `write`.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessKind::Read => "read",
            AccessKind::Write => "write",
        }
    }

    /// The inverse of [`AccessKind::as_str`].
    pub fn from_name(name: &str) -> Option<AccessKind> {
        match name {
            "read" => Some(AccessKind::Read),
            "write" => Some(AccessKind::Write),
            _ => None,
        }
    }
}

/// Who touched a frame of an access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AccessSource {
    /// The guest, through KVM's MMU: seen by the tracer on KVM's MMU tracepoints, or known from
    /// KVM's dirty log. Also used when the VMM touched the frame too.
    Mmu,
    /// Only the VMM, reading or writing the frame for a device (DMA, request blocks).
    Dma,
    /// Only the vCPU's system registers point at it at the interval's start: the root of the
    /// page tables (CR3) and the descriptor tables (GDT, IDT, TSS). The CPU reads them, but
    /// not through a mapping the tracer sees, so the recorder adds them from the state.
    Vcpu,
}

impl AccessSource {
    /// The value of the access table's `source` column: `mmu`, `dma` or `vcpu`.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessSource::Mmu => "mmu",
            AccessSource::Dma => "dma",
            AccessSource::Vcpu => "vcpu",
        }
    }

    /// The inverse of [`AccessSource::as_str`].
    pub fn from_name(name: &str) -> Option<AccessSource> {
        match name {
            "mmu" => Some(AccessSource::Mmu),
            "dma" => Some(AccessSource::Dma),
            "vcpu" => Some(AccessSource::Vcpu),
            _ => None,
        }
    }
}

/// One frame of an interval's working set, one row of `access/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Access {
    pub gfn: u64,
    pub kind: AccessKind,
    pub source: AccessSource,
    /// Rank of the frame's first touch in the interval: 0 for the first frame the tracer saw,
    /// frames without a tracer event (known only from the dirty log or DMA) after all traced
    /// ones, in gfn order. An access log holds each rank `0..len` once, in rank order.
    pub first_touch: u32,
}

/// The pages of one checkpoint, as the recorder hands them over: `gfns` ascending and unique,
/// `contents` holds `gfns.len() * PAGE_SIZE` bytes, page i's contents at `i * PAGE_SIZE`.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointPages<'a> {
    pub gfns: &'a [u64],
    pub contents: &'a [u8],
}

/// What [`crate::RunWriter::write_checkpoint`] did with the pages it was given.
/// `stored_pages + zero_pages + dedup_pages` is the number of pages handed over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    /// Pages whose contents were new to the run and were appended to pages.bin.
    pub stored_pages: u64,
    /// Pages that were all zero (not stored).
    pub zero_pages: u64,
    /// Non-zero pages whose contents were already in pages.bin (or earlier in this checkpoint).
    pub dedup_pages: u64,
    /// Bytes added to the run directory: pages.bin growth plus the checkpoint's files, except
    /// the intervals file that records this number and the manifest.
    pub bytes_written: u64,
    /// Pages of the interval's event data the writer held by reference (not counted above).
    pub event_pages: u64,
    /// Of `event_pages`, those whose contents were new to the run and were appended.
    pub event_stored_pages: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_names_first_differing_register() {
        let a = GeneralRegs::from_values(std::array::from_fn(|i| i as u64));
        let mut b = a;
        assert_eq!(a.diff(&b), None);
        b.r9 = 100;
        b.rflags = 7;
        assert_eq!(a.diff(&b), Some(("r9", 9, 100)));
        assert_eq!(GeneralRegs::from_values(a.values()), a);
    }
}
