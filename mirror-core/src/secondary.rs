//! The secondary controller (API; the engine fills it in).

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::SecondaryConfig;
use crate::volume::Volume;
use crate::Result;

/// A snapshot of a secondary.
#[derive(Debug, Clone, Default)]
pub struct SecondaryStatus {
    /// Address of the connected primary.
    pub peer: Option<String>,
    /// Connections accepted.
    pub connections: u64,
    /// Connections refused or ended by an error.
    pub rejected: u64,
    /// Writes applied (replicated and repairs).
    pub writes_applied: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// The last connection error.
    pub last_error: Option<String>,
}

/// The secondary side of a mirrored pair: applies what a primary sends.
#[derive(Debug)]
pub struct Secondary {
    _volume: Arc<dyn Volume>,
}

impl Secondary {
    /// A secondary over `volume`; it listens once [`serve`](Self::serve) is called.
    pub fn new(volume: Arc<dyn Volume>, config: SecondaryConfig) -> Result<Secondary> {
        let _ = config;
        Ok(Secondary { _volume: volume })
    }

    /// Starts listening and serving in background threads; returns the bound address.
    pub fn serve(&self) -> Result<SocketAddr> {
        todo!()
    }

    /// The bound address, while serving.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        todo!()
    }

    /// Stops listening and ends the current connection. What the secondary knows of its
    /// coherence is kept, so a later `serve` lets the primary resync from its dirty map.
    pub fn stop(&self) {
        todo!()
    }

    /// A snapshot.
    pub fn status(&self) -> SecondaryStatus {
        todo!()
    }
}
