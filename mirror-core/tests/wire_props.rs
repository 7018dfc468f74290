//! Properties of the frame decoder under arbitrary input: it never panics, never allocates more
//! than the frame limit allows, refuses what it cannot decode, and decodes every frame the
//! encoder writes back to the same message.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use mirror_core::wire::{self, kind, FrameError, Message};
use mirror_core::{Algorithm, BlockRange};
use proptest::prelude::*;

/// The system allocator, recording the largest single allocation of the current thread.
struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the thread-local is a
// const-initialised Cell that neither allocates nor has a destructor.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(layout.size())));
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (see `alloc`).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(new_size)));
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn largest_allocation_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let r = f();
    (r, LARGEST.with(|l| l.get()))
}

/// A frame with a correct header and checksum around `payload`.
fn framed(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(&[kind, 0, 0, 0]);
    f.extend_from_slice(payload);
    let crc = crc32fast_hash(&f);
    f.extend_from_slice(&crc.to_le_bytes());
    f
}

/// CRC-32 (IEEE), bit by bit: the test does not trust the code it checks for its checksum.
fn crc32fast_hash(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn algorithm() -> impl Strategy<Value = Algorithm> {
    prop_oneof![
        Just(Algorithm::Crc32),
        Just(Algorithm::Md5),
        Just(Algorithm::Sha1)
    ]
}

fn range() -> impl Strategy<Value = BlockRange> {
    (0u64..1 << 40, 1u64..=wire::MAX_REQUEST_BLOCKS).prop_map(|(s, c)| BlockRange::new(s, c))
}

/// Flags a WriteZeroes or Trim may carry.
fn zero_flags() -> impl Strategy<Value = u8> {
    use wire::zero_flags::{FLUSH, RECEIVED};
    prop::sample::select(vec![0, FLUSH, RECEIVED, FLUSH | RECEIVED])
}

/// Every message a valid peer may send.
fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u16>(), any::<[u8; 32]>()).prop_map(|(version, nonce)| Message::Hello {
            magic: wire::MAGIC,
            version,
            nonce
        }),
        any::<[u8; 32]>().prop_map(|proof| Message::Auth { proof }),
        (
            any::<u64>(),
            any::<u64>(),
            0..=wire::write_flags::ALL,
            prop::collection::vec(any::<u8>(), 1..9000)
        )
            .prop_map(|(seq, offset, flags, data)| Message::Write {
                seq,
                offset,
                flags,
                data
            }),
        (
            any::<u64>(),
            0u64..1 << 50,
            1u64..1 << 40,
            zero_flags(),
            any::<bool>()
        )
            .prop_map(|(seq, offset, len, flags, trim)| if trim {
                Message::Trim {
                    seq,
                    offset,
                    len,
                    flags,
                }
            } else {
                Message::WriteZeroes {
                    seq,
                    offset,
                    len,
                    flags,
                }
            }),
        any::<u64>().prop_map(|seq| Message::Ack { seq }),
        any::<u64>().prop_map(|seq| Message::Flush { seq }),
        any::<u64>().prop_map(|seq| Message::Barrier { seq }),
        (any::<u64>(), algorithm(), range()).prop_map(|(req, algorithm, range)| {
            Message::ScanRequest {
                req,
                algorithm,
                level: 0,
                priority: wire::priority::IDLE,
                range,
            }
        }),
        (any::<u64>(), algorithm(), 0u64..1 << 40, 1usize..64).prop_map(
            |(req, algorithm, start, n)| Message::Digests {
                req,
                algorithm,
                start,
                digests: vec![0xA5; n * algorithm.digest_len()],
            }
        ),
        (any::<u64>(), range()).prop_map(|(req, range)| Message::BlockRequest { req, range }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(req, mismatched)| Message::CompareDone { req, mismatched }),
        any::<u64>().prop_map(|nonce| Message::Ping { nonce }),
        (any::<u16>(), "[a-z ]{0,200}")
            .prop_map(|(code, message)| Message::Error { code, message }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic_nor_allocate_past_the_limit(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        limit in prop_oneof![Just(wire::MAX_HANDSHAKE_PAYLOAD), Just(wire::MAX_PAYLOAD)],
    ) {
        let (r, largest) = largest_allocation_during(|| wire::read_frame(&mut &bytes[..], limit));
        prop_assert!(largest <= limit + wire::TRAILER_LEN + 4096, "allocated {largest} bytes");
        if let Ok((_, n)) = r {
            prop_assert!(n <= bytes.len());
        }
    }

    #[test]
    fn a_claimed_length_past_the_limit_is_refused_before_allocation(
        len in (wire::MAX_HANDSHAKE_PAYLOAD as u32 + 1)..=u32::MAX,
        k in any::<u8>(),
    ) {
        let mut f = len.to_le_bytes().to_vec();
        f.extend_from_slice(&[k, 0, 0, 0]);
        let (r, largest) = largest_allocation_during(|| {
            wire::read_frame(&mut &f[..], wire::MAX_HANDSHAKE_PAYLOAD)
        });
        prop_assert!(matches!(r, Err(FrameError::Malformed(_))));
        prop_assert!(largest < 4096, "allocated {largest} bytes for a refused frame");
    }

    #[test]
    fn well_framed_arbitrary_payloads_decode_or_are_refused_never_panic(
        k in 0u8..=30,
        payload in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let f = framed(k, &payload);
        match wire::read_frame(&mut &f[..], wire::MAX_PAYLOAD) {
            Ok((m, n)) => {
                prop_assert_eq!(n, f.len());
                prop_assert_eq!(m.kind(), k);
                // What decodes re-encodes to the same bytes (an Error's text may be repaired
                // from invalid UTF-8, as may an IoError's volume name, so they are not).
                if k != kind::ERROR && k != kind::IO_ERROR {
                    prop_assert_eq!(m.to_frame().unwrap(), f);
                }
            }
            Err(FrameError::Malformed(_)) => {}
            Err(FrameError::Io(e)) => prop_assert!(false, "I/O error from a slice: {e}"),
        }
    }

    #[test]
    fn every_encoded_message_decodes_to_itself(m in message()) {
        let f = m.to_frame().unwrap();
        let (back, n) = wire::read_frame(&mut &f[..], wire::MAX_PAYLOAD).unwrap();
        prop_assert_eq!(n, f.len());
        prop_assert_eq!(back, m);
    }

    #[test]
    fn any_single_corruption_of_a_frame_is_detected(
        m in message(),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let mut f = m.to_frame().unwrap();
        let i = at.index(f.len());
        f[i] ^= flip;
        match wire::read_frame(&mut &f[..], wire::MAX_PAYLOAD) {
            Ok((back, _)) => prop_assert!(false, "corrupted byte {i} decoded as {back:?}"),
            Err(FrameError::Malformed(_)) => {}
            // A length grown past the bytes there is a truncated stream.
            Err(FrameError::Io(e)) => prop_assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof),
        }
    }

    #[test]
    fn a_stream_of_frames_decodes_in_order_and_stops_at_garbage(
        msgs in prop::collection::vec(message(), 1..8),
        garbage in prop::collection::vec(any::<u8>(), 1..64),
    ) {
        let mut stream = Vec::new();
        for m in &msgs {
            m.encode(&mut stream).unwrap();
        }
        stream.extend_from_slice(&garbage);
        let mut r = &stream[..];
        for m in &msgs {
            let (back, _) = wire::read_frame(&mut r, wire::MAX_PAYLOAD).unwrap();
            prop_assert_eq!(&back, m);
        }
        prop_assert!(wire::read_frame(&mut r, wire::MAX_PAYLOAD).is_err());
    }
}
