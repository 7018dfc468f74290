//! Read-only, zero-copy views of Python buffer exporters (bytes, bytearray, memoryview, mmap,
//! array.array, numpy arrays…).
//!
//! A view holds the exporter's buffer (`PyObject_GetBuffer` with `PyBUF_SIMPLE`, which only
//! succeeds for C-contiguous memory) until it is dropped, so the memory stays alive and a
//! bytearray cannot be resized underneath it while the GIL is released. `PyObject_GetBuffer`
//! joined the limited API only in 3.11 (so pyo3-ffi declares it only there), but CPython has
//! exported it, with this `Py_buffer` layout, since 3.3; the abi3-py39 wheel relies on that
//! and declares the three names it needs itself.

use std::ffi::{c_char, c_int, c_void};
use std::ptr::NonNull;

use pyo3::ffi::{PyObject, Py_ssize_t};
use pyo3::prelude::*;

/// CPython's `Py_buffer` (Include/pybuffer.h), unchanged since 3.3.
#[repr(C)]
#[derive(Debug)]
struct RawBuffer {
    buf: *mut c_void,
    obj: *mut PyObject,
    len: Py_ssize_t,
    itemsize: Py_ssize_t,
    readonly: c_int,
    ndim: c_int,
    format: *mut c_char,
    shape: *mut Py_ssize_t,
    strides: *mut Py_ssize_t,
    suboffsets: *mut Py_ssize_t,
    internal: *mut c_void,
}

/// Plain contiguous bytes: no format, shape or strides requested.
const PYBUF_SIMPLE: c_int = 0;

extern "C" {
    fn PyObject_GetBuffer(obj: *mut PyObject, view: *mut RawBuffer, flags: c_int) -> c_int;
    fn PyBuffer_Release(view: *mut RawBuffer);
}

/// The bytes of a contiguous buffer, borrowed from its exporter.
#[derive(Debug)]
pub(crate) struct BufferView {
    // Boxed: some exporters point into the `Py_buffer` itself, so its address must not change.
    view: Box<RawBuffer>,
}

// SAFETY: the view only reads memory the exporter keeps alive until `PyBuffer_Release`, which
// `Drop` calls with the GIL held; nothing in it is tied to the creating thread.
unsafe impl Send for BufferView {}
// SAFETY: `as_slice` hands out shared, read-only access; see `Send`.
unsafe impl Sync for BufferView {}

impl BufferView {
    /// Borrows the buffer of `obj`; `TypeError` if it has none, `BufferError` if it is not
    /// C-contiguous.
    pub(crate) fn get(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        let mut view = Box::new(RawBuffer {
            buf: std::ptr::null_mut(),
            obj: std::ptr::null_mut(),
            len: 0,
            itemsize: 0,
            readonly: 0,
            ndim: 0,
            format: std::ptr::null_mut(),
            shape: std::ptr::null_mut(),
            strides: std::ptr::null_mut(),
            suboffsets: std::ptr::null_mut(),
            internal: std::ptr::null_mut(),
        });
        // SAFETY: `obj` is a live object (we hold a reference and the GIL); `view` points to a
        // writable `Py_buffer` that outlives the call. PyBUF_SIMPLE asks for plain contiguous
        // bytes and no format/shape/strides.
        let rc = unsafe { PyObject_GetBuffer(obj.as_ptr(), &mut *view, PYBUF_SIMPLE) };
        if rc != 0 {
            return Err(PyErr::fetch(obj.py()));
        }
        Ok(BufferView { view })
    }

    /// The bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        let len = usize::try_from(self.view.len).unwrap_or(0);
        match NonNull::new(self.view.buf.cast::<u8>()) {
            // SAFETY: a successful PyBUF_SIMPLE request yields `len` contiguous bytes at `buf`,
            // valid until release, which only `Drop` does. The exporter cannot be resized while
            // exported. Concurrent writes to a mutable exporter by another thread are that
            // thread's race with this call, as with `os.write`.
            Some(p) if len > 0 => unsafe { std::slice::from_raw_parts(p.as_ptr(), len) },
            _ => &[],
        }
    }
}

impl Drop for BufferView {
    fn drop(&mut self) {
        Python::attach(|_| {
            // SAFETY: `view` was filled by a successful `PyObject_GetBuffer` and is released
            // exactly once, here, with the GIL held.
            unsafe { PyBuffer_Release(&mut *self.view) }
        });
    }
}
