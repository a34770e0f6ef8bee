//! The simulator's own time limit per run of the guest (a backstop: the replayer's limit is
//! shorter and kills the process first).
//!
//! unicorn's built-in limit (`uc_emu_start`'s timeout) polls from a thread that sleeps 2 µs at
//! a time: on a two-core machine that thread takes a core from the simulation and from the
//! replayer writing the trace (measured: ~7% of the simulator's samples in `nanosleep`, the
//! replay of a `compress` interval with `--analysis pages` 5.3 s → see docs/ANALYSES.md). This
//! one sleeps until the deadline and then stops the emulation the same way, with
//! `uc_emu_stop`.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use unicorn_engine::uc_engine;

#[derive(Default)]
struct State {
    /// When to stop the run in progress; `None` when no run is.
    deadline: Option<Instant>,
    /// The last run was stopped by the watchdog.
    fired: bool,
    /// The watchdog thread should end.
    quit: bool,
}

/// The unicorn instance to stop.
struct Engine(*mut uc_engine);

// SAFETY: the pointer is only passed to `uc_emu_stop`, which unicorn calls from another thread
// itself (its timeout thread, `_timeout_fn` in uc.c); the engine outlives the watchdog thread
// (`Watchdog` is dropped, and its thread joined, before the engine: see `Sim`'s field order).
unsafe impl Send for Engine {}

/// A thread that stops the emulation when a run takes longer than its limit.
pub struct Watchdog {
    shared: Arc<(Mutex<State>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // The state stays consistent even if a holder panicked: every update is a plain store.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Watchdog {
    /// Starts the thread for `engine`, which must outlive the returned watchdog.
    pub fn start(engine: *mut uc_engine) -> std::io::Result<Watchdog> {
        let shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let theirs = shared.clone();
        let engine = Engine(engine);
        let thread = std::thread::Builder::new()
            .name("sim-watchdog".into())
            .spawn(move || {
                let engine = engine;
                let (m, cv) = &*theirs;
                let mut s = lock(m);
                while !s.quit {
                    match s.deadline {
                        None => s = cv.wait(s).unwrap_or_else(|p| p.into_inner()),
                        Some(d) => {
                            let now = Instant::now();
                            if now >= d {
                                // SAFETY: see `Engine`; stopping an engine that is not running
                                // is a no-op.
                                unsafe { unicorn_engine::uc_emu_stop(engine.0) };
                                s.fired = true;
                                s.deadline = None;
                            } else {
                                s = cv
                                    .wait_timeout(s, d - now)
                                    .map(|(s, _)| s)
                                    .unwrap_or_else(|p| p.into_inner().0);
                            }
                        }
                    }
                }
            })?;
        Ok(Watchdog {
            shared,
            thread: Some(thread),
        })
    }

    /// A run starts that may take `limit` (zero: no limit).
    pub fn arm(&self, limit: Duration) {
        let (m, cv) = &*self.shared;
        let mut s = lock(m);
        s.deadline = (!limit.is_zero()).then(|| Instant::now() + limit);
        s.fired = false;
        cv.notify_one();
    }

    /// The run ended; returns whether the watchdog stopped it.
    pub fn disarm(&self) -> bool {
        let mut s = lock(&self.shared.0);
        s.deadline = None;
        std::mem::take(&mut s.fired)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        lock(&self.shared.0).quit = true;
        self.shared.1.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
