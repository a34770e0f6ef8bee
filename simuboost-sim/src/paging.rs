//! Guest RAM as the simulator sees it, and a 4-level x86-64 page walk over it.

use simuboost_abi::PAGE_SIZE;

/// Guest RAM: the shared memfd mapping, guest physical 0 at `base`.
#[derive(Clone, Copy)]
pub struct Ram {
    base: *mut u8,
    bytes: u64,
}

impl Ram {
    /// # Safety
    /// `base` must point at a mapping of `bytes` bytes that stays mapped for the process's life.
    pub unsafe fn new(base: *mut u8, bytes: u64) -> Ram {
        Ram { base, bytes }
    }

    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Number of frames.
    pub fn frames(&self) -> u64 {
        self.bytes / PAGE_SIZE
    }

    /// Host address of guest physical 0.
    pub fn base(&self) -> *mut u8 {
        self.base
    }

    /// Whether `[gpa, gpa + len)` is RAM.
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        gpa.checked_add(len).is_some_and(|end| end <= self.bytes)
    }

    /// Reads the 8-byte entry at `gpa` (8-aligned), if it is RAM.
    pub fn read_u64(&self, gpa: u64) -> Option<u64> {
        if !self.contains(gpa, 8) || !gpa.is_multiple_of(8) {
            return None;
        }
        // SAFETY: [gpa, gpa + 8) lies inside the mapping and is aligned; the guest is not running
        // concurrently (unicorn runs on this thread).
        Some(unsafe { std::ptr::read_volatile(self.base.add(gpa as usize).cast::<u64>()) })
    }

    /// Writes the 8-byte entry at `gpa` (8-aligned), if it is RAM.
    pub fn write_u64(&self, gpa: u64, value: u64) {
        if self.contains(gpa, 8) && gpa.is_multiple_of(8) {
            // SAFETY: as in read_u64.
            unsafe { std::ptr::write_volatile(self.base.add(gpa as usize).cast::<u64>(), value) }
        }
    }

    /// The bytes `[gpa, gpa + len)`, if RAM.
    pub fn slice(&self, gpa: u64, len: u64) -> Option<&[u8]> {
        if !self.contains(gpa, len) {
            return None;
        }
        // SAFETY: the range lies inside the mapping; callers only read it while the guest is
        // stopped or from its own thread.
        Some(unsafe { std::slice::from_raw_parts(self.base.add(gpa as usize), len as usize) })
    }
}

const P: u64 = 1 << 0;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const PS: u64 = 1 << 7;
const NX: u64 = 1 << 63;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// How an access uses memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Data read.
    Read,
    /// Data write.
    Write,
    /// Instruction fetch.
    Fetch,
}

/// The paging controls a walk depends on.
#[derive(Clone, Copy, Debug)]
pub struct Controls {
    /// CR3 (the PML4's address in bits 12..52).
    pub cr3: u64,
    /// CR0.WP: supervisor writes honour read-only pages.
    pub wp: bool,
    /// EFER.NXE: the NX bit is honoured.
    pub nxe: bool,
    /// Current privilege level 3.
    pub user: bool,
}

/// A successful translation.
#[derive(Clone, Copy, Debug)]
pub struct Translation {
    /// Guest physical address of the 4 KiB page.
    pub page: u64,
    /// Writes allowed (for this privilege level).
    pub writable: bool,
    /// Fetches allowed.
    pub executable: bool,
    /// Frames of the tables read by the walk, root first.
    pub tables: [u64; 4],
    /// How many of `tables` are valid.
    pub levels: usize,
}

/// A failed translation: the page-fault error code's P, W, U and I bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The page-fault error code.
    pub error_code: u64,
}

/// Walks the page tables for `vaddr`. With `update`, sets the accessed bit of every entry used
/// and the dirty bit of the leaf for a write, as the CPU does (only on success).
pub fn walk(
    ram: &Ram,
    ctl: Controls,
    vaddr: u64,
    access: Access,
    update: bool,
) -> Result<Translation, Fault> {
    let code = |present: bool| Fault {
        error_code: u64::from(present)
            | (u64::from(access == Access::Write) << 1)
            | (u64::from(ctl.user) << 2)
            | (u64::from(access == Access::Fetch && ctl.nxe) << 4),
    };
    let mut table = ctl.cr3 & ADDR;
    let mut tables = [0u64; 4];
    let mut entries = [0u64; 4];
    let (mut writable, mut user, mut nx) = (true, true, false);
    let mut level = 0;
    let page = loop {
        let shift = 39 - 9 * level as u32;
        let index = (vaddr >> shift) & 0x1ff;
        tables[level] = table / PAGE_SIZE;
        let entry_gpa = table + index * 8;
        let entry = ram.read_u64(entry_gpa).ok_or(code(false))?;
        if entry & P == 0 {
            return Err(code(false));
        }
        entries[level] = entry_gpa;
        writable &= entry & RW != 0;
        user &= entry & US != 0;
        nx |= entry & NX != 0;
        // A large page at the PDPT (1 GiB) or PD (2 MiB) level, or a PT entry.
        if level == 3 || (level >= 1 && entry & PS != 0) {
            let page_mask = (1u64 << shift) - 1;
            let base = entry & ADDR & !page_mask;
            break base | (vaddr & page_mask & !(PAGE_SIZE - 1));
        }
        table = entry & ADDR;
        level += 1;
    };
    let levels = level + 1;
    if ctl.user && !user {
        return Err(code(true));
    }
    let write_ok = writable || (!ctl.user && !ctl.wp);
    let exec_ok = !(ctl.nxe && nx);
    match access {
        Access::Write if !write_ok => return Err(code(true)),
        Access::Fetch if !exec_ok => return Err(code(true)),
        _ => {}
    }
    if update {
        for (i, &gpa) in entries[..levels].iter().enumerate() {
            let Some(entry) = ram.read_u64(gpa) else {
                continue;
            };
            let mut new = entry | A;
            if i == levels - 1 && access == Access::Write {
                new |= D;
            }
            if new != entry {
                ram.write_u64(gpa, new);
            }
        }
    }
    Ok(Translation {
        page,
        writable: write_ok,
        executable: exec_ok,
        tables,
        levels,
    })
}
