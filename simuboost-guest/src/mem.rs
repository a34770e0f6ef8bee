//! `memcpy`, `memmove` and `memset` for the guest.
//!
//! `compiler_builtins` provides them for bare-metal targets, but as `rep movsb`/`rep movsq`/
//! `rep movsb` (and `rep stos` likewise): each `rep` costs tens of cycles to start, which
//! dominates the many short copies real code makes (`build` copies tokens of a few bytes: with
//! those routines preloaded into the host baseline it ran 2–3× slower, as slow as in the VM).
//! Like glibc's: short sizes as two overlapping loads and stores, medium ones in 16-byte SSE
//! chunks, long ones with `rep movsb`/`rep stosb`, which is fast for long runs (ERMSB). The
//! crate is `#![no_builtins]`, so the compiler does not turn these loops back into calls to
//! themselves. Strong definitions: they take precedence over `compiler_builtins`' weak ones.

use core::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_set1_epi8, _mm_storeu_si128};

/// From this size on, `rep movsb`/`rep stosb` (glibc's default threshold).
const REP_THRESHOLD: usize = 2048;

/// Copies `n <= 32` bytes; reads everything before writing, so the ranges may overlap.
#[inline(always)]
unsafe fn copy_short(d: *mut u8, s: *const u8, n: usize) {
    // SAFETY (all branches): the caller guarantees `n` readable bytes at `s` and writable at
    // `d`; every access below lies within them (unaligned accesses are allowed on x86).
    unsafe {
        if n >= 16 {
            let a = _mm_loadu_si128(s.cast::<__m128i>());
            let b = _mm_loadu_si128(s.add(n - 16).cast::<__m128i>());
            _mm_storeu_si128(d.cast::<__m128i>(), a);
            _mm_storeu_si128(d.add(n - 16).cast::<__m128i>(), b);
        } else if n >= 8 {
            let a = s.cast::<u64>().read_unaligned();
            let b = s.add(n - 8).cast::<u64>().read_unaligned();
            d.cast::<u64>().write_unaligned(a);
            d.add(n - 8).cast::<u64>().write_unaligned(b);
        } else if n >= 4 {
            let a = s.cast::<u32>().read_unaligned();
            let b = s.add(n - 4).cast::<u32>().read_unaligned();
            d.cast::<u32>().write_unaligned(a);
            d.add(n - 4).cast::<u32>().write_unaligned(b);
        } else if n > 0 {
            let (a, b, c) = (*s, *s.add(n / 2), *s.add(n - 1));
            *d = a;
            *d.add(n / 2) = b;
            *d.add(n - 1) = c;
        }
    }
}

/// Copies `n > 32` bytes front to back in 16-byte chunks (safe for overlap when `d <= s`).
#[inline(always)]
unsafe fn copy_forward(d: *mut u8, s: *const u8, n: usize) {
    // SAFETY: as for `copy_short`; the last chunk is loaded first, before any store can change
    // it, and stored last (overlapping the previous chunk).
    unsafe {
        let tail = _mm_loadu_si128(s.add(n - 16).cast::<__m128i>());
        let mut i = 0;
        while i + 16 < n {
            let v = _mm_loadu_si128(s.add(i).cast::<__m128i>());
            _mm_storeu_si128(d.add(i).cast::<__m128i>(), v);
            i += 16;
        }
        _mm_storeu_si128(d.add(n - 16).cast::<__m128i>(), tail);
    }
}

/// Copies `n > 32` bytes back to front (for overlap when `d > s`).
#[inline(always)]
unsafe fn copy_backward(d: *mut u8, s: *const u8, n: usize) {
    // SAFETY: as for `copy_forward`, mirrored: the first chunk is loaded first, stored last.
    unsafe {
        let head = _mm_loadu_si128(s.cast::<__m128i>());
        let mut end = n;
        while end > 16 {
            let v = _mm_loadu_si128(s.add(end - 16).cast::<__m128i>());
            _mm_storeu_si128(d.add(end - 16).cast::<__m128i>(), v);
            end -= 16;
        }
        _mm_storeu_si128(d.cast::<__m128i>(), head);
    }
}

/// `rep movsb`: forward, byte by byte architecturally (so also right for overlap when `d < s`).
#[inline(always)]
unsafe fn rep_movsb(d: *mut u8, s: *const u8, n: usize) {
    // SAFETY: the caller guarantees the ranges; the direction flag is clear (ABI).
    unsafe {
        core::arch::asm!(
            "rep movsb",
            inout("rcx") n => _,
            inout("rdi") d => _,
            inout("rsi") s => _,
            options(nostack, preserves_flags)
        );
    }
}

/// # Safety
/// `n` bytes readable at `s`, writable at `d`, not overlapping (the C contract).
#[no_mangle]
pub unsafe extern "C" fn memcpy(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
    // SAFETY: forwarded contract.
    unsafe {
        if n <= 32 {
            copy_short(d, s, n);
        } else if n < REP_THRESHOLD {
            copy_forward(d, s, n);
        } else {
            rep_movsb(d, s, n);
        }
    }
    d
}

/// # Safety
/// `n` bytes readable at `s`, writable at `d` (they may overlap).
#[no_mangle]
pub unsafe extern "C" fn memmove(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
    // SAFETY: forwarded contract; each branch is correct for its kind of overlap.
    unsafe {
        if n <= 32 {
            copy_short(d, s, n);
        } else if (d as usize).wrapping_sub(s as usize) >= n {
            // `d` is below `s` or past the source's end: a forward copy reads each byte before
            // it is overwritten.
            if n < REP_THRESHOLD {
                copy_forward(d, s, n);
            } else {
                rep_movsb(d, s, n);
            }
        } else {
            copy_backward(d, s, n);
        }
    }
    d
}

/// # Safety
/// `n` bytes writable at `d`.
#[no_mangle]
pub unsafe extern "C" fn memset(d: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: every store lies within the `n` bytes at `d` (overlapping where `n` is not a
    // multiple of the store size).
    unsafe {
        let b = c as u8;
        if n < 16 {
            if n >= 8 {
                let v = u64::from(b) * 0x0101_0101_0101_0101;
                d.cast::<u64>().write_unaligned(v);
                d.add(n - 8).cast::<u64>().write_unaligned(v);
            } else if n >= 4 {
                let v = u32::from(b) * 0x0101_0101;
                d.cast::<u32>().write_unaligned(v);
                d.add(n - 4).cast::<u32>().write_unaligned(v);
            } else if n > 0 {
                *d = b;
                *d.add(n / 2) = b;
                *d.add(n - 1) = b;
            }
        } else if n < REP_THRESHOLD {
            let v = _mm_set1_epi8(b as i8);
            let mut i = 0;
            while i + 16 < n {
                _mm_storeu_si128(d.add(i).cast::<__m128i>(), v);
                i += 16;
            }
            _mm_storeu_si128(d.add(n - 16).cast::<__m128i>(), v);
        } else {
            core::arch::asm!(
                "rep stosb",
                inout("rcx") n => _,
                inout("rdi") d => _,
                in("al") b,
                options(nostack, preserves_flags)
            );
        }
    }
    d
}
