//! A TCP proxy on loopback that the demo and the benchmarks control: it forwards a primary's
//! connection to a secondary, counts the bytes each way, and can cut the link (ending every
//! connection and refusing new ones) and restore it.
//!
//! A cut is what a real network does to the pair: both ends see their connection fail, and
//! nothing in the engine is told it was on purpose.
//!
//! A proxy can also give the link a [`Shape`]: a round-trip delay and a rate, each direction
//! on its own (there is no netem on every machine the benchmarks run on). Each direction is a
//! reader and a deliverer: the reader stamps every chunk with the moment its last byte would
//! leave a link of that rate, plus half the round trip, and the deliverer writes it out at
//! that moment. The reader stops reading while more than a bandwidth-delay product (plus a
//! little) is queued, so the sender feels the rate through TCP, as behind a real bottleneck.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A slow link: what a WAN is to the pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// Round-trip time; each direction delays by half of it.
    pub rtt: Duration,
    /// Rate of each direction, in bits per second.
    pub bits_per_sec: u64,
}

impl Shape {
    /// Seconds that `bytes` need on a link of this rate.
    pub fn seconds_for(&self, bytes: u64) -> f64 {
        bytes as f64 * 8.0 / self.bits_per_sec as f64
    }

    /// Bytes in flight on a full link: rate × round trip.
    pub fn bdp_bytes(&self) -> u64 {
        (self.bits_per_sec as f64 / 8.0 * self.rtt.as_secs_f64()) as u64
    }
}

#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    shape: Option<Shape>,
    up: AtomicBool,
    stopping: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
    /// Bytes from the connecting side (the primary) to the target.
    forward: AtomicU64,
    /// Bytes from the target back.
    backward: AtomicU64,
}

/// A running proxy; dropping it stops it and ends its connections.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// A proxy on a free loopback port, forwarding to `target`.
    pub fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        Proxy::start_shaped(target, None)
    }

    /// A proxy whose link has `shape` (none: as fast as loopback).
    pub fn start_shaped(target: SocketAddr, shape: Option<Shape>) -> std::io::Result<Proxy> {
        if let Some(s) = shape {
            if s.bits_per_sec == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a link rate must be positive",
                ));
            }
        }
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            shape,
            up: AtomicBool::new(true),
            stopping: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            forward: AtomicU64::new(0),
            backward: AtomicU64::new(0),
        });
        let s = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name("proxy-accept".into())
            .spawn(move || accept_loop(listener, s))?;
        Ok(Proxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// Where primaries connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts the link: ends every connection and refuses new ones until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.shared.up.store(false, Ordering::SeqCst);
        self.shared.close_all();
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.shared.up.store(true, Ordering::SeqCst);
    }

    /// Bytes `(primary → secondary, secondary → primary)` forwarded so far.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.shared.forward.load(Ordering::Relaxed),
            self.shared.backward.load(Ordering::Relaxed),
        )
    }

    /// Bytes forwarded both ways so far.
    pub fn total_bytes(&self) -> u64 {
        let (f, b) = self.bytes();
        f + b
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.close_all();
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
    }
}

impl Shared {
    fn close_all(&self) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        for c in conns.drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    fn track(&self, s: &TcpStream) {
        if let Ok(c) = s.try_clone() {
            self.conns.lock().unwrap_or_else(|p| p.into_inner()).push(c);
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.stopping.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(_) => continue,
        };
        if !shared.up.load(Ordering::SeqCst) {
            // The link is down: the connection fails as soon as it is made.
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let _ = client.set_nonblocking(false);
        let Ok(server) = TcpStream::connect_timeout(&shared.target, Duration::from_secs(5)) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        shared.track(&client);
        shared.track(&server);
        for (from, to, forward) in [
            (client.try_clone(), server.try_clone(), true),
            (server.try_clone(), client.try_clone(), false),
        ] {
            let (Ok(from), Ok(to)) = (from, to) else {
                let _ = client.shutdown(Shutdown::Both);
                let _ = server.shutdown(Shutdown::Both);
                break;
            };
            let s = Arc::clone(&shared);
            let _ = std::thread::Builder::new()
                .name("proxy-pump".into())
                .spawn(move || match s.shape {
                    None => pump(from, to, &s, forward),
                    Some(shape) => pump_shaped(from, to, &s, forward, shape),
                });
        }
    }
}

/// Copies `from` to `to` until either fails, then ends both.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared, forward: bool) {
    let counter = if forward {
        &shared.forward
    } else {
        &shared.backward
    };
    let mut buf = vec![0u8; 256 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if !shared.up.load(Ordering::SeqCst) || to.write_all(&buf[..n]).is_err() {
                    break;
                }
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// Like [`pump`], through a link of `shape`: chunks are read as they come, stamped with their
/// delivery time (serialised at the rate, then half the round trip) and written out by a
/// second thread when that time comes.
fn pump_shaped(
    mut from: TcpStream,
    to: TcpStream,
    shared: &Arc<Shared>,
    forward: bool,
    shape: Shape,
) {
    // Chunks small enough that one does not hold the line for long (1.3 ms at 100 Mbit/s).
    const CHUNK: usize = 16 << 10;
    let queued = Arc::new(AtomicU64::new(0));
    let limit = shape.bdp_bytes() + (256 << 10);
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let deliverer = {
        let (shared, queued) = (Arc::clone(shared), Arc::clone(&queued));
        let mut to = to;
        std::thread::Builder::new()
            .name("proxy-deliver".into())
            .spawn(move || {
                let counter = if forward {
                    &shared.forward
                } else {
                    &shared.backward
                };
                for (at, chunk) in rx {
                    let now = Instant::now();
                    if at > now {
                        std::thread::sleep(at - now);
                    }
                    if !shared.up.load(Ordering::SeqCst) || to.write_all(&chunk).is_err() {
                        break;
                    }
                    queued.fetch_sub(chunk.len() as u64, Ordering::Relaxed);
                    counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
                let _ = to.shutdown(Shutdown::Both);
            })
    };
    let half_rtt = shape.rtt / 2;
    let mut line_free = Instant::now();
    let mut buf = vec![0u8; CHUNK];
    loop {
        while queued.load(Ordering::Relaxed) > limit && shared.up.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_micros(500));
        }
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let now = Instant::now();
                let start = line_free.max(now);
                line_free = start + Duration::from_secs_f64(shape.seconds_for(n as u64));
                queued.fetch_add(n as u64, Ordering::Relaxed);
                if !shared.up.load(Ordering::SeqCst)
                    || tx.send((line_free + half_rtt, buf[..n].to_vec())).is_err()
                {
                    break;
                }
            }
        }
    }
    // What was read still arrives (a FIN follows the data on a real link too).
    drop(tx);
    if let Ok(d) = deliverer {
        let _ = d.join();
    }
    let _ = from.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A sink on loopback that reads until EOF and sends back how many bytes it got.
    fn counting_echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut buf = vec![0u8; 64 << 10];
            let mut total = 0u64;
            loop {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        total += n as u64;
                        if total == 1 {
                            // The first byte is a ping: answer at once.
                            let _ = c.write_all(&[1]);
                        }
                    }
                }
                if total > (1 << 20) {
                    break;
                }
            }
            let _ = c.write_all(&total.to_le_bytes());
        });
        addr
    }

    #[test]
    fn a_shaped_link_delays_by_the_round_trip_and_paces_to_its_rate() {
        let shape = Shape {
            rtt: Duration::from_millis(40),
            bits_per_sec: 80_000_000, // 10 MB/s: 1 MiB takes 105 ms
        };
        let proxy = Proxy::start_shaped(counting_echo(), Some(shape)).unwrap();
        let mut c = TcpStream::connect(proxy.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();

        let t = Instant::now();
        c.write_all(&[0]).unwrap();
        let mut pong = [0u8; 1];
        c.read_exact(&mut pong).unwrap();
        let rtt = t.elapsed();
        assert!(
            rtt >= Duration::from_millis(40),
            "a round trip took {rtt:?}"
        );

        let t = Instant::now();
        c.write_all(&vec![7u8; 1 << 20]).unwrap();
        let mut total = [0u8; 8];
        c.read_exact(&mut total).unwrap();
        let took = t.elapsed();
        assert_eq!(
            u64::from_le_bytes(total),
            1 + (1 << 20),
            "bytes lost or added"
        );
        let floor = Duration::from_secs_f64(shape.seconds_for(1 << 20)) + shape.rtt;
        assert!(
            took >= floor,
            "1 MiB and a reply took {took:?}, under the {floor:?} floor"
        );
        assert!(took < floor * 20, "1 MiB and a reply took {took:?}");
        // The counters move just after each write; wait for the last one.
        let deadline = Instant::now() + Duration::from_secs(10);
        while proxy.bytes() != (1 + (1 << 20), 9) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(proxy.bytes(), (1 + (1 << 20), 9));
    }

    #[test]
    fn a_link_without_rate_is_refused() {
        let shape = Shape {
            rtt: Duration::from_millis(1),
            bits_per_sec: 0,
        };
        let err = Proxy::start_shaped("127.0.0.1:9".parse().unwrap(), Some(shape)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    }
}
