//! The life of an application request on one node, and the activity log on the write path.
//!
//! A write (or discard, or write-zeroes) takes a reference on every activity-log extent it
//! touches. It is submitted to the disk only when all of them are in the durable active set;
//! otherwise it waits while the AL writer writes the bitmap pages of the extents it evicts and
//! then the transaction (with FUA). When the write completes, its references are released and,
//! because no peer received it, its blocks are marked out of sync. A failed write is never
//! completed as a success.

use bytes::Bytes;
use udrbd_meta::activity_log::{Activation, BITS_PER_AL_EXTENT, extent_of_sector};

use crate::engine::{AlWriter, OpPurpose, Request, Resource};
use crate::state::{DiskState, Role};
use crate::types::*;

impl Resource {
    pub(crate) fn on_block_request(&mut self, request: BlockRequest) {
        let id = request.id();
        assert!(
            !self.requests.contains_key(&id),
            "duplicate request id {id:?}"
        );
        if self.requests.len() >= self.config.max_requests {
            return self.complete(id, Err(BlockError::Busy));
        }
        if self.role != Role::Primary {
            return self.complete(id, Err(BlockError::NotPrimary));
        }
        let usable = self.disk_state == DiskState::UpToDate && self.disk.is_some();
        let size = self.disk.as_ref().map_or(0, |d| d.size_sect * 512);
        let range = match &request {
            BlockRequest::Read { offset, len, .. } => Some((*offset, u64::from(*len))),
            BlockRequest::Write { offset, data, .. } => Some((*offset, data.len() as u64)),
            BlockRequest::Discard { offset, len, .. }
            | BlockRequest::WriteZeroes { offset, len, .. } => Some((*offset, *len)),
            BlockRequest::Flush { .. } => None,
        };
        if let Some((offset, len)) = range
            && (offset.checked_add(len).is_none_or(|end| end > size) || len == 0 && offset > size)
        {
            return self.complete(
                id,
                Err(if usable {
                    BlockError::OutOfRange
                } else {
                    BlockError::Io
                }),
            );
        }
        if !usable {
            // No local data and no peer: nothing can serve the request.
            return self.complete(id, Err(BlockError::Io));
        }
        let extents = match range {
            Some((offset, len)) if is_write(&request) && len > 0 => Some((
                extent_of_sector(offset / 512),
                extent_of_sector((offset + len - 1) / 512),
            )),
            _ => None,
        };
        let flush_after = matches!(
            request,
            BlockRequest::Discard { fua: true, .. } | BlockRequest::WriteZeroes { fua: true, .. }
        );
        self.requests.insert(
            id,
            Request {
                request,
                extents,
                holds_extents: false,
                op: None,
                flush_after,
            },
        );
        if extents.is_some() {
            self.al_waiting.push_back(id);
        } else {
            self.submit_request(id);
        }
    }

    /// Submits the data operation of a request whose extents (if any) are active.
    fn submit_request(&mut self, id: BlockRequestId) {
        let r = &self.requests[&id];
        let (offset, kind) = match &r.request {
            BlockRequest::Read { offset, len, .. } => (*offset, DiskOpKind::Read { len: *len }),
            BlockRequest::Write {
                offset, data, fua, ..
            } => (
                *offset,
                DiskOpKind::Write {
                    data: data.clone(),
                    fua: *fua,
                },
            ),
            BlockRequest::Flush { .. } => (0, DiskOpKind::Flush),
            BlockRequest::Discard { offset, len, .. } => {
                (*offset, DiskOpKind::Discard { len: *len })
            }
            BlockRequest::WriteZeroes { offset, len, .. } => {
                (*offset, DiskOpKind::WriteZeroes { len: *len })
            }
        };
        let op = self.submit(OpPurpose::Request(id), DiskArea::Data, offset, kind);
        self.requests.get_mut(&id).expect("request").op = Some(op);
    }

    /// Tries to start every write waiting for activity-log extents, in arrival order.
    pub(crate) fn start_waiting_writes(&mut self) {
        if self.disk.is_none() || self.disk_state == DiskState::Failed {
            return;
        }
        let waiting: Vec<BlockRequestId> = self.al_waiting.iter().copied().collect();
        for id in waiting {
            if !self.hold_extents(id) {
                continue;
            }
            let (first, last) = self.requests[&id].extents.expect("a write");
            let d = self.disk.as_ref().expect("attached");
            if (first..=last).all(|e| d.al.is_active(e)) {
                self.al_waiting.retain(|w| *w != id);
                self.submit_request(id);
            }
        }
    }

    /// Takes the references on a waiting write's extents; false if the AL is full (nothing is
    /// held then, so two writes can never deadlock holding half of each other's slots).
    fn hold_extents(&mut self, id: BlockRequestId) -> bool {
        let r = &self.requests[&id];
        if r.holds_extents {
            return true;
        }
        let (first, last) = r.extents.expect("a write");
        let d = self.disk.as_mut().expect("attached");
        for e in first..=last {
            if d.al.activate(e) == Activation::Busy {
                for taken in first..e {
                    d.al.release(taken);
                }
                return false;
            }
        }
        self.requests.get_mut(&id).expect("request").holds_extents = true;
        true
    }

    fn release_extents(&mut self, id: BlockRequestId) {
        let r = self.requests.get_mut(&id).expect("request");
        if !std::mem::take(&mut r.holds_extents) {
            return;
        }
        let (first, last) = r.extents.expect("a write");
        if let Some(d) = self.disk.as_mut() {
            for e in first..=last {
                d.al.release(e);
            }
        }
    }

    /// Drives the activity-log writer: prepare a transaction, write the evicted extents' bitmap
    /// pages, then the transaction block with FUA.
    pub(crate) fn drive_activity_log(&mut self) {
        if self.disk_state == DiskState::Failed {
            return;
        }
        let Some(d) = self.disk.as_mut() else { return };
        if matches!(d.al_writer, AlWriter::Idle) {
            let Some(prepared) = d.al.prepare_transaction() else {
                return;
            };
            let mut pages = std::collections::BTreeSet::new();
            for &e in &prepared.evicted {
                let first = u64::from(e) * BITS_PER_AL_EXTENT;
                pages.extend(
                    d.bitmap
                        .pages_of(first..(first + BITS_PER_AL_EXTENT).min(d.bitmap.bits())),
                );
            }
            d.al_writer = AlWriter::Pages {
                prepared: Box::new(prepared),
                pages,
            };
        }
        let AlWriter::Pages { pages, .. } = &mut d.al_writer else {
            return;
        };
        // Pages that are clean and not being written are durable.
        pages.retain(|p| d.bitmap.is_dirty(*p) || d.pages_in_flight.contains(p));
        let to_write: Vec<u64> = pages
            .iter()
            .copied()
            .filter(|p| !d.pages_in_flight.contains(p))
            .collect();
        let done = pages.is_empty();
        for page in to_write {
            self.write_page(page);
        }
        if !done {
            return;
        }
        let d = self.disk.as_mut().expect("attached");
        let AlWriter::Pages { prepared, .. } = std::mem::take(&mut d.al_writer) else {
            unreachable!()
        };
        d.al_writer = AlWriter::Writing;
        let offset = d.layout.al_position_byte(prepared.ring_position);
        let data = Bytes::copy_from_slice(&prepared.transaction.encode()[..]);
        self.submit(
            OpPurpose::AlTransaction,
            DiskArea::ActivityLog,
            offset,
            DiskOpKind::Write { data, fua: true },
        );
    }

    pub(crate) fn al_transaction_written(&mut self) {
        if let Some(d) = self.disk.as_mut() {
            d.al.transaction_written();
            d.al_writer = AlWriter::Idle;
        }
    }

    /// The data operation of request `id` completed.
    pub(crate) fn on_request_done(
        &mut self,
        id: BlockRequestId,
        result: Result<Option<Bytes>, DiskError>,
    ) {
        let r = self.requests.get_mut(&id).expect("completed request");
        if result.is_ok() && std::mem::take(&mut r.flush_after) {
            // Discard and write-zeroes with FUA: durable through a flush before completing.
            let op = self.submit(OpPurpose::Request(id), DiskArea::Data, 0, DiskOpKind::Flush);
            self.requests.get_mut(&id).expect("request").op = Some(op);
            return;
        }
        self.release_extents(id);
        let r = self.requests.remove(&id).expect("completed request");
        match result {
            Ok(data) => {
                self.account(&r.request);
                if self.config.has_peer
                    && let Some((offset, len)) = written_range(&r.request)
                    && let Some(d) = self.disk.as_mut()
                {
                    // No peer received it: out of sync until a resync.
                    let first = offset / udrbd_meta::BM_BLOCK_SIZE;
                    let end = (offset + len).div_ceil(udrbd_meta::BM_BLOCK_SIZE);
                    d.bitmap.set_range(first..end);
                }
                let data = if matches!(r.request, BlockRequest::Read { .. }) {
                    data
                } else {
                    None
                };
                self.complete(id, Ok(data));
            }
            Err(_) => {
                // on-io-error detach: no other copy is reachable, so the request fails.
                self.complete(id, Err(BlockError::Io));
                self.disk_failed();
            }
        }
    }

    /// Completes a request that can no longer be served (its disk failed).
    pub(crate) fn fail_request(&mut self, id: BlockRequestId) {
        self.release_extents(id);
        self.requests.remove(&id);
        self.complete(id, Err(BlockError::Io));
    }

    fn account(&mut self, request: &BlockRequest) {
        match request {
            BlockRequest::Read { len, .. } => self.statistics.read_kib += u64::from(*len) / 1024,
            BlockRequest::Write { data, .. } => {
                self.statistics.written_kib += data.len() as u64 / 1024
            }
            BlockRequest::Discard { len, .. } | BlockRequest::WriteZeroes { len, .. } => {
                self.statistics.written_kib += len / 1024
            }
            BlockRequest::Flush { .. } => {}
        }
    }
}

fn is_write(request: &BlockRequest) -> bool {
    matches!(
        request,
        BlockRequest::Write { .. }
            | BlockRequest::Discard { .. }
            | BlockRequest::WriteZeroes { .. }
    )
}

fn written_range(request: &BlockRequest) -> Option<(u64, u64)> {
    match request {
        BlockRequest::Write { offset, data, .. } => Some((*offset, data.len() as u64)),
        BlockRequest::Discard { offset, len, .. }
        | BlockRequest::WriteZeroes { offset, len, .. } => Some((*offset, *len)),
        _ => None,
    }
}
