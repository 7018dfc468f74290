//! The primary's durable state and what the controller asks of it: the metadata record
//! (identity, generations, last coherent sync), the optional write-intent map, and the
//! checkpoint of an interrupted full scan.
//!
//! Invariants:
//! - A write apart from the secondary (no link) starts a new generation on disk before it
//!   proceeds ([`PrimaryState::before_write`]), so a later handshake can tell a split brain.
//! - With the write-intent map, a write's chunk bit is durable before the write proceeds and
//!   is cleared only when the chunk has no write in flight, no dirty region, and the link has
//!   no write unacknowledged ([`PrimaryState::tick`]); the bits are trusted after a crash only
//!   for the session they name, and only while that session's dirty map was valid.
//! - A full scan's checkpoint advances only past blocks whose comparison finished; what was
//!   shipped and not acknowledged at a link loss is in the dirty map, which the resumed scan's
//!   dirty passes cover.

use std::sync::{Mutex, MutexGuard};

use tracing::{info, warn};

use super::conn::{Conn, PendingKind, Waiter};
use super::Inner;
use crate::config::PrimaryConfig;
use crate::dirty::DirtyMap;
use crate::meta::intent::Recovered;
use crate::meta::{relate, Checkpoint, IntentMap, Lineage, MetaStore, PrimaryMeta, VolumeId};
use crate::protocol::messages::{history_bytes, open_flags, Message};
use crate::storage::volume::Volume;
use crate::units::Generation;
use crate::{Error, Result};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the primary keeps on disk, and the in-memory parts that go with it.
#[derive(Debug)]
pub(super) struct PrimaryState {
    pub(super) meta: PrimaryMeta,
    intent: Option<IntentMap>,
    /// What the write-intent map said of a crashed session, until a handshake uses it.
    recovered: Mutex<Option<Recovered>>,
    /// The next block of this session's interrupted full scan.
    checkpoint: Mutex<Option<u64>>,
    /// The checkpoint the metadata record holds (None: not known). Held while the record is
    /// written, which reads `checkpoint` then: whichever thread writes last writes the
    /// latest value, so the record always ends up with it.
    recorded: Mutex<Option<Option<u64>>>,
    /// The secondary's identity, from the last handshake.
    peer_identity: Mutex<VolumeId>,
}

impl PrimaryState {
    pub(super) fn open(volume: &dyn Volume, config: &PrimaryConfig) -> Result<PrimaryState> {
        let store = config.meta.clone().map(MetaStore::new);
        let meta = PrimaryMeta::open(store.clone(), config.volume_id)?;
        let (intent, recovered) = match (&store, config.write_intent) {
            (Some(s), true) => {
                let (m, r) = IntentMap::open(
                    IntentMap::path_for(s.path()),
                    s.disk().clone(),
                    meta.identity(),
                    volume.size(),
                    config.intent_chunk,
                )?;
                if let Some(r) = &r {
                    info!(chunks = r.dirty.len(), session = %format!("{:032x}", r.session), "write-intent map of a session that ended without closing: its chunks will be resynced if the secondary still follows it");
                }
                (Some(m), r)
            }
            _ => (None, None),
        };
        Ok(PrimaryState {
            meta,
            intent,
            recovered: Mutex::new(recovered),
            checkpoint: Mutex::new(None),
            recorded: Mutex::new(None),
            peer_identity: Mutex::new(VolumeId::default()),
        })
    }

    /// The Open of a handshake: starts this session's generation if it has none yet.
    pub(super) fn open_message(
        &self,
        config: &PrimaryConfig,
        session: u128,
        epoch: u64,
        volume: &dyn Volume,
    ) -> Result<(Message, Lineage)> {
        let lineage = self.meta.attach()?;
        let mut flags = 0;
        if config.adopt {
            flags |= open_flags::ADOPT;
        }
        if config.discard_secondary {
            flags |= open_flags::DISCARD_SECONDARY;
        }
        if self.meta.store().is_none() {
            flags |= open_flags::EPHEMERAL;
        }
        let history: Vec<u128> = lineage.history.iter().map(|g| g.0).collect();
        Ok((
            Message::Open {
                volume_id: lineage.identity.0,
                session,
                epoch,
                size: volume.size(),
                block_size: volume.block_size().get(),
                generation: lineage.current.0,
                flags,
                history: history_bytes(&history),
            },
            lineage,
        ))
    }

    /// The primary's own check of the secondary's answer: refused on both sides.
    pub(super) fn check_reply(
        &self,
        peer: &str,
        mine: &Lineage,
        theirs: &Lineage,
        config: &PrimaryConfig,
    ) -> Result<()> {
        *lock(&self.peer_identity) = theirs.identity;
        if self.meta.store().is_none() {
            // No record of our own: nothing to hold the secondary to.
            return Ok(());
        }
        let known = !theirs.current.is_none() || !theirs.bound_to.is_none();
        let rel = relate(mine, known.then_some(theirs));
        let res = crate::meta::Resolution {
            adopt: config.adopt,
            discard_secondary: config.discard_secondary,
        };
        match rel.refusal(mine, theirs, res) {
            Some(msg) => Err(Error::Mismatch(format!("{peer}: {msg}"))),
            None => Ok(()),
        }
    }

    /// Before a write of `[offset, offset+len)`: a new generation when it is apart from the
    /// secondary, and its write-intent bit, both durable first.
    pub(super) fn before_write(&self, offset: u64, len: u64, connected: bool) -> Result<()> {
        if !connected {
            self.meta.before_write_apart()?;
        }
        if let Some(m) = &self.intent {
            m.begin(offset, len)?;
        }
        Ok(())
    }

    /// After the write begun by [`before_write`](Self::before_write) completed.
    pub(super) fn after_write(&self, offset: u64, len: u64) {
        if let Some(m) = &self.intent {
            m.end(offset, len);
        }
    }

    /// The link was lost: the next write apart starts a generation.
    pub(super) fn detached(&self) {
        self.meta.detach();
    }

    /// At a connection whose dirty map is not usable: whether a crashed session's write-intent
    /// bits can stand in for it (the secondary still follows that session). If so they are
    /// marked in `d`, which becomes valid.
    pub(super) fn seed(&self, d: &mut DirtyMap, last: Generation, session: u128) -> bool {
        let Some(r) = lock(&self.recovered).take() else {
            return false;
        };
        if last.session == 0 || r.session != last.session {
            info!("the secondary followed another session since: the write-intent map does not cover it");
            return false;
        }
        d.invalidate();
        for (off, len) in &r.dirty {
            d.mark(*off, *len);
        }
        d.set_valid();
        self.map_valid(session);
        info!(
            chunks = r.dirty.len(),
            "dirty map seeded from the write-intent map of the crashed session"
        );
        true
    }

    /// Called every few hundred milliseconds while connected: names this session in the
    /// write-intent map once its dirty map is valid, and clears the bits of idle clean chunks.
    pub(super) fn tick(&self, inner: &Inner, conn: &Conn) {
        let Some(m) = &self.intent else { return };
        if !lock(&inner.dirty).is_valid() {
            return;
        }
        if let Err(e) = m.set_session(inner.session, true) {
            warn!(error = %e, "write-intent map header not written");
            return;
        }
        if conn.pending_writes() != 0 {
            return;
        }
        let r = m.clear_idle(|off, len| {
            let d = lock(&inner.dirty);
            d.regions_of(off, len)
                .any(|r| d.is_dirty(crate::dirty::Region(r)))
        });
        if let Err(e) = r {
            warn!(error = %e, "write-intent bits not cleared");
        }
    }

    /// This session's dirty map just became valid: the write-intent bits now cover what the
    /// secondary lacks since it was attached to this session.
    pub(super) fn map_valid(&self, session: u128) {
        if let Some(m) = &self.intent {
            if let Err(e) = m.set_session(session, true) {
                warn!(error = %e, "write-intent map header not written");
            }
        }
    }

    /// The dirty map was invalidated: the write-intent bits no longer cover what the secondary
    /// lacks.
    pub(super) fn invalidated(&self, session: u128) {
        if let Some(m) = &self.intent {
            if let Err(e) = m.set_session(session, false) {
                warn!(error = %e, "write-intent map header not written");
            }
        }
    }

    /// Where this session's interrupted full scan resumes.
    pub(super) fn checkpoint(&self) -> Option<u64> {
        *lock(&self.checkpoint)
    }

    /// Records how far this session's full scan got (`None`: done, or dropped), in memory
    /// and in the metadata record.
    pub(super) fn set_checkpoint(&self, session: u128, next: Option<u64>) {
        self.note_checkpoint(next);
        self.record_checkpoint(session);
    }

    /// Sets the checkpoint in memory only, which is what a resumed scan starts from;
    /// [`record_checkpoint`](Self::record_checkpoint) writes it to the metadata record.
    pub(super) fn note_checkpoint(&self, next: Option<u64>) {
        *lock(&self.checkpoint) = next;
    }

    /// Writes the checkpoint held in memory to the metadata record, unless the record
    /// already has it.
    pub(super) fn record_checkpoint(&self, session: u128) {
        let mut recorded = lock(&self.recorded);
        let next = *lock(&self.checkpoint);
        if *recorded == Some(next) {
            return;
        }
        let c = next.map(|next_block| Checkpoint {
            session,
            next_block,
        });
        match self.meta.set_checkpoint(c) {
            Ok(()) => *recorded = Some(next),
            Err(e) => warn!(error = %e, "full-scan checkpoint not recorded"),
        }
    }

    /// A resync completed: the secondary is coherent with `g`.
    pub(super) fn coherent(&self, g: Generation, peer: &str) {
        let id = *lock(&self.peer_identity);
        if let Err(e) = self.meta.coherent(g, id, peer) {
            warn!(error = %e, "last coherent sync not recorded");
        }
    }
}

impl Inner {
    /// The barrier that ends a resync: the secondary marks itself consistent once everything
    /// before it is applied, then acknowledges.
    pub(super) fn resync_done(&self, conn: &Conn) -> Result<std::sync::Arc<Waiter>> {
        let w = std::sync::Arc::new(Waiter::default());
        if !conn.submit(
            |seq| Message::ResyncDone { seq },
            PendingKind::Barrier {
                regions: Vec::new(),
                validate: false,
            },
            Some(w.clone()),
            false,
        )? {
            return Err(Error::link(&conn.peer, "link lost"));
        }
        Ok(w)
    }
}
