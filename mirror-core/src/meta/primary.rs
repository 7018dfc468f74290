//! The primary's side of the metadata: its identity, the generations it starts, the last
//! coherent sync, and the full-scan checkpoint.
//!
//! A primary starts a new generation (a random id, pushed onto its history) when a session
//! first attaches a secondary, and again at the first write it accepts after its link was
//! lost — the moment its data and the secondary's start to part (DRBD makes a new current
//! generation at the same moment).
//!
//! Invariant: a new generation is on disk before the handshake that announces it and before
//! the write that needed it proceeds, so a volume written as a primary apart from its peer
//! always says so — which is what lets a later handshake tell an older state of this volume
//! from a split brain.

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
    /// Whether the next write apart from the secondary must start a generation.
    fork: Mutex<Fork>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fork {
    /// No generation started by this session yet.
    NotStarted,
    /// The secondary follows the current generation.
    Following,
    /// The link was lost: the next write starts a generation.
    Apart,
    /// Written apart, in a generation of its own.
    Forked,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PrimaryMeta {
    /// Opens the record at `store` (or in memory, with `identity` when not zero).
    pub fn open(store: Option<MetaStore>, identity: u128) -> Result<PrimaryMeta> {
        let (mut rec, known) = match &store {
            Some(s) => s.load_or_create()?,
            None => (MetaRecord::fresh(), true),
        };
        if store.is_none() && identity != 0 {
            rec.identity = VolumeId(identity);
        }
        let previous = rec.current;
        Ok(PrimaryMeta {
            store,
            rec: Mutex::new(rec),
            previous,
            known,
            fork: Mutex::new(Fork::NotStarted),
        })
    }

    fn start_generation(&self) -> Result<GenId> {
        let g = GenId(VolumeId::random().0);
        self.update(|r| {
            r.advance(g);
            r.role = Role::Primary;
            r.consistent = true;
        })?;
        Ok(g)
    }

    /// Before a handshake: the generation to announce, started (durably) if this session has
    /// none yet.
    pub fn attach(&self) -> Result<Lineage> {
        let mut f = lock(&self.fork);
        if *f == Fork::NotStarted {
            self.start_generation()?;
        }
        *f = Fork::Following;
        drop(f);
        Ok(self.lineage())
    }

    /// The link to the secondary was lost: the next write apart from it starts a generation.
    pub fn detach(&self) {
        let mut f = lock(&self.fork);
        if *f == Fork::Following {
            *f = Fork::Apart;
        }
    }

    /// Before a write the secondary will not get in order (no link): starts a generation,
    /// durably, the first time since the link was lost.
    pub fn before_write_apart(&self) -> Result<()> {
        let mut f = lock(&self.fork);
        // From `Following` too: the link can die before the controller notices and detaches.
        if *f != Fork::Forked {
            self.start_generation()?;
            *f = Fork::Forked;
        }
        Ok(())
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
    fn generations_start_at_attach_and_at_the_first_write_apart_on_disk_first() {
        let d = tempfile::tempdir().unwrap();
        let store = MetaStore::new(d.path().join("p.mirror-meta"));
        let a = PrimaryMeta::open(Some(store.clone()), 0).unwrap();
        assert_eq!(a.previous(), None);
        let g1 = a.attach().unwrap().current;
        assert!(!g1.is_none());
        // Writes while following start nothing; a reconnect announces the same generation.
        assert_eq!(a.attach().unwrap().current, g1);
        a.detach();
        assert_eq!(a.attach().unwrap().current, g1, "no write apart, no fork");
        a.detach();
        a.before_write_apart().unwrap();
        let g2 = a.lineage().current;
        assert_ne!(g2, g1);
        a.before_write_apart().unwrap();
        assert_eq!(a.lineage().current, g2, "one fork per parting");
        let id = a.identity();
        drop(a);
        let b = PrimaryMeta::open(Some(store.clone()), 0).unwrap();
        assert_eq!(b.identity(), id);
        assert_eq!(b.previous(), Some(g2));
        assert_eq!(b.lineage().history, vec![g1]);
        match store.load() {
            super::super::Loaded::Valid(r) => assert_eq!(r.current, g2),
            other => panic!("{other:?}"),
        }
    }
}
