//! The Parquet tables of a run, one module per table: its columns, declared once (name, type,
//! nullability, meaning), how its records become batches and back, and the checks a reader
//! makes on every file. `columns` holds what they share.
//!
//! Every table carries its `checkpoint` or `interval` number as a real column (not only in the
//! file name) so that a DuckDB glob over a directory can group by it. Readers check that column
//! against the number they asked for, so a misnamed or misplaced file is reported, not used.
//!
//! The column tables of docs/FORMAT.md are generated from the declarations ([`doc_table`]); a
//! test keeps the document equal to them.

use std::path::Path;

use crate::FormatError;

pub(crate) mod access;
pub(crate) mod checkpoint;
mod columns;
pub(crate) mod eventpages;
pub(crate) mod events;
pub(crate) mod intervals;
pub(crate) mod pagemap;
pub(crate) mod pruned;
pub(crate) mod state;

pub use access::WorkingSet;
pub use checkpoint::PageRow;
#[cfg(test)]
use columns::Table;
pub use columns::{spawn_reads, PendingReads};

/// Every table, in the order docs/FORMAT.md describes them.
#[cfg(test)]
const TABLES: [&Table; 7] = [
    &checkpoint::TABLE,
    &pagemap::TABLE,
    &state::TABLE,
    &events::TABLE,
    &eventpages::TABLE,
    &intervals::TABLE,
    &access::TABLE,
];

/// Limits a page table is checked against.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PageLimits {
    /// gfns must be below this (`mem_bytes / PAGE_SIZE`).
    pub mem_pages: u64,
    /// slots must be below this (the manifest's `page_slots`).
    pub page_slots: u64,
}

impl PageLimits {
    fn check(&self, path: &Path, gfn: u64, slot: Option<u64>) -> Result<(), FormatError> {
        if gfn >= self.mem_pages {
            return Err(FormatError::corrupt(
                path,
                format!(
                    "gfn {gfn:#x} is beyond guest memory ({} pages)",
                    self.mem_pages
                ),
            ));
        }
        if let Some(slot) = slot.filter(|&s| s >= self.page_slots) {
            return Err(FormatError::corrupt(
                path,
                format!(
                    "gfn {gfn:#x} refers to slot {slot}, past the {} slots of pages.bin the manifest commits",
                    self.page_slots
                ),
            ));
        }
        Ok(())
    }
}

/// The Markdown column table of `table` as docs/FORMAT.md shows it. Consecutive columns with
/// the same type and meaning share a row (`` `start_exit`, `end_exit` ``).
#[cfg(test)]
fn doc_table(table: &Table) -> String {
    let mut out = String::from("| column | type | meaning |\n|---|---|---|\n");
    let cols = table.columns;
    let mut i = 0;
    while i < cols.len() {
        let c = &cols[i];
        let same = |d: &columns::Column| (d.ty, d.nullable, d.doc) == (c.ty, c.nullable, c.doc);
        let n = cols[i..].iter().take_while(|d| same(d)).count();
        let names: Vec<String> = cols[i..i + n]
            .iter()
            .map(|d| format!("`{}`", d.name))
            .collect();
        let nullable = if c.nullable { ", nullable" } else { "" };
        out += &format!(
            "| {} | {}{nullable} | {} |\n",
            names.join(", "),
            c.ty.doc_name(),
            c.doc
        );
        i += n;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const LIMITS: PageLimits = PageLimits {
        mem_pages: 64,
        page_slots: 100,
    };

    const FORMAT_MD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/FORMAT.md");

    /// Where the column table that follows the `## <dir>/` heading of docs/FORMAT.md is.
    fn documented_table(doc: &str, dir: &str) -> Option<std::ops::Range<usize>> {
        let heading = format!("\n## {dir}/");
        let section = doc.find(&heading)? + heading.len();
        let end = doc[section..]
            .find("\n## ")
            .map_or(doc.len(), |e| section + e);
        let start = section + doc[section..end].find("| column | type | meaning |")?;
        let len: usize = doc[start..end]
            .split_inclusive('\n')
            .take_while(|l| l.starts_with('|'))
            .map(str::len)
            .sum();
        Some(start..start + len)
    }

    /// docs/FORMAT.md describes exactly the declared columns: names, order, types,
    /// nullability and meanings. After changing a declaration, run this test with
    /// `SIMUBOOST_BLESS=1` to rewrite the document's column tables.
    #[test]
    fn format_md_matches_the_declared_columns() {
        let mut doc = std::fs::read_to_string(FORMAT_MD).unwrap();
        let bless = std::env::var_os("SIMUBOOST_BLESS").is_some();
        for table in TABLES {
            let want = doc_table(table);
            let Some(at) = documented_table(&doc, table.dir) else {
                panic!(
                    "docs/FORMAT.md has no column table under `## {}/`",
                    table.dir
                );
            };
            if bless {
                doc.replace_range(at, &want);
                continue;
            }
            assert_eq!(
                &doc[at], want,
                "docs/FORMAT.md, section `{}/`, differs from the declared columns; rerun with \
                 SIMUBOOST_BLESS=1 to rewrite it",
                table.dir
            );
        }
        if bless {
            std::fs::write(FORMAT_MD, doc).unwrap();
        }
    }

    /// The declared schemas are the ones existing runs were written with (docs/FORMAT.md and
    /// the Parquet files both follow from them, so check a few by hand).
    #[test]
    fn schemas_are_unchanged() {
        use arrow_schema::DataType;
        let names = |t: &Table| t.names().collect::<Vec<_>>().join(",");
        assert_eq!(names(&checkpoint::TABLE), "checkpoint,gfn,slot,hash");
        assert_eq!(names(&pagemap::TABLE), "checkpoint,gfn,slot,hash");
        assert_eq!(
            names(&state::TABLE),
            "checkpoint,exit,rax,rbx,rcx,rdx,rsi,rdi,rsp,rbp,r8,r9,r10,r11,r12,r13,r14,r15,rip,\
             rflags,sregs,fpu,xcrs,debugregs,vcpu_events,msrs,device"
        );
        assert_eq!(
            names(&events::TABLE),
            "interval,exit,op,arg0,arg1,arg2,status,ret,data_gpa,data,data_pages"
        );
        assert_eq!(names(&eventpages::TABLE), "interval,exit,page,slot,hash");
        assert_eq!(
            names(&intervals::TABLE),
            "interval,start_exit,end_exit,start_ns,end_ns,downtime_ns,dirty_pages,\
             vmm_written_pages,stored_pages,zero_pages,dedup_pages,bytes_written,complete,\
             backpressure_ns,traced_frames,trace_drops,event_pages,event_stored_pages"
        );
        assert_eq!(
            names(&access::TABLE),
            "interval,gfn,kind,source,first_touch,start_slot,start_hash"
        );
        let nullable = |t: &Table| {
            t.schema()
                .fields()
                .iter()
                .filter(|f| f.is_nullable())
                .map(|f| f.name().clone())
                .collect::<Vec<_>>()
                .join(",")
        };
        assert_eq!(nullable(&checkpoint::TABLE), "slot,hash");
        assert_eq!(nullable(&events::TABLE), "data_gpa,data,data_pages");
        assert_eq!(nullable(&eventpages::TABLE), "slot,hash");
        assert_eq!(nullable(&access::TABLE), "start_slot,start_hash");
        for t in [&pagemap::TABLE, &state::TABLE, &intervals::TABLE] {
            assert_eq!(nullable(t), "", "{}", t.dir);
        }
        assert_eq!(
            checkpoint::TABLE.schema().field(3).data_type(),
            &DataType::FixedSizeBinary(16)
        );
        // The register columns are GeneralRegs::NAMES, in order.
        let state = state::TABLE.schema();
        let regs: Vec<&str> = state.fields()[2..20]
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(regs, crate::GeneralRegs::NAMES);
    }
}
