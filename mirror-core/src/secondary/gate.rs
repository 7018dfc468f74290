//! Admission of connections before they authenticate: what a stranger can cost the secondary.
//!
//! Invariants:
//! - At most `max_handshakes` connections are in handshake at once. A real primary speaks
//!   first and at once (its TLS ClientHello, or its Hello, is queued by the time it is
//!   accepted: "eager"); a flood's idle or dripping connection has said nothing. Past the cap
//!   an eager newcomer evicts the oldest silent connection, or else the oldest eager one that
//!   has had `min_age` to finish; a silent newcomer only evicts a silent connection older than
//!   `min_age`, and is refused otherwise. So a flood of idle or slow connections, however
//!   fast it reconnects, cannot lock a real primary out, and the descriptors and threads it
//!   holds stay bounded.
//! - No handshake outlives `deadline` (the accept loop shuts overdue ones down), however
//!   slowly its peer drips bytes.
//! - At most `max_sessions` authenticated connections at once.
//! - Warnings about refused or failed handshakes are rate-limited: a flood cannot flood the
//!   log either.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Limits on connections before and after authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Whole-handshake deadline (TLS, version, secret, volume check).
    pub handshake_timeout: Duration,
    /// Connections in handshake at once.
    pub max_handshakes: usize,
    /// Authenticated connections at once.
    pub max_sessions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: 64,
            max_sessions: 4,
        }
    }
}

/// Bookkeeping of connections in handshake and of sessions.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Connection id → when it was accepted and whether it was eager. Ids grow with time, so
    /// the first is the oldest.
    handshaking: BTreeMap<u64, (Instant, bool)>,
    sessions: usize,
}

/// What the accept loop must do with an accepted connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Admitted {
    /// Go ahead with the handshake, after shutting down `evicted` to make room.
    Yes {
        /// A connection evicted to make room.
        evicted: Option<u64>,
    },
    /// At the cap, and every connection in handshake is younger than `min_age`: close it.
    Refused,
}

impl Admission {
    /// Bookkeeping under `limits`.
    pub fn new(limits: Limits) -> Admission {
        Admission {
            limits,
            state: Mutex::new(State::default()),
        }
    }

    /// The limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// How long a connection in handshake is safe from eviction: a tenth of the deadline, at
    /// most a second.
    pub fn min_age(&self) -> Duration {
        (self.limits.handshake_timeout / 10).min(Duration::from_secs(1))
    }

    /// Registers connection `id` (`eager` when it had spoken by the time it was accepted) as
    /// in handshake; at the cap, evicts a connection as the module comment says, or refuses
    /// `id`.
    pub fn admit(&self, id: u64, now: Instant, eager: bool) -> Admitted {
        let mut s = lock(&self.state);
        let mut evicted = None;
        if s.handshaking.len() >= self.limits.max_handshakes.max(1) {
            let min_age = self.min_age();
            let old = |at: &Instant| now.saturating_duration_since(*at) >= min_age;
            let silent = s
                .handshaking
                .iter()
                .find(|(_, (at, e))| !e && (eager || old(at)));
            let victim = match silent {
                Some((&v, _)) => Some(v),
                None if eager => s
                    .handshaking
                    .iter()
                    .find(|(_, (at, _))| old(at))
                    .map(|(&v, _)| v),
                None => None,
            };
            match victim {
                Some(v) => {
                    s.handshaking.remove(&v);
                    evicted = Some(v);
                }
                None => return Admitted::Refused,
            }
        }
        s.handshaking.insert(id, (now, eager));
        Admitted::Yes { evicted }
    }

    /// The oldest silent connection in handshake (else the oldest), removed: shed to free a
    /// descriptor.
    pub fn shed_oldest(&self) -> Option<u64> {
        let mut s = lock(&self.state);
        let id = s
            .handshaking
            .iter()
            .find(|(_, (_, eager))| !eager)
            .or_else(|| s.handshaking.iter().next())
            .map(|(&id, _)| id)?;
        s.handshaking.remove(&id);
        Some(id)
    }

    /// Connections whose handshake is past the deadline at `now`, removed from the books.
    pub fn overdue(&self, now: Instant) -> Vec<u64> {
        let mut s = lock(&self.state);
        let t = self.limits.handshake_timeout;
        let late: Vec<u64> = s
            .handshaking
            .iter()
            .filter(|(_, (at, _))| now.saturating_duration_since(*at) >= t)
            .map(|(&id, _)| id)
            .collect();
        for id in &late {
            s.handshaking.remove(id);
        }
        late
    }

    /// Connections in handshake now.
    pub fn handshaking(&self) -> usize {
        lock(&self.state).handshaking.len()
    }

    /// Sessions now.
    pub fn sessions(&self) -> usize {
        lock(&self.state).sessions
    }

    /// Connection `id` authenticated: it leaves the handshake books and becomes a session,
    /// unless that would pass the cap on sessions (`None`), or the deadline already took it.
    pub fn authenticated(self: &Arc<Self>, id: u64) -> Option<SessionSlot> {
        let mut s = lock(&self.state);
        s.handshaking.remove(&id)?;
        if s.sessions >= self.limits.max_sessions.max(1) {
            return None;
        }
        s.sessions += 1;
        Some(SessionSlot {
            admission: self.clone(),
        })
    }

    /// Connection `id` ended (its handshake failed, or it was refused).
    pub fn finished(&self, id: u64) {
        lock(&self.state).handshaking.remove(&id);
    }
}

/// A session's place under the cap; given back on drop.
#[derive(Debug)]
pub struct SessionSlot {
    admission: Arc<Admission>,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut s = lock(&self.admission.state);
        s.sessions = s.sessions.saturating_sub(1);
    }
}

/// At most `burst` events per `window`; tells how many were suppressed since the last one let
/// through.
#[derive(Debug)]
pub struct RateLimit {
    window: Duration,
    burst: u32,
    state: Mutex<(Option<Instant>, u32, u64)>,
}

impl RateLimit {
    /// `burst` events per `window`.
    pub fn new(burst: u32, window: Duration) -> RateLimit {
        RateLimit {
            window,
            burst,
            state: Mutex::new((None, 0, 0)),
        }
    }

    /// `Some(suppressed)` when this event may be logged (with how many were not since the
    /// last one that was), `None` when it must not.
    pub fn check(&self, now: Instant) -> Option<u64> {
        let mut s = lock(&self.state);
        let (start, count, suppressed) = &mut *s;
        if start.is_none_or(|t| now.duration_since(t) >= self.window) {
            *start = Some(now);
            *count = 0;
        }
        if *count < self.burst {
            *count += 1;
            Some(std::mem::take(suppressed))
        } else {
            *suppressed += 1;
            None
        }
    }
}

/// Pause of the accept loop after it failed for lack of descriptors or memory: doubles from
/// 10 ms to 1 s while failures continue, back to the start after a success.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Self::FIRST }
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    /// The pause to take now.
    pub fn failed(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        d
    }

    /// An accept succeeded.
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// True for accept errors that mean "out of descriptors or memory": back off, do not spin.
pub fn is_resource_exhaustion(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        Errno::from_io_error(e),
        Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(h: usize, s: usize) -> Limits {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: h,
            max_sessions: s,
        }
    }

    #[test]
    fn past_the_cap_a_silent_newcomer_evicts_only_an_old_silent_connection() {
        let a = Admission::new(limits(3, 4));
        assert_eq!(a.min_age(), Duration::from_secs(1));
        let t = Instant::now();
        let yes = |evicted| Admitted::Yes { evicted };
        for id in 1..=3 {
            assert_eq!(a.admit(id, t, false), yes(None));
        }
        // Everyone in handshake is young: a silent newcomer is refused, nobody evicted.
        assert_eq!(
            a.admit(4, t + Duration::from_millis(500), false),
            Admitted::Refused
        );
        let later = t + Duration::from_secs(2);
        assert_eq!(a.admit(5, later, false), yes(Some(1)));
        assert_eq!(a.admit(6, later, false), yes(Some(2)));
        assert_eq!(a.admit(7, later, false), yes(Some(3)));
        // 5, 6 and 7 just got in: they are safe from silent newcomers for min_age.
        assert_eq!(a.admit(8, later, false), Admitted::Refused);
        assert_eq!(a.handshaking(), 3);
        a.finished(6);
        assert_eq!(a.admit(9, later, false), yes(None));
        assert_eq!(a.shed_oldest(), Some(5));
    }

    #[test]
    fn an_eager_newcomer_gets_in_past_a_flood_of_young_silent_connections() {
        let a = Admission::new(limits(3, 4));
        let t = Instant::now();
        for id in 1..=3 {
            a.admit(id, t, false);
        }
        // The flood reconnects so fast that every silent slot is young: a real primary,
        // which spoke first, still gets in, evicting the oldest silent connection.
        assert_eq!(a.admit(4, t, true), Admitted::Yes { evicted: Some(1) });
        assert_eq!(a.admit(5, t, true), Admitted::Yes { evicted: Some(2) });
        assert_eq!(a.admit(6, t, true), Admitted::Yes { evicted: Some(3) });
        // Only eager ones left, all young: a silent or an eager newcomer is refused...
        assert_eq!(a.admit(7, t, false), Admitted::Refused);
        assert_eq!(a.admit(8, t, true), Admitted::Refused);
        // ...until the oldest eager one has had min_age to finish.
        let later = t + Duration::from_secs(1);
        assert_eq!(a.admit(9, later, true), Admitted::Yes { evicted: Some(4) });
        assert_eq!(a.admit(10, later, false), Admitted::Refused);
    }

    #[test]
    fn handshakes_past_the_deadline_are_overdue_exactly_once() {
        let a = Admission::new(limits(64, 4));
        let t = Instant::now();
        a.admit(1, t, false);
        a.admit(2, t + Duration::from_secs(5), true);
        assert!(a.overdue(t + Duration::from_secs(9)).is_empty());
        assert_eq!(a.overdue(t + Duration::from_secs(10)), vec![1]);
        assert!(a.overdue(t + Duration::from_secs(11)).is_empty());
        assert_eq!(a.overdue(t + Duration::from_secs(15)), vec![2]);
        assert_eq!(a.handshaking(), 0);
    }

    #[test]
    fn sessions_are_capped_and_slots_come_back_on_drop() {
        let a = Arc::new(Admission::new(limits(64, 2)));
        let t = Instant::now();
        for id in 1..=4 {
            a.admit(id, t, true);
        }
        let s1 = a.authenticated(1).unwrap();
        let _s2 = a.authenticated(2).unwrap();
        assert!(
            a.authenticated(3).is_none(),
            "a third session passes the cap"
        );
        assert_eq!(a.sessions(), 2);
        drop(s1);
        assert!(a.authenticated(4).is_some());
        // A connection the deadline already shut down does not become a session.
        a.admit(5, t, true);
        a.overdue(t + Duration::from_secs(60));
        assert!(a.authenticated(5).is_none());
    }

    #[test]
    fn rate_limit_lets_a_burst_through_per_window_and_counts_the_rest() {
        let r = RateLimit::new(2, Duration::from_secs(10));
        let t = Instant::now();
        assert_eq!(r.check(t), Some(0));
        assert_eq!(r.check(t), Some(0));
        assert_eq!(r.check(t), None);
        assert_eq!(r.check(t + Duration::from_secs(1)), None);
        assert_eq!(r.check(t + Duration::from_secs(10)), Some(2));
    }

    #[test]
    fn backoff_doubles_to_a_second_and_resets() {
        let mut b = Backoff::default();
        let ds: Vec<_> = (0..9).map(|_| b.failed().as_millis()).collect();
        assert_eq!(ds, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.reset();
        assert_eq!(b.failed().as_millis(), 10);
        assert!(is_resource_exhaustion(&std::io::Error::from_raw_os_error(
            24
        )));
        assert!(!is_resource_exhaustion(&std::io::Error::from_raw_os_error(
            104
        )));
    }
}
