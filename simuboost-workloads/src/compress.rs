//! `compress`: DEFLATE-compress a data set from the disk and write the result back (think
//! `gzip` over a directory of logs, or a backup job).
//!
//! # What it models
//! The input is `cfg.disk_data_bytes` bytes at block 0 (normally made by
//! [`crate::dataset::fill_compress_input`]). It is read in 1 MiB pieces into a staging ring that
//! spans most of the arena (a page cache being filled sequentially, wrapping), and compressed in
//! independent [`CHUNK`]-byte chunks with `miniz_oxide` (zlib format, level 6). Each chunk is
//! fed to the streaming compressor in 8 KiB slices (so the workload can yield between them),
//! then decompressed again and compared with its input (a round-trip check), and the compressed
//! bytes, zero-padded to whole blocks, are written to the disk after the input: the output area
//! is the blocks `[ceil(data / 4096), disk_blocks)`, filled in order and wrapping to its start
//! when the next chunk does not fit. If the output area cannot hold even one compressed chunk,
//! nothing is written (the work is otherwise the same); the start line says how many blocks
//! the output area has. [`disk_blocks_needed`] gives a disk size that holds one full pass.
//!
//! Without a disk, or with no input data, the workload fails with [`WorkloadError::NoDisk`].
//!
//! # Units
//! One **unit = one chunk** (64 KiB of input; the last chunk of the data set may be shorter),
//! about 1–4 ms. The data set is processed again and again until the units are done (or, with
//! `work_units == 0`, until asked to stop). `yield_now` is called after every 1 MiB read, after
//! every 8 KiB compressed, after the round-trip check and after each chunk's write.
//!
//! The checksum folds every chunk's index, compressed length and Adler-32.
//!
//! # Resources
//! The compressor state is about 350 KiB of heap, allocated once; building it also needs about
//! 130 KiB of stack. A round-trip mismatch means a bug or memory corruption and panics.

use alloc::boxed::Box;

use miniz_oxide::deflate::core::{
    compress, create_comp_flags_from_zip_params, CompressorOxide, TDEFLFlush, TDEFLStatus,
};
use miniz_oxide::inflate::core::{decompress, inflate_flags, DecompressorOxide};
use miniz_oxide::inflate::TINFLStatus;

use crate::util::{Bytes, Ctl, Flow, Step};
use crate::{Outcome, Platform, RunConfig, WorkloadError, BLOCK_SIZE};

/// Smallest arena: 4 MiB.
pub const MIN_ARENA: u64 = 4 << 20;
/// Bytes of input per chunk (and per unit).
pub const CHUNK: usize = 64 << 10;
/// Compression level.
pub const LEVEL: u8 = 6;

/// Input bytes fed to the compressor between two yields.
const FEED: usize = 8 << 10;
/// Bytes per disk read.
const READ: usize = 1 << 20;
/// Output buffer: more than any chunk can grow to (stored blocks add 5 bytes per 64 KiB).
const OUT_BUF: usize = 2 * CHUNK;

/// A disk size (in blocks) holding `data_bytes` of input and the compressed output of one full
/// pass, even if the data does not compress at all.
pub fn disk_blocks_needed(data_bytes: u64) -> u64 {
    let input = data_bytes.div_ceil(BLOCK_SIZE as u64);
    let chunks = data_bytes.div_ceil(CHUNK as u64);
    // An incompressible chunk is stored: 64 KiB plus a few bytes of headers, 17 blocks.
    input + chunks * ((CHUNK + BLOCK_SIZE) / BLOCK_SIZE) as u64
}

/// Runs the workload; see the module documentation.
pub fn run(
    cfg: &RunConfig,
    p: &mut dyn Platform,
    arena: &mut [u8],
) -> Result<Outcome, WorkloadError> {
    let mut ctl = Ctl::new(cfg, p);
    let flow = body(cfg, &mut ctl, arena);
    ctl.finish(flow)
}

/// Where compressed chunks go on the disk.
struct OutArea {
    start: u64,
    blocks: u64,
    cursor: u64,
}

fn body(cfg: &RunConfig, ctl: &mut Ctl, arena: &mut [u8]) -> Flow {
    let data = cfg.disk_data_bytes;
    let bs = BLOCK_SIZE as u64;
    if cfg.disk_blocks == 0 || data == 0 || data > cfg.disk_blocks.saturating_mul(bs) {
        return Err(WorkloadError::NoDisk.into());
    }
    let arena_len = arena.len() as u64;
    let arena = crate::util::usable(arena);
    if arena.len() < OUT_BUF + CHUNK + READ {
        return Err(WorkloadError::ArenaTooSmall {
            needed: MIN_ARENA,
            available: arena_len,
        }
        .into());
    }
    let (out_buf, rest) = arena.split_at_mut(OUT_BUF);
    let (verify, rest) = rest.split_at_mut(CHUNK);
    let ring_len = rest.len() / READ * READ;
    let ring = &mut rest[..ring_len];

    let in_blocks = data.div_ceil(bs);
    let mut out = OutArea {
        start: in_blocks,
        blocks: cfg.disk_blocks - in_blocks,
        cursor: in_blocks,
    };
    ctl.say(format_args!(
        "compress: {} input, {} B chunks, level {}, staging {}, output area {} blocks\n",
        Bytes(data),
        CHUNK,
        LEVEL,
        Bytes(ring_len as u64),
        out.blocks
    ));

    let flags = create_comp_flags_from_zip_params(LEVEL.into(), 15, 0);
    let mut comp = Box::new(CompressorOxide::new(flags));
    let mut decomp = Box::<DecompressorOxide>::default();
    let mut ring_pos = 0usize;
    loop {
        let mut read_off = 0u64;
        while read_off < data {
            let n = (data - read_off).min(READ as u64) as usize;
            if ring_pos + READ > ring.len() {
                ring_pos = 0;
            }
            let blocks = n.div_ceil(BLOCK_SIZE);
            let staged = &mut ring[ring_pos..ring_pos + blocks * BLOCK_SIZE];
            ctl.p.block_read(read_off / bs, staged)?;
            ctl.yield_now()?;
            for (i, chunk) in staged[..n].chunks(CHUNK).enumerate() {
                let index = (read_off / CHUNK as u64) + i as u64;
                do_chunk(
                    ctl,
                    &mut comp,
                    &mut decomp,
                    chunk,
                    index,
                    out_buf,
                    verify,
                    &mut out,
                )?;
                ctl.unit_done()?;
            }
            ring_pos += READ;
            read_off += n as u64;
        }
    }
}

/// Compresses, verifies and writes one chunk.
#[allow(clippy::too_many_arguments)]
fn do_chunk(
    ctl: &mut Ctl,
    comp: &mut CompressorOxide,
    decomp: &mut DecompressorOxide,
    chunk: &[u8],
    index: u64,
    out_buf: &mut [u8],
    verify: &mut [u8],
    out: &mut OutArea,
) -> Step {
    comp.reset();
    let mut out_pos = 0usize;
    let mut fed = 0usize;
    loop {
        let end = (fed + FEED).min(chunk.len());
        let flush = if end == chunk.len() {
            TDEFLFlush::Finish
        } else {
            TDEFLFlush::None
        };
        let mut slice = &chunk[fed..end];
        let mut stalls = 0;
        let done = loop {
            let (status, bytes_in, bytes_out) =
                compress(comp, slice, &mut out_buf[out_pos..], flush);
            slice = &slice[bytes_in..];
            out_pos += bytes_out;
            match status {
                TDEFLStatus::Done => break true,
                TDEFLStatus::Okay if flush == TDEFLFlush::None && slice.is_empty() => break false,
                TDEFLStatus::Okay if bytes_in + bytes_out > 0 => {}
                TDEFLStatus::Okay if stalls < 4 => stalls += 1,
                // The output buffer is larger than any chunk's output: this is a bug.
                other => panic!("compress: compressor failed with {other:?} on chunk {index}"),
            }
        };
        fed = end;
        ctl.yield_now()?;
        if done {
            break;
        }
    }
    let adler = comp.adler32();

    // Round trip: decompress into `verify` and compare.
    decomp.init();
    let flags = inflate_flags::TINFL_FLAG_PARSE_ZLIB_HEADER
        | inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF
        | inflate_flags::TINFL_FLAG_COMPUTE_ADLER32;
    let (status, bytes_in, bytes_out) = decompress(
        decomp,
        &out_buf[..out_pos],
        &mut verify[..chunk.len()],
        0,
        flags,
    );
    if status != TINFLStatus::Done
        || bytes_in != out_pos
        || bytes_out != chunk.len()
        || verify[..chunk.len()] != *chunk
    {
        panic!("compress: round trip of chunk {index} failed ({status:?}, {bytes_in}/{out_pos} in, {bytes_out}/{} out)", chunk.len());
    }
    ctl.yield_now()?;

    // Write the compressed bytes, zero-padded to whole blocks.
    let blocks = out_pos.div_ceil(BLOCK_SIZE);
    out_buf[out_pos..blocks * BLOCK_SIZE].fill(0);
    if out.blocks >= blocks as u64 {
        if out.cursor + blocks as u64 > out.start + out.blocks {
            out.cursor = out.start;
        }
        ctl.p
            .block_write(out.cursor, &out_buf[..blocks * BLOCK_SIZE])?;
        out.cursor += blocks as u64;
        ctl.yield_now()?;
    }
    ctl.sum.fold(index);
    ctl.sum.fold(out_pos as u64);
    ctl.sum.fold(adler as u64);
    Ok(())
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::dataset::fill_compress_input;
    use crate::util::testing::TestPlatform;
    use simuboost_abi::WorkloadId;
    use std::vec;
    use std::vec::Vec;

    fn cfg(seed: u64, units: u64, disk_blocks: u64, data: u64) -> RunConfig {
        RunConfig {
            workload: WorkloadId::Compress,
            seed,
            work_units: units,
            disk_blocks,
            disk_data_bytes: data,
        }
    }

    fn platform(data_seed: u64, data: u64, blocks: u64) -> TestPlatform {
        let mut p = TestPlatform::new(blocks);
        fill_compress_input(data_seed, 0, &mut p.disk[..data as usize]);
        p
    }

    #[test]
    fn round_trips_and_is_deterministic() {
        // 300 KiB + 5 bytes of input: 5 chunks, the last one short.
        let data = 300 * 1024 + 5;
        let blocks = disk_blocks_needed(data);
        let mut p = platform(1, data, blocks);
        let mut arena = vec![0u8; MIN_ARENA as usize];
        let a = crate::run(&cfg(1, 5, blocks, data), &mut p, &mut arena).expect("compress runs");
        assert_eq!(a.units_done, 5);
        assert!(p.yields >= 5);

        // Decompress the output area chunk by chunk and compare with the input.
        let input = p.disk[..data as usize].to_vec();
        let mut pos = data.div_ceil(4096) as usize * 4096;
        let mut restored = Vec::new();
        let mut total_comp = 0;
        while restored.len() < input.len() {
            let mut d = DecompressorOxide::new();
            let mut buf = vec![0u8; CHUNK];
            let flags = inflate_flags::TINFL_FLAG_PARSE_ZLIB_HEADER
                | inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF;
            let (st, used, n) = decompress(&mut d, &p.disk[pos..], &mut buf, 0, flags);
            assert_eq!(st, TINFLStatus::Done);
            restored.extend_from_slice(&buf[..n]);
            total_comp += used;
            pos += used.div_ceil(4096) * 4096;
        }
        assert_eq!(restored, input);
        let ratio = input.len() as f64 / total_comp as f64;
        assert!(ratio > 2.0, "ratio {ratio}");

        let mut p2 = platform(1, data, blocks);
        let b = crate::run(&cfg(1, 5, blocks, data), &mut p2, &mut arena).expect("compress runs");
        assert_eq!(a, b);
        let mut p3 = platform(2, data, blocks);
        let c = crate::run(&cfg(1, 5, blocks, data), &mut p3, &mut arena).expect("compress runs");
        assert_ne!(a.checksum, c.checksum);
    }

    #[test]
    fn wraps_over_data_set_and_output_area() {
        // Two chunks of input, room for about one compressed chunk: 7 units wrap both.
        let data = 2 * CHUNK as u64;
        let blocks = data / 4096 + 12;
        let mut p = platform(3, data, blocks);
        let mut arena = vec![0u8; MIN_ARENA as usize];
        let a = crate::run(&cfg(1, 7, blocks, data), &mut p, &mut arena).expect("compress runs");
        assert_eq!(a.units_done, 7);
    }

    #[test]
    fn stops_when_asked_and_needs_disk() {
        let data = 256 * 1024;
        let blocks = disk_blocks_needed(data);
        let mut p = platform(1, data, blocks);
        p.stop_at_yield = Some(13);
        let mut arena = vec![0u8; MIN_ARENA as usize];
        let out = crate::run(&cfg(1, 0, blocks, data), &mut p, &mut arena).expect("runs");
        assert_eq!(p.yields, 13);
        assert!(out.units_done >= 1);

        let mut p = TestPlatform::new(0);
        assert_eq!(
            crate::run(&cfg(1, 1, 0, 0), &mut p, &mut arena),
            Err(WorkloadError::NoDisk)
        );
        let mut p = TestPlatform::new(16);
        assert_eq!(
            crate::run(&cfg(1, 1, 16, 0), &mut p, &mut arena),
            Err(WorkloadError::NoDisk)
        );
    }
}
