//! Memory and I/O alignment for direct I/O: aligned buffers, and what a file or device demands.
//!
//! With `O_DIRECT` the kernel moves data between the device and the caller's memory with no page
//! cache in between, so the file offset, the length and the buffer address must all be aligned
//! (to the device's logical block size, or what `statx(STATX_DIOALIGN)` reports for a file).
//! Anything else fails with a bare `EINVAL`; this module finds the alignment once, at open,
//! so the volume can bounce or refuse with a message instead.

use std::alloc::{self, Layout};
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr::NonNull;

/// Alignment every buffer this crate allocates for I/O gets: a page, which satisfies every
/// device's direct I/O memory alignment.
pub(crate) const PAGE: usize = 4096;

/// A zeroed heap buffer whose address is aligned to `align`.
pub(crate) struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: AlignedBuf owns its allocation exclusively (like a Box<[u8]>); moving it between
// threads moves that ownership, and no interior mutability is exposed through `&self`.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only hand out `*const`/`&[u8]` views; writes need `&mut self`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes (at least one) aligned to `align` (a power of two).
    pub(crate) fn new(len: usize, align: usize) -> Self {
        let layout = Layout::from_size_align(len.max(1), align.max(1))
            .expect("aligned buffer layout: size and alignment come from validated options");
        // SAFETY: the layout has a non-zero size (`max(1)` above).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, layout }
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.layout.size()
    }

    /// Start of the buffer, for the kernel.
    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Start of the buffer, for registration: the pointer stays valid as long as `self` lives.
    pub(crate) fn base(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed` with exactly this layout and is freed once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.layout.size())
            .field("align", &self.layout.align())
            .finish()
    }
}

/// What direct I/O on one file or device requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DirectAlign {
    /// File offsets and lengths must be multiples of this.
    pub(crate) offset: usize,
    /// Buffer addresses must be multiples of this.
    pub(crate) memory: usize,
}

impl DirectAlign {
    /// True when a transfer of `len` bytes at `offset` from `addr` may go to the kernel as is.
    pub(crate) fn fits(&self, offset: u64, addr: usize, len: usize) -> bool {
        offset % self.offset as u64 == 0 && len % self.offset == 0 && addr % self.memory == 0
    }
}

/// The direct I/O alignment of a block device: its logical block size (`BLKSSZGET`).
pub(crate) fn block_device_align(file: &File) -> io::Result<DirectAlign> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one c_int through the pointer, which points at a live local; the
    // descriptor is open for as long as `file` is borrowed.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::BLKSSZGET, &mut size as *mut _) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let lbs = usize::try_from(size)
        .ok()
        .filter(|s| s.is_power_of_two())
        .ok_or_else(|| io::Error::other(format!("odd logical block size {size}")))?;
    Ok(DirectAlign {
        offset: lbs,
        memory: lbs,
    })
}

/// The direct I/O alignment of a regular file, from `statx(STATX_DIOALIGN)` (Linux 6.1+).
/// `Ok(None)` when the kernel or filesystem does not report it; `Err` with `Unsupported` when
/// it reports that the file cannot do direct I/O at all.
pub(crate) fn file_align(path: &Path) -> io::Result<Option<DirectAlign>> {
    let cpath = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: an all-zero statx is a valid value of this plain C struct.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `cpath` is a NUL-terminated string and `stx` a live, writable statx; both outlive
    // the call.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            cpath.as_ptr(),
            0,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENOSYS) => Ok(None),
            _ => Err(err),
        };
    }
    if stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return Ok(None);
    }
    if stx.stx_dio_offset_align == 0 || stx.stx_dio_mem_align == 0 {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the filesystem does not support direct I/O on this file",
        ));
    }
    Ok(Some(DirectAlign {
        offset: stx.stx_dio_offset_align as usize,
        memory: stx.stx_dio_mem_align as usize,
    }))
}

/// `n` rounded up to a multiple of `align` (a power of two).
pub(crate) fn round_up(n: usize, align: usize) -> usize {
    n.div_ceil(align) * align
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers_are_aligned_and_zeroed() {
        for align in [512usize, 4096, 1 << 16] {
            let mut b = AlignedBuf::new(3 * align + 5, align);
            assert_eq!(b.as_mut_ptr() as usize % align, 0);
            assert_eq!(b.len(), 3 * align + 5);
            // SAFETY: the buffer is `len` bytes long and owned here.
            let bytes = unsafe { std::slice::from_raw_parts(b.base(), b.len()) };
            assert!(bytes.iter().all(|&x| x == 0));
        }
    }

    #[test]
    fn fits_checks_offset_length_and_address() {
        let a = DirectAlign {
            offset: 512,
            memory: 4096,
        };
        assert!(a.fits(1024, 8192, 512));
        assert!(!a.fits(100, 8192, 512));
        assert!(!a.fits(1024, 8192, 100));
        assert!(!a.fits(1024, 8192 + 512, 512));
        assert_eq!(round_up(1, 512), 512);
        assert_eq!(round_up(512, 512), 512);
        assert_eq!(round_up(0, 512), 0);
    }
}
