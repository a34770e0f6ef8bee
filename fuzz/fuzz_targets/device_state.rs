//! The device state decoder (`persist`: the state file's `device_json` column).
#![no_main]

use libfuzzer_sys::fuzz_target;
use simuboost_vmm::devices::DeviceSnapshot;
use simuboost_vmm::persist::Persist;

fuzz_target!(|data: &[u8]| {
    let Ok(json) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(snapshot) = DeviceSnapshot::restore((), &json.to_string()) {
        // What decodes saves to JSON that decodes to the same state.
        let again = DeviceSnapshot::restore((), &snapshot.save()).expect("a saved state decodes");
        assert_eq!(again, snapshot);
    }
});
