//! The simulator against a tiny hand-built 64-bit guest, driven through the real client API,
//! with this test as the parent: it installs some pages itself and serves the simulator's
//! misses through the simulator's userfaultfd.
//!
//! Guest (ring 3), code page A at 0x10000, code page B at 0x11000:
//! ```text
//! A+0   mov ecx, 10                      1
//! A+5   mov rax, [rsi]      ; 0x20000     \
//! A+8   add [rdi], rax      ; 0x21000      | 4 x 10
//! A+11  dec ecx                            |
//! A+13  jnz A+5                           /
//! A+15  movabs rbx, DOORBELL             1
//! A+25  call B                           1
//! B+0   mov rax, 0x22000                 1
//! B+7   mov [rbx], rax      ; doorbell 1 1   -> 45 instructions
//! B+10  ret                              1
//! A+30  mov rax, [rdx]      ; 0x23000    1
//! A+33  call B                           1
//! B+0   mov rax, (rewritten by the parent at doorbell 1 to 0x33000)   1
//! B+7   mov [rbx], rax      ; doorbell 2 1   -> 50 instructions
//! B+10  ret
//! A+38  ud2                 ; #UD
//! ```

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use simuboost_abi::DOORBELL_GPA;
use simuboost_sim_proto::{
    AccessKind, AccessedFrame, AnalysisRequest, BlockCount, CacheConfig, CacheLevel, ClientError,
    CpuState, DescriptorTable, Exit, Final, FrameRun, LevelCounts, PageCount, Segment, SimProcess,
    Start, TraceBatch, TraceRequest, PROTOCOL_VERSION,
};
use userfaultfd::{Event, Uffd};

const MEM: usize = 4 << 20;
const PAGE: usize = 4096;
const PML4: u64 = 0x1000;
const PDPT: u64 = 0x2000;
const PD: u64 = 0x3000;
const PT0: u64 = 0x4000; // 0..2 MiB
const PT1: u64 = 0x5000; // 2..4 MiB
const PD_DOORBELL: u64 = 0x6000;
const GDT: u64 = 0x7000;
const CODE_A: u64 = 0x10000;
const CODE_B: u64 = 0x11000;
const SRC: u64 = 0x20000;
const DST: u64 = 0x21000;
const REQ: u64 = 0x22000;
const DEV: u64 = 0x23000;
const STACK_TOP: u64 = 0x30000;

fn put(image: &mut [u8], at: u64, bytes: &[u8]) {
    image[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
}

fn put64(image: &mut [u8], at: u64, v: u64) {
    put(image, at, &v.to_le_bytes());
}

fn code_b(value: u32) -> Vec<u8> {
    let mut b = vec![0x48, 0xc7, 0xc0];
    b.extend_from_slice(&value.to_le_bytes());
    b.extend_from_slice(&[0x48, 0x89, 0x03, 0xc3]); // mov [rbx], rax; ret
    b
}

/// The guest's initial memory.
fn image() -> Vec<u8> {
    image_with(10)
}

/// The guest's initial memory with `iterations` of the loop.
fn image_with(iterations: u32) -> Vec<u8> {
    let mut m = vec![0u8; MEM];
    // Page tables: present, writable, user; accessed/dirty clear.
    let f = 0x7;
    put64(&mut m, PML4, PDPT | f);
    put64(&mut m, PDPT, PD | f);
    put64(&mut m, PDPT + 16 * 8, PD_DOORBELL | f); // 16 GiB
    put64(&mut m, PD, PT0 | f);
    put64(&mut m, PD + 8, PT1 | f);
    for i in 0..1024u64 {
        put64(&mut m, PT0 + i * 8, (i << 12) | f);
    }
    put64(&mut m, PD_DOORBELL, DOORBELL_GPA | f | 0x80); // 2 MiB page
                                                         // GDT: null, kernel code, kernel data, user data, user code.
    for (i, d) in [
        0u64,
        0x00af_9a00_0000_ffff,
        0x00cf_9200_0000_ffff,
        0x00cf_f200_0000_ffff,
        0x00af_fa00_0000_ffff,
    ]
    .iter()
    .enumerate()
    {
        put64(&mut m, GDT + i as u64 * 8, *d);
    }
    let mut a = vec![0xb9]; // mov ecx, iterations
    a.extend_from_slice(&iterations.to_le_bytes());
    a.extend_from_slice(&[0x48, 0x8b, 0x06]); // mov rax, [rsi]
    a.extend_from_slice(&[0x48, 0x01, 0x07]); // add [rdi], rax
    a.extend_from_slice(&[0xff, 0xc9]); // dec ecx
    a.extend_from_slice(&[0x75, 0xf6]); // jnz -10
    a.extend_from_slice(&[0x48, 0xbb]); // movabs rbx, DOORBELL
    a.extend_from_slice(&DOORBELL_GPA.to_le_bytes());
    let call = |at: u64| {
        let rel = (CODE_B as i64 - (CODE_A as i64 + at as i64 + 5)) as i32;
        let mut c = vec![0xe8];
        c.extend_from_slice(&rel.to_le_bytes());
        c
    };
    a.extend_from_slice(&call(25));
    a.extend_from_slice(&[0x48, 0x8b, 0x02]); // mov rax, [rdx]
    a.extend_from_slice(&call(33));
    a.extend_from_slice(&[0x0f, 0x0b]); // ud2
    assert_eq!(a.len(), 40);
    put(&mut m, CODE_A, &a);
    put(&mut m, CODE_B, &code_b(REQ as u32));
    put64(&mut m, SRC, 5);
    m
}

fn user_seg(selector: u16, code: bool) -> Segment {
    Segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 3,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
    }
}

fn start_state() -> CpuState {
    CpuState {
        rsi: SRC,
        rdi: DST,
        rdx: DEV,
        rsp: STACK_TOP,
        rip: CODE_A,
        rflags: 0x2,
        cs: user_seg(0x23, true),
        ss: user_seg(0x1b, false),
        ds: user_seg(0x1b, false),
        es: user_seg(0x1b, false),
        tr: Segment {
            limit: 0x67,
            type_: 0xb,
            present: 1,
            ..Segment::default()
        },
        gdt: DescriptorTable {
            base: GDT,
            limit: 5 * 8 - 1,
        },
        cr0: 0x8005_0033,
        cr3: PML4,
        // PAE, OSFXSR, OSXMMEXCPT (as the VMM sets them).
        cr4: 0x620,
        efer: 0x500,
        msrs: vec![
            (0xc000_0102, 0x1234_5000),
            (0xc000_0081, 0x0023_0010_0000_0000),
        ],
        // Distinct values in every XMM register (the guest does not touch them): they must
        // come back unchanged, as must an MXCSR other than the reset value (round toward zero).
        xmm: std::array::from_fn(|n| [0x1111 * n as u64 + 1, !(n as u64)]),
        mxcsr: 0x7f80,
        ..CpuState::default()
    }
}

/// Guest RAM as the parent holds it: a memfd, mapped shared.
struct Guest {
    memfd: OwnedFd,
    base: *mut u8,
    image: Arc<Vec<u8>>,
}

impl Guest {
    /// Creates RAM and installs (writes through our own mapping) the frames in `installed`;
    /// every other frame is left to the miss handler.
    fn new(installed: &[u64]) -> Guest {
        // SAFETY: memfd_create with a static name; the result is checked.
        let fd = unsafe { libc::memfd_create(c"sim-test-ram".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor we own.
        let memfd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate on our memfd.
        assert_eq!(unsafe { libc::ftruncate(fd, MEM as i64) }, 0);
        // SAFETY: shared mapping of the whole memfd.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MEM,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let image = Arc::new(image());
        let g = Guest {
            memfd,
            base: base.cast(),
            image,
        };
        for &gfn in installed {
            let at = gfn as usize * PAGE;
            g.write(at as u64, &g.image[at..at + PAGE]);
        }
        g
    }

    fn write(&self, gpa: u64, bytes: &[u8]) {
        assert!(gpa as usize + bytes.len() <= MEM);
        // SAFETY: inside our mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.add(gpa as usize), bytes.len())
        }
    }

    fn read64(&self, gpa: u64) -> u64 {
        // SAFETY: inside our mapping, aligned.
        unsafe { std::ptr::read_volatile(self.base.add(gpa as usize).cast::<u64>()) }
    }
}

/// Serves the simulator's misses from the image; counts them.
struct MissHandler {
    stop: Arc<AtomicBool>,
    misses: Arc<AtomicU64>,
    served: Arc<std::sync::Mutex<Vec<u64>>>,
    thread: Option<JoinHandle<()>>,
}

impl MissHandler {
    fn start(uffd: OwnedFd, image: Arc<Vec<u8>>) -> MissHandler {
        // SAFETY: a userfaultfd received from the simulator; we own it now.
        let uffd = unsafe { Uffd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(uffd)) };
        let stop = Arc::new(AtomicBool::new(false));
        let misses = Arc::new(AtomicU64::new(0));
        let served = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, m, sv) = (stop.clone(), misses.clone(), served.clone());
        let thread = std::thread::spawn(move || {
            // Fault events carry the simulator's addresses; its mapping's base comes from
            // /proc/<pid>/maps on the first fault.
            let mut base: Option<u64> = None;
            while !s.load(Ordering::Relaxed) {
                let mut pfd = libc::pollfd {
                    fd: uffd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                if unsafe { libc::poll(&mut pfd, 1, 50) } <= 0 {
                    continue;
                }
                let Ok(Some(Event::Pagefault { addr, .. })) = uffd.read_event() else {
                    continue;
                };
                let addr = addr as u64 & !(PAGE as u64 - 1);
                let b = *base.get_or_insert_with(|| find_base(addr));
                let off = (addr - b) as usize;
                let src = &image[off..off + PAGE];
                // Counted before the copy wakes the simulator, so that a test reading the
                // counts after the simulator finished sees every miss.
                m.fetch_add(1, Ordering::Relaxed);
                sv.lock().unwrap().push(off as u64 / PAGE as u64);
                // SAFETY: src is a whole page; addr is a page in the simulator's registered range.
                let _ = unsafe { uffd.copy(src.as_ptr().cast(), addr as *mut _, PAGE, true) };
            }
        });
        MissHandler {
            stop,
            misses,
            served,
            thread: Some(thread),
        }
    }
}

/// The base of the simulator's RAM mapping: the `sim-test-ram` memfd mapping in the only
/// simulator process mapping it that contains `addr`.
fn find_base(addr: u64) -> u64 {
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(maps) = std::fs::read_to_string(entry.path().join("maps")) else {
            continue;
        };
        if !maps.contains("simuboost-sim") {
            continue;
        }
        for line in maps.lines().filter(|l| l.contains("memfd:sim-test-ram")) {
            let range = line.split_whitespace().next().unwrap();
            let (lo, hi) = range.split_once('-').unwrap();
            let (lo, hi) = (
                u64::from_str_radix(lo, 16).unwrap(),
                u64::from_str_radix(hi, 16).unwrap(),
            );
            if (lo..hi).contains(&addr) {
                return lo;
            }
        }
    }
    panic!("no simulator mapping contains {addr:#x}");
}

impl Drop for MissHandler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_simuboost-sim"))
}

/// Frames installed up front: page tables, GDT, code. Data and stack pages are misses.
const INSTALLED: [u64; 9] = [1, 2, 3, 4, 5, 6, 7, 0x10, 0x11];

fn start_msg() -> Start {
    Start {
        version: PROTOCOL_VERSION,
        mem_bytes: MEM as u64,
        cpu: start_state(),
        interval: 0,
        timeout_ms: 5000,
        count_instructions: true,
        working_set: true,
        analyses: AnalysisRequest::default(),
    }
}

/// Runs to doorbell 2 (rewriting code page B and writing the device page at doorbell 1).
fn run_to_second_doorbell(guest: &Guest, sim: &mut SimProcess) -> (u64, u64) {
    run_to_second_doorbell_with(guest, sim, &start_msg(), &mut |b: TraceBatch| {
        Err(format!("{} unexpected trace rows", b.len()))
    })
}

/// [`run_to_second_doorbell`] with any start message; trace batches go to `sink`.
fn run_to_second_doorbell_with(
    guest: &Guest,
    sim: &mut SimProcess,
    start: &Start,
    sink: &mut dyn FnMut(TraceBatch) -> Result<(), String>,
) -> (u64, u64) {
    sim.start(start).unwrap();
    let Exit::Doorbell { gpa, instructions } = sim.next_exit_with(sink).unwrap() else {
        panic!("expected doorbell 1")
    };
    assert_eq!(gpa, REQ);
    assert_eq!(instructions, 45, "doorbell 1");
    let first = instructions;
    // The "device": new code in B (already translated: proves invalidation) and data at DEV.
    guest.write(CODE_B, &code_b(0x33000));
    guest.write(DEV, &0x77u64.to_le_bytes());
    sim.resume(vec![
        FrameRun {
            first_gfn: CODE_B / PAGE as u64,
            count: 1,
        },
        FrameRun {
            first_gfn: DEV / PAGE as u64,
            count: 1,
        },
    ])
    .unwrap();
    let Exit::Doorbell { gpa, instructions } = sim.next_exit_with(sink).unwrap() else {
        panic!("expected doorbell 2")
    };
    assert_eq!(
        gpa, 0x33000,
        "the rewritten code ran (translations invalidated)"
    );
    assert_eq!(instructions, 50, "doorbell 2");
    (first, instructions)
}

#[test]
fn exact_count_working_set_and_invalidation() {
    let guest = Guest::new(&INSTALLED);
    let (mut sim, uffd) = SimProcess::spawn(&binary(), guest.memfd.as_fd()).unwrap();
    let handler = MissHandler::start(uffd, guest.image.clone());
    run_to_second_doorbell(&guest, &mut sim);
    let out = sim.finish().unwrap();
    assert_eq!(out.instructions, 50);
    // RIP past the doorbell store, before B's ret; rax holds the request address.
    assert_eq!(out.cpu.rip, CODE_B + 10);
    assert_eq!(out.cpu.rax, 0x33000);
    assert_eq!(out.cpu.rcx, 0);
    assert_eq!(out.cpu.cs.selector, 0x23);
    assert_eq!(out.cpu.ss.selector, 0x1b);
    assert_eq!(out.cpu.cs.dpl, 3);
    assert_eq!(out.cpu.cs.l, 1);
    assert_eq!(out.cpu.cs.type_, 0xb, "accessed, as in KVM's segment cache");
    // The entry stub's iretq left the GDT as it was (no accessed bits set in memory).
    assert_eq!(guest.read64(GDT + 0x20), 0x00af_fa00_0000_ffff);
    assert_eq!(guest.read64(GDT + 0x18), 0x00cf_f200_0000_ffff);
    assert_eq!(out.cpu.gdt.base, GDT);
    assert_eq!(out.cpu.cr3, PML4);
    assert_eq!(out.cpu.efer, 0x500);
    assert_eq!(out.cpu.rsp, STACK_TOP - 8);
    assert!(out.cpu.msrs.contains(&(0xc000_0102, 0x1234_5000)));
    assert_eq!(
        out.cpu.xmm,
        start_state().xmm,
        "XMM registers are loaded and read back"
    );
    assert_eq!(out.cpu.mxcsr, 0x7f80);
    assert_eq!(out.cpu.cr4, 0x620);
    assert_eq!(guest.read64(DST), 50);
    let f = |gfn: u64, read, write, fetch| AccessedFrame {
        gfn,
        read,
        write,
        fetch,
    };
    assert_eq!(
        out.accessed,
        vec![
            f(0x10, false, false, true),
            f(0x11, false, false, true),
            f(0x20, true, false, false),
            f(0x21, true, true, false),
            f(0x23, true, false, false),
            f(0x2f, true, true, false),
        ]
    );
    assert_eq!(out.page_table_frames, vec![1, 2, 3, 4, 6]);
    // Data and stack frames not installed up front were served as misses; the device page was
    // written by us, so it was no miss.
    let mut served = handler.served.lock().unwrap().clone();
    served.sort();
    assert_eq!(served, vec![0x20, 0x21, 0x2f]);
    assert_eq!(handler.misses.load(Ordering::Relaxed), 3);
    eprintln!("simulated in {:.3} ms", out.sim_ms);
}

#[test]
fn same_interval_twice_gives_the_same_count() {
    let mut counts = Vec::new();
    for _ in 0..2 {
        let guest = Guest::new(&INSTALLED);
        let (mut sim, uffd) = SimProcess::spawn(&binary(), guest.memfd.as_fd()).unwrap();
        let _handler = MissHandler::start(uffd, guest.image.clone());
        counts.push(run_to_second_doorbell(&guest, &mut sim));
        let out = sim.finish().unwrap();
        counts.push((out.instructions, out.accessed.len() as u64));
    }
    assert_eq!(counts[0], counts[2]);
    assert_eq!(counts[1], counts[3]);
}

#[test]
fn guest_exception_is_a_crash() {
    let guest = Guest::new(&INSTALLED);
    let (mut sim, uffd) = SimProcess::spawn(&binary(), guest.memfd.as_fd()).unwrap();
    let _handler = MissHandler::start(uffd, guest.image.clone());
    run_to_second_doorbell(&guest, &mut sim);
    sim.resume(Vec::new()).unwrap();
    match sim.next_exit().unwrap() {
        Exit::Crash { vector, rip, .. } => {
            assert_eq!(vector, 6, "#UD");
            assert_eq!(rip, CODE_A + 38);
        }
        other => panic!("expected a crash, got {other:?}"),
    }
    // The final state is still available after a crash.
    let out = sim.finish().unwrap();
    assert_eq!(out.cpu.rip, CODE_A + 38);
}

#[test]
fn page_fault_is_a_crash_with_cr2() {
    let guest = Guest::new(&INSTALLED);
    // Make the source page not present: the loop's first read faults.
    guest.write(PT0 + (SRC >> 12) * 8, &0u64.to_le_bytes());
    let (mut sim, uffd) = SimProcess::spawn(&binary(), guest.memfd.as_fd()).unwrap();
    let _handler = MissHandler::start(uffd, guest.image.clone());
    sim.start(&start_msg()).unwrap();
    match sim.next_exit().unwrap() {
        Exit::Crash {
            vector,
            rip,
            cr2,
            error_code,
            ..
        } => {
            assert_eq!(vector, 14);
            assert_eq!(rip, CODE_A + 5);
            assert_eq!(cr2, SRC);
            assert_eq!(error_code, 0b100, "not present, read, user");
        }
        other => panic!("expected a page fault, got {other:?}"),
    }
}

#[test]
fn simulator_dying_mid_interval_is_a_clear_error() {
    let guest = Guest::new(&INSTALLED);
    let (mut sim, uffd) = SimProcess::spawn(&binary(), guest.memfd.as_fd()).unwrap();
    let _handler = MissHandler::start(uffd, guest.image.clone());
    sim.start(&start_msg()).unwrap();
    assert!(matches!(sim.next_exit().unwrap(), Exit::Doorbell { .. }));
    // SAFETY: kill(2) on our own, not yet reaped child.
    assert_eq!(unsafe { libc::kill(sim.pid() as i32, libc::SIGKILL) }, 0);
    let err = sim
        .resume(Vec::new())
        .and_then(|()| sim.next_exit().map(|_| ()))
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Died { status } if status.contains("signal 9")),
        "{err}"
    );
}

#[test]
fn missing_binary_is_a_clear_error() {
    let guest = Guest::new(&[]);
    let err = SimProcess::spawn(
        std::path::Path::new("/nonexistent/simuboost-sim"),
        guest.memfd.as_fd(),
    )
    .err()
    .unwrap();
    assert!(matches!(err, ClientError::NotFound { .. }), "{err}");
}

/// Simulation speed on the loop (4-instruction blocks: the block hook's worst case), in each
/// mode. `cargo test --release -p simuboost-sim --test guest -- --ignored --nocapture speed`
#[test]
#[ignore = "a measurement, not a test"]
fn speed() {
    let iterations = 25_000_000u32;
    for (count, ws) in [(false, false), (true, false), (false, true), (true, true)] {
        let guest = Guest::new(&INSTALLED);
        let image = image_with(iterations);
        guest.write(CODE_A, &image[CODE_A as usize..CODE_A as usize + PAGE]);
        let (mut sim, uffd) = SimProcess::spawn(&binary(), guest.memfd.as_fd()).unwrap();
        let _handler = MissHandler::start(uffd, guest.image.clone());
        let mut start = start_msg();
        start.count_instructions = count;
        start.working_set = ws;
        start.timeout_ms = 60_000;
        sim.start(&start).unwrap();
        let exit = sim.next_exit().unwrap();
        assert!(matches!(exit, Exit::Doorbell { .. }), "{exit:?}");
        let out = sim.finish().unwrap();
        let n = 4 * u64::from(iterations) + 5;
        if count {
            assert_eq!(out.instructions, n);
        }
        eprintln!(
            "count={count} working_set={ws}: {n} instructions in {:.1} ms = {:.0} M/s",
            out.sim_ms,
            n as f64 / out.sim_ms / 1000.0
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Analyses (issue 11), on the same two doorbells. Counted by hand from the program at the top:
// - data: the loop reads SRC 10 times and reads and writes DST 10 times (`add [rdi], rax`);
//   each `call` writes the stack frame 0x2f, the `ret` reads it; `mov rax, [rdx]` reads DEV
//   once. The doorbell stores go to MMIO, not RAM: no access.
// - fetches: 45 instructions start in page A, 5 in page B (2 + ret + 2), 50 in all.

/// Every analysis with a 1 KiB, 2-way, 64-byte-line L1 (8 sets).
fn analyses_start(batch_rows: u32, limit: u64) -> Start {
    let mut start = start_msg();
    start.analyses = AnalysisRequest {
        blocks: true,
        pages: true,
        trace: Some(TraceRequest { limit, batch_rows }),
        cache: Some(CacheConfig {
            levels: vec![CacheLevel {
                size: 1024,
                ways: 2,
                line: 64,
            }],
        }),
        custom: vec!["sizes".into()],
    };
    start
}

/// Runs the two doorbells with `start`, returning the outcome and the trace rows received.
fn analyse(start: &Start) -> (Final, TraceBatch, usize) {
    let guest = Guest::new(&INSTALLED);
    let (mut sim, uffd) = SimProcess::spawn(&binary(), guest.memfd.as_fd()).unwrap();
    let _handler = MissHandler::start(uffd, guest.image.clone());
    let mut trace = TraceBatch::default();
    let mut batches = 0;
    run_to_second_doorbell_with(&guest, &mut sim, start, &mut |b: TraceBatch| {
        batches += 1;
        trace.icount.extend(&b.icount);
        trace.rip.extend(&b.rip);
        trace.vaddr.extend(&b.vaddr);
        trace.paddr.extend(&b.paddr);
        trace.size.extend(&b.size);
        trace.kind.extend(&b.kind);
        Ok(())
    });
    let out = sim.finish().unwrap();
    (out, trace, batches)
}

#[test]
fn blocks_counts_every_block_and_adds_up_to_the_instruction_count() {
    let (out, _, _) = analyse(&analyses_start(1000, 0));
    let b = |vaddr, size, icount, executions, instructions| BlockCount {
        vaddr,
        size,
        icount,
        executions,
        instructions,
    };
    assert_eq!(
        out.analysis.blocks,
        vec![
            b(CODE_A, 15, 5, 1, 5),      // mov ecx; first iteration
            b(CODE_A + 5, 10, 4, 9, 36), // the other nine
            b(CODE_A + 15, 15, 2, 1, 2), // movabs; call
            b(CODE_A + 30, 8, 2, 1, 2),  // mov rax, [rdx]; call
            b(CODE_B, 11, 3, 2, 4),      // stopped after the doorbell store, twice
            b(CODE_B + 10, 1, 1, 1, 1),  // the ret after doorbell 1
        ]
    );
    let sum: u64 = out.analysis.blocks.iter().map(|b| b.instructions).sum();
    assert_eq!(sum, out.instructions);
    assert_eq!(sum, 50);
}

#[test]
fn pages_counts_reads_writes_and_fetches_per_frame() {
    let (out, _, _) = analyse(&analyses_start(1000, 0));
    let p = |gfn, reads, writes, fetches| PageCount {
        gfn,
        reads,
        writes,
        fetches,
    };
    assert_eq!(
        out.analysis.pages,
        vec![
            p(0x10, 0, 0, 45),
            p(0x11, 0, 0, 5),
            p(0x20, 10, 0, 0),
            p(0x21, 10, 10, 0),
            p(0x23, 1, 0, 0),
            p(0x2f, 1, 2, 0),
        ]
    );
    // The same frames as the working set, with the same kinds.
    let kinds: Vec<AccessedFrame> = out
        .analysis
        .pages
        .iter()
        .map(|p| AccessedFrame {
            gfn: p.gfn,
            read: p.reads > 0,
            write: p.writes > 0,
            fetch: p.fetches > 0,
        })
        .collect();
    assert_eq!(kinds, out.accessed);
}

#[test]
fn trace_rows_add_up_to_the_page_counts() {
    // 7-row batches: several full ones are sent mid-run, the rest at each exit.
    let (out, trace, batches) = analyse(&analyses_start(7, 0));
    assert!(trace.is_consistent());
    assert_eq!(trace.len(), 84, "34 data accesses + 50 fetches");
    assert!(batches >= 84 / 7, "{batches} batches");
    assert_eq!(
        out.analysis.trace.unwrap(),
        simuboost_sim_proto::TraceSummary {
            rows: 84,
            dropped: 0
        }
    );
    let mut per_frame = std::collections::BTreeMap::<u64, [u64; 3]>::new();
    for i in 0..trace.len() {
        let kind = AccessKind::from_u8(trace.kind[i]).unwrap();
        per_frame.entry(trace.paddr[i] >> 12).or_default()[kind as usize] += 1;
        // The guest is identity-mapped.
        assert_eq!(trace.vaddr[i], trace.paddr[i]);
    }
    let pages: Vec<PageCount> = per_frame
        .into_iter()
        .map(|(gfn, c)| PageCount {
            gfn,
            reads: c[0],
            writes: c[1],
            fetches: c[2],
        })
        .collect();
    assert_eq!(pages, out.analysis.pages);
    // Instruction counts rise by one per fetch and end at the doorbell store.
    let fetches: Vec<u64> = (0..trace.len())
        .filter(|&i| trace.kind[i] == AccessKind::Fetch as u8)
        .map(|i| trace.icount[i])
        .collect();
    assert_eq!(fetches, (1..=50).collect::<Vec<u64>>());
    // The loop's first read: instruction 2, at A+5, of SRC, 8 bytes.
    let first_read = (0..trace.len())
        .find(|&i| trace.kind[i] == AccessKind::Read as u8)
        .unwrap();
    assert_eq!(
        (
            trace.icount[first_read],
            trace.rip[first_read],
            trace.paddr[first_read],
            trace.size[first_read]
        ),
        (2, CODE_A + 5, SRC, 8)
    );
    // The last fetch is the doorbell store, 3 bytes at B+7.
    let last = trace.len() - 1;
    assert_eq!(
        (trace.kind[last], trace.rip[last], trace.size[last]),
        (AccessKind::Fetch as u8, CODE_B + 7, 3)
    );
}

#[test]
fn trace_limit_bounds_the_rows() {
    let (out, trace, _) = analyse(&analyses_start(16, 20));
    assert_eq!(trace.len(), 20);
    let summary = out.analysis.trace.unwrap();
    assert_eq!((summary.rows, summary.dropped), (20, 64));
    // The other analyses saw everything.
    assert_eq!(
        out.analysis.pages.iter().map(|p| p.fetches).sum::<u64>(),
        50
    );
}

#[test]
fn cache_hits_and_misses_equal_the_data_accesses() {
    let (out, trace, _) = analyse(&analyses_start(1000, 0));
    let data = trace
        .kind
        .iter()
        .filter(|&&k| k != AccessKind::Fetch as u8)
        .count() as u64;
    assert_eq!(data, 34);
    let cache = out.analysis.cache.unwrap();
    // By hand (8 sets; SRC, DST and DEV share set 0, the stack line is in set 7): compulsory
    // misses for SRC, DST and the stack, then DEV evicts SRC: 4 misses, 30 hits.
    assert_eq!(
        cache.totals,
        vec![LevelCounts {
            hits: 30,
            misses: 4
        }]
    );
    let per_block: Vec<(u64, u64, u64)> = cache
        .blocks
        .iter()
        .map(|b| (b.vaddr, b.levels[0].hits, b.levels[0].misses))
        .collect();
    assert_eq!(
        per_block,
        vec![
            (CODE_A, 1, 2),
            (CODE_A + 5, 27, 0),
            (CODE_A + 15, 0, 1),
            (CODE_A + 30, 1, 1),
            (CODE_B + 10, 1, 0),
        ]
    );
    // Two levels: L2 sees exactly L1's misses.
    let mut start = analyses_start(1000, 0);
    start.analyses.cache = Some(CacheConfig {
        levels: vec![
            CacheLevel {
                size: 128,
                ways: 1,
                line: 64,
            },
            CacheLevel {
                size: 4096,
                ways: 4,
                line: 64,
            },
        ],
    });
    let (out, _, _) = analyse(&start);
    let t = out.analysis.cache.unwrap().totals;
    assert_eq!(t[0].hits + t[0].misses, 34);
    assert_eq!(t[1].hits + t[1].misses, t[0].misses);
    assert_eq!(t[1].misses, 4, "L2 holds all four lines");
}

#[test]
fn a_custom_analysis_reports_its_rows() {
    let (out, _, _) = analyse(&analyses_start(1000, 0));
    assert_eq!(out.analysis.custom.len(), 1);
    assert_eq!(out.analysis.custom[0].name, "sizes");
    assert_eq!(
        out.analysis.custom[0].rows,
        vec![("read 8".to_string(), 22), ("write 8".to_string(), 12)]
    );
}

#[test]
fn the_same_analysis_twice_gives_identical_results() {
    let (a, ta, _) = analyse(&analyses_start(7, 0));
    let (b, tb, _) = analyse(&analyses_start(7, 0));
    assert_eq!(a.analysis, b.analysis);
    assert_eq!(ta, tb);
    assert_eq!(a.instructions, b.instructions);
}

#[test]
fn an_unknown_analysis_or_a_bad_cache_is_a_clear_error() {
    for (edit, expect) in [
        (
            Box::new(|s: &mut Start| s.analyses.custom = vec!["nope".into()])
                as Box<dyn Fn(&mut Start)>,
            "no analysis named \"nope\"",
        ),
        (
            Box::new(|s: &mut Start| {
                s.analyses.cache = Some(CacheConfig {
                    levels: vec![CacheLevel {
                        size: 1000,
                        ways: 2,
                        line: 64,
                    }],
                })
            }),
            "power of two",
        ),
    ] {
        let guest = Guest::new(&INSTALLED);
        let (mut sim, uffd) = SimProcess::spawn(&binary(), guest.memfd.as_fd()).unwrap();
        let _handler = MissHandler::start(uffd, guest.image.clone());
        let mut start = start_msg();
        edit(&mut start);
        sim.start(&start).unwrap();
        match sim.next_exit() {
            Ok(Exit::Error { message }) => assert!(message.contains(expect), "{message}"),
            other => panic!("expected an error, got {other:?}"),
        }
    }
}

/// Simulation speed per analysis level on the loop (4-instruction blocks, 3 data accesses per
/// iteration: a worst case for per-access hooks).
/// `cargo test --release -p simuboost-sim --test guest -- --ignored --nocapture analysis_speed`
#[test]
#[ignore = "a measurement, not a test"]
fn analysis_speed() {
    let cache = Some(CacheConfig {
        levels: vec![CacheLevel {
            size: 32 * 1024,
            ways: 8,
            line: 64,
        }],
    });
    let trace = Some(TraceRequest {
        limit: 0,
        batch_rows: 64 * 1024,
    });
    let levels: [(&str, AnalysisRequest); 6] = [
        ("count only", AnalysisRequest::default()),
        (
            "blocks",
            AnalysisRequest {
                blocks: true,
                ..AnalysisRequest::default()
            },
        ),
        (
            "pages",
            AnalysisRequest {
                pages: true,
                ..AnalysisRequest::default()
            },
        ),
        (
            "cache",
            AnalysisRequest {
                cache: cache.clone(),
                ..AnalysisRequest::default()
            },
        ),
        (
            "trace",
            AnalysisRequest {
                trace,
                ..AnalysisRequest::default()
            },
        ),
        (
            "all",
            AnalysisRequest {
                blocks: true,
                pages: true,
                trace,
                cache,
                custom: Vec::new(),
            },
        ),
    ];
    for (name, request) in levels {
        let iterations = 5_000_000u32;
        let guest = Guest::new(&INSTALLED);
        let image = image_with(iterations);
        guest.write(CODE_A, &image[CODE_A as usize..CODE_A as usize + PAGE]);
        let (mut sim, uffd) = SimProcess::spawn(&binary(), guest.memfd.as_fd()).unwrap();
        let _handler = MissHandler::start(uffd, guest.image.clone());
        let mut start = start_msg();
        start.analyses = request;
        start.timeout_ms = 120_000;
        sim.start(&start).unwrap();
        let (mut rows, mut bytes) = (0u64, 0u64);
        let t0 = std::time::Instant::now();
        let exit = sim
            .next_exit_with(&mut |b: TraceBatch| {
                rows += b.len() as u64;
                // What the batch costs on the wire, roughly (bincode varints).
                bytes += b.len() as u64 * 20;
                Ok(())
            })
            .unwrap();
        let wall = t0.elapsed();
        assert!(matches!(exit, Exit::Doorbell { .. }), "{exit:?}");
        let out = sim.finish().unwrap();
        let n = 4 * u64::from(iterations) + 5;
        assert_eq!(out.instructions, n);
        eprintln!(
            "{name:>10}: {n} instructions in {:.0} ms (wall {:.0} ms) = {:.1} M instr/s; trace rows {rows} (~{} MB on the wire)",
            out.sim_ms,
            wall.as_secs_f64() * 1000.0,
            n as f64 / out.sim_ms / 1000.0,
            bytes >> 20
        );
    }
}
