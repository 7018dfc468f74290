//! What an acknowledgement promises, and what a sync-mode write does while there is no replica.
//!
//! - [`Durability`] is carried on every replicated write as a flag of its frame: the secondary
//!   acknowledges on arrival (`received`), after its write (`written`), or after a flush that
//!   covers it (`flushed`, the default). The secondary flushes once per batch of queued writes
//!   (group commit), so many writers in flight share one `fdatasync`.
//! - [`OnDisconnect`] says what a sync-mode write does when the link is down: return
//!   degraded (the range is in the dirty map), fail, or wait for the link up to a timeout.
//!
//! Whatever the policy, a range the secondary may lack is in the dirty map before the call
//! returns: the policies change what the caller is told, never what is tracked.

use std::str::FromStr;
use std::time::Duration;

use crate::wire::write_flags;
use crate::{Error, Result};

/// When the secondary acknowledges a replicated write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// On stable storage on the secondary (group commit: one flush per batch of writes).
    #[default]
    Flushed,
    /// Written to the secondary's volume (in its page cache, perhaps not on stable storage).
    Written,
    /// Received by the secondary, before it is written (DRBD's protocol B).
    Received,
}

impl Durability {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Durability::Flushed => "flushed",
            Durability::Written => "written",
            Durability::Received => "received",
        }
    }

    /// The flags a replicated write carries at this level.
    pub fn write_flags(self) -> u8 {
        match self {
            Durability::Flushed => write_flags::FLUSH,
            Durability::Written => 0,
            Durability::Received => write_flags::RECEIVED,
        }
    }
}

impl FromStr for Durability {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "flushed" => Ok(Durability::Flushed),
            "written" => Ok(Durability::Written),
            "received" => Ok(Durability::Received),
            _ => Err(Error::invalid(format!(
                "unknown durability {s:?} (flushed, written or received)"
            ))),
        }
    }
}

/// What a sync-mode write does while the link to the secondary is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnDisconnect {
    /// Succeed degraded: the range goes into the dirty map and is resynced later.
    #[default]
    Degrade,
    /// Fail with a link error (the range is in the dirty map all the same).
    Fail,
    /// Wait for the link and the secondary's acknowledgement up to this long, then fail.
    Suspend(Duration),
}

impl OnDisconnect {
    /// Lower-case name (`suspend` without its timeout).
    pub fn name(self) -> &'static str {
        match self {
            OnDisconnect::Degrade => "degrade",
            OnDisconnect::Fail => "fail",
            OnDisconnect::Suspend(_) => "suspend",
        }
    }

    /// Checks the value: a suspend timeout must be positive.
    pub fn validate(self) -> Result<()> {
        match self {
            OnDisconnect::Suspend(t) if t.is_zero() => Err(Error::invalid(
                "on_disconnect suspend needs a positive timeout",
            )),
            _ => Ok(()),
        }
    }

    /// Parses `degrade`, `fail` or `suspend`; `suspend` takes `timeout`.
    pub fn parse(s: &str, timeout: Duration) -> Result<Self> {
        let p = match s {
            "degrade" => OnDisconnect::Degrade,
            "fail" => OnDisconnect::Fail,
            "suspend" => OnDisconnect::Suspend(timeout),
            _ => {
                return Err(Error::invalid(format!(
                    "unknown on_disconnect policy {s:?} (degrade, fail or suspend)"
                )))
            }
        };
        p.validate()?;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_unknown_ones_are_refused() {
        for d in [
            Durability::Flushed,
            Durability::Written,
            Durability::Received,
        ] {
            assert_eq!(d.name().parse::<Durability>().unwrap(), d);
        }
        assert_eq!(Durability::default(), Durability::Flushed);
        assert!("fsync".parse::<Durability>().is_err());
        let t = Duration::from_secs(3);
        for p in [
            OnDisconnect::Degrade,
            OnDisconnect::Fail,
            OnDisconnect::Suspend(t),
        ] {
            assert_eq!(OnDisconnect::parse(p.name(), t).unwrap(), p);
        }
        assert!(OnDisconnect::parse("suspend", Duration::ZERO).is_err());
        assert!(OnDisconnect::parse("block", t).is_err());
    }
}
