//! A small PRNG for backoff jitter (not for secrets: keys and tokens come from
//! the server, the WebSocket key from tungstenite).
//!
//! splitmix64, seeded once from the kernel's `getrandom`. The [`RandomSource`]
//! trait lets tests inject a scripted sequence.

/// Where jitter comes from. Tests pass a fake that returns chosen values.
pub trait RandomSource {
    fn next_u64(&mut self) -> u64;

    /// Uniform in `lo..=hi` (inclusive). The modulo bias is irrelevant for
    /// millisecond jitter.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        let span = hi - lo;
        if span == u64::MAX {
            return self.next_u64();
        }
        lo + self.next_u64() % (span + 1)
    }
}

/// splitmix64: one u64 of state, good enough statistics for jitter.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn seeded(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// Seed from `getrandom(2)`; falls back to time and pid when the syscall
    /// is unavailable (very old kernels), which is still fine for jitter.
    #[cfg(feature = "runner")]
    pub fn from_os() -> SplitMix64 {
        let seed = crate::sys::random_u64().unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            t ^ (u64::from(std::process::id()) << 32)
        });
        SplitMix64::seeded(seed)
    }
}

impl RandomSource for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn between_stays_in_bounds_and_spreads() {
        let mut r = SplitMix64::seeded(42);
        let mut seen_lo = false;
        let mut seen_hi = false;
        for _ in 0..10_000 {
            let v = r.between(10, 20);
            assert!((10..=20).contains(&v));
            seen_lo |= v == 10;
            seen_hi |= v == 20;
        }
        assert!(seen_lo && seen_hi);
        assert_eq!(r.between(5, 5), 5);
        assert_eq!(r.between(7, 3), 7);
    }

    #[test]
    fn os_seeds_differ() {
        let a = SplitMix64::from_os().next_u64();
        let b = SplitMix64::from_os().next_u64();
        assert_ne!(a, b);
    }
}
