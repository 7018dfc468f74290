//! Python bindings of mirror.
