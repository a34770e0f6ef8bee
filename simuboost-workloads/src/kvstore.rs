//! `kvstore`: an in-memory key-value store (think memcached/Redis) under a skewed load.
//!
//! # What it models
//! A large open-addressing hash table (linear probing) fills the whole arena: 128-byte slots,
//! loaded to 80 %. Keys are integer ids; a key's home slot is a hash of the id, so slots of
//! popular keys are scattered uniformly over the table. The load is a stream of operations on
//! Zipf-distributed keys (exponent [`ZIPF_S`]): [`GET_PERCENT`] % gets, the rest puts that rewrite
//! the value with a new version and length. Popular keys are few, so although the table spans
//! most of memory, any short interval reads and dirties only a modest fraction of its pages.
//!
//! Slot layout (16 `u64` words): `[id + 1 (0 = empty), version << 8 | value words, value...]`,
//! values are 8..=14 words (64..=112 bytes) derived from `(id, version)`.
//!
//! # Phases and units
//! 1. Setup (not counted in units): clear the table, then insert every key once (version 0).
//! 2. Operations: one **unit = [`OPS_PER_UNIT`] operations** (about 1–3 ms).
//!
//! `yield_now` is called every 8192 slots cleared, every [`OPS_PER_YIELD`] inserts and every
//! [`OPS_PER_YIELD`] operations (well under 1 ms each).
//!
//! The checksum folds every get's key, version and value words and every put's new version.

use crate::rng::{mix2, mix64, Rng, Zipf};
use crate::util::{cast_slice_mut, Bytes, Ctl, Flow};
use crate::{Outcome, Platform, RunConfig, WorkloadError};

/// Smallest arena: 4 MiB (32768 slots).
pub const MIN_ARENA: u64 = 4 << 20;
/// Operations per unit.
pub const OPS_PER_UNIT: u64 = 10_000;
/// Operations (or inserts) between two yields.
pub const OPS_PER_YIELD: u64 = 2_000;
/// Percentage of operations that are gets; the rest are puts.
pub const GET_PERCENT: u64 = 90;
/// Zipf exponent of key popularity.
pub const ZIPF_S: f64 = 0.99;
/// Bytes per slot.
pub const SLOT_BYTES: usize = 128;

const SLOT_WORDS: usize = SLOT_BYTES / 8;
/// Slots cleared between two yields (1 MiB of table).
const CLEAR_PER_YIELD: usize = 8192;
/// Value length in words: MIN_VALUE_WORDS + (hash % 7), so 64..=112 bytes.
const MIN_VALUE_WORDS: u64 = 8;

type Slot = [u64; SLOT_WORDS];

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

struct Table<'a> {
    slots: &'a mut [Slot],
    salt: u64,
}

impl Table<'_> {
    #[inline]
    fn home(&self, key: u64) -> usize {
        // Multiply-shift range reduction of a hash of the key: no division, uniform.
        ((mix64(key ^ self.salt) as u128 * self.slots.len() as u128) >> 64) as usize
    }

    /// The slot holding `key`, or the empty slot where it would go.
    #[inline]
    fn find(&self, key: u64) -> usize {
        let n = self.slots.len();
        let mut i = self.home(key);
        loop {
            let k = self.slots[i][0];
            if k == key || k == 0 {
                return i;
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
    }

    /// Writes a fresh value for `key` at `version` into slot `i`.
    #[inline]
    fn write(&mut self, i: usize, key: u64, version: u64) {
        let words = value_words(key, version);
        let slot = &mut self.slots[i];
        slot[0] = key;
        slot[1] = (version << 8) | words;
        for (j, w) in slot[2..2 + words as usize].iter_mut().enumerate() {
            *w = value_word(key, version, j as u64);
        }
    }
}

#[inline]
fn value_words(key: u64, version: u64) -> u64 {
    MIN_VALUE_WORDS + mix2(key, version) % 7
}

#[inline]
fn value_word(key: u64, version: u64, j: u64) -> u64 {
    mix64(key ^ version.rotate_left(32) ^ j.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn body(cfg: &RunConfig, ctl: &mut Ctl, arena: &mut [u8]) -> Flow {
    let arena = crate::util::align_start(arena, SLOT_BYTES);
    let slots: &mut [Slot] = cast_slice_mut(arena);
    let nslots = slots.len() as u64;
    let nkeys = (nslots * 4 / 5).max(1);
    ctl.say(format_args!(
        "kvstore: {} slots ({}), {} keys, zipf s={}, {}% gets\n",
        nslots,
        Bytes(nslots * SLOT_BYTES as u64),
        nkeys,
        ZIPF_S,
        GET_PERCENT
    ));
    let mut table = Table {
        slots,
        salt: mix2(cfg.seed, 0x6b76),
    };

    // Setup: the arena's contents are unspecified, so clear every key word first.
    for (i, slot) in table.slots.iter_mut().enumerate() {
        slot[0] = 0;
        if (i + 1) % CLEAR_PER_YIELD == 0 {
            ctl.yield_now()?;
        }
    }
    for id in 0..nkeys {
        let key = id + 1;
        let i = table.find(key);
        table.write(i, key, 0);
        if (id + 1) % OPS_PER_YIELD == 0 {
            ctl.yield_now()?;
        }
    }
    ctl.yield_now()?;

    let zipf = Zipf::new(nkeys, ZIPF_S);
    let mut rng = Rng::derive(cfg.seed, 0x6b76_6f70);
    loop {
        for _ in 0..OPS_PER_UNIT / OPS_PER_YIELD {
            ops(ctl, &mut table, &zipf, &mut rng, OPS_PER_YIELD);
            ctl.yield_now()?;
        }
        ctl.unit_done()?;
    }
}

/// Performs `n` operations.
fn ops(ctl: &mut Ctl, table: &mut Table, zipf: &Zipf, rng: &mut Rng, n: u64) {
    for _ in 0..n {
        let key = zipf.sample(rng);
        let is_get = rng.below(100) < GET_PERCENT;
        let i = table.find(key);
        let slot = &table.slots[i];
        if slot[0] != key {
            // Every key was inserted and none is deleted, so this means corrupted memory; make
            // it visible in the checksum rather than crash.
            ctl.sum.fold(u64::MAX ^ key);
            continue;
        }
        let meta = slot[1];
        if is_get {
            let words = ((meta & 0xff) as usize).min(SLOT_WORDS - 2);
            let mut acc = 0u64;
            for &w in &slot[2..2 + words] {
                acc = acc.rotate_left(7) ^ w;
            }
            ctl.sum.fold(key);
            ctl.sum.fold(meta);
            ctl.sum.fold(acc);
        } else {
            let version = (meta >> 8) + 1;
            table.write(i, key, version);
            ctl.sum.fold(key ^ (version << 40));
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::util::testing::TestPlatform;
    use simuboost_abi::WorkloadId;
    use std::vec;

    fn cfg(seed: u64, units: u64) -> RunConfig {
        RunConfig {
            workload: WorkloadId::Kvstore,
            seed,
            work_units: units,
            disk_blocks: 0,
            disk_data_bytes: 0,
        }
    }

    fn run_once(seed: u64, units: u64, arena_bytes: usize) -> (Outcome, TestPlatform) {
        let mut p = TestPlatform::new(0);
        let mut arena = vec![0xa5u8; arena_bytes];
        let out = crate::run(&cfg(seed, units), &mut p, &mut arena).expect("kvstore runs");
        (out, p)
    }

    #[test]
    fn deterministic_and_yields() {
        let (a, p) = run_once(1, 5, 4 << 20);
        assert_eq!(a.units_done, 5);
        assert!(p.yields >= 5);
        let (b, _) = run_once(1, 5, 4 << 20);
        assert_eq!(a, b);
        let (c, _) = run_once(2, 5, 4 << 20);
        assert_ne!(a.checksum, c.checksum);
    }

    #[test]
    fn stops_when_asked() {
        let mut p = TestPlatform::new(0);
        p.stop_at_yield = Some(200);
        let mut arena = vec![0u8; 4 << 20];
        let out = crate::run(&cfg(1, 0), &mut p, &mut arena).expect("kvstore runs");
        assert_eq!(p.yields, 200);
        assert!(out.units_done > 0 && out.units_done < 200);
    }

    #[test]
    fn table_holds_every_key_once() {
        let mut p = TestPlatform::new(0);
        let mut arena = vec![0xffu8; MIN_ARENA as usize];
        crate::run(&cfg(3, 2), &mut p, &mut arena).expect("kvstore runs");
        let slots: &mut [Slot] = cast_slice_mut(crate::util::align_start(&mut arena, SLOT_BYTES));
        let nkeys = slots.len() as u64 * 4 / 5;
        let mut seen = vec![false; nkeys as usize + 1];
        for s in slots.iter() {
            if s[0] != 0 {
                assert!(!seen[s[0] as usize]);
                seen[s[0] as usize] = true;
                let version = s[1] >> 8;
                assert_eq!(s[1] & 0xff, value_words(s[0], version));
                assert_eq!(s[2], value_word(s[0], version, 0));
            }
        }
        assert!(seen[1..].iter().all(|&b| b));
    }
}
