//! The rate a resync or verify may read at, set by a controller in the spirit of DRBD's
//! (`c-plan-ahead`, `c-min-rate`, `c-max-rate`): the job yields to the application.
//!
//! Every [`TICK`] the controller looks at the foreground writes replicated since the last
//! tick. Any write seen: the limit drops to the floor at once (the job still progresses, so
//! a busy volume converges). A tick without writes: the limit grows fourfold while it still
//! made the job wait, and lifts to the ceiling as soon as it no longer did. A job that starts
//! within a tick of a foreground write starts at the floor and grows from there (reaching
//! 1 GiB/s from 4 MiB/s takes four quiet ticks), so a resync that starts beside running
//! writes does not take a tick's worth of the disks and the cores from them before the
//! controller has looked; one that starts on a quiet volume (a one-shot `mirror sync`,
//! whose primary has no writer at all) starts at the ceiling. The limit is
//! enforced as a token bucket of one tick's worth of bytes, so a change of limit takes
//! effect within a tick, and a waiting job is re-admitted in slices of at most a tick.
//!
//! Invariant: `floor ≤ limit ≤ ceiling` at every instant (the ceiling may be unbounded), and
//! with yielding off the limit is the ceiling.
//!
//! Time is passed in (a [`Duration`] since any fixed instant), so the controller is
//! deterministic and tested without sleeping.

use std::time::Duration;

/// The controller's interval: how often it looks at the foreground, and the bucket's depth.
pub(crate) const TICK: Duration = Duration::from_millis(50);

/// Growth of the limit per quiet tick while it still binds.
const GROWTH: f64 = 4.0;

const MIB: f64 = 1024.0 * 1024.0;

/// The controller of one job's read rate.
#[derive(Debug)]
pub(crate) struct ResyncThrottle {
    /// Bytes/s the job keeps under load.
    floor: f64,
    /// Bytes/s the job never exceeds (infinite: no limit).
    ceiling: f64,
    /// Whether foreground writes slow the job at all.
    yields: bool,
    /// Bytes/s the job may read at now.
    limit: f64,
    /// Start of the current tick.
    tick_start: Duration,
    /// Foreground writes counted at the start of the tick.
    writes_at_tick: u64,
    /// True when the limit made the job wait during the current tick.
    waited: bool,
    /// Bytes the bucket holds.
    credit: f64,
    /// When the bucket was last filled.
    filled_at: Duration,
}

impl ResyncThrottle {
    /// A controller keeping `floor_mib_s` MiB/s under load, never above `ceiling_mib_s`
    /// (None: unbounded); `yields` false keeps the job at the ceiling. `writes` is the
    /// foreground write count at `now`, and `last_write` when the last of them arrived (None:
    /// never), on the same clock.
    pub(crate) fn new(
        floor_mib_s: f64,
        ceiling_mib_s: Option<f64>,
        yields: bool,
        now: Duration,
        writes: u64,
        last_write: Option<Duration>,
    ) -> Self {
        let ceiling = ceiling_mib_s.map_or(f64::INFINITY, |c| c * MIB);
        let floor = (floor_mib_s * MIB).min(ceiling);
        let busy = last_write.is_some_and(|at| now.saturating_sub(at) < TICK);
        let limit = if yields && busy { floor } else { ceiling };
        ResyncThrottle {
            floor,
            ceiling,
            yields,
            limit,
            tick_start: now,
            writes_at_tick: writes,
            waited: false,
            // A tick's worth to start with: a small job does not wait at all.
            credit: limit.min(f64::MAX) * TICK.as_secs_f64(),
            filled_at: now,
        }
    }

    /// The limit now, bytes/s (infinite: none).
    #[cfg(test)]
    pub(crate) fn limit(&self) -> f64 {
        self.limit
    }

    /// Closes the tick when one has passed: `writes` is the foreground write count at `now`.
    pub(crate) fn observe(&mut self, now: Duration, writes: u64) {
        if now.saturating_sub(self.tick_start) < TICK {
            return;
        }
        let busy = writes != self.writes_at_tick;
        self.limit = if !self.yields {
            self.ceiling
        } else if busy {
            self.floor
        } else if self.waited {
            (self.limit * GROWTH).min(self.ceiling)
        } else {
            self.ceiling
        };
        self.tick_start = now;
        self.writes_at_tick = writes;
        self.waited = false;
    }

    /// Asks to read `owed` more bytes at `now`: takes what the bucket holds and returns
    /// None when all may go, or how long to wait before asking again for what is left
    /// (at most a tick, so a raised limit is seen soon).
    pub(crate) fn admit(&mut self, now: Duration, owed: &mut u64) -> Option<Duration> {
        if self.limit.is_infinite() {
            *owed = 0;
            self.credit = 0.0;
            self.filled_at = now;
            return None;
        }
        let elapsed = now.saturating_sub(self.filled_at).as_secs_f64();
        let depth = self.limit * TICK.as_secs_f64();
        self.credit = (self.credit + elapsed * self.limit).min(depth);
        self.filled_at = now;
        let want = *owed as f64;
        if self.credit >= want {
            self.credit -= want;
            *owed = 0;
            return None;
        }
        *owed -= self.credit as u64;
        self.credit -= self.credit.floor();
        self.waited = true;
        let wait = Duration::from_secs_f64(*owed as f64 / self.limit);
        Some(wait.clamp(Duration::from_millis(1), TICK))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a job that always has `chunk` bytes to read against `t` for `ticks` ticks of
    /// simulated time, with `writes_per_tick` foreground writes each tick; returns the limit
    /// seen at each tick's end and the bytes admitted.
    fn drive(
        t: &mut ResyncThrottle,
        clock: &mut Duration,
        writes: &mut u64,
        ticks: u32,
        writes_per_tick: u64,
    ) -> (Vec<f64>, u64) {
        let step = Duration::from_millis(5);
        let chunk = 1 << 20;
        let mut limits = Vec::new();
        let mut admitted = 0;
        let mut owed = chunk;
        for _ in 0..ticks {
            *writes += writes_per_tick;
            let end = *clock + TICK;
            while *clock < end {
                t.observe(*clock, *writes);
                match t.admit(*clock, &mut owed) {
                    None => {
                        admitted += chunk;
                        owed = chunk;
                    }
                    Some(wait) => *clock += wait.min(step),
                }
                *clock += Duration::from_micros(100);
            }
            t.observe(*clock, *writes);
            limits.push(t.limit());
        }
        (limits, admitted)
    }

    #[test]
    fn foreground_writes_drop_the_limit_to_the_floor_and_never_below() {
        let mut clock = Duration::ZERO;
        let mut writes = 0;
        let mut t = ResyncThrottle::new(4.0, Some(400.0), true, clock, writes, Some(clock));
        // A job started within a tick of a write starts at the floor.
        assert_eq!(t.limit(), 4.0 * MIB);
        let (limits, admitted) = drive(&mut t, &mut clock, &mut writes, 40, 3);
        assert!(limits.iter().all(|&l| l >= 4.0 * MIB), "{limits:?}");
        assert_eq!(*limits.last().unwrap(), 4.0 * MIB);
        // Two seconds at the floor: about 8 MiB.
        let mib = admitted as f64 / MIB;
        assert!((6.0..=10.0).contains(&mib), "admitted {mib} MiB under load");
    }

    #[test]
    fn a_job_on_a_quiet_volume_starts_at_the_ceiling_and_yields_once_writes_come() {
        let mut clock = Duration::from_secs(5);
        let mut writes = 9;
        for last_write in [None, Some(clock - 2 * TICK)] {
            let mut t = ResyncThrottle::new(4.0, Some(400.0), true, clock, writes, last_write);
            assert_eq!(t.limit(), 400.0 * MIB, "last write {last_write:?}");
            let (limits, _) = drive(&mut t, &mut clock, &mut writes, 1, 2);
            assert_eq!(limits[0], 4.0 * MIB, "writes within the first tick");
        }
    }

    #[test]
    fn a_quiet_foreground_lets_the_job_recover_to_the_ceiling() {
        let mut clock = Duration::ZERO;
        let mut writes = 0;
        let mut t = ResyncThrottle::new(4.0, Some(400.0), true, clock, writes, Some(clock));
        drive(&mut t, &mut clock, &mut writes, 10, 1);
        assert_eq!(t.limit(), 4.0 * MIB);
        let (limits, _) = drive(&mut t, &mut clock, &mut writes, 10, 0);
        // Growing at once, reaching the ceiling within a handful of ticks, never past it.
        assert!(limits[0] > 4.0 * MIB, "{limits:?}");
        assert!(limits[0] < 400.0 * MIB, "{limits:?}");
        assert!(limits.windows(2).all(|w| w[1] >= w[0]), "{limits:?}");
        assert!(limits.iter().all(|&l| l <= 400.0 * MIB));
        assert_eq!(limits[5], 400.0 * MIB, "{limits:?}");
        // Load again: back to the floor within one tick.
        let (limits, _) = drive(&mut t, &mut clock, &mut writes, 1, 2);
        assert_eq!(limits[0], 4.0 * MIB);
    }

    #[test]
    fn an_unbounded_job_with_nothing_to_wait_for_lifts_at_once() {
        let mut clock = Duration::ZERO;
        let mut writes = 0;
        let mut t = ResyncThrottle::new(8.0, None, true, clock, writes, Some(clock));
        assert_eq!(t.limit(), 8.0 * MIB);
        drive(&mut t, &mut clock, &mut writes, 3, 5);
        assert_eq!(t.limit(), 8.0 * MIB);
        // Quiet, and the job not reading (it waits on the peer): once a whole tick passed in
        // which the limit did not bind, it lifts.
        for _ in 0..2 {
            clock += TICK;
            t.observe(clock, writes);
        }
        assert!(t.limit().is_infinite());
    }

    #[test]
    fn without_yielding_the_limit_stays_at_the_ceiling() {
        let mut clock = Duration::ZERO;
        let mut writes = 0;
        let mut t = ResyncThrottle::new(4.0, Some(100.0), false, clock, writes, Some(clock));
        let (limits, admitted) = drive(&mut t, &mut clock, &mut writes, 20, 7);
        assert!(limits.iter().all(|&l| l == 100.0 * MIB), "{limits:?}");
        // One second at 100 MiB/s.
        let mib = admitted as f64 / MIB;
        assert!((80.0..=110.0).contains(&mib), "admitted {mib} MiB");
    }

    #[test]
    fn a_floor_above_the_ceiling_is_held_to_the_ceiling() {
        let mut t = ResyncThrottle::new(
            50.0,
            Some(10.0),
            true,
            Duration::ZERO,
            0,
            Some(Duration::ZERO),
        );
        t.observe(TICK, 1);
        assert_eq!(t.limit(), 10.0 * MIB);
    }
}
