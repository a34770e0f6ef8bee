//! Which guest frames a restore has made resident.

use std::sync::atomic::{AtomicU64, Ordering};

/// One bit per guest frame: installed (resident with its checkpoint contents) or not.
pub struct InstalledFrames {
    words: Vec<AtomicU64>,
}

impl InstalledFrames {
    pub(super) fn new(frames: u64) -> InstalledFrames {
        InstalledFrames {
            words: (0..frames.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    /// Every frame installed: what a dense restore leaves.
    pub(super) fn all(frames: u64) -> InstalledFrames {
        let set = InstalledFrames::new(frames);
        for (i, word) in set.words.iter().enumerate() {
            let first = i as u64 * 64;
            let bits = (frames - first).min(64);
            word.store(
                if bits == 64 {
                    u64::MAX
                } else {
                    (1 << bits) - 1
                },
                Ordering::Release,
            );
        }
        set
    }

    /// True if `gfn` has been installed.
    pub fn contains(&self, gfn: u64) -> bool {
        self.words[(gfn / 64) as usize].load(Ordering::Acquire) & (1 << (gfn % 64)) != 0
    }

    pub(super) fn insert(&self, gfn: u64) {
        self.words[(gfn / 64) as usize].fetch_or(1 << (gfn % 64), Ordering::AcqRel);
    }

    /// Installed frames, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(i, word)| {
            let mut bits = word.load(Ordering::Acquire);
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let bit = bits.trailing_zeros() as u64;
                bits &= bits - 1;
                Some(i as u64 * 64 + bit)
            })
        })
    }

    /// Number of installed frames.
    pub fn count(&self) -> u64 {
        self.words
            .iter()
            .map(|w| u64::from(w.load(Ordering::Acquire).count_ones()))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installed_frames_iterate_ascending() {
        let set = InstalledFrames::new(200);
        for gfn in [199, 0, 64, 63, 65] {
            set.insert(gfn);
        }
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0, 63, 64, 65, 199]);
        assert_eq!(set.count(), 5);
        assert!(set.contains(64) && !set.contains(66));
    }

    #[test]
    fn all_frames_are_exactly_the_frames() {
        for frames in [1, 63, 64, 65, 200] {
            let set = InstalledFrames::all(frames);
            assert_eq!(set.count(), frames);
            assert_eq!(set.iter().last(), Some(frames - 1));
        }
    }
}
