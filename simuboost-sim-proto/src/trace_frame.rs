//! Trace batches framed without copying their rows.
//!
//! [`write_trace`] writes the very frame `write_frame(out, &FromSim::Trace(batch))` writes, but
//! straight from the batch's columns (one `writev`), and [`read_from_sim`] reads a trace frame's
//! columns straight into the batch and any other message as `read_frame` does. A trace is tens
//! of millions of rows per second of guest time; the generic path copied every batch three
//! times on the way out (columns to bytes, bytes into bincode, bincode behind the length) and
//! twice on the way in, each time into freshly allocated megabytes, and those copies with their
//! page faults were a quarter of the simulator's time (`perf`, a `compress` interval's trace).

use std::io::{IoSlice, Read, Write};

use bincode::Options;

use crate::analysis::TRACE_ROW_BYTES;
use crate::frame::{closed_or_io, codec, FrameError, MAX_FRAME_BYTES};
use crate::{FromSim, TraceBatch};

fn malformed(why: impl Into<String>) -> FrameError {
    FrameError::Malformed(why.into())
}

/// What bincode puts before a [`FromSim::Trace`]'s byte string: the variant's index.
fn trace_tag() -> Result<Vec<u8>, FrameError> {
    // An empty batch is bincode's length of its 8 bytes (the byte 8) and a row count of 0;
    // what comes before those nine bytes is the variant index as bincode encodes it.
    let mut whole = codec()
        .serialize(&FromSim::Trace(TraceBatch::default()))
        .map_err(|e| malformed(e.to_string()))?;
    let tag_len = whole
        .len()
        .checked_sub(9)
        .filter(|&t| whole[t..] == [8, 0, 0, 0, 0, 0, 0, 0, 0])
        .ok_or_else(|| malformed("bincode no longer encodes an empty trace batch as expected"))?;
    whole.truncate(tag_len);
    Ok(whole)
}

/// Writes `FromSim::Trace(batch)` as one frame, byte for byte what
/// [`write_frame`](crate::write_frame) writes, without copying the rows.
pub fn write_trace(out: &mut impl Write, batch: &TraceBatch) -> Result<(), FrameError> {
    if !batch.is_consistent() {
        return Err(malformed("a trace batch whose columns differ in length"));
    }
    let rows = batch.len();
    let payload = rows
        .checked_mul(TRACE_ROW_BYTES)
        .and_then(|b| b.checked_add(8))
        .ok_or(FrameError::TooLarge(u32::MAX))?;
    let tag = trace_tag()?;
    // bincode writes a byte string's length as it writes a u64 (a varint with these options).
    let payload_len = codec()
        .serialize(&(payload as u64))
        .map_err(|e| malformed(e.to_string()))?;
    let frame = u32::try_from(tag.len() + payload_len.len() + payload)
        .ok()
        .filter(|&n| n <= MAX_FRAME_BYTES)
        .ok_or(FrameError::TooLarge(u32::MAX))?;
    let mut head = Vec::with_capacity(4 + tag.len() + payload_len.len() + 8);
    head.extend_from_slice(&frame.to_le_bytes());
    head.extend_from_slice(&tag);
    head.extend_from_slice(&payload_len);
    head.extend_from_slice(&(rows as u64).to_le_bytes());
    let mut slices: Vec<IoSlice<'_>> = std::iter::once(IoSlice::new(&head))
        .chain(batch.wire_columns().map(IoSlice::new))
        .collect();
    let mut pending = &mut slices[..];
    while !pending.is_empty() {
        match out.write_vectored(pending) {
            Ok(0) => return Err(FrameError::Closed),
            Ok(written) => IoSlice::advance_slices(&mut pending, written),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(closed_or_io(e)),
        }
    }
    out.flush().map_err(closed_or_io)
}

/// Reads one frame from the simulator: a trace batch straight into its columns, any other
/// message as [`read_frame`](crate::read_frame) reads it.
pub fn read_from_sim(input: &mut impl Read) -> Result<FromSim, FrameError> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len).map_err(closed_or_io)?;
    let len = u32::from_le_bytes(len);
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(len));
    }
    let mut rest = len as usize;
    let tag = trace_tag()?;
    let mut head = vec![0u8; tag.len().min(rest)];
    input.read_exact(&mut head).map_err(closed_or_io)?;
    rest -= head.len();
    if head != tag {
        let mut body = head;
        let start = body.len();
        body.resize(len as usize, 0);
        input.read_exact(&mut body[start..]).map_err(closed_or_io)?;
        return codec()
            .deserialize(&body)
            .map_err(|e| malformed(e.to_string()));
    }
    let payload = read_varint(input, &mut rest)?;
    if payload != rest as u64 || rest < 8 {
        return Err(malformed(format!(
            "a trace frame of {len} bytes announces a batch of {payload}"
        )));
    }
    let mut rows = [0u8; 8];
    input.read_exact(&mut rows).map_err(closed_or_io)?;
    let rows = u64::from_le_bytes(rows);
    let body = rest - 8;
    let rows = usize::try_from(rows)
        .ok()
        .filter(|&n| n.checked_mul(TRACE_ROW_BYTES) == Some(body))
        .ok_or_else(|| {
            malformed(format!(
                "a trace batch of {rows} rows in {body} bytes ({TRACE_ROW_BYTES} a row)"
            ))
        })?;
    let mut batch = TraceBatch::for_rows(rows);
    for column in batch.wire_columns_mut() {
        input.read_exact(column).map_err(closed_or_io)?;
    }
    Ok(FromSim::Trace(batch))
}

/// Reads a u64 in bincode's varint form (below 251: the byte itself; 251, 252, 253: a
/// little-endian u16, u32, u64 follows), counting its bytes off `rest`.
fn read_varint(input: &mut impl Read, rest: &mut usize) -> Result<u64, FrameError> {
    let mut take = |n: usize| -> Result<u64, FrameError> {
        *rest = rest
            .checked_sub(n)
            .ok_or_else(|| malformed("a trace frame that ends inside its length"))?;
        let mut b = [0u8; 8];
        input.read_exact(&mut b[..n]).map_err(closed_or_io)?;
        Ok(u64::from_le_bytes(b))
    };
    match take(1)? {
        small @ 0..=250 => Ok(small),
        251 => take(2),
        252 => take(4),
        253 => take(8),
        other => Err(malformed(format!("{other} is no varint's first byte"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{read_frame, write_frame, Exit};

    fn batch(rows: usize) -> TraceBatch {
        let mut b = TraceBatch::with_capacity(rows);
        for i in 0..rows as u64 {
            b.icount.push(i / 2);
            b.rip.push(0x1000 + i);
            b.vaddr.push(0xffff_8000_0000_0000 | (i * 8));
            b.paddr.push(i * 8);
            b.size.push((1 << (i % 4)) as u8);
            b.kind.push((i % 3) as u8);
        }
        b
    }

    /// Row counts on each side of bincode's varint steps (a payload under 251 bytes, under
    /// 64 KiB, above).
    const ROWS: [usize; 6] = [0, 1, 7, 8, 1927, 1928];

    #[test]
    fn a_trace_frame_is_what_the_generic_writer_writes() {
        for rows in ROWS {
            let b = batch(rows);
            let mut generic = Vec::new();
            write_frame(&mut generic, &FromSim::Trace(b.clone())).unwrap();
            let mut direct = Vec::new();
            write_trace(&mut direct, &b).unwrap();
            assert_eq!(direct, generic, "{rows} rows");
        }
    }

    #[test]
    fn every_message_reads_back_as_the_generic_reader_reads_it() {
        let mut stream = Vec::new();
        for rows in ROWS {
            write_trace(&mut stream, &batch(rows)).unwrap();
        }
        let exit = FromSim::Exit(Exit::Doorbell {
            gpa: 0x1234,
            instructions: 99,
        });
        write_frame(&mut stream, &exit).unwrap();
        let mut direct = stream.as_slice();
        let mut generic = stream.as_slice();
        for rows in ROWS {
            let m = read_from_sim(&mut direct).unwrap();
            assert_eq!(m, FromSim::Trace(batch(rows)));
            assert_eq!(read_frame::<FromSim>(&mut generic).unwrap(), m);
        }
        assert_eq!(read_from_sim(&mut direct).unwrap(), exit);
        assert!(direct.is_empty());
    }

    #[test]
    fn a_damaged_trace_frame_is_an_error_not_a_panic() {
        let mut good = Vec::new();
        write_trace(&mut good, &batch(10)).unwrap();
        // Cut anywhere: the peer closed mid-frame.
        for cut in 1..good.len() {
            assert!(
                matches!(read_from_sim(&mut &good[..cut]), Err(FrameError::Closed)),
                "cut at {cut}"
            );
        }
        // A row count that does not match the bytes.
        let rows_at = good.len() - 10 * TRACE_ROW_BYTES - 8;
        let mut lying = good.clone();
        lying[rows_at] = 11;
        let err = read_from_sim(&mut lying.as_slice()).unwrap_err();
        assert!(err.to_string().contains("11 rows"), "{err}");
        // A byte-string length that does not match the frame.
        let mut short = good.clone();
        short[rows_at - 2] = 0xfe; // the u16 after 251, low byte
        let err = read_from_sim(&mut short.as_slice()).unwrap_err();
        assert!(err.to_string().contains("announces"), "{err}");
        // A varint that is none.
        let mut bad = good.clone();
        bad[rows_at - 3] = 0xff;
        let err = read_from_sim(&mut bad.as_slice()).unwrap_err();
        assert!(err.to_string().contains("varint"), "{err}");
        // Columns of different lengths are refused before anything is written.
        let mut uneven = batch(3);
        uneven.kind.pop();
        let mut out = Vec::new();
        assert!(write_trace(&mut out, &uneven).is_err());
        assert!(out.is_empty());
    }
}
