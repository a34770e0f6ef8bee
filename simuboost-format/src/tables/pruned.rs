//! Reading part of a page table or page map: only the row groups that can hold the gfns asked
//! for, found through the row-group statistics of `gfn` (the tables are sorted by gfn, so each
//! group covers a range of frames).
//!
//! A table is opened by reading its footer alone (one ranged read of the file's tail, a second
//! one if the footer is longer than that). Loading gfns then reads the column chunks of the
//! groups that cover them, coalesced into few ranged reads, and decodes just those groups. What
//! the statistics claim is untrusted: every decoded row must lie inside its group's range, or
//! the file is corrupt; a file whose groups lack statistics, or whose ranges are not ascending
//! and disjoint, is treated as one group covering every frame (read whole when first needed).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Buf, Bytes};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::ProjectionMask;
use parquet::errors::ParquetError;
use parquet::file::metadata::{FooterTail, ParquetMetaDataReader};
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::statistics::Statistics;

use super::columns::{guarded, Cols, Current, MAX_TABLE_BYTES};
use super::PageLimits;
use crate::storage::RunStorage;
use crate::FormatError;

/// Bytes of a table's tail read to find its footer: enough for the whole of most page tables
/// of one interval, and for the footer of a consolidated map of a few hundred thousand pages.
const TAIL_GUESS: u64 = 64 << 10;
/// Parquet's trailer: metadata length (4 bytes) and magic (4 bytes).
const TRAILER: u64 = 8;

/// Which kind of page table: the two differ only in whether a row may say "zero".
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    /// `pagemaps/`: every row a non-zero page, each gfn once.
    Consolidated,
    /// `checkpoints/`: NULL slot and hash = the page became zero; a later row of the same gfn
    /// wins, as when the whole table is overlaid.
    Overlay,
}

/// One row: the slot `ZERO` means the page is zero.
#[derive(Clone, Copy, Debug)]
struct Row {
    gfn: u64,
    slot: u64,
    hash: u128,
}

const ZERO: u64 = u64::MAX;

/// A range of frames and the row groups that hold them.
#[derive(Debug)]
struct Span {
    first: u64,
    last: u64,
    row_groups: Vec<usize>,
    /// Byte ranges of their column chunks.
    bytes: Vec<Range<u64>>,
    /// The gfns whose rows (or absence) have been looked up, sorted.
    asked: Vec<u64>,
    /// Their rows, sorted by gfn. Only these are kept: a working set scattered over guest
    /// memory hits most groups, and keeping every row would cost more memory than the dense
    /// map it replaces (first touches of memory are expensive on the hosts measured).
    rows: Vec<Row>,
    /// Every row of the span is in `rows` (read for an on-demand look-up: the next frames
    /// asked are then answered without decoding the group again).
    complete: bool,
}

/// The bytes of a file read so far: served to the Parquet decoder as if it were the file.
#[derive(Clone, Debug, Default)]
struct Fetched {
    len: u64,
    /// Disjoint parts, `(offset, bytes)`.
    parts: Vec<(u64, Bytes)>,
}

impl Fetched {
    fn covers(&self, range: &Range<u64>) -> bool {
        self.parts.iter().any(|(start, b)| {
            *start <= range.start && range.end <= start.saturating_add(b.len() as u64)
        })
    }

    fn slice(&self, start: u64, length: Option<usize>) -> Result<Bytes, ParquetError> {
        for (at, b) in &self.parts {
            let end = at.saturating_add(b.len() as u64);
            if *at <= start && start < end.max(at + 1) {
                let from = (start - at) as usize;
                let to = match length {
                    Some(l) => from.saturating_add(l),
                    None => b.len(),
                };
                if to <= b.len() {
                    return Ok(b.slice(from..to));
                }
            }
        }
        Err(ParquetError::General(format!(
            "bytes {start}..{} were not read (outside the row groups selected)",
            start.saturating_add(length.unwrap_or(0) as u64)
        )))
    }
}

impl Length for Fetched {
    fn len(&self) -> u64 {
        self.len
    }
}

impl ChunkReader for Fetched {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> Result<Self::T, ParquetError> {
        Ok(self.slice(start, None)?.reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> Result<Bytes, ParquetError> {
        self.slice(start, Some(length))
    }
}

/// A page table of which only the footer is read up front.
#[derive(Debug)]
pub(crate) struct PrunedTable {
    path: PathBuf,
    checkpoint: u64,
    kind: Kind,
    metadata: Option<ArrowReaderMetadata>,
    fetched: Fetched,
    spans: Vec<Span>,
    /// Groups covering ranges: rows outside their span are corrupt.
    indexed: bool,
}

/// A table opened with [`open_tail`], its footer not decoded yet.
pub(crate) struct Tail {
    path: PathBuf,
    checkpoint: u64,
    kind: Kind,
    fetched: Fetched,
    metadata: Bytes,
}

/// Reads the tail of `path`, enough to decode its footer.
pub(crate) fn open_tail(
    storage: &dyn RunStorage,
    path: &Path,
    checkpoint: u64,
    kind: Kind,
) -> Result<Tail, FormatError> {
    let size = storage.size(path)?.ok_or_else(|| {
        FormatError::corrupt(path, "missing, but the manifest lists it as complete")
    })?;
    if size > MAX_TABLE_BYTES {
        return Err(FormatError::corrupt(
            path,
            format!("{size} bytes, more than the {MAX_TABLE_BYTES} a table may have"),
        ));
    }
    if size < TRAILER + 4 {
        return Err(FormatError::corrupt(
            path,
            format!("{size} bytes: too short for a Parquet file"),
        ));
    }
    let read = |start: u64| -> Result<Bytes, FormatError> {
        let mut buf = vec![0u8; (size - start) as usize];
        storage.read_ranges(path, std::slice::from_ref(&(start..size)), &mut buf)?;
        Ok(Bytes::from(buf))
    };
    let mut start = size.saturating_sub(TAIL_GUESS);
    let mut tail = read(start)?;
    let trailer = &tail[tail.len() - TRAILER as usize..];
    let footer = FooterTail::try_from(trailer).map_err(|e| FormatError::parquet(path, e))?;
    let meta_len = footer.metadata_length() as u64;
    if meta_len + TRAILER + 4 > size {
        return Err(FormatError::corrupt(
            path,
            format!("its footer claims {meta_len} bytes of metadata in a file of {size}"),
        ));
    }
    if meta_len + TRAILER > size - start {
        start = size - meta_len - TRAILER;
        tail = read(start)?;
    }
    let meta_end = tail.len() - TRAILER as usize;
    let metadata = tail.slice(meta_end - meta_len as usize..meta_end);
    Ok(Tail {
        path: path.to_path_buf(),
        checkpoint,
        kind,
        fetched: Fetched {
            len: size,
            parts: vec![(start, tail)],
        },
        metadata,
    })
}

/// The value of an INT64 statistic as the u64 it stores (gfns are UInt64).
fn stat_u64(stats: Option<&Statistics>) -> Option<(u64, u64)> {
    match stats? {
        Statistics::Int64(s) => Some((*s.min_opt()? as u64, *s.max_opt()? as u64)),
        _ => None,
    }
}

impl Tail {
    /// Decodes the footer (inside a [`guarded`] decoder): the row groups and their gfn ranges.
    /// `names` are the columns read.
    pub(crate) fn decode(
        self,
        names: &[&str],
        limits: PageLimits,
    ) -> Result<PrunedTable, FormatError> {
        let path = &self.path;
        let metadata = ParquetMetaDataReader::decode_metadata(&self.metadata)
            .map_err(|e| FormatError::parquet(path, e))?;
        let rows = metadata.file_metadata().num_rows();
        if !matches!(u64::try_from(rows), Ok(rows) if rows <= limits.mem_pages) {
            return Err(FormatError::corrupt(
                path,
                format!(
                    "its footer claims {rows} rows; this table holds at most {}",
                    limits.mem_pages
                ),
            ));
        }
        let schema = metadata.file_metadata().schema_descr_ptr();
        let mask = ProjectionMask::columns(&schema, names.iter().copied());
        let gfn_leaf = (0..schema.num_columns()).find(|&i| schema.column(i).name() == "gfn");
        let mut spans: Vec<Span> = Vec::new();
        let mut indexed = gfn_leaf.is_some();
        for (g, rg) in metadata.row_groups().iter().enumerate() {
            if rg.num_rows() == 0 {
                continue;
            }
            let mut bytes = Vec::new();
            for (leaf, column) in rg.columns().iter().enumerate() {
                if !mask.leaf_included(leaf) {
                    continue;
                }
                let start = column
                    .dictionary_page_offset()
                    .unwrap_or(column.data_page_offset());
                let (Ok(start), Ok(len)) = (
                    u64::try_from(start),
                    u64::try_from(column.compressed_size()),
                ) else {
                    return Err(FormatError::corrupt(
                        path,
                        format!("row group {g} has a column chunk at a negative offset or size"),
                    ));
                };
                match start.checked_add(len) {
                    Some(end) if end <= self.fetched.len => bytes.push(start..end),
                    _ => {
                        return Err(FormatError::corrupt(
                            path,
                            format!("row group {g} has a column chunk past the end of the file"),
                        ))
                    }
                }
            }
            let range = gfn_leaf.and_then(|leaf| stat_u64(rg.column(leaf).statistics()));
            match range {
                Some((first, last))
                    if first <= last && spans.last().is_none_or(|s| s.last < first) =>
                {
                    spans.push(Span {
                        first,
                        last,
                        row_groups: vec![g],
                        bytes,
                        asked: Vec::new(),
                        rows: Vec::new(),
                        complete: false,
                    })
                }
                _ => {
                    indexed = false;
                    spans.push(Span {
                        first: 0,
                        last: u64::MAX,
                        row_groups: vec![g],
                        bytes,
                        asked: Vec::new(),
                        rows: Vec::new(),
                        complete: false,
                    })
                }
            }
        }
        if !indexed {
            // One span for the whole file: read whole when first needed.
            let mut all = Span {
                first: 0,
                last: u64::MAX,
                row_groups: Vec::new(),
                bytes: Vec::new(),
                asked: Vec::new(),
                rows: Vec::new(),
                complete: false,
            };
            for span in spans.drain(..) {
                all.row_groups.extend(span.row_groups);
                all.bytes.extend(span.bytes);
            }
            spans.push(all);
        }
        let metadata = ArrowReaderMetadata::try_new(Arc::new(metadata), ArrowReaderOptions::new())
            .map_err(|e| FormatError::parquet(path, e))?;
        Ok(PrunedTable {
            path: self.path,
            checkpoint: self.checkpoint,
            kind: self.kind,
            metadata: Some(metadata),
            fetched: self.fetched,
            spans,
            indexed,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn metadata_bytes(&self) -> u64 {
        self.metadata.len() as u64
    }
}

/// What [`PrunedTable::fetch`] read for a later [`PrunedTable::decode_spans`].
pub(crate) struct Pending {
    table: usize,
    spans: Vec<usize>,
    fetched: Fetched,
    metadata: ArrowReaderMetadata,
    path: PathBuf,
    checkpoint: u64,
    kind: Kind,
    indexed: bool,
    /// Per span: the gfns to look up (sorted), its gfn range and its row groups.
    asked: Vec<Vec<u64>>,
    bounds: Vec<(u64, u64)>,
    groups: Vec<Vec<usize>>,
}

impl PrunedTable {
    /// Row groups (spans) in all, and how many of them are loaded.
    pub(crate) fn spans(&self) -> (usize, usize) {
        (
            self.spans.len(),
            self.spans
                .iter()
                .filter(|s| s.complete || !s.asked.is_empty())
                .count(),
        )
    }

    /// The span that can hold `gfn`.
    fn span_of(&self, gfn: u64) -> Option<usize> {
        let i = self.spans.partition_point(|s| s.last < gfn);
        (i < self.spans.len() && self.spans[i].first <= gfn).then_some(i)
    }

    /// The spans that can hold any of `gfns` (ascending), each with the range of `gfns` inside
    /// it: two binary searches per span touched, so a working set of tens of thousands of
    /// frames costs a pass over the spans it touches, not a search per frame in every table.
    fn touched<'a>(&'a self, gfns: &'a [u64]) -> impl Iterator<Item = (usize, Range<usize>)> + 'a {
        let mut k = 0;
        std::iter::from_fn(move || {
            while k < gfns.len() {
                let i = self.spans.partition_point(|s| s.last < gfns[k]);
                let span = self.spans.get(i)?;
                if gfns[k] < span.first {
                    k += gfns[k..].partition_point(|&g| g < span.first);
                    continue;
                }
                let end = k + gfns[k..].partition_point(|&g| g <= span.last);
                let range = k..end;
                k = end;
                return Some((i, range));
            }
            None
        })
    }

    /// The spans that can hold any of `gfns` (ascending) not looked up yet, each with those
    /// gfns (compared with what the span has looked up in one pass).
    pub(crate) fn missing(&self, gfns: &[u64]) -> Vec<(usize, Vec<u64>)> {
        self.touched(gfns)
            .filter(|(i, _)| !self.spans[*i].complete)
            .map(|(i, range)| (i, not_in(&gfns[range], &self.spans[i].asked)))
            .filter(|(_, list)| !list.is_empty())
            .collect()
    }

    /// Overlays this table's rows for `gfns` (strictly ascending, every one looked up) onto
    /// `out` (one entry per gfn): where the table has a row, it replaces what older tables
    /// said, `Some(None)` being a row that says the page is zero. One pass per span touched.
    pub(crate) fn overlay(
        &self,
        gfns: &[u64],
        out: &mut [Option<Option<(u64, u128)>>],
    ) -> Result<(), FormatError> {
        for (i, range) in self.touched(gfns) {
            let span = &self.spans[i];
            if !span.complete && !not_in(&gfns[range.clone()], &span.asked).is_empty() {
                return Err(FormatError::invalid(format!(
                    "internal error: frames of {:#x}..={:#x} not looked up in {}",
                    span.first,
                    span.last,
                    self.path.display()
                )));
            }
            let mut r = 0;
            for (gfn, slot) in gfns[range.clone()].iter().zip(&mut out[range]) {
                while r < span.rows.len() && span.rows[r].gfn < *gfn {
                    r += 1;
                }
                if let Some(row) = span.rows.get(r).filter(|row| row.gfn == *gfn) {
                    *slot = Some((row.slot != ZERO).then_some((row.slot, row.hash)));
                }
            }
        }
        Ok(())
    }

    /// Reads the column chunks of `spans` (coalesced, gaps of up to `gap` bytes joined; one
    /// read for all of them) and returns what the decoder needs, to decode off this thread.
    pub(crate) fn fetch(
        &mut self,
        table: usize,
        wanted: Vec<(usize, Vec<u64>)>,
        storage: &dyn RunStorage,
        gap: u64,
    ) -> Result<Option<Pending>, FormatError> {
        if wanted.is_empty() {
            return Ok(None);
        }
        let (spans, asked): (Vec<usize>, Vec<Vec<u64>>) = wanted.into_iter().unzip();
        let mut ranges: Vec<Range<u64>> = spans
            .iter()
            .flat_map(|&s| self.spans[s].bytes.iter().cloned())
            .filter(|r| !self.fetched.covers(r))
            .collect();
        ranges.sort_unstable_by_key(|r| r.start);
        let mut merged: Vec<Range<u64>> = Vec::new();
        for r in ranges {
            match merged.last_mut() {
                Some(last) if r.start <= last.end.saturating_add(gap) => {
                    last.end = last.end.max(r.end)
                }
                _ => merged.push(r),
            }
        }
        let total: u64 = merged.iter().map(|r| r.end - r.start).sum();
        if total > MAX_TABLE_BYTES {
            return Err(FormatError::corrupt(
                &self.path,
                format!("its row groups claim {total} bytes"),
            ));
        }
        if !merged.is_empty() {
            let mut buf = vec![0u8; total as usize];
            storage.read_ranges(&self.path, &merged, &mut buf)?;
            let buf = Bytes::from(buf);
            let mut at = 0usize;
            for r in merged {
                let len = (r.end - r.start) as usize;
                self.fetched.parts.push((r.start, buf.slice(at..at + len)));
                at += len;
            }
        }
        let metadata = self
            .metadata
            .clone()
            .ok_or_else(|| FormatError::invalid("internal error: table footer not decoded"))?;
        Ok(Some(Pending {
            table,
            bounds: spans
                .iter()
                .map(|&s| (self.spans[s].first, self.spans[s].last))
                .collect(),
            groups: spans
                .iter()
                .map(|&s| self.spans[s].row_groups.clone())
                .collect(),
            spans,
            asked,
            fetched: self.fetched.clone(),
            metadata,
            path: self.path.clone(),
            checkpoint: self.checkpoint,
            kind: self.kind,
            indexed: self.indexed,
        }))
    }

    /// The span holding `gfn`, if it has not been read whole yet and `gfn` is not looked up:
    /// to be read whole ([`PrunedTable::fetch`] with an empty list of gfns).
    pub(crate) fn missing_whole(&self, gfn: u64) -> Option<(usize, Vec<u64>)> {
        self.missing(&[gfn])
            .pop()
            .map(|(span, _)| (span, Vec::new()))
    }

    /// Stores the rows [`Pending::decode`] produced.
    pub(crate) fn store(&mut self, decoded: Decoded) {
        for ((span, asked), rows) in decoded
            .spans
            .into_iter()
            .zip(decoded.asked)
            .zip(decoded.rows)
        {
            let span = &mut self.spans[span];
            if asked.is_empty() {
                span.complete = true;
                span.asked = Vec::new();
                span.rows = rows;
                continue;
            }
            if span.asked.is_empty() {
                // Both come sorted (missing, decode): nothing to merge.
                span.asked = asked;
                span.rows = rows;
                continue;
            }
            span.asked.extend(asked);
            span.asked.sort_unstable();
            span.asked.dedup();
            span.rows.extend(rows);
            span.rows.sort_by_key(|r| r.gfn);
        }
    }

    /// The entry of `gfn` in this table, if it has a row for it: `Some(None)` for a row that
    /// says the page is zero. The span holding `gfn` must be loaded.
    pub(crate) fn lookup(&self, gfn: u64) -> Result<Option<Option<(u64, u128)>>, FormatError> {
        let Some(span) = self.span_of(gfn) else {
            return Ok(None);
        };
        let span = &self.spans[span];
        if !span.complete && span.asked.binary_search(&gfn).is_err() {
            return Err(FormatError::invalid(format!(
                "internal error: gfn {gfn:#x} not looked up in {}",
                self.path.display()
            )));
        }
        let rows = &span.rows;
        Ok(rows
            .binary_search_by_key(&gfn, |r| r.gfn)
            .ok()
            .map(|i| (rows[i].slot != ZERO).then_some((rows[i].slot, rows[i].hash))))
    }
}

/// The gfns of `wanted` (ascending) that are not in `have` (ascending).
fn not_in(wanted: &[u64], have: &[u64]) -> Vec<u64> {
    if wanted.len() < 8 {
        return wanted
            .iter()
            .copied()
            .filter(|g| have.binary_search(g).is_err())
            .collect();
    }
    let mut out = Vec::new();
    let mut h = 0;
    for &g in wanted {
        while have.get(h).is_some_and(|&x| x < g) {
            h += 1;
        }
        if have.get(h) != Some(&g) {
            out.push(g);
        }
    }
    out
}

/// Rows of the spans of one table, decoded.
pub(crate) struct Decoded {
    pub(crate) table: usize,
    spans: Vec<usize>,
    asked: Vec<Vec<u64>>,
    rows: Vec<Vec<Row>>,
}

impl Pending {
    pub(crate) fn bytes(&self) -> u64 {
        self.fetched.parts.iter().map(|(_, b)| b.len() as u64).sum()
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Decodes the spans' row groups and checks every row (inside a [`guarded`] decoder).
    pub(crate) fn decode(self, names: &[&str], limits: PageLimits) -> Result<Decoded, FormatError> {
        let path = &self.path;
        let mut out = Vec::with_capacity(self.spans.len());
        for (k, asked) in self.asked.iter().enumerate() {
            let (first, last) = self.bounds[k];
            let mut previous: Option<u64> = None;
            let groups = self.groups[k].clone();
            let schema = self.metadata.metadata().file_metadata().schema_descr_ptr();
            let mask = ProjectionMask::columns(&schema, names.iter().copied());
            let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(
                self.fetched.clone(),
                self.metadata.clone(),
            )
            .with_row_groups(groups)
            .with_projection(mask)
            .with_batch_size(super::columns::PAGE_TABLE_ROW_GROUP)
            .build()
            .map_err(|e| FormatError::parquet(path, e))?;
            let mut rows: Vec<Row> = Vec::new();
            // Rows come in gfn order (the writer's): `asked` is walked beside them, and
            // searched again only if a row goes back.
            let mut cursor = 0usize;
            let mut last_gfn = 0u64;
            for batch in reader {
                let batch = batch.map_err(|e| FormatError::arrow(path, e))?;
                let cols = Cols::new(&batch, path);
                cols.check_number("checkpoint", self.checkpoint)?;
                let gfns = cols.u64s("gfn")?;
                let nullable = self.kind == Kind::Overlay;
                let slots = if nullable {
                    cols.opt_u64s("slot")?
                } else {
                    cols.required::<arrow_array::UInt64Array>("slot", "UInt64")?
                };
                let hashes = cols.hashes("hash", nullable)?;
                for (i, &gfn) in gfns.iter().enumerate() {
                    use arrow_array::Array;
                    let slot = slots.is_valid(i).then(|| slots.value(i));
                    limits.check(path, gfn, slot)?;
                    if self.indexed && !(first..=last).contains(&gfn) {
                        return Err(FormatError::corrupt(
                            path,
                            format!(
                                "gfn {gfn:#x} lies outside {first:#x}..={last:#x}, the range its \
                                 row group's statistics claim"
                            ),
                        ));
                    }
                    let (slot, hash) = super::checkpoint::entry_at(
                        path,
                        format_args!("gfn {gfn:#x}"),
                        slot,
                        hashes,
                        i,
                    )?
                    .unwrap_or((ZERO, 0));
                    // The writer sorts by gfn; a consolidated map has each gfn once.
                    if self.kind == Kind::Consolidated && previous.is_some_and(|p| p >= gfn) {
                        return Err(FormatError::corrupt(
                            path,
                            format!("gfn {gfn:#x} appears twice or out of gfn order"),
                        ));
                    }
                    previous = Some(gfn);
                    if gfn < last_gfn {
                        cursor = asked.partition_point(|&a| a < gfn);
                    }
                    last_gfn = gfn;
                    while asked.get(cursor).is_some_and(|&a| a < gfn) {
                        cursor += 1;
                    }
                    // An empty list: the whole span.
                    if asked.is_empty() || asked.get(cursor) == Some(&gfn) {
                        rows.push(Row { gfn, slot, hash });
                    }
                }
            }
            // Sorted by gfn (the writer's order; a stable sort keeps a repeated gfn's rows in
            // file order), then one row per gfn: the last, as an overlay applies them.
            rows.sort_by_key(|r| r.gfn);
            let mut unique: Vec<Row> = Vec::with_capacity(rows.len());
            for row in rows {
                match unique.last_mut() {
                    Some(prev) if prev.gfn == row.gfn => *prev = row,
                    _ => unique.push(row),
                }
            }
            out.push(unique);
        }
        Ok(Decoded {
            table: self.table,
            spans: self.spans,
            asked: self.asked,
            rows: out,
        })
    }
}

/// Decodes the footers of `tails` in one [`guarded`] decoder.
pub(crate) fn decode_tails(
    tails: Vec<Tail>,
    names: &'static [&'static str],
    limits: PageLimits,
) -> Result<Vec<PrunedTable>, FormatError> {
    let Some(first) = tails.first().map(|t| t.path().to_path_buf()) else {
        return Ok(Vec::new());
    };
    let bytes: u64 = tails.iter().map(Tail::metadata_bytes).sum();
    guarded(&first, bytes, move |current: &Current| {
        tails
            .into_iter()
            .map(|t| {
                current.set(t.path());
                t.decode(names, limits)
            })
            .collect()
    })
}

/// Decodes what `pending` fetched in one [`guarded`] decoder.
pub(crate) fn decode_pending(
    pending: Vec<Pending>,
    names: &'static [&'static str],
    limits: PageLimits,
) -> Result<Vec<Decoded>, FormatError> {
    let Some(first) = pending.first().map(|p| p.path().to_path_buf()) else {
        return Ok(Vec::new());
    };
    let bytes: u64 = pending.iter().map(Pending::bytes).sum();
    guarded(&first, bytes, move |current: &Current| {
        pending
            .into_iter()
            .map(|p| {
                current.set(p.path());
                p.decode(names, limits)
            })
            .collect()
    })
}
