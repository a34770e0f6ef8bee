//! What the tables share: column declarations (from which schemas, batches and the column
//! tables of docs/FORMAT.md come), the writer settings, and the checked read side.
//!
//! A table declares its columns once, as a const list of [`Column`]s. Writing fills them by
//! name through [`BatchBuilder`], reading takes them by name through [`Cols`], so the order of
//! the columns in a file is decided in exactly one place: the declaration.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{
    Array, ArrayRef, BinaryArray, BooleanArray, FixedSizeBinaryArray, RecordBatch, StringArray,
    UInt32Array, UInt64Array,
};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};
use parquet::schema::types::ColumnPath;

use crate::fsutil::write_atomic;
use crate::storage::RunStorage;
use crate::{FormatError, FORMAT_VERSION};

/// Width of a `hash` column value: an xxh3-128, big-endian.
pub(crate) const HASH_BYTES: i32 = 16;

/// Rows per row group of the page tables and page maps. The tables are sorted by gfn, so the
/// row-group statistics on `gfn` (min, max) say which groups can hold a frame: a sparse restore
/// reads only the groups of the frames it loads ([`super::pruned`]), and DuckDB skips the
/// others too. 2 Ki rows (about 64 KiB per group) keeps that read close to what the working
/// set needs, while the footer stays small (a few hundred bytes per group).
pub(crate) const PAGE_TABLE_ROW_GROUP: usize = 2 * 1024;

/// Rows per batch when reading.
const READ_BATCH: usize = 64 * 1024;
/// The largest table a reader accepts (an interval's events hold the data of its disk reads,
/// the largest tables of a run): a bound on what a damaged or hostile run makes it allocate.
pub(crate) const MAX_TABLE_BYTES: u64 = 2 << 30;

// ---------------------------------------------------------------------------------------------
// Declarations

/// The type of a column's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ColumnType {
    U32,
    U64,
    Bool,
    Utf8,
    Binary,
    /// An xxh3-128, [`HASH_BYTES`] big-endian bytes.
    Hash,
    /// The state table's MSRs: `(index, value)` pairs.
    MsrList,
}

impl ColumnType {
    pub(crate) fn data_type(self) -> DataType {
        match self {
            ColumnType::U32 => DataType::UInt32,
            ColumnType::U64 => DataType::UInt64,
            ColumnType::Bool => DataType::Boolean,
            ColumnType::Utf8 => DataType::Utf8,
            ColumnType::Binary => DataType::Binary,
            ColumnType::Hash => DataType::FixedSizeBinary(HASH_BYTES),
            ColumnType::MsrList => DataType::List(msr_item_field()),
        }
    }

    /// The type as docs/FORMAT.md spells it (lower case, Arrow's names).
    #[cfg(test)]
    pub(crate) fn doc_name(self) -> &'static str {
        match self {
            ColumnType::U32 => "uint32",
            ColumnType::U64 => "uint64",
            ColumnType::Bool => "bool",
            ColumnType::Utf8 => "utf8",
            ColumnType::Binary => "binary",
            ColumnType::Hash => "fixed_size_binary(16)",
            ColumnType::MsrList => "list<struct<index: uint32, value: uint64>>",
        }
    }
}

/// The fields of one MSR in the state table's `msrs` list.
pub(crate) fn msr_fields() -> Fields {
    Fields::from(vec![
        Field::new("index", DataType::UInt32, false),
        Field::new("value", DataType::UInt64, false),
    ])
}

pub(crate) fn msr_item_field() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Struct(msr_fields()), false))
}

/// One column of a table: the single place its name, type, nullability and meaning are given.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Column {
    pub name: &'static str,
    pub ty: ColumnType,
    pub nullable: bool,
    /// Its meaning, as docs/FORMAT.md gives it (a test keeps the document equal).
    #[cfg_attr(not(test), allow(dead_code))]
    pub doc: &'static str,
}

impl Column {
    /// A column without NULLs.
    pub(crate) const fn new(name: &'static str, ty: ColumnType, doc: &'static str) -> Column {
        Column {
            name,
            ty,
            nullable: false,
            doc,
        }
    }

    /// A column that may hold NULLs.
    pub(crate) const fn nullable(name: &'static str, ty: ColumnType, doc: &'static str) -> Column {
        Column {
            name,
            ty,
            nullable: true,
            doc,
        }
    }

    fn field(&self) -> Field {
        Field::new(self.name, self.ty.data_type(), self.nullable)
    }
}

/// One table: where its files live, its columns in file order, and its writer settings.
pub(crate) struct Table {
    /// The run subdirectory holding its files (and the heading of its FORMAT.md section).
    #[cfg_attr(not(test), allow(dead_code))]
    pub dir: &'static str,
    pub columns: &'static [Column],
    pub settings: Settings,
}

impl Table {
    pub(crate) fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns.iter().map(Column::field).collect::<Vec<_>>(),
        ))
    }

    pub(crate) fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.columns.iter().map(|c| c.name)
    }
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Which writer settings a table gets.
#[derive(Clone, Copy)]
pub(crate) enum Settings {
    /// Large, mostly unique u64s and hashes: snappy (cheap), no dictionaries except for the
    /// constant `checkpoint` column.
    PageTable,
    /// Small tables and the event log: snappy, whose decoder is cheap to set up (the parquet
    /// crate builds a zstd compression and decompression context for every column chunk it
    /// reads, which dominated reading a one-row table of 29 columns); zstd only for event
    /// data buffers, which it shrinks well.
    Small,
    /// Access logs: snappy (as above); dictionaries only for the constant `interval` and the
    /// two string enums (`gfn` and `first_touch` are all distinct, a dictionary would only add
    /// to them).
    Access,
}

fn properties(settings: Settings) -> WriterProperties {
    let builder = WriterProperties::builder()
        .set_writer_version(WriterVersion::PARQUET_1_0)
        .set_created_by(format!("simuboost-format {}", env!("CARGO_PKG_VERSION")))
        .set_key_value_metadata(Some(vec![KeyValue::new(
            "simuboost.format_version".to_string(),
            FORMAT_VERSION.to_string(),
        )]));
    match settings {
        Settings::PageTable => builder
            .set_compression(Compression::SNAPPY)
            .set_dictionary_enabled(false)
            .set_column_dictionary_enabled(ColumnPath::from("checkpoint"), true)
            // Statistics only where a reader prunes with them: min/max of slots and hashes
            // would only grow the footer, which a sparse restore reads first.
            .set_column_statistics_enabled(ColumnPath::from("slot"), EnabledStatistics::None)
            .set_column_statistics_enabled(ColumnPath::from("hash"), EnabledStatistics::None)
            .set_max_row_group_row_count(Some(PAGE_TABLE_ROW_GROUP))
            .build(),
        Settings::Small => builder
            .set_compression(Compression::SNAPPY)
            .set_column_compression(
                ColumnPath::from("data"),
                Compression::ZSTD(ZstdLevel::default()),
            )
            .build(),
        Settings::Access => builder
            .set_compression(Compression::SNAPPY)
            .set_dictionary_enabled(false)
            .set_column_dictionary_enabled(ColumnPath::from("interval"), true)
            .set_column_dictionary_enabled(ColumnPath::from("kind"), true)
            .set_column_dictionary_enabled(ColumnPath::from("source"), true)
            .build(),
    }
}

/// Writes `batches` of `table` to `path` atomically; returns the file's size.
pub(crate) fn write_table(
    path: &Path,
    table: &Table,
    batches: &[RecordBatch],
) -> Result<u64, FormatError> {
    write_file(path, table.schema(), batches, table.settings)
}

/// [`write_table`] with any schema (tests write damaged tables with it).
pub(crate) fn write_file(
    path: &Path,
    schema: SchemaRef,
    batches: &[RecordBatch],
    settings: Settings,
) -> Result<u64, FormatError> {
    write_atomic(path, |file, path| {
        let mut writer = ArrowWriter::try_new(&mut *file, schema, Some(properties(settings)))
            .map_err(|e| FormatError::parquet(path, e))?;
        for batch in batches {
            writer
                .write(batch)
                .map_err(|e| FormatError::parquet(path, e))?;
        }
        writer.close().map_err(|e| FormatError::parquet(path, e))?;
        Ok(())
    })
}

/// Builds one batch of a table, column by column by name, in any order: [`BatchBuilder::finish`]
/// puts them in the declared order and checks that every declared column, and no other, was
/// given (and Arrow checks types, nullability and lengths against the schema).
pub(crate) struct BatchBuilder<'t> {
    table: &'t Table,
    rows: usize,
    arrays: Vec<Option<ArrayRef>>,
    /// Names given that the table does not declare, or gave twice: a bug in this crate.
    wrong: Vec<&'static str>,
}

impl<'t> BatchBuilder<'t> {
    pub(crate) fn new(table: &'t Table, rows: usize) -> Self {
        BatchBuilder {
            table,
            rows,
            arrays: vec![None; table.columns.len()],
            wrong: Vec::new(),
        }
    }

    /// Sets column `name` to `array`.
    pub(crate) fn set(&mut self, name: &'static str, array: ArrayRef) -> &mut Self {
        match self.table.columns.iter().position(|c| c.name == name) {
            Some(i) if self.arrays[i].is_none() => self.arrays[i] = Some(array),
            _ => self.wrong.push(name),
        }
        self
    }

    /// A nullable `Hash` column: each value big-endian (`u128::to_be_bytes`), `None` as NULL.
    pub(crate) fn opt_hashes(
        &mut self,
        name: &'static str,
        hashes: impl Iterator<Item = Option<u128>>,
    ) -> &mut Self {
        let mut values = Vec::with_capacity(self.rows * HASH_BYTES as usize);
        let mut valid = Vec::with_capacity(self.rows);
        for hash in hashes {
            values.extend_from_slice(&hash.unwrap_or(0).to_be_bytes());
            valid.push(hash.is_some());
        }
        // Built from its buffers: the iterator constructors cannot size an empty or all-NULL
        // column. A length that is not the batch's is caught by `finish`, like any column's.
        let array = FixedSizeBinaryArray::new(
            HASH_BYTES,
            values.into(),
            Some(arrow_buffer::NullBuffer::from(valid)),
        );
        self.set(name, Arc::new(array))
    }

    /// The `checkpoint` or `interval` column: `number` in every row.
    pub(crate) fn number(&mut self, name: &'static str, number: u64) -> &mut Self {
        let rows = self.rows;
        self.set(name, Arc::new(UInt64Array::from(vec![number; rows])))
    }

    pub(crate) fn u64s(
        &mut self,
        name: &'static str,
        v: impl IntoIterator<Item = u64>,
    ) -> &mut Self {
        self.set(name, Arc::new(UInt64Array::from_iter_values(v)))
    }

    pub(crate) fn opt_u64s(
        &mut self,
        name: &'static str,
        v: impl IntoIterator<Item = Option<u64>>,
    ) -> &mut Self {
        self.set(name, Arc::new(UInt64Array::from_iter(v)))
    }

    pub(crate) fn u32s(
        &mut self,
        name: &'static str,
        v: impl IntoIterator<Item = u32>,
    ) -> &mut Self {
        self.set(name, Arc::new(UInt32Array::from_iter_values(v)))
    }

    pub(crate) fn bools(
        &mut self,
        name: &'static str,
        v: impl IntoIterator<Item = bool>,
    ) -> &mut Self {
        self.set(
            name,
            Arc::new(BooleanArray::from(v.into_iter().collect::<Vec<_>>())),
        )
    }

    pub(crate) fn strs<'a>(
        &mut self,
        name: &'static str,
        v: impl IntoIterator<Item = &'a str>,
    ) -> &mut Self {
        self.set(name, Arc::new(StringArray::from_iter_values(v)))
    }

    pub(crate) fn binaries<'a>(
        &mut self,
        name: &'static str,
        v: impl IntoIterator<Item = &'a [u8]>,
    ) -> &mut Self {
        self.set(name, Arc::new(BinaryArray::from_iter_values(v)))
    }

    pub(crate) fn opt_binaries<'a>(
        &mut self,
        name: &'static str,
        v: impl IntoIterator<Item = Option<&'a [u8]>>,
    ) -> &mut Self {
        self.set(name, Arc::new(BinaryArray::from_iter(v)))
    }

    pub(crate) fn finish(&mut self, path: &Path) -> Result<RecordBatch, FormatError> {
        let missing: Vec<&str> = (self.table.columns.iter().zip(&self.arrays))
            .filter(|(_, a)| a.is_none())
            .map(|(c, _)| c.name)
            .collect();
        if !missing.is_empty() || !self.wrong.is_empty() {
            // Not the caller's fault: the table's write function disagrees with its declaration.
            return Err(FormatError::invalid(format!(
                "{}: internal error: columns {missing:?} not set, {:?} unknown or set twice",
                path.display(),
                self.wrong
            )));
        }
        let arrays = self.arrays.iter_mut().filter_map(Option::take).collect();
        RecordBatch::try_new(self.table.schema(), arrays).map_err(|e| FormatError::arrow(path, e))
    }
}

// ---------------------------------------------------------------------------------------------
// Reading

/// Reads all rows of `path` (only `columns`, if given).
///
/// The decoder runs on a thread of its own, under `catch_unwind` and a deadline: the parquet
/// crate is not documented to be panic-free on arbitrary input, and it does not always finish
/// either (fuzzing found a 7 KiB file whose page header makes parquet 60.1's Thrift `skip` loop
/// over billions of list elements without consuming input: a list of booleans). A damaged file
/// must come back as an error naming it, never abort or hang a replay. A decoder that misses
/// its deadline is left running on its thread, which ends with the process; the replay
/// reports the file and exits.
pub(crate) fn read_batches(
    storage: &dyn RunStorage,
    path: &Path,
    columns: Option<&[&str]>,
    max_rows: u64,
) -> Result<Vec<RecordBatch>, FormatError> {
    // Tables are small next to pages.bin: read whole, then decoded from memory (a remote run
    // costs one request per table).
    let file = storage.get(path, MAX_TABLE_BYTES)?.ok_or_else(|| {
        FormatError::corrupt(path, "missing, but the manifest lists it as complete")
    })?;
    let bytes = file.len() as u64;
    let columns: Option<Vec<String>> = columns.map(|c| c.iter().map(|s| s.to_string()).collect());
    let owned_path = path.to_path_buf();
    guarded(path, bytes, move |_| {
        decode(file, &owned_path, columns.as_deref(), max_rows)
    })
}

/// Which file a [`guarded`] decoder is working on, so that a panic or a missed deadline names
/// it, and, in a group of reads ([`spawn_reads`]), until when its decode may take.
pub(crate) struct Current(std::sync::Mutex<Working>);

/// What [`Current`] knows.
struct Working {
    path: std::path::PathBuf,
    /// In a group of reads: when the decode under way must end, and its allowance; `None`
    /// between decodes.
    deadline: Option<(Instant, Duration)>,
}

impl Current {
    fn new(path: &Path) -> Current {
        Current(std::sync::Mutex::new(Working {
            path: path.to_path_buf(),
            deadline: None,
        }))
    }

    /// Says that the decoder now works on `path`.
    pub(crate) fn set(&self, path: &Path) {
        if let Ok(mut current) = self.0.lock() {
            path.clone_into(&mut current.path);
        }
    }

    fn get(&self, fallback: &Path) -> std::path::PathBuf {
        self.0
            .lock()
            .map(|w| w.path.clone())
            .unwrap_or_else(|_| fallback.to_path_buf())
    }

    /// A decode of `path` starts, allowed `allowance`.
    fn begin(&self, path: &Path, allowance: Duration) {
        if let Ok(mut current) = self.0.lock() {
            path.clone_into(&mut current.path);
            current.deadline = Some((Instant::now() + allowance, allowance));
        }
    }

    /// The decode under way ended.
    fn end(&self) {
        if let Ok(mut current) = self.0.lock() {
            current.deadline = None;
        }
    }

    /// When the decode under way must end, if one is.
    fn deadline(&self) -> Option<Instant> {
        self.0
            .lock()
            .ok()
            .and_then(|w| w.deadline.map(|(at, _)| at))
    }

    /// The file being decoded and its allowance, if a decode is under way and past its
    /// deadline.
    fn overdue(&self) -> Option<(std::path::PathBuf, Duration)> {
        let current = self.0.lock().ok()?;
        match current.deadline {
            Some((at, allowance)) if Instant::now() >= at => {
                Some((current.path.clone(), allowance))
            }
            _ => None,
        }
    }

    /// The file being decoded, if a decode is under way.
    fn decoding(&self) -> Option<std::path::PathBuf> {
        let current = self.0.lock().ok()?;
        current.deadline.map(|_| current.path.clone())
    }
}

thread_local! {
    /// On a thread running a group of reads ([`spawn_reads`]): the group's [`Current`], through
    /// which its decodes, run inline, say which file they are on and until when.
    static GROUP: std::cell::RefCell<Option<Arc<Current>>> = const { std::cell::RefCell::new(None) };
}

/// How often the reader waiting on a group of reads looks again while no decode is under way
/// (a decode that starts meanwhile sets a deadline to wait for).
const GROUP_POLL: Duration = Duration::from_millis(50);

/// Runs `reads` (reads of several tables, and whatever the caller does with them) on a decoder
/// thread and returns at once; [`PendingReads::wait`] gives the result. Each table they decode
/// is decoded inline, on that thread, under the guard a lone decode gets (see
/// [`read_batches`]): a panic in a decode is an error naming the file, and so is a decode that
/// misses its deadline, which leaves the thread behind. Time outside decodes (reading storage,
/// the caller's own work) has no deadline. One hand-over between threads for the group instead
/// of two per table: handing each of a restore's small tables to a decoder thread and back cost
/// ~0.8 ms of a 5.5 ms `compress` sparse restore on two cores. `path` names the group for an
/// error in starting its thread.
pub fn spawn_reads<T, E>(
    path: &Path,
    reads: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<PendingReads<T, E>, FormatError>
where
    T: Send + 'static,
    E: From<FormatError> + Send + 'static,
{
    let current = Arc::new(Current::new(path));
    let (sender, receiver) = std::sync::mpsc::sync_channel(1);
    let in_thread = current.clone();
    DecoderPool::run(Box::new(move || {
        GROUP.with(|group| *group.borrow_mut() = Some(in_thread.clone()));
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(reads));
        GROUP.with(|group| *group.borrow_mut() = None);
        let outcome = match outcome {
            Ok(result) => Ok(result),
            // A panic in a decode is the file's fault; anywhere else it is the caller's, and
            // goes on in the caller as it would have unthreaded.
            Err(panic) => match in_thread.decoding() {
                Some(path) => Ok(Err(E::from(FormatError::corrupt(
                    path,
                    "the Parquet decoder panicked on this file",
                )))),
                None => Err(panic),
            },
        };
        Box::new(move || {
            // The reader may have given up waiting: nobody to tell, then.
            let _ = sender.send(outcome);
        })
    }))
    .map_err(|e| FormatError::io(path, "start a decoder thread for", e))?;
    Ok(PendingReads { receiver, current })
}

/// A group of reads started by [`spawn_reads`].
pub struct PendingReads<T, E> {
    receiver: std::sync::mpsc::Receiver<std::thread::Result<Result<T, E>>>,
    current: Arc<Current>,
}

impl<T, E: From<FormatError>> PendingReads<T, E> {
    /// The reads' result, once they are done, or an error naming the file whose decode missed
    /// its deadline.
    pub fn wait(self) -> Result<T, E> {
        loop {
            let wait = match self.current.deadline() {
                Some(at) => at.saturating_duration_since(Instant::now()),
                None => GROUP_POLL,
            };
            match self.receiver.recv_timeout(wait) {
                Ok(Ok(result)) => return result,
                Ok(Err(panic)) => std::panic::resume_unwind(panic),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if let Some((path, allowance)) = self.current.overdue() {
                        return Err(E::from(FormatError::corrupt(
                            path,
                            format!("the Parquet decoder did not finish it within {allowance:?}"),
                        )));
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(E::from(FormatError::corrupt(
                        self.current.get(Path::new("")),
                        "the Parquet decoder stopped without a result",
                    )));
                }
            }
        }
    }
}

/// Runs `decode` (Parquet decoding of `bytes` bytes of untrusted input, starting with `path`)
/// on a thread of its own, under `catch_unwind` and a deadline (see [`read_batches`]). A
/// decoder working on several files says which one it is on through [`Current::set`].
pub(crate) fn guarded<T: Send + 'static>(
    path: &Path,
    bytes: u64,
    decode: impl FnOnce(&Current) -> Result<T, FormatError> + Send + 'static,
) -> Result<T, FormatError> {
    guarded_within(path, decode_deadline(bytes), decode)
}

/// [`guarded`] with an explicit deadline.
fn guarded_within<T: Send + 'static>(
    path: &Path,
    deadline: Duration,
    decode: impl FnOnce(&Current) -> Result<T, FormatError> + Send + 'static,
) -> Result<T, FormatError> {
    // In a group of reads, on its thread: decoded here, the group's waiter keeping the deadline.
    if let Some(current) = GROUP.with(|group| group.borrow().clone()) {
        current.begin(path, deadline);
        let decoded = decode(&current);
        current.end();
        return decoded;
    }
    let current = Arc::new(Current::new(path));
    let (sender, receiver) = std::sync::mpsc::sync_channel(1);
    let in_thread = current.clone();
    DecoderPool::run(Box::new(move || {
        let decoded = std::panic::catch_unwind(AssertUnwindSafe(|| decode(&in_thread)))
            .unwrap_or_else(|_| {
                Err(FormatError::corrupt(
                    in_thread.get(Path::new("")),
                    "the Parquet decoder panicked on this file",
                ))
            });
        Box::new(move || {
            // The reader may have given up waiting: nobody to tell, then.
            let _ = sender.send(decoded);
        })
    }))
    .map_err(|e| FormatError::io(path, "start a decoder thread for", e))?;
    match receiver.recv_timeout(deadline) {
        Ok(decoded) => decoded,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(FormatError::corrupt(
            current.get(path),
            format!("the Parquet decoder did not finish it within {deadline:?}"),
        )),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(FormatError::corrupt(
            current.get(path),
            "the Parquet decoder stopped without a result",
        )),
    }
}

/// A decode job: runs the decoder and returns how to report its result.
type DecodeJob = Box<dyn FnOnce() -> Box<dyn FnOnce() + Send> + Send>;

/// The threads [`guarded`] decoders run on, kept between decodes. A restore decodes about ten
/// tables; a thread started for each cost its start and a fresh malloc arena whose pages all
/// fault in anew (each decode allocates its batches). An idle thread takes the next job; a
/// thread whose decoder missed its deadline is simply never idle again (it ends with the
/// process), and a job that finds no idle thread starts one, so a stuck decoder cannot hold
/// up the next read.
struct DecoderPool;

/// Senders of the idle decoder threads.
static IDLE_DECODERS: std::sync::Mutex<Vec<std::sync::mpsc::Sender<DecodeJob>>> =
    std::sync::Mutex::new(Vec::new());

/// Idle decoder threads kept at most (more end): the readers run a few decodes at once.
const MAX_IDLE_DECODERS: usize = 4;

impl DecoderPool {
    /// Runs `job` on an idle decoder thread, or on a new one.
    fn run(job: DecodeJob) -> std::io::Result<()> {
        let idle = IDLE_DECODERS.lock().ok().and_then(|mut idle| idle.pop());
        let job = match idle {
            Some(worker) => match worker.send(job) {
                Ok(()) => return Ok(()),
                // Its thread has ended (see below): start another.
                Err(std::sync::mpsc::SendError(job)) => job,
            },
            None => job,
        };
        let (worker, jobs) = std::sync::mpsc::channel::<DecodeJob>();
        let me = worker.clone();
        worker
            .send(job)
            .map_err(|_| std::io::Error::other("a new decoder thread's channel is closed"))?;
        std::thread::Builder::new()
            .name("parquet-decode".into())
            .spawn(move || {
                for job in jobs {
                    let report = job();
                    // Idle again before the result goes out, so that a reader that goes on
                    // to decode its next table at once finds this thread instead of starting
                    // another.
                    let kept = IDLE_DECODERS.lock().is_ok_and(|mut idle| {
                        let keep = idle.len() < MAX_IDLE_DECODERS;
                        if keep {
                            idle.push(me.clone());
                        }
                        keep
                    });
                    report();
                    if !kept {
                        break;
                    }
                }
            })?;
        Ok(())
    }
}

/// How long decoding a table of `bytes` may take: far more than a loaded machine needs for a
/// real table (5 s, plus a throughput of 4 MiB/s), far less than forever.
fn decode_deadline(bytes: u64) -> Duration {
    Duration::from_secs(5) + Duration::from_secs_f64(bytes as f64 / f64::from(4u32 << 20))
}

fn decode(
    file: Bytes,
    path: &Path,
    columns: Option<&[String]>,
    max_rows: u64,
) -> Result<Vec<RecordBatch>, FormatError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| FormatError::parquet(path, e))?;
    // Before decoding anything: a small file can encode any number of equal or evenly
    // spaced values, and a reader must not allocate in proportion to a count read from disk.
    let rows = builder.metadata().file_metadata().num_rows();
    if !matches!(u64::try_from(rows), Ok(rows) if rows <= max_rows) {
        return Err(FormatError::corrupt(
            path,
            format!("its footer claims {rows} rows; this table holds at most {max_rows}"),
        ));
    }
    let builder = match columns {
        Some(cols) => {
            let mask =
                ProjectionMask::columns(builder.parquet_schema(), cols.iter().map(String::as_str));
            builder.with_projection(mask)
        }
        None => builder,
    };
    let reader = builder
        .with_batch_size(READ_BATCH)
        .build()
        .map_err(|e| FormatError::parquet(path, e))?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| FormatError::arrow(path, e))
}

/// Reads a table that must hold exactly one row.
pub(crate) fn read_one_row(
    storage: &dyn RunStorage,
    path: &Path,
) -> Result<RecordBatch, FormatError> {
    let mut rows: Vec<RecordBatch> = read_batches(storage, path, None, 1)?
        .into_iter()
        .filter(|b| b.num_rows() > 0)
        .collect();
    match (rows.len(), rows.first().map(RecordBatch::num_rows)) {
        (1, Some(1)) => Ok(rows.remove(0)),
        _ => Err(FormatError::corrupt(
            path,
            format!(
                "holds {} rows, expected exactly 1",
                rows.iter().map(RecordBatch::num_rows).sum::<usize>()
            ),
        )),
    }
}

/// Typed, checked access to the columns of one batch, by name.
pub(crate) struct Cols<'a> {
    pub batch: &'a RecordBatch,
    pub path: &'a Path,
}

impl<'a> Cols<'a> {
    pub(crate) fn new(batch: &'a RecordBatch, path: &'a Path) -> Self {
        Cols { batch, path }
    }

    fn get<A: Array + 'static>(&self, name: &str, expected: &str) -> Result<&'a A, FormatError> {
        let col = self
            .batch
            .column_by_name(name)
            .ok_or_else(|| FormatError::corrupt(self.path, format!("no column `{name}`")))?;
        col.as_any().downcast_ref::<A>().ok_or_else(|| {
            FormatError::corrupt(
                self.path,
                format!(
                    "column `{name}` has type {}, expected {expected}",
                    col.data_type()
                ),
            )
        })
    }

    /// A column that the format declares non-null; nulls in it mean the file is damaged.
    pub(crate) fn required<A: Array + 'static>(
        &self,
        name: &str,
        expected: &str,
    ) -> Result<&'a A, FormatError> {
        let a = self.get::<A>(name, expected)?;
        if a.null_count() != 0 {
            return Err(FormatError::corrupt(
                self.path,
                format!(
                    "column `{name}` has {} NULLs; it must have none",
                    a.null_count()
                ),
            ));
        }
        Ok(a)
    }

    /// Values of a non-null u64 column.
    pub(crate) fn u64s(&self, name: &str) -> Result<&'a [u64], FormatError> {
        Ok(self.required::<UInt64Array>(name, "UInt64")?.values())
    }

    pub(crate) fn u32s(&self, name: &str) -> Result<&'a [u32], FormatError> {
        Ok(self.required::<UInt32Array>(name, "UInt32")?.values())
    }

    pub(crate) fn bools(&self, name: &str) -> Result<&'a BooleanArray, FormatError> {
        self.required::<BooleanArray>(name, "Boolean")
    }

    pub(crate) fn strs(&self, name: &str) -> Result<&'a StringArray, FormatError> {
        self.required::<StringArray>(name, "Utf8")
    }

    pub(crate) fn opt_u64s(&self, name: &str) -> Result<&'a UInt64Array, FormatError> {
        self.get::<UInt64Array>(name, "UInt64")
    }

    pub(crate) fn binaries(&self, name: &str) -> Result<&'a BinaryArray, FormatError> {
        self.required::<BinaryArray>(name, "Binary")
    }

    pub(crate) fn opt_binaries(&self, name: &str) -> Result<&'a BinaryArray, FormatError> {
        self.get::<BinaryArray>(name, "Binary")
    }

    /// A `hash` column: FixedSizeBinary of exactly [`HASH_BYTES`], NULL-free unless `nullable`.
    pub(crate) fn hashes(
        &self,
        name: &str,
        nullable: bool,
    ) -> Result<&'a FixedSizeBinaryArray, FormatError> {
        const TYPE: &str = "FixedSizeBinary(16)";
        let h = if nullable {
            self.get::<FixedSizeBinaryArray>(name, TYPE)?
        } else {
            self.required::<FixedSizeBinaryArray>(name, TYPE)?
        };
        if h.value_length() != HASH_BYTES {
            return Err(FormatError::corrupt(
                self.path,
                format!(
                    "column `{name}` is {} bytes wide, expected {HASH_BYTES}",
                    h.value_length()
                ),
            ));
        }
        Ok(h)
    }

    /// Checks that the `column` (`checkpoint` or `interval`) holds `expected` in every row.
    pub(crate) fn check_number(&self, column: &str, expected: u64) -> Result<(), FormatError> {
        if let Some(bad) = self.u64s(column)?.iter().find(|&&v| v != expected) {
            return Err(FormatError::corrupt(
                self.path,
                format!("column `{column}` holds {bad}, expected {expected} (misplaced file?)"),
            ));
        }
        Ok(())
    }
}

/// Value `i` of a `hash` column checked by [`Cols::hashes`] (big-endian).
pub(crate) fn hash_at(h: &FixedSizeBinaryArray, i: usize) -> u128 {
    let mut b = [0u8; HASH_BYTES as usize];
    b.copy_from_slice(h.value(i));
    u128::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LocalStorage;

    /// The file fuzzing found (`fuzz/fuzz_targets/access_table.rs`): its page header makes the
    /// parquet crate's Thrift `skip` loop over billions of list elements. How far that loop
    /// gets before the deadline depends on the machine (a fast one reaches the end of the
    /// input and parquet reports it), so either error is right; what must hold is that the
    /// read comes back, within the deadline, as an error naming the file.
    #[test]
    fn a_file_that_makes_the_decoder_loop_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("interval-000000.parquet");
        std::fs::write(
            &path,
            include_bytes!("../../testdata/thrift-skip-loop.parquet"),
        )
        .unwrap();
        let began = std::time::Instant::now();
        let e = read_batches(&LocalStorage::new(tmp.path()), &path, None, 1 << 20).unwrap_err();
        let message = e.to_string();
        assert!(message.contains("interval-000000.parquet"), "{message}");
        assert!(
            message.contains("did not finish") || message.contains("Parquet"),
            "{message}"
        );
        assert!(
            began.elapsed() < decode_deadline(7164) + Duration::from_secs(5),
            "took {:?}",
            began.elapsed()
        );
    }

    /// The deadline itself, with a decoder that never finishes (independent of how fast the
    /// machine is): the reader gives up in time and names the file the decoder was on.
    #[test]
    fn a_decoder_that_does_not_finish_is_an_error() {
        let (_keep_waiting, never) = std::sync::mpsc::channel::<()>();
        let began = std::time::Instant::now();
        let e = guarded_within(
            Path::new("run/first.parquet"),
            Duration::from_millis(200),
            move |current: &Current| {
                current.set(Path::new("run/second.parquet"));
                let _ = never.recv();
                Ok(())
            },
        )
        .unwrap_err();
        assert_gave_up_in_time(&e, "second.parquet", began);
    }

    /// Decoders run on kept threads, and one that never finishes does not hold up the next:
    /// the next read finds no idle thread and starts one.
    #[test]
    fn decoder_threads_are_reused_and_a_stuck_one_is_left_behind() {
        let ids: std::collections::HashSet<_> = (0..20)
            .map(|_| {
                guarded_within(Path::new("t.parquet"), Duration::from_secs(5), |_| {
                    Ok(std::thread::current().id())
                })
                .unwrap()
            })
            .collect();
        // Other tests decode at the same time, so more than one thread may serve these.
        assert!(ids.len() < 20, "a new thread for every decode");
        let (_keep_waiting, never) = std::sync::mpsc::channel::<()>();
        let stuck = guarded_within(
            Path::new("stuck.parquet"),
            Duration::from_millis(100),
            move |_| {
                let _ = never.recv();
                Ok(std::thread::current().id())
            },
        );
        assert!(stuck.is_err());
        for _ in 0..3 {
            let after = guarded_within(Path::new("t.parquet"), Duration::from_secs(5), |_| {
                Ok(std::thread::current().id())
            });
            assert!(after.is_ok(), "{after:?}");
        }
        // A panic is caught inside the job: its thread is kept and decodes the next table.
        let panicked = guarded_within(
            Path::new("p.parquet"),
            Duration::from_secs(5),
            |_| -> Result<(), FormatError> { panic!("decoder bug") },
        );
        assert!(panicked.is_err());
        let next = guarded_within(Path::new("t.parquet"), Duration::from_secs(5), |_| Ok(7));
        assert_eq!(next.unwrap(), 7);
    }

    /// A decoder that panics is an error naming the file, not an abort.
    #[test]
    fn a_decoder_that_panics_is_an_error() {
        let e = guarded_within(
            Path::new("run/table.parquet"),
            Duration::from_secs(5),
            |_: &Current| -> Result<(), FormatError> { panic!("decoder bug") },
        )
        .unwrap_err();
        let message = e.to_string();
        assert!(
            message.contains("table.parquet") && message.contains("panicked"),
            "{message}"
        );
    }

    /// A group of reads decodes on its own thread, inline, and takes as long as it needs
    /// outside its decodes (reading storage is not decoding).
    #[test]
    fn a_group_of_reads_decodes_on_its_thread_without_a_deadline_between_decodes() {
        let pending = spawn_reads(Path::new("run"), || {
            let group = std::thread::current().id();
            std::thread::sleep(GROUP_POLL * 4);
            let decoder = guarded_within(Path::new("t.parquet"), Duration::from_secs(5), |_| {
                Ok(std::thread::current().id())
            })?;
            Ok::<_, FormatError>((group, decoder))
        })
        .unwrap();
        let (group, decoder) = pending.wait().unwrap();
        assert_eq!(
            group, decoder,
            "a decode in a group was handed to another thread"
        );
        assert_ne!(group, std::thread::current().id());
    }

    /// A decode in a group that misses its deadline is an error naming the file it was on, in
    /// time; the group's thread is left behind.
    #[test]
    fn a_decode_in_a_group_that_does_not_finish_is_an_error() {
        let (_keep_waiting, never) = std::sync::mpsc::channel::<()>();
        let began = std::time::Instant::now();
        let pending = spawn_reads(Path::new("run"), move || {
            guarded_within(
                Path::new("run/first.parquet"),
                Duration::from_secs(5),
                |_| Ok(()),
            )?;
            guarded_within(
                Path::new("run/second.parquet"),
                Duration::from_millis(200),
                move |current: &Current| {
                    current.set(Path::new("run/third.parquet"));
                    let _ = never.recv();
                    Ok(())
                },
            )
        })
        .unwrap();
        assert_gave_up_in_time(&pending.wait().unwrap_err(), "third.parquet", began);
    }

    /// `e` says the decoder did not finish `file`, and the reader gave up well within 5 s.
    fn assert_gave_up_in_time(e: &FormatError, file: &str, began: std::time::Instant) {
        let message = e.to_string();
        assert!(
            message.contains(file) && message.contains("did not finish"),
            "{message}"
        );
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "took {:?}",
            began.elapsed()
        );
    }

    /// A panic in a group's decode is an error naming the file; a panic elsewhere in the group
    /// is the caller's bug and goes on in the caller.
    #[test]
    fn a_panic_in_a_group_is_an_error_only_in_a_decode() {
        let in_decode = spawn_reads(Path::new("run"), || {
            guarded_within(
                Path::new("run/table.parquet"),
                Duration::from_secs(5),
                |_: &Current| -> Result<(), FormatError> { panic!("decoder bug") },
            )
        })
        .unwrap();
        let message = in_decode.wait().unwrap_err().to_string();
        assert!(
            message.contains("table.parquet") && message.contains("panicked"),
            "{message}"
        );
        let elsewhere = spawn_reads(Path::new("run"), || -> Result<(), FormatError> {
            panic!("caller bug")
        })
        .unwrap();
        let resumed = std::panic::catch_unwind(AssertUnwindSafe(|| elsewhere.wait()));
        assert!(resumed.is_err(), "the caller's panic was swallowed");
    }
}
