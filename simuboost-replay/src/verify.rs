//! Verification of a replayed interval against the next checkpoint.
//!
//! The replay's final state must equal checkpoint N+1:
//! - the vCPU: general registers, RIP and RFLAGS (each named on a mismatch), then the system
//!   registers, the XSAVE area and XCR0 as blobs. MSRs are not compared: they include the TSC,
//!   which keeps counting while the VM is paused.
//! - memory: every page the replay had resident (it may have read or written them) and every
//!   page the recording wrote during the interval. A page the replay never touched still holds
//!   its state at N, so it is compared through the page maps without being read.
//!
//! Page-table frames are compared with the accessed and dirty bits (5 and 6) of every entry
//! masked: KVM sets them while walking the guest's tables (and the recorder clears them at every
//! boundary when tracing); the guest never reads them.

use std::collections::HashMap;

use simuboost_abi::pte::{ACCESSED_DIRTY, ADDRESS_MASK};
use simuboost_format::{page_hash, FormatError, GeneralRegs, PageRow, VcpuState, PAGE_SIZE};
use simuboost_vmm::persist::Persist;
use simuboost_vmm::vstate::memory::{host_region, GuestMemory};
use simuboost_vmm::vstate::vcpu::VcpuSnapshot;

pub use simuboost_report::replay::Divergence;

use crate::restore::{InstalledFrames, PageSource};

const PAGE: u64 = PAGE_SIZE as u64;

/// What verification found.
pub struct Verification {
    /// Pages compared.
    pub pages_checked: u64,
    /// The first divergence, if any.
    pub divergence: Option<Divergence>,
}

/// Compares the replayed vCPU's registers with checkpoint N+1's: the general registers (each
/// named on a mismatch), then the system registers, XSAVE area and XCRs as KVM saved them.
/// MSRs are not compared: they include the TSC.
pub fn verify_vcpu(
    replayed: &VcpuSnapshot,
    expected: &VcpuState,
    end_exit: u64,
) -> Option<Divergence> {
    let saved = replayed.save();
    if let Some(d) = verify_general_regs(&saved.regs, &expected.regs, end_exit) {
        return Some(d);
    }
    for (name, replay, recording) in [
        ("system registers (sregs)", &saved.sregs, &expected.sregs),
        ("x87/SSE/AVX state (XSAVE)", &saved.fpu, &expected.fpu),
        (
            "extended control registers (XCRs)",
            &saved.xcrs,
            &expected.xcrs,
        ),
    ] {
        if replay != recording {
            let mut d = Divergence::new(
                end_exit,
                "register",
                format!("the {name} differ from the recording"),
            );
            d.register = Some(name.to_string());
            return Some(d);
        }
    }
    None
}

/// Compares general registers, naming the first that differs.
pub fn verify_general_regs(
    replayed: &GeneralRegs,
    expected: &GeneralRegs,
    end_exit: u64,
) -> Option<Divergence> {
    let (name, replay, recording) = replayed.diff(expected)?;
    let mut d = Divergence::new(
        end_exit,
        "register",
        format!("register {name} is {replay:#x} after the replay, {recording:#x} in the recording"),
    );
    d.register = Some(name.to_string());
    Some(d)
}

/// Compares guest memory after the replay with checkpoint N+1: every frame that was resident
/// in the replay or written in the recorded interval. `expected_pages` is checkpoint N+1's page
/// table (slot and hash `None` for a zero page); every other page is as in `source` (the
/// state at N). Page-table frames (walked from `cr3`) are compared with their accessed/dirty
/// bits masked.
pub fn verify_memory(
    memory: &GuestMemory,
    cr3: u64,
    source: &PageSource,
    installed: &InstalledFrames,
    expected_pages: &[PageRow],
    end_exit: u64,
) -> Result<Verification, FormatError> {
    let (base, size) = host_region(memory);
    let frames = size / PAGE;
    let tables = page_table_frames(cr3, source, frames)?;
    let zero_hash = page_hash(&[0u8; PAGE_SIZE]);
    let at_next: HashMap<u64, Option<(u64, u128)>> = expected_pages
        .iter()
        .map(|row| (row.gfn, row.entry()))
        .collect();

    let mut scratch = vec![0u8; PAGE_SIZE];
    // The hash of `gfn`'s contents in a checkpoint (given by slot/hash), masked if a table.
    let expected_hash = |gfn: u64,
                         entry: Option<(u64, u128)>,
                         scratch: &mut Vec<u8>|
     -> Result<u128, FormatError> {
        match entry {
            None => Ok(zero_hash),
            Some((_, hash)) if !tables.contains(&gfn) => Ok(hash),
            Some((slot, hash)) => {
                source.store.read_page_verified(slot, hash, gfn, scratch)?;
                Ok(masked_hash(scratch))
            }
        }
    };
    let next_entry = |gfn: u64| -> Result<Option<(u64, u128)>, FormatError> {
        match at_next.get(&gfn) {
            Some(&entry) => Ok(entry),
            None => source.entry(gfn),
        }
    };

    let mut checked = 0u64;
    let mut differing = 0u64;
    let mut first: Option<(u64, bool)> = None;
    let mut candidates: Vec<u64> = installed.iter().collect();
    candidates.extend(at_next.keys().copied().filter(|&g| !installed.contains(g)));
    candidates.sort_unstable();
    for gfn in candidates {
        if gfn >= frames {
            continue;
        }
        checked += 1;
        let want = expected_hash(gfn, next_entry(gfn)?, &mut scratch)?;
        let resident = installed.contains(gfn);
        let have = if resident {
            // SAFETY: the frame is installed (resident), lies inside guest RAM, and the vCPU is
            // stopped, so nothing writes it while it is read.
            let page =
                unsafe { std::slice::from_raw_parts(base.add((gfn * PAGE) as usize), PAGE_SIZE) };
            if tables.contains(&gfn) {
                masked_hash(page)
            } else {
                page_hash(page)
            }
        } else {
            // Never touched by the replay: still its state at N.
            expected_hash(gfn, source.entry(gfn)?, &mut scratch)?
        };
        if have != want {
            differing += 1;
            if first.is_none() {
                first = Some((gfn, resident));
            }
        }
    }
    let divergence = first.map(|(gfn, resident)| {
        let what = if resident {
            format!("guest frame {gfn:#x} differs from the recording after the replay")
        } else {
            format!(
                "guest frame {gfn:#x} was written during the recording but not touched by the \
                 replay"
            )
        };
        let mut d = Divergence::new(
            end_exit,
            "memory",
            format!("{what} ({differing} differing pages in all)"),
        );
        d.gfn = Some(gfn);
        d.differing_pages = Some(differing);
        d
    });
    Ok(Verification {
        pages_checked: checked,
        divergence,
    })
}

/// xxh3 of a page-table page with the accessed and dirty bits of every entry cleared.
fn masked_hash(page: &[u8]) -> u128 {
    let mut copy = [0u8; PAGE_SIZE];
    for (out, entry) in copy.chunks_exact_mut(8).zip(page.chunks_exact(8)) {
        let mut word = [0u8; 8];
        word.copy_from_slice(entry);
        out.copy_from_slice(&(u64::from_le_bytes(word) & !ACCESSED_DIRTY).to_le_bytes());
    }
    page_hash(&copy)
}

/// The frames of the guest's page tables (every level) reachable from `cr3`, read from the
/// checkpoint in `source`. Large pages end the walk.
fn page_table_frames(
    cr3: u64,
    source: &PageSource,
    frames: u64,
) -> Result<std::collections::HashSet<u64>, FormatError> {
    const PRESENT: u64 = 1;
    const LARGE: u64 = 1 << 7;
    let mut tables = std::collections::HashSet::new();
    let mut level = vec![(cr3 & ADDRESS_MASK) / PAGE];
    let mut page = vec![0u8; PAGE_SIZE];
    // PML4 (level 4) down to the page tables (level 1).
    for depth in (1..=4).rev() {
        let mut next = Vec::new();
        for gfn in level {
            if gfn >= frames || !tables.insert(gfn) {
                continue;
            }
            let Some((slot, hash)) = source.entry(gfn)? else {
                continue;
            };
            if depth == 1 {
                continue;
            }
            source
                .store
                .read_page_verified(slot, hash, gfn, &mut page)?;
            for entry in page.chunks_exact(8) {
                let mut word = [0u8; 8];
                word.copy_from_slice(entry);
                let e = u64::from_le_bytes(word);
                if e & PRESENT == 0 || (depth < 4 && e & LARGE != 0) {
                    continue;
                }
                next.push((e & ADDRESS_MASK) / PAGE);
            }
        }
        level = next;
    }
    Ok(tables)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_hash_ignores_only_accessed_and_dirty_bits() {
        let mut table = [0u8; PAGE_SIZE];
        table[..8].copy_from_slice(&0x1234_5007u64.to_le_bytes());
        let clean = masked_hash(&table);
        table[..8].copy_from_slice(&(0x1234_5007u64 | ACCESSED_DIRTY).to_le_bytes());
        assert_eq!(masked_hash(&table), clean);
        table[..8].copy_from_slice(&0x1234_6007u64.to_le_bytes());
        assert_ne!(masked_hash(&table), clean);
    }
}
