//! One interval's analyses from the engine's point of view: what to put in `Start`, where the
//! trace batches go while the simulator runs, and what to write when it has finished.
//!
//! ```text
//! let mut a = IntervalAnalysis::begin(&output, &options, interval)?;
//! start.analyses = a.request();
//! ... sim.next_exit_with(&mut |batch| a.trace_batch(batch))? ...
//! let summary = a.finish(&final_)?;
//! ```

use simuboost_sim_proto::{AnalysisRequest, Final, TraceBatch};

use super::{AnalysisOptions, AnalysisOutput, IntervalSummary, OutputError, TraceWriter};

/// The analyses of one interval in progress.
pub struct IntervalAnalysis<'a> {
    output: &'a AnalysisOutput,
    request: AnalysisRequest,
    interval: u64,
    trace: Option<TraceWriter>,
}

impl<'a> IntervalAnalysis<'a> {
    /// Starts the interval's files (the trace file, if the trace is on).
    pub fn begin(
        output: &'a AnalysisOutput,
        options: &AnalysisOptions,
        interval: u64,
    ) -> Result<IntervalAnalysis<'a>, OutputError> {
        Ok(IntervalAnalysis {
            output,
            request: options.request(),
            interval,
            trace: if options.trace {
                Some(output.trace(interval)?)
            } else {
                None
            },
        })
    }

    /// What to ask the simulator for ([`simuboost_sim_proto::Start::analyses`]).
    pub fn request(&self) -> AnalysisRequest {
        self.request.clone()
    }

    /// The sink for [`simuboost_sim_proto::SimProcess::next_exit_with`].
    pub fn trace_batch(&mut self, batch: TraceBatch) -> Result<(), String> {
        match &mut self.trace {
            Some(t) => t.write(batch).map_err(|e| e.to_string()),
            None => Err(format!(
                "{} trace rows arrived but no trace was asked for",
                batch.len()
            )),
        }
    }

    /// Writes the results of the simulator's `Final` and the summary.
    pub fn finish(self, out: &Final) -> Result<IntervalSummary, OutputError> {
        self.output.write_interval(self.interval, out, self.trace)
    }
}

/// The `--all` summary table: one line per interval.
pub fn summary_table(summaries: &[IntervalSummary]) -> String {
    let mut s = format!(
        "{:>8} {:>14} {:>9} {:>10} {:>9} {:>11}  {}\n",
        "interval", "instructions", "sim s", "frames", "L1 miss", "trace rows", "top function"
    );
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    for x in summaries {
        s.push_str(&format!(
            "{:>8} {:>14} {:>9.3} {:>10} {:>9} {:>11}  {}\n",
            x.interval,
            x.instructions,
            x.sim_seconds,
            opt(x.working_set_frames),
            x.cache_l1_miss_rate
                .map_or("-".to_string(), |r| format!("{:.2}%", r * 100.0)),
            opt(x.trace_rows),
            x.top_functions
                .first()
                .map_or("-".to_string(), |(f, n)| format!("{f} ({n})")),
        ));
    }
    s
}
