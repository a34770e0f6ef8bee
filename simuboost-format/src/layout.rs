//! Where each file of a run lives. The one place that spells the names, so the writer, the
//! reader, the tests and docs/FORMAT.md agree.

use std::path::{Path, PathBuf};

/// The manifest: the only file that says which checkpoints are complete.
pub const MANIFEST: &str = "manifest.json";
/// Packed unique page contents, [`crate::PAGE_SIZE`] bytes per slot.
pub const PAGES: &str = "pages.bin";
/// Page table of each checkpoint.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// Consolidated page maps.
pub const PAGEMAPS_DIR: &str = "pagemaps";
/// vCPU and device state of each checkpoint.
pub const STATE_DIR: &str = "state";
/// Guest-initiated exits of each interval.
pub const EVENTS_DIR: &str = "events";
/// Pages of event data (disk reads) held by reference in pages.bin, per interval.
pub const EVENTPAGES_DIR: &str = "eventpages";
/// Per-interval statistics.
pub const INTERVALS_DIR: &str = "intervals";
/// Optional debug full-memory dumps.
pub const DUMPS_DIR: &str = "dumps";
/// A copy of the guest ELF the run booted, written once at creation (hash in the manifest's
/// `meta.guest_image_xxh3`): what symbolises simulator analyses. Runs recorded before it
/// existed lack it.
pub const GUEST_IMAGE: &str = "guest.elf";
/// Access log (working set) of each interval, when the run was recorded with a tracer.
pub const ACCESS_DIR: &str = "access";

/// Every subdirectory a run has; created up front so readers and DuckDB globs find them even
/// when empty.
pub const SUBDIRS: [&str; 8] = [
    CHECKPOINTS_DIR,
    PAGEMAPS_DIR,
    STATE_DIR,
    EVENTS_DIR,
    EVENTPAGES_DIR,
    INTERVALS_DIR,
    DUMPS_DIR,
    ACCESS_DIR,
];

/// `ckpt-000042.parquet`: six digits, wider when the number needs it, so names sort in order
/// up to a million checkpoints.
pub fn ckpt_name(n: u64, ext: &str) -> String {
    format!("ckpt-{n:06}.{ext}")
}

/// `interval-000042.parquet`.
pub fn interval_name(n: u64) -> String {
    format!("interval-{n:06}.parquet")
}

pub fn manifest(run: &Path) -> PathBuf {
    run.join(MANIFEST)
}

/// `<run>/guest.elf`
pub fn guest_image(run: &Path) -> PathBuf {
    run.join(GUEST_IMAGE)
}

pub fn pages(run: &Path) -> PathBuf {
    run.join(PAGES)
}

/// `<run>/checkpoints/ckpt-NNNNNN.parquet`
pub fn checkpoint_table(run: &Path, checkpoint: u64) -> PathBuf {
    run.join(CHECKPOINTS_DIR)
        .join(ckpt_name(checkpoint, "parquet"))
}

/// `<run>/pagemaps/ckpt-NNNNNN.parquet`
pub fn pagemap_table(run: &Path, checkpoint: u64) -> PathBuf {
    run.join(PAGEMAPS_DIR)
        .join(ckpt_name(checkpoint, "parquet"))
}

/// `<run>/state/ckpt-NNNNNN.parquet`
pub fn state_table(run: &Path, checkpoint: u64) -> PathBuf {
    run.join(STATE_DIR).join(ckpt_name(checkpoint, "parquet"))
}

/// `<run>/events/interval-NNNNNN.parquet`
pub fn events_table(run: &Path, interval: u64) -> PathBuf {
    run.join(EVENTS_DIR).join(interval_name(interval))
}

/// `<run>/eventpages/interval-NNNNNN.parquet`
pub fn eventpages_table(run: &Path, interval: u64) -> PathBuf {
    run.join(EVENTPAGES_DIR).join(interval_name(interval))
}

/// `<run>/intervals/interval-NNNNNN.parquet`
pub fn interval_table(run: &Path, interval: u64) -> PathBuf {
    run.join(INTERVALS_DIR).join(interval_name(interval))
}

/// `<run>/access/interval-NNNNNN.parquet`
pub fn access_table(run: &Path, interval: u64) -> PathBuf {
    run.join(ACCESS_DIR).join(interval_name(interval))
}

/// `<run>/dumps/ckpt-NNNNNN.bin`
pub fn dump_file(run: &Path, checkpoint: u64) -> PathBuf {
    run.join(DUMPS_DIR).join(ckpt_name(checkpoint, "bin"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_zero_padded_and_widen() {
        assert_eq!(ckpt_name(7, "parquet"), "ckpt-000007.parquet");
        assert_eq!(ckpt_name(1_234_567, "bin"), "ckpt-1234567.bin");
        assert_eq!(interval_name(0), "interval-000000.parquet");
    }
}
