//! state/ckpt-N.parquet: any bytes as the vCPU and device state of the checkpoint the first byte chooses, read and
//! then decoded into the machine snapshot a replay restores (the `persist` decoders).
#![no_main]

use libfuzzer_sys::fuzz_target;
use simuboost_format::layout;
use simuboost_fuzz::CHECKPOINTS;
use simuboost_vmm::machine::MachineSnapshot;
use simuboost_vmm::persist::Persist;

fuzz_target!(|data: &[u8]| {
    let run = simuboost_fuzz::run();
    let (checkpoint, data) = simuboost_fuzz::numbered(data, CHECKPOINTS);
    simuboost_fuzz::put(&layout::state_table(run.dir(), checkpoint), data);
    if let Ok(state) = run.state(checkpoint) {
        assert_eq!(state.checkpoint, checkpoint);
        if let Ok(snapshot) = MachineSnapshot::restore((), &state) {
            // A state that decodes saves back to the same general registers and exit.
            let saved = snapshot.save();
            assert_eq!(saved.vcpu.regs, state.vcpu.regs);
            assert_eq!(saved.exit, state.exit);
        }
    }
});
