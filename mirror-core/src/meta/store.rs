//! Where a volume's metadata record lives, and how it is read and replaced.
//!
//! Invariant: at every instant the record file is either the old record or the new one, whole;
//! anything else found there (a foreign file, a torn or corrupt record, a read error) is
//! reported as [`Loaded::Unknown`] and never trusted.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::warn;

use super::disk::{MetaDisk, OsDisk};
use super::record::MetaRecord;
use crate::{Error, Result};

/// The suffix of the record beside a regular-file volume.
pub const META_SUFFIX: &str = ".mirror-meta";

/// The default record path of a volume at `volume`: `PATH.mirror-meta`.
pub fn default_meta_path(volume: &Path) -> PathBuf {
    let mut s = volume.as_os_str().to_owned();
    s.push(META_SUFFIX);
    PathBuf::from(s)
}

/// What was found where a record should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// No record: mirror has not used this volume yet.
    Absent,
    /// A whole record that passed its checksum.
    Valid(MetaRecord),
    /// Something that is not a trustworthy record, and why: unknown history.
    Unknown(String),
}

/// The record of one volume, at one path, through one disk.
#[derive(Debug, Clone)]
pub struct MetaStore {
    path: PathBuf,
    disk: Arc<dyn MetaDisk>,
}

impl MetaStore {
    /// The record at `path` on the real file system.
    pub fn new(path: impl Into<PathBuf>) -> MetaStore {
        MetaStore::with_disk(path, Arc::new(OsDisk))
    }

    /// The record at `path` through `disk` (tests pass a [`super::FaultDisk`]).
    pub fn with_disk(path: impl Into<PathBuf>, disk: Arc<dyn MetaDisk>) -> MetaStore {
        MetaStore {
            path: path.into(),
            disk,
        }
    }

    /// The record's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The disk it goes through.
    pub fn disk(&self) -> &Arc<dyn MetaDisk> {
        &self.disk
    }

    /// The temporary of a save: per process, so two processes saving the same record (a
    /// one-shot job beside a daemon) never rename each other's half-written file.
    fn tmp_path(&self) -> PathBuf {
        let mut s = self.path.as_os_str().to_owned();
        s.push(format!(".tmp-{}", std::process::id()));
        PathBuf::from(s)
    }

    /// Reads the record. Never fails: what cannot be trusted is [`Loaded::Unknown`].
    pub fn load(&self) -> Loaded {
        match self.disk.read(&self.path) {
            Ok(None) => Loaded::Absent,
            Ok(Some(bytes)) => match MetaRecord::decode(&bytes) {
                Ok(r) => Loaded::Valid(r),
                Err(why) => {
                    warn!(path = %self.path.display(), %why, "metadata record not trusted: unknown history, a full checksum scan will run");
                    Loaded::Unknown(why)
                }
            },
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "metadata record unreadable: unknown history");
                Loaded::Unknown(format!("unreadable: {e}"))
            }
        }
    }

    /// Replaces the record with `rec`, durably.
    ///
    /// Crash ordering — each step must be durable before the next begins:
    /// 1. write the whole new record to `PATH.tmp-PID` and `fdatasync` it: a crash here leaves
    ///    the old record in place (and a stray temporary);
    /// 2. `rename(PATH.tmp-PID, PATH)`: atomic, so readers see the old record or the new one,
    ///    never a mix — but the rename itself is only in the directory's page cache;
    /// 3. `fsync` the directory: now the new record survives a crash. Until this returns the
    ///    caller must act as if the old record were still current (the secondary marks itself
    ///    inconsistent *before* applying a resync block, so a lost rename errs on the safe
    ///    side: an old "consistent" record can only be followed by writes in order).
    ///
    /// A failure at any step is an I/O error naming the record; the record on disk is then the
    /// old one or the new one, whole.
    pub fn save(&self, rec: &MetaRecord) -> Result<()> {
        let name = self.path.display().to_string();
        let tmp = self.tmp_path();
        let bytes = rec.encode();
        self.disk
            .write_new(&tmp, &bytes)
            .map_err(|e| Error::io(&name, "write metadata", 0, e))?;
        self.disk
            .sync(&tmp)
            .map_err(|e| Error::io(&name, "sync metadata", 0, e))?;
        self.disk
            .rename(&tmp, &self.path)
            .map_err(|e| Error::io(&name, "rename metadata", 0, e))?;
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        self.disk
            .sync_dir(&dir)
            .map_err(|e| Error::io(&name, "sync metadata directory", 0, e))
    }

    /// The trusted record, or a fresh one (saved) when there is none or it is not trusted.
    /// The second value says whether the history was known.
    pub fn load_or_create(&self) -> Result<(MetaRecord, bool)> {
        match self.load() {
            Loaded::Valid(r) => Ok((r, true)),
            Loaded::Absent => {
                let r = MetaRecord::fresh();
                self.save(&r)?;
                Ok((r, true))
            }
            Loaded::Unknown(_) => {
                // A new identity: whatever history the broken record held is gone, and a peer
                // that knew the old identity will see a stranger and refuse, which is safe.
                let mut r = MetaRecord::fresh();
                r.consistent = false;
                self.save(&r)?;
                Ok((r, false))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::disk::{FaultDisk, FaultPoint};
    use super::super::record::GenId;
    use super::*;

    fn store(dir: &Path) -> (MetaStore, Arc<FaultDisk<OsDisk>>) {
        let disk = Arc::new(FaultDisk::new(OsDisk));
        (
            MetaStore::with_disk(dir.join("vol.img.mirror-meta"), disk.clone()),
            disk,
        )
    }

    #[test]
    fn default_path_is_beside_the_volume() {
        assert_eq!(
            default_meta_path(Path::new("/srv/a.img")),
            PathBuf::from("/srv/a.img.mirror-meta")
        );
    }

    #[test]
    fn saved_record_loads_back_and_absent_is_absent() {
        let d = tempfile::tempdir().unwrap();
        let (s, _) = store(d.path());
        assert_eq!(s.load(), Loaded::Absent);
        let (r, known) = s.load_or_create().unwrap();
        assert!(known);
        assert_eq!(s.load(), Loaded::Valid(r));
    }

    #[test]
    fn a_crash_at_any_step_of_a_save_leaves_the_old_or_the_new_record_whole() {
        let faults = [
            FaultPoint::Write,
            FaultPoint::TornWrite(10),
            FaultPoint::TornWrite(60),
            FaultPoint::Sync,
            FaultPoint::Rename,
            FaultPoint::SyncDir,
        ];
        for f in faults {
            let d = tempfile::tempdir().unwrap();
            let (s, disk) = store(d.path());
            let (old, _) = s.load_or_create().unwrap();
            let mut new = old.clone();
            new.advance(GenId(99));
            disk.arm(f, 0);
            assert!(s.save(&new).is_err(), "{f:?} must fail the save");
            disk.disarm();
            match s.load() {
                Loaded::Valid(r) if f == FaultPoint::SyncDir => assert_eq!(r, new),
                Loaded::Valid(r) => assert_eq!(r, old, "{f:?}"),
                other => panic!("{f:?}: {other:?}"),
            }
            s.save(&new).unwrap();
            assert_eq!(s.load(), Loaded::Valid(new));
        }
    }

    #[test]
    fn a_torn_or_corrupt_record_is_unknown_history_and_gets_a_new_identity() {
        let d = tempfile::tempdir().unwrap();
        let (s, _) = store(d.path());
        let (old, _) = s.load_or_create().unwrap();
        let bytes = std::fs::read(s.path()).unwrap();
        std::fs::write(s.path(), &bytes[..bytes.len() / 2]).unwrap();
        assert!(matches!(s.load(), Loaded::Unknown(w) if w.contains("torn")));
        let mut bad = bytes.clone();
        bad[20] ^= 0x40;
        std::fs::write(s.path(), &bad).unwrap();
        assert!(matches!(s.load(), Loaded::Unknown(w) if w.contains("checksum")));
        let (r, known) = s.load_or_create().unwrap();
        assert!(!known);
        assert!(!r.consistent);
        assert_ne!(r.identity, old.identity);
    }

    #[test]
    fn a_read_error_is_unknown_history() {
        let d = tempfile::tempdir().unwrap();
        let (s, disk) = store(d.path());
        s.load_or_create().unwrap();
        disk.arm(FaultPoint::Read, 0);
        assert!(matches!(s.load(), Loaded::Unknown(_)));
    }
}
