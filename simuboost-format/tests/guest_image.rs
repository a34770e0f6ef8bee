//! guest.elf: the copy of the guest a run booted, written once and checked against the
//! manifest's hash on every read.

mod common;

use simuboost_format::{page_hash, write_guest_image, FormatError, Run, RunWriter};

#[test]
fn the_guest_image_round_trips_and_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let image = b"\x7fELF pretend guest".to_vec();
    let mut meta = common::meta(16);
    meta.guest_image_xxh3 = format!("{:032x}", page_hash(&image));
    let writer = RunWriter::create(&run_dir, meta).unwrap();
    // A different image is refused.
    assert!(matches!(
        write_guest_image(&run_dir, b"another guest"),
        Err(FormatError::InvalidInput { .. })
    ));
    write_guest_image(&run_dir, &image).unwrap();
    drop(writer);
    let run = Run::open(&run_dir).unwrap();
    assert_eq!(run.guest_image().unwrap(), Some(image.clone()));
    // Damaged: named as corrupt, not returned.
    std::fs::write(run_dir.join("guest.elf"), b"\x7fELF damaged").unwrap();
    let err = run.guest_image().unwrap_err();
    assert!(err.to_string().contains("guest.elf"), "{err}");
    // Absent (a run recorded before the copy existed): None, not an error.
    std::fs::remove_file(run_dir.join("guest.elf")).unwrap();
    assert_eq!(run.guest_image().unwrap(), None);
}
