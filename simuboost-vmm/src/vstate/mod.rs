//! KVM-facing state: the VM, its vCPU and its memory.

pub mod dirty;
pub mod memory;
pub mod vcpu;
pub mod vm;
