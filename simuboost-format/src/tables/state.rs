//! `state/ckpt-N.parquet`: the vCPU and device state at checkpoint N, one row.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{Array, ListArray, StructArray, UInt32Array, UInt64Array};
use arrow_buffer::OffsetBuffer;

use super::columns::{
    msr_fields, msr_item_field, read_one_row, write_table, BatchBuilder, Cols, Column,
    ColumnType::{Binary, MsrList, Utf8, U64},
    Settings, Table,
};
use crate::records::{CheckpointState, GeneralRegs, VcpuState};
use crate::storage::RunStorage;
use crate::{layout, FormatError};

const REG: &str = "General registers (`kvm_regs`).";

pub(crate) const TABLE: Table = Table {
    dir: layout::STATE_DIR,
    columns: &[
        Column::new("checkpoint", U64, "N."),
        Column::new(
            "exit",
            U64,
            "Guest-initiated exits since boot at this boundary.",
        ),
        // The names of GeneralRegs::NAMES (writing fails if they differ).
        Column::new("rax", U64, REG),
        Column::new("rbx", U64, REG),
        Column::new("rcx", U64, REG),
        Column::new("rdx", U64, REG),
        Column::new("rsi", U64, REG),
        Column::new("rdi", U64, REG),
        Column::new("rsp", U64, REG),
        Column::new("rbp", U64, REG),
        Column::new("r8", U64, REG),
        Column::new("r9", U64, REG),
        Column::new("r10", U64, REG),
        Column::new("r11", U64, REG),
        Column::new("r12", U64, REG),
        Column::new("r13", U64, REG),
        Column::new("r14", U64, REG),
        Column::new("r15", U64, REG),
        Column::new("rip", U64, REG),
        Column::new("rflags", U64, REG),
        Column::new("sregs", Binary, "Raw `kvm_sregs`."),
        // Named for what it used to hold; the VMM saves the whole XSAVE area since it needs
        // AVX state too (simuboost-vmm's persist::Persist for VcpuSnapshot).
        Column::new(
            "fpu",
            Binary,
            "Raw `kvm_xsave` (4096 bytes: the XSAVE area with the x87, SSE and AVX state), not \
             `kvm_fpu`.",
        ),
        Column::new("xcrs", Binary, "Raw `kvm_xcrs`."),
        Column::new("debugregs", Binary, "Raw `kvm_debugregs`."),
        Column::new("vcpu_events", Binary, "Raw `kvm_vcpu_events`."),
        Column::new(
            "msrs",
            MsrList,
            "Saved MSRs, in the order the VMM saved them.",
        ),
        Column::new(
            "device",
            Utf8,
            "Device state as JSON, defined by the VMM (opaque to the format).",
        ),
    ],
    settings: Settings::Small,
};

pub(crate) fn write(path: &Path, state: &CheckpointState) -> Result<u64, FormatError> {
    let vcpu = &state.vcpu;
    let msr_values = StructArray::try_new(
        msr_fields(),
        vec![
            Arc::new(UInt32Array::from_iter_values(vcpu.msrs.iter().map(|m| m.0))),
            Arc::new(UInt64Array::from_iter_values(vcpu.msrs.iter().map(|m| m.1))),
        ],
        None,
    )
    .map_err(|e| FormatError::arrow(path, e))?;
    let msrs = ListArray::try_new(
        msr_item_field(),
        OffsetBuffer::from_lengths([vcpu.msrs.len()]),
        Arc::new(msr_values),
        None,
    )
    .map_err(|e| FormatError::arrow(path, e))?;

    let mut b = BatchBuilder::new(&TABLE, 1);
    b.number("checkpoint", state.checkpoint)
        .u64s("exit", [state.exit]);
    for (name, value) in GeneralRegs::NAMES.into_iter().zip(vcpu.regs.values()) {
        b.u64s(name, [value]);
    }
    let batch = b
        .binaries("sregs", [vcpu.sregs.as_slice()])
        .binaries("fpu", [vcpu.fpu.as_slice()])
        .binaries("xcrs", [vcpu.xcrs.as_slice()])
        .binaries("debugregs", [vcpu.debugregs.as_slice()])
        .binaries("vcpu_events", [vcpu.vcpu_events.as_slice()])
        .set("msrs", Arc::new(msrs))
        .strs("device", [state.device_json.as_str()])
        .finish(path)?;
    write_table(path, &TABLE, &[batch])
}

pub(crate) fn read(
    storage: &dyn RunStorage,
    path: &Path,
    checkpoint: u64,
) -> Result<CheckpointState, FormatError> {
    let batch = read_one_row(storage, path)?;
    let cols = Cols::new(&batch, path);
    cols.check_number("checkpoint", checkpoint)?;
    let u64_of = |name| cols.u64s(name).map(|v| v[0]);
    let blob = |name| cols.binaries(name).map(|a| a.value(0).to_vec());
    let mut regs = [0u64; 18];
    for (v, name) in regs.iter_mut().zip(GeneralRegs::NAMES) {
        *v = u64_of(name)?;
    }
    Ok(CheckpointState {
        checkpoint,
        exit: u64_of("exit")?,
        vcpu: VcpuState {
            regs: GeneralRegs::from_values(regs),
            sregs: blob("sregs")?,
            fpu: blob("fpu")?,
            xcrs: blob("xcrs")?,
            debugregs: blob("debugregs")?,
            vcpu_events: blob("vcpu_events")?,
            msrs: read_msrs(&cols)?,
        },
        device_json: cols.strs("device")?.value(0).to_string(),
    })
}

/// The `(index, value)` pairs of the one row's `msrs` list.
fn read_msrs(cols: &Cols<'_>) -> Result<Vec<(u32, u64)>, FormatError> {
    let path = cols.path;
    let msr_list =
        cols.required::<ListArray>("msrs", "List<Struct<index UInt32, value UInt64>>")?;
    let msr_row = msr_list.value(0);
    let msr_struct = msr_row
        .as_any()
        .downcast_ref::<StructArray>()
        .ok_or_else(|| FormatError::corrupt(path, "column `msrs` items are not structs"))?;
    let field = |name: &str| {
        msr_struct
            .column_by_name(name)
            .ok_or_else(|| FormatError::corrupt(path, format!("column `msrs` has no `{name}`")))
    };
    let index = field("index")?
        .as_any()
        .downcast_ref::<UInt32Array>()
        .ok_or_else(|| FormatError::corrupt(path, "msrs.index is not UInt32"))?;
    let value = field("value")?
        .as_any()
        .downcast_ref::<UInt64Array>()
        .ok_or_else(|| FormatError::corrupt(path, "msrs.value is not UInt64"))?;
    if index.null_count() != 0 || value.null_count() != 0 || msr_struct.null_count() != 0 {
        return Err(FormatError::corrupt(path, "column `msrs` has NULLs"));
    }
    Ok(index
        .values()
        .iter()
        .copied()
        .zip(value.values().iter().copied())
        .collect())
}
