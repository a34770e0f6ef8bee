//! `build`: a kernel-build-like stream of short compile jobs over a large source tree.
//!
//! # What it models
//! The arena (from its first 4 KiB-aligned byte, a whole number of pages, so that the layout
//! does not depend on its alignment) is split into
//! * a file table (16 bytes per file),
//! * a **source tree** (~55 % of the arena): C-like text files generated deterministically at
//!   start, 512 B .. 64 KiB each (log-uniform sizes). Every 16th file is a "header" (at most
//!   16 KiB); header popularity is Zipf(1)-like, so a few headers are included by almost every
//!   job, like `linux/kernel.h`. The tree is only read after generation (a page cache).
//! * a **scratch** area (~28 %) from which each job carves a private bump heap. Heaps are placed
//!   one after the other, wrapping at the end, so memory is reused over time while each job
//!   touches fresh pages, like short-lived compiler processes.
//! * an **object** ring (~15 %) receiving every job's output ("object file"), wrapping.
//!
//! A job ("compile one `.c` file") picks one random source file plus 4..=32 distinct headers by
//! popularity (within an input budget), tokenizes them into its heap (identifier hashes), builds
//! a symbol table (open addressing, sized to the token count), emits code (one symbol reference
//! per token), sorts the symbols, and copies the object (header, code, sorted symbols) into the
//! object ring. The checksum folds a hash of every object.
//!
//! # Units
//! Tree generation is setup (not counted). One **unit = one job** (about 0.5–3 ms; the input of a
//! job is at most 512 KiB, less on small arenas). The workload yields after about a millisecond
//! of estimated work (`Ctl::work`: bytes generated or tokenized, table operations), checked
//! after each generated or tokenized file and every 16384 tokens of symbol-table and code work,
//! and at the end of each job.

use alloc::vec::Vec;

use crate::rng::{log_uniform, mix2, Rng};
use crate::util::{as_bytes, cast_slice_mut, Bytes, Ctl, Flow, Step};
use crate::{Outcome, Platform, RunConfig, WorkloadError};

/// Smallest arena: 8 MiB.
pub const MIN_ARENA: u64 = 8 << 20;

/// Smallest file.
const MIN_FILE: u64 = 512;
/// Largest source file (also bounded by the job budget).
const MAX_FILE: u64 = 64 << 10;
/// Largest header.
const MAX_HEADER: u64 = 16 << 10;
/// Every `HEADER_EVERY`-th file is a header.
const HEADER_EVERY: u64 = 16;
const _: () = assert!(HEADER_EVERY.is_power_of_two());
/// Largest job input.
const MAX_JOB_INPUT: u64 = 512 << 10;
/// Most headers a job includes.
const MAX_INCLUDES: usize = 32;
/// Tokens processed between pacing checks in the symbol-table and code passes.
const TOKENS_PER_YIELD: usize = 16384;
/// Rough costs that pace the yields (see `Ctl::work`), measured on the development host.
const NS_PER_GENERATED_BYTE: u64 = 4;
const NS_PER_TOKENIZED_BYTE: u64 = 2;
const NS_PER_TABLE_OP: u64 = 10;
/// log2 of the identifier vocabulary size.
const VOCAB_BITS: u32 = 12;
/// Object file magic ("SBOBJ\0\0\0").
const OBJ_MAGIC: u64 = 0x004a_424f_4253;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x100_0000_01b3;

/// C keywords and common type names: the most popular "identifiers".
const KEYWORDS: [&[u8]; 16] = [
    b"int",
    b"if",
    b"return",
    b"struct",
    b"static",
    b"void",
    b"unsigned",
    b"const",
    b"char",
    b"else",
    b"for",
    b"NULL",
    b"sizeof",
    b"u32",
    b"break",
    b"while",
];

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

/// Where everything lives, in bytes within the aligned arena.
struct Layout {
    meta: usize,
    tree: usize,
    scratch: usize,
    objects: usize,
    /// Largest job input.
    budget: u64,
    /// Largest source file.
    max_file: u64,
}

impl Layout {
    fn new(len: u64) -> Layout {
        let page = 4096;
        let tree = len * 55 / 100 / page * page;
        let meta = (tree / MIN_FILE + 1) * 16;
        let meta = meta.div_ceil(page) * page;
        let objects = len * 15 / 100 / page * page;
        let scratch = len.saturating_sub(meta + tree + objects) / page * page;
        let budget = MAX_JOB_INPUT
            .min(scratch.saturating_sub(8192) / 32)
            .min(objects / 12)
            / 8
            * 8;
        let max_file = MAX_FILE.min(budget / 2).max(MIN_FILE);
        Layout {
            meta: meta as usize,
            tree: tree as usize,
            scratch: scratch as usize,
            objects: objects as usize,
            budget,
            max_file,
        }
    }
}

/// Whether file `f` is a header (`HEADER_EVERY` is a power of two).
fn is_header(f: u64) -> bool {
    f & (HEADER_EVERY - 1) == 0
}

/// Most tokens a job's input can hold: every token takes a byte and a separator, except perhaps
/// the last one of each file.
fn max_tokens(input: u64, files: u64) -> u64 {
    input / 2 + files + 1
}

/// Symbol-table capacity for `tokens` tokens: a power of two with at least one free slot, so
/// probing always terminates.
fn symtab_cap(tokens: u64) -> u64 {
    (tokens + 1).next_power_of_two()
}

/// Object size in words for `tokens` tokens and `syms` symbols: header, code, symbols.
fn object_words(tokens: u64, syms: u64) -> u64 {
    4 + tokens.div_ceil(2) + 2 * syms
}

/// Upper bound of a job's heap for `input` bytes in `files` files.
fn heap_bound(input: u64, files: u64) -> u64 {
    let t = max_tokens(input, files);
    8 * t + 64 + 16 * symtab_cap(t) + 8 * object_words(t, t) + 64
}

fn body(cfg: &RunConfig, ctl: &mut Ctl, arena: &mut [u8]) -> Flow {
    let arena = crate::util::usable(arena);
    let arena_len = arena.len() as u64;
    let lay = Layout::new(arena_len);
    if lay.budget < 2 * MIN_FILE
        || heap_bound(lay.budget, MAX_INCLUDES as u64 + 1) > lay.scratch as u64
    {
        return Err(WorkloadError::ArenaTooSmall {
            needed: MIN_ARENA,
            available: arena_len,
        }
        .into());
    }
    let (meta, rest) = arena.split_at_mut(lay.meta);
    let (tree, rest) = rest.split_at_mut(lay.tree);
    let (scratch, rest) = rest.split_at_mut(lay.scratch);
    let objects: &mut [u64] = cast_slice_mut(&mut rest[..lay.objects]);
    let table: &mut [[u64; 2]] = cast_slice_mut(meta);

    let vocab = Vocab::new(cfg.seed);
    let nfiles = generate_tree(ctl, cfg.seed, &lay, &vocab, tree, table)?;
    if nfiles < 2 {
        return Err(WorkloadError::ArenaTooSmall {
            needed: MIN_ARENA,
            available: arena_len,
        }
        .into());
    }
    let table = &table[..nfiles];
    let nheaders = nfiles.div_ceil(HEADER_EVERY as usize);
    ctl.say(format_args!(
        "build: {} files ({} headers) in {}, scratch {}, objects {}, job input <= {}\n",
        nfiles,
        nheaders,
        Bytes(lay.tree as u64),
        Bytes(lay.scratch as u64),
        Bytes(lay.objects as u64),
        Bytes(lay.budget)
    ));
    ctl.yield_now()?;

    let mut state = JobState {
        heap_pos: 0,
        obj_pos: 0,
    };
    let mut job = 0u64;
    loop {
        let files = pick_files(cfg.seed, job, table, &lay);
        run_job(ctl, job, &files, tree, table, scratch, objects, &mut state)?;
        ctl.yield_now()?;
        ctl.unit_done()?;
        job += 1;
    }
}

/// Identifier spellings: 16 bytes each, byte 15 holds the length.
struct Vocab {
    words: Vec<[u8; 16]>,
}

impl Vocab {
    fn new(seed: u64) -> Vocab {
        const SYLLABLES: [&[u8]; 16] = [
            b"dev", b"get", b"set", b"buf", b"irq", b"page", b"lock", b"init", b"free", b"map",
            b"reg", b"ctx", b"list", b"node", b"sk", b"dma",
        ];
        let mut words = Vec::with_capacity(1 << VOCAB_BITS);
        for i in 0..1u64 << VOCAB_BITS {
            let mut w = [0u8; 16];
            let len = if let Some(k) = KEYWORDS.get(i as usize) {
                w[..k.len()].copy_from_slice(k);
                k.len()
            } else {
                // snake_case of 2..=3 syllables plus a short random suffix, at most 15 bytes.
                let h = mix2(seed ^ 0x0076_6f63_6162, i);
                let parts = 2 + (h & 1) as usize;
                let mut len = 0;
                for j in 0..parts {
                    let s = SYLLABLES[((h >> (4 + 4 * j)) & 15) as usize];
                    if j > 0 {
                        w[len] = b'_';
                        len += 1;
                    }
                    w[len..len + s.len()].copy_from_slice(s);
                    len += s.len();
                }
                let mut v = h >> 20;
                let suffix = (1 + (v & 1) as usize).min(15 - len);
                v >>= 1;
                for _ in 0..suffix {
                    w[len] = b'a' + (v % 26) as u8;
                    v /= 26;
                    len += 1;
                }
                len
            };
            w[15] = len as u8;
            words.push(w);
        }
        Vocab { words }
    }
}

/// A bounded writer into a file being generated.
struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    #[inline]
    fn put(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.pos);
        self.buf[self.pos..self.pos + n].copy_from_slice(&s[..n]);
        self.pos += n;
    }

    fn full(&self) -> bool {
        self.pos >= self.buf.len()
    }
}

/// Fills the tree with files and the table with their `[offset, length]`; returns their number.
fn generate_tree(
    ctl: &mut Ctl,
    seed: u64,
    lay: &Layout,
    vocab: &Vocab,
    tree: &mut [u8],
    table: &mut [[u64; 2]],
) -> Result<usize, crate::util::Halt> {
    let mut rng = Rng::derive(seed, 0x7472_6565);
    let mut off = 0u64;
    let mut n = 0usize;
    while n < table.len() {
        let max = if is_header(n as u64) {
            MAX_HEADER.min(lay.max_file)
        } else {
            lay.max_file
        };
        // Log-uniform size in [MIN_FILE, max].
        let steps = 64 - (max / MIN_FILE).leading_zeros() as u64; // 1 + log2(max / MIN_FILE)
        let base = MIN_FILE << rng.below(steps);
        let size = (base + rng.below(base)).min(max);
        if off + size > tree.len() as u64 {
            break;
        }
        let file = &mut tree[off as usize..(off + size) as usize];
        generate_file(&mut rng, vocab, file);
        table[n] = [off, size];
        n += 1;
        off = (off + size).div_ceil(8) * 8;
        ctl.work(size * NS_PER_GENERATED_BYTE)?;
    }
    Ok(n)
}

/// Writes C-like lines of tokens until the file is full.
fn generate_file(rng: &mut Rng, vocab: &Vocab, file: &mut [u8]) {
    const SEPS: [&[u8]; 8] = [b" ", b"(", b", ", b" = ", b"->", b") ", b" + ", b"["];
    const ENDS: [&[u8]; 4] = [b";\n", b";\n", b" {\n", b"\n}\n"];
    let mut w = Writer { buf: file, pos: 0 };
    while !w.full() {
        let r = rng.next_u64();
        let tabs = (r & 3) as usize;
        w.put(&b"\t\t\t"[..tabs]);
        let tokens = 2 + ((r >> 2) % 9) as usize;
        for t in 0..tokens {
            let r = rng.next_u64();
            if r & 15 == 0 {
                // A hex literal: rarely repeats, so symbol tables see some unique tokens.
                let mut lit = *b"0x00000000";
                let mut v = r >> 8;
                for d in lit[2..].iter_mut() {
                    *d = b"0123456789abcdef"[(v & 15) as usize];
                    v >>= 4;
                }
                w.put(&lit);
            } else {
                let word = &vocab.words[log_uniform(r >> 4, VOCAB_BITS) as usize];
                w.put(&word[..word[15] as usize]);
            }
            if t + 1 < tokens {
                w.put(SEPS[((r >> 60) & 7) as usize]);
            }
        }
        w.put(ENDS[(r >> 40) as usize & 3]);
    }
}

/// A job's input files (indexes into the table): headers first, the source file last.
struct JobFiles {
    files: [u32; MAX_INCLUDES + 1],
    count: usize,
    bytes: u64,
}

/// Picks the source file and the headers of job `job` within the input budget.
fn pick_files(seed: u64, job: u64, table: &[[u64; 2]], lay: &Layout) -> JobFiles {
    let mut rng = Rng::derive(seed, mix2(0x006a_6f62, job));
    let nfiles = table.len() as u64;
    let nheaders = nfiles.div_ceil(HEADER_EVERY);
    // A random non-header file (file 0 is a header, so nfiles >= 2 guarantees one exists).
    let mut src = rng.below(nfiles);
    if is_header(src) {
        src = if src + 1 < nfiles { src + 1 } else { src - 1 };
    }
    let mut jf = JobFiles {
        files: [0; MAX_INCLUDES + 1],
        count: 0,
        bytes: table[src as usize][1],
    };
    let want = 4 + rng.below(MAX_INCLUDES as u64 - 3) as usize;
    let bits = 64 - nheaders.leading_zeros();
    for _ in 0..want {
        let h = log_uniform(rng.next_u64(), bits) % nheaders;
        let f = (h * HEADER_EVERY) as u32;
        if jf.files[..jf.count].contains(&f) {
            continue; // include guard: already included
        }
        let size = table[f as usize][1];
        if jf.bytes + size > lay.budget {
            continue;
        }
        jf.files[jf.count] = f;
        jf.count += 1;
        jf.bytes += size;
    }
    jf.files[jf.count] = src as u32;
    jf.count += 1;
    jf
}

/// Where the next heap and the next object go.
struct JobState {
    heap_pos: usize,
    obj_pos: usize,
}

#[allow(clippy::too_many_arguments)]
fn run_job(
    ctl: &mut Ctl,
    job: u64,
    jf: &JobFiles,
    tree: &[u8],
    table: &[[u64; 2]],
    scratch: &mut [u8],
    objects: &mut [u64],
    st: &mut JobState,
) -> Step {
    // The private heap: a bump region of the scratch area, wrapping when the bound does not fit.
    let bound = heap_bound(jf.bytes, jf.count as u64) as usize;
    if st.heap_pos + bound > scratch.len() {
        st.heap_pos = 0;
    }
    let heap = &mut scratch[st.heap_pos..st.heap_pos + bound];

    // Tokenize ("preprocess") every input into the token array at the heap's start.
    let tmax = max_tokens(jf.bytes, jf.count as u64) as usize;
    let (tok_bytes, rest) = heap.split_at_mut(8 * tmax);
    let tokens: &mut [u64] = cast_slice_mut(tok_bytes);
    let mut ntok = 0usize;
    for &f in &jf.files[..jf.count] {
        let [off, len] = table[f as usize];
        ntok = tokenize(&tree[off as usize..(off + len) as usize], tokens, ntok);
        ctl.work(len * NS_PER_TOKENIZED_BYTE)?;
    }
    let tokens = &tokens[..ntok];

    // The symbol table follows (the unused tail of the token array stays untouched).
    let cap = symtab_cap(ntok as u64) as usize;
    let (sym_bytes, rest) = rest.split_at_mut(16 * cap);
    let symtab: &mut [[u64; 2]] = cast_slice_mut(sym_bytes);
    // Clear it (like calloc) in pieces: first touches of fresh memory can be slow.
    for piece in symtab.chunks_mut(TOKENS_PER_YIELD) {
        piece.fill([0, 0]);
        ctl.work(piece.len() as u64 * NS_PER_TABLE_OP)?;
    }
    let shift = 64 - cap.trailing_zeros();
    let slot_of = |h: u64| -> usize {
        if shift >= 64 {
            0
        } else {
            (h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> shift) as usize
        }
    };
    for (i, chunk) in tokens.chunks(TOKENS_PER_YIELD).enumerate() {
        for (j, &t) in chunk.iter().enumerate() {
            let h = t | 1;
            let mut s = slot_of(h);
            loop {
                let e = &mut symtab[s];
                if e[0] == h {
                    e[1] += 1 << 32;
                    break;
                }
                if e[0] == 0 {
                    *e = [h, (1 << 32) | (i * TOKENS_PER_YIELD + j) as u64];
                    break;
                }
                s = (s + 1) & (cap - 1);
            }
        }
        ctl.work(chunk.len() as u64 * NS_PER_TABLE_OP)?;
    }

    // Code generation: one 32-bit reference per token (symbol slot and use count).
    let words = object_words(ntok as u64, ntok as u64) as usize;
    let obj: &mut [u64] = cast_slice_mut(&mut rest[..8 * words]);
    for (i, pair) in tokens.chunks(2).enumerate() {
        let mut w = 0u64;
        for (k, &t) in pair.iter().enumerate() {
            let h = t | 1;
            let mut s = slot_of(h);
            while symtab[s][0] != h {
                s = (s + 1) & (cap - 1);
            }
            let reference = (s as u64) ^ ((symtab[s][1] >> 32) << 20);
            w |= (reference & 0xffff_ffff) << (32 * k);
        }
        obj[4 + i] = w;
        if (i + 1) % (TOKENS_PER_YIELD / 2) == 0 {
            ctl.work(TOKENS_PER_YIELD as u64 * NS_PER_TABLE_OP)?;
        }
    }
    let code_words = ntok.div_ceil(2);

    // The symbol section: the table's entries, compacted in place and sorted by hash.
    let mut nsym = 0;
    for i in 0..cap {
        if symtab[i][0] != 0 {
            symtab[nsym] = symtab[i];
            nsym += 1;
        }
    }
    let syms = &mut symtab[..nsym];
    syms.sort_unstable_by_key(|e| e[0]);
    let sym_at = 4 + code_words;
    for (k, e) in syms.iter().enumerate() {
        obj[sym_at + 2 * k] = e[0];
        obj[sym_at + 2 * k + 1] = e[1];
    }
    let total = sym_at + 2 * nsym;
    obj[..4].copy_from_slice(&[OBJ_MAGIC, job, ntok as u64, nsym as u64]);
    let obj = &obj[..total];

    // "Write" the object file: copy it into the object ring, hashing it on the way.
    if st.obj_pos + total > objects.len() {
        st.obj_pos = 0;
    }
    let dst = &mut objects[st.obj_pos..st.obj_pos + total];
    let mut h = FNV_OFFSET;
    for (d, &w) in dst.iter_mut().zip(obj) {
        *d = w;
        h = (h ^ w).wrapping_mul(FNV_PRIME);
    }
    st.obj_pos = (st.obj_pos + total).div_ceil(8) * 8;
    ctl.sum.fold(h);
    ctl.sum.fold(as_bytes(obj).len() as u64);

    // Free the heap: the next job's heap starts after the memory this one used.
    let used = 8 * tmax + 16 * cap + 8 * total;
    st.heap_pos += used.div_ceil(4096) * 4096;
    Ok(())
}

/// Identifier characters.
const IDENT: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || b == b'_';
        c += 1;
    }
    t
};

/// Appends the FNV-1a hashes of `src`'s identifiers to `out` from index `n`; returns the new
/// count (tokens beyond `out`'s capacity, impossible by construction, are dropped).
fn tokenize(src: &[u8], out: &mut [u64], mut n: usize) -> usize {
    let mut h = FNV_OFFSET;
    let mut in_tok = false;
    for &b in src {
        if IDENT[b as usize] {
            h = (h ^ b as u64).wrapping_mul(FNV_PRIME);
            in_tok = true;
        } else if in_tok {
            if n < out.len() {
                out[n] = h;
                n += 1;
            }
            h = FNV_OFFSET;
            in_tok = false;
        }
    }
    if in_tok && n < out.len() {
        out[n] = h;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::util::testing::{Arena, TestPlatform};
    use simuboost_abi::WorkloadId;

    fn cfg(seed: u64, units: u64) -> RunConfig {
        RunConfig {
            workload: WorkloadId::Build,
            seed,
            work_units: units,
            disk_blocks: 0,
            disk_data_bytes: 0,
        }
    }

    fn run_once(seed: u64, units: u64, arena_bytes: usize) -> (Outcome, TestPlatform) {
        let mut p = TestPlatform::new(0);
        let mut arena = Arena::new(arena_bytes, 0x5a);
        let out = crate::run(&cfg(seed, units), &mut p, arena.bytes()).expect("build runs");
        (out, p)
    }

    #[test]
    fn deterministic_and_yields() {
        let (a, p) = run_once(1, 20, 12 << 20);
        assert_eq!(a.units_done, 20);
        let (b, _) = run_once(1, 20, 12 << 20);
        assert_eq!(a, b);
        let (c, _) = run_once(2, 20, 12 << 20);
        assert_ne!(a.checksum, c.checksum);
        // Tree generation yields once per file, jobs at least once each.
        assert!(p.yields >= 20);
    }

    #[test]
    fn minimum_arena_works() {
        let (a, _) = run_once(1, 3, MIN_ARENA as usize);
        assert_eq!(a.units_done, 3);
    }

    #[test]
    fn stops_when_asked() {
        let mut p = TestPlatform::new(0);
        let mut arena = Arena::new(MIN_ARENA as usize, 0);
        p.stop_at_yield = Some(1500);
        let out = crate::run(&cfg(1, 0), &mut p, arena.bytes()).expect("build runs");
        assert_eq!(p.yields, 1500);
        assert!(out.units_done > 0);
    }

    #[test]
    fn tokenizer() {
        let mut out = [0u64; 8];
        let n = tokenize(b"int x = foo(bar_1, 0x1f);\n", &mut out, 0);
        assert_eq!(n, 5);
        let n2 = tokenize(b"foo", &mut out, n);
        assert_eq!(n2, 6);
        assert_eq!(out[2], out[5]);
    }
}
