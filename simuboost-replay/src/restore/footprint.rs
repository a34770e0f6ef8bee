//! What a replay's guest memory costs.

use simuboost_vmm::vstate::memory::{host_region, GuestMemory};

/// Bytes of the guest RAM mapping that are resident and private: what this replay's guest
/// memory costs. The shared zero page and pages never touched do not count.
pub fn resident_bytes(memory: &GuestMemory) -> std::io::Result<u64> {
    let (base, size) = host_region(memory);
    let (start, end) = (base as u64, base as u64 + size);
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut total_kib = 0u64;
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((lo, hi)) = range.split_once('-') {
                if let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16))
                {
                    inside = lo >= start && hi <= end;
                    // A mapping that straddles guest RAM's bounds holds other memory too: its
                    // resident size cannot be attributed, so say so rather than miscount.
                    if !inside && lo < end && hi > start {
                        return Err(std::io::Error::other(format!(
                            "guest memory {start:#x}..{end:#x} shares the mapping {lo:#x}..{hi:#x} \
                             with other memory"
                        )));
                    }
                    continue;
                }
            }
        }
        if inside {
            if let Some(rest) = line.strip_prefix("Rss:") {
                let kib = rest.trim().trim_end_matches("kB").trim();
                total_kib += kib.parse::<u64>().unwrap_or(0);
            }
        }
    }
    Ok(total_kib * 1024)
}

/// Bytes of guest RAM held by a shared memory file (the simulator engine's guest RAM, a memfd
/// both processes map): the pages allocated in the file, whoever touched them.
pub fn shared_resident_bytes(file: &std::fs::File) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    // st_blocks counts 512-byte units actually allocated, not the file's length.
    Ok(file.metadata()?.blocks() * 512)
}
