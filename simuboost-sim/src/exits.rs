//! Running the guest in unicorn from one exit to the next: the doorbell, exceptions, accesses
//! outside RAM, timeouts.

use std::time::{Duration, Instant};

use iced_x86::{Decoder, DecoderOptions, OpKind};
use simuboost_abi::{DOORBELL_GPA, PAGE_SIZE};
use simuboost_sim_proto::{AccessKind, AnalysisResults, CpuState, Exit, Final, FrameRun, Start};
use unicorn_engine::{
    uc_error, Arch, HookType, MemType, Mode, Prot, RegisterX86, TlbEntry, TlbType, Unicorn,
};

use crate::analysis::{
    self, AddrMap, Analyses, Analysis, BlockInfo, InstructionCounter, MemAccess, Needs, WorkingSet,
};
use crate::cpu;
use crate::paging::{self, Access, Ram};
use crate::watchdog::Watchdog;
use crate::SimError;

/// Why a hook stopped the guest.
#[derive(Debug, Clone)]
enum Stop {
    /// The second half (or the whole) of the doorbell store: the request's address.
    Doorbell(u64),
    /// An exception (interrupt hook).
    Exception { vector: u32, rip: u64, cr2: u64 },
    /// A read of the doorbell, or a store to it that is not the request's address.
    BadDoorbell(String),
    /// A block could not be decoded for counting.
    Decode(u64),
}

/// State the hooks share (unicorn's per-instance data).
pub struct Hooked {
    ram: Ram,
    analyses: Analyses,
    doorbell_low: Option<u64>,
    stop: Option<Stop>,
    /// The last failed TLB fill: address, access, page-fault error code.
    fill_fault: Option<(u64, Access, u64)>,
    /// What the analyses' access hooks need to know: the block and instruction executing.
    ctx: AccessCtx,
    /// Guest-physical page → the virtual page the last TLB fill mapped it at. unicorn's memory
    /// hooks report only the physical address; the trace wants the virtual one too. Exact
    /// unless the guest maps one frame at two virtual pages at the same time (then the most
    /// recently filled one is reported).
    virt_of: AddrMap<u64>,
}

/// The instruction and block executing, for [`MemAccess`].
#[derive(Default)]
struct AccessCtx {
    block: BlockInfo,
    /// The accessing instruction: exact with [`Needs::instructions`], else the block's start.
    rip: u64,
    /// Instructions so far, the accessing one included: exact with [`Needs::instructions`],
    /// else at block entry.
    icount: u64,
    /// With [`Needs::instructions`]: the instructions executed before this block.
    entry_icount: u64,
    /// With [`Needs::instructions`]: the block's instruction lengths (empty: not counted, the
    /// entry stub), how many of them have had their fetch issued, and where the next starts.
    lengths: Vec<u8>,
    issued: u32,
    next_rip: u64,
}

impl Hooked {
    /// Hands a data access to the analyses (RAM only: the doorbell's MMIO store is not one).
    /// `rip`: the accessing instruction, with [`Needs::instructions`] (its fetch and those of
    /// the instructions before it are issued first).
    #[inline]
    fn data_access(&mut self, kind: MemType, paddr: u64, size: usize, rip: Option<u64>) {
        if let Some(rip) = rip {
            self.issue_fetches_through(rip);
        }
        if !self.ram.contains(paddr, 1) {
            return;
        }
        let page = paddr & !(PAGE_SIZE - 1);
        let vaddr = self
            .virt_of
            .get(&page)
            .map_or(paddr, |v| v | (paddr & (PAGE_SIZE - 1)));
        let access = MemAccess {
            icount: self.ctx.icount,
            rip: self.ctx.rip,
            block: self.ctx.block.vaddr,
            vaddr,
            paddr,
            size: size.min(255) as u8,
            kind: if kind == MemType::WRITE {
                AccessKind::Write
            } else {
                AccessKind::Read
            },
        };
        for a in &mut self.analyses.extra {
            a.on_access(&access);
        }
    }

    /// Issues the fetches of the current block's instructions up to the one starting at `rip`
    /// (which is then the accessing instruction). Accesses come in program order, so the scan
    /// only moves forward; an instruction accessing memory more than once (a string
    /// instruction's repetitions) is issued once.
    #[inline]
    fn issue_fetches_through(&mut self, rip: u64) {
        while self.ctx.next_rip <= rip && (self.ctx.issued as usize) < self.ctx.lengths.len() {
            self.issue_next_fetch();
        }
    }

    /// Issues the fetches of the first `executed` instructions of the current block (all of
    /// them: `u32::MAX`) that are not issued yet.
    fn issue_fetches(&mut self, executed: u32) {
        let end = (executed as usize).min(self.ctx.lengths.len());
        while (self.ctx.issued as usize) < end {
            self.issue_next_fetch();
        }
    }

    #[inline]
    fn issue_next_fetch(&mut self) {
        let ctx = &mut self.ctx;
        let rip = ctx.next_rip;
        let size = ctx.lengths[ctx.issued as usize];
        ctx.issued += 1;
        ctx.next_rip += u64::from(size);
        ctx.rip = rip;
        ctx.icount = ctx.entry_icount + u64::from(ctx.issued);
        let paddr = ctx.block.paddr(rip);
        if !self.ram.contains(paddr, 1) {
            return;
        }
        let access = MemAccess {
            icount: ctx.icount,
            rip,
            block: ctx.block.vaddr,
            vaddr: rip,
            paddr,
            size,
            kind: AccessKind::Fetch,
        };
        for a in &mut self.analyses.extra {
            a.on_access(&access);
        }
    }
}

/// One simulated interval.
pub struct Sim {
    /// Declared before `uc`: dropped (its thread joined) before the engine it stops.
    watchdog: Watchdog,
    uc: Unicorn<'static, Hooked>,
    input: CpuState,
    timeout_us: u64,
    sim_time: Duration,
    counting: bool,
}

fn uc_err(what: &'static str) -> impl FnOnce(uc_error) -> SimError {
    move |e| SimError::Unicorn {
        what,
        detail: format!("{e:?}"),
    }
}

fn access_of(t: MemType) -> Access {
    match t {
        MemType::WRITE => Access::Write,
        MemType::FETCH => Access::Fetch,
        _ => Access::Read,
    }
}

impl Sim {
    /// Sets unicorn up on `ram` for `start` and enters its CPU state.
    /// `extra`: the analyses of [`Start::analyses`] (see [`crate::builtin::from_request`]).
    pub fn new(ram: Ram, start: &Start, extra: Vec<Box<dyn Analysis>>) -> Result<Sim, SimError> {
        let needs = extra
            .iter()
            .fold(Needs::default(), |n, a| n.union(a.needs()));
        // Blocks are decoded by the counter, so any block-level analysis brings it along.
        let counting = start.count_instructions || needs.blocks || needs.instructions;
        // Memory hooks report physical addresses; the TLB hook tells the virtual ones.
        let tlb_hook = start.working_set || needs.accesses || needs.instructions;
        let analyses = Analyses {
            counter: counting.then(InstructionCounter::default),
            working_set: start.working_set.then(|| WorkingSet::new(ram.frames())),
            extra,
        };
        let hooked = Hooked {
            ram,
            analyses,
            doorbell_low: None,
            stop: None,
            fill_fault: None,
            ctx: AccessCtx::default(),
            virt_of: AddrMap::default(),
        };
        let mut uc = Unicorn::new_with_data(Arch::X86, Mode::MODE_64, hooked)
            .map_err(uc_err("create the x86-64 engine"))?;
        if tlb_hook {
            uc.ctl_set_tlb_type(TlbType::VIRTUAL)
                .map_err(uc_err("select the virtual TLB"))?;
        }
        // SAFETY: `ram` is a shared mapping of exactly ram.bytes() bytes that stays mapped for
        // the life of the process (main never unmaps it).
        unsafe { uc.mem_map_ptr(0, ram.bytes(), Prot::ALL, ram.base().cast()) }
            .map_err(uc_err("map guest RAM"))?;
        uc.mmio_map(
            DOORBELL_GPA,
            PAGE_SIZE,
            Some(|uc: &mut Unicorn<'_, Hooked>, offset: u64, size: usize| -> u64 {
                uc.get_data_mut().stop = Some(Stop::BadDoorbell(format!(
                    "the guest read {size} bytes from the doorbell (offset {offset:#x})"
                )));
                let _ = uc.emu_stop();
                u64::MAX
            }),
            Some(
                |uc: &mut Unicorn<'_, Hooked>, offset: u64, size: usize, value: u64| {
                    let d = uc.get_data_mut();
                    match (offset, size) {
                        (0, 8) => d.stop = Some(Stop::Doorbell(value)),
                        (0, 4) => {
                            d.doorbell_low = Some(value & 0xffff_ffff);
                            return;
                        }
                        (4, 4) if d.doorbell_low.is_some() => {
                            let low = d.doorbell_low.take().unwrap_or(0);
                            d.stop = Some(Stop::Doorbell(low | (value << 32)));
                        }
                        _ => {
                            d.stop = Some(Stop::BadDoorbell(format!(
                                "a {size}-byte store of {value:#x} to the doorbell at offset {offset:#x}"
                            )))
                        }
                    }
                    let _ = uc.emu_stop();
                },
            ),
        )
        .map_err(uc_err("map the doorbell"))?;
        cpu::map_stub(&mut uc)?;
        uc.add_intr_hook(|uc: &mut Unicorn<'_, Hooked>, vector: u32| {
            let rip = uc.reg_read(RegisterX86::RIP).unwrap_or(0);
            let cr2 = uc.reg_read(RegisterX86::CR2).unwrap_or(0);
            uc.get_data_mut().stop = Some(Stop::Exception { vector, rip, cr2 });
            let _ = uc.emu_stop();
        })
        .map_err(uc_err("add the interrupt hook"))?;
        if tlb_hook {
            uc.add_tlb_hook(
                1,
                0,
                |uc: &mut Unicorn<'_, Hooked>, vaddr: u64, kind: MemType| {
                    let access = access_of(kind);
                    let ctl = cpu::controls(uc);
                    let d = uc.get_data_mut();
                    match paging::walk(&d.ram, ctl, vaddr, access, true) {
                        Ok(t) => {
                            let gfn = d
                                .ram
                                .contains(t.page, PAGE_SIZE)
                                .then_some(t.page / PAGE_SIZE);
                            // Without the working set: grant writes only to a write fill, so
                            // that the first write to a frame fills again and the walk sets the
                            // PTE's dirty bit (as a CPU re-walks a clean TLB entry).
                            let mut perms = if access == Access::Write {
                                Prot::ALL.0
                            } else {
                                Prot::READ.0 | Prot::EXEC.0
                            };
                            if let Some(g) = gfn {
                                d.virt_of.insert(g * PAGE_SIZE, vaddr & !(PAGE_SIZE - 1));
                            }
                            if let Some(ws) = &mut d.analyses.working_set {
                                ws.on_fill(gfn, access, &t.tables[..t.levels]);
                                // Grant only the kinds already seen, so a new kind fills again.
                                if let Some(g) = gfn {
                                    perms = u32::from(ws.seen_kinds(g));
                                } else {
                                    perms = Prot::ALL.0;
                                }
                            }
                            for a in &mut d.analyses.extra {
                                a.on_fill(gfn, access, &t.tables[..t.levels]);
                            }
                            if !t.writable {
                                perms &= !Prot::WRITE.0;
                            }
                            if !t.executable {
                                perms &= !Prot::EXEC.0;
                            }
                            Some(TlbEntry {
                                paddr: t.page,
                                perms: Prot(perms as _),
                            })
                        }
                        Err(f) => {
                            d.fill_fault = Some((vaddr, access, f.error_code));
                            None
                        }
                    }
                },
            )
            .map_err(uc_err("add the TLB hook"))?;
        }
        if counting {
            uc.add_block_hook(
                1,
                0,
                move |uc: &mut Unicorn<'_, Hooked>, vaddr: u64, size: u32| {
                    let cached = uc
                        .get_data()
                        .analyses
                        .counter
                        .as_ref()
                        .and_then(|c| c.cached(vaddr));
                    let block = match cached {
                        Some(b) => b,
                        None => {
                            let cr3 = uc.reg_read(RegisterX86::CR3).unwrap_or(0);
                            let d = uc.get_data_mut();
                            let ram = d.ram;
                            match d
                                .analyses
                                .counter
                                .as_mut()
                                .and_then(|c| c.decode(&ram, cr3, vaddr, size))
                            {
                                Some(b) => b,
                                // Code outside RAM: only the entry stub, which is not counted.
                                None if !ram.contains(vaddr, 1) && vaddr >= cpu::STUB_GPA => {
                                    BlockInfo {
                                        vaddr,
                                        size,
                                        icount: 1,
                                        ..BlockInfo::default()
                                    }
                                }
                                None => {
                                    d.stop = Some(Stop::Decode(vaddr));
                                    let _ = uc.emu_stop();
                                    return;
                                }
                            }
                        }
                    };
                    let d = uc.get_data_mut();
                    if needs.instructions {
                        // The previous block ran to its end.
                        d.issue_fetches(u32::MAX);
                    }
                    if let Some(c) = &mut d.analyses.counter {
                        if needs.instructions {
                            let ctx = &mut d.ctx;
                            ctx.entry_icount = c.total();
                            ctx.lengths.clear();
                            ctx.lengths
                                .extend_from_slice(c.lengths(vaddr).unwrap_or_default());
                            ctx.issued = 0;
                            ctx.next_rip = vaddr;
                        } else {
                            // Accesses carry the count at block entry.
                            d.ctx.icount = c.total() + 1;
                            d.ctx.rip = vaddr;
                        }
                        c.on_block(&block);
                    }
                    d.ctx.block = block;
                    for a in &mut d.analyses.extra {
                        a.on_block(&block);
                    }
                },
            )
            .map_err(uc_err("add the block hook"))?;
        }
        if needs.accesses || needs.instructions {
            let exact = needs.instructions;
            uc.add_mem_hook(
                HookType::MEM_READ | HookType::MEM_WRITE,
                1,
                0,
                move |uc: &mut Unicorn<'_, Hooked>,
                      kind: MemType,
                      paddr: u64,
                      size: usize,
                      _: i64| {
                    // unicorn restores the exact PC before every memory-hook callback
                    // (`cpu_restore_state`, paid whether or not it is read): the accessing
                    // instruction, without a per-instruction hook.
                    let rip = exact.then(|| uc.reg_read(RegisterX86::RIP).unwrap_or(0));
                    uc.get_data_mut().data_access(kind, paddr, size, rip);
                    true
                },
            )
            .map_err(uc_err("add the memory hooks"))?;
        }
        let timeout_us = start.timeout_ms.saturating_mul(1000);
        cpu::enter(&mut uc, &ram, &start.cpu, timeout_us)?;
        // What the stub did is not the interval's: forget it, and start from an empty TLB so
        // that every frame's first access fills.
        uc.ctl_flush_tlb().map_err(uc_err("flush the TLB"))?;
        let d = uc.get_data_mut();
        d.analyses.each(|a| a.reset());
        d.stop = None;
        d.fill_fault = None;
        d.ctx = AccessCtx::default();
        let watchdog = Watchdog::start(uc.get_handle()).map_err(|e| SimError::Unicorn {
            what: "start the watchdog thread",
            detail: e.to_string(),
        })?;
        Ok(Sim {
            watchdog,
            uc,
            input: start.cpu.clone(),
            timeout_us,
            sim_time: Duration::ZERO,
            counting,
        })
    }

    fn rip(&self) -> Result<u64, SimError> {
        self.uc
            .reg_read(RegisterX86::RIP)
            .map_err(uc_err("read RIP"))
    }

    fn instructions(&self) -> u64 {
        self.uc
            .get_data()
            .analyses
            .counter
            .as_ref()
            .map_or(0, |c| c.total())
    }

    /// Lets the analyses send what they buffered (the trace) before an exit is reported.
    pub fn flush_analyses(&mut self) -> Result<(), SimError> {
        for a in &mut self.uc.get_data_mut().analyses.extra {
            a.flush().map_err(SimError::Analysis)?;
        }
        Ok(())
    }

    /// Runs the guest from its current RIP to the next exit.
    pub fn run(&mut self) -> Result<Exit, SimError> {
        let begin = self.rip()?;
        {
            let d = self.uc.get_data_mut();
            d.stop = None;
            d.fill_fault = None;
            d.doorbell_low = None;
        }
        let t0 = Instant::now();
        // No unicorn timeout (it polls every 2 µs from a thread of its own): the watchdog.
        self.watchdog.arm(Duration::from_micros(self.timeout_us));
        let result = self.uc.emu_start(begin, cpu::NEVER, 0, 0);
        let timed_out = self.watchdog.disarm();
        self.sim_time += t0.elapsed();
        let stop = self.uc.get_data_mut().stop.take();
        let rip = self.rip()?;
        match stop {
            Some(Stop::Doorbell(gpa)) => return self.complete_doorbell(gpa, rip),
            Some(Stop::Exception { vector, rip, cr2 }) => {
                return Ok(Exit::Crash {
                    vector,
                    error_code: 0,
                    rip,
                    cr2: if vector == 14 { cr2 } else { 0 },
                    reason: format!("exception {vector} at {rip:#x}"),
                })
            }
            Some(Stop::BadDoorbell(what)) => {
                return Ok(Exit::Crash {
                    vector: 0,
                    error_code: 0,
                    rip,
                    cr2: 0,
                    reason: what,
                })
            }
            Some(Stop::Decode(vaddr)) => {
                return Err(SimError::Entry(format!(
                    "cannot read the code of the block at {vaddr:#x} to count it"
                )))
            }
            None => {}
        }
        match result {
            Err(uc_error::EXCEPTION) if self.uc.get_data().fill_fault.is_some() => {
                let (vaddr, access, error_code) =
                    self.uc
                        .get_data()
                        .fill_fault
                        .unwrap_or((0, Access::Read, 0));
                Ok(Exit::Crash {
                    vector: 14,
                    error_code,
                    rip,
                    cr2: vaddr,
                    reason: format!("page fault ({access:?}) at {vaddr:#x}"),
                })
            }
            Err(
                e @ (uc_error::READ_UNMAPPED
                | uc_error::WRITE_UNMAPPED
                | uc_error::FETCH_UNMAPPED
                | uc_error::READ_PROT
                | uc_error::WRITE_PROT
                | uc_error::FETCH_PROT
                | uc_error::INSN_INVALID
                | uc_error::EXCEPTION),
            ) => Ok(Exit::Crash {
                vector: if e == uc_error::INSN_INVALID { 6 } else { 14 },
                error_code: 0,
                rip,
                cr2: 0,
                reason: format!(
                    "access outside RAM and the doorbell or invalid code ({e:?}) at {rip:#x}"
                ),
            }),
            Err(e) => Err(SimError::Unicorn {
                what: "run",
                detail: format!("{e:?}"),
            }),
            Ok(()) if timed_out => Ok(Exit::Error {
                message: format!(
                    "no exit within {} ms (at {rip:#x}): the replay diverged or spins",
                    self.timeout_us / 1000
                ),
            }),
            Ok(()) => Ok(Exit::Error {
                message: format!("the simulation stopped without an exit at {rip:#x}"),
            }),
        }
    }

    /// The guest stored `gpa` to the doorbell with the instruction at `rip`: retire it (RIP past
    /// the store, as KVM's `complete_pending_exit` leaves it) and make the count exact.
    fn complete_doorbell(&mut self, gpa: u64, rip: u64) -> Result<Exit, SimError> {
        let cr3 = self
            .uc
            .reg_read(RegisterX86::CR3)
            .map_err(uc_err("read CR3"))?;
        let ram = self.uc.get_data().ram;
        let code = analysis::code_bytes(&ram, cr3, rip, 15).ok_or_else(|| {
            SimError::Entry(format!("the doorbell store at {rip:#x} is not in RAM"))
        })?;
        let insn = Decoder::with_ip(64, &code, rip, DecoderOptions::NONE).decode();
        if insn.is_invalid() || insn.op0_kind() != OpKind::Memory {
            return Err(SimError::Entry(format!(
                "after the doorbell write RIP {rip:#x} is not at a store ({:?}): unicorn ran past it", insn.mnemonic()
            )));
        }
        if self.counting {
            let d = self.uc.get_data_mut();
            if let Some(c) = &mut d.analyses.counter {
                let Some((block, executed)) = c.stopped_at(&ram, cr3, rip) else {
                    return Err(SimError::Entry(format!(
                        "the doorbell store at {rip:#x} is not inside the last block entered"
                    )));
                };
                // The fetches of the instructions up to the store; none for the rest.
                d.issue_fetches(executed);
                d.ctx.issued = d.ctx.lengths.len() as u32;
                for a in &mut d.analyses.extra {
                    a.on_stop(&block, executed);
                }
            }
        }
        self.uc
            .reg_write(RegisterX86::RIP, insn.next_ip())
            .map_err(uc_err("write RIP"))?;
        Ok(Exit::Doorbell {
            gpa,
            instructions: self.instructions(),
        })
    }

    /// The device wrote `written` behind unicorn's back (through the shared mapping). Data needs
    /// nothing: unicorn reads RAM through the same pages. Translated code does: neither writing
    /// the frames again with `mem_write` (tried: the stale translation still ran) nor
    /// `ctl_remove_cache` (it takes a virtual address and fills the TLB, which would count as a
    /// fetch) works from a frame number, so when a written frame holds code unicorn translated,
    /// all translations are dropped.
    pub fn device_wrote(&mut self, written: &[FrameRun]) -> Result<(), SimError> {
        let ram = self.uc.get_data().ram;
        let gfns = || {
            written
                .iter()
                .flat_map(|r| r.first_gfn..r.first_gfn.saturating_add(r.count))
        };
        if let Some(gfn) = gfns().find(|&g| !ram.contains(g.saturating_mul(PAGE_SIZE), PAGE_SIZE)) {
            return Err(SimError::Protocol(format!(
                "the device wrote frame {gfn:#x}, outside guest RAM"
            )));
        }
        let d = self.uc.get_data_mut();
        let known = d.analyses.counter.is_some() || d.analyses.working_set.is_some();
        let holds_code = |g: u64| {
            d.analyses.counter.as_ref().is_some_and(|c| c.holds_code(g))
                || d.analyses
                    .working_set
                    .as_ref()
                    .is_some_and(|w| w.fetched(g))
        };
        let flush = if known {
            gfns().any(holds_code)
        } else {
            gfns().next().is_some()
        };
        if let Some(c) = &mut d.analyses.counter {
            c.invalidate(gfns());
        }
        if flush {
            self.uc
                .ctl_flush_tb()
                .map_err(uc_err("drop translations"))?;
        }
        Ok(())
    }

    /// The interval's outcome.
    pub fn finish(mut self) -> Result<Final, SimError> {
        let ram = self.uc.get_data().ram;
        let cpu = cpu::capture(&self.uc, &ram, &self.input)?;
        let mut out = Final {
            cpu,
            instructions: 0,
            accessed: Vec::new(),
            page_table_frames: Vec::new(),
            sim_ms: self.sim_time.as_secs_f64() * 1000.0,
            analysis: AnalysisResults::default(),
        };
        self.uc.get_data_mut().analyses.each(|a| a.finish(&mut out));
        Ok(out)
    }
}
