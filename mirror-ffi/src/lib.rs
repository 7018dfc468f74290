//! The stable C ABI of mirror.
