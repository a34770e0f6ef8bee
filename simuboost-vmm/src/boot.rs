//! Boot: loads the guest ELF image and builds the 64-bit boot structures (GDT, TSS, IDT,
//! identity-mapped page tables) described in `simuboost_abi::layout`.

use goblin::elf::{header, program_header::PT_LOAD, Elf};
use vm_memory::{Bytes, GuestAddress};

use simuboost_abi::{
    layout, selectors, DOORBELL_GPA, EXCEPTION_STUBS_SECTION, EXCEPTION_STUB_SIZE, PAGE_SIZE,
};

use crate::vstate::memory::GuestMemory;
use crate::vstate::vcpu::TSS_LIMIT;

// Pre-set accessed/dirty bits (where used): the CPU then never writes the tables, which keeps
// page-table frames out of every interval's dirty set.
use simuboost_abi::pte::{
    ACCESSED as PTE_ACCESSED, DIRTY as PTE_DIRTY, HUGE as PTE_HUGE, PRESENT as PTE_PRESENT,
    USER as PTE_USER, WRITABLE as PTE_WRITABLE,
};
const TABLE_FLAGS: u64 = PTE_PRESENT | PTE_WRITABLE | PTE_USER | PTE_ACCESSED;
const HUGE_PAGE: u64 = 2 << 20;

/// Errors loading the guest.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The image is not an ELF file.
    #[error("the guest image is not a valid ELF file: {0}")]
    NotElf(#[source] goblin::error::Error),
    /// The ELF file is not a 64-bit x86 executable.
    #[error(
        "the guest image is not a 64-bit x86-64 executable (ELF machine {machine}, class {class})"
    )]
    WrongKind {
        /// e_machine.
        machine: u16,
        /// ELF class (1 = 32-bit, 2 = 64-bit).
        class: u8,
    },
    /// A segment does not fit in guest RAM above the boot structures.
    #[error(
        "guest image segment at {addr:#x}..{end:#x} does not fit in guest RAM \
         ({image_base:#x}..{mem_bytes:#x})",
        image_base = layout::IMAGE_BASE
    )]
    SegmentOutOfRange {
        /// Segment start.
        addr: u64,
        /// Segment end.
        end: u64,
        /// RAM size.
        mem_bytes: u64,
    },
    /// A segment's file range lies outside the file.
    #[error("guest image is truncated: a segment's data lies beyond the end of the file")]
    Truncated,
    /// The image lacks the exception stubs the IDT points at.
    #[error("guest image has no `{EXCEPTION_STUBS_SECTION}` section (not a simuboost guest?)")]
    NoExceptionStubs,
    /// Writing guest memory failed.
    #[error("writing guest memory at {addr:#x} failed: {source}")]
    Memory {
        /// Guest address.
        addr: u64,
        /// vm-memory's error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// What the loader learned from the image.
#[derive(Clone, Copy, Debug)]
pub struct LoadedImage {
    /// Entry point (ring 0).
    pub entry: u64,
    /// First page after the image, its stack and the page tables: start of free memory.
    pub free_start: u64,
    /// Where the 4 KiB page tables are, with [`GuestPaging::Small`]: one table per 2 MiB of RAM,
    /// the entry of frame `gfn` at `tables + 8 * gfn`.
    pub page_tables: Option<u64>,
}

fn write(memory: &GuestMemory, addr: u64, bytes: &[u8]) -> Result<(), BootError> {
    memory
        .write_slice(bytes, GuestAddress(addr))
        .map_err(|source| BootError::Memory { addr, source })
}

fn write_u64s(memory: &GuestMemory, addr: u64, values: &[u64]) -> Result<(), BootError> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    write(memory, addr, &bytes)
}

/// Loads the ELF `image` into `memory` and builds the boot structures.
pub fn load(
    memory: &GuestMemory,
    mem_bytes: u64,
    image: &[u8],
    paging: GuestPaging,
) -> Result<LoadedImage, BootError> {
    let elf = Elf::parse(image).map_err(BootError::NotElf)?;
    if elf.header.e_machine != header::EM_X86_64 || !elf.is_64 {
        return Err(BootError::WrongKind {
            machine: elf.header.e_machine,
            class: elf.header.e_ident[header::EI_CLASS],
        });
    }
    let mut image_end = layout::IMAGE_BASE;
    for ph in elf.program_headers.iter().filter(|ph| ph.p_type == PT_LOAD) {
        let addr = ph.p_paddr;
        let end = addr.saturating_add(ph.p_memsz);
        if addr < layout::IMAGE_BASE || end > mem_bytes || ph.p_filesz > ph.p_memsz {
            return Err(BootError::SegmentOutOfRange {
                addr,
                end,
                mem_bytes,
            });
        }
        let data = image
            .get(ph.p_offset as usize..(ph.p_offset + ph.p_filesz) as usize)
            .ok_or(BootError::Truncated)?;
        // Fresh guest memory is zero, so the segment's bss needs no explicit clearing.
        write(memory, addr, data)?;
        image_end = image_end.max(end);
    }
    let stubs = elf
        .section_headers
        .iter()
        .find(|sh| elf.shdr_strtab.get_at(sh.sh_name) == Some(EXCEPTION_STUBS_SECTION))
        .filter(|sh| sh.sh_size >= layout::IDT_ENTRIES * EXCEPTION_STUB_SIZE)
        .ok_or(BootError::NoExceptionStubs)?
        .sh_addr;

    write_gdt(memory)?;
    write_tss(memory)?;
    write_idt(memory, stubs)?;
    let image_end = image_end.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let tables_end = write_page_tables(memory, mem_bytes, paging, image_end)?;
    Ok(LoadedImage {
        entry: elf.entry,
        free_start: tables_end,
        page_tables: (paging == GuestPaging::Small).then_some(image_end),
    })
}

fn write_gdt(memory: &GuestMemory) -> Result<(), BootError> {
    let tss = layout::TSS;
    let tss_low = u64::from(TSS_LIMIT & 0xffff)
        | ((tss & 0xff_ffff) << 16)
        | (0x89 << 40) // present, DPL 0, available 64-bit TSS
        | (u64::from(TSS_LIMIT >> 16) << 48)
        | (((tss >> 24) & 0xff) << 56);
    let tss_high = tss >> 32;
    debug_assert_eq!(selectors::TSS, 5 * 8);
    // Code and data descriptors carry their accessed bit already, as the page tables carry
    // theirs: a CPU sets it on the first load, KVM's emulated `iretq` on PVM does not, and a
    // simulator does, so a pre-set bit keeps the GDT frame identical in all of them.
    write_u64s(
        memory,
        layout::GDT,
        &[
            0,
            0x00af_9b00_0000_ffff, // 0x08 kernel code: present, DPL 0, long mode, accessed
            0x00cf_9300_0000_ffff, // 0x10 kernel data, accessed
            0x00cf_f300_0000_ffff, // 0x18 user data: DPL 3, accessed
            0x00af_fb00_0000_ffff, // 0x20 user code: DPL 3, long mode, accessed
            tss_low,
            tss_high,
        ],
    )
}

fn write_tss(memory: &GuestMemory) -> Result<(), BootError> {
    let mut tss = [0u8; 104];
    // RSP0: the stack the CPU switches to when an exception arrives from ring 3.
    tss[4..12].copy_from_slice(&layout::KERNEL_STACK_TOP.to_le_bytes());
    // I/O map base beyond the limit: no I/O bitmap, ring 3 has no ports.
    tss[102..104].copy_from_slice(&104u16.to_le_bytes());
    write(memory, layout::TSS, &tss)
}

fn write_idt(memory: &GuestMemory, stubs: u64) -> Result<(), BootError> {
    let mut entries = Vec::with_capacity(layout::IDT_ENTRIES as usize * 2);
    for vector in 0..layout::IDT_ENTRIES {
        let handler = stubs + vector * EXCEPTION_STUB_SIZE;
        entries.push(
            (handler & 0xffff)
                | (u64::from(selectors::KERNEL_CODE) << 16)
                | (0x8e << 40) // present, DPL 0, 64-bit interrupt gate
                | (((handler >> 16) & 0xffff) << 48),
        );
        entries.push(handler >> 32);
    }
    write_u64s(memory, layout::IDT, &entries)
}

/// How the guest's identity map maps RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestPaging {
    /// 2 MiB pages with pre-set dirty bits: the fewest faults, for plain runs.
    Huge,
    /// 4 KiB pages whose accessed and dirty bits start clear: for recording. Under shadow
    /// paging KVM maps a page writable on a *read* fault when the guest's entry is already
    /// dirty, and a writable mapping counts as dirty in KVM's dirty log; with clean 4 KiB
    /// entries only pages the guest really wrote are. KVM also prefetches mappings of
    /// neighbouring entries, but only of accessed ones, so with clear accessed bits every first
    /// access faults. (KVM sets the bits on the guest's first access and write, which dirties
    /// the page-table frame.)
    Small,
}

/// Writes the identity map of RAM; the 4 KiB page tables (for [`GuestPaging::Small`]) go at
/// `tables_at`. Returns the end of what it wrote there.
fn write_page_tables(
    memory: &GuestMemory,
    mem_bytes: u64,
    paging: GuestPaging,
    tables_at: u64,
) -> Result<u64, BootError> {
    write_u64s(memory, layout::PML4, &[layout::PDPT | TABLE_FLAGS])?;
    let gigabytes = mem_bytes.div_ceil(1 << 30);
    let mut pdpt: Vec<u64> = (0..gigabytes)
        .map(|i| (layout::PD_BASE + i * PAGE_SIZE) | TABLE_FLAGS)
        .collect();
    // The doorbell: one 2 MiB page at DOORBELL_GPA, in the GiB right after the largest RAM.
    pdpt.resize(layout::PD_COUNT as usize, 0);
    pdpt.push(layout::DOORBELL_PD | TABLE_FLAGS);
    write_u64s(memory, layout::PDPT, &pdpt)?;
    write_u64s(
        memory,
        layout::DOORBELL_PD,
        &[DOORBELL_GPA | TABLE_FLAGS | PTE_DIRTY | PTE_HUGE],
    )?;
    let huge_pages = mem_bytes.div_ceil(HUGE_PAGE);
    match paging {
        GuestPaging::Huge => {
            let pd: Vec<u64> = (0..huge_pages)
                .map(|i| (i * HUGE_PAGE) | TABLE_FLAGS | PTE_DIRTY | PTE_HUGE)
                .collect();
            write_u64s(memory, layout::PD_BASE, &pd)?;
            Ok(tables_at)
        }
        GuestPaging::Small => {
            let pd: Vec<u64> = (0..huge_pages)
                .map(|i| (tables_at + i * PAGE_SIZE) | TABLE_FLAGS)
                .collect();
            write_u64s(memory, layout::PD_BASE, &pd)?;
            // Leaf entries start with clear accessed and dirty bits: KVM prefetches only
            // entries the guest has accessed, so every first access faults (and is traced).
            let frames = mem_bytes / PAGE_SIZE;
            let pt: Vec<u64> = (0..frames)
                .map(|f| (f * PAGE_SIZE) | PTE_PRESENT | PTE_WRITABLE | PTE_USER)
                .collect();
            write_u64s(memory, tables_at, &pt)?;
            Ok(tables_at + huge_pages * PAGE_SIZE)
        }
    }
}
