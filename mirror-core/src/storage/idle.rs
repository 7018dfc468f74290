//! Background hashing on threads that run only when a core would otherwise be idle.
//!
//! Periodic scans and background resyncs hash every block of the volume on both sides. At
//! nice 19 that hashing still holds a core until the scheduler decides to preempt it, so each
//! thread a foreground write wakes in turn (the caller, the link's writer and reader, the
//! secondary's apply loop) can wait a scheduler slice behind it, and write p99 rises with the
//! scan's rate. Here background digests are computed on a process-wide pool of threads
//! scheduled `SCHED_IDLE`: a waking foreground thread preempts them at once. The pool hashes in
//! short slices (a few dozen blocks) and yields between them, so even where the kernel refuses
//! `SCHED_IDLE` (the pool then runs at nice 19) a foreground thread waits at most one slice.
//!
//! Invariants: the pool's threads are dedicated — they only hash, hold no lock and own no I/O,
//! so a foreground thread never waits on one that is starved — and they keep their idle policy
//! for their whole life; no caller's thread changes its scheduling. Slicing never changes a
//! digest: slices are whole blocks, each block hashed in one piece, the last block possibly
//! short exactly as in an unsliced scan.

use std::sync::OnceLock;

use rayon::prelude::*;
use tracing::debug;

use crate::storage::digest::Algorithm;
use crate::units::BlockSize;

/// Bytes hashed between two yields: 64 KiB is 30–150 µs of MD5 or SHA-1 on one core, well
/// under a scheduler slice, and long enough that the yields cost nothing measurable.
pub const SLICE_BYTES: usize = 64 << 10;

/// How the background hashing threads are scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdlePolicy {
    /// `SCHED_IDLE`: they run only when no other thread wants the core.
    SchedIdle,
    /// The kernel refused `SCHED_IDLE`; they run at nice 19 instead.
    Nice19,
    /// Neither could be set; they run at the process's priority.
    Unchanged,
}

struct IdlePool {
    pool: rayon::ThreadPool,
    policy: IdlePolicy,
}

static POOL: OnceLock<Option<IdlePool>> = OnceLock::new();

fn pool() -> Option<&'static IdlePool> {
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (tx, rx) = crossbeam_channel::unbounded();
        let built = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("mirror-idle-hash-{i}"))
            .start_handler(move |_| {
                let _ = tx.send(lower_to_idle());
            })
            .build();
        match built {
            Ok(pool) => {
                // Every thread has run its start handler once the pool answers on all of them;
                // the weakest policy any got is the pool's.
                pool.broadcast(|_| ());
                let policy = rx
                    .try_iter()
                    .take(threads)
                    .max_by_key(|p| *p as u8)
                    .unwrap_or(IdlePolicy::Unchanged);
                debug!(threads, ?policy, "background hashing pool started");
                Some(IdlePool { pool, policy })
            }
            Err(e) => {
                debug!(error = %e, "no background hashing pool; hashing on the caller's thread");
                None
            }
        }
    })
    .as_ref()
}

/// Puts the calling thread under `SCHED_IDLE`, or nice 19 when the kernel refuses.
fn lower_to_idle() -> IdlePolicy {
    use thread_priority::unix::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
        ThreadSchedulePolicy,
    };
    let idle = set_thread_priority_and_policy(
        thread_native_id(),
        thread_priority::ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    );
    match idle {
        Ok(()) => IdlePolicy::SchedIdle,
        Err(e) => {
            debug!(error = ?e, "SCHED_IDLE refused; background hashing at nice 19");
            let tid = rustix::thread::gettid();
            match rustix::process::setpriority_process(Some(tid), 19) {
                Ok(()) => IdlePolicy::Nice19,
                Err(_) => IdlePolicy::Unchanged,
            }
        }
    }
}

/// How the background hashing threads ended up scheduled (starting them if need be).
pub fn policy() -> IdlePolicy {
    pool().map_or(IdlePolicy::Unchanged, |p| p.policy)
}

/// Runs `f` on one of the background hashing threads (on the caller's when there are none).
/// For tests and diagnostics: hashing goes through [`hash_blocks`].
pub fn on_hashing_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    match pool() {
        Some(p) => p.pool.install(f),
        None => f(),
    }
}

/// Appends the digest of every block of `data` (which starts on a block boundary; its last
/// block may be short) to `out`, hashed on the background threads in slices of at most
/// `slice_bytes` (whole blocks, at least one), each thread yielding between its slices.
/// The calling thread waits.
pub fn hash_blocks(
    algorithm: Algorithm,
    bs: BlockSize,
    data: &[u8],
    out: &mut Vec<u8>,
    slice_bytes: usize,
) {
    match pool() {
        Some(p) => p
            .pool
            .install(|| hash_sliced(algorithm, bs, data, out, slice_bytes)),
        None => hash_sliced(algorithm, bs, data, out, slice_bytes),
    }
}

/// The slicing itself, on whatever pool the caller runs in.
fn hash_sliced(
    algorithm: Algorithm,
    bs: BlockSize,
    data: &[u8],
    out: &mut Vec<u8>,
    slice_bytes: usize,
) {
    let w = algorithm.digest_len();
    let b = bs.as_usize();
    let n = data.len().div_ceil(b);
    let start = out.len();
    out.resize(start + n * w, 0);
    let per_slice = (slice_bytes / b).max(1);
    out[start..]
        .par_chunks_mut(per_slice * w)
        .zip(data.par_chunks(per_slice * b))
        .for_each(|(digests, slice)| {
            for (d, block) in digests.chunks_mut(w).zip(slice.chunks(b)) {
                algorithm.digest_into(block, d);
            }
            std::thread::yield_now();
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unsliced(alg: Algorithm, bs: BlockSize, data: &[u8]) -> Vec<u8> {
        data.chunks(bs.as_usize())
            .flat_map(|block| alg.digest(block))
            .collect()
    }

    #[test]
    fn sliced_hashing_gives_the_digests_of_an_unsliced_scan_for_every_algorithm_and_size() {
        let bs = BlockSize::DEFAULT;
        let b = bs.as_usize();
        let sizes = [
            0,
            1,
            b - 1,
            b,
            b + 1,
            7 * b + 123,
            SLICE_BYTES - 1,
            SLICE_BYTES,
            SLICE_BYTES + 5,
            3 * SLICE_BYTES + b + 17,
            100 * b + 4095,
        ];
        let data: Vec<u8> = (0..sizes[sizes.len() - 2].max(sizes[sizes.len() - 1]))
            .map(|i| (i * 13 + i / 4093) as u8)
            .collect();
        for alg in Algorithm::ALL {
            for &size in &sizes {
                let want = unsliced(alg, bs, &data[..size]);
                for slice in [1, b - 1, b, 3 * b, SLICE_BYTES, usize::MAX / 2] {
                    let mut got = vec![0xEE; 3]; // digests are appended
                    hash_blocks(alg, bs, &data[..size], &mut got, slice);
                    assert_eq!(&got[..3], &[0xEE; 3]);
                    assert_eq!(
                        &got[3..],
                        &want[..],
                        "{alg}, {size} bytes, slices of {slice}"
                    );
                }
            }
        }
    }

    /// The scheduling policy of the calling thread, from `/proc/thread-self/stat` (field 41).
    fn own_policy() -> u32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("thread stat");
        let after_comm = &stat[stat.rfind(')').expect("comm") + 2..];
        after_comm
            .split_whitespace()
            .nth(41 - 3)
            .and_then(|f| f.parse().ok())
            .expect("policy field")
    }

    const SCHED_IDLE: u32 = 5;

    #[test]
    fn background_hashing_threads_are_sched_idle_and_the_caller_is_untouched() {
        let caller_before = own_policy();
        if policy() != IdlePolicy::SchedIdle {
            assert!(
                std::env::var_os("CI").is_none(),
                "the kernel refused SCHED_IDLE for the hashing threads ({:?})",
                policy()
            );
            eprintln!("skipped: the kernel refused SCHED_IDLE ({:?})", policy());
            return;
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let seen = pool().expect("pool").pool.broadcast(|_| own_policy());
        assert_eq!(seen, vec![SCHED_IDLE; threads]);
        assert_eq!(on_hashing_thread(own_policy), SCHED_IDLE);
        let mut out = Vec::new();
        hash_blocks(
            Algorithm::Sha1,
            BlockSize::DEFAULT,
            &[1u8; 1 << 20],
            &mut out,
            SLICE_BYTES,
        );
        assert_eq!(out.len(), 256 * 20);
        assert_eq!(own_policy(), caller_before);
        assert_ne!(caller_before, SCHED_IDLE);
    }
}
