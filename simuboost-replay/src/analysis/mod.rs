//! The replayer's side of the simulator's analyses (issue 11): which ones to ask for
//! (`--analysis`, `--trace-limit`, `--cache`), symbolising block addresses with the guest ELF,
//! and writing the results as Parquet into an output directory (never into the run).
//!
//! The analyses themselves run inside `simuboost-sim` (GPL-2.0-only, it links unicorn); they
//! send plain records over `simuboost-sim-proto`, and only this side links parquet/arrow.
//! docs/ANALYSES.md documents the files, their columns and a DuckDB query for each.

mod output;
mod session;
mod symbols;

pub use output::{
    table_path, AnalysisOutput, IntervalSummary, OutputError, TraceWriter, CUSTOM, TABLES,
};
pub use session::{summary_table, IntervalAnalysis};
pub use symbols::{Symbols, SymbolsError};

use std::path::Path;

use simuboost_format::Run;
use simuboost_sim_proto::{AnalysisRequest, CacheConfig, CacheLevel, TraceRequest};

/// Rows per trace batch the simulator sends (its buffer): 64 Ki rows, ~2 MiB.
pub const TRACE_BATCH_ROWS: u32 = 64 * 1024;

/// The analyses of a replay: which to run and where their results go (`--analysis`,
/// `--out`). Shared by the modes of one command.
pub struct Analyses {
    /// What to run.
    pub options: AnalysisOptions,
    /// Where the results go, with the guest's symbols.
    pub output: AnalysisOutput,
}

impl Analyses {
    /// Prepares `out` for the analyses of intervals of `run`, with the symbols of the guest
    /// the run recorded (`guest.elf`). Without usable symbols the analyses still run, and
    /// blocks are written unsymbolised with a warning (printed here and kept in each summary).
    pub fn prepare(
        run: &Run,
        out: &Path,
        options: AnalysisOptions,
    ) -> Result<Analyses, OutputError> {
        let symbols = match run.guest_image() {
            Ok(Some(image)) => Symbols::from_elf(&image).map_err(|e| {
                format!(
                    "{}: {e}",
                    simuboost_format::layout::guest_image(run.dir()).display()
                )
            }),
            Ok(None) => Err(format!(
                "{} has no guest.elf (it was recorded before runs kept their guest)",
                run.dir().display()
            )),
            Err(e) => Err(e.to_string()),
        };
        let output = AnalysisOutput::create(out, run.dir(), symbols)?;
        if let Some(warning) = output.warning() {
            eprintln!("simuboost-replay: warning: {warning}");
        }
        Ok(Analyses { options, output })
    }
}

/// Errors in the analysis options.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    /// A name that cannot be an analysis.
    #[error(
        "{0:?} is not an analysis name: expected blocks, pages, trace, cache, all, or the name \
         of an analysis added to the simulator (letters, digits, '_' and '-')"
    )]
    UnknownAnalysis(String),
    /// A cache level that cannot be parsed or modelled.
    #[error("bad cache level {spec:?}: {why} (expected SIZE:WAYS:LINE, e.g. 32K:8:64)")]
    BadCache {
        /// As given.
        spec: String,
        /// What is wrong.
        why: String,
    },
    /// More than two levels.
    #[error("the cache model has one or two levels, {0} were given")]
    CacheDepth(usize),
}

/// Which analyses to run and how.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnalysisOptions {
    /// `blocks`.
    pub blocks: bool,
    /// `pages`.
    pub pages: bool,
    /// `trace`.
    pub trace: bool,
    /// `cache`.
    pub cache: bool,
    /// `--trace-limit` (0: none).
    pub trace_limit: u64,
    /// `--cache` levels, L1 first (default: 32 KiB, 8 ways, 64-byte lines).
    pub cache_levels: Vec<CacheLevel>,
    /// Analyses added to the simulator, by name (docs/ANALYSES.md, "Write your own").
    pub custom: Vec<String>,
}

/// The default L1: 32 KiB, 8-way, 64-byte lines (a typical x86 L1D).
pub const DEFAULT_L1: CacheLevel = CacheLevel {
    size: 32 * 1024,
    ways: 8,
    line: 64,
};

impl AnalysisOptions {
    /// Parses `--analysis LIST` (`blocks,pages,trace,cache` in any combination, or `all`;
    /// any other name asks the simulator for an analysis added to it by that name — whether
    /// it has one is known when it starts).
    pub fn parse_list(list: &str) -> Result<AnalysisOptions, OptionsError> {
        let mut o = AnalysisOptions {
            cache_levels: vec![DEFAULT_L1],
            ..AnalysisOptions::default()
        };
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "blocks" => o.blocks = true,
                "pages" => o.pages = true,
                "trace" => o.trace = true,
                "cache" => o.cache = true,
                "all" => {
                    o.blocks = true;
                    o.pages = true;
                    o.trace = true;
                    o.cache = true;
                }
                other if is_custom_name(other) => {
                    if !o.custom.iter().any(|c| c == other) {
                        o.custom.push(other.to_string());
                    }
                }
                other => return Err(OptionsError::UnknownAnalysis(other.to_string())),
            }
        }
        Ok(o)
    }

    /// Parses `--cache L1[,L2]`, each level `SIZE:WAYS:LINE` (`32K:8:64`, `1M:16:64`).
    pub fn parse_cache(spec: &str) -> Result<Vec<CacheLevel>, OptionsError> {
        let levels = spec
            .split(',')
            .map(|level| parse_level(level.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        if levels.is_empty() || levels.len() > 2 {
            return Err(OptionsError::CacheDepth(levels.len()));
        }
        Ok(levels)
    }

    /// Whether any analysis is on.
    pub fn any(&self) -> bool {
        self.blocks || self.pages || self.trace || self.cache || !self.custom.is_empty()
    }

    /// The protocol's request.
    pub fn request(&self) -> AnalysisRequest {
        AnalysisRequest {
            blocks: self.blocks,
            pages: self.pages,
            trace: self.trace.then_some(TraceRequest {
                limit: self.trace_limit,
                batch_rows: TRACE_BATCH_ROWS,
            }),
            cache: self.cache.then(|| CacheConfig {
                levels: self.cache_levels.clone(),
            }),
            custom: self.custom.clone(),
        }
    }
}

/// A name an added analysis can have: it names its output directory too, so letters, digits,
/// `_` and `-`, at most 64, and none of the tables' own names.
pub(crate) fn is_custom_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !TABLES.iter().any(|t| t.name == name)
        && name != "summary"
}

fn parse_level(spec: &str) -> Result<CacheLevel, OptionsError> {
    let bad = |why: &str| OptionsError::BadCache {
        spec: spec.to_string(),
        why: why.to_string(),
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let [size, ways, line] = parts[..] else {
        return Err(bad("three fields are needed"));
    };
    let size = parse_bytes(size).ok_or_else(|| bad("the size is not a number of bytes"))?;
    let ways: u32 = ways.parse().map_err(|_| bad("the ways are not a number"))?;
    let line = parse_bytes(line)
        .and_then(|l| u32::try_from(l).ok())
        .ok_or_else(|| bad("the line size is not a number of bytes"))?;
    let level = CacheLevel { size, ways, line };
    if level.sets().is_none() {
        return Err(bad(
            "the line size must be a power of two and size / (ways * line) a power of two",
        ));
    }
    Ok(level)
}

/// `4096`, `32K`, `8M`, `1G` (binary units).
fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analysis_lists_parse() {
        let o = AnalysisOptions::parse_list("blocks,cache").unwrap();
        assert!(o.blocks && o.cache && !o.pages && !o.trace);
        let all = AnalysisOptions::parse_list("all").unwrap();
        assert!(all.blocks && all.pages && all.trace && all.cache);
        let custom = AnalysisOptions::parse_list("blocks,sizes,sizes").unwrap();
        assert_eq!(custom.custom, vec!["sizes".to_string()]);
        assert_eq!(custom.request().custom, vec!["sizes".to_string()]);
        for bad in ["../x", "a b", "summary"] {
            assert!(matches!(
                AnalysisOptions::parse_list(&format!("blocks,{bad}")),
                Err(OptionsError::UnknownAnalysis(n)) if n == bad
            ));
        }
    }

    #[test]
    fn cache_levels_parse() {
        let l = AnalysisOptions::parse_cache("32K:8:64,1M:16:64").unwrap();
        assert_eq!(
            l,
            vec![
                DEFAULT_L1,
                CacheLevel {
                    size: 1 << 20,
                    ways: 16,
                    line: 64
                }
            ]
        );
        for bad in [
            "32K:8",
            "32K:3:64",
            "32K:8:48",
            "x:8:64",
            "1K:1:64,2K:1:64,4K:1:64",
        ] {
            let e = AnalysisOptions::parse_cache(bad).unwrap_err();
            assert!(!e.to_string().is_empty());
        }
    }
}
