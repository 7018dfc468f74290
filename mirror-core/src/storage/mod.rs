//! Storage: the block volumes mirror reads and writes, per-block digests, and scans that
//! stream those digests in batches.
//!
//! Invariants held here: every backend refuses an I/O that breaks the volume contract
//! (aligned offsets, whole blocks but the last, nothing past the end) before touching the
//! store; a scan never holds a whole volume's digests; background scans read at idle I/O
//! priority and hash on `SCHED_IDLE` threads in short slices ([`idle`]). Nothing here knows a link or a peer; a scan batch is framed as `Digests` messages by [`scan::digest_messages`] and nothing more.

pub(crate) mod background;
pub mod digest;
pub mod exclusive;
pub mod fault;
pub mod idle;
pub mod scan;
pub mod volume;
pub mod zero;
