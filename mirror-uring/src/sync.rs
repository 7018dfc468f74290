//! The sync backend as front ends open it: [`mirror_core::FileVolume`] (positioned reads and
//! writes), with its idle reads in the idle I/O scheduling class.
//!
//! io_uring tags each idle read with the class itself; pread cannot, so [`SyncVolume`] puts
//! the reading thread in the idle class (`ioprio_set`) for the length of an idle batch and
//! gives it back its class afterwards. A background scan therefore reads idle-class
//! whichever backend runs it, and the thread's foreground reads and writes keep their class.
//! The system call lives here because core forbids `unsafe` and rustix has no wrapper for it.

use std::ffi::c_int;

use mirror_core::{BlockSize, FileVolume, IoPriority, ReadOp, Result, Volume};
use tracing::debug;

/// `IOPRIO_WHO_PROCESS` of `include/uapi/linux/ioprio.h`: with `who` 0, the calling thread.
const IOPRIO_WHO_PROCESS: c_int = 1;
/// Bits of an ioprio value below its class.
const IOPRIO_CLASS_SHIFT: u32 = 13;
/// The idle scheduling class.
const IOPRIO_CLASS_IDLE: c_int = 3;

/// A [`FileVolume`] whose idle reads run in the idle I/O class.
#[derive(Debug)]
pub struct SyncVolume(pub FileVolume);

impl Volume for SyncVolume {
    fn size(&self) -> u64 {
        self.0.size()
    }

    fn block_size(&self) -> BlockSize {
        self.0.block_size()
    }

    fn name(&self) -> &str {
        self.0.name()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.0.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.0.write_at(offset, data)
    }

    fn flush(&self) -> Result<()> {
        self.0.flush()
    }

    fn read_batch(&self, ops: &mut [ReadOp<'_>], priority: IoPriority) -> Result<()> {
        let _class = (priority == IoPriority::Idle).then(IdleClass::enter);
        self.0.read_batch(ops, priority)
    }
}

/// The calling thread's I/O priority (`ioprio_get`), or None where the kernel refuses.
fn thread_ioprio() -> Option<c_int> {
    // SAFETY: ioprio_get takes two integers and touches no memory of ours.
    let v = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0) };
    c_int::try_from(v).ok().filter(|v| *v >= 0)
}

/// Sets the calling thread's I/O priority (`ioprio_set`); false where the kernel refuses.
fn set_thread_ioprio(value: c_int) -> bool {
    // SAFETY: ioprio_set takes three integers and touches no memory of ours.
    unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, value) == 0 }
}

/// The calling thread in the idle I/O class until dropped, then back in its own.
#[derive(Debug)]
pub struct IdleClass {
    previous: Option<c_int>,
}

impl IdleClass {
    /// The idle class value.
    pub const IDLE: c_int = IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT;

    /// Puts the calling thread in the idle class (said at debug level when the kernel
    /// refuses: the reads then keep their class, as on a kernel without I/O classes).
    pub fn enter() -> IdleClass {
        let previous = thread_ioprio().filter(|p| p >> IOPRIO_CLASS_SHIFT != IOPRIO_CLASS_IDLE);
        if previous.is_some() && !set_thread_ioprio(Self::IDLE) {
            debug!("ioprio_set refused: idle reads keep the thread's I/O class");
            return IdleClass { previous: None };
        }
        IdleClass { previous }
    }

    /// The calling thread's I/O priority value, where the kernel says.
    pub fn current() -> Option<c_int> {
        thread_ioprio()
    }
}

impl Drop for IdleClass {
    fn drop(&mut self) {
        if let Some(p) = self.previous {
            set_thread_ioprio(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_class_holds_for_the_guard_and_the_thread_gets_its_own_back() {
        std::thread::spawn(|| {
            let Some(before) = IdleClass::current() else {
                assert!(std::env::var_os("CI").is_none(), "ioprio_get unavailable");
                eprintln!("skipped: ioprio_get unavailable here");
                return;
            };
            {
                let _idle = IdleClass::enter();
                assert_eq!(IdleClass::current(), Some(IdleClass::IDLE));
            }
            assert_eq!(IdleClass::current(), Some(before));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn idle_reads_of_the_sync_backend_read_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.img");
        let data: Vec<u8> = (0..4096 * 8).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let vol = SyncVolume(FileVolume::open(&path, BlockSize::DEFAULT).unwrap());
        let before = IdleClass::current();
        let mut buf = vec![0u8; data.len()];
        vol.read_batch(
            &mut [ReadOp {
                offset: 0,
                buf: &mut buf,
            }],
            IoPriority::Idle,
        )
        .unwrap();
        assert_eq!(buf, data);
        assert_eq!(IdleClass::current(), before, "the class is given back");
    }
}
