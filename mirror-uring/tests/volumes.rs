//! The volume suite over every backend (sync, uring buffered, uring O_DIRECT), on regular
//! files and on a loop device when running as root.

mod common;

use std::sync::Arc;

use common::{pattern, skip, sparse_file, Backend, LoopDevice, BACKENDS};
use mirror_core::scan::{scan_all, ScanOptions};
use mirror_core::volume::conformance;
use mirror_core::{Algorithm, BlockRange, BlockSize, ErrorKind, IoPriority, ReadOp, Volume};
use mirror_uring::{
    create_volume, open_volume, open_volume_with_info, IoBackend, UringVolume, VolumeOptions,
};

const BS: BlockSize = BlockSize::DEFAULT;

/// Four whole blocks and a partial one whose length is not a multiple of 512 either.
const ODD_SIZE: u64 = 4096 * 5 + 100;

fn open(path: &std::path::Path, b: Backend) -> Arc<dyn Volume> {
    let (vol, info) = open_volume_with_info(path, &b.options(BS)).unwrap();
    assert_eq!(info.backend, b.io, "{}: {:?}", b.label(), info.fallback);
    assert_eq!(info.direct, b.direct == Some(true), "{}", b.label());
    vol
}

#[test]
fn every_backend_keeps_the_volume_contract_on_a_file() {
    let dir = tempfile::tempdir().unwrap();
    for (i, b) in BACKENDS.into_iter().enumerate() {
        let path = dir.path().join(format!("v{i}"));
        let vol = create_volume(&path, ODD_SIZE, &b.options(BS)).unwrap();
        conformance::run(&*vol);
        drop(vol);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            ODD_SIZE,
            "{}: the file changed size",
            b.label()
        );
    }
}

#[test]
fn every_backend_keeps_the_volume_contract_on_a_loop_device() {
    let dir = tempfile::tempdir().unwrap();
    for (i, b) in BACKENDS.into_iter().enumerate() {
        let backing = dir.path().join(format!("loop{i}"));
        // Devices are whole 512-byte sectors: the last 4 KiB block is a 512-byte partial one.
        sparse_file(&backing, 4096 * 5 + 512);
        let dev = match LoopDevice::attach(&backing, None) {
            Ok(d) => d,
            Err(reason) => {
                return skip(
                    "every_backend_keeps_the_volume_contract_on_a_loop_device",
                    &reason,
                )
            }
        };
        let vol = open(&dev.path, b);
        assert_eq!(vol.size(), 4096 * 5 + 512);
        conformance::run(&*vol);
        drop(vol);
        // What went through the device is in the backing file.
        let bytes = std::fs::read(&backing).unwrap();
        assert_eq!(&bytes[4096 * 5..], &[0xA5u8; 512][..], "{}", b.label());
    }
}

#[test]
fn block_devices_default_to_direct_io_and_files_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    sparse_file(&file, 1 << 20);
    let opts = VolumeOptions::default();
    let (_, info) = open_volume_with_info(&file, &opts).unwrap();
    assert_eq!(info.backend, IoBackend::Uring);
    assert!(!info.direct);
    let dev = match LoopDevice::attach(&file, None) {
        Ok(d) => d,
        Err(reason) => return skip("block_devices_default_to_direct_io", &reason),
    };
    let (_, info) = open_volume_with_info(&dev.path, &opts).unwrap();
    assert!(info.direct, "a block device opens with O_DIRECT by default");
}

#[test]
fn direct_io_bounces_misaligned_buffers_and_keeps_the_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v");
    let direct = Backend {
        io: IoBackend::Uring,
        direct: Some(true),
    };
    let size = 4096 * 70 + 100;
    let vol = create_volume(&path, size, &direct.options(BS)).unwrap();
    let data = pattern(size as usize, 1);
    // A buffer one byte off any alignment the kernel would accept for O_DIRECT.
    let mut shifted = vec![0u8; data.len() + 1];
    shifted[1..].copy_from_slice(&data);
    vol.write_at(0, &shifted[1..]).unwrap();
    vol.flush().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data, "bytes on disk");

    let mut back = vec![0u8; data.len() + 1];
    vol.read_at(0, &mut back[1..]).unwrap();
    assert_eq!(&back[1..], &data[..]);

    // The partial last block alone, read into a misaligned buffer.
    let last = 4096 * 70;
    let mut tail = [0u8; 101];
    vol.read_at(last, &mut tail[1..]).unwrap();
    assert_eq!(&tail[1..], &data[last as usize..]);
}

#[test]
fn direct_io_with_a_block_size_below_the_device_sector_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("b");
    sparse_file(&backing, 1 << 20);
    let dev = match LoopDevice::attach(&backing, Some(4096)) {
        Ok(d) => d,
        Err(reason) => {
            return skip(
                "direct_io_with_a_block_size_below_the_device_sector_is_a_clear_error",
                &reason,
            )
        }
    };
    let opts = VolumeOptions {
        block_size: BlockSize::new(512).unwrap(),
        direct: Some(true),
        ..VolumeOptions::default()
    };
    let err = open_volume(&dev.path, &opts).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("O_DIRECT") && msg.contains("aligned to 4096") && msg.contains("512"),
        "{msg}"
    );
    // Without O_DIRECT the same block size works.
    let opts = VolumeOptions {
        direct: Some(false),
        ..opts
    };
    let vol = open_volume(&dev.path, &opts).unwrap();
    vol.write_at(512, &[7u8; 512]).unwrap();
    let mut b = [0u8; 512];
    vol.read_at(512, &mut b).unwrap();
    assert_eq!(b, [7u8; 512]);
    // And with a block size the device accepts, O_DIRECT works.
    let opts = VolumeOptions {
        block_size: BS,
        direct: Some(true),
        ..opts
    };
    let vol = open_volume(&dev.path, &opts).unwrap();
    let mut b = vec![0u8; 4096];
    vol.read_at(0, &mut b).unwrap();
    assert_eq!(&b[512..1024], &[7u8; 512][..]);
}

#[test]
fn direct_tail_write_goes_to_disk_without_growing_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v");
    let opts = VolumeOptions {
        direct: Some(true),
        ..VolumeOptions::default()
    };
    let vol = create_volume(&path, ODD_SIZE, &opts).unwrap();
    vol.write_at(4096 * 5, &[0x5Au8; 100]).unwrap();
    vol.write_at(4096, &[0x11u8; 4096]).unwrap();
    vol.flush().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, ODD_SIZE);
    assert_eq!(&bytes[4096 * 5..], &[0x5Au8; 100][..]);
    assert_eq!(&bytes[4096..8192], &[0x11u8; 4096][..]);
    // A direct read after the buffered tail write sees it.
    let mut tail = [0u8; 100];
    vol.read_at(4096 * 5, &mut tail).unwrap();
    assert_eq!(tail, [0x5Au8; 100]);
}

#[test]
fn batches_longer_than_the_queue_depth_read_every_op_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v");
    let size = 4096 * 200 + 7;
    let data = pattern(size, 2);
    std::fs::write(&path, &data).unwrap();
    for direct in [false, true] {
        let opts = VolumeOptions {
            queue_depth: 3,
            direct: Some(direct),
            ..VolumeOptions::default()
        };
        let vol = open_volume(&path, &opts).unwrap();
        // 67 ops of varying length, each into its own (misaligned) buffer, in shuffled order.
        let mut spans: Vec<(u64, usize)> = Vec::new();
        let mut off = 0u64;
        let mut i = 0;
        while off < size as u64 {
            let blocks = 1 + (i % 5) as u64;
            let len = (blocks * 4096).min(size as u64 - off) as usize;
            spans.push((off, len));
            off += len as u64;
            i += 1;
        }
        spans.reverse();
        let mut bufs: Vec<Vec<u8>> = spans.iter().map(|&(_, l)| vec![0u8; l + 1]).collect();
        let mut ops: Vec<ReadOp<'_>> = spans
            .iter()
            .zip(bufs.iter_mut())
            .map(|(&(offset, _), b)| ReadOp {
                offset,
                buf: &mut b[1..],
            })
            .collect();
        vol.read_batch(&mut ops, IoPriority::Idle).unwrap();
        drop(ops);
        for ((off, len), b) in spans.iter().zip(&bufs) {
            let off = *off as usize;
            assert_eq!(
                &b[1..],
                &data[off..off + len],
                "direct={direct} op at {off}"
            );
        }
    }
}

#[test]
fn a_bad_op_in_a_batch_refuses_the_whole_batch_before_any_io() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v");
    let vol = create_volume(&path, ODD_SIZE, &VolumeOptions::default()).unwrap();
    let mut a = vec![0xEEu8; 4096];
    let mut b = vec![0xEEu8; 4096];
    let mut ops = [
        ReadOp {
            offset: 0,
            buf: &mut a,
        },
        ReadOp {
            offset: 4096 * 5,
            buf: &mut b,
        },
    ];
    let err = vol.read_batch(&mut ops, IoPriority::Normal).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert_eq!(a, vec![0xEEu8; 4096], "the valid op was not read either");
}

#[test]
fn many_threads_share_one_uring_volume() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v");
    for direct in [false, true] {
        let opts = VolumeOptions {
            direct: Some(direct),
            queue_depth: 4,
            ..VolumeOptions::default()
        };
        let _ = std::fs::remove_file(&path);
        let vol = create_volume(&path, 4096 * 16 * 12, &opts).unwrap();
        std::thread::scope(|s| {
            for t in 0..12u64 {
                let vol = &vol;
                s.spawn(move || {
                    for round in 0..20u64 {
                        let off = (t * 16 + round % 16) * 4096;
                        let data = pattern(4096, t * 1000 + round);
                        vol.write_at(off, &data).unwrap();
                        let mut back = vec![0u8; 4096];
                        vol.read_at(off, &mut back).unwrap();
                        assert_eq!(back, data, "thread {t} round {round}");
                    }
                });
            }
        });
        vol.flush().unwrap();
    }
}

#[test]
fn read_only_volumes_refuse_writes_and_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v");
    std::fs::write(&path, pattern(4096 * 4, 3)).unwrap();
    for b in BACKENDS {
        let opts = VolumeOptions {
            read_only: true,
            ..b.options(BS)
        };
        let vol = open_volume(&path, &opts).unwrap();
        let err = vol.write_at(0, &[0u8; 4096]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io, "{}: {err}", b.label());
        let mut buf = vec![0u8; 4096];
        vol.read_at(4096, &mut buf).unwrap();
        assert_eq!(buf, pattern(4096 * 4, 3)[4096..8192]);
    }
}

#[test]
fn bad_options_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v");
    sparse_file(&path, 4096 * 4);
    let err = open_volume(
        &path,
        &VolumeOptions {
            io: IoBackend::Sync,
            direct: Some(true),
            ..VolumeOptions::default()
        },
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("uring"), "{err}");
    for qd in [0, mirror_uring::MAX_QUEUE_DEPTH + 1] {
        let err = UringVolume::open(
            &path,
            &VolumeOptions {
                queue_depth: qd,
                ..VolumeOptions::default()
            },
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.to_string().contains("queue depth"), "{err}");
    }
    let err = open_volume(dir.path().join("missing"), &VolumeOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(err.to_string().contains("missing"), "{err}");
    assert!("spdk".parse::<IoBackend>().is_err());
    assert_eq!("sync".parse::<IoBackend>().unwrap(), IoBackend::Sync);
}

#[test]
fn scans_give_the_same_digests_on_every_backend() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v");
    // Several 4 MiB scan batches and a partial last block.
    let size = (9 << 20) + 4096 * 3 + 1234;
    let data = pattern(size, 4);
    std::fs::write(&path, &data).unwrap();
    for alg in Algorithm::ALL {
        let mut maps = Vec::new();
        for b in BACKENDS {
            let vol = open(&path, b);
            let range = BlockRange::new(0, vol.blocks());
            let mut opts = ScanOptions::new(alg);
            opts.priority = IoPriority::Idle;
            maps.push((b.label(), scan_all(&*vol, range, opts).unwrap()));
        }
        let (_, first) = &maps[0];
        assert_eq!(first.len(), size.div_ceil(4096));
        for (i, block) in data.chunks(4096).enumerate() {
            assert_eq!(
                first.get(i).unwrap(),
                &alg.digest(block)[..],
                "{alg} block {i}"
            );
        }
        for (label, m) in &maps[1..] {
            assert_eq!(m, first, "{alg}: {label} differs from sync");
        }
    }
}

#[test]
fn scans_of_a_loop_device_match_on_every_backend() {
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("b");
    let data = pattern((6 << 20) + 512, 5);
    std::fs::write(&backing, &data).unwrap();
    let dev = match LoopDevice::attach(&backing, None) {
        Ok(d) => d,
        Err(reason) => return skip("scans_of_a_loop_device_match_on_every_backend", &reason),
    };
    let mut maps = Vec::new();
    for b in BACKENDS {
        let vol = open(&dev.path, b);
        let range = BlockRange::new(0, vol.blocks());
        maps.push(scan_all(&*vol, range, ScanOptions::new(Algorithm::Sha1)).unwrap());
    }
    for (i, block) in data.chunks(4096).enumerate() {
        assert_eq!(maps[0].get(i).unwrap(), &Algorithm::Sha1.digest(block)[..]);
    }
    assert!(maps.iter().all(|m| m == &maps[0]));
}

#[test]
fn direct_writes_near_an_unaligned_end_never_lose_each_other() {
    // 512-byte blocks: the file's last page holds two whole blocks and the partial one, and
    // threads write all of them, and the blocks before, at once.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v");
    let size = 4096 * 3 + 1500;
    let opts = VolumeOptions {
        block_size: BlockSize::new(512).unwrap(),
        direct: Some(true),
        ..VolumeOptions::default()
    };
    let vol = create_volume(&path, size, &opts).unwrap();
    let blocks = vol.blocks();
    assert_eq!(blocks, 27);
    std::thread::scope(|s| {
        for b in 18..blocks {
            let vol = &vol;
            s.spawn(move || {
                let len = (size - b * 512).min(512) as usize;
                for round in 0..40u64 {
                    let data = pattern(len, b * 1000 + round);
                    vol.write_at(b * 512, &data).unwrap();
                    let mut back = vec![0u8; len];
                    vol.read_at(b * 512, &mut back).unwrap();
                    assert_eq!(back, data, "block {b} round {round}");
                }
            });
        }
    });
    vol.flush().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, size);
    for b in 18..blocks {
        let start = (b * 512) as usize;
        let end = (start + 512).min(size as usize);
        assert_eq!(
            &bytes[start..end],
            &pattern(end - start, b * 1000 + 39)[..],
            "block {b} on disk"
        );
    }
}
