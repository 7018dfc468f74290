//! Retry pacing with exponential growth and jitter, for reconnects and failed resyncs.
//!
//! Invariant: while failures go on, successive delays grow (doubling, up to the cap) and are
//! spread by ±25 % jitter, so a failing secondary (a full disk, a broken link) sees neither a
//! reconnect storm nor peers retrying in lockstep; one success brings the delay back to its base.

use std::time::Duration;

/// Delays between retries of one thing.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    cap: Duration,
    next: Duration,
    failures: u32,
    rng: u64,
}

impl Backoff {
    /// Starts at `base`, doubles per failure, never past `cap`.
    pub(crate) fn new(base: Duration, cap: Duration) -> Self {
        let seed = u64::from_le_bytes(
            crate::auth::random_id().to_le_bytes()[..8]
                .try_into()
                .unwrap_or([1; 8]),
        );
        Backoff {
            base,
            cap,
            next: base,
            failures: 0,
            rng: seed | 1,
        }
    }

    /// The delay before the next attempt after a failure; the one after it is longer.
    pub(crate) fn fail(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let d = self.next;
        self.next = (self.next * 2).min(self.cap);
        // xorshift64 for the jitter: uniform enough, no lock, no syscall.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let spread = (self.rng % 501) as f64 / 1000.0 + 0.75; // 0.75 ..= 1.25
        d.mul_f64(spread)
    }

    /// Back to the base delay.
    pub(crate) fn succeed(&mut self) {
        self.next = self.base;
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_with_jitter_and_reset_on_success() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        let mut b = Backoff::new(base, cap);
        let mut seen = Vec::new();
        for _ in 0..10 {
            seen.push(b.fail());
        }
        assert!(seen[0] >= base.mul_f64(0.75) && seen[0] <= base.mul_f64(1.25));
        assert!(seen[4] > seen[0] * 4, "{seen:?}");
        assert!(seen.iter().all(|d| *d <= cap.mul_f64(1.25)), "{seen:?}");
        assert!(seen[9] >= cap.mul_f64(0.75), "{seen:?}");
        assert_eq!(b.failures, 10);
        b.succeed();
        assert!(b.fail() <= base.mul_f64(1.25));
        // Two retriers do not stay in lockstep.
        let mut a = Backoff::new(base, cap);
        let mut c = Backoff::new(base, cap);
        let differ = (0..8).any(|_| a.fail() != c.fail());
        assert!(differ);
    }
}
