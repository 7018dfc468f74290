//! A man in the middle: a TCP relay that understands where the units of the stream begin and
//! end (mirror frames in clear, TLS records under TLS) and, once armed, tampers with the
//! primary's stream at a unit boundary: flips a byte, injects a well-formed unit, replays an
//! earlier one, or truncates. It records every byte it relays, for sniffing checks.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the relayed stream is cut into units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// mirror frames: u32 LE payload length, 4 more header bytes, payload, CRC-32.
    Mirror,
    /// TLS records: type, version (2), u16 BE length, body.
    Tls,
}

impl Framing {
    /// Length of the unit at the start of `b`, when its header is there; `Some(usize::MAX)`
    /// when the bytes are not of this framing at all.
    fn unit_len(self, b: &[u8]) -> Option<usize> {
        match self {
            Framing::Mirror if b.len() >= 8 => {
                let len = u32::from_le_bytes(b[..4].try_into().unwrap()) as usize;
                let ok = b[5..8] == [0, 0, 0] && len <= (1 << 20) + 64;
                Some(if ok { 8 + len + 4 } else { usize::MAX })
            }
            Framing::Tls if b.len() >= 5 => {
                let ok = (20..=23).contains(&b[0]) && b[1] == 3;
                Some(if ok {
                    5 + u16::from_be_bytes([b[3], b[4]]) as usize
                } else {
                    usize::MAX
                })
            }
            _ => None,
        }
    }
}

/// What the relay does to the next large unit (at least `LARGE` bytes) from the primary.
#[derive(Debug, Clone)]
pub enum Attack {
    /// Flips one bit in the middle of it.
    FlipByte,
    /// Sends these bytes (a well-formed unit) before it.
    Inject(Vec<u8>),
    /// Sends it, then the previous large unit again.
    Replay,
    /// Sends half of it, then closes both ways.
    Truncate,
}

/// Units this large carry data (a block, or a record holding one).
pub const LARGE: usize = 4096;

pub struct Mitm {
    pub addr: SocketAddr,
    state: Arc<State>,
}

struct State {
    target: SocketAddr,
    framing: Framing,
    armed: Mutex<Option<Attack>>,
    fired: AtomicU64,
    connections: AtomicU64,
    seen: Mutex<Vec<u8>>,
    conns: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
}

impl Mitm {
    pub fn start(target: SocketAddr, framing: Framing) -> Mitm {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let state = Arc::new(State {
            target,
            framing,
            armed: Mutex::new(None),
            fired: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            seen: Mutex::new(Vec::new()),
            conns: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let st = state.clone();
        std::thread::spawn(move || {
            while !st.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = TcpStream::connect(st.target) else {
                            continue;
                        };
                        st.connections.fetch_add(1, Ordering::SeqCst);
                        st.conns.lock().unwrap().push(client.try_clone().unwrap());
                        st.conns.lock().unwrap().push(server.try_clone().unwrap());
                        let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                        let st1 = st.clone();
                        std::thread::spawn(move || forward(&st1, client, server));
                        let st2 = st.clone();
                        std::thread::spawn(move || back(&st2, s2, c2));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Mitm { addr, state }
    }

    /// Tampers with the next large unit from the primary.
    pub fn arm(&self, attack: Attack) {
        *self.state.armed.lock().unwrap() = Some(attack);
    }

    /// Attacks carried out so far.
    pub fn fired(&self) -> u64 {
        self.state.fired.load(Ordering::SeqCst)
    }

    /// Connections relayed so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Every byte relayed, both ways.
    pub fn seen(&self) -> Vec<u8> {
        self.state.seen.lock().unwrap().clone()
    }
}

impl Drop for Mitm {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        for c in self.state.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

fn close(a: &TcpStream, b: &TcpStream) {
    let _ = a.shutdown(Shutdown::Both);
    let _ = b.shutdown(Shutdown::Both);
}

/// Secondary to primary: relayed as it comes.
fn back(st: &State, mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        st.seen.lock().unwrap().extend_from_slice(&buf[..n]);
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    // The primary is done sending; the secondary's answer still travels back.
    let _ = to.shutdown(Shutdown::Write);
}

/// Primary to secondary: relayed unit by unit, tampered with once armed.
fn forward(st: &State, mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 << 10];
    let mut pending: Vec<u8> = Vec::new();
    let mut previous_large: Option<Vec<u8>> = None;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        st.seen.lock().unwrap().extend_from_slice(&buf[..n]);
        pending.extend_from_slice(&buf[..n]);
        while let Some(len) = st.framing.unit_len(&pending) {
            if len == usize::MAX {
                // Not this framing at all (a TLS hello to a plaintext peer, say): relay as is.
                if to.write_all(&pending).is_err() {
                    let _ = to.shutdown(Shutdown::Both);
                    return;
                }
                pending.clear();
                break;
            }
            if pending.len() < len {
                break;
            }
            let mut unit: Vec<u8> = pending.drain(..len).collect();
            let attack = if unit.len() >= LARGE {
                st.armed.lock().unwrap().take()
            } else {
                None
            };
            let ok = match attack {
                None => to.write_all(&unit).is_ok(),
                Some(a) => {
                    st.fired.fetch_add(1, Ordering::SeqCst);
                    match a {
                        Attack::FlipByte => {
                            let mid = unit.len() / 2;
                            unit[mid] ^= 0x40;
                            to.write_all(&unit).is_ok()
                        }
                        Attack::Inject(extra) => {
                            to.write_all(&extra).is_ok() && to.write_all(&unit).is_ok()
                        }
                        Attack::Replay => {
                            let again = previous_large.clone().unwrap_or_else(|| unit.clone());
                            to.write_all(&unit).is_ok() && to.write_all(&again).is_ok()
                        }
                        Attack::Truncate => {
                            let _ = to.write_all(&unit[..unit.len() / 2]);
                            close(&from, &to);
                            return;
                        }
                    }
                }
            };
            if !ok {
                // The secondary is gone; what it said last still travels back.
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
            if unit.len() >= LARGE {
                previous_large = Some(unit);
            }
        }
    }
    // The primary is done sending; the secondary's answer still travels back.
    let _ = to.shutdown(Shutdown::Write);
}
