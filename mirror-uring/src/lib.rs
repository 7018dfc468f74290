//! io_uring volume backend for mirror.
