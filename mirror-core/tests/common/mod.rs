//! Test fixtures: file-backed pairs over real TCP on loopback, and a proxy the test controls to
//! cut, stall and restore the link.
#![allow(dead_code)]

pub mod frame_proxy;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mirror_core::{
    BlockSize, FileVolume, Primary, PrimaryConfig, Secondary, SecondaryConfig, Volume,
};
use rand::{Rng, SeedableRng};

/// A TCP proxy between a primary and a secondary.
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<ProxyState>,
}

struct ProxyState {
    target: SocketAddr,
    up: AtomicBool,
    /// Forward nothing (both ways) while set: a stalled, silent link.
    stalled: AtomicBool,
    /// Forward nothing from the secondary back to the primary while set.
    hold_back: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
    forwarded: AtomicU64,
    stop: AtomicBool,
}

impl Proxy {
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let state = Arc::new(ProxyState {
            target,
            up: AtomicBool::new(true),
            stalled: AtomicBool::new(false),
            hold_back: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            forwarded: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let st = state.clone();
        std::thread::spawn(move || {
            while !st.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        if !st.up.load(Ordering::SeqCst) {
                            drop(client);
                            continue;
                        }
                        let Ok(server) = TcpStream::connect(st.target) else {
                            continue;
                        };
                        st.conns.lock().unwrap().push(client.try_clone().unwrap());
                        st.conns.lock().unwrap().push(server.try_clone().unwrap());
                        pump(
                            st.clone(),
                            client.try_clone().unwrap(),
                            server.try_clone().unwrap(),
                            false,
                        );
                        pump(st.clone(), server, client, true);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Proxy { addr, state }
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.state.up.store(false, Ordering::SeqCst);
        for c in self.state.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.state.stalled.store(false, Ordering::SeqCst);
        self.state.hold_back.store(false, Ordering::SeqCst);
        self.state.up.store(true, Ordering::SeqCst);
    }

    /// Stops forwarding in both directions, keeping the sockets open.
    pub fn stall(&self, on: bool) {
        self.state.stalled.store(on, Ordering::SeqCst);
    }

    /// Stops forwarding the secondary's answers (acks) to the primary.
    pub fn hold_back(&self, on: bool) {
        self.state.hold_back.store(on, Ordering::SeqCst);
    }

    pub fn forwarded(&self) -> u64 {
        self.state.forwarded.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.cut();
    }
}

fn pump(st: Arc<ProxyState>, mut from: TcpStream, mut to: TcpStream, back: bool) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            while st.stalled.load(Ordering::SeqCst) || (back && st.hold_back.load(Ordering::SeqCst))
            {
                if !st.up.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            if !st.up.load(Ordering::SeqCst) || to.write_all(&buf[..n]).is_err() {
                break;
            }
            st.forwarded.fetch_add(n as u64, Ordering::SeqCst);
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

/// A primary and a secondary on temporary files, linked through a proxy.
pub struct Pair {
    pub dir: tempfile::TempDir,
    pub primary_path: PathBuf,
    pub secondary_path: PathBuf,
    pub secondary: Secondary,
    pub proxy: Proxy,
    pub primary_vol: Arc<FileVolume>,
    pub secondary_vol: Arc<FileVolume>,
}

pub const BS: u64 = 4096;

pub fn random_bytes(rng: &mut impl Rng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill(&mut v[..]);
    v
}

pub fn rng(seed: u64) -> rand::rngs::SmallRng {
    rand::rngs::SmallRng::seed_from_u64(seed)
}

impl Pair {
    /// Two files of `size` bytes: the primary's random, the secondary's zero.
    pub fn new(size: u64, seed: u64) -> Pair {
        Self::with(size, seed, SecondaryConfig::new("127.0.0.1:0"))
    }

    pub fn with(size: u64, seed: u64, cfg: SecondaryConfig) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let primary_path = dir.path().join("primary.img");
        let secondary_path = dir.path().join("secondary.img");
        std::fs::write(&primary_path, random_bytes(&mut rng(seed), size as usize)).unwrap();
        std::fs::write(&secondary_path, vec![0u8; size as usize]).unwrap();
        let bs = BlockSize::new(BS).unwrap();
        let primary_vol = Arc::new(FileVolume::open(&primary_path, bs).unwrap());
        let secondary_vol = Arc::new(FileVolume::open(&secondary_path, bs).unwrap());
        let secondary = Secondary::new(secondary_vol.clone(), cfg).unwrap();
        let addr = secondary.serve().unwrap();
        let proxy = Proxy::start(addr);
        Pair {
            dir,
            primary_path,
            secondary_path,
            secondary,
            proxy,
            primary_vol,
            secondary_vol,
        }
    }

    pub fn config(&self) -> PrimaryConfig {
        let mut c = PrimaryConfig::new(self.proxy.addr.to_string());
        c.link_timeout = Duration::from_secs(2);
        c
    }

    pub fn open_primary(&self, c: PrimaryConfig) -> Primary {
        Primary::open(self.primary_vol.clone(), c).unwrap()
    }

    pub fn equal(&self) -> bool {
        read(&self.primary_path) == read(&self.secondary_path)
    }

    pub fn differing_blocks(&self) -> usize {
        let (a, b) = (read(&self.primary_path), read(&self.secondary_path));
        a.chunks(BS as usize)
            .zip(b.chunks(BS as usize))
            .filter(|(x, y)| x != y)
            .count()
    }
}

pub fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

/// Waits until `f` holds, up to `secs` seconds.
pub fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

/// Waits until the primary is connected and its resync (if any) is done.
pub fn wait_coherent(p: &Primary) {
    wait_for(30, "primary connected with a clean, valid map", || {
        let s = p.status();
        s.state == mirror_core::LinkState::Connected
            && s.map_valid
            && s.dirty_regions == 0
            && s.pending_writes == 0
    });
}

/// Overwrites `n` random blocks of `vol` behind everyone's back.
pub fn corrupt(vol: &dyn Volume, n: usize, seed: u64) -> Vec<u64> {
    let mut r = rng(seed);
    let blocks = vol.blocks();
    let mut hit = Vec::new();
    for _ in 0..n {
        let b = r.gen_range(0..blocks - 1);
        vol.write_at(b * BS, &random_bytes(&mut r, BS as usize))
            .unwrap();
        hit.push(b);
    }
    hit
}
