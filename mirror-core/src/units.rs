//! Newtypes for the quantities the engine speaks of, so a block index is never taken for a
//! byte offset. Each constructor validates; past it, the value is known good.

use std::fmt;

use crate::{Error, Result};

/// A volume's block size: a power of two from 512 B to 1 MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockSize(u32);

impl BlockSize {
    /// The smallest block size.
    pub const MIN: u32 = 512;
    /// The largest block size.
    pub const MAX: u32 = 1 << 20;
    /// The default block size, 4 KiB.
    pub const DEFAULT: BlockSize = BlockSize(4096);

    /// A block size, if `bytes` is a power of two from 512 to 1 MiB.
    pub fn new(bytes: u64) -> Result<Self> {
        if bytes.is_power_of_two() && (Self::MIN as u64..=Self::MAX as u64).contains(&bytes) {
            Ok(BlockSize(bytes as u32))
        } else {
            Err(Error::invalid(format!(
                "block size {bytes} is not a power of two from 512 to 1048576"
            )))
        }
    }

    /// Bytes per block.
    pub fn get(self) -> u32 {
        self.0
    }

    /// Bytes per block, as `u64`.
    pub fn bytes(self) -> u64 {
        self.0 as u64
    }

    /// Bytes per block, as `usize`.
    pub fn as_usize(self) -> usize {
        self.0 as usize
    }

    /// log2 of the block size.
    pub fn shift(self) -> u32 {
        self.0.trailing_zeros()
    }

    /// Number of blocks in a volume of `size` bytes (the last one may be partial).
    pub fn blocks_in(self, size: u64) -> u64 {
        size.div_ceil(self.bytes())
    }

    /// Byte offset of block `index`.
    pub fn offset_of(self, index: BlockIndex) -> u64 {
        index.0 << self.shift()
    }

    /// Block that holds byte `offset`.
    pub fn index_of(self, offset: u64) -> BlockIndex {
        BlockIndex(offset >> self.shift())
    }
}

impl Default for BlockSize {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for BlockSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The index of a block in a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct BlockIndex(pub u64);

impl fmt::Display for BlockIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A run of blocks `[start, start + count)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BlockRange {
    /// First block.
    pub start: BlockIndex,
    /// Number of blocks.
    pub count: u64,
}

impl BlockRange {
    /// The run `[start, start + count)`.
    pub fn new(start: u64, count: u64) -> Self {
        BlockRange {
            start: BlockIndex(start),
            count,
        }
    }

    /// One past the last block.
    pub fn end(&self) -> u64 {
        self.start.0 + self.count
    }

    /// True when the run holds no block.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl fmt::Display for BlockRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.count == 1 {
            write!(f, "{}", self.start.0)
        } else {
            write!(f, "{}-{}", self.start.0, self.end().saturating_sub(1))
        }
    }
}

/// How far a secondary is known coherent: which primary session and which connection of it.
///
/// A primary draws a random session id when it opens (its dirty map is only meaningful within
/// that session) and counts its connections to the secondary; the pair is the generation the
/// secondary records at every handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Generation {
    /// The primary session that last connected (zero: none).
    pub session: u128,
    /// Connection count within that session.
    pub epoch: u64,
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}:{}", self.session, self.epoch)
    }
}
