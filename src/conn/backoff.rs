//! Reconnect policy (docs/protocol.md §8). Pure: no clock, no I/O; the
//! caller says when a failure happened and how long a connection stayed up,
//! and passes the random source, so tests can pin every draw.
//!
//! ```text
//! failure #   1    2    3    4      5      6      7       8       9 ...
//! wait      1s±10% (fast)    [1,2]s [1,4]s [1,8]s [1,16]s [1,32]s [1,60]s ...
//!                            └─ full jitter: uniform in [1 s, min(60 s, 2^n s)]
//! a connection that stayed up ≥ 30 s resets to failure #1
//! ```

use crate::rand::RandomSource;
use std::time::Duration;

/// Fast retries before the exponential phase.
pub const FAST_RETRIES: u32 = 3;
/// Centre of a fast retry.
pub const FAST_DELAY: Duration = Duration::from_secs(1);
/// Fast retries vary by ±10 % so a fleet does not reconnect in lockstep.
pub const FAST_JITTER_PERCENT: u64 = 10;
/// Lower bound of every exponential wait.
pub const MIN_DELAY: Duration = Duration::from_secs(1);
/// Upper bound of every wait.
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// A connection that stayed up this long resets the policy to fast retries.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);
/// "Retry slowly" (close 4003, no protocol version in common): a newer
/// server will not appear in seconds, so wait [30 s, 60 s].
pub const SLOW_MIN: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Default)]
pub struct Backoff {
    /// Consecutive failures since the last reset.
    failures: u32,
}

impl Backoff {
    pub fn new() -> Backoff {
        Backoff::default()
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Back to the fast phase.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// A connection that had reached "connected" ended after `up_for`.
    /// Only a stable one resets the policy: a server that accepts and drops
    /// at once must not turn into a fast reconnect loop.
    pub fn connection_ended(&mut self, up_for: Duration) {
        if up_for >= STABLE_AFTER {
            self.reset();
        }
    }

    /// Record a failure and draw how long to wait before the next attempt.
    pub fn next_delay(&mut self, rng: &mut dyn RandomSource) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let (lo, hi) = bounds(self.failures);
        Duration::from_millis(rng.between(lo.as_millis() as u64, hi.as_millis() as u64))
    }

    /// Record a failure that calls for slow retries (no protocol version in
    /// common): the wait is drawn from [30 s, 60 s].
    pub fn slow_delay(&mut self, rng: &mut dyn RandomSource) -> Duration {
        self.failures = self.failures.saturating_add(1);
        Duration::from_millis(
            rng.between(SLOW_MIN.as_millis() as u64, MAX_DELAY.as_millis() as u64),
        )
    }
}

/// The range a wait after the `failure`-th consecutive failure (1-based) is
/// drawn from.
pub fn bounds(failure: u32) -> (Duration, Duration) {
    let failure = failure.max(1);
    if failure <= FAST_RETRIES {
        let jitter = FAST_DELAY * FAST_JITTER_PERCENT as u32 / 100;
        return (FAST_DELAY - jitter, FAST_DELAY + jitter);
    }
    let n = failure - FAST_RETRIES; // 1, 2, 3, ...
    let cap = if n >= 6 {
        MAX_DELAY
    } else {
        Duration::from_secs(1 << n).min(MAX_DELAY)
    };
    (MIN_DELAY, cap)
}

/// The most connection attempts the policy allows within `window`, assuming
/// every attempt fails instantly and every wait is drawn at its minimum.
/// Counts the attempt at the very start of the window too, so an outage of
/// length `window` can never see more attempts than this.
pub fn max_attempts_within(window: Duration) -> u32 {
    let mut attempts = 1u32;
    let mut elapsed = Duration::ZERO;
    let mut failure = 1u32;
    loop {
        elapsed += bounds(failure).0;
        if elapsed > window {
            return attempts;
        }
        attempts += 1;
        failure += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rand::SplitMix64;

    /// Always returns the same value: 0 draws the minimum, u64::MAX-ish the max.
    struct Fixed(u64);
    impl RandomSource for Fixed {
        fn next_u64(&mut self) -> u64 {
            self.0
        }
    }

    struct Max;
    impl RandomSource for Max {
        fn next_u64(&mut self) -> u64 {
            u64::MAX
        }
        fn between(&mut self, _lo: u64, hi: u64) -> u64 {
            hi
        }
    }

    #[test]
    fn three_fast_retries_then_exponential_capped_at_60s() {
        let want = [
            (900, 1100),
            (900, 1100),
            (900, 1100),
            (1000, 2000),
            (1000, 4000),
            (1000, 8000),
            (1000, 16000),
            (1000, 32000),
            (1000, 60000),
            (1000, 60000),
        ];
        for (i, (lo, hi)) in want.iter().enumerate() {
            let (l, h) = bounds(i as u32 + 1);
            assert_eq!(
                (l.as_millis() as u64, h.as_millis() as u64),
                (*lo, *hi),
                "failure {}",
                i + 1
            );
        }
        assert_eq!(bounds(u32::MAX).1, MAX_DELAY);
    }

    #[test]
    fn draws_stay_within_bounds() {
        let mut b = Backoff::new();
        let mut lo = Fixed(0);
        let mut hi = Max;
        for i in 1..=40u32 {
            let (l, h) = bounds(i);
            let mut probe = b.clone();
            assert_eq!(probe.next_delay(&mut lo), l);
            let mut probe = b.clone();
            assert_eq!(probe.next_delay(&mut hi), h);
            b.next_delay(&mut lo);
        }
        assert_eq!(b.failures(), 40);
    }

    #[test]
    fn jitter_spreads_over_the_whole_range() {
        let mut rng = SplitMix64::seeded(7);
        // Fast phase: ±10 % around 1 s.
        let fast: Vec<u64> = (0..2000)
            .map(|_| Backoff::new().next_delay(&mut rng).as_millis() as u64)
            .collect();
        assert!(fast.iter().all(|&d| (900..=1100).contains(&d)));
        assert!(fast.iter().any(|&d| d < 920) && fast.iter().any(|&d| d > 1080));
        // Deep exponential phase: full jitter over [1 s, 60 s].
        let mut deep = Backoff::new();
        for _ in 0..20 {
            deep.next_delay(&mut rng);
        }
        let draws: Vec<u64> = (0..2000)
            .map(|_| deep.clone().next_delay(&mut rng).as_millis() as u64)
            .collect();
        assert!(draws.iter().all(|&d| (1000..=60000).contains(&d)));
        assert!(draws.iter().any(|&d| d < 5000) && draws.iter().any(|&d| d > 55000));
    }

    #[test]
    fn stable_connection_resets_short_one_does_not() {
        let mut rng = Fixed(0);
        let mut b = Backoff::new();
        for _ in 0..6 {
            b.next_delay(&mut rng);
        }
        b.connection_ended(Duration::from_secs(29));
        assert_eq!(b.failures(), 6);
        b.connection_ended(STABLE_AFTER);
        assert_eq!(b.failures(), 0);
        assert_eq!(b.next_delay(&mut Max), Duration::from_millis(1100));
    }

    #[test]
    fn slow_delay_is_slow() {
        let mut b = Backoff::new();
        assert_eq!(b.slow_delay(&mut Fixed(0)), SLOW_MIN);
        assert_eq!(b.slow_delay(&mut Max), MAX_DELAY);
        assert_eq!(b.failures(), 2);
    }

    #[test]
    fn max_attempts_matches_a_simulated_worst_case() {
        assert_eq!(max_attempts_within(Duration::ZERO), 1);
        assert_eq!(max_attempts_within(Duration::from_millis(899)), 1);
        assert_eq!(max_attempts_within(Duration::from_millis(900)), 2);
        assert_eq!(max_attempts_within(Duration::from_millis(2700)), 4);
        assert_eq!(max_attempts_within(Duration::from_millis(3699)), 4);
        assert_eq!(max_attempts_within(Duration::from_millis(3700)), 5);
        // 60 s: 1 + 3 fast + 57 one-second waits.
        assert_eq!(max_attempts_within(Duration::from_secs(60)), 61);

        // Any random run of the real policy stays at or under the bound.
        let mut rng = SplitMix64::seeded(99);
        for window_s in [1u64, 5, 10, 30, 120] {
            let window = Duration::from_secs(window_s);
            for _ in 0..200 {
                let mut b = Backoff::new();
                let mut t = Duration::ZERO;
                let mut attempts = 1;
                loop {
                    t += b.next_delay(&mut rng);
                    if t > window {
                        break;
                    }
                    attempts += 1;
                }
                assert!(
                    attempts <= max_attempts_within(window),
                    "{attempts} in {window_s}s"
                );
            }
        }
    }

    #[test]
    fn never_a_tight_loop() {
        let mut b = Backoff::new();
        for _ in 0..1000 {
            assert!(b.next_delay(&mut Fixed(0)) >= Duration::from_millis(900));
        }
    }
}
