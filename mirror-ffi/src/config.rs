//! Configuration builders: `mirror_primary_config` and `mirror_secondary_config`.
//!
//! A config is an opaque object the caller creates with the required values, adjusts with
//! setters (each checks its value and leaves the config unchanged on error), passes to
//! `mirror_primary_open` / `mirror_secondary_new` (which copy it) and frees. Builders rather
//! than a struct keep the ABI stable as options are added.
//!
//! The rules every function here keeps, in one place:
//!
//! - Ownership: the caller owns a config from `_new` until `_free` (`_free(NULL)` does
//!   nothing). Setters copy what they are given (numbers, strings, secret bytes, a secret
//!   file's contents) and keep no pointer; opened primaries and secondaries hold their own
//!   copy, so freeing or changing a config never affects them.
//! - Thread safety: a config is used by one thread at a time; distinct configs are
//!   independent. Nothing here blocks or touches the network; `_set_secret_file` reads its
//!   file at once.
//!
//! The setters both builders have (block size, I/O backend, direct I/O, secret, secret file,
//! link timeout) are written once, generic over [`ConfigBuilder`]; the exported functions
//! are one-line forwarders so that cbindgen, which does not expand macros, sees each of them
//! with its own C documentation.

use std::ffi::c_char;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mirror_core::config::read_secret_file;
use mirror_core::meta::default_meta_path;
use mirror_core::tls::TlsConfig;
use mirror_core::{
    Algorithm, BlockSize, CompareSide, OnDisconnect, PeriodicScan, PrimaryConfig, SecondaryConfig,
};
use mirror_uring::VolumeOptions;

use crate::args::{arg_bytes, arg_mut, arg_str, out_ptr, write_out, CEnum};
use crate::error::{guard, guard_or, mirror_result, Failure, FfiResult};
use crate::types::{
    mirror_algorithm, mirror_compare_side, mirror_direct_io, mirror_durability, mirror_io_backend,
    mirror_mode, mirror_on_disconnect,
};

/// Where a controller's volume is and how to open it.
#[derive(Debug, Clone)]
pub(crate) struct VolumeSpec {
    pub(crate) path: PathBuf,
    pub(crate) options: VolumeOptions,
}

impl VolumeSpec {
    fn new(path: &str) -> FfiResult<Self> {
        if path.is_empty() {
            return Err(Failure::invalid("volume path is empty"));
        }
        Ok(VolumeSpec {
            path: PathBuf::from(path),
            options: VolumeOptions::default(),
        })
    }

    pub(crate) fn open(&self) -> FfiResult<std::sync::Arc<dyn mirror_core::Volume>> {
        Ok(mirror_uring::open_volume(&self.path, &self.options)?)
    }
}

/// How to open a primary: its volume, its secondary and every option. Create with
/// `mirror_primary_config_new`, free with `mirror_primary_config_free`.
#[derive(Debug)]
pub struct mirror_primary_config {
    pub(crate) volume: VolumeSpec,
    pub(crate) core: PrimaryConfig,
}

/// How to create a secondary: its volume, its listen address and options. Create with
/// `mirror_secondary_config_new`, free with `mirror_secondary_config_free`.
#[derive(Debug)]
pub struct mirror_secondary_config {
    pub(crate) volume: VolumeSpec,
    pub(crate) core: SecondaryConfig,
}

fn link_timeout(ms: u32) -> FfiResult<Duration> {
    if ms < 100 {
        return Err(Failure::invalid(format!(
            "link timeout {ms} ms is below the minimum of 100 ms"
        )));
    }
    Ok(Duration::from_millis(ms.into()))
}

/// Creates a primary configuration with defaults: SHA-1 digests, 4096-byte blocks, 64 KiB
/// dirty-map regions, synchronous replication, io_uring, primary-side comparison, no secret,
/// no periodic scan, 5 s link timeout, automatic resync on (re)connection.
///
/// - `volume_path`: the file or block device to mirror (NUL-terminated UTF-8). It is opened
///   by `mirror_primary_open`, not here.
/// - `peer`: the secondary's address, `"host:port"`.
/// - `config_out`: receives the new config on success; untouched on error.
///
/// Ownership: the caller owns the config and frees it with `mirror_primary_config_free`. The
/// strings are copied. Thread safety: a config may be used by one thread at a time.
///
/// # Safety
/// `volume_path` and `peer` are NULL or NUL-terminated strings; `config_out` is NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_config_new(
    volume_path: *const c_char,
    peer: *const c_char,
    config_out: *mut *mut mirror_primary_config,
) -> mirror_result {
    guard(|| {
        let out = out_ptr(config_out, "config_out")?;
        // SAFETY: the caller passes NULL or NUL-terminated strings.
        let (path, peer) =
            unsafe { (arg_str(volume_path, "volume_path")?, arg_str(peer, "peer")?) };
        if peer.is_empty() {
            return Err(Failure::invalid("peer address is empty"));
        }
        let mut core = PrimaryConfig::new(peer);
        core.meta = Some(default_meta_path(Path::new(path)));
        let config = Box::new(mirror_primary_config {
            volume: VolumeSpec::new(path)?,
            core,
        });
        // SAFETY: `out` was checked non-NULL; the caller promises it is writable.
        unsafe { write_out(out, Box::into_raw(config)) };
        Ok(())
    })
}

/// Frees a primary configuration. `NULL` is a no-op.
///
/// Ownership: `config` must not be used afterwards. Primaries opened from it are unaffected.
///
/// Thread safety: no other call may be running on this config.
///
/// # Safety
/// `config` is NULL or a config from `mirror_primary_config_new` not yet freed, used by no
/// other thread.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_config_free(config: *mut mirror_primary_config) {
    // SAFETY: forwarded contract.
    unsafe { free_config(config) }
}

/// What the primary and secondary config builders share: a volume, a secret and a link
/// timeout. The shared setters below are written once over it.
pub(crate) trait ConfigBuilder {
    /// Where the volume is and how to open it.
    fn volume_mut(&mut self) -> &mut VolumeSpec;
    /// The shared secret, `None` for none.
    fn secret_mut(&mut self) -> &mut Option<Vec<u8>>;
    /// How the scans this side leads run: algorithm, comparing side, periodic scan.
    fn scans_mut(&mut self) -> (&mut Algorithm, &mut CompareSide, &mut Option<PeriodicScan>);
    /// How long a silent link lives.
    fn link_timeout_mut(&mut self) -> &mut Duration;
    /// Where the metadata record is kept.
    fn meta_mut(&mut self) -> &mut Option<PathBuf>;
    /// Mutual TLS, `None` for plaintext.
    fn tls_mut(&mut self) -> &mut Option<TlsConfig>;
    /// Plaintext off loopback allowed.
    fn allow_insecure_mut(&mut self) -> &mut bool;
}

impl ConfigBuilder for mirror_primary_config {
    fn volume_mut(&mut self) -> &mut VolumeSpec {
        &mut self.volume
    }
    fn secret_mut(&mut self) -> &mut Option<Vec<u8>> {
        &mut self.core.secret
    }
    fn link_timeout_mut(&mut self) -> &mut Duration {
        &mut self.core.link_timeout
    }
    fn meta_mut(&mut self) -> &mut Option<PathBuf> {
        &mut self.core.meta
    }
    fn scans_mut(&mut self) -> (&mut Algorithm, &mut CompareSide, &mut Option<PeriodicScan>) {
        let c = &mut self.core;
        (&mut c.algorithm, &mut c.compare, &mut c.periodic)
    }
    fn tls_mut(&mut self) -> &mut Option<TlsConfig> {
        &mut self.core.tls
    }
    fn allow_insecure_mut(&mut self) -> &mut bool {
        &mut self.core.allow_insecure
    }
}

impl ConfigBuilder for mirror_secondary_config {
    fn volume_mut(&mut self) -> &mut VolumeSpec {
        &mut self.volume
    }
    fn secret_mut(&mut self) -> &mut Option<Vec<u8>> {
        &mut self.core.secret
    }
    fn link_timeout_mut(&mut self) -> &mut Duration {
        &mut self.core.link_timeout
    }
    fn meta_mut(&mut self) -> &mut Option<PathBuf> {
        &mut self.core.meta
    }
    fn scans_mut(&mut self) -> (&mut Algorithm, &mut CompareSide, &mut Option<PeriodicScan>) {
        let c = &mut self.core;
        (&mut c.algorithm, &mut c.compare, &mut c.periodic)
    }
    fn tls_mut(&mut self) -> &mut Option<TlsConfig> {
        &mut self.core.tls
    }
    fn allow_insecure_mut(&mut self) -> &mut bool {
        &mut self.core.allow_insecure
    }
}

/// Applies `set` to the config behind `config`, inside the panic boundary.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread.
unsafe fn with_config<C>(config: *mut C, set: impl FnOnce(&mut C) -> FfiResult) -> mirror_result {
    guard(|| {
        // SAFETY: per this function's contract.
        let config = unsafe { arg_mut(config, "config")? };
        set(config)
    })
}

/// Frees a config made by `Box::into_raw`; NULL does nothing.
///
/// # Safety
/// `config` is NULL or a config from its `_new` function not yet freed, used by no other
/// thread.
unsafe fn free_config<C>(config: *mut C) {
    guard_or((), || {
        if !config.is_null() {
            // SAFETY: a pointer from `Box::into_raw` in the config's `_new`, freed once.
            drop(unsafe { Box::from_raw(config) });
        }
    })
}

/// The digest algorithm of the scans this side leads, a `mirror_algorithm` value.
///
/// # Safety
/// As [`with_config`].
unsafe fn set_algorithm<C: ConfigBuilder>(config: *mut C, algorithm: u32) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe {
        with_config(config, |c| {
            *c.scans_mut().0 = Algorithm::from(mirror_algorithm::from_c(algorithm)?);
            Ok(())
        })
    }
}

/// Which side compares the digests of the scans this side leads, a `mirror_compare_side`.
///
/// # Safety
/// As [`with_config`].
unsafe fn set_compare_side<C: ConfigBuilder>(config: *mut C, side: u32) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe {
        with_config(config, |c| {
            *c.scans_mut().1 = mirror_compare_side::from_c(side)?.into();
            Ok(())
        })
    }
}

/// The periodic scan this side leads; `interval_ms` 0 turns it off.
///
/// # Safety
/// As [`with_config`].
unsafe fn set_periodic_scan<C: ConfigBuilder>(
    config: *mut C,
    interval_ms: u64,
    rate_mib_s: f64,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe {
        with_config(config, |c| {
            let periodic = c.scans_mut().2;
            if interval_ms == 0 {
                *periodic = None;
                return Ok(());
            }
            if !(rate_mib_s.is_finite() && rate_mib_s > 0.0) {
                return Err(Failure::invalid(format!(
                    "periodic scan rate {rate_mib_s} is not a positive number of MiB/s"
                )));
            }
            *periodic = Some(PeriodicScan {
                interval: Duration::from_millis(interval_ms),
                rate_mib_s,
            });
            Ok(())
        })
    }
}

/// The block size of all I/O.
///
/// # Safety
/// As [`with_config`].
unsafe fn set_block_size<C: ConfigBuilder>(config: *mut C, bytes: u32) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe {
        with_config(config, |c| {
            c.volume_mut().options.block_size = block_size(bytes)?;
            Ok(())
        })
    }
}

/// The volume's I/O backend, a `mirror_io_backend` value.
///
/// # Safety
/// As [`with_config`].
unsafe fn set_io_backend<C: ConfigBuilder>(config: *mut C, backend: u32) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe {
        with_config(config, |c| {
            c.volume_mut().options.io = mirror_io_backend::from_c(backend)?.into();
            Ok(())
        })
    }
}

/// Whether the volume is opened with `O_DIRECT`, a `mirror_direct_io` value.
///
/// # Safety
/// As [`with_config`].
unsafe fn set_direct_io<C: ConfigBuilder>(config: *mut C, direct_io: u32) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe {
        with_config(config, |c| {
            c.volume_mut().options.direct = mirror_direct_io::from_c(direct_io)?.option();
            Ok(())
        })
    }
}

/// The shared secret, copied; length 0 removes it.
///
/// # Safety
/// As [`with_config`]; `secret` is NULL or readable for `secret_len` bytes.
unsafe fn set_secret<C: ConfigBuilder>(
    config: *mut C,
    secret: *const u8,
    secret_len: usize,
) -> mirror_result {
    // SAFETY: forwarded contract; `secret` is NULL or readable for `secret_len` bytes.
    unsafe {
        with_config(config, |c| {
            let s = arg_bytes(secret, secret_len, "secret")?;
            *c.secret_mut() = (!s.is_empty()).then(|| s.to_vec());
            Ok(())
        })
    }
}

/// The shared secret, read from the file at `path` now.
///
/// # Safety
/// As [`with_config`]; `path` is NULL or a NUL-terminated string.
unsafe fn set_secret_file<C: ConfigBuilder>(config: *mut C, path: *const c_char) -> mirror_result {
    // SAFETY: forwarded contract; `path` is NULL or a NUL-terminated string.
    unsafe {
        with_config(config, |c| {
            let path = arg_str(path, "path")?;
            *c.secret_mut() = Some(read_secret_file(path)?);
            Ok(())
        })
    }
}

/// Mutual TLS from three PEM files, loaded now; all three NULL turns TLS off.
///
/// # Safety
/// As [`with_config`]; each path is NULL or a NUL-terminated string.
unsafe fn set_tls<C: ConfigBuilder>(
    config: *mut C,
    cert_path: *const c_char,
    key_path: *const c_char,
    trust_path: *const c_char,
) -> mirror_result {
    // SAFETY: forwarded contract; each path is NULL or a NUL-terminated string.
    unsafe {
        with_config(config, |c| {
            if cert_path.is_null() && key_path.is_null() && trust_path.is_null() {
                *c.tls_mut() = None;
                return Ok(());
            }
            let cert = arg_str(cert_path, "cert_path")?;
            let key = arg_str(key_path, "key_path")?;
            let trust = arg_str(trust_path, "trust_path")?;
            *c.tls_mut() = Some(TlsConfig::from_files(cert, key, trust)?);
            Ok(())
        })
    }
}

/// Whether plaintext to or from a non-loopback address is allowed.
///
/// # Safety
/// As [`with_config`].
unsafe fn set_allow_insecure<C: ConfigBuilder>(config: *mut C, allow: bool) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe {
        with_config(config, |c| {
            *c.allow_insecure_mut() = allow;
            Ok(())
        })
    }
}

/// How long a silent link lives, in milliseconds (at least 100).
///
/// # Safety
/// As [`with_config`].
unsafe fn set_link_timeout_ms<C: ConfigBuilder>(config: *mut C, timeout_ms: u32) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe {
        with_config(config, |c| {
            *c.link_timeout_mut() = link_timeout(timeout_ms)?;
            Ok(())
        })
    }
}

fn block_size(bytes: u32) -> FfiResult<BlockSize> {
    Ok(BlockSize::new(bytes.into())?)
}

/// Sets the digest algorithm of checksum scans (a `mirror_algorithm` value).
/// `MIRROR_RESULT_INVALID_ARGUMENT` for an unknown value.
///
/// Ownership: only the value is kept (copied). Thread safety: a config is used by one thread
/// at a time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_config_set_algorithm(
    config: *mut mirror_primary_config,
    algorithm: u32,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe { set_algorithm(config, algorithm) }
}

/// Sets the block size of all I/O, in bytes: a power of two from 512 to 1048576 (default
/// 4096). It must equal the secondary's.
///
/// Ownership: only the value is kept (copied). Thread safety: a config is used by one thread
/// at a time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_config_set_block_size(
    config: *mut mirror_primary_config,
    block_size_bytes: u32,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe { set_block_size(config, block_size_bytes) }
}

/// Sets the dirty-map region size in bytes: a power of two, at least the block size (checked
/// by `mirror_primary_open`). The map costs one bit per region: 64 KiB regions cost 2 MiB of
/// memory per TiB of volume.
///
/// Ownership: only the value is kept (copied). Thread safety: a config is used by one thread
/// at a time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_config_set_region_size(
    config: *mut mirror_primary_config,
    region_size_bytes: u64,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe {
        with_config(config, |c| {
            if !region_size_bytes.is_power_of_two() || region_size_bytes < u64::from(BlockSize::MIN)
            {
                return Err(Failure::invalid(format!(
                    "region size {region_size_bytes} is not a power of two of at least {}",
                    BlockSize::MIN
                )));
            }
            c.core.region_size = region_size_bytes;
            Ok(())
        })
    }
}

/// Sets the replication mode (a `mirror_mode` value).
///
/// Ownership: only the value is kept (copied). Thread safety: a config is used by one thread
/// at a time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_config_set_mode(
    config: *mut mirror_primary_config,
    mode: u32,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe {
        with_config(config, |c| {
            c.core.mode = mirror_mode::from_c(mode)?.into();
            Ok(())
        })
    }
}

/// Sets when the secondary acknowledges a replicated write (a `mirror_durability` value;
/// default `MIRROR_DURABILITY_FLUSHED`: on its stable storage).
///
/// Ownership: only the value is kept (copied). Thread safety: a config is used by one thread
/// at a time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_config_set_durability(
    config: *mut mirror_primary_config,
    durability: u32,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe {
        with_config(config, |c| {
            c.core.durability = mirror_durability::from_c(durability)?.into();
            Ok(())
        })
    }
}

/// Sets what a sync-mode write does while the link is down (a `mirror_on_disconnect` value;
/// default `MIRROR_ON_DISCONNECT_DEGRADE`). `timeout_ms` is how long `SUSPEND` waits for the
/// link (at least 1); it is ignored by the other policies.
///
/// Ownership: only the values are kept (copied). Thread safety: a config is used by one
/// thread at a time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_config_set_on_disconnect(
    config: *mut mirror_primary_config,
    policy: u32,
    timeout_ms: u32,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe {
        with_config(config, |c| {
            let p = match mirror_on_disconnect::from_c(policy)? {
                mirror_on_disconnect::Degrade => OnDisconnect::Degrade,
                mirror_on_disconnect::Fail => OnDisconnect::Fail,
                mirror_on_disconnect::Suspend => {
                    OnDisconnect::Suspend(Duration::from_millis(timeout_ms as u64))
                }
            };
            p.validate().map_err(Failure::from)?;
            c.core.on_disconnect = p;
            Ok(())
        })
    }
}

/// Sets the volume's I/O backend (a `mirror_io_backend` value).
///
/// Ownership: only the value is kept (copied). Thread safety: a config is used by one thread
/// at a time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_config_set_io_backend(
    config: *mut mirror_primary_config,
    backend: u32,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe { set_io_backend(config, backend) }
}

/// Sets whether the volume is opened with `O_DIRECT` (a `mirror_direct_io` value).
///
/// Ownership: only the value is kept (copied). Thread safety: a config is used by one thread
/// at a time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_config_set_direct_io(
    config: *mut mirror_primary_config,
    direct_io: u32,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe { set_direct_io(config, direct_io) }
}

/// Sets which side compares digests during checksum scans (a `mirror_compare_side` value).
///
/// Ownership: only the value is kept (copied). Thread safety: a config is used by one thread
/// at a time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_config_set_compare_side(
    config: *mut mirror_primary_config,
    side: u32,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe { set_compare_side(config, side) }
}

/// Sets the shared secret both peers must prove (at least 16 bytes, checked when opening).
/// `secret_len` 0 (with any `secret`, even NULL) removes it.
///
/// Ownership: the bytes are copied.
///
/// Ownership: only the value is kept (copied). Thread safety: a config is used by one thread
/// at a time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread; `secret` is NULL or readable
/// for `secret_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_config_set_secret(
    config: *mut mirror_primary_config,
    secret: *const u8,
    secret_len: usize,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe { set_secret(config, secret, secret_len) }
}

/// Reads the shared secret from a file now: its bytes less one trailing newline, at least 16.
/// `MIRROR_RESULT_IO` if the file cannot be read.
///
/// Ownership: only the value is kept (copied). Thread safety: a config is used by one thread
/// at a time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread; `path` is NULL or a
/// NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_config_set_secret_file(
    config: *mut mirror_primary_config,
    path: *const c_char,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe { set_secret_file(config, path) }
}

/// Makes the link mutual TLS 1.3: our certificate (chain) and private key, and the
/// certificates we trust (the secondary's own self-signed certificate, as `mirror keygen`
/// writes, or a CA that signed it), each a PEM file read now. A secondary whose certificate
/// is not trusted, expired or not yet valid is refused (`mirror_primary_wait_connected`
/// answers `MIRROR_RESULT_AUTH`, naming the reason). A shared secret, when also set, is bound
/// to the TLS session. All three NULL turns TLS off. `MIRROR_RESULT_IO` if a file cannot be
/// read, `MIRROR_RESULT_INVALID_ARGUMENT` if its contents are not usable (the message names
/// the file).
///
/// Without TLS the primary connects only to a loopback peer unless
/// `mirror_primary_config_set_allow_insecure` says otherwise.
///
/// Ownership: the files' contents are loaded and kept; the paths are not. Thread safety: a
/// config is used by one thread at a time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread; each path is NULL or a
/// NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_config_set_tls(
    config: *mut mirror_primary_config,
    cert_path: *const c_char,
    key_path: *const c_char,
    trust_path: *const c_char,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe { set_tls(config, cert_path, key_path, trust_path) }
}

/// Allows connecting to a non-loopback secondary without TLS (default false: such a peer is
/// refused with `MIRROR_RESULT_INVALID_ARGUMENT`; a shared secret protects the handshake,
/// not the data).
///
/// Ownership: only the value is kept (copied). Thread safety: a config is used by one thread
/// at a time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_config_set_allow_insecure(
    config: *mut mirror_primary_config,
    allow_insecure: bool,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe { set_allow_insecure(config, allow_insecure) }
}

/// Turns on the periodic low-priority checksum scan: every `interval_ms` milliseconds after the
/// previous one ends, reading at most `rate_mib_s` MiB/s on each side. `interval_ms` 0 turns
/// it off. `MIRROR_RESULT_INVALID_ARGUMENT` if the rate is not a positive finite number.
///
/// Ownership: only the value is kept (copied). Thread safety: a config is used by one thread
/// at a time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_config_set_periodic_scan(
    config: *mut mirror_primary_config,
    interval_ms: u64,
    rate_mib_s: f64,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe { set_periodic_scan(config, interval_ms, rate_mib_s) }
}

/// Sets how many replicated writes may wait in the link's queue in async mode (default 1024).
///
/// Ownership: only the value is kept (copied). Thread safety: a config is used by one thread
/// at a time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_config_set_queue_depth(
    config: *mut mirror_primary_config,
    queue_depth: u32,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe {
        with_config(config, |c| {
            if queue_depth == 0 {
                return Err(Failure::invalid("queue depth must be at least 1"));
            }
            c.core.queue_depth = queue_depth as usize;
            Ok(())
        })
    }
}

/// Sets how long a silent link lives before it is declared dead, in milliseconds (at least
/// 100; default 5000).
///
/// Ownership: only the value is kept (copied). Thread safety: a config is used by one thread
/// at a time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_config_set_link_timeout_ms(
    config: *mut mirror_primary_config,
    timeout_ms: u32,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe { set_link_timeout_ms(config, timeout_ms) }
}

/// Chooses whether the primary resyncs by itself on every (re)connection (default true).
/// With false, the caller runs `mirror_primary_resync` after a reconnection.
///
/// Ownership: only the value is kept (copied). Thread safety: a config is used by one thread
/// at a time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_config_set_auto_resync(
    config: *mut mirror_primary_config,
    auto_resync: bool,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe {
        with_config(config, |c| {
            c.core.auto_resync = auto_resync;
            Ok(())
        })
    }
}

/// Creates a secondary configuration with defaults: 4096-byte blocks, io_uring, no secret,
/// loopback-only unless a secret is set or insecure listening is allowed, 5 s link timeout.
///
/// - `volume_path`: the file or block device that receives the mirror.
/// - `listen`: the address to listen on, `"host:port"`; port 0 picks a free port.
/// - `config_out`: receives the new config on success; untouched on error.
///
/// Ownership: the caller owns the config and frees it with `mirror_secondary_config_free`.
/// Thread safety: a config may be used by one thread at a time.
///
/// # Safety
/// `volume_path` and `listen` are NULL or NUL-terminated strings; `config_out` is NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn mirror_secondary_config_new(
    volume_path: *const c_char,
    listen: *const c_char,
    config_out: *mut *mut mirror_secondary_config,
) -> mirror_result {
    guard(|| {
        let out = out_ptr(config_out, "config_out")?;
        // SAFETY: the caller passes NULL or NUL-terminated strings.
        let (path, listen) = unsafe {
            (
                arg_str(volume_path, "volume_path")?,
                arg_str(listen, "listen")?,
            )
        };
        if listen.is_empty() {
            return Err(Failure::invalid("listen address is empty"));
        }
        let mut core = SecondaryConfig::new(listen);
        core.meta = Some(default_meta_path(Path::new(path)));
        let config = Box::new(mirror_secondary_config {
            volume: VolumeSpec::new(path)?,
            core,
        });
        // SAFETY: `out` was checked non-NULL; the caller promises it is writable.
        unsafe { write_out(out, Box::into_raw(config)) };
        Ok(())
    })
}

/// Frees a secondary configuration. `NULL` is a no-op.
///
/// Thread safety: no other call may be running on this config.
///
/// # Safety
/// `config` is NULL or a config from `mirror_secondary_config_new` not yet freed, used by no
/// other thread.
#[no_mangle]
pub unsafe extern "C" fn mirror_secondary_config_free(config: *mut mirror_secondary_config) {
    // SAFETY: forwarded contract.
    unsafe { free_config(config) }
}

/// Sets the block size of all I/O, in bytes (see `mirror_primary_config_set_block_size`).
///
/// Ownership: only the value is kept (copied). Thread safety: a config is used by one thread
/// at a time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn mirror_secondary_config_set_block_size(
    config: *mut mirror_secondary_config,
    block_size_bytes: u32,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe { set_block_size(config, block_size_bytes) }
}

/// Sets the volume's I/O backend (a `mirror_io_backend` value).
///
/// Ownership: only the value is kept (copied). Thread safety: a config is used by one thread
/// at a time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn mirror_secondary_config_set_io_backend(
    config: *mut mirror_secondary_config,
    backend: u32,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe { set_io_backend(config, backend) }
}

/// Sets whether the volume is opened with `O_DIRECT` (a `mirror_direct_io` value).
///
/// Ownership: only the value is kept (copied). Thread safety: a config is used by one thread
/// at a time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn mirror_secondary_config_set_direct_io(
    config: *mut mirror_secondary_config,
    direct_io: u32,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe { set_direct_io(config, direct_io) }
}

/// Sets the shared secret a primary must prove (at least 16 bytes); length 0 removes it.
///
/// Ownership: the bytes are copied.
///
/// Ownership: only the value is kept (copied). Thread safety: a config is used by one thread
/// at a time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread; `secret` is NULL or readable
/// for `secret_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn mirror_secondary_config_set_secret(
    config: *mut mirror_secondary_config,
    secret: *const u8,
    secret_len: usize,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe { set_secret(config, secret, secret_len) }
}

/// Reads the shared secret from a file now (see `mirror_primary_config_set_secret_file`).
///
/// Ownership: only the value is kept (copied). Thread safety: a config is used by one thread
/// at a time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread; `path` is NULL or a
/// NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn mirror_secondary_config_set_secret_file(
    config: *mut mirror_secondary_config,
    path: *const c_char,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe { set_secret_file(config, path) }
}

/// Allows listening on a non-loopback address without TLS (default false: such a
/// `mirror_secondary_serve` fails with `MIRROR_RESULT_INVALID_ARGUMENT`; a shared secret
/// protects the handshake, not the data).
///
/// Ownership: only the value is kept (copied). Thread safety: a config is used by one thread
/// at a time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn mirror_secondary_config_set_allow_insecure(
    config: *mut mirror_secondary_config,
    allow_insecure: bool,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe { set_allow_insecure(config, allow_insecure) }
}

/// Makes the link mutual TLS 1.3: our certificate (chain) and private key, and the
/// certificates of the primaries we trust (their own self-signed certificates, or a CA that
/// signed them), each a PEM file read now. A primary whose certificate is not trusted,
/// expired or not yet valid is refused before anything else. All three NULL turns TLS off.
/// `MIRROR_RESULT_IO` if a file cannot be read, `MIRROR_RESULT_INVALID_ARGUMENT` if its
/// contents are not usable (the message names the file).
///
/// Ownership: the files' contents are loaded and kept; the paths are not. Thread safety: a
/// config is used by one thread at a time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread; each path is NULL or a
/// NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn mirror_secondary_config_set_tls(
    config: *mut mirror_secondary_config,
    cert_path: *const c_char,
    key_path: *const c_char,
    trust_path: *const c_char,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe { set_tls(config, cert_path, key_path, trust_path) }
}

/// Bounds what connections cost before they authenticate: a connection still in its
/// handshake `handshake_timeout_ms` after it was accepted is closed (at least 100; default
/// 10000); at most `max_handshakes` connections are in handshake at once (default 64; past
/// it the oldest is closed) and at most `max_sessions` are authenticated (default 4). 0 for a
/// count is `MIRROR_RESULT_INVALID_ARGUMENT`.
///
/// Ownership: only the values are kept (copied). Thread safety: a config is used by one
/// thread at a time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn mirror_secondary_config_set_handshake_limits(
    config: *mut mirror_secondary_config,
    handshake_timeout_ms: u32,
    max_handshakes: u32,
    max_sessions: u32,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe {
        with_config(config, |c| {
            if handshake_timeout_ms < 100 {
                return Err(Failure::invalid(format!(
                    "handshake timeout {handshake_timeout_ms} ms is below the minimum of 100 ms"
                )));
            }
            if max_handshakes == 0 || max_sessions == 0 {
                return Err(Failure::invalid(
                    "the caps on handshakes and sessions must be at least 1",
                ));
            }
            c.core.limits = mirror_core::config::Limits {
                handshake_timeout: Duration::from_millis(handshake_timeout_ms.into()),
                max_handshakes: max_handshakes as usize,
                max_sessions: max_sessions as usize,
            };
            Ok(())
        })
    }
}

/// Sets how long a silent link lives, in milliseconds (at least 100; default 5000).
///
/// Ownership: only the value is kept (copied). Thread safety: a config is used by one thread
/// at a time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn mirror_secondary_config_set_link_timeout_ms(
    config: *mut mirror_secondary_config,
    timeout_ms: u32,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe { set_link_timeout_ms(config, timeout_ms) }
}

/// The metadata record's path (see `mirror_primary_config_set_meta_path`).
///
/// # Safety
/// `config` is NULL or a live config used by no other thread; `path` is NULL or a
/// NUL-terminated string.
unsafe fn set_meta_path<C: ConfigBuilder>(config: *mut C, path: *const c_char) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe {
        with_config(config, |c| {
            let path = arg_str(path, "path")?;
            if path.is_empty() {
                return Err(Failure::invalid("metadata record path is empty"));
            }
            *c.meta_mut() = Some(PathBuf::from(path));
            Ok(())
        })
    }
}

/// Sets where the primary volume's metadata record is kept (its identity, generations and
/// last coherent sync; and the write-intent map beside it, `PATH.intent`). Default: the
/// volume's path with `.mirror-meta` appended — give another path for a block device.
///
/// Ownership: the string is copied. Thread safety: a config is used by one thread at a time;
/// distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread; `path` is NULL or a
/// NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_config_set_meta_path(
    config: *mut mirror_primary_config,
    path: *const c_char,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe { set_meta_path(config, path) }
}

/// Sets where the secondary volume's metadata record is kept (its identity, the volume it
/// mirrors, its generations and whether it is a consistent image). Default: the volume's
/// path with `.mirror-meta` appended — give another path for a block device.
///
/// Ownership: the string is copied. Thread safety: a config is used by one thread at a time;
/// distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread; `path` is NULL or a
/// NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn mirror_secondary_config_set_meta_path(
    config: *mut mirror_secondary_config,
    path: *const c_char,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe { set_meta_path(config, path) }
}

/// Lets the primary rebind a secondary bound to another volume (default false): the
/// secondary's data is discarded and a full scan follows. Without it such a secondary
/// refuses the primary with `MIRROR_RESULT_MISMATCH`, naming both identities.
///
/// Ownership: only the value is kept. Thread safety: a config is used by one thread at a
/// time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_config_set_adopt(
    config: *mut mirror_primary_config,
    adopt: bool,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe {
        with_config(config, |c| {
            c.core.adopt = adopt;
            Ok(())
        })
    }
}

/// Resolves a split brain in favour of this primary (default false): the secondary's writes
/// since the common generation are discarded and a full scan follows. Without it a split
/// brain is refused with `MIRROR_RESULT_MISMATCH`, naming the generations that diverged.
///
/// Ownership: only the value is kept. Thread safety: a config is used by one thread at a
/// time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_config_set_discard_secondary(
    config: *mut mirror_primary_config,
    discard: bool,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe {
        with_config(config, |c| {
            c.core.discard_secondary = discard;
            Ok(())
        })
    }
}

/// Keeps the persistent write-intent map (default false): a chunk's bit is made durable
/// before the first write to it proceeds and cleared lazily once the secondary has the data,
/// so after a crash of the primary the resync covers the chunks whose bits were set instead
/// of the whole volume. Costs an `fdatasync` of the map per write to a clean chunk.
///
/// Ownership: only the value is kept. Thread safety: a config is used by one thread at a
/// time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_config_set_write_intent(
    config: *mut mirror_primary_config,
    write_intent: bool,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe {
        with_config(config, |c| {
            c.core.write_intent = write_intent;
            Ok(())
        })
    }
}

/// Sets how fast a resync or verify may read, in MiB/s: `min_mib_s` is the floor it keeps
/// while the application's writes arrive (default 4; like DRBD's `c-min-rate`), `max_mib_s`
/// the ceiling it never exceeds (0: none, the default; like `c-max-rate`).
/// `MIRROR_RESULT_INVALID_ARGUMENT`, the config unchanged, unless the floor is a positive
/// finite number, the ceiling zero or a positive finite number, and the floor not above it.
///
/// Ownership: only the values are kept. Thread safety: a config is used by one thread at a
/// time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_config_set_resync_rates(
    config: *mut mirror_primary_config,
    min_mib_s: f64,
    max_mib_s: f64,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe {
        with_config(config, |c| {
            let max = (max_mib_s != 0.0).then_some(max_mib_s);
            mirror_core::config::check_resync_rates(min_mib_s, max)?;
            c.core.resync_min_rate = min_mib_s;
            c.core.resync_max_rate = max;
            Ok(())
        })
    }
}

/// Makes resyncs and verifies yield to the application (default true): while replicated
/// writes arrive they slow to the floor set by `mirror_primary_config_set_resync_rates`, and
/// speed up again within a fraction of a second once the writes stop. False: they read at the
/// ceiling whatever the load.
///
/// Ownership: only the value is kept. Thread safety: a config is used by one thread at a
/// time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_config_set_resync_yield(
    config: *mut mirror_primary_config,
    yield_to_writes: bool,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe {
        with_config(config, |c| {
            c.core.resync_yield = yield_to_writes;
            Ok(())
        })
    }
}

/// Makes the secondary lead a full checksum scan of its volume as soon as a primary's session
/// is established (a new or a re-established link); default false. The blocks that differ
/// are sent by the primary on the replication stream, and the scan's report is shown by
/// `mirror_secondary_status` here and by `mirror_primary_status` on the primary.
///
/// Ownership: only the value is kept (copied). Thread safety: a config is used by one thread
/// at a time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn mirror_secondary_config_set_scan_on_connect(
    config: *mut mirror_secondary_config,
    scan_on_connect: bool,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe {
        with_config(config, |c| {
            c.core.scan_on_connect = scan_on_connect;
            Ok(())
        })
    }
}

/// Makes the secondary lead a periodic low-priority checksum scan while a primary's session
/// is up: every `interval_ms` milliseconds after the previous one ends, reading at most
/// `rate_mib_s` MiB/s. `interval_ms` 0 turns it off. `MIRROR_RESULT_INVALID_ARGUMENT` if the
/// rate is not a positive finite number.
///
/// Ownership: only the value is kept (copied). Thread safety: a config is used by one thread
/// at a time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn mirror_secondary_config_set_periodic_scan(
    config: *mut mirror_secondary_config,
    interval_ms: u64,
    rate_mib_s: f64,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe { set_periodic_scan(config, interval_ms, rate_mib_s) }
}

/// Sets which side compares the digests of the scans the secondary leads (a
/// `mirror_compare_side` value; default `MIRROR_COMPARE_SIDE_SECONDARY`: the secondary asks
/// for the primary's digests and requests the blocks that differ).
///
/// Ownership: only the value is kept (copied). Thread safety: a config is used by one thread
/// at a time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn mirror_secondary_config_set_compare_side(
    config: *mut mirror_secondary_config,
    side: u32,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe { set_compare_side(config, side) }
}

/// Sets the digest algorithm of the scans the secondary leads (a `mirror_algorithm` value;
/// default SHA-1). `MIRROR_RESULT_INVALID_ARGUMENT` for an unknown value.
///
/// Ownership: only the value is kept (copied). Thread safety: a config is used by one thread
/// at a time; distinct configs are independent.
///
/// # Safety
/// `config` is NULL or a live config used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn mirror_secondary_config_set_algorithm(
    config: *mut mirror_secondary_config,
    algorithm: u32,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe { set_algorithm(config, algorithm) }
}
