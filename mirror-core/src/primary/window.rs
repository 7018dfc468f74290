//! How many chunks a tree compare keeps in descent at once: enough to cover the link's
//! bandwidth-delay product, measured while the job runs, never configured.
//!
//! By Little's law the chunks in flight must be the rate at which the local scan produces
//! them times the time a chunk waits on the peer (every round trip of its descent, with the
//! peer's reading and hashing). Both are measured: the wait as an average over resolved
//! chunks of the time between each request and its answer, the rate as chunks scanned per
//! second of scanning not held back by the window itself. The window is half as large again
//! as their product, so a loopback job keeps a few chunks in flight and a 50 ms link enough
//! that its round trips overlap, and a job pays its descent's round trips about once, not
//! once per window. Invariant: the size stays within [`Window::MIN`] and [`Window::MAX`],
//! which the secondary's leaf cache (288 chunks) covers, so a descent never finds its
//! chunk's leaves gone for want of room.
//!
//! The cap is 256 chunks (1 GiB of volume). Through the benchmark's 50 ms, 100 Mbit/s link a
//! descent waits about 0.45 s (five round trips, and the repairs queued ahead of its
//! requests); at 1 GiB/s of local scanning (256 chunks/s) that is 115 chunks, 170 with the
//! margin. Each chunk in descent costs its leaves on both sides (20 KiB for sha1); a cap of
//! 448 made the peak memory of `mirror serve` grow with the volume up to 2 GiB.

use std::time::{Duration, Instant};

pub(super) struct Window {
    started: Instant,
    /// Time the local scan stood still waiting for the window.
    held: Duration,
    scanned: u64,
    /// Average seconds a resolved chunk waited on the peer.
    wait: Option<f64>,
}

impl Window {
    pub(super) const MIN: usize = 16;
    /// The size until a chunk's wait is measured: the cap. Nothing else uses the link yet,
    /// and a request for a chunk's top level is 41 bytes. Started at 64 instead, a sync
    /// through the 50 ms link shipped the first 64 chunks' repairs, then left the link idle
    /// for about 0.15 s while the descents of the chunks after them went through their five
    /// round trips.
    pub(super) const FIRST: usize = Self::MAX;
    pub(super) const MAX: usize = 256;

    pub(super) fn new() -> Self {
        Window {
            started: Instant::now(),
            held: Duration::ZERO,
            scanned: 0,
            wait: None,
        }
    }

    /// One chunk scanned locally.
    pub(super) fn scanned(&mut self) {
        self.scanned += 1;
    }

    /// The local scan waited `d` for the window.
    pub(super) fn held(&mut self, d: Duration) {
        self.held += d;
    }

    /// A chunk resolved after waiting `d` on the peer in all.
    pub(super) fn resolved(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        self.wait = Some(match self.wait {
            None => s,
            Some(w) => w * 0.875 + s * 0.125,
        });
    }

    /// Chunks to keep in flight now.
    pub(super) fn size(&self) -> usize {
        let Some(wait) = self.wait else {
            return Self::FIRST;
        };
        let active = (self.started.elapsed().saturating_sub(self.held)).as_secs_f64();
        if active <= 0.0 || self.scanned == 0 {
            return Self::MIN;
        }
        let rate = self.scanned as f64 / active;
        let need = (1.5 * rate * wait).ceil() as usize;
        need.clamp(Self::MIN, Self::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_covers_rate_times_wait_within_its_bounds() {
        let mut w = Window::new();
        assert_eq!(w.size(), Window::FIRST);
        w.resolved(Duration::from_millis(200));
        for _ in 0..1000 {
            w.scanned();
        }
        // 1,000 chunks in well under a second, 200 ms each on the peer: the cap.
        assert_eq!(w.size(), Window::MAX);
        let mut lan = Window::new();
        lan.resolved(Duration::from_micros(100));
        lan.scanned();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(lan.size(), Window::MIN);
    }
}
