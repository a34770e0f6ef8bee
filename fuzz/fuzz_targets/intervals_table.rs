//! intervals/interval-N.parquet: any bytes as the record of the interval the first byte chooses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simuboost_format::layout;
use simuboost_fuzz::CHECKPOINTS;

fuzz_target!(|data: &[u8]| {
    let run = simuboost_fuzz::run();
    let (interval, data) = simuboost_fuzz::numbered(data, CHECKPOINTS - 1);
    simuboost_fuzz::put(&layout::interval_table(run.dir(), interval), data);
    if let Ok(record) = run.interval(interval) {
        assert_eq!(record.interval, interval);
    }
});
