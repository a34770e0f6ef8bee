//! DuckDB and pyarrow can read what the writer produces, and the queries in docs/FORMAT.md (its
//! `sql` and `access-sql` blocks) run and agree with the Rust reader.
//!
//! Runs python3 with the `duckdb` and `pyarrow` modules; if either is missing the test prints
//! SKIPPED and passes (they are installed on the project's machines).

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;
use simuboost_format::{AccessKind, AccessSource, Run, RunWriter, PAGE_SIZE};

const MEM_PAGES: u64 = 64;
const CHECKPOINTS: u64 = 9;

/// Exit code of the script when a module is missing.
const SKIP_CODE: i32 = 3;

const SCRIPT: &str = r#"
import sys, json
try:
    import duckdb
    import pyarrow.parquet as pq
except ImportError as e:
    print(f"missing module: {e}", file=sys.stderr)
    sys.exit(3)

run = sys.argv[1]
doc_queries = json.load(sys.stdin)
con = duckdb.connect()

def q(sql):
    return [list(r) for r in con.execute(sql.replace("<run>", run)).fetchall()]

out = {}
out["events"] = q("SELECT interval, count(*) FROM '<run>/events/*.parquet' GROUP BY interval ORDER BY 1")
out["pages"] = q("SELECT checkpoint, count(*), count(slot) FROM '<run>/checkpoints/*.parquet' GROUP BY checkpoint ORDER BY 1")
out["intervals"] = q("SELECT interval, stored_pages, zero_pages, dedup_pages, bytes_written, complete, traced_frames, trace_drops FROM '<run>/intervals/*.parquet' ORDER BY 1")
out["access"] = q("SELECT interval, gfn, kind, source, first_touch FROM '<run>/access/*.parquet' ORDER BY interval, first_touch")
out["access_types"] = q("SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM '<run>/access/*.parquet') ORDER BY 1")
out["access_dict"] = q("SELECT DISTINCT path_in_schema, encodings FROM parquet_metadata('<run>/access/interval-000001.parquet') ORDER BY 1")
out["pagemaps"] = q("SELECT checkpoint, count(*) FROM '<run>/pagemaps/*.parquet' GROUP BY 1 ORDER BY 1")
out["pagemap_hashes"] = q("SELECT checkpoint, gfn, slot, hex(hash) FROM '<run>/pagemaps/*.parquet' ORDER BY checkpoint, gfn")
out["hashes"] = q("SELECT gfn, hex(hash) FROM '<run>/checkpoints/ckpt-000001.parquet' WHERE hash IS NOT NULL ORDER BY gfn")
out["data"] = q("SELECT exit, data_gpa, data IS NULL, octet_length(data), arg2, data_pages FROM '<run>/events/*.parquet' ORDER BY exit")
out["eventpages"] = q("SELECT exit, count(*), count(slot), min(page), max(page) FROM '<run>/eventpages/*.parquet' GROUP BY exit ORDER BY exit")

table = pq.read_table(f"{run}/state/ckpt-000003.parquet")
row = table.to_pylist()[0]
out["state"] = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in row.items()}
out["state_types"] = {f.name: str(f.type) for f in table.schema}
out["pagemap_types"] = [[f.name, str(f.type), f.nullable] for f in pq.read_schema(f"{run}/pagemaps/ckpt-000004.parquet")]

out["doc"] = [q(sql) for sql in doc_queries]
print(json.dumps(out))
"#;

/// The blocks of docs/FORMAT.md fenced as ```sql and, after them, those fenced as
/// ```access-sql; returns the queries and how many are plain `sql` blocks.
fn doc_queries() -> (Vec<String>, usize) {
    let (sql, access) = (doc_blocks("sql"), doc_blocks("access-sql"));
    assert!(sql.len() >= 6, "FORMAT.md lost its queries");
    assert!(access.len() >= 3, "FORMAT.md lost its access-log queries");
    let n = sql.len();
    (sql.into_iter().chain(access).collect(), n)
}

fn doc_blocks(tag: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/FORMAT.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let fence = format!("```{tag}");
    let mut queries = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_end()) {
            (None, l) if l == fence => current = Some(String::new()),
            (Some(q), "```") => {
                queries.push(std::mem::take(q));
                current = None;
            }
            (Some(q), l) => {
                q.push_str(l);
                q.push('\n');
            }
            _ => {}
        }
    }
    queries
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a u64: {v}"))
}

#[test]
fn duckdb_and_pyarrow_read_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut w = RunWriter::create(&dir, meta(MEM_PAGES))
        .unwrap()
        .with_consolidate_every(4);
    let mut rng = Rng(11);
    for n in 0..CHECKPOINTS {
        let g = gen_checkpoint(&mut rng, n, MEM_PAGES, 24);
        let access = (n > 0).then(|| access_of(n, &g, MEM_PAGES));
        write_with(&mut w, n, &g, access.as_deref(), None).unwrap();
    }
    let run = Run::open(&dir).unwrap();
    let access: Vec<_> = (0..CHECKPOINTS - 1)
        .map(|i| run.access(i).unwrap().unwrap())
        .collect();

    let (queries, sql_blocks) = doc_queries();
    let mut child = match Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            println!("SKIPPED: cannot run python3: {e}");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&queries).unwrap().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    if output.status.code() == Some(SKIP_CODE) {
        println!(
            "SKIPPED: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        return;
    }
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out: Value = serde_json::from_slice(&output.stdout).unwrap();

    // Events per interval, through the glob.
    let events: Vec<(u64, u64)> = out["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (u(&r[0]), u(&r[1])))
        .collect();
    let want: Vec<(u64, u64)> = (0..CHECKPOINTS - 1)
        .map(|i| (i, events_of(i).len() as u64))
        .collect();
    assert_eq!(events, want);

    // Page rows per checkpoint.
    let pages: Vec<(u64, u64, u64)> = out["pages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (u(&r[0]), u(&r[1]), u(&r[2])))
        .collect();
    let want: Vec<(u64, u64, u64)> = (0..CHECKPOINTS)
        .map(|n| {
            let rows = run.checkpoint_pages(n).unwrap();
            let nonzero = rows.iter().filter(|r| r.slot.is_some()).count() as u64;
            (n, rows.len() as u64, nonzero)
        })
        .collect();
    assert_eq!(pages, want);

    // Interval statistics.
    let intervals = run.intervals().unwrap();
    let got = out["intervals"].as_array().unwrap();
    assert_eq!(got.len(), intervals.len());
    for (r, rec) in got.iter().zip(&intervals) {
        assert_eq!(
            (
                u(&r[0]),
                u(&r[1]),
                u(&r[2]),
                u(&r[3]),
                u(&r[4]),
                r[5].as_bool(),
                u(&r[6]),
                u(&r[7]),
            ),
            (
                rec.interval,
                rec.stored_pages,
                rec.zero_pages,
                rec.dedup_pages,
                rec.bytes_written,
                Some(rec.complete),
                rec.traced_frames,
                rec.trace_drops,
            )
        );
    }
    assert!(intervals.iter().any(|r| !r.complete));

    // Access logs, through the glob, in first-touch order.
    let got: Vec<(u64, u64, String, String, u64)> = out["access"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |v: &Value| v.as_str().unwrap().to_string();
            (u(&r[0]), u(&r[1]), s(&r[2]), s(&r[3]), u(&r[4]))
        })
        .collect();
    let want: Vec<(u64, u64, String, String, u64)> = access
        .iter()
        .enumerate()
        .flat_map(|(i, log)| {
            log.iter().map(move |a| {
                (
                    i as u64,
                    a.gfn,
                    a.kind.as_str().to_string(),
                    a.source.as_str().to_string(),
                    u64::from(a.first_touch),
                )
            })
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        out["access_types"],
        serde_json::json!([
            ["first_touch", "UINTEGER"],
            ["gfn", "UBIGINT"],
            ["interval", "UBIGINT"],
            ["kind", "VARCHAR"],
            ["source", "VARCHAR"],
            ["start_hash", "BLOB"],
            ["start_slot", "UBIGINT"]
        ])
    );
    // kind and source are dictionary-encoded in the file.
    for r in out["access_dict"].as_array().unwrap() {
        let (col, enc) = (r[0].as_str().unwrap(), r[1].to_string());
        if col == "kind" || col == "source" {
            assert!(enc.contains("DICTIONARY"), "{col}: {enc}");
        }
    }

    // Consolidated maps at 0, 4, 8.
    let pagemaps: Vec<(u64, u64)> = out["pagemaps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (u(&r[0]), u(&r[1])))
        .collect();
    let want: Vec<(u64, u64)> = [0, 4, 8]
        .iter()
        .map(|&n| (n, run.page_map(n).unwrap().len() as u64))
        .collect();
    assert_eq!(pagemaps, want);

    // Consolidated maps carry each page's hash, big-endian, as the reader sees it.
    let got: Vec<(u64, u64, u64, String)> = out["pagemap_hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                u(&r[0]),
                u(&r[1]),
                u(&r[2]),
                r[3].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(u64, u64, u64, String)> = [0, 4, 8]
        .iter()
        .flat_map(|&n| {
            let map = run.page_map(n).unwrap();
            map.entries()
                .map(|(g, s, h)| (n, g, s, format!("{h:032X}")))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        out["pagemap_types"],
        serde_json::json!([
            ["checkpoint", "uint64", false],
            ["gfn", "uint64", false],
            ["slot", "uint64", false],
            ["hash", "fixed_size_binary[16]", false]
        ])
    );

    // Hashes: big-endian bytes = the u128 printed in hex.
    let hashes: Vec<(u64, String)> = out["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (u(&r[0]), r[1].as_str().unwrap().to_string()))
        .collect();
    let want: Vec<(u64, String)> = run
        .checkpoint_pages(1)
        .unwrap()
        .into_iter()
        .filter_map(|r| r.hash.map(|h| (r.gfn, format!("{h:032X}"))))
        .collect();
    assert_eq!(hashes, want);

    // Event data: NULL vs empty vs bytes, nullable gpa, u64 values past i64::MAX.
    let all_events: Vec<_> = (0..CHECKPOINTS - 1).flat_map(events_of).collect();
    let data = out["data"].as_array().unwrap();
    assert_eq!(data.len(), all_events.len());
    let mut by_reference = Vec::new();
    for (r, e) in data.iter().zip(&all_events) {
        assert_eq!(u(&r[0]), e.exit);
        assert_eq!(r[1].as_u64(), e.data_gpa);
        // Whole pages are held by reference: `data` NULL, `data_pages` their count.
        let bytes = e.data.as_ref().and_then(|d| d.bytes()).unwrap_or_default();
        let held = !bytes.is_empty() && bytes.len() % PAGE_SIZE == 0;
        assert_eq!(r[2].as_bool(), Some(e.data.is_none() || held));
        let inline = e.data.as_ref().filter(|_| !held).map(|d| d.len());
        assert_eq!(r[3].as_u64(), inline);
        assert_eq!(u(&r[4]), e.args[2]);
        assert_eq!(
            r[5].as_u64(),
            held.then_some((bytes.len() / PAGE_SIZE) as u64)
        );
        if held {
            let zero_first = bytes[..PAGE_SIZE].iter().all(|&b| b == 0);
            by_reference.push(vec![e.exit, 2, if zero_first { 1 } else { 2 }, 0, 1]);
        }
    }
    assert!(!by_reference.is_empty());
    let eventpages: Vec<Vec<u64>> = out["eventpages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(u).collect())
        .collect();
    assert_eq!(eventpages, by_reference);

    // State through pyarrow.
    let state = &out["state"];
    let want = state_of(3);
    assert_eq!(u(&state["checkpoint"]), 3);
    assert_eq!(u(&state["exit"]), want.exit);
    assert_eq!(u(&state["rip"]), want.vcpu.regs.rip);
    assert_eq!(u(&state["r15"]), want.vcpu.regs.r15);
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    assert_eq!(state["sregs"].as_str().unwrap(), hex(&want.vcpu.sregs));
    assert_eq!(state["xcrs"].as_str().unwrap(), "");
    let msrs: Vec<(u32, u64)> = state["msrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (u(&m["index"]) as u32, u(&m["value"])))
        .collect();
    assert_eq!(msrs, want.vcpu.msrs);
    assert!(!msrs.is_empty());
    assert_eq!(state["device"].as_str().unwrap(), want.device_json);
    let types = &out["state_types"];
    assert_eq!(types["rip"], "uint64");
    assert_eq!(types["sregs"], "binary");
    assert!(
        types["msrs"].as_str().unwrap().starts_with("list<"),
        "{types}"
    );

    // The documented queries: all run; the ones with a known answer agree with the reader.
    let doc = out["doc"].as_array().unwrap();
    assert_eq!(doc.len(), queries.len());
    let mut access_checked = 0;
    for (k, (q, rows)) in queries.iter().zip(doc).enumerate() {
        let rows = rows.as_array().unwrap();
        assert!(!rows.is_empty(), "FORMAT.md query returned nothing:\n{q}");
        if k >= sql_blocks {
            access_checked += check_access_query(q, rows, &access, &intervals) as usize;
            continue;
        }
        if q.contains("newest = 1") {
            let got: Vec<(u64, u64)> = rows.iter().map(|r| (u(&r[0]), u(&r[1]))).collect();
            let want: Vec<(u64, u64)> = run.page_map(7).unwrap().iter().collect();
            assert_eq!(got, want, "SQL page map as of 7");
        }
        if q.contains("mismatched") {
            let got: Vec<Vec<u64>> = rows
                .iter()
                .map(|r| r.as_array().unwrap().iter().map(u).collect())
                .collect();
            let want: Vec<Vec<u64>> = [0, 4, 8]
                .iter()
                .map(|&n| vec![n, run.page_map(n).unwrap().len() as u64, 0])
                .collect();
            assert_eq!(got, want, "pagemap hashes vs page tables");
        }
        if q.contains("read_json") {
            assert_eq!(rows.len() as u64, CHECKPOINTS - 1);
        }
        if q.contains("bytes_saved") {
            let pages: u64 = want_total_rows(&run);
            assert_eq!(u(&rows[0][0]), pages);
            // Slots of checkpoint pages only: pages.bin also holds event data (eventpages/).
            let slots: std::collections::HashSet<u64> = (0..run.checkpoints())
                .flat_map(|n| run.checkpoint_pages(n).unwrap())
                .filter_map(|r| r.slot)
                .collect();
            assert_eq!(u(&rows[0][2]), slots.len() as u64);
            assert!(slots.len() as u64 <= run.manifest().page_slots);
        }
    }
    assert_eq!(
        access_checked, 3,
        "the three access-log queries of FORMAT.md"
    );
}

/// Checks an `access-sql` query of FORMAT.md against the logs read by `Run::access`; false if
/// the query is not one this test knows the answer of.
fn check_access_query(
    q: &str,
    rows: &[Value],
    access: &[Vec<simuboost_format::Access>],
    intervals: &[simuboost_format::IntervalRecord],
) -> bool {
    let count = |i: usize, f: &dyn Fn(&simuboost_format::Access) -> bool| {
        access[i].iter().filter(|a| f(a)).count() as u64
    };
    let got: Vec<Vec<u64>> = rows
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| match v {
                    Value::Bool(b) => *b as u64,
                    // reused_pct is a float; the counts it derives from are checked.
                    Value::Number(n) if n.is_f64() => 0,
                    v => u(v),
                })
                .collect()
        })
        .collect();
    let want: Vec<Vec<u64>> = if q.contains("also_in_previous") {
        (1..access.len())
            .map(|i| {
                let reused = count(i, &|a| access[i - 1].iter().any(|p| p.gfn == a.gfn));
                vec![i as u64, access[i].len() as u64, reused, 0]
            })
            .collect()
    } else if q.contains("reads") {
        (0..access.len())
            .map(|i| {
                vec![
                    i as u64,
                    count(i, &|a| a.kind == AccessKind::Read),
                    count(i, &|a| a.kind == AccessKind::Write),
                    count(i, &|a| a.source == AccessSource::Dma),
                    count(i, &|a| a.source == AccessSource::Vcpu),
                ]
            })
            .collect()
    } else if q.contains("trace_drops") {
        intervals
            .iter()
            .map(|r| {
                let frames = access[r.interval as usize].len() as u64;
                assert_eq!(frames, r.traced_frames);
                vec![
                    r.interval,
                    frames,
                    frames * 4096,
                    r.complete as u64,
                    r.trace_drops,
                ]
            })
            .collect()
    } else {
        return false;
    };
    assert_eq!(got, want, "FORMAT.md query:\n{q}");
    // The synthetic logs make the reuse query meaningful.
    if q.contains("also_in_previous") {
        assert!(want.iter().any(|r| r[2] > 0), "{want:?}");
    }
    true
}

fn want_total_rows(run: &Run) -> u64 {
    (0..run.checkpoints())
        .map(|n| run.checkpoint_pages(n).unwrap().len() as u64)
        .sum()
}
