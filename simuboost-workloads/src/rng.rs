//! Deterministic pseudo-random numbers: SplitMix64, xoshiro256\*\* and a Zipf sampler.
//!
//! Everything here is a pure function of its seed, uses only integer arithmetic on hot paths, and
//! never calls into `libm` (which `core` lacks). The Zipf sampler builds its tables with a little
//! `f64` arithmetic made only of IEEE-754 `+ - * /` and conversions, which round identically with
//! SSE2 and with the soft-float routines of `x86_64-unknown-none`, so guest and host agree bit
//! for bit.

use alloc::vec::Vec;

/// The SplitMix64 finalizer: a bijective 64-bit mixer (a good integer hash).
#[inline(always)]
pub const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Hashes two words into one (for deriving per-step, per-file, per-block seeds).
#[inline(always)]
pub const fn mix2(a: u64, b: u64) -> u64 {
    mix64(mix64(a ^ 0x243f_6a88_85a3_08d3).wrapping_add(b))
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny generator, used to seed [`Rng`].
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next value.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix64(self.0)
    }
}

/// xoshiro256\*\* (Blackman, Vigna 2018): fast, 256-bit state, seeded through SplitMix64.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        let mut sm = SplitMix64(seed);
        // Four consecutive outputs of a bijective mix of distinct inputs are never all zero.
        Rng {
            s: [sm.next_u64(), sm.next_u64(), sm.next_u64(), sm.next_u64()],
        }
    }

    /// An independent generator for sub-stream `stream` of `seed` (a step, a file, a block...).
    pub fn derive(seed: u64, stream: u64) -> Rng {
        Rng::new(mix2(seed, stream))
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, n)` (Lemire's multiply-shift with rejection, so exactly uniform); 0 if
    /// `n == 0`.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let mut m = (self.next_u64() as u128) * (n as u128);
        if (m as u64) < n {
            let threshold = n.wrapping_neg() % n;
            while (m as u64) < threshold {
                m = (self.next_u64() as u128) * (n as u128);
            }
        }
        (m >> 64) as u64
    }

    /// Uniform in `[lo, hi]` (inclusive; `lo <= hi`).
    #[inline]
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// Uniform in `[0, 1)`, with 53 random bits.
    #[inline]
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A cheap Zipf(1)-like index in `[0, 2^bits - 1)`: see [`log_uniform`].
    #[inline]
    pub fn log_uniform(&mut self, bits: u32) -> u64 {
        log_uniform(self.next_u64(), bits)
    }
}

/// Maps 64 random bits to a "log-uniform" index in `[0, 2^bits - 1)` (`1 <= bits <= 32`): a bucket
/// `b` in `[0, bits)` is chosen uniformly, then an index uniformly within `[2^b - 1, 2^(b+1) - 1)`.
/// So `P(i) ≈ 1 / (bits · (i + 1))`: a Zipf distribution with exponent 1, up to a factor of 2
/// within each bucket, at the cost of a multiply and a shift (no tables, no floating point).
#[inline]
pub fn log_uniform(r: u64, bits: u32) -> u64 {
    let b = (((r & 0xffff_ffff) * bits as u64) >> 32) as u32;
    let base = (1u64 << b) - 1;
    base + ((r >> 32) & base)
}

/// A seeded pseudo-random permutation of `[0, 2^bits)` (`1 <= bits <= 64`) with a cheap inverse:
/// xor with a salt, then twice (multiply by an odd constant, xor-shift right by `bits / 2`), all
/// modulo `2^bits`. Each step is a bijection, so the whole is, and each is inverted in turn.
#[derive(Clone, Debug)]
pub struct Permutation {
    mask: u64,
    shift: u32,
    salt: u64,
    mul: [u64; 2],
    inv: [u64; 2],
}

impl Permutation {
    /// A permutation of `[0, 2^bits)` chosen by `seed`.
    pub fn new(seed: u64, bits: u32) -> Permutation {
        let bits = bits.clamp(1, 64);
        let mask = if bits == 64 {
            u64::MAX
        } else {
            (1 << bits) - 1
        };
        let mut sm = SplitMix64(seed);
        let salt = sm.next_u64() & mask;
        let mul = [sm.next_u64() | 1, sm.next_u64() | 1];
        // Inverses modulo 2^64 by Newton's iteration (each step doubles the correct bits).
        let inv = mul.map(|m| {
            let mut x = m;
            for _ in 0..6 {
                x = x.wrapping_mul(2u64.wrapping_sub(m.wrapping_mul(x)));
            }
            x
        });
        Permutation {
            mask,
            shift: bits.div_ceil(2),
            salt,
            mul,
            inv,
        }
    }

    /// The image of `x` (`x < 2^bits`).
    #[inline]
    pub fn apply(&self, x: u64) -> u64 {
        let mut x = (x ^ self.salt) & self.mask;
        for m in self.mul {
            x = x.wrapping_mul(m) & self.mask;
            x ^= x >> self.shift;
        }
        x
    }

    /// The preimage of `y` (`y < 2^bits`).
    #[inline]
    pub fn invert(&self, y: u64) -> u64 {
        let mut y = y & self.mask;
        for m in self.inv.iter().rev() {
            // x ^ (x >> s) is undone by y ^ (y >> s) ^ (y >> 2s) ^ ...
            let mut x = y;
            let mut sh = self.shift;
            while sh < 64 {
                x ^= y >> sh;
                sh += self.shift;
            }
            y = x.wrapping_mul(*m) & self.mask;
        }
        y ^ self.salt
    }
}

/// Zipf-distributed ranks in `[1, n]`: `P(k) ∝ k^-s`.
///
/// # Method
/// Tabulated inversion, exact in the head and using Hörmann's continuous approximation in the
/// tail:
/// * Ranks `1..=H` (`H` = min(n, 256)) get their exact weights `k^-s`; their cumulative
///   probabilities are stored as 64-bit fixed-point thresholds and a sample in the head is found
///   by binary search.
/// * The tail `H+1..=n` uses the integral `H(x) = ∫ x^-s dx = (x^(1-s) - 1) / (1 - s)` of the
///   rejection-inversion method (W. Hörmann, G. Derflinger, "Rejection-inversion to generate
///   variates from monotone discrete distributions", 1996): rank `k` gets weight
///   `H(k + 1/2) - H(k - 1/2)`, which differs from `k^-s` by a relative `O(k^-2)` (< 10^-5 past
///   rank 256). The inverse `H^-1` is tabulated at 4096 equally spaced points of the tail's mass
///   (fixed point, 16 fractional bits) and interpolated linearly; between two points the rank
///   changes by a ratio of at most `(n/H)^(1/4096)`, so the interpolation error is negligible.
///
/// Construction costs about 4400 logarithms and exponentials (implemented here with `+ - * /`
/// only); a sample costs one or two `next_u64` and either a 9-step binary search or one table
/// interpolation, all in integers. The tables take about 35 KiB of heap.
#[derive(Clone, Debug)]
pub struct Zipf {
    n: u64,
    /// `head[k-1]` = P(rank <= k) · 2^64 (saturated), for k in 1..=H.
    head: Vec<u64>,
    /// Tail quantiles: `tail[j]` = H^-1(H(H + 1/2) + j/Q · tail mass) · 2^16, j in 0..=Q.
    tail: Vec<u64>,
}

const ZIPF_HEAD: u64 = 256;
const ZIPF_TAIL_BITS: u32 = 12;

impl Zipf {
    /// A sampler over `[1, n]` with exponent `s` (`n >= 1`, `s > 0`; other values are clamped).
    pub fn new(n: u64, s: f64) -> Zipf {
        let n = n.max(1);
        let s = if s > 0.0 { s } else { 1e-9 };
        let h = Hormann { s };
        let heads = n.min(ZIPF_HEAD);
        let mut weights = 0.0;
        let mut cum = Vec::with_capacity(heads as usize);
        for k in 1..=heads {
            weights += h.h(k as f64);
            cum.push(weights);
        }
        let tail_lo = h.h_integral(heads as f64 + 0.5);
        let tail_mass = if n > heads {
            h.h_integral(n as f64 + 0.5) - tail_lo
        } else {
            0.0
        };
        let total = weights + tail_mass;
        let scale = 18_446_744_073_709_551_616.0; // 2^64
        let mut head: Vec<u64> = cum.iter().map(|c| (c / total * scale) as u64).collect();
        if tail_mass == 0.0 {
            if let Some(last) = head.last_mut() {
                *last = u64::MAX;
            }
        }
        let mut tail = Vec::new();
        if tail_mass > 0.0 {
            let q = 1u64 << ZIPF_TAIL_BITS;
            tail.reserve(q as usize + 1);
            for j in 0..=q {
                let y = tail_lo + tail_mass * (j as f64 / q as f64);
                let x = h.h_integral_inverse(y);
                // Keep the table inside [H + 1/2, n + 1/2] and monotone despite rounding.
                let lo = (heads as f64 + 0.5) * 65536.0;
                let hi = (n as f64 + 0.5) * 65536.0;
                let fx = (x * 65536.0).clamp(lo, hi);
                let v = fx as u64;
                let prev = tail.last().copied().unwrap_or(0);
                tail.push(v.max(prev));
            }
        }
        Zipf { n, head, tail }
    }

    /// The number of ranks.
    pub fn n(&self) -> u64 {
        self.n
    }

    /// A rank in `[1, n]`; rank 1 is the most popular.
    #[inline]
    pub fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.next_u64();
        let head_total = self.head.last().copied().unwrap_or(0);
        if u < head_total || self.tail.is_empty() {
            let i = self.head.partition_point(|&c| c <= u);
            return (i as u64 + 1).min(self.n);
        }
        let r = rng.next_u64();
        let j = (r >> (64 - ZIPF_TAIL_BITS)) as usize;
        let frac = (r >> (32 - ZIPF_TAIL_BITS)) & 0xffff_ffff;
        let (a, b) = (self.tail[j], self.tail[j + 1]);
        let x = a + (((b - a) as u128 * frac as u128) >> 32) as u64;
        // Round x to the nearest rank; clamp because x can reach n + 1/2.
        ((x + (1 << 15)) >> 16).clamp(ZIPF_HEAD + 1, self.n)
    }
}

/// The functions of Hörmann's rejection-inversion for `h(x) = x^-s`, written to stay accurate
/// when `s` is close to 1 (after Apache Commons' `ZipfRejectionInversionSampler`).
struct Hormann {
    s: f64,
}

impl Hormann {
    fn h(&self, x: f64) -> f64 {
        fm::exp(-self.s * fm::ln(x))
    }

    /// `H(x) = (x^(1-s) - 1) / (1 - s)`, or `ln x` when `s == 1`.
    fn h_integral(&self, x: f64) -> f64 {
        let log_x = fm::ln(x);
        helper2((1.0 - self.s) * log_x) * log_x
    }

    /// The inverse of [`Hormann::h_integral`].
    fn h_integral_inverse(&self, y: f64) -> f64 {
        let mut t = y * (1.0 - self.s);
        if t < -1.0 {
            t = -1.0;
        }
        fm::exp(helper1(t) * y)
    }
}

/// `ln(1 + x) / x`, accurate near 0.
fn helper1(x: f64) -> f64 {
    if fm::abs(x) > 1e-8 {
        fm::ln_1p(x) / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// `(e^x - 1) / x`, accurate near 0.
fn helper2(x: f64) -> f64 {
    if fm::abs(x) > 1e-8 {
        fm::exp_m1(x) / x
    } else {
        1.0 + x * 0.5 * (1.0 + x * (1.0 / 3.0) * (1.0 + 0.25 * x))
    }
}

/// Just enough elementary functions for the Zipf tables, from `+ - * /` only (so results are the
/// same everywhere). Accuracy is a few ulps for the arguments used.
pub(crate) mod fm {
    use core::f64::consts::{LOG2_E, SQRT_2};

    /// ln 2 split so that `n * LN2_HI` is exact for |n| < 2^11 (fdlibm's constants).
    const LN2_HI: f64 = 6.931_471_803_691_238e-1;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;

    pub(crate) fn abs(x: f64) -> f64 {
        f64::from_bits(x.to_bits() & !(1 << 63))
    }

    /// `2 atanh(s) = ln((1 + s) / (1 - s))` by its series, for |s| <= 0.18.
    fn ln_ratio_series(s: f64) -> f64 {
        let z = s * s;
        // 2 (s + s^3/3 + ... + s^25/25): the next term is < 0.18^27 / 27 < 1e-21.
        let mut p = 1.0 / 25.0;
        let mut k = 23.0;
        while k >= 1.0 {
            p = p * z + 1.0 / k;
            k -= 2.0;
        }
        2.0 * s * p
    }

    /// Natural logarithm.
    pub(crate) fn ln(x: f64) -> f64 {
        if x.is_nan() || x < 0.0 {
            return f64::NAN;
        }
        if x == 0.0 {
            return f64::NEG_INFINITY;
        }
        if x == f64::INFINITY {
            return x;
        }
        let mut bits = x.to_bits();
        let mut e = ((bits >> 52) & 0x7ff) as i64;
        if e == 0 {
            // Subnormal: scale into the normal range first.
            bits = (x * 18_014_398_509_481_984.0).to_bits(); // 2^54
            e = ((bits >> 52) & 0x7ff) as i64 - 54;
        }
        e -= 1023;
        let mut m = f64::from_bits((bits & ((1 << 52) - 1)) | (1023 << 52)); // [1, 2)
        if m > SQRT_2 {
            m *= 0.5;
            e += 1;
        }
        let s = (m - 1.0) / (m + 1.0); // |s| <= 0.1716
        let e = e as f64;
        e * LN2_HI + (e * LN2_LO + ln_ratio_series(s))
    }

    /// `ln(1 + x)`, accurate near 0.
    pub(crate) fn ln_1p(x: f64) -> f64 {
        if abs(x) < 0.25 {
            ln_ratio_series(x / (2.0 + x))
        } else {
            ln(1.0 + x)
        }
    }

    /// `e^r` for |r| <= 0.5 by its Taylor series (degree 17: error < 0.5^18/18! < 1e-20).
    fn exp_small(r: f64) -> f64 {
        let mut p = 1.0;
        let mut k = 17.0;
        while k >= 1.0 {
            p = 1.0 + p * r / k;
            k -= 1.0;
        }
        p
    }

    /// `2^n` for -1074 <= n <= 1023.
    fn pow2(n: i64) -> f64 {
        if n >= -1022 {
            f64::from_bits(((n + 1023) as u64) << 52)
        } else {
            f64::from_bits(1u64 << (n + 1074))
        }
    }

    /// The exponential function.
    pub(crate) fn exp(x: f64) -> f64 {
        if x.is_nan() {
            return x;
        }
        if x > 709.782_712_893_384 {
            return f64::INFINITY;
        }
        if x < -745.2 {
            return 0.0;
        }
        let t = x * LOG2_E;
        let n = if t >= 0.0 {
            (t + 0.5) as i64
        } else {
            (t - 0.5) as i64
        };
        let nf = n as f64;
        let r = (x - nf * LN2_HI) - nf * LN2_LO;
        let p = exp_small(r);
        // Split the scaling so that neither factor over- or underflows on its own.
        let half = n / 2;
        p * pow2(half) * pow2(n - half)
    }

    /// `e^x - 1`, accurate near 0.
    pub(crate) fn exp_m1(x: f64) -> f64 {
        if abs(x) < 0.5 {
            // Taylor series without the leading 1: x (1 + x/2 (1 + x/3 (...))).
            let mut p = 1.0;
            let mut k = 18.0;
            while k >= 2.0 {
                p = 1.0 + p * x / k;
                k -= 1.0;
            }
            x * p
        } else {
            exp(x) - 1.0
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use std::vec;

    #[test]
    fn xoshiro_reference() {
        // Reference values of xoshiro256** from state [1, 2, 3, 4] (Vigna's C code).
        let mut r = Rng { s: [1, 2, 3, 4] };
        let got: [u64; 4] = [r.next_u64(), r.next_u64(), r.next_u64(), r.next_u64()];
        assert_eq!(
            got,
            [11520, 0, 1509978240, 1215971899390074240],
            "xoshiro256** sequence"
        );
    }

    #[test]
    fn below_is_in_range_and_deterministic() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for n in [1u64, 2, 3, 10, 1000, u64::MAX] {
            for _ in 0..100 {
                let x = a.below(n);
                assert!(x < n);
                assert_eq!(x, b.below(n));
            }
        }
        assert_eq!(a.below(0), 0);
    }

    #[test]
    fn permutation_is_a_bijection() {
        for bits in [1u32, 2, 3, 7, 10, 13] {
            let p = Permutation::new(u64::from(bits), bits);
            let n = 1u64 << bits;
            let mut seen = vec![false; n as usize];
            for x in 0..n {
                let y = p.apply(x);
                assert!(y < n);
                assert!(!seen[y as usize]);
                seen[y as usize] = true;
                assert_eq!(p.invert(y), x);
            }
        }
        let p = Permutation::new(9, 64);
        let mut r = Rng::new(1);
        for _ in 0..1000 {
            let x = r.next_u64();
            assert_eq!(p.invert(p.apply(x)), x);
        }
        // Small inputs are scattered.
        let p = Permutation::new(3, 30);
        let top: u64 = (0..64)
            .map(|x| p.apply(x) >> 27)
            .fold(0, |acc, b| acc | 1 << b);
        assert_eq!(top, 0xff, "the first 64 ids land in all 8 eighths");
    }

    #[test]
    fn log_uniform_range() {
        let mut r = Rng::new(1);
        for bits in 1..=32 {
            for _ in 0..1000 {
                assert!(r.log_uniform(bits) < (1u64 << bits) - 1);
            }
        }
    }

    #[test]
    fn elementary_functions_match_std() {
        let mut r = Rng::new(3);
        for _ in 0..20_000 {
            let x = fm::exp((r.next_f64() - 0.5) * 80.0);
            let rel = |a: f64, b: f64| ((a - b) / b).abs();
            assert!(rel(fm::ln(x), x.ln()) < 1e-14 || (fm::ln(x) - x.ln()).abs() < 1e-15);
            let y = (r.next_f64() - 0.5) * 100.0;
            assert!(rel(fm::exp(y), y.exp()) < 1e-14, "exp({y})");
            let z = (r.next_f64() - 0.5) * 1e-3;
            assert!(rel(fm::ln_1p(z), z.ln_1p()) < 1e-14, "ln_1p({z})");
            assert!(rel(fm::exp_m1(z), z.exp_m1()) < 1e-14, "exp_m1({z})");
            let w = r.next_f64() * 3.0 - 0.9;
            assert!(rel(fm::ln_1p(w), w.ln_1p()) < 1e-13, "ln_1p({w})");
            assert!(rel(fm::exp_m1(w), w.exp_m1()) < 1e-13, "exp_m1({w})");
        }
        assert_eq!(fm::ln(1.0), 0.0);
        assert_eq!(fm::exp(0.0), 1.0);
        assert!(fm::exp(-744.0) > 0.0);
        assert!(fm::ln(5e-324).is_finite());
    }

    /// The sampler's frequencies match the exact Zipf probabilities.
    fn check_zipf(n: u64, s: f64, samples: usize) {
        let z = Zipf::new(n, s);
        let mut r = Rng::new(11);
        let norm: f64 = (1..=n).map(|k| (k as f64).powf(-s)).sum();
        let tracked = 2000.min(n) as usize;
        let mut counts = vec![0u64; tracked + 1];
        let mut beyond = 0u64;
        for _ in 0..samples {
            let k = z.sample(&mut r);
            assert!((1..=n).contains(&k));
            if (k as usize) <= tracked {
                counts[k as usize] += 1;
            } else {
                beyond += 1;
            }
        }
        for k in [1usize, 2, 3, 10, 100, 257, 300] {
            if k > tracked {
                continue;
            }
            // Compare over a window of ranks so the test has enough samples per check.
            let hi = (k + k / 4).min(tracked);
            let expect: f64 = (k..=hi).map(|i| (i as f64).powf(-s) / norm).sum();
            let got = counts[k..=hi].iter().sum::<u64>() as f64 / samples as f64;
            assert!(
                (got - expect).abs() < 0.05 * expect + 0.002,
                "n={n} s={s} ranks {k}..={hi}: got {got}, expected {expect}"
            );
        }
        let expect_beyond: f64 = ((tracked + 1) as u64..=n)
            .map(|i| (i as f64).powf(-s) / norm)
            .sum();
        let got_beyond = beyond as f64 / samples as f64;
        assert!(
            (got_beyond - expect_beyond).abs() < 0.01,
            "tail mass: {got_beyond} vs {expect_beyond}"
        );
    }

    #[test]
    fn zipf_matches_distribution() {
        check_zipf(1, 0.99, 1000);
        check_zipf(5, 0.99, 100_000);
        check_zipf(1000, 0.99, 200_000);
        check_zipf(1_000_000, 0.99, 200_000);
        check_zipf(100_000, 1.0, 200_000);
        check_zipf(100_000, 1.3, 200_000);
        check_zipf(100_000, 0.5, 200_000);
    }
}
