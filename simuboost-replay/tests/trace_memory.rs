//! A trace batch's memory is reused: once the trace writer has encoded a batch, the next batch
//! received from the simulator is read into the same columns instead of freshly zeroed ones.
//! Alone in its binary because the spare batches are shared by the whole process.

use simuboost_replay::analysis::TraceWriter;
use simuboost_sim_proto::{read_from_sim, write_trace, AccessKind, FromSim, TraceBatch};

fn batch(rows: u64, salt: u64) -> TraceBatch {
    let mut b = TraceBatch::with_capacity(rows as usize);
    for i in 0..rows {
        b.icount.push(i + salt);
        b.rip.push(0x10_0000 + i * 3 + salt);
        b.vaddr.push(0x20_0000 + i * 8 + salt);
        b.paddr.push(0x30_0000 + i * 8 + salt);
        b.size.push(8);
        b.kind.push(AccessKind::Read as u8);
    }
    b
}

#[test]
fn encoded_batches_take_the_next_batch_received() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let rows = 4096;
    let written = batch(rows, 0);
    let columns = [
        written.icount.as_ptr(),
        written.rip.as_ptr(),
        written.vaddr.as_ptr(),
        written.paddr.as_ptr(),
    ];
    let mut writer = TraceWriter::create(tmp.path(), 3).expect("trace writer");
    writer.write(written).expect("write");
    writer.finish().expect("finish");

    // The next batch off the wire lands in the encoded batch's columns, with its own values.
    let sent = batch(rows, 7);
    let mut wire = Vec::new();
    write_trace(&mut wire, &sent).expect("frame");
    let received = match read_from_sim(&mut wire.as_slice()).expect("read") {
        FromSim::Trace(b) => b,
        other => panic!("{other:?}"),
    };
    assert_eq!(received, sent);
    assert_eq!(
        [
            received.icount.as_ptr(),
            received.rip.as_ptr(),
            received.vaddr.as_ptr(),
            received.paddr.as_ptr(),
        ],
        columns,
        "the encoded batch's columns were not reused"
    );
}
