//! The KVM VM: opening /dev/kvm, creating the VM, registering guest RAM.

use kvm_bindings::{kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VmFd};

use super::memory::{host_region, GuestMemory};
use super::vcpu::{Vcpu, VcpuError};

/// The memslot that holds all of guest RAM.
pub const RAM_SLOT: u32 = 0;

/// Where KVM may put the three pages of its real-mode TSS (Intel hosts need it; harmless
/// elsewhere). Just below 4 GiB, far above any RAM the layout maps below it.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// Errors creating or driving the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm does not exist.
    #[error(
        "/dev/kvm does not exist: this host has no KVM. Load the module (`modprobe kvm_intel`, \
         `modprobe kvm_amd` or your platform's KVM module) or run on a host with virtualization"
    )]
    KvmMissing,
    /// /dev/kvm exists but cannot be opened.
    #[error(
        "permission denied opening /dev/kvm: run as root, or add your user to the group that owns \
         /dev/kvm (often `kvm`: `sudo usermod -aG kvm $USER`, then log in again)"
    )]
    KvmPermission,
    /// Any other failure opening /dev/kvm.
    #[error("cannot open /dev/kvm: {0}")]
    KvmOpen(#[source] kvm_ioctls::Error),
    /// The KVM API version is not the stable one.
    #[error("KVM API version {0} is not supported (need 12)")]
    ApiVersion(i32),
    /// A KVM ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Ioctl {
        /// The operation.
        what: &'static str,
        /// The error KVM returned.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Creating the vCPU failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
}

/// The CPUID `kvm` can give a guest.
fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, VmError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(ioctl("get supported CPUID"))
}

/// The CPUID this host's KVM can give a guest, from /dev/kvm: what a recorder records before
/// it creates the VM.
pub fn host_cpuid() -> Result<CpuId, VmError> {
    supported_cpuid(&open_kvm()?)
}

/// Opens /dev/kvm, checking its API version.
fn open_kvm() -> Result<Kvm, VmError> {
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT => VmError::KvmMissing,
        libc::EACCES | libc::EPERM => VmError::KvmPermission,
        _ => VmError::KvmOpen(e),
    })?;
    let api = kvm.get_api_version();
    if api != kvm_bindings::KVM_API_VERSION as i32 {
        return Err(VmError::ApiVersion(api));
    }
    Ok(kvm)
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Ioctl { what, source }
}

/// A KVM VM with its RAM registered.
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
}

impl Vm {
    /// Opens /dev/kvm, creates a VM and registers `memory` as its RAM, with KVM's dirty
    /// logging on if `log_dirty`.
    pub fn new(memory: &GuestMemory, log_dirty: bool) -> Result<Vm, VmError> {
        let kvm = open_kvm()?;
        let fd = kvm.create_vm().map_err(ioctl("create VM"))?;
        fd.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(ioctl("set TSS address"))?;
        let (host, mem_bytes) = host_region(memory);
        let region = kvm_userspace_memory_region {
            slot: RAM_SLOT,
            flags: if log_dirty {
                kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES
            } else {
                0
            },
            guest_phys_addr: 0,
            memory_size: mem_bytes,
            userspace_addr: host as u64,
        };
        // SAFETY: `host..host+mem_bytes` is a live mapping owned by `memory`, which the caller
        // keeps alive for as long as the VM exists (Machine owns both and drops the VM first).
        unsafe { fd.set_user_memory_region(region) }.map_err(ioctl("set memory region"))?;
        Ok(Vm { kvm, fd })
    }

    /// The CPUID this host's KVM can give a guest: what a new run's vCPU gets.
    pub fn supported_cpuid(&self) -> Result<CpuId, VmError> {
        supported_cpuid(&self.kvm)
    }

    /// Creates vCPU 0 with `cpuid`, configured to enter the guest at `entry` in 64-bit mode.
    pub fn create_vcpu(&self, cpuid: &CpuId, entry: u64) -> Result<Vcpu, VmError> {
        let vcpu = self.create_bare_vcpu()?;
        vcpu.configure(cpuid, entry)?;
        Ok(vcpu)
    }

    /// Creates vCPU 0 unconfigured, for a state to be restored into it (its CPUID first:
    /// [`Vcpu::set_cpuid`]).
    pub fn create_bare_vcpu(&self) -> Result<Vcpu, VmError> {
        let fd = self.fd.create_vcpu(0).map_err(ioctl("create vCPU"))?;
        Ok(Vcpu::new(fd))
    }

    /// The VM file descriptor, for the subsystems that add to the VM (dirty log, tracing).
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The KVM system file descriptor.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }
}
