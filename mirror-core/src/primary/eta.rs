//! A job's estimated time to completion: the bytes it has left divided by its recent rate,
//! smoothed so a pause for the foreground does not make the estimate jump.
//!
//! The rate is an exponentially weighted mean of the rate between samples at least
//! [`SAMPLE`] apart, with time constant [`SMOOTHING`]. Invariant: no estimate until a rate
//! was measured, zero once nothing is left, never negative.
//!
//! Time is passed in, so the estimator is deterministic and tested without sleeping.

use std::time::Duration;

/// Shortest interval between two rate samples.
const SAMPLE: Duration = Duration::from_millis(200);
/// Time constant of the smoothing.
const SMOOTHING: Duration = Duration::from_secs(3);

/// Progress and rate of one job, in bytes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Eta {
    total: u64,
    done: u64,
    /// Bytes/s, smoothed; None before the first sample.
    rate: Option<f64>,
    /// The last sample: when, and `done` then.
    sampled: Option<(Duration, u64)>,
}

impl Eta {
    /// A job with `total` bytes to go, starting at `now`.
    pub(crate) fn start(total: u64, now: Duration) -> Self {
        Eta {
            total,
            done: 0,
            rate: None,
            sampled: Some((now, 0)),
        }
    }

    /// Records `done` of `total` bytes at `now` (the total of a dirty-map resync grows as
    /// regions are taken).
    pub(crate) fn update(&mut self, done: u64, total: u64, now: Duration) {
        self.done = done;
        self.total = total.max(done);
        let Some((at, then)) = self.sampled else {
            self.sampled = Some((now, done));
            return;
        };
        let dt = now.saturating_sub(at);
        if dt < SAMPLE {
            return;
        }
        let sample = done.saturating_sub(then) as f64 / dt.as_secs_f64();
        let w = 1.0 - (-dt.as_secs_f64() / SMOOTHING.as_secs_f64()).exp();
        self.rate = Some(match self.rate {
            None => sample,
            Some(r) => r + w * (sample - r),
        });
        self.sampled = Some((now, done));
    }

    /// Marks the job finished.
    pub(crate) fn finish(&mut self) {
        self.done = self.total;
    }

    /// Marks the job stopped short: what was left stays, with no estimate.
    pub(crate) fn halt(&mut self) {
        self.rate = None;
        self.sampled = None;
    }

    /// Bytes left.
    pub(crate) fn remaining(&self) -> u64 {
        self.total - self.done
    }

    /// Seconds left at the recent rate; zero when nothing is left, None before a rate is
    /// known or while it is zero.
    pub(crate) fn seconds(&self) -> Option<f64> {
        let left = self.remaining();
        if left == 0 {
            return Some(0.0);
        }
        self.rate.filter(|r| *r > 0.0).map(|r| left as f64 / r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_estimate_is_what_is_left_at_the_recent_rate() {
        let mut e = Eta::start(1000 * MIB, Duration::ZERO);
        assert_eq!(e.seconds(), None, "no rate measured yet");
        // 100 MiB/s for two seconds.
        for i in 1..=10 {
            e.update(i * 20 * MIB, 1000 * MIB, Duration::from_millis(200 * i));
        }
        let s = e.seconds().unwrap();
        assert!((7.9..8.1).contains(&s), "{s}");
        assert_eq!(e.remaining(), 800 * MIB);
    }

    #[test]
    fn a_pause_moves_the_estimate_smoothly_and_it_ends_at_zero() {
        let mut e = Eta::start(1000 * MIB, Duration::ZERO);
        for i in 1..=10 {
            e.update(i * 20 * MIB, 1000 * MIB, Duration::from_millis(200 * i));
        }
        let before = e.seconds().unwrap();
        // Nothing for 200 ms: the rate sags, it does not collapse.
        e.update(200 * MIB, 1000 * MIB, Duration::from_millis(2200));
        let paused = e.seconds().unwrap();
        assert!(
            paused > before && paused < before * 1.2,
            "{before} → {paused}"
        );
        e.update(1000 * MIB, 1000 * MIB, Duration::from_millis(4000));
        assert_eq!(e.seconds(), Some(0.0));
        e.finish();
        assert_eq!(e.remaining(), 0);
    }

    #[test]
    fn a_growing_total_is_never_below_what_is_done() {
        let mut e = Eta::start(0, Duration::ZERO);
        e.update(10 * MIB, 4 * MIB, Duration::from_millis(300));
        assert_eq!(e.remaining(), 0);
        e.update(10 * MIB, 30 * MIB, Duration::from_millis(600));
        assert_eq!(e.remaining(), 20 * MIB);
        assert!(e.seconds().is_some_and(|s| s > 0.0));
    }
}
