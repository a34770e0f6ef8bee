//! Runs into object storage: `simuboost-daemon upload RUN s3://...` for a run on disk, and
//! `run --upload s3://...`, which uploads every interval as soon as it is committed locally.
//!
//! Both only read the local run (simuboost-format's `Uploader`): a failed upload is retried,
//! reported, and never costs the local copy.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use simuboost_format::{FormatError, PagesLayout, UploadStats, Uploader};

use crate::cli::UploadArgs;

/// How often a live upload looks for newly committed checkpoints.
const POLL: Duration = Duration::from_millis(200);

fn warn_retry(e: &FormatError) {
    eprintln!("simuboost-daemon: upload failed, retrying: {e}");
}

fn describe(stats: UploadStats) -> String {
    format!(
        "{} checkpoint(s), {} object(s), {:.1} MiB{}",
        stats.checkpoints,
        stats.objects,
        stats.bytes as f64 / (1 << 20) as f64,
        match stats.retries {
            0 => String::new(),
            n => format!(", {n} retried attempt(s)"),
        }
    )
}

/// `simuboost-daemon upload RUN s3://bucket/prefix`: a copy of the run's complete checkpoints,
/// laid out as the directory is (pages.bin one object), the manifest last.
pub fn upload(args: &UploadArgs) -> Result<()> {
    let mut uploader = Uploader::new(&args.run, &args.to, PagesLayout::Plain)?;
    let stats = uploader
        .sync(&mut warn_retry)
        .with_context(|| format!("uploading {} to {}", args.run.display(), args.to))?;
    eprintln!(
        "simuboost-daemon: uploaded {} to {}: {}",
        args.run.display(),
        uploader.remote().display(),
        describe(stats)
    );
    Ok(())
}

/// A background thread that uploads each checkpoint as the recorder commits it.
pub struct LiveUpload {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<std::result::Result<UploadStats, String>>,
    run_dir: PathBuf,
    to: String,
}

impl LiveUpload {
    /// Checks the destination (`s3://bucket/prefix`) and starts uploading `run_dir`.
    pub fn start(run_dir: &Path, to: &str) -> Result<LiveUpload> {
        let mut uploader = Uploader::new(run_dir, to, PagesLayout::Segments)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("uploader".into())
            .spawn(move || {
                let mut last_error: Option<String> = None;
                loop {
                    let finishing = match stopped.recv_timeout(POLL) {
                        Err(RecvTimeoutError::Timeout) => false,
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
                    };
                    match uploader.sync(&mut warn_retry) {
                        Ok(stats) => {
                            if last_error.take().is_some() {
                                eprintln!("simuboost-daemon: uploading works again");
                            }
                            if finishing {
                                return Ok(stats);
                            }
                        }
                        // The run is still there: the next round starts over from what the
                        // remote copy lacks.
                        Err(e) if !finishing => {
                            let text = e.to_string();
                            if last_error.as_deref() != Some(text.as_str()) {
                                eprintln!(
                                    "simuboost-daemon: upload failed (recording goes on, the \
                                     upload will be tried again): {text}"
                                );
                            }
                            last_error = Some(text);
                        }
                        Err(e) => return Err(e.to_string()),
                    }
                }
            })
            .context("cannot start the uploader thread")?;
        Ok(LiveUpload {
            stop,
            thread,
            run_dir: run_dir.to_path_buf(),
            to: to.to_string(),
        })
    }

    /// Uploads what is left (the final checkpoint and the finished manifest) and stops.
    pub fn finish(self) -> Result<UploadStats> {
        let _ = self.stop.send(());
        let result = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("the uploader thread panicked"))?;
        match result {
            Ok(stats) => {
                eprintln!(
                    "simuboost-daemon: uploaded to {}: {}",
                    self.to,
                    describe(stats)
                );
                Ok(stats)
            }
            Err(e) => anyhow::bail!(
                "uploading to {} failed: {e}; the run is complete in {}: upload it later with \
                 `simuboost-daemon upload {} {}`",
                self.to,
                self.run_dir.display(),
                self.run_dir.display(),
                self.to
            ),
        }
    }
}
