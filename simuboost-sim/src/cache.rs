//! A set-associative LRU cache model, one or two levels: the classic analysis that needs a
//! simulator. Pure bookkeeping on addresses (no data), fed with guest-physical data accesses.
//!
//! Each set keeps its tags in recency order, most recent first, so a hit moves the tag to the
//! front and a miss shifts the set by one, dropping the least recently used tag at the end.
//! Ways are few (typically 4-16), so the linear search and the shift are a handful of
//! instructions and need no per-line age counters. Writes allocate like reads (hits and misses
//! only: no write-back traffic is modelled). An L1 miss goes to L2; an L1 hit does not.

use simuboost_sim_proto::{CacheConfig, CacheLevel, LevelCounts};

/// No tag: an empty way (no real line address is this large).
const EMPTY: u64 = u64::MAX;

/// One level.
#[derive(Clone, Debug)]
pub struct Level {
    /// `sets * ways` tags, each set's ways in recency order.
    tags: Vec<u64>,
    ways: usize,
    set_mask: u64,
    set_bits: u32,
    line_bits: u32,
}

impl Level {
    /// A level of the given geometry (checked by [`CacheLevel::sets`]).
    pub fn new(geometry: &CacheLevel) -> Result<Level, String> {
        let sets = geometry.sets().ok_or_else(|| {
            format!(
                "cache of {} bytes, {} ways, {}-byte lines: the line size must be a power of two \
                 and size / (ways * line) a power of two",
                geometry.size, geometry.ways, geometry.line
            )
        })?;
        let ways = geometry.ways as usize;
        let entries = usize::try_from(sets)
            .ok()
            .and_then(|s| s.checked_mul(ways))
            .filter(|&n| n <= 1 << 28)
            .ok_or_else(|| format!("cache of {} bytes is too large to model", geometry.size))?;
        Ok(Level {
            tags: vec![EMPTY; entries],
            ways,
            set_mask: sets - 1,
            set_bits: sets.trailing_zeros(),
            line_bits: geometry.line.trailing_zeros(),
        })
    }

    /// Looks up the line holding `addr`; on a miss, installs it, evicting the LRU line. Returns
    /// whether it hit.
    #[inline]
    pub fn access_line(&mut self, line: u64) -> bool {
        let set = (line & self.set_mask) as usize;
        let tag = line >> self.set_bits;
        let ways = &mut self.tags[set * self.ways..(set + 1) * self.ways];
        match ways.iter().position(|&t| t == tag) {
            Some(i) => {
                ways[..=i].rotate_right(1);
                true
            }
            None => {
                ways.rotate_right(1);
                ways[0] = tag;
                false
            }
        }
    }

    /// Line number of `addr`.
    #[inline]
    pub fn line_of(&self, addr: u64) -> u64 {
        addr >> self.line_bits
    }

    /// Empties the level.
    pub fn clear(&mut self) {
        self.tags.fill(EMPTY);
    }
}

/// The whole hierarchy.
#[derive(Clone, Debug)]
pub struct Cache {
    levels: Vec<Level>,
}

impl Cache {
    /// From the protocol's configuration: one or two levels.
    pub fn new(config: &CacheConfig) -> Result<Cache, String> {
        if config.levels.is_empty() || config.levels.len() > 2 {
            return Err(format!(
                "the cache model has one or two levels, not {}",
                config.levels.len()
            ));
        }
        Ok(Cache {
            levels: config
                .levels
                .iter()
                .map(Level::new)
                .collect::<Result<_, _>>()?,
        })
    }

    /// Number of levels.
    pub fn depth(&self) -> usize {
        self.levels.len()
    }

    /// An access of `size` bytes at `addr`: each line it touches is looked up in L1, and on a
    /// miss in L2. `counts[i]` gets level i's hits and misses.
    #[inline]
    pub fn access(&mut self, addr: u64, size: u64, counts: &mut [LevelCounts]) {
        let Some((l1, rest)) = self.levels.split_first_mut() else {
            return;
        };
        let first = l1.line_of(addr);
        let last = l1.line_of(addr.saturating_add(size.max(1) - 1));
        for line in first..=last {
            if l1.access_line(line) {
                counts[0].hits += 1;
                continue;
            }
            counts[0].misses += 1;
            if let Some(l2) = rest.first_mut() {
                // L2's line may be larger: look up the L2 line holding this L1 line's start.
                let l2_line = l2.line_of(line << l1.line_bits);
                if l2.access_line(l2_line) {
                    counts[1].hits += 1;
                } else {
                    counts[1].misses += 1;
                }
            }
        }
    }

    /// Empties every level.
    pub fn clear(&mut self) {
        self.levels.iter_mut().for_each(Level::clear);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(size: u64, ways: u32, line: u32) -> CacheLevel {
        CacheLevel { size, ways, line }
    }

    fn run(cache: &mut Cache, stream: &[u64]) -> Vec<LevelCounts> {
        let mut counts = vec![LevelCounts::default(); cache.depth()];
        for &a in stream {
            cache.access(a, 8, &mut counts);
        }
        counts
    }

    #[test]
    fn geometry_is_checked() {
        assert!(level(256, 2, 64).sets() == Some(2));
        assert!(
            level(256, 3, 64).sets().is_none(),
            "768 does not divide 256"
        );
        assert!(level(192, 1, 64).sets().is_none(), "3 sets");
        assert!(
            level(256, 2, 48).sets().is_none(),
            "line not a power of two"
        );
        assert!(Cache::new(&CacheConfig { levels: vec![] }).is_err());
        assert!(Cache::new(&CacheConfig {
            levels: vec![level(256, 2, 64); 3]
        })
        .is_err());
    }

    /// 2 sets x 2 ways x 64-byte lines. Lines 0, 2, 4 map to set 0; line 1 to set 1.
    /// Hand-computed, access by access (set 0 contents MRU first after each):
    /// ```text
    ///  addr   line set  result  set 0 after
    ///  0x000   0    0   miss    [0]
    ///  0x008   0    0   hit     [0]
    ///  0x080   2    0   miss    [2, 0]
    ///  0x040   1    1   miss    (set 1: [1])
    ///  0x000   0    0   hit     [0, 2]
    ///  0x100   4    0   miss    [4, 0]        evicts 2 (LRU)
    ///  0x080   2    0   miss    [2, 4]        evicts 0
    ///  0x000   0    0   miss    [0, 2]        evicts 4
    ///  0x048   1    1   hit
    ///  0x088   2    0   hit     [2, 0]
    /// ```
    /// 4 hits, 6 misses.
    #[test]
    fn one_level_lru_by_hand() {
        let mut cache = Cache::new(&CacheConfig {
            levels: vec![level(256, 2, 64)],
        })
        .unwrap();
        let stream = [
            0x000, 0x008, 0x080, 0x040, 0x000, 0x100, 0x080, 0x000, 0x048, 0x088,
        ];
        let counts = run(&mut cache, &stream);
        assert_eq!(counts, vec![LevelCounts { hits: 4, misses: 6 }]);
    }

    /// The same stream through a direct-mapped L1 (2 sets x 1 way) and a 2-way L2 of 4 sets:
    /// ```text
    ///  addr   line  L1 set  L1      L2 set  L2
    ///  0x000   0     0      miss    0       miss   L2 set 0: [0]
    ///  0x008   0     0      hit
    ///  0x080   2     0      miss    2       miss   L2 set 2: [2]
    ///  0x040   1     1      miss    1       miss   L2 set 1: [1]
    ///  0x000   0     0      miss    0       hit    (L1 set 0 held 2)
    ///  0x100   4     0      miss    0       miss   L2 set 0: [4, 0]
    ///  0x080   2     0      miss    2       hit
    ///  0x000   0     0      miss    0       hit    L2 set 0: [0, 4]
    ///  0x048   1     1      hit
    ///  0x088   2     0      miss    2       hit
    /// ```
    /// L1: 2 hits, 8 misses; L2: 4 hits, 4 misses.
    #[test]
    fn two_levels_by_hand() {
        let mut cache = Cache::new(&CacheConfig {
            levels: vec![level(128, 1, 64), level(512, 2, 64)],
        })
        .unwrap();
        let stream = [
            0x000, 0x008, 0x080, 0x040, 0x000, 0x100, 0x080, 0x000, 0x048, 0x088,
        ];
        let counts = run(&mut cache, &stream);
        assert_eq!(
            counts,
            vec![
                LevelCounts { hits: 2, misses: 8 },
                LevelCounts { hits: 4, misses: 4 }
            ]
        );
    }

    #[test]
    fn an_access_spanning_two_lines_counts_twice() {
        let mut cache = Cache::new(&CacheConfig {
            levels: vec![level(256, 2, 64)],
        })
        .unwrap();
        let mut counts = vec![LevelCounts::default()];
        cache.access(0x3c, 8, &mut counts);
        assert_eq!(counts[0], LevelCounts { hits: 0, misses: 2 });
        cache.access(0x38, 8, &mut counts);
        assert_eq!(counts[0], LevelCounts { hits: 1, misses: 2 });
    }

    #[test]
    fn a_working_set_that_fits_only_misses_once_per_line() {
        // 4 KiB, 4 ways, 64-byte lines; stream over 2 KiB ten times.
        let mut cache = Cache::new(&CacheConfig {
            levels: vec![level(4096, 4, 64)],
        })
        .unwrap();
        let stream: Vec<u64> = (0..10).flat_map(|_| (0..2048).step_by(8)).collect();
        let counts = run(&mut cache, &stream);
        assert_eq!(counts[0].misses, 32);
        assert_eq!(counts[0].hits, stream.len() as u64 - 32);
    }
}
