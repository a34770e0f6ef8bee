//! Save/restore of the machine's state as the run format stores it: the one place where the
//! VMM's types meet simuboost-format's records.
//!
//! In the spirit of Firecracker's `Persist` trait, each component that outlives a checkpoint
//! implements [`Persist`]: `save` gives its persistent form, `restore` rebuilds it from that
//! form (and whatever else it needs). The recorder saves, the replayer restores, and neither
//! converts anything field by field itself.

use kvm_bindings::{kvm_cpuid_entry2, kvm_regs, CpuId};
use zerocopy::{FromBytes, IntoBytes};

use simuboost_format::{CheckpointState, CpuidEntry, Event, GeneralRegs, VcpuState};

use crate::devices::{DeviceEvent, DeviceSnapshot};
use crate::machine::MachineSnapshot;
use crate::vstate::vcpu::VcpuSnapshot;

/// A component that can be saved to, and restored from, a persistent form.
pub trait Persist: Sized {
    /// The persistent form.
    type State;
    /// What a restore needs besides the state.
    type ConstructorArgs;
    /// Why a state cannot be restored.
    type Error: std::error::Error;

    /// The persistent form of `self`.
    fn save(&self) -> Self::State;
    /// Rebuilds the component from its persistent form.
    fn restore(args: Self::ConstructorArgs, state: &Self::State) -> Result<Self, Self::Error>;
}

/// Why a saved state does not restore.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// A KVM structure stored as raw bytes has the wrong size.
    #[error("the vCPU state's {what} is {len} bytes, {expected} expected")]
    BadBlob {
        /// Which structure.
        what: &'static str,
        /// Its stored length.
        len: usize,
        /// The size of the KVM structure.
        expected: usize,
    },
    /// The device state does not decode.
    #[error("the device state does not decode: {0}")]
    Device(#[source] serde_json::Error),
    /// A run's CPUID has more leaves than KVM takes.
    #[error("the run's CPUID lists {0} leaves; KVM takes at most {max}", max = kvm_bindings::KVM_MAX_CPUID_ENTRIES)]
    CpuidTooLong(usize),
}

fn blob<T: FromBytes>(what: &'static str, bytes: &[u8]) -> Result<T, PersistError> {
    T::read_from_bytes(bytes).map_err(|_| PersistError::BadBlob {
        what,
        len: bytes.len(),
        expected: std::mem::size_of::<T>(),
    })
}

fn general_regs(r: &kvm_regs) -> GeneralRegs {
    GeneralRegs {
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        rsp: r.rsp,
        rbp: r.rbp,
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        rip: r.rip,
        rflags: r.rflags,
    }
}

fn kvm_general_regs(g: &GeneralRegs) -> kvm_regs {
    kvm_regs {
        rax: g.rax,
        rbx: g.rbx,
        rcx: g.rcx,
        rdx: g.rdx,
        rsi: g.rsi,
        rdi: g.rdi,
        rsp: g.rsp,
        rbp: g.rbp,
        r8: g.r8,
        r9: g.r9,
        r10: g.r10,
        r11: g.r11,
        r12: g.r12,
        r13: g.r13,
        r14: g.r14,
        r15: g.r15,
        rip: g.rip,
        rflags: g.rflags,
    }
}

/// Registers as numbers, everything else as the raw bytes of KVM's structures (`kvm_sregs`,
/// `kvm_xsave`, `kvm_xcrs`, `kvm_debugregs`, `kvm_vcpu_events`).
impl Persist for VcpuSnapshot {
    type State = VcpuState;
    type ConstructorArgs = ();
    type Error = PersistError;

    fn save(&self) -> VcpuState {
        VcpuState {
            regs: general_regs(&self.regs),
            sregs: self.sregs.as_bytes().to_vec(),
            fpu: self.xsave.as_bytes().to_vec(),
            xcrs: self.xcrs.as_bytes().to_vec(),
            debugregs: self.debugregs.as_bytes().to_vec(),
            vcpu_events: self.events.as_bytes().to_vec(),
            msrs: self.msrs.clone(),
        }
    }

    fn restore(_: (), saved: &VcpuState) -> Result<VcpuSnapshot, PersistError> {
        Ok(VcpuSnapshot {
            regs: kvm_general_regs(&saved.regs),
            sregs: blob("sregs", &saved.sregs)?,
            xsave: blob("fpu (kvm_xsave)", &saved.fpu)?,
            xcrs: blob("xcrs", &saved.xcrs)?,
            debugregs: blob("debugregs", &saved.debugregs)?,
            events: blob("vcpu_events", &saved.vcpu_events)?,
            msrs: saved.msrs.clone(),
        })
    }
}

/// The device state is JSON in the state table's `device` column: small, and readable in
/// DuckDB.
impl Persist for DeviceSnapshot {
    type State = String;
    type ConstructorArgs = ();
    type Error = PersistError;

    fn save(&self) -> String {
        // A struct of integers always encodes.
        serde_json::to_string(self).unwrap_or_default()
    }

    fn restore(_: (), json: &String) -> Result<DeviceSnapshot, PersistError> {
        serde_json::from_str(json).map_err(PersistError::Device)
    }
}

/// The whole machine apart from memory; the checkpoint number is the format's, not the
/// machine's, so a restore ignores it and a save leaves it for the caller to set.
impl Persist for MachineSnapshot {
    type State = CheckpointState;
    type ConstructorArgs = ();
    type Error = PersistError;

    fn save(&self) -> CheckpointState {
        CheckpointState {
            checkpoint: 0,
            exit: self.exits,
            vcpu: self.vcpu.save(),
            device_json: self.device.save(),
        }
    }

    fn restore(_: (), state: &CheckpointState) -> Result<MachineSnapshot, PersistError> {
        Ok(MachineSnapshot {
            exits: state.exit,
            vcpu: VcpuSnapshot::restore((), &state.vcpu)?,
            device: DeviceSnapshot::restore((), &state.device_json)?,
        })
    }
}

/// The stored form of `event`, as part of `interval` (moved, not cloned: an interval's disk
/// reads can be hundreds of MiB).
fn stored_event(event: DeviceEvent, interval: u64) -> Event {
    Event {
        interval,
        exit: event.exit,
        op: event.op,
        args: event.args,
        status: event.status,
        ret: event.ret,
        data_gpa: event.data_gpa,
        data: event.data.map(|data| match data {
            crate::devices::EventData::Bytes(bytes) => simuboost_format::EventData::Bytes(bytes),
            crate::devices::EventData::Pages(pages) => simuboost_format::EventData::Pages(pages),
        }),
    }
}

/// The event a stored one describes.
fn device_event(saved: Event) -> DeviceEvent {
    DeviceEvent {
        exit: saved.exit,
        op: saved.op,
        args: saved.args,
        status: saved.status,
        ret: saved.ret,
        data_gpa: saved.data_gpa,
        data: saved.data.map(|data| match data {
            simuboost_format::EventData::Bytes(bytes) => crate::devices::EventData::Bytes(bytes),
            simuboost_format::EventData::Pages(pages) => crate::devices::EventData::Pages(pages),
        }),
    }
}

/// An event is stored with the interval it falls in.
impl Persist for DeviceEvent {
    type State = Event;
    /// Unused on restore; the interval is the format's.
    type ConstructorArgs = ();
    type Error = std::convert::Infallible;

    fn save(&self) -> Event {
        stored_event(self.clone(), 0)
    }

    fn restore(_: (), saved: &Event) -> Result<DeviceEvent, Self::Error> {
        Ok(device_event(saved.clone()))
    }
}

/// The events of `interval`, in their persistent form.
pub fn save_events(interval: u64, events: Vec<DeviceEvent>) -> Vec<Event> {
    events
        .into_iter()
        .map(|e| stored_event(e, interval))
        .collect()
}

/// `cpuid` as a run keeps it (manifest `meta.cpuid`).
pub fn save_cpuid(cpuid: &CpuId) -> Vec<CpuidEntry> {
    cpuid
        .as_slice()
        .iter()
        .map(|e| CpuidEntry {
            function: e.function,
            index: e.index,
            flags: e.flags,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
        })
        .collect()
}

/// A run's CPUID as KVM takes it; `None` for a run that recorded none.
pub fn restore_cpuid(saved: &[CpuidEntry]) -> Result<Option<CpuId>, PersistError> {
    if saved.is_empty() {
        return Ok(None);
    }
    let entries: Vec<kvm_cpuid_entry2> = saved
        .iter()
        .map(|e| kvm_cpuid_entry2 {
            function: e.function,
            index: e.index,
            flags: e.flags,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
            ..Default::default()
        })
        .collect();
    CpuId::from_entries(&entries)
        .map(Some)
        .map_err(|_| PersistError::CpuidTooLong(saved.len()))
}

/// Events read back from a run, for a replay.
pub fn restore_events(saved: Vec<Event>) -> Vec<DeviceEvent> {
    saved.into_iter().map(device_event).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::{kvm_sregs, kvm_xsave};

    fn snapshot() -> VcpuSnapshot {
        let mut regs = kvm_regs::default();
        (regs.rax, regs.rip, regs.r15, regs.rflags) = (1, 0x40_1000, 15, 0x202);
        let mut sregs = kvm_sregs::default();
        (sregs.cr3, sregs.efer, sregs.gdt.base) = (0x4000, 0x500, 0x1000);
        let mut xsave = kvm_xsave::default();
        xsave.region[7] = 0x1f80;
        VcpuSnapshot {
            regs,
            sregs,
            xsave,
            xcrs: Default::default(),
            debugregs: Default::default(),
            events: Default::default(),
            msrs: vec![(0xc000_0102, 7)],
        }
    }

    #[test]
    fn machine_state_round_trips() {
        let machine = MachineSnapshot {
            exits: 42,
            vcpu: snapshot(),
            device: DeviceSnapshot {
                rng_word_pos: 1 << 70,
                requests: 3,
                clock_ns: 9,
                disk_read_bytes: 4096,
                disk_write_bytes: 0,
            },
        };
        let saved = machine.save();
        assert_eq!(saved.exit, 42);
        assert_eq!(saved.vcpu.fpu.len(), std::mem::size_of::<kvm_xsave>());
        let back = MachineSnapshot::restore((), &saved).expect("restores");
        assert_eq!(back.save(), saved);
        assert_eq!(back.vcpu.regs.rip, 0x40_1000);
        assert_eq!(back.vcpu.sregs.cr3, 0x4000);
        assert_eq!(back.device, machine.device);
    }

    #[test]
    fn bad_states_are_named() {
        let mut saved = snapshot().save();
        saved.sregs.truncate(10);
        let e = VcpuSnapshot::restore((), &saved)
            .err()
            .expect("short sregs");
        assert!(e.to_string().contains("sregs is 10 bytes"), "{e}");
        let e = DeviceSnapshot::restore((), &"{".to_string()).expect_err("bad JSON");
        assert!(e.to_string().contains("device state"), "{e}");
    }

    #[test]
    fn events_keep_their_interval_and_data() {
        let event = DeviceEvent {
            exit: 5,
            op: 2,
            args: [1, 2, 3],
            status: 0,
            ret: 4096,
            data_gpa: Some(0x8000),
            data: Some(crate::devices::EventData::Bytes(vec![7; 16])),
        };
        let saved = save_events(3, vec![event.clone()]);
        assert_eq!(saved[0].interval, 3);
        assert_eq!(DeviceEvent::restore((), &saved[0]), Ok(event.clone()));
        assert_eq!(restore_events(saved), vec![event]);
    }
}
