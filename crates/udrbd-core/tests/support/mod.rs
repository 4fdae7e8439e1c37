//! Test support shared by the engine's integration tests: an in-memory disk with DRBD's
//! durability model.
#![allow(dead_code)]

use bytes::Bytes;
use udrbd_core::*;
use udrbd_meta::activity_log::AlTransaction;
use udrbd_meta::{AlGeometry, Layout, Superblock};

/// A disk with a durable image and a volatile one; operations complete in submission order
/// unless the test holds them back.
pub struct MemDisk {
    pub durable: Vec<u8>,
    pub volatile: Vec<u8>,
    /// Written but not yet durable ranges.
    pub unflushed: Vec<(usize, usize)>,
    pub fail_data_writes: bool,
    /// The size `Capacity` reports instead of the image's (a device that shrank).
    pub reported_size: Option<u64>,
}

impl MemDisk {
    pub fn new(size: u64) -> MemDisk {
        MemDisk {
            durable: vec![0; size as usize],
            volatile: vec![0; size as usize],
            unflushed: Vec::new(),
            fail_data_writes: false,
            reported_size: None,
        }
    }

    /// create-md, written straight to the durable image.
    pub fn create_md(&mut self) {
        let layout = Layout::internal(self.durable.len() as u64, AlGeometry::DEFAULT).unwrap();
        let init = AlTransaction::initialized().encode();
        for p in 0..layout.al.ring_blocks() {
            self.poke(layout.al_position_byte(p) as usize, &init[..]);
        }
        let sb = Superblock::new_created(&layout, 0);
        self.poke(layout.superblock_byte() as usize, &sb.encode()[..]);
    }

    pub fn poke(&mut self, at: usize, data: &[u8]) {
        self.durable[at..at + data.len()].copy_from_slice(data);
        self.volatile[at..at + data.len()].copy_from_slice(data);
    }

    pub fn execute(&mut self, op: &DiskOp) -> DiskCompletion {
        let at = op.offset as usize;
        let result = match &op.kind {
            DiskOpKind::Read { len } => Ok(Some(Bytes::copy_from_slice(
                &self.volatile[at..at + *len as usize],
            ))),
            DiskOpKind::Write { .. } if self.fail_data_writes && op.area == DiskArea::Data => {
                Err(DiskError { errno: 5 })
            }
            DiskOpKind::Write { data, fua } => {
                self.volatile[at..at + data.len()].copy_from_slice(data);
                if *fua {
                    self.durable[at..at + data.len()].copy_from_slice(data);
                } else {
                    self.unflushed.push((at, data.len()));
                }
                Ok(None)
            }
            DiskOpKind::Flush => {
                for (a, n) in self.unflushed.drain(..) {
                    self.durable[a..a + n].copy_from_slice(&self.volatile[a..a + n]);
                }
                Ok(None)
            }
            DiskOpKind::Discard { len } | DiskOpKind::WriteZeroes { len } => {
                let n = *len as usize;
                self.volatile[at..at + n].fill(0);
                self.unflushed.push((at, n));
                Ok(None)
            }
            DiskOpKind::Capacity => Ok(Some(Bytes::copy_from_slice(
                &self
                    .reported_size
                    .unwrap_or(self.durable.len() as u64)
                    .to_le_bytes(),
            ))),
        };
        DiskCompletion { id: op.id, result }
    }

    /// The device grows (an `lvextend`): the new part reads as zeros.
    pub fn grow(&mut self, size: u64) {
        self.durable.resize(size as usize, 0);
        self.volatile.resize(size as usize, 0);
    }

    /// Power cut: only the durable image survives.
    pub fn crash(&mut self) {
        self.volatile = self.durable.clone();
        self.unflushed.clear();
    }
}
