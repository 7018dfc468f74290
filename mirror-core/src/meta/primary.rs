//! The primary's side of the metadata: its identity, the generation each session starts, the
//! last coherent sync, and the full-scan checkpoint.
//!
//! Invariant: a primary session's generation is on disk before the session sends anything, so
//! a volume that was written as a primary always says so — which is what lets a later
//! handshake tell an older state of this volume from a split brain.

use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use super::history::Lineage;
use super::record::{Checkpoint, GenId, MetaRecord, Role, VolumeId};
use super::store::MetaStore;
use crate::units::Generation;
use crate::Result;

/// The primary's record and how it changes.
#[derive(Debug)]
pub struct PrimaryMeta {
    store: Option<MetaStore>,
    rec: Mutex<MetaRecord>,
    /// The generation the volume held before this session (`none` when unknown).
    previous: GenId,
    known: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PrimaryMeta {
    /// Opens the record at `store` (or in memory, with `identity` when not zero) and starts
    /// generation `session`, durably.
    pub fn open(store: Option<MetaStore>, session: u128, identity: u128) -> Result<PrimaryMeta> {
        let (mut rec, known) = match &store {
            Some(s) => s.load_or_create()?,
            None => (MetaRecord::fresh(), true),
        };
        if store.is_none() && identity != 0 {
            rec.identity = VolumeId(identity);
        }
        let previous = rec.current;
        rec.advance(GenId(session));
        rec.role = Role::Primary;
        rec.consistent = true;
        if let Some(s) = &store {
            s.save(&rec)?;
        }
        Ok(PrimaryMeta {
            store,
            rec: Mutex::new(rec),
            previous,
            known,
        })
    }

    /// The record's store, if on disk.
    pub fn store(&self) -> Option<&MetaStore> {
        self.store.as_ref()
    }

    /// A copy of the record.
    pub fn record(&self) -> MetaRecord {
        lock(&self.rec).clone()
    }

    /// The volume's identity.
    pub fn identity(&self) -> VolumeId {
        lock(&self.rec).identity
    }

    /// The generation before this session's, when the record was trusted.
    pub fn previous(&self) -> Option<GenId> {
        (self.known && !self.previous.is_none()).then_some(self.previous)
    }

    /// What the handshake says of this volume.
    pub fn lineage(&self) -> Lineage {
        let r = lock(&self.rec);
        Lineage {
            identity: r.identity,
            current: r.current,
            history: r.history.clone(),
            bound_to: r.bound_to,
        }
    }

    fn update(&self, f: impl FnOnce(&mut MetaRecord)) -> Result<()> {
        let mut rec = lock(&self.rec);
        let mut new = rec.clone();
        f(&mut new);
        if new == *rec {
            return Ok(());
        }
        if let Some(s) = &self.store {
            s.save(&new)?;
        }
        *rec = new;
        Ok(())
    }

    /// Records that the secondary `peer` (volume `peer_identity`) is coherent with generation
    /// `g`.
    pub fn coherent(&self, g: Generation, peer_identity: VolumeId, peer: &str) -> Result<()> {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.update(|r| {
            r.last_coherent = g;
            r.last_coherent_ms = ms;
            r.peer_identity = peer_identity;
            r.peer_addr = peer.to_owned();
            r.checkpoint = None;
        })
    }

    /// Records how far this session's full scan got (`None`: none under way).
    pub fn set_checkpoint(&self, c: Option<Checkpoint>) -> Result<()> {
        self.update(|r| r.checkpoint = c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_session_is_a_new_generation_on_disk_before_anything_is_sent() {
        let d = tempfile::tempdir().unwrap();
        let store = MetaStore::new(d.path().join("p.mirror-meta"));
        let a = PrimaryMeta::open(Some(store.clone()), 10, 0).unwrap();
        assert_eq!(a.previous(), None);
        let id = a.identity();
        drop(a);
        let b = PrimaryMeta::open(Some(store.clone()), 11, 0).unwrap();
        assert_eq!(b.identity(), id);
        assert_eq!(b.previous(), Some(GenId(10)));
        assert_eq!(b.lineage().history, vec![GenId(10)]);
        match store.load() {
            super::super::Loaded::Valid(r) => assert_eq!(r.current, GenId(11)),
            other => panic!("{other:?}"),
        }
    }
}
