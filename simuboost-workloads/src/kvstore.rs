//! `kvstore`: an in-memory key-value store (think memcached/Redis) under a skewed load.
//!
//! # What it models
//! A large open-addressing hash table (linear probing) fills the whole arena (from its first
//! 4 KiB-aligned byte, a whole number of pages, so that the layout does not depend on its
//! alignment): 128-byte slots,
//! loaded to 80 %. Keys are integer ids `0..n` (stored as `id + 1`); a key's home slot is a
//! seeded pseudo-random permutation of the id ([`Permutation`], over `[0, 2^b)` with
//! `2^b >= n`) scaled to the table size, so slots of popular keys are scattered uniformly over the
//! table. Because the permutation is cheaply invertible, the fill can insert the keys in order of
//! their home slots: a sequential sweep instead of random writes all over memory. The load is a stream of operations on
//! Zipf-distributed keys (exponent [`ZIPF_S`]): [`GET_PERCENT`] % gets, the rest puts that rewrite
//! the value with a new version and length. Popular keys are few, so although the table spans
//! most of memory, any short interval reads and dirties only a modest fraction of its pages.
//!
//! Slot layout (16 `u64` words): `[id + 1 (0 = empty), version << 8 | value words, value...]`,
//! values are 8..=14 words (64..=112 bytes) derived from `(id, version)`.
//!
//! # Phases and units
//! 1. Setup (not counted in units): clear the table, then insert every key once (version 0), in
//!    order of home slot.
//! 2. Operations: one **unit = [`OPS_PER_UNIT`] operations** (about 1–5 ms).
//!
//! `yield_now` is called every 2048 slots cleared (256 KiB), every 8192 candidate home slots of
//! the fill (at most 8192 inserts, about 1 MiB of table) and every [`OPS_PER_YIELD`] operations
//! (about 0.1–0.5 ms each).
//!
//! The checksum folds every get's key, version and value words and every put's new version.

use crate::rng::{mix2, mix64, Permutation, Rng, Zipf};
use crate::util::{cast_slice_mut, Bytes, Ctl, Flow};
use crate::{Outcome, Platform, RunConfig, WorkloadError};

/// Smallest arena: 4 MiB (32768 slots).
pub const MIN_ARENA: u64 = 4 << 20;
/// Operations per unit.
pub const OPS_PER_UNIT: u64 = 10_000;
/// Operations (or inserts) between two yields.
pub const OPS_PER_YIELD: u64 = 3_000;
/// Percentage of operations that are gets; the rest are puts.
pub const GET_PERCENT: u64 = 90;
/// Zipf exponent of key popularity.
pub const ZIPF_S: f64 = 0.99;
/// Bytes per slot.
pub const SLOT_BYTES: usize = 128;

const SLOT_WORDS: usize = SLOT_BYTES / 8;
/// Slots cleared between two yields (256 KiB of table: first touches can be slow).
const CLEAR_PER_YIELD: usize = 2048;
/// Candidate home slots of the fill between two yields.
const FILL_PER_YIELD: u64 = 8192;
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
    /// Maps `id` to its position in `[0, 2^bits)`.
    perm: Permutation,
    bits: u32,
}

impl Table<'_> {
    /// The home slot of position `pos` of the permutation: monotone in `pos`, no division.
    #[inline]
    fn home_of_pos(&self, pos: u64) -> usize {
        ((pos as u128 * self.slots.len() as u128) >> self.bits) as usize
    }

    /// The slot holding `key`, or the empty slot where it would go.
    #[inline]
    fn find(&self, key: u64) -> usize {
        self.find_from(self.home_of_pos(self.perm.apply(key - 1)), key)
    }

    /// Probes linearly from slot `i` for `key` or an empty slot.
    #[inline]
    fn find_from(&self, mut i: usize, key: u64) -> usize {
        let n = self.slots.len();
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
    let arena = crate::util::usable(arena);
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
    let bits = (64 - (nkeys - 1).leading_zeros()).max(1);
    let mut table = Table {
        slots,
        perm: Permutation::new(mix2(cfg.seed, 0x6b76), bits),
        bits,
    };

    // Setup: the arena's contents are unspecified, so clear every key word first.
    for (i, slot) in table.slots.iter_mut().enumerate() {
        slot[0] = 0;
        if (i + 1) % CLEAR_PER_YIELD == 0 {
            ctl.yield_now()?;
        }
    }
    // Fill in order of home slot: walk the permutation's positions and insert the ids found.
    for pos in 0..1u64 << bits {
        let id = table.perm.invert(pos);
        if id < nkeys {
            let key = id + 1;
            let i = table.find_from(table.home_of_pos(pos), key);
            table.write(i, key, 0);
        }
        if (pos + 1) % FILL_PER_YIELD == 0 {
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
    use crate::util::testing::{Arena, TestPlatform};
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
        let mut arena = Arena::new(arena_bytes, 0xa5);
        let out = crate::run(&cfg(seed, units), &mut p, arena.bytes()).expect("kvstore runs");
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
        let mut arena = Arena::new(4 << 20, 0);
        let out = crate::run(&cfg(1, 0), &mut p, arena.bytes()).expect("kvstore runs");
        assert_eq!(p.yields, 200);
        assert!(out.units_done > 0 && out.units_done < 200);
    }

    #[test]
    fn table_holds_every_key_once() {
        let mut p = TestPlatform::new(0);
        let mut arena = Arena::new(MIN_ARENA as usize, 0xff);
        crate::run(&cfg(3, 2), &mut p, arena.bytes()).expect("kvstore runs");
        let slots: &mut [Slot] = cast_slice_mut(crate::util::usable(arena.bytes()));
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
        // Lookups find every key where the fill put it.
        let bits = 64 - (nkeys - 1).leading_zeros();
        let table = Table {
            perm: Permutation::new(mix2(3, 0x6b76), bits),
            bits,
            slots,
        };
        for key in 1..=nkeys {
            assert_eq!(table.slots[table.find(key)][0], key);
        }
    }
}
