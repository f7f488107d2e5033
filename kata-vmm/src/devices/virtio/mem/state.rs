//! Which blocks of the hot-plug region are plugged: one flag per block, and the checks every
//! guest-given range passes before it touches them (inside the usable region, block-aligned,
//! at least one block, no overflow).

use std::ops::Range;

/// Why a guest-given range was refused (answered `VIRTIO_MEM_RESP_ERROR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// Zero blocks.
    #[error("a range of zero blocks")]
    Empty,
    /// The address is not a multiple of the block size from the region's start.
    #[error("address {addr:#x} is not aligned to the {block_size:#x}-byte block")]
    Unaligned {
        /// The address.
        addr: u64,
        /// The block size.
        block_size: u64,
    },
    /// The range starts before the region or ends past its usable part (or overflows).
    #[error("{nb_blocks} blocks at {addr:#x} are not inside the usable region")]
    Outside {
        /// The address.
        addr: u64,
        /// The number of blocks.
        nb_blocks: u16,
    },
}

/// What a range holds (`VIRTIO_MEM_STATE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockState {
    /// Every block plugged.
    Plugged,
    /// No block plugged.
    Unplugged,
    /// Some of each.
    Mixed,
}

/// The hot-plug region's blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockMap {
    base: u64,
    block_size: u64,
    plugged: Vec<bool>,
    plugged_count: u64,
}

impl BlockMap {
    /// `usable_size / block_size` blocks from `base`, all unplugged. `block_size` is a power of
    /// two and `usable_size` a multiple of it (the device checks its configuration first).
    pub fn new(base: u64, usable_size: u64, block_size: u64) -> BlockMap {
        let blocks = usize::try_from(usable_size / block_size).unwrap_or(0);
        BlockMap {
            base,
            block_size,
            plugged: vec![false; blocks],
            plugged_count: 0,
        }
    }

    /// The block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Bytes plugged.
    pub fn plugged_size(&self) -> u64 {
        self.plugged_count * self.block_size
    }

    /// The block indices of `nb_blocks` blocks at guest address `addr`, checked.
    pub fn range(&self, addr: u64, nb_blocks: u16) -> Result<Range<usize>, RangeError> {
        if nb_blocks == 0 {
            return Err(RangeError::Empty);
        }
        let outside = RangeError::Outside { addr, nb_blocks };
        let offset = addr.checked_sub(self.base).ok_or(outside)?;
        if !offset.is_multiple_of(self.block_size) {
            return Err(RangeError::Unaligned {
                addr,
                block_size: self.block_size,
            });
        }
        let first = usize::try_from(offset / self.block_size).map_err(|_| outside)?;
        let end = first
            .checked_add(usize::from(nb_blocks))
            .filter(|&end| end <= self.plugged.len())
            .ok_or(outside)?;
        Ok(first..end)
    }

    /// What `blocks` hold.
    pub fn state(&self, blocks: Range<usize>) -> BlockState {
        let plugged = self.plugged[blocks.clone()].iter().filter(|p| **p).count();
        match plugged {
            0 => BlockState::Unplugged,
            n if n == blocks.len() => BlockState::Plugged,
            _ => BlockState::Mixed,
        }
    }

    /// Marks `blocks` plugged (`to = true`) or unplugged.
    pub fn set(&mut self, blocks: Range<usize>, to: bool) {
        for b in &mut self.plugged[blocks] {
            if *b != to {
                *b = to;
                if to {
                    self.plugged_count += 1;
                } else {
                    self.plugged_count -= 1;
                }
            }
        }
    }

    /// Marks every block unplugged; returns the plugged runs as (guest address, length), to
    /// give back to the host.
    pub fn unplug_all(&mut self) -> Vec<(u64, u64)> {
        let mut runs = Vec::new();
        let mut i = 0;
        while i < self.plugged.len() {
            if !self.plugged[i] {
                i += 1;
                continue;
            }
            let start = i;
            while i < self.plugged.len() && self.plugged[i] {
                self.plugged[i] = false;
                i += 1;
            }
            runs.push(self.bytes(start..i));
        }
        self.plugged_count = 0;
        runs
    }

    /// The guest address and length of `blocks`.
    pub fn bytes(&self, blocks: Range<usize>) -> (u64, u64) {
        (
            self.base + blocks.start as u64 * self.block_size,
            blocks.len() as u64 * self.block_size,
        )
    }
}
