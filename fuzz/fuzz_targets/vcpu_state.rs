//! The vCPU state decoder (`persist`: the raw KVM structures a state file stores as blobs).
//!
//! Input: five blobs, each a little-endian u16 length and its bytes, in the order sregs, fpu
//! (kvm_xsave), xcrs, debugregs, vcpu_events; then the 18 general registers (8 bytes each,
//! zero-padded) and MSRs (12 bytes each: u32 index, u64 value). The seeds are a real run's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simuboost_format::{GeneralRegs, VcpuState};
use simuboost_vmm::persist::Persist;
use simuboost_vmm::vstate::vcpu::VcpuSnapshot;

fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(data.len());
    let (head, tail) = data.split_at(n);
    *data = tail;
    head
}

fn blob(data: &mut &[u8]) -> Vec<u8> {
    let len = take(data, 2);
    let len = match len {
        [a, b] => u16::from_le_bytes([*a, *b]) as usize,
        _ => 0,
    };
    take(data, len).to_vec()
}

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let (sregs, fpu, xcrs, debugregs, vcpu_events) = (
        blob(&mut data),
        blob(&mut data),
        blob(&mut data),
        blob(&mut data),
        blob(&mut data),
    );
    let mut regs = [0u64; 18];
    for r in &mut regs {
        let mut b = [0u8; 8];
        let bytes = take(&mut data, 8);
        b[..bytes.len()].copy_from_slice(bytes);
        *r = u64::from_le_bytes(b);
    }
    let msrs = data
        .chunks_exact(12)
        .map(|c| {
            (
                u32::from_le_bytes(c[..4].try_into().unwrap()),
                u64::from_le_bytes(c[4..].try_into().unwrap()),
            )
        })
        .collect();
    let state = VcpuState {
        regs: GeneralRegs::from_values(regs),
        sregs,
        fpu,
        xcrs,
        debugregs,
        vcpu_events,
        msrs,
    };
    if let Ok(snapshot) = VcpuSnapshot::restore((), &state) {
        // Accepted only with every blob the size of its structure: it saves back byte for byte.
        assert_eq!(snapshot.save(), state);
    }
});
