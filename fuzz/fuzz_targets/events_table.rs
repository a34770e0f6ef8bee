//! events/interval-N.parquet: any bytes as the event log of the interval the first byte chooses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simuboost_format::layout;
use simuboost_fuzz::{CHECKPOINTS, MEM_BYTES};

fuzz_target!(|data: &[u8]| {
    let run = simuboost_fuzz::run();
    let (interval, data) = simuboost_fuzz::numbered(data, CHECKPOINTS - 1);
    simuboost_fuzz::put(&layout::events_table(run.dir(), interval), data);
    if let Ok(events) = run.events(interval) {
        for pair in events.windows(2) {
            assert!(pair[0].exit < pair[1].exit, "exits do not ascend");
        }
        for e in &events {
            assert_eq!(e.interval, interval);
            assert_eq!(e.data_gpa.is_some(), e.data.is_some());
            if let (Some(gpa), Some(data)) = (e.data_gpa, &e.data) {
                assert!(gpa + data.len() <= MEM_BYTES, "buffer outside guest memory");
            }
        }
    }
});
