//! The secondary's session fed arbitrary frame sequences after a valid handshake: valid writes
//! with one fault somewhere among them (a corrupted byte, a write past the end, an unknown
//! kind, an oversized length, garbage). Whatever the sequence, the secondary does not panic,
//! applies exactly the writes before the fault and nothing after it, and keeps serving.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use mirror_core::wire::{self, Message};
use mirror_core::{BlockSize, MemVolume, Secondary, SecondaryConfig, Volume};
use proptest::prelude::*;

const BS: u64 = 4096;
const BLOCKS: u64 = 16;

#[derive(Debug, Clone)]
enum Fault {
    None,
    FlipByte(usize, u8),
    PastTheEnd,
    UnknownKind,
    HugeLength,
    Garbage(Vec<u8>),
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        Just(Fault::None),
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Fault::FlipByte(i, x)),
        Just(Fault::PastTheEnd),
        Just(Fault::UnknownKind),
        Just(Fault::HugeLength),
        prop::collection::vec(any::<u8>(), 1..64).prop_map(Fault::Garbage),
    ]
}

fn handshake(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let send = |s: &mut TcpStream, m: &Message| s.write_all(&m.to_frame().unwrap()).unwrap();
    send(
        &mut s,
        &Message::Hello {
            magic: wire::MAGIC,
            version: wire::PROTOCOL_VERSION,
            nonce: [1; 32],
        },
    );
    assert!(matches!(
        wire::read_frame(&mut s, wire::MAX_PAYLOAD).unwrap().0,
        Message::HelloReply { .. }
    ));
    send(
        &mut s,
        &Message::Open {
            volume_id: 1,
            session: 9,
            epoch: 1,
            size: BLOCKS * BS,
            block_size: BS as u32,
            generation: 9,
            flags: 0,
            history: Vec::new(),
        },
    );
    assert!(matches!(
        wire::read_frame(&mut s, wire::MAX_PAYLOAD).unwrap().0,
        Message::OpenReply { .. }
    ));
    s
}

fn write_frame(seq: u64, block: u64, fill: u8, flags: u8) -> Vec<u8> {
    Message::Write {
        seq,
        offset: block * BS,
        flags,
        data: vec![fill; BS as usize],
    }
    .to_frame()
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn a_session_applies_exactly_the_valid_writes_before_a_fault(
        writes in prop::collection::vec((0..BLOCKS, 1u8..=255, 0u8..=5), 1..24),
        at in any::<prop::sample::Index>(),
        fault in fault(),
    ) {
        let mem = Arc::new(MemVolume::new(BLOCKS * BS, BlockSize::new(BS).unwrap()));
        let secondary = Secondary::new(mem.clone(), SecondaryConfig::new("127.0.0.1:0")).unwrap();
        let addr = secondary.serve().unwrap();
        let mut s = handshake(addr);
        let cut = at.index(writes.len() + 1);
        let mut expected = vec![0u8; (BLOCKS * BS) as usize];
        let mut stream = Vec::new();
        for (i, (block, fill, flag_pick)) in writes.iter().enumerate() {
            if i == cut {
                match &fault {
                    Fault::None => {}
                    Fault::FlipByte(j, x) => {
                        let mut f = write_frame(1000, *block, 0xEE, 0);
                        let k = j % f.len();
                        f[k] ^= x;
                        stream.extend_from_slice(&f);
                    }
                    Fault::PastTheEnd => stream.extend_from_slice(&write_frame(1000, BLOCKS, 0xEE, 0)),
                    Fault::UnknownKind => {
                        let mut f = vec![0, 0, 0, 0, 200, 0, 0, 0];
                        let crc = crc32(&f);
                        f.extend_from_slice(&crc.to_le_bytes());
                        stream.extend_from_slice(&f);
                    }
                    Fault::HugeLength => stream.extend_from_slice(&[0xff, 0xff, 0xff, 0x7f, 6, 0, 0, 0]),
                    Fault::Garbage(g) => stream.extend_from_slice(g),
                }
            }
            let flags = [0, wire::write_flags::FLUSH, wire::write_flags::RECEIVED][(*flag_pick % 3) as usize];
            stream.extend_from_slice(&write_frame(i as u64 + 1, *block, *fill, flags));
            if i < cut || matches!(fault, Fault::None) {
                let o = (*block * BS) as usize;
                expected[o..o + BS as usize].fill(*fill);
            }
        }
        // A flipped byte may leave a valid frame of another meaning only if the CRC still
        // matches, which a single flip never does; garbage of a valid frame is as unlikely.
        s.write_all(&stream).unwrap();
        let _ = s.shutdown(Shutdown::Write);
        // The session is over when the secondary closes its side.
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
        let got = mem.to_vec();
        for b in 0..BLOCKS as usize {
            let r = b * BS as usize..(b + 1) * BS as usize;
            prop_assert_eq!(&got[r.clone()], &expected[r], "block {} (fault {:?} before write {})", b, fault, cut);
        }
        // It keeps serving: a new session is accepted.
        drop(handshake(addr));
        secondary.stop();
        let _ = mem.size();
    }
}

fn crc32(data: &[u8]) -> u32 {
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
