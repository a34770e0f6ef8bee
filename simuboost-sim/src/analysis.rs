//! What the simulator observes: the exact instruction count and the exact set of frames the
//! interval accessed, as the first two implementations of [`Analysis`].
//!
//! Neither needs a per-instruction or per-access hook:
//! - The counter runs at block entry (unicorn's block hook) and adds the block's instruction
//!   count, decoded once per distinct block with iced-x86. A stop inside a block (the doorbell
//!   store) is corrected by decoding from the block's start to the stopping instruction.
//! - The working set uses unicorn's virtual-TLB mode: every TLB fill calls the simulator, which
//!   walks the guest's page tables itself ([`crate::paging`]). A fresh TLB at the start means
//!   every frame's first access fills; a fill grants only the access kinds already seen on that
//!   frame plus the current one, so the first write to a frame only read so far, or the first
//!   fetch, fills again and is seen too.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use iced_x86::{Decoder, DecoderOptions};
use simuboost_abi::PAGE_SIZE;
use simuboost_sim_proto::{AccessKind, AccessedFrame, Final};

use crate::paging::{self, Access, Controls, Ram};

/// A basic block as the hooks see it: decoded once, then cached.
#[derive(Clone, Copy, Debug, Default)]
pub struct BlockInfo {
    /// Virtual address of the first instruction.
    pub vaddr: u64,
    /// Bytes of code.
    pub size: u32,
    /// Instructions.
    pub icount: u32,
    /// The (at most two) pages the block's instructions start in, in order: virtual page,
    /// guest-physical page and the number of instructions whose first byte lies in it. Only
    /// `pages[..parts]` are valid.
    pub pages: [BlockPage; 2],
    /// Valid entries of `pages`.
    pub parts: u8,
}

/// One page of a block's code (see [`BlockInfo::pages`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct BlockPage {
    /// Virtual page address.
    pub vpage: u64,
    /// Guest-physical page address.
    pub ppage: u64,
    /// Instructions starting in it.
    pub instructions: u32,
}

impl BlockInfo {
    /// The parts actually used.
    pub fn parts(&self) -> &[BlockPage] {
        &self.pages[..usize::from(self.parts).min(2)]
    }

    /// Guest-physical address of the code byte at virtual `vaddr` inside the block.
    #[inline]
    pub fn paddr(&self, vaddr: u64) -> u64 {
        let vpage = vaddr & !(PAGE_SIZE - 1);
        let page = self
            .parts()
            .iter()
            .find(|p| p.vpage == vpage)
            .map_or(vpage, |p| p.ppage);
        page | (vaddr & (PAGE_SIZE - 1))
    }
}

/// One memory access by a guest instruction, to RAM (the doorbell's MMIO store is not one).
#[derive(Clone, Copy, Debug)]
pub struct MemAccess {
    /// Instructions executed in the interval up to and including the accessing one: exact when
    /// an analysis asks for [`Needs::instructions`], else the count at the block's entry.
    pub icount: u64,
    /// The accessing instruction: exact with [`Needs::instructions`], else the block's start.
    pub rip: u64,
    /// Start of the basic block executing.
    pub block: u64,
    /// Virtual address (see [`crate::exits`]: recovered from the TLB fill that mapped the
    /// frame last).
    pub vaddr: u64,
    /// Guest-physical address.
    pub paddr: u64,
    /// Bytes.
    pub size: u8,
    /// Read, write or fetch.
    pub kind: AccessKind,
}

/// The hooks an analysis needs; the simulator installs the union (each costs speed, see
/// docs/ANALYSES.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// [`Analysis::on_block`] (a block hook).
    pub blocks: bool,
    /// [`Analysis::on_access`] for data reads and writes (memory hooks, a TLB hook).
    pub accesses: bool,
    /// [`Analysis::on_access`] for every instruction fetch, and an exact `rip`/`icount` in
    /// every access. No per-instruction hook: the fetches come from the decoded block, issued
    /// in order before the first data access of each instruction, and the accessing
    /// instruction is the RIP unicorn keeps exact in a memory hook.
    pub instructions: bool,
}

impl Needs {
    /// Both sets of hooks.
    pub fn union(self, other: Needs) -> Needs {
        Needs {
            blocks: self.blocks || other.blocks,
            accesses: self.accesses || other.accesses,
            instructions: self.instructions || other.instructions,
        }
    }
}

/// A pluggable observer of the simulated interval. The simulator calls the hooks it needs from
/// unicorn's callbacks (see [`Analysis::needs`]); `builtin` holds the analyses of issue 11 and
/// docs/ANALYSES.md shows how to add one.
pub trait Analysis {
    /// The hooks this analysis needs.
    fn needs(&self) -> Needs {
        Needs::default()
    }
    /// A block starts executing.
    fn on_block(&mut self, _block: &BlockInfo) {}
    /// A memory access (see [`Needs`] for which ones arrive).
    fn on_access(&mut self, _access: &MemAccess) {}
    /// A TLB fill for an `access` of guest frame `gfn` (`None`: not RAM) whose walk read the
    /// page-table frames `tables`.
    fn on_fill(&mut self, _gfn: Option<u64>, _access: Access, _tables: &[u64]) {}
    /// The run stopped inside the last block entered, after `executed` of its instructions
    /// (the doorbell store): undo what `on_block` counted for the rest.
    fn on_stop(&mut self, _block: &BlockInfo, _executed: u32) {}
    /// The guest is about to leave (an exit): send whatever is buffered.
    fn flush(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// Forget everything observed so far (after the entry stub).
    fn reset(&mut self) {}
    /// Adds the results to the interval's outcome.
    fn finish(&mut self, _out: &mut Final) {}
}

/// Multiplicative hashing for block addresses (SipHash is several times slower here, and the
/// keys are not attacker-controlled).
#[derive(Default)]
pub struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (n ^ (n >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

pub type AddrMap<V> = HashMap<u64, V, BuildHasherDefault<AddrHasher>>;

/// Controls for reading code: no permission checks, no accessed bits (unicorn already fetched it).
fn code_controls(cr3: u64) -> Controls {
    Controls {
        cr3,
        wp: false,
        nxe: false,
        user: false,
    }
}

/// Copies `len` bytes of code at virtual `vaddr` out of RAM, or `None` if some page is not RAM.
pub fn code_bytes(ram: &Ram, cr3: u64, vaddr: u64, len: u64) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(len as usize);
    let mut at = vaddr;
    let end = vaddr.checked_add(len)?;
    while at < end {
        let page_off = at % PAGE_SIZE;
        let chunk = (PAGE_SIZE - page_off).min(end - at);
        let t = paging::walk(ram, code_controls(cr3), at, Access::Fetch, false).ok()?;
        out.extend_from_slice(ram.slice(t.page + page_off, chunk)?);
        at += chunk;
    }
    Some(out)
}

/// The exact instruction count.
#[derive(Default)]
pub struct InstructionCounter {
    /// Each block seen, by start address, with its instructions' lengths in bytes, in order
    /// (for fetch rows without a per-instruction hook).
    blocks: AddrMap<(BlockInfo, Box<[u8]>)>,
    /// Frames the cached blocks were decoded from (a device write to one drops the cache).
    code_gfns: HashSet<u64>,
    /// Instructions of every block entered (the last one whole).
    total: u64,
    /// The block entered last.
    last: Option<BlockInfo>,
}

impl InstructionCounter {
    /// The lengths of the instructions of the cached block at `vaddr`, in order.
    #[inline]
    pub fn lengths(&self, vaddr: u64) -> Option<&[u8]> {
        self.blocks.get(&vaddr).map(|(_, l)| &l[..])
    }

    /// The block at `vaddr`, if decoded before.
    #[inline]
    pub fn cached(&self, vaddr: u64) -> Option<BlockInfo> {
        self.blocks.get(&vaddr).map(|(info, _)| *info)
    }

    /// Decodes the block at `vaddr` of `size` bytes and caches it.
    pub fn decode(&mut self, ram: &Ram, cr3: u64, vaddr: u64, size: u32) -> Option<BlockInfo> {
        let code = code_bytes(ram, cr3, vaddr, u64::from(size))?;
        let mut info = BlockInfo {
            vaddr,
            size,
            ..BlockInfo::default()
        };
        let mut decoder = Decoder::with_ip(64, &code, vaddr, DecoderOptions::NONE);
        let mut lengths = Vec::new();
        while decoder.can_decode() {
            let insn = decoder.decode();
            // x86 instructions are at most 15 bytes.
            lengths.push(insn.len() as u8);
            let vpage = insn.ip() & !(PAGE_SIZE - 1);
            info.icount += 1;
            let parts = usize::from(info.parts);
            match info.pages[..parts].iter_mut().find(|p| p.vpage == vpage) {
                Some(p) => p.instructions += 1,
                None if parts < 2 => {
                    let t =
                        paging::walk(ram, code_controls(cr3), vpage, Access::Fetch, false).ok()?;
                    self.code_gfns.insert(t.page / PAGE_SIZE);
                    info.pages[parts] = BlockPage {
                        vpage,
                        ppage: t.page,
                        instructions: 1,
                    };
                    info.parts += 1;
                }
                // A block of at most a few hundred bytes spans at most two pages.
                None => return None,
            }
        }
        // The block's last byte may lie on a page no instruction starts in.
        let last = vaddr + u64::from(size.max(1)) - 1;
        if let Ok(t) = paging::walk(ram, code_controls(cr3), last, Access::Fetch, false) {
            self.code_gfns.insert(t.page / PAGE_SIZE);
        }
        self.blocks
            .insert(vaddr, (info, lengths.into_boxed_slice()));
        Some(info)
    }

    /// Instructions executed, the last block counted whole.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The run stopped at the instruction at `rip`, which executed, inside the last block:
    /// replaces the last block's whole count by the instructions up to and including it.
    /// Returns the block and how many of its instructions executed, or `None` if `rip` is not
    /// an instruction boundary of that block.
    pub fn stopped_at(&mut self, ram: &Ram, cr3: u64, rip: u64) -> Option<(BlockInfo, u32)> {
        let block = self.last.take()?;
        let len = rip.checked_sub(block.vaddr)?;
        let code = code_bytes(ram, cr3, block.vaddr, len + 15)?;
        let mut decoder = Decoder::with_ip(64, &code, block.vaddr, DecoderOptions::NONE);
        let mut n = 0u32;
        while decoder.can_decode() {
            let insn = decoder.decode();
            n += 1;
            if insn.ip() == rip {
                self.total = self.total - u64::from(block.icount) + u64::from(n);
                return Some((block, n));
            }
            if insn.ip() > rip {
                break;
            }
        }
        None
    }

    /// Whether a cached block was decoded from frame `gfn`.
    pub fn holds_code(&self, gfn: u64) -> bool {
        self.code_gfns.contains(&gfn)
    }

    /// Drops cached blocks if a device write touched a frame they were decoded from.
    pub fn invalidate(&mut self, gfns: impl Iterator<Item = u64>) {
        if !self.code_gfns.is_empty() && gfns.into_iter().any(|g| self.code_gfns.contains(&g)) {
            self.blocks.clear();
            self.code_gfns.clear();
        }
    }
}

impl Analysis for InstructionCounter {
    #[inline]
    fn on_block(&mut self, block: &BlockInfo) {
        self.total += u64::from(block.icount);
        self.last = Some(*block);
    }
    fn reset(&mut self) {
        self.total = 0;
        self.last = None;
    }
    fn finish(&mut self, out: &mut Final) {
        out.instructions = self.total;
    }
}

const SEEN_READ: u8 = 1;
const SEEN_WRITE: u8 = 2;
const SEEN_FETCH: u8 = 4;
const SEEN_TABLE: u8 = 8;

fn bit(access: Access) -> u8 {
    match access {
        Access::Read => SEEN_READ,
        Access::Write => SEEN_WRITE,
        Access::Fetch => SEEN_FETCH,
    }
}

/// The exact set of frames accessed, by kind, and the page-table frames walked.
pub struct WorkingSet {
    /// Per frame: `SEEN_*` bits.
    seen: Vec<u8>,
}

impl WorkingSet {
    /// For a guest of `frames` frames.
    pub fn new(frames: u64) -> WorkingSet {
        WorkingSet {
            seen: vec![0; frames as usize],
        }
    }

    /// The access kinds seen on `gfn` so far (`SEEN_*` bits without the table bit), as unicorn
    /// permissions to grant a TLB entry: read 1, write 2, exec 4 (the same bit values).
    pub fn seen_kinds(&self, gfn: u64) -> u8 {
        self.seen.get(gfn as usize).map_or(0, |s| s & 7)
    }

    /// Whether instructions were fetched from `gfn`.
    pub fn fetched(&self, gfn: u64) -> bool {
        self.seen_kinds(gfn) & SEEN_FETCH != 0
    }
}

impl Analysis for WorkingSet {
    fn on_fill(&mut self, gfn: Option<u64>, access: Access, tables: &[u64]) {
        for &t in tables {
            if let Some(s) = self.seen.get_mut(t as usize) {
                *s |= SEEN_TABLE;
            }
        }
        if let Some(s) = gfn.and_then(|g| self.seen.get_mut(g as usize)) {
            *s |= bit(access);
        }
    }
    fn reset(&mut self) {
        self.seen.fill(0);
    }
    fn finish(&mut self, out: &mut Final) {
        out.accessed = self
            .seen
            .iter()
            .enumerate()
            .filter(|(_, &s)| s & 7 != 0)
            .map(|(gfn, &s)| AccessedFrame {
                gfn: gfn as u64,
                read: s & SEEN_READ != 0,
                write: s & SEEN_WRITE != 0,
                fetch: s & SEEN_FETCH != 0,
            })
            .collect();
        out.page_table_frames = self
            .seen
            .iter()
            .enumerate()
            .filter(|(_, &s)| s & SEEN_TABLE != 0)
            .map(|(gfn, _)| gfn as u64)
            .collect();
    }
}

/// The analyses of one run: the two built in, concrete for speed, and any others.
#[derive(Default)]
pub struct Analyses {
    /// Exact instruction count, if asked for.
    pub counter: Option<InstructionCounter>,
    /// Exact working set, if asked for.
    pub working_set: Option<WorkingSet>,
    /// Further analyses.
    pub extra: Vec<Box<dyn Analysis>>,
}

impl Analyses {
    /// Calls `f` on every analysis.
    pub fn each(&mut self, mut f: impl FnMut(&mut dyn Analysis)) {
        if let Some(c) = &mut self.counter {
            f(c);
        }
        if let Some(w) = &mut self.working_set {
            f(w);
        }
        for a in &mut self.extra {
            f(a.as_mut());
        }
    }
}
