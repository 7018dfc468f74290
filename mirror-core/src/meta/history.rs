//! Whether a secondary may follow a primary, decided from their identities and generation
//! histories.
//!
//! A generation is the primary session that wrote a volume's data. A primary opening starts a
//! new generation and keeps the ones before it as history; a secondary admitting a primary
//! takes over the primary's generation and history (its data is now of that line). So:
//!
//! - the secondary's current generation is the primary's, or one in the primary's history: the
//!   secondary is this primary's volume, possibly an older state of it — follow;
//! - the secondary has no generation (new, or unknown history): it binds to the first primary;
//! - the secondary's generation is unknown to the primary, but their histories meet: both were
//!   written as primaries since that common generation — a split brain;
//! - their histories never meet: the secondary holds another volume's data — a stranger.
//!
//! The last two are refused unless the operator says which side wins (`--discard-secondary`,
//! `--adopt`). Invariant: nothing but this function lets a secondary's data be discarded.

use super::record::{GenId, VolumeId};

/// One side's view of itself, as exchanged at the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lineage {
    /// The volume's identity.
    pub identity: VolumeId,
    /// The generation it holds.
    pub current: GenId,
    /// Earlier generations, newest first.
    pub history: Vec<GenId>,
    /// For a secondary: the primary volume it was bound to.
    pub bound_to: VolumeId,
}

impl Lineage {
    fn contains(&self, g: GenId) -> bool {
        self.current == g || self.history.contains(&g)
    }
}

/// What the operator allowed to be discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resolution {
    /// Rebind a secondary that holds another volume's data (`--adopt`).
    pub adopt: bool,
    /// Resolve a split brain in favour of this primary (`--discard-secondary`).
    pub discard_secondary: bool,
}

/// How a secondary's history relates to a primary's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relation {
    /// Nothing known of the secondary's data: bind and scan everything.
    Unbound,
    /// The secondary holds this primary's line, at generation `at`.
    SameLine {
        /// The secondary's current generation.
        at: GenId,
    },
    /// The secondary holds another volume's data; refused unless adopted.
    Stranger {
        /// The volume the secondary mirrors (or is, when it was never bound).
        secondary_of: VolumeId,
    },
    /// Both sides were written as primaries since `common`; refused unless discarded.
    Diverged {
        /// The primary's generation.
        primary: GenId,
        /// The secondary's generation.
        secondary: GenId,
        /// The newest generation both histories hold.
        common: GenId,
    },
}

impl Relation {
    /// Whether the secondary may follow, given what the operator allowed.
    pub fn allowed(&self, r: Resolution) -> bool {
        match self {
            Relation::Unbound | Relation::SameLine { .. } => true,
            Relation::Stranger { .. } => r.adopt,
            Relation::Diverged { .. } => r.discard_secondary,
        }
    }

    /// The refusal, in words naming both sides, or `None` when allowed.
    pub fn refusal(&self, primary: &Lineage, secondary: &Lineage, r: Resolution) -> Option<String> {
        if self.allowed(r) {
            return None;
        }
        Some(match self {
            Relation::Stranger { secondary_of } => format!(
                "identity mismatch: secondary {} mirrors volume {secondary_of}, not {}; nothing written (--adopt rebinds it)",
                secondary.identity, primary.identity
            ),
            Relation::Diverged {
                primary: p,
                secondary: s,
                common,
            } => format!(
                "split brain: primary generation {p} and secondary generation {s} both written since {common}; nothing written (--discard-secondary resolves it for the primary)"
            ),
            _ => return None,
        })
    }
}

/// How `secondary` relates to `primary`. `secondary` is `None` when its record is absent or
/// not trusted.
pub fn relate(primary: &Lineage, secondary: Option<&Lineage>) -> Relation {
    let Some(s) = secondary else {
        return Relation::Unbound;
    };
    if s.current.is_none() && s.bound_to.is_none() {
        return Relation::Unbound;
    }
    if !s.current.is_none() && primary.contains(s.current) {
        return Relation::SameLine { at: s.current };
    }
    if !s.bound_to.is_none() && s.bound_to != primary.identity && s.identity != primary.identity {
        return Relation::Stranger {
            secondary_of: s.bound_to,
        };
    }
    let common = std::iter::once(s.current)
        .chain(s.history.iter().copied())
        .find(|g| !g.is_none() && primary.contains(*g));
    match common {
        Some(common) => Relation::Diverged {
            primary: primary.current,
            secondary: s.current,
            common,
        },
        None if s.bound_to == primary.identity && s.current.is_none() => Relation::Unbound,
        None => Relation::Stranger {
            secondary_of: if s.bound_to.is_none() {
                s.identity
            } else {
                s.bound_to
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lin(id: u128, current: u128, history: &[u128], bound: u128) -> Lineage {
        Lineage {
            identity: VolumeId(id),
            current: GenId(current),
            history: history.iter().map(|g| GenId(*g)).collect(),
            bound_to: VolumeId(bound),
        }
    }

    #[test]
    fn a_new_secondary_binds_to_the_first_primary() {
        let a = lin(1, 10, &[], 0);
        assert_eq!(relate(&a, None), Relation::Unbound);
        assert_eq!(relate(&a, Some(&lin(9, 0, &[], 0))), Relation::Unbound);
    }

    #[test]
    fn a_restarted_primary_finds_its_older_state_on_the_secondary() {
        let a = lin(1, 11, &[10], 0);
        let s = lin(9, 10, &[], 1);
        assert_eq!(relate(&a, Some(&s)), Relation::SameLine { at: GenId(10) });
    }

    #[test]
    fn another_volume_is_a_stranger_until_adopted() {
        let b = lin(2, 20, &[], 0);
        let s = lin(9, 10, &[], 1);
        let r = relate(&b, Some(&s));
        assert_eq!(
            r,
            Relation::Stranger {
                secondary_of: VolumeId(1)
            }
        );
        let msg = r.refusal(&b, &s, Resolution::default()).unwrap();
        assert!(msg.contains(&VolumeId(1).to_string()) && msg.contains(&VolumeId(2).to_string()));
        assert!(r.allowed(Resolution {
            adopt: true,
            ..Default::default()
        }));
        assert!(!r.allowed(Resolution {
            discard_secondary: true,
            ..Default::default()
        }));
    }

    #[test]
    fn failover_to_the_old_secondary_is_the_same_line() {
        // A wrote generation 10 to B; A failed; B becomes primary (generation 30) towards A.
        let b_primary = lin(2, 30, &[10], 1);
        let a_secondary = lin(1, 10, &[], 0);
        assert_eq!(
            relate(&b_primary, Some(&a_secondary)),
            Relation::SameLine { at: GenId(10) }
        );
    }

    #[test]
    fn both_written_as_primaries_is_a_split_brain_either_way() {
        let a = lin(1, 40, &[10], 0);
        let b = lin(2, 30, &[10], 1);
        let ab = relate(&a, Some(&b));
        assert_eq!(
            ab,
            Relation::Diverged {
                primary: GenId(40),
                secondary: GenId(30),
                common: GenId(10)
            }
        );
        let msg = ab.refusal(&a, &b, Resolution::default()).unwrap();
        assert!(msg.contains("split brain") && msg.contains(&GenId(10).to_string()));
        assert!(matches!(relate(&b, Some(&a)), Relation::Diverged { .. }));
        assert!(ab.allowed(Resolution {
            discard_secondary: true,
            ..Default::default()
        }));
    }

    #[test]
    fn a_volume_used_as_a_primary_of_its_own_is_a_stranger_to_another() {
        let b = lin(2, 20, &[], 0);
        let a = lin(1, 10, &[], 0);
        assert_eq!(
            relate(&b, Some(&a)),
            Relation::Stranger {
                secondary_of: VolumeId(1)
            }
        );
    }
}
