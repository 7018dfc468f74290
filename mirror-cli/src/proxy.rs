//! A TCP proxy on loopback that the demo and the benchmarks control: it forwards a primary's
//! connection to a secondary, counts the bytes each way, and can cut the link (ending every
//! connection and refusing new ones) and restore it.
//!
//! A cut is what a real network does to the pair: both ends see their connection fail, and
//! nothing in the engine is told it was on purpose.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Debug)]
struct Shared {
    target: SocketAddr,
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
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
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
                .spawn(move || pump(from, to, &s, forward));
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
