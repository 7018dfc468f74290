//! The secondary's side of the metadata: admitting a primary's session, and marking the
//! volume consistent or not around a resync.
//!
//! Invariants:
//! - A primary is admitted only when [`relate`] allows it; a refusal writes nothing, to the
//!   record or the volume.
//! - The record says *inconsistent* durably before the first block of an out-of-order resync
//!   is applied ([`SecondaryMeta::before_repair`]), and *consistent* only after the barrier
//!   that ends the whole resync ([`SecondaryMeta::resync_done`]).
//! - Without a record path the record lives in memory only (a fresh identity per process), as
//!   a library caller without a file asked for.

use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{info, warn};

use super::history::{relate, Lineage, Relation, Resolution};
use super::record::{GenId, MetaRecord, Role, VolumeId};
use super::store::{Loaded, MetaStore};
use crate::units::Generation;
use crate::{Error, Result};

/// What a primary says of itself in its Open.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PrimaryClaim {
    /// Its volume's identity, generation and history.
    pub lineage: Lineage,
    /// What its operator allowed to be discarded.
    pub resolution: Resolution,
    /// The primary keeps no record: it cannot prove which volume it is, so it is admitted
    /// without binding checks and changes neither the binding nor the generations.
    pub ephemeral: bool,
}

/// What the secondary answers once it admitted a primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// The generation it was last attached to (zero when its data was discarded or unknown).
    pub last: Generation,
    /// Its own lineage before it took over the primary's.
    pub lineage: Lineage,
    /// Whether its data was a usable image when the primary arrived.
    pub consistent: bool,
    /// How it related to the primary.
    pub relation: Relation,
}

/// The secondary's record and how it changes.
#[derive(Debug)]
pub struct SecondaryMeta {
    store: Option<MetaStore>,
    rec: Mutex<MetaRecord>,
    /// False when the record on disk was absent-but-volume-used or not trusted.
    known: Mutex<bool>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SecondaryMeta {
    /// Opens the record at `store`, creating it when absent; `None` keeps it in memory.
    pub fn open(store: Option<MetaStore>) -> Result<SecondaryMeta> {
        let (rec, known) = match &store {
            Some(s) => s.load_or_create()?,
            None => (MetaRecord::fresh(), true),
        };
        if !rec.consistent {
            warn!(identity = %rec.identity, "secondary volume is not a consistent image: a resync was under way or its history is unknown");
        }
        Ok(SecondaryMeta {
            store,
            rec: Mutex::new(rec),
            known: Mutex::new(known),
        })
    }

    /// A copy of the record.
    pub fn record(&self) -> MetaRecord {
        lock(&self.rec).clone()
    }

    /// The volume's identity.
    pub fn identity(&self) -> VolumeId {
        lock(&self.rec).identity
    }

    /// Whether the volume is a usable image.
    pub fn consistent(&self) -> bool {
        lock(&self.rec).consistent
    }

    fn save(&self, rec: &MetaRecord) -> Result<()> {
        match &self.store {
            Some(s) => s.save(rec),
            None => Ok(()),
        }
    }

    /// Decides on a primary's Open and, when it is admitted, records it durably as the
    /// session this volume follows. A refusal is a [`Error::Mismatch`] naming both sides.
    pub fn admit(&self, claim: &PrimaryClaim, open: Generation, peer: &str) -> Result<Admission> {
        let mut rec = lock(&self.rec);
        let known = *lock(&self.known);
        let mine = Lineage {
            identity: rec.identity,
            current: rec.current,
            history: rec.history.clone(),
            bound_to: rec.bound_to,
        };
        if claim.ephemeral {
            let mut new = rec.clone();
            let last = rec.last_coherent;
            new.last_coherent = open;
            new.last_coherent_ms = now_ms();
            new.peer_addr = peer.to_owned();
            self.save(&new)?;
            let consistent = rec.consistent;
            *rec = new;
            return Ok(Admission {
                last,
                lineage: mine,
                consistent,
                relation: Relation::SameLine { at: GenId(0) },
            });
        }
        let relation = relate(&claim.lineage, known.then_some(&mine));
        if let Some(msg) = relation.refusal(&claim.lineage, &mine, claim.resolution) {
            warn!(%peer, "{msg}");
            return Err(Error::Mismatch(msg));
        }
        let discarded = !matches!(relation, Relation::SameLine { .. });
        let last = if discarded {
            Generation::default()
        } else {
            rec.last_coherent
        };
        let admission = Admission {
            last,
            lineage: mine,
            consistent: rec.consistent,
            relation: relation.clone(),
        };
        let mut new = rec.clone();
        new.role = Role::Secondary;
        new.bound_to = claim.lineage.identity;
        new.history = claim.lineage.history.clone();
        new.history.truncate(super::record::HISTORY_MAX);
        new.current = claim.lineage.current;
        new.last_coherent = open;
        new.last_coherent_ms = now_ms();
        new.peer_identity = claim.lineage.identity;
        new.peer_addr = peer.to_owned();
        if discarded {
            // Whatever the volume held is not of this line: not a usable image until the
            // full scan that follows has ended.
            new.consistent = false;
            new.checkpoint = None;
        }
        self.save(&new)?;
        match relation {
            Relation::Stranger { secondary_of } => {
                info!(%peer, previous = %secondary_of, primary = %claim.lineage.identity, "secondary adopted by another volume's primary: its data is discarded")
            }
            Relation::Diverged { common, .. } => {
                info!(%peer, %common, "split brain resolved in favour of the primary: the secondary's data is discarded")
            }
            _ => {}
        }
        *rec = new;
        *lock(&self.known) = true;
        Ok(admission)
    }

    /// Called before a resync block that is not in write order is applied: the volume stops
    /// being a usable image, durably, first.
    pub fn before_repair(&self) -> Result<()> {
        let mut rec = lock(&self.rec);
        if !rec.consistent {
            return Ok(());
        }
        let mut new = rec.clone();
        new.consistent = false;
        self.save(&new)?;
        *rec = new;
        info!("secondary marked inconsistent: a resync is under way");
        Ok(())
    }

    /// Called when the barrier that ends a whole resync was applied: the volume is a usable
    /// image again, of the generation it follows.
    pub fn resync_done(&self) -> Result<()> {
        let mut rec = lock(&self.rec);
        if rec.consistent {
            return Ok(());
        }
        let mut new = rec.clone();
        new.consistent = true;
        new.checkpoint = None;
        new.last_coherent_ms = now_ms();
        self.save(&new)?;
        *rec = new;
        info!("secondary marked consistent: the resync is complete");
        Ok(())
    }

    /// Called after a write or flush of the volume failed: what was written since the last
    /// successful flush may be gone, so the record no longer claims coherence with any primary
    /// session (the next one compares every block) and the volume is not a usable image. The
    /// record in memory changes even when saving it fails.
    pub fn forget_coherence(&self) -> Result<()> {
        let mut rec = lock(&self.rec);
        rec.last_coherent = Generation::default();
        rec.consistent = false;
        rec.checkpoint = None;
        let new = rec.clone();
        drop(rec);
        self.save(&new)
    }

    /// What the record on disk says now (for `mirror info` beside a running secondary).
    pub fn reload(&self) -> Loaded {
        match &self.store {
            Some(s) => s.load(),
            None => Loaded::Valid(self.record()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(id: u128, current: u128, history: &[u128]) -> PrimaryClaim {
        PrimaryClaim {
            lineage: Lineage {
                identity: VolumeId(id),
                current: GenId(current),
                history: history.iter().map(|g| GenId(*g)).collect(),
                bound_to: VolumeId(0),
            },
            resolution: Resolution::default(),
            ephemeral: false,
        }
    }

    fn gen(session: u128, epoch: u64) -> Generation {
        Generation { session, epoch }
    }

    #[test]
    fn binds_to_the_first_primary_and_refuses_another_writing_nothing() {
        let d = tempfile::tempdir().unwrap();
        let store = MetaStore::new(d.path().join("s.mirror-meta"));
        let m = SecondaryMeta::open(Some(store.clone())).unwrap();
        let a = m.admit(&claim(1, 10, &[]), gen(10, 1), "a").unwrap();
        assert_eq!(a.relation, Relation::Unbound);
        let before = std::fs::read(store.path()).unwrap();
        let e = m.admit(&claim(2, 20, &[]), gen(20, 1), "b").unwrap_err();
        assert!(e.to_string().contains("identity mismatch"), "{e}");
        assert_eq!(std::fs::read(store.path()).unwrap(), before);
        // A restart keeps the binding; the same primary's next session follows.
        drop(m);
        let m = SecondaryMeta::open(Some(store)).unwrap();
        let a = m.admit(&claim(1, 11, &[10]), gen(11, 1), "a").unwrap();
        assert_eq!(a.last, gen(10, 1));
    }

    #[test]
    fn marks_inconsistent_durably_before_repairs_and_consistent_after_the_resync() {
        let d = tempfile::tempdir().unwrap();
        let store = MetaStore::new(d.path().join("s.mirror-meta"));
        let m = SecondaryMeta::open(Some(store.clone())).unwrap();
        m.admit(&claim(1, 10, &[]), gen(10, 1), "a").unwrap();
        m.resync_done().unwrap();
        m.before_repair().unwrap();
        assert!(matches!(store.load(), Loaded::Valid(r) if !r.consistent));
        m.resync_done().unwrap();
        assert!(matches!(store.load(), Loaded::Valid(r) if r.consistent));
    }

    #[test]
    fn adopting_forgets_the_last_generation() {
        let m = SecondaryMeta::open(None).unwrap();
        m.admit(&claim(1, 10, &[]), gen(10, 3), "a").unwrap();
        let mut c = claim(2, 20, &[]);
        c.resolution.adopt = true;
        let a = m.admit(&c, gen(20, 1), "b").unwrap();
        assert_eq!(a.last, Generation::default());
        assert!(!m.consistent());
        assert_eq!(m.record().bound_to, VolumeId(2));
    }
}
