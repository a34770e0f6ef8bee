//! When an interval ends: the one rule the recorder and `--trace-only` share.

use std::time::{Duration, Instant};

/// The interval now running, and when it is due to end: after `length` of wall time, or after
/// `exits` guest-initiated exits when intervals are counted in exits.
pub struct IntervalClock {
    length: Duration,
    exits: Option<u64>,
    start: Instant,
    start_exit: u64,
}

impl IntervalClock {
    /// An interval starting now, at exit 0.
    pub fn new(length: Duration, exits: Option<u64>) -> IntervalClock {
        IntervalClock {
            length,
            exits,
            start: Instant::now(),
            start_exit: 0,
        }
    }

    /// Whether the interval has run its length, the guest now at exit count `guest_exits`.
    pub fn is_due(&self, guest_exits: u64) -> bool {
        match self.exits {
            Some(exits) => guest_exits - self.start_exit >= exits,
            None => self.start.elapsed() >= self.length,
        }
    }

    /// Starts the next interval now, at exit count `guest_exits`.
    pub fn restart(&mut self, guest_exits: u64) {
        self.start = Instant::now();
        self.start_exit = guest_exits;
    }

    /// The exit count the interval started at.
    pub fn start_exit(&self) -> u64 {
        self.start_exit
    }
}
