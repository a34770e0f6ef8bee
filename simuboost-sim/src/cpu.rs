//! The vCPU state in and out of unicorn.
//!
//! Entry order (verified by the prototype): CR4, CR3, EFER (an MSR), CR0; GDTR/IDTR/TR/LDTR and
//! the MSRs through raw structures. Writing CS/SS does not change unicorn's CPL, so the
//! checkpoint's CS:RIP, RFLAGS and SS:RSP are entered through a one-instruction `iretq` stub
//! placed in the doorbell's 2 MiB page (outside RAM, mapped by the guest's own page tables);
//! FS/GS bases and the MSRs are written after it. XMM0-15 and MXCSR are loaded with the GPRs.

use simuboost_abi::{DOORBELL_GPA, PAGE_SIZE};
use simuboost_sim_proto::{CpuState, DescriptorTable, Segment};
use unicorn_engine::{Prot, RegisterX86, Unicorn};

use crate::paging::{self, Access, Controls, Ram};
use crate::SimError;

/// Guest physical (and, through the guest's identity map, virtual) address of the entry stub.
pub const STUB_GPA: u64 = DOORBELL_GPA + PAGE_SIZE;
/// Where the stub's `iretq` frame lies, inside the stub page.
const STUB_FRAME: u64 = STUB_GPA + 0x800;
/// `iretq`.
const IRETQ: [u8; 2] = [0x48, 0xcf];
/// An address the guest never executes (inside the stub page): passed as `until`.
pub const NEVER: u64 = STUB_GPA + 0x100;

const MSR_EFER: u32 = 0xc000_0080;
const MSR_TSC: u32 = 0x10;
const MSR_FS_BASE: u32 = 0xc000_0100;
const MSR_GS_BASE: u32 = 0xc000_0101;

/// unicorn's `uc_x86_mmr`: selector u16 @0, base u64 @8, limit u32 @16, flags u32 @20.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct Mmr {
    selector: u16,
    base: u64,
    limit: u32,
    flags: u32,
}

/// unicorn's `uc_x86_msr`: id u32 @0, value u64 @8.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct Msr {
    id: u32,
    value: u64,
}

fn uc_err(what: &'static str) -> impl FnOnce(unicorn_engine::uc_error) -> SimError {
    move |e| SimError::Unicorn {
        what,
        detail: format!("{e:?}"),
    }
}

fn write_raw<T, D>(uc: &Unicorn<'_, D>, reg: RegisterX86, value: &T) -> Result<(), SimError> {
    // SAFETY: `value` is a live `T` whose layout is the C structure unicorn reads for `reg`
    // (uc_x86_mmr / uc_x86_msr); uc_reg_write reads exactly that many bytes.
    let bytes = unsafe {
        std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>())
    };
    uc.reg_write_long(reg, bytes)
        .map_err(uc_err("write register"))
}

fn read_raw<T: Default, D>(
    uc: &Unicorn<'_, D>,
    reg: RegisterX86,
    value: &mut T,
) -> Result<(), SimError> {
    // SAFETY: `value` is a live, writable `T` with the layout of the C structure unicorn writes
    // for `reg`; the crate's reg_read_long would hand unicorn a too-small buffer for GDTR/IDTR.
    let err = unsafe {
        unicorn_engine::uc_reg_read(uc.get_handle(), reg as i32, (value as *mut T).cast())
    };
    if err == unicorn_engine::uc_error::OK {
        Ok(())
    } else {
        Err(SimError::Unicorn {
            what: "read register",
            detail: format!("{err:?}"),
        })
    }
}

fn write_msr<D>(uc: &Unicorn<'_, D>, id: u32, value: u64) -> Result<(), SimError> {
    write_raw(uc, RegisterX86::MSR, &Msr { id, value })
}

fn read_msr<D>(uc: &Unicorn<'_, D>, id: u32) -> Result<u64, SimError> {
    let mut m = Msr { id, value: 0 };
    read_raw(uc, RegisterX86::MSR, &mut m)?;
    Ok(m.value)
}

/// QEMU's segment-cache flags: the descriptor's high dword (type 8..12, S 12, DPL 13..15, P 15,
/// AVL 20, L 21, D/B 22, G 23).
fn seg_flags(s: &Segment) -> u32 {
    (u32::from(s.type_) & 0xf) << 8
        | u32::from(s.s & 1) << 12
        | u32::from(s.dpl & 3) << 13
        | u32::from(s.present & 1) << 15
        | u32::from(s.avl & 1) << 20
        | u32::from(s.l & 1) << 21
        | u32::from(s.db & 1) << 22
        | u32::from(s.g & 1) << 23
}

fn seg_from_flags(selector: u16, base: u64, limit: u32, flags: u32) -> Segment {
    let bit = |n: u32| ((flags >> n) & 1) as u8;
    Segment {
        base,
        limit,
        selector,
        type_: ((flags >> 8) & 0xf) as u8,
        present: bit(15),
        dpl: ((flags >> 13) & 3) as u8,
        db: bit(22),
        s: bit(12),
        l: bit(21),
        g: bit(23),
        avl: bit(20),
        unusable: u8::from(bit(15) == 0),
    }
}

fn gprs() -> [RegisterX86; 16] {
    use RegisterX86 as R;
    [
        R::RAX,
        R::RBX,
        R::RCX,
        R::RDX,
        R::RSI,
        R::RDI,
        R::RSP,
        R::RBP,
        R::R8,
        R::R9,
        R::R10,
        R::R11,
        R::R12,
        R::R13,
        R::R14,
        R::R15,
    ]
}

fn xmm_registers() -> [RegisterX86; 16] {
    use RegisterX86 as R;
    [
        R::XMM0,
        R::XMM1,
        R::XMM2,
        R::XMM3,
        R::XMM4,
        R::XMM5,
        R::XMM6,
        R::XMM7,
        R::XMM8,
        R::XMM9,
        R::XMM10,
        R::XMM11,
        R::XMM12,
        R::XMM13,
        R::XMM14,
        R::XMM15,
    ]
}

/// Loads XMM0-15 and MXCSR (the guest is compiled with SSE2; CR4.OSFXSR comes with the CRs).
fn write_sse<D>(uc: &mut Unicorn<'_, D>, cpu: &CpuState) -> Result<(), SimError> {
    for (reg, [lo, hi]) in xmm_registers().into_iter().zip(cpu.xmm) {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&lo.to_le_bytes());
        bytes[8..].copy_from_slice(&hi.to_le_bytes());
        uc.reg_write_long(reg, &bytes)
            .map_err(uc_err("write an XMM register"))?;
    }
    uc.reg_write(RegisterX86::MXCSR, u64::from(cpu.mxcsr))
        .map_err(uc_err("write MXCSR"))
}

fn read_sse<D>(uc: &Unicorn<'_, D>) -> Result<([[u64; 2]; 16], u32), SimError> {
    let mut xmm = [[0u64; 2]; 16];
    for (slot, reg) in xmm.iter_mut().zip(xmm_registers()) {
        let bytes = uc
            .reg_read_long(reg)
            .map_err(uc_err("read an XMM register"))?;
        let half = |at: usize| {
            bytes
                .get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes)
        };
        *slot = [half(0), half(8)];
    }
    let mxcsr = uc
        .reg_read(RegisterX86::MXCSR)
        .map_err(uc_err("read MXCSR"))?;
    Ok((xmm, mxcsr as u32))
}

fn gpr_values(c: &CpuState) -> [u64; 16] {
    [
        c.rax, c.rbx, c.rcx, c.rdx, c.rsi, c.rdi, c.rsp, c.rbp, c.r8, c.r9, c.r10, c.r11, c.r12,
        c.r13, c.r14, c.r15,
    ]
}

/// Maps the stub page (call once, before [`enter`]).
pub fn map_stub<D>(uc: &mut Unicorn<'_, D>) -> Result<(), SimError> {
    uc.mem_map(STUB_GPA, PAGE_SIZE, Prot::ALL)
        .map_err(uc_err("map the entry stub"))
}

/// Loads `cpu` into unicorn and runs the entry stub, so that unicorn is at `cpu.rip` in `cpu`'s
/// privilege level. Hooks see the stub execute: reset analyses afterwards.
pub fn enter<D>(
    uc: &mut Unicorn<'_, D>,
    ram: &Ram,
    cpu: &CpuState,
    timeout_us: u64,
) -> Result<(), SimError> {
    use RegisterX86 as R;
    uc.reg_write(R::CR4, cpu.cr4).map_err(uc_err("write CR4"))?;
    uc.reg_write(R::CR3, cpu.cr3).map_err(uc_err("write CR3"))?;
    write_msr(uc, MSR_EFER, cpu.efer)?;
    uc.reg_write(R::CR0, cpu.cr0).map_err(uc_err("write CR0"))?;
    uc.reg_write(R::CR2, cpu.cr2).map_err(uc_err("write CR2"))?;
    write_raw(
        uc,
        R::GDTR,
        &Mmr {
            base: cpu.gdt.base,
            limit: u32::from(cpu.gdt.limit),
            ..Mmr::default()
        },
    )?;
    write_raw(
        uc,
        R::IDTR,
        &Mmr {
            base: cpu.idt.base,
            limit: u32::from(cpu.idt.limit),
            ..Mmr::default()
        },
    )?;
    for (reg, seg) in [(R::TR, &cpu.tr), (R::LDTR, &cpu.ldt)] {
        write_raw(
            uc,
            reg,
            &Mmr {
                selector: seg.selector,
                base: seg.base,
                limit: seg.limit,
                flags: seg_flags(seg),
            },
        )?;
    }
    for (reg, value) in gprs().into_iter().zip(gpr_values(cpu)) {
        uc.reg_write(reg, value).map_err(uc_err("write a GPR"))?;
    }
    write_sse(uc, cpu)?;

    // The stub: iretq with the checkpoint's frame.
    let mut page = vec![0u8; PAGE_SIZE as usize];
    page[..2].copy_from_slice(&IRETQ);
    let frame = [
        cpu.rip,
        u64::from(cpu.cs.selector),
        cpu.rflags,
        cpu.rsp,
        u64::from(cpu.ss.selector),
    ];
    let off = (STUB_FRAME - STUB_GPA) as usize;
    for (i, v) in frame.iter().enumerate() {
        page[off + i * 8..off + i * 8 + 8].copy_from_slice(&v.to_le_bytes());
    }
    uc.mem_write(STUB_GPA, &page)
        .map_err(uc_err("write the entry stub"))?;
    uc.reg_write(R::RSP, STUB_FRAME)
        .map_err(uc_err("write RSP"))?;
    // The iretq sets the accessed bit of the CS and SS descriptors in the GDT; KVM's state
    // restore does not. Put the descriptors back afterwards so memory matches the recording.
    let descriptors: Vec<(u64, u64)> = [cpu.cs.selector, cpu.ss.selector]
        .iter()
        .filter_map(|&sel| descriptor_gpa(ram, cpu.cr3, cpu.gdt, sel))
        .filter_map(|gpa| ram.read_u64(gpa).map(|v| (gpa, v)))
        .collect();
    let stub = uc.emu_start(STUB_GPA, NEVER, timeout_us, 1);
    for &(gpa, value) in &descriptors {
        ram.write_u64(gpa, value);
    }
    let rip = uc.reg_read(R::RIP).map_err(uc_err("read RIP"))?;
    let cs = uc.reg_read(R::CS).map_err(uc_err("read CS"))?;
    let entered = rip == cpu.rip && cs == u64::from(cpu.cs.selector);
    match stub {
        // unicorn may already try the first instruction at the new RIP after the count runs
        // out; if that faults (a state whose RIP is not mapped), the entry itself succeeded and
        // the first run reports the guest's exception.
        Err(e) if !entered => {
            return Err(SimError::Entry(format!(
                "the entry stub's iretq failed: {e:?}"
            )))
        }
        Ok(()) if !entered => {
            return Err(SimError::Entry(format!(
                "the entry stub ended at {cs:#x}:{rip:#x}, not {:#x}:{:#x}",
                cpu.cs.selector, cpu.rip
            )))
        }
        _ => {}
    }

    // iretq zeroes data selectors that are not valid at the new CPL; reload what the checkpoint
    // had (DS/ES only hold a selector in 64-bit mode; FS/GS load their descriptor).
    uc.reg_write(R::DS, u64::from(cpu.ds.selector))
        .map_err(uc_err("write DS"))?;
    uc.reg_write(R::ES, u64::from(cpu.es.selector))
        .map_err(uc_err("write ES"))?;
    // A load checks privilege: a ring-3 state may still hold a ring-0 data selector in FS/GS
    // (KVM keeps what the guest's ring-0 code left there; 64-bit mode ignores it but for the
    // base). Such a selector stays null here; only the bases matter, and they are set below.
    let cpl = u16::from(cpu.cs.dpl);
    for (reg, seg) in [(R::FS, &cpu.fs), (R::GS, &cpu.gs)] {
        let rpl = seg.selector & 3;
        if seg.selector != 0 && u16::from(seg.dpl) >= cpl.max(rpl) {
            uc.reg_write(reg, u64::from(seg.selector))
                .map_err(uc_err("write FS/GS"))?;
        }
    }
    uc.reg_write(R::FS_BASE, cpu.fs.base)
        .map_err(uc_err("write FS base"))?;
    uc.reg_write(R::GS_BASE, cpu.gs.base)
        .map_err(uc_err("write GS base"))?;
    for &(id, value) in &cpu.msrs {
        if !matches!(id, MSR_TSC | MSR_EFER | MSR_FS_BASE | MSR_GS_BASE) {
            write_msr(uc, id, value)?;
        }
    }
    Ok(())
}

/// The paging controls in force.
pub fn controls<D>(uc: &Unicorn<'_, D>) -> Controls {
    use RegisterX86 as R;
    let cr0 = uc.reg_read(R::CR0).unwrap_or(0);
    let cr3 = uc.reg_read(R::CR3).unwrap_or(0);
    let cs = uc.reg_read(R::CS).unwrap_or(0);
    let efer = read_msr(uc, MSR_EFER).unwrap_or(0);
    Controls {
        cr3,
        wp: cr0 & (1 << 16) != 0,
        nxe: efer & (1 << 11) != 0,
        user: cs & 3 == 3,
    }
}

/// Guest physical address of the GDT descriptor `selector` names, if any.
fn descriptor_gpa(ram: &Ram, cr3: u64, gdt: DescriptorTable, selector: u16) -> Option<u64> {
    let index = u64::from(selector & !7);
    if index == 0 || selector & 4 != 0 || index + 7 > u64::from(gdt.limit) {
        return None;
    }
    let ctl = Controls {
        cr3,
        wp: false,
        nxe: false,
        user: false,
    };
    let t = paging::walk(ram, ctl, gdt.base + index, Access::Read, false).ok()?;
    Some(t.page + (gdt.base + index) % PAGE_SIZE)
}

/// The descriptor `selector` names in the GDT, decoded as KVM reports a loaded segment (with
/// the accessed bit set, as loading it sets it in the segment cache).
fn segment_from_gdt(ram: &Ram, cr3: u64, gdt: DescriptorTable, selector: u16) -> Segment {
    let null = Segment {
        selector,
        unusable: 1,
        ..Segment::default()
    };
    let Some(raw) = descriptor_gpa(ram, cr3, gdt, selector).and_then(|gpa| ram.read_u64(gpa))
    else {
        return null;
    };
    let mut limit = ((raw & 0xffff) | ((raw >> 32) & 0xf_0000)) as u32;
    if raw & (1 << 55) != 0 {
        limit = (limit << 12) | 0xfff;
    }
    let base = ((raw >> 16) & 0xff_ffff) | (((raw >> 56) & 0xff) << 24);
    let mut seg = seg_from_flags(selector, base, limit, (raw >> 32) as u32);
    if seg.s == 1 {
        seg.type_ |= 1;
    }
    seg
}

/// Reads the vCPU state out of unicorn. `input` supplies what unicorn does not model (CR8, the
/// APIC base) and the MSRs to read back.
pub fn capture<D>(uc: &Unicorn<'_, D>, ram: &Ram, input: &CpuState) -> Result<CpuState, SimError> {
    use RegisterX86 as R;
    let reg = |r: RegisterX86| uc.reg_read(r).map_err(uc_err("read a register"));
    let mut g = [0u64; 16];
    for (slot, r) in g.iter_mut().zip(gprs()) {
        *slot = reg(r)?;
    }
    let mut gdtr = Mmr::default();
    read_raw(uc, R::GDTR, &mut gdtr)?;
    let mut idtr = Mmr::default();
    read_raw(uc, R::IDTR, &mut idtr)?;
    let mut tr = Mmr::default();
    read_raw(uc, R::TR, &mut tr)?;
    let mut ldt = Mmr::default();
    read_raw(uc, R::LDTR, &mut ldt)?;
    let gdt = DescriptorTable {
        base: gdtr.base,
        limit: gdtr.limit as u16,
    };
    let cr3 = reg(R::CR3)?;
    let seg = |r: RegisterX86| -> Result<Segment, SimError> {
        Ok(segment_from_gdt(ram, cr3, gdt, reg(r)? as u16))
    };
    let mut fs = seg(R::FS)?;
    fs.base = reg(R::FS_BASE)?;
    let mut gs = seg(R::GS)?;
    gs.base = reg(R::GS_BASE)?;
    let (xmm, mxcsr) = read_sse(uc)?;
    let mut msrs = Vec::with_capacity(input.msrs.len());
    for &(id, value) in &input.msrs {
        msrs.push((
            id,
            if matches!(id, MSR_TSC) {
                value
            } else {
                read_msr(uc, id)?
            },
        ));
    }
    Ok(CpuState {
        rax: g[0],
        rbx: g[1],
        rcx: g[2],
        rdx: g[3],
        rsi: g[4],
        rdi: g[5],
        rsp: g[6],
        rbp: g[7],
        r8: g[8],
        r9: g[9],
        r10: g[10],
        r11: g[11],
        r12: g[12],
        r13: g[13],
        r14: g[14],
        r15: g[15],
        rip: reg(R::RIP)?,
        rflags: reg(R::RFLAGS)?,
        cs: seg(R::CS)?,
        ds: seg(R::DS)?,
        es: seg(R::ES)?,
        fs,
        gs,
        ss: seg(R::SS)?,
        tr: seg_from_flags(tr.selector, tr.base, tr.limit, tr.flags),
        ldt: seg_from_flags(ldt.selector, ldt.base, ldt.limit, ldt.flags),
        gdt,
        idt: DescriptorTable {
            base: idtr.base,
            limit: idtr.limit as u16,
        },
        cr0: reg(R::CR0)?,
        cr2: reg(R::CR2)?,
        cr3,
        cr4: reg(R::CR4)?,
        cr8: input.cr8,
        efer: read_msr(uc, MSR_EFER)?,
        apic_base: input.apic_base,
        msrs,
        xmm,
        mxcsr,
    })
}
