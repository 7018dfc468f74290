//! A link the test drives frame by frame: a TCP proxy that forwards whole frames and can cut
//! the connection at a chosen frame boundary in either direction (after the Nth frame, or
//! before the next frame of a given kind), and be pointed at a restarted secondary. It can also
//! play a secondary of an older protocol version at `Hello`.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Direction of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Primary to secondary.
    Forward,
    /// Secondary to primary (acks, digests, block requests).
    Back,
}

/// Where the next cut happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutAt {
    /// After `n` more frames in that direction.
    After(Dir, u64),
    /// Before the next frame of this kind in that direction (the `n`th one from now).
    BeforeKind(Dir, u8, u64),
}

#[derive(Default)]
struct Plan {
    cut: Option<CutAt>,
    /// Frames counted per direction since the plan was set.
    seen: [u64; 2],
    kind_seen: [u64; 2],
}

struct State {
    target: Mutex<SocketAddr>,
    up: AtomicBool,
    stop: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
    plan: Mutex<Plan>,
    cuts: AtomicU64,
    frames: [AtomicU64; 2],
    /// Refuse a Hello above this version as an older secondary would (0: pass every Hello).
    max_version: AtomicU64,
    refused: AtomicU64,
}

/// The proxy; dropping it closes everything.
pub struct FrameProxy {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl FrameProxy {
    pub fn start(target: SocketAddr) -> FrameProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let state = Arc::new(State {
            target: Mutex::new(target),
            up: AtomicBool::new(true),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            plan: Mutex::new(Plan::default()),
            cuts: AtomicU64::new(0),
            frames: [AtomicU64::new(0), AtomicU64::new(0)],
            max_version: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let st = state.clone();
        std::thread::spawn(move || {
            while !st.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        if !st.up.load(Ordering::SeqCst) {
                            continue;
                        }
                        let target = *st.target.lock().unwrap();
                        let Ok(server) = TcpStream::connect(target) else {
                            continue;
                        };
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        {
                            let mut c = st.conns.lock().unwrap();
                            c.push(client.try_clone().unwrap());
                            c.push(server.try_clone().unwrap());
                        }
                        pump(
                            st.clone(),
                            client.try_clone().unwrap(),
                            server.try_clone().unwrap(),
                            Dir::Forward,
                        );
                        pump(st.clone(), server, client, Dir::Back);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        FrameProxy { addr, state }
    }

    /// Arms the next cut (replacing any armed one).
    pub fn cut_at(&self, at: CutAt) {
        let mut p = self.state.plan.lock().unwrap();
        *p = Plan {
            cut: Some(at),
            ..Plan::default()
        };
    }

    /// True while a cut is armed and has not happened.
    pub fn cut_armed(&self) -> bool {
        self.state.plan.lock().unwrap().cut.is_some()
    }

    /// Drops every connection now; new ones are accepted unless `down`.
    pub fn cut_now(&self, down: bool) {
        if down {
            self.state.up.store(false, Ordering::SeqCst);
        }
        cut(&self.state);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.state.plan.lock().unwrap().cut = None;
        self.state.up.store(true, Ordering::SeqCst);
    }

    /// Sends new connections to `target` (a restarted secondary).
    pub fn retarget(&self, target: SocketAddr) {
        *self.state.target.lock().unwrap() = target;
    }

    /// Answers a `Hello` above `version` with `Error{VERSION}` and closes, as a secondary
    /// that speaks no newer version does.
    pub fn speak_at_most(&self, version: u16) {
        self.state
            .max_version
            .store(u64::from(version), Ordering::SeqCst);
    }

    /// Hellos refused by [`speak_at_most`](Self::speak_at_most).
    pub fn refused(&self) -> u64 {
        self.state.refused.load(Ordering::SeqCst)
    }

    pub fn cuts(&self) -> u64 {
        self.state.cuts.load(Ordering::SeqCst)
    }

    pub fn frames(&self, d: Dir) -> u64 {
        self.state.frames[d as usize].load(Ordering::SeqCst)
    }
}

impl Drop for FrameProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.state.up.store(false, Ordering::SeqCst);
        cut(&self.state);
    }
}

fn cut(st: &State) {
    st.cuts.fetch_add(1, Ordering::SeqCst);
    for c in st.conns.lock().unwrap().drain(..) {
        let _ = c.shutdown(Shutdown::Both);
    }
}

/// Reads one whole frame (header, payload, checksum) as raw bytes.
fn read_raw_frame(from: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u8> {
    let mut header = [0u8; 8];
    from.read_exact(&mut header)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > mirror_core::wire::MAX_PAYLOAD {
        return Err(std::io::Error::other("frame too long"));
    }
    buf.clear();
    buf.extend_from_slice(&header);
    buf.resize(8 + len + 4, 0);
    from.read_exact(&mut buf[8..])?;
    Ok(header[4])
}

fn pump(st: Arc<State>, mut from: TcpStream, mut to: TcpStream, dir: Dir) {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        while let Ok(kind) = read_raw_frame(&mut from, &mut buf) {
            let cut_here = {
                let mut p = st.plan.lock().unwrap();
                let d = dir as usize;
                let hit = match p.cut {
                    Some(CutAt::After(cd, n)) if cd == dir => p.seen[d] >= n,
                    Some(CutAt::BeforeKind(cd, k, n)) if cd == dir && k == kind => {
                        p.kind_seen[d] += 1;
                        p.kind_seen[d] >= n
                    }
                    _ => false,
                };
                p.seen[d] += 1;
                if hit {
                    p.cut = None;
                }
                hit
            };
            let max = st.max_version.load(Ordering::SeqCst);
            if dir == Dir::Forward && kind == mirror_core::wire::kind::HELLO && max > 0 {
                let version = u16::from_le_bytes([buf[12], buf[13]]);
                if u64::from(version) > max {
                    st.refused.fetch_add(1, Ordering::SeqCst);
                    let refusal = mirror_core::wire::Message::Error {
                        code: mirror_core::wire::code::VERSION,
                        message: format!("protocol version mismatch: primary speaks {version}, secondary speaks 2..={max}"),
                    };
                    let _ = (&from).write_all(&refusal.to_frame().unwrap_or_default());
                    break;
                }
            }
            if cut_here || !st.up.load(Ordering::SeqCst) {
                cut(&st);
                break;
            }
            if to.write_all(&buf).is_err() {
                break;
            }
            st.frames[dir as usize].fetch_add(1, Ordering::SeqCst);
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
