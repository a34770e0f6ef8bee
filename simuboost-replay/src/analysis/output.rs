//! The analyses' output directory: one Parquet file per analysis and interval
//! (`<out>/<analysis>/interval-NNNNNN.parquet`) and a summary (`<out>/summary/interval-NNNNNN.json`).
//! Columns are declared once, in [`TABLES`], from which the schemas come (and docs/ANALYSES.md's
//! column tables, kept equal by a test). Written like the run's tables (simuboost-format):
//! zstd, bounded row groups, to a temporary name renamed into place when complete.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::types::{ArrowPrimitiveType, UInt8Type};
use arrow_array::{
    ArrayRef, DictionaryArray, PrimitiveArray, RecordBatch, StringArray, UInt32Array, UInt64Array,
    UInt8Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::Encoding;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterPropertiesBuilder};
use parquet::schema::types::ColumnPath;
use simuboost_sim_proto::{AccessKind, Final, TraceBatch};

use super::Symbols;

/// Rows per row group: the trace writer holds at most this many rows in memory.
pub const ROW_GROUP_ROWS: usize = 1 << 20;

/// Errors writing the output.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// A file or directory operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// Parquet or Arrow refused something.
    #[error("writing {path}: {detail}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The output directory is (inside) the run directory.
    #[error("the analysis output {out} is inside the run {run}: choose another --out")]
    InsideRun {
        /// The output directory.
        out: PathBuf,
        /// The run.
        run: PathBuf,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> OutputError + 'a {
    move |source| OutputError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// `path` made absolute with its symbolic links resolved, for as much of it as exists.
fn resolve(path: &Path) -> Result<PathBuf, OutputError> {
    crate::runs::resolve_path(path).map_err(io("resolve", path))
}

fn pq(path: &Path) -> impl Fn(String) -> OutputError + '_ {
    move |detail| OutputError::Parquet {
        path: path.to_path_buf(),
        detail,
    }
}

/// One column: name, type, nullability, meaning.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    /// Name.
    pub name: &'static str,
    /// Type as docs/ANALYSES.md spells it.
    pub doc_type: &'static str,
    /// May hold NULLs.
    pub nullable: bool,
    /// Meaning.
    pub doc: &'static str,
}

const fn col(name: &'static str, doc_type: &'static str, doc: &'static str) -> Column {
    Column {
        name,
        doc_type,
        nullable: false,
        doc,
    }
}

const fn nullable(name: &'static str, doc_type: &'static str, doc: &'static str) -> Column {
    Column {
        name,
        doc_type,
        nullable: true,
        doc,
    }
}

impl Column {
    fn data_type(&self) -> DataType {
        match self.doc_type {
            "uint8" => DataType::UInt8,
            "uint32" => DataType::UInt32,
            "utf8" => DataType::Utf8,
            "dictionary<uint8, utf8>" => {
                DataType::Dictionary(Box::new(DataType::UInt8), Box::new(DataType::Utf8))
            }
            _ => DataType::UInt64,
        }
    }
}

/// One output table.
#[derive(Debug)]
pub struct Table {
    /// The analysis, and the subdirectory of `--out` holding its files.
    pub name: &'static str,
    /// Columns in file order.
    pub columns: &'static [Column],
}

impl Table {
    fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|c| Field::new(c.name, c.data_type(), c.nullable))
                .collect::<Vec<_>>(),
        ))
    }
}

const INTERVAL: Column = col("interval", "uint64", "The interval (constant in a file).");
const FUNCTION: Column = nullable(
    "function",
    "utf8",
    "Guest function containing the block (ELF symbol); NULL when the run has no guest image or no symbol covers the address.",
);

/// Every table, in documentation order.
pub const TABLES: &[Table] = &[
    Table {
        name: "blocks",
        columns: &[
            INTERVAL,
            col("vaddr", "uint64", "Virtual address of the block's first instruction."),
            col("size", "uint32", "Bytes of code in the block."),
            col("icount", "uint32", "Instructions in the block."),
            col("executions", "uint64", "Times the block was entered."),
            col("instructions", "uint64", "Instructions executed in it: executions × icount, less the unexecuted rest of a block the interval stopped in. Sums to the interval's instruction count."),
            FUNCTION,
            nullable("offset", "uint64", "vaddr minus the function's start; NULL with `function`."),
        ],
    },
    Table {
        name: "pages",
        columns: &[
            INTERVAL,
            col("gfn", "uint64", "Guest frame number (guest-physical address / 4096)."),
            col("reads", "uint64", "Data reads by guest instructions from the frame."),
            col("writes", "uint64", "Data writes by guest instructions to the frame."),
            col("fetches", "uint64", "Instructions executed whose first byte lies in the frame."),
        ],
    },
    Table {
        name: "trace",
        columns: &[
            INTERVAL,
            col("icount", "uint64", "Instructions executed in the interval up to and including the accessing one."),
            col("rip", "uint64", "Virtual address of the accessing instruction."),
            col("vaddr", "uint64", "Virtual address accessed."),
            col("paddr", "uint64", "Guest-physical address accessed."),
            col("size", "uint8", "Bytes accessed (the instruction's length for a fetch)."),
            col("kind", "dictionary<uint8, utf8>", "`read`, `write` or `fetch`."),
        ],
    },
    Table {
        name: "cache",
        columns: &[
            INTERVAL,
            col("level", "uint32", "Cache level, 1 or 2."),
            col("vaddr", "uint64", "Basic block whose instructions made the accesses."),
            FUNCTION,
            col("hits", "uint64", "Line lookups that hit at this level."),
            col("misses", "uint64", "Line lookups that missed (and went to the next level)."),
        ],
    },
];

/// The table of an analysis added to the simulator by name (`DIR/<name>/...`): its
/// `(key, value)` rows in the order the analysis gave them.
pub const CUSTOM: Table = Table {
    name: "custom",
    columns: &[
        INTERVAL,
        col(
            "key",
            "utf8",
            "What is counted, as the analysis names it (e.g. `read 8`).",
        ),
        col("value", "uint64", "The count."),
    ],
};

fn table(name: &str) -> &'static Table {
    TABLES.iter().find(|t| t.name == name).unwrap_or(&TABLES[0])
}

fn builder(interval: u64, extra: Vec<KeyValue>) -> WriterPropertiesBuilder {
    let mut kv = vec![KeyValue::new(
        "simuboost.interval".to_string(),
        interval.to_string(),
    )];
    kv.extend(extra);
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(format!("simuboost-replay {}", env!("CARGO_PKG_VERSION")))
        .set_key_value_metadata(Some(kv))
}

fn properties(interval: u64, extra: Vec<KeyValue>) -> WriterProperties {
    builder(interval, extra).build()
}

/// The trace's encodings, chosen for speed at millions of rows per second: no dictionary for
/// the address columns (the writer hashes every value into one, which costs more than zstd
/// gains back), deltas for the monotonic instruction count and the constant interval; a
/// dictionary only where values repeat (the accessing instruction, the size, the kind —
/// without them the file doubles and zstd's extra input costs more than the hashing). No
/// statistics for `kind`: its minimum and maximum ("fetch", "write") prune nothing, and
/// comparing every row's name for them was a tenth of the encoder's time.
fn trace_properties(interval: u64) -> WriterProperties {
    let mut b = builder(interval, Vec::new()).set_dictionary_enabled(false);
    for column in ["interval", "icount"] {
        b = b.set_column_encoding(ColumnPath::from(column), Encoding::DELTA_BINARY_PACKED);
    }
    for column in ["rip", "size", "kind"] {
        b = b.set_column_dictionary_enabled(ColumnPath::from(column), true);
    }
    b.set_column_statistics_enabled(ColumnPath::from("kind"), EnabledStatistics::None)
        .build()
}

/// `<dir>/<analysis>/interval-NNNNNN.parquet`.
pub fn table_path(dir: &Path, analysis: &str, interval: u64) -> PathBuf {
    dir.join(analysis)
        .join(format!("interval-{interval:06}.parquet"))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// A Parquet file being written under a temporary name.
/// A file that is dropped unfinished (the replay failed) leaves no temporary file behind.
struct ParquetFile {
    path: PathBuf,
    /// `None` once finished.
    writer: Option<ArrowWriter<File>>,
    schema: SchemaRef,
}

impl ParquetFile {
    fn create(
        path: PathBuf,
        schema: SchemaRef,
        props: WriterProperties,
    ) -> Result<ParquetFile, OutputError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io("create directory", parent))?;
        }
        let tmp = tmp_path(&path);
        let file = File::create(&tmp).map_err(io("create", &tmp))?;
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props))
            .map_err(|e| pq(&path)(e.to_string()))?;
        Ok(ParquetFile {
            path,
            writer: Some(writer),
            schema,
        })
    }

    fn write(&mut self, columns: Vec<ArrayRef>) -> Result<(), OutputError> {
        let batch = RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| pq(&self.path)(e.to_string()))?;
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| pq(&self.path)("written after it was finished".to_string()))?;
        writer
            .write(&batch)
            .map_err(|e| pq(&self.path)(e.to_string()))
    }

    /// Closes the file and renames it into place; returns its size.
    fn finish(mut self) -> Result<u64, OutputError> {
        let writer = self
            .writer
            .take()
            .ok_or_else(|| pq(&self.path)("finished twice".to_string()))?;
        let file = writer
            .into_inner()
            .map_err(|e| pq(&self.path)(e.to_string()))?;
        file.sync_all().map_err(io("fsync", &self.path))?;
        let size = file.metadata().map_err(io("stat", &self.path))?.len();
        let tmp = tmp_path(&self.path);
        std::fs::rename(&tmp, &self.path).map_err(io("rename", &tmp))?;
        Ok(size)
    }
}

impl Drop for ParquetFile {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let tmp = tmp_path(&self.path);
            if let Err(e) = std::fs::remove_file(&tmp) {
                tracing::debug!(path = %tmp.display(), error = %e, "removing an unfinished file");
            }
        }
    }
}

fn u64s(v: impl IntoIterator<Item = u64>) -> ArrayRef {
    Arc::new(UInt64Array::from_iter_values(v))
}

fn u32s(v: impl IntoIterator<Item = u32>) -> ArrayRef {
    Arc::new(UInt32Array::from_iter_values(v))
}

/// The kind column: a dictionary of the three names, indexed by [`AccessKind`]'s byte.
fn kinds(codes: Vec<u8>) -> Result<ArrayRef, String> {
    if let Some(bad) = codes.iter().find(|&&k| AccessKind::from_u8(k).is_none()) {
        return Err(format!("access kind {bad} is none of read, write, fetch"));
    }
    let values = StringArray::from(vec!["read", "write", "fetch"]);
    let keys = UInt8Array::from(codes);
    DictionaryArray::<UInt8Type>::try_new(keys, Arc::new(values))
        .map(|a| Arc::new(a) as ArrayRef)
        .map_err(|e| e.to_string())
}

/// The memory of a column the writer has encoded, for the next batch to be received into;
/// empty if the array's buffer is still shared.
fn reclaim<T: ArrowPrimitiveType>(column: PrimitiveArray<T>) -> Vec<T::Native> {
    column
        .into_parts()
        .1
        .into_inner()
        .into_vec()
        .unwrap_or_default()
}

/// Streams an interval's trace into `<out>/trace/interval-N.parquet`: batches are written as
/// they arrive, and the writer flushes a row group every [`ROW_GROUP_ROWS`] rows, so memory
/// stays bounded however long the interval.
///
/// The encoding runs on a thread of its own, [`TRACE_QUEUE`] batches behind the simulator:
/// written on the thread that receives them, each 2 MiB batch kept the simulator waiting on a
/// full socket while it was encoded, and the two processes took turns on the two cores.
pub struct TraceWriter {
    path: PathBuf,
    /// To the encoder; `None` once finished.
    batches: Option<std::sync::mpsc::SyncSender<ToEncoder>>,
    /// The encoder: the file's size when it finished, or why it stopped.
    encoder: Option<std::thread::JoinHandle<Result<u64, OutputError>>>,
    rows: u64,
}

/// Batches received but not yet encoded, at most (each up to a few MiB).
const TRACE_QUEUE: usize = 2;

/// What the trace encoder is sent.
enum ToEncoder {
    /// Rows to append.
    Batch(TraceBatch),
    /// Every batch has been sent: complete the file. Without it (the replay failed), the
    /// encoder drops the file unfinished, which leaves nothing behind.
    Finish,
}

/// The trace file and what each batch needs besides its own columns.
struct TraceEncoder {
    file: ParquetFile,
    interval: u64,
    /// The `interval` column of the largest batch so far; each batch writes a slice of it
    /// (filling a fresh column per batch was a twentieth of the writer's time).
    interval_column: ArrayRef,
}

impl TraceEncoder {
    /// Appends one batch (its columns become the arrays, uncopied).
    fn write(&mut self, b: TraceBatch) -> Result<(), OutputError> {
        let rows = b.len();
        if rows == 0 {
            b.recycle();
            return Ok(());
        }
        let kind = kinds(b.kind).map_err(pq(&self.file.path))?;
        if self.interval_column.len() < rows {
            self.interval_column = u64s(std::iter::repeat_n(self.interval, rows));
        }
        let [icount, rip, vaddr, paddr] =
            [b.icount, b.rip, b.vaddr, b.paddr].map(UInt64Array::from);
        let size = UInt8Array::from(b.size);
        self.file.write(vec![
            self.interval_column.slice(0, rows),
            Arc::new(icount.clone()),
            Arc::new(rip.clone()),
            Arc::new(vaddr.clone()),
            Arc::new(paddr.clone()),
            Arc::new(size.clone()),
            kind,
        ])?;
        // The writer has encoded the rows and keeps none of the arrays: their memory takes the
        // next batch from the simulator. (A column still shared comes back empty and is
        // allocated anew.)
        let [icount, rip, vaddr, paddr] = [icount, rip, vaddr, paddr].map(reclaim);
        TraceBatch {
            icount,
            rip,
            vaddr,
            paddr,
            size: reclaim(size),
            kind: Vec::new(),
        }
        .recycle();
        Ok(())
    }

    /// Encodes what arrives until told to finish, then completes the file.
    fn run(mut self, batches: std::sync::mpsc::Receiver<ToEncoder>) -> Result<u64, OutputError> {
        for message in batches {
            match message {
                // On an error the file is dropped unfinished (no temporary file is left) and
                // the receiver with it, which the next write or `finish` reports.
                ToEncoder::Batch(batch) => self.write(batch)?,
                ToEncoder::Finish => return self.file.finish(),
            }
        }
        Err(pq(&self.file.path)(
            "abandoned unfinished (the replay stopped)".to_string(),
        ))
    }
}

impl TraceWriter {
    /// Starts the file (here, so that an error in creating it comes at once) and its encoder.
    pub fn create(dir: &Path, interval: u64) -> Result<TraceWriter, OutputError> {
        let path = table_path(dir, "trace", interval);
        let encoder = TraceEncoder {
            file: ParquetFile::create(
                path.clone(),
                table("trace").schema(),
                trace_properties(interval),
            )?,
            interval,
            interval_column: u64s([]),
        };
        let (batches, received) = std::sync::mpsc::sync_channel(TRACE_QUEUE);
        let encoder = std::thread::Builder::new()
            .name("trace-encode".into())
            .spawn(move || encoder.run(received))
            .map_err(io("start the encoder thread for", &path))?;
        Ok(TraceWriter {
            path,
            batches: Some(batches),
            encoder: Some(encoder),
            rows: 0,
        })
    }

    /// Appends one batch from the simulator. An error the encoder met with an earlier batch
    /// comes back here (or from [`TraceWriter::finish`]).
    pub fn write(&mut self, b: TraceBatch) -> Result<(), OutputError> {
        let rows = b.len() as u64;
        let sent = match &self.batches {
            Some(batches) => batches.send(ToEncoder::Batch(b)).is_ok(),
            None => false,
        };
        if !sent {
            return Err(self.stopped());
        }
        self.rows += rows;
        Ok(())
    }

    /// Why the encoder no longer takes batches.
    fn stopped(&mut self) -> OutputError {
        match self.join_encoder() {
            Err(e) => e,
            Ok(_) => pq(&self.path)("written after it was finished".to_string()),
        }
    }

    /// Closes the encoder's queue and waits for it: the file's size if it was told to finish,
    /// or why it stopped. Unfinished, the encoder drops its file, which removes the temporary
    /// one.
    fn join_encoder(&mut self) -> Result<u64, OutputError> {
        self.batches = None;
        match self.encoder.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(pq(&self.path)("the trace encoder panicked".to_string())),
            None => Err(pq(&self.path)(
                "the trace encoder had already stopped (its error was reported)".to_string(),
            )),
        }
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Completes the file once every batch is encoded; returns its size in bytes.
    pub fn finish(mut self) -> Result<u64, OutputError> {
        if let Some(batches) = &self.batches {
            // A refusal means the encoder has stopped: its result says why.
            let _ = batches.send(ToEncoder::Finish);
        }
        self.join_encoder()
    }
}

impl Drop for TraceWriter {
    fn drop(&mut self) {
        // Unfinished (the replay failed): wait until the encoder has dropped its file.
        let _ = self.join_encoder();
    }
}

/// What one interval's analyses found, as the summary JSON and the `--all` table show it.
pub use simuboost_report::replay::AnalysisSummary as IntervalSummary;

/// The output directory of an analysis run.
pub struct AnalysisOutput {
    dir: PathBuf,
    symbols: Option<Symbols>,
    /// Why there are no symbols.
    warning: Option<String>,
}

impl AnalysisOutput {
    /// Creates `dir` (if needed). `symbols`: the guest's, or why there are none (blocks are then
    /// written unsymbolised). Refuses a `dir` inside `run`: results never go into a run.
    pub fn create(
        dir: &Path,
        run: &Path,
        symbols: Result<Symbols, String>,
    ) -> Result<AnalysisOutput, OutputError> {
        // Checked before anything is created, so that a refused --out leaves no trace.
        let out = resolve(dir)?;
        if let Ok(run) = run.canonicalize() {
            if out.starts_with(&run) {
                return Err(OutputError::InsideRun { out, run });
            }
        }
        std::fs::create_dir_all(dir).map_err(io("create directory", dir))?;
        let (symbols, warning) = match symbols {
            Ok(s) => (Some(s), None),
            Err(why) => (None, Some(format!("blocks are not symbolised: {why}"))),
        };
        Ok(AnalysisOutput {
            dir: dir.to_path_buf(),
            symbols,
            warning,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Why blocks are not symbolised, if they are not.
    pub fn warning(&self) -> Option<&str> {
        self.warning.as_deref()
    }

    /// The trace writer for `interval`.
    pub fn trace(&self, interval: u64) -> Result<TraceWriter, OutputError> {
        TraceWriter::create(&self.dir, interval)
    }

    fn function(&self, vaddr: u64) -> (Option<String>, Option<u64>) {
        match self.symbols.as_ref().and_then(|s| s.lookup(vaddr)) {
            Some((name, off)) => (Some(name.to_string()), Some(off)),
            None => (None, None),
        }
    }

    /// Writes the results in `out` (the simulator's `Final`) of `interval`, finishing `trace`
    /// if the trace ran, and the summary JSON; returns the summary.
    pub fn write_interval(
        &self,
        interval: u64,
        out: &Final,
        trace: Option<TraceWriter>,
    ) -> Result<IntervalSummary, OutputError> {
        let a = &out.analysis;
        let mut s = IntervalSummary {
            interval,
            instructions: out.instructions,
            sim_seconds: out.sim_ms / 1000.0,
            warning: self.warning.clone(),
            ..IntervalSummary::default()
        };
        let rel = |name: &str| format!("{name}/interval-{interval:06}.parquet");
        if !a.blocks.is_empty() {
            let path = table_path(&self.dir, "blocks", interval);
            let mut f = ParquetFile::create(
                path,
                table("blocks").schema(),
                properties(interval, Vec::new()),
            )?;
            let (names, offsets): (Vec<_>, Vec<_>) =
                a.blocks.iter().map(|b| self.function(b.vaddr)).unzip();
            f.write(vec![
                u64s(std::iter::repeat_n(interval, a.blocks.len())),
                u64s(a.blocks.iter().map(|b| b.vaddr)),
                u32s(a.blocks.iter().map(|b| b.size)),
                u32s(a.blocks.iter().map(|b| b.icount)),
                u64s(a.blocks.iter().map(|b| b.executions)),
                u64s(a.blocks.iter().map(|b| b.instructions)),
                Arc::new(StringArray::from(names.clone())),
                Arc::new(UInt64Array::from(offsets)),
            ])?;
            f.finish()?;
            s.files.push(rel("blocks"));
            let mut per_function: BTreeMap<String, u64> = BTreeMap::new();
            for (b, name) in a.blocks.iter().zip(names) {
                let name = name.unwrap_or_else(|| format!("{:#x}", b.vaddr));
                *per_function.entry(name).or_default() += b.instructions;
            }
            let mut top: Vec<(String, u64)> = per_function.into_iter().collect();
            top.sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
            top.truncate(5);
            s.top_functions = top;
        }
        if !a.pages.is_empty() {
            let mut f = ParquetFile::create(
                table_path(&self.dir, "pages", interval),
                table("pages").schema(),
                properties(interval, Vec::new()),
            )?;
            f.write(vec![
                u64s(std::iter::repeat_n(interval, a.pages.len())),
                u64s(a.pages.iter().map(|p| p.gfn)),
                u64s(a.pages.iter().map(|p| p.reads)),
                u64s(a.pages.iter().map(|p| p.writes)),
                u64s(a.pages.iter().map(|p| p.fetches)),
            ])?;
            f.finish()?;
            s.files.push(rel("pages"));
            s.working_set_frames = Some(a.pages.len() as u64);
        }
        if let Some(cache) = &a.cache {
            let geometry: Vec<String> = cache
                .levels
                .iter()
                .map(|l| format!("{}:{}:{}", l.size, l.ways, l.line))
                .collect();
            let mut f = ParquetFile::create(
                table_path(&self.dir, "cache", interval),
                table("cache").schema(),
                properties(
                    interval,
                    vec![KeyValue::new(
                        "simuboost.cache_levels".to_string(),
                        geometry.join(","),
                    )],
                ),
            )?;
            let rows: Vec<(u32, u64, u64, u64)> = cache
                .blocks
                .iter()
                .flat_map(|b| {
                    b.levels
                        .iter()
                        .enumerate()
                        .map(move |(i, c)| (i as u32 + 1, b.vaddr, c.hits, c.misses))
                })
                .collect();
            f.write(vec![
                u64s(std::iter::repeat_n(interval, rows.len())),
                u32s(rows.iter().map(|r| r.0)),
                u64s(rows.iter().map(|r| r.1)),
                Arc::new(StringArray::from(
                    rows.iter()
                        .map(|r| self.function(r.1).0)
                        .collect::<Vec<_>>(),
                )),
                u64s(rows.iter().map(|r| r.2)),
                u64s(rows.iter().map(|r| r.3)),
            ])?;
            f.finish()?;
            s.files.push(rel("cache"));
            let rate = |c: &simuboost_sim_proto::LevelCounts| {
                let n = c.hits + c.misses;
                (n > 0).then(|| c.misses as f64 / n as f64)
            };
            s.cache_l1_miss_rate = cache.totals.first().and_then(rate);
            s.cache_l2_miss_rate = cache.totals.get(1).and_then(rate);
        }
        for custom in &a.custom {
            // The simulator answers only names that were asked for, which were checked to be
            // plain directory names; refuse anything else rather than write elsewhere.
            if !super::is_custom_name(&custom.name) {
                return Err(pq(&self.dir)(format!(
                    "the simulator returned results under the name {:?}",
                    custom.name
                )));
            }
            let mut f = ParquetFile::create(
                table_path(&self.dir, &custom.name, interval),
                CUSTOM.schema(),
                properties(interval, Vec::new()),
            )?;
            f.write(vec![
                u64s(std::iter::repeat_n(interval, custom.rows.len())),
                Arc::new(StringArray::from_iter_values(
                    custom.rows.iter().map(|(k, _)| k.as_str()),
                )),
                u64s(custom.rows.iter().map(|(_, v)| *v)),
            ])?;
            f.finish()?;
            s.files.push(rel(&custom.name));
        }
        if let Some(t) = trace {
            s.trace_rows = Some(t.rows());
            s.trace_bytes = Some(t.finish()?);
            s.trace_dropped = a.trace.map(|t| t.dropped);
            s.files.push(rel("trace"));
        }
        let json_path = self
            .dir
            .join("summary")
            .join(format!("interval-{interval:06}.json"));
        if let Some(parent) = json_path.parent() {
            std::fs::create_dir_all(parent).map_err(io("create directory", parent))?;
        }
        let mut json = serde_json::to_vec_pretty(&s).map_err(|e| pq(&json_path)(e.to_string()))?;
        json.push(b'\n');
        std::fs::write(&json_path, json).map_err(io("write", &json_path))?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use simuboost_sim_proto::{
        AnalysisResults, BlockCache, BlockCount, CacheLevel, CacheResults, CpuState, CustomResult,
        LevelCounts, PageCount, TraceSummary,
    };

    fn final_with_everything() -> Final {
        Final {
            cpu: CpuState::default(),
            instructions: 50,
            accessed: Vec::new(),
            page_table_frames: Vec::new(),
            sim_ms: 1.5,
            analysis: AnalysisResults {
                blocks: vec![
                    BlockCount {
                        vaddr: 0x1000,
                        size: 10,
                        icount: 4,
                        executions: 10,
                        instructions: 40,
                    },
                    BlockCount {
                        vaddr: 0x2000,
                        size: 6,
                        icount: 2,
                        executions: 5,
                        instructions: 10,
                    },
                ],
                pages: vec![PageCount {
                    gfn: 1,
                    reads: 3,
                    writes: 2,
                    fetches: 50,
                }],
                cache: Some(CacheResults {
                    levels: vec![CacheLevel {
                        size: 1024,
                        ways: 2,
                        line: 64,
                    }],
                    totals: vec![LevelCounts { hits: 4, misses: 1 }],
                    blocks: vec![BlockCache {
                        vaddr: 0x1000,
                        levels: vec![LevelCounts { hits: 4, misses: 1 }],
                    }],
                }),
                trace: Some(TraceSummary {
                    rows: 3,
                    dropped: 2,
                }),
                custom: vec![CustomResult {
                    name: "sizes".into(),
                    rows: vec![("read 8".into(), 3), ("write 8".into(), 2)],
                }],
            },
        }
    }

    fn trace_batch() -> TraceBatch {
        TraceBatch {
            icount: vec![1, 2, 2],
            rip: vec![0x1000, 0x1004, 0x1004],
            vaddr: vec![0x1000, 0x5008, 0x5008],
            paddr: vec![0x1000, 0x9008, 0x9008],
            size: vec![4, 8, 8],
            kind: vec![2, 0, 1],
        }
    }

    fn rows(path: &Path) -> usize {
        let file = File::open(path).unwrap();
        ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap()
            .map(|b| b.unwrap().num_rows())
            .sum()
    }

    fn write_all(dir: &Path, run: &Path) -> IntervalSummary {
        let symbols = Symbols::from_list(vec![(0x1000, 0x100, "hot".into())]);
        let out = AnalysisOutput::create(dir, run, Ok(symbols)).unwrap();
        let mut trace = out.trace(7).unwrap();
        trace.write(trace_batch()).unwrap();
        out.write_interval(7, &final_with_everything(), Some(trace))
            .unwrap()
    }

    #[test]
    fn every_table_is_written_and_summarised() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out");
        let s = write_all(&dir, &tmp.path().join("run"));
        assert_eq!(rows(&table_path(&dir, "blocks", 7)), 2);
        assert_eq!(rows(&table_path(&dir, "pages", 7)), 1);
        assert_eq!(rows(&table_path(&dir, "cache", 7)), 1);
        assert_eq!(rows(&table_path(&dir, "trace", 7)), 3);
        assert_eq!(rows(&table_path(&dir, "sizes", 7)), 2);
        assert!(s
            .files
            .contains(&"sizes/interval-000007.parquet".to_string()));
        assert_eq!(
            s.top_functions,
            vec![("hot".to_string(), 40), ("0x2000".to_string(), 10)]
        );
        assert_eq!(s.cache_l1_miss_rate, Some(0.2));
        assert_eq!((s.trace_rows, s.trace_dropped), (Some(3), Some(2)));
        assert_eq!(s.working_set_frames, Some(1));
        assert!(dir.join("summary/interval-000007.json").is_file());
        // No temporary files left.
        for t in TABLES {
            for entry in std::fs::read_dir(dir.join(t.name)).unwrap() {
                let name = entry.unwrap().file_name();
                assert!(!name.to_string_lossy().ends_with(".tmp"), "{name:?}");
            }
        }
    }

    /// The trace is encoded on its own thread: many batches arrive whole and in order, an
    /// unfinished trace (the replay failed) leaves no file, and a batch the encoder refuses
    /// is reported by a later write or by `finish`, naming the file.
    #[test]
    fn the_trace_encoder_keeps_order_and_leaves_nothing_unfinished() {
        let tmp = tempfile::tempdir().unwrap();
        let out = AnalysisOutput::create(
            &tmp.path().join("out"),
            &tmp.path().join("run"),
            Err("none".into()),
        )
        .unwrap();
        let mut trace = out.trace(3).unwrap();
        for k in 0..50u64 {
            let mut b = trace_batch();
            b.icount = vec![3 * k + 1, 3 * k + 2, 3 * k + 3];
            trace.write(b).unwrap();
        }
        assert_eq!(trace.rows(), 150);
        trace.finish().unwrap();
        let path = table_path(out.dir(), "trace", 3);
        let file = File::open(&path).unwrap();
        let icounts: Vec<u64> = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap()
            .flat_map(|b| {
                let b = b.unwrap();
                let c = b
                    .column_by_name("icount")
                    .unwrap()
                    .as_any()
                    .downcast_ref::<UInt64Array>()
                    .unwrap()
                    .clone();
                c.values().to_vec()
            })
            .collect();
        assert_eq!(icounts, (1..=150).collect::<Vec<u64>>());

        let mut unfinished = out.trace(4).unwrap();
        unfinished.write(trace_batch()).unwrap();
        drop(unfinished);
        let names: Vec<_> = std::fs::read_dir(out.dir().join("trace"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("interval-000003.parquet")]
        );

        let mut refused = out.trace(5).unwrap();
        let mut bad = trace_batch();
        bad.kind = vec![0, 9, 1];
        refused.write(bad).unwrap();
        let later = (0..100)
            .map(|_| refused.write(trace_batch()))
            .find_map(Result::err);
        let e = match later {
            Some(e) => e,
            None => refused.finish().unwrap_err(),
        };
        let message = e.to_string();
        assert!(
            message.contains("interval-000005.parquet") && message.contains("access kind 9"),
            "{message}"
        );
        assert!(!table_path(out.dir(), "trace", 5).exists());
    }

    #[test]
    fn the_same_results_give_identical_files() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        write_all(&tmp.path().join("a"), &run);
        write_all(&tmp.path().join("b"), &run);
        for t in TABLES {
            let a = std::fs::read(table_path(&tmp.path().join("a"), t.name, 7)).unwrap();
            let b = std::fs::read(table_path(&tmp.path().join("b"), t.name, 7)).unwrap();
            assert_eq!(a, b, "{}", t.name);
        }
    }

    #[test]
    fn output_inside_the_run_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        std::fs::create_dir_all(&run).unwrap();
        let err = AnalysisOutput::create(&run.join("analyses"), &run, Err("none".into()))
            .err()
            .unwrap();
        assert!(matches!(err, OutputError::InsideRun { .. }), "{err}");
    }

    /// Every `sql` block of docs/ANALYSES.md runs in DuckDB on written output, and the
    /// hot-functions, pages, trace and cache queries give what was written. Skips (passes with
    /// a SKIPPED line) without python3's duckdb module.
    #[test]
    fn the_documented_duckdb_queries_run() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out");
        write_all(&dir, &tmp.path().join("run"));
        let doc = include_str!("../../../docs/ANALYSES.md");
        let queries: Vec<String> = doc
            .split("```sql\n")
            .skip(1)
            .flat_map(|block| {
                let block = block.split("```").next().unwrap_or("");
                block
                    .split(";\n")
                    .map(|q| q.trim().trim_end_matches(';').to_string())
                    .filter(|q| !q.is_empty())
                    .collect::<Vec<_>>()
            })
            .map(|q| {
                q.replace("DIR", &dir.display().to_string())
                    .replace("interval-000003", "interval-000007")
            })
            .collect();
        assert!(queries.len() >= 5, "{queries:?}");
        let script = r#"
import sys, json
try:
    import duckdb
except ImportError:
    sys.exit(3)
con = duckdb.connect()
out = [[[str(v) for v in r] for r in con.execute(q).fetchall()] for q in json.load(sys.stdin)]
print(json.dumps(out))
"#;
        let mut child = std::process::Command::new("python3")
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(
            child.stdin.as_mut().unwrap(),
            serde_json::to_string(&queries).unwrap().as_bytes(),
        )
        .unwrap();
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        if out.status.code() == Some(3) {
            eprintln!("SKIPPED the_documented_duckdb_queries_run: python3 has no duckdb");
            return;
        }
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let results: Vec<Vec<Vec<String>>> = serde_json::from_slice(&out.stdout).unwrap();
        // Hot functions: "hot" has 40 of 50 instructions; the unsymbolised block is NULL.
        assert_eq!(results[0][0][..2], ["hot".to_string(), "40".to_string()]);
        assert_eq!(results[0][1][..2], ["None".to_string(), "10".to_string()]);
        // Pages per interval: 1 frame, written, 3 reads, 2 writes, 50 fetches.
        assert_eq!(results[1], vec![vec!["7", "1", "1", "3", "2", "50"]]);
        // Trace by frame: the fetch in frame 1, a read and a write in frame 9.
        assert_eq!(
            results[2],
            vec![vec!["1", "0", "0", "1"], vec!["9", "1", "1", "0"]]
        );
        // Cache miss rate of interval 7, level 1; and by function.
        assert_eq!(results[3], vec![vec!["7", "1", "4", "1", "0.2"]]);
        assert_eq!(results[4], vec![vec!["hot", "1", "0.2"]]);
    }

    /// docs/ANALYSES.md's column tables are these declarations.
    #[test]
    fn the_documented_columns_are_the_declared_ones() {
        let doc = include_str!("../../../docs/ANALYSES.md");
        for t in TABLES.iter().chain([&CUSTOM]) {
            let heading = format!("### {}\n", t.name);
            let at = doc
                .find(&heading)
                .unwrap_or_else(|| panic!("no section {heading:?}"));
            let section = &doc[at..];
            let expected: Vec<String> = t
                .columns
                .iter()
                .map(|c| {
                    let ty = if c.nullable {
                        format!("{}, nullable", c.doc_type)
                    } else {
                        c.doc_type.to_string()
                    };
                    format!("| `{}` | {} | {} |", c.name, ty, c.doc)
                })
                .collect();
            let found: Vec<String> = section
                .lines()
                .skip_while(|l| !l.starts_with("| `"))
                .take_while(|l| l.starts_with("| `"))
                .map(str::to_string)
                .collect();
            assert_eq!(found, expected, "table {}", t.name);
        }
    }
}
