//! The fallback path: when io_uring is disabled, `open_volume` gives the sync backend, says
//! why, and the volume keeps the same contract. In its own test binary because it flips
//! process-wide switches.

use mirror_core::volume::conformance;
use mirror_core::BlockSize;
use mirror_uring::{
    create_volume, force_sync_fallback, open_volume_with_info, uring_available,
    uring_unavailable_reason, IoBackend, VolumeOptions, ENV_VAR,
};

#[test]
fn disabled_io_uring_falls_back_to_the_sync_backend() {
    let dir = tempfile::tempdir().unwrap();
    let opts = VolumeOptions::default();
    assert_eq!(opts.io, IoBackend::Uring);

    // Baseline: this kernel has io_uring (the rest of the suite relies on it).
    assert!(uring_available(), "{:?}", uring_unavailable_reason());
    let path = dir.path().join("a");
    create_volume(&path, 4096 * 5 + 100, &opts).unwrap();
    let (_, info) = open_volume_with_info(&path, &opts).unwrap();
    assert_eq!(info.backend, IoBackend::Uring);

    // Forced by the function.
    force_sync_fallback(true);
    assert!(!uring_available());
    let path = dir.path().join("b");
    let vol = create_volume(&path, 4096 * 5 + 100, &opts).unwrap();
    conformance::run(&*vol);
    let (_, info) = open_volume_with_info(&path, &opts).unwrap();
    assert_eq!(info.backend, IoBackend::Sync);
    assert!(!info.direct);
    assert!(info.fallback.unwrap().contains("force_sync_fallback"));
    force_sync_fallback(false);
    assert!(uring_available());

    // Forced by the environment, as an operator would.
    std::env::set_var(ENV_VAR, "off");
    let (vol, info) = open_volume_with_info(&path, &opts).unwrap();
    assert_eq!(info.backend, IoBackend::Sync);
    assert!(info.fallback.unwrap().contains(ENV_VAR));
    assert_eq!(vol.block_size(), BlockSize::DEFAULT);
    // A direct request on the fallback is served buffered rather than refused.
    let direct = VolumeOptions {
        direct: Some(true),
        ..opts.clone()
    };
    let (_, info) = open_volume_with_info(&path, &direct).unwrap();
    assert_eq!(info.backend, IoBackend::Sync);
    std::env::set_var(ENV_VAR, "on");
    let (_, info) = open_volume_with_info(&path, &opts).unwrap();
    assert_eq!(info.backend, IoBackend::Uring);
    std::env::remove_var(ENV_VAR);
}
