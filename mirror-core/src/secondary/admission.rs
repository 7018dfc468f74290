//! Who may attach to the secondary: one live session holds the volume, and only a primary
//! whose history the metadata record accepts is admitted.
//!
//! Invariants:
//! - While the holding session's connection is open (its reader declares it dead after a link
//!   timeout of silence), a primary of another session is refused with [`Error::Busy`] and the
//!   holder is not disturbed: no takeover livelock between two primaries.
//! - A connection of the holding session itself (a reconnect after a cut the secondary has not
//!   noticed yet) takes over from its stale predecessor.
//! - A refusal by the record (another volume, a split brain) changes nothing: the hold taken
//!   for the check is given back, and nothing is written.

use std::time::{SystemTime, UNIX_EPOCH};

use tracing::info;

use super::session::Session;
use crate::meta::PrimaryClaim;
use crate::protocol::messages::{history_bytes, Message};
use crate::sync::lock;
use crate::units::Generation;
use crate::{Error, Result};

/// The session holding the volume.
#[derive(Debug, Clone, Copy)]
pub(super) struct Holder {
    conn: u64,
    session: u128,
    since: SystemTime,
}

/// `t` as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl Session<'_> {
    /// Takes the hold of the volume for `session`, or says who holds it.
    pub(super) fn take_hold(&self, session: u128) -> Result<()> {
        let mut active = lock(&self.inner.active);
        let mut holder = lock(&self.inner.holder);
        if let Some(h) = *holder {
            let alive = *active == Some(h.conn) && lock(&self.inner.conns).contains_key(&h.conn);
            if alive && h.session != session {
                return Err(Error::Busy(format!(
                    "volume held by session {:032x} since {}: refused while its link is alive",
                    h.session,
                    utc(h.since)
                )));
            }
        }
        if let Some(old) = active.replace(self.id) {
            if let Some(c) = lock(&self.inner.conns).get(&old) {
                info!(
                    peer = self.peer,
                    "a new connection of the same session takes over from the previous one"
                );
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
        let since = match *holder {
            Some(h) if h.session == session => h.since,
            _ => SystemTime::now(),
        };
        *holder = Some(Holder {
            conn: self.id,
            session,
            since,
        });
        Ok(())
    }

    /// Gives the hold back if this connection has it.
    pub(super) fn release_hold(&self) {
        let mut active = lock(&self.inner.active);
        if *active == Some(self.id) {
            *active = None;
        }
        let mut holder = lock(&self.inner.holder);
        if holder.is_some_and(|h| h.conn == self.id) {
            *holder = None;
        }
    }

    /// Asks the record whether the primary may attach and, if so, records it and returns the
    /// OpenReply to send.
    pub(super) fn admit(&self, open: Generation, claim: &PrimaryClaim) -> Result<Message> {
        let vol = &self.inner.volume;
        let adm = self.inner.meta.admit(claim, open, self.peer)?;
        if !adm.consistent {
            info!(
                peer = self.peer,
                "secondary is not a consistent image: a resync was cut off or its history is unknown"
            );
        }
        let history: Vec<u128> = adm.lineage.history.iter().map(|g| g.0).collect();
        Ok(Message::OpenReply {
            size: vol.size(),
            block_size: vol.block_size().get(),
            last_session: adm.last.session,
            last_epoch: adm.last.epoch,
            volume_id: adm.lineage.identity.0,
            bound_to: adm.lineage.bound_to.0,
            generation: adm.lineage.current.0,
            consistent: adm.consistent,
            history: history_bytes(&history),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            utc(UNIX_EPOCH + Duration::from_secs(1_795_000_000)),
            "2026-11-18T11:06:40Z"
        );
    }
}
