//! The life of an application request on one node, and the activity log on the write path.
//!
//! A write (or discard, or write-zeroes) takes a reference on every activity-log extent it
//! touches. It is submitted to the disk only when all of them are in the durable active set;
//! otherwise it waits while the AL writer writes the bitmap pages of the extents it evicts and
//! then the transaction (with FUA). While the peer receives writes, a write is sent to it when
//! its local write is submitted and completes when both parts are done (replication.rs). A
//! write no peer received marks its blocks out of sync. A failed write is never completed as
//! a success unless the peer wrote it. The write's references end when it completes; a
//! replicated write's epoch holds its own until the peer's barrier ack, or the connection
//! loss that marks the write (peer.rs `ClosedEpoch`): an extent leaves the log only once
//! what it covered is on both disks or recorded in the bitmap. A write that arrived before a
//! handshake made this node its peer's SyncTarget, and had not gone to the peer by then,
//! never does: the data it was written against was given up (`Resource::data_generation`).

use bytes::Bytes;
use udrbd_meta::activity_log::{BITS_PER_AL_EXTENT, extent_of_sector};

use crate::engine::{AlWriter, LocalIoError, OpPurpose, Request, Resource};
use crate::mutation::Mutation;
use crate::state::{ConnState, DiskState, Role};
use crate::types::*;

impl Resource {
    pub(crate) fn on_block_request(&mut self, request: BlockRequest) {
        let id = request.id();
        assert!(
            !self.requests.contains_key(&id),
            "duplicate request id {id:?}"
        );
        if self.requests.len() + self.held_requests.len() >= self.config.max_requests {
            return self.complete(id, Err(BlockError::Busy));
        }
        if self.holds_application_io() {
            self.held_requests.push_back(request);
            return;
        }
        if self.role != Role::Primary {
            return self.complete(id, Err(BlockError::NotPrimary));
        }
        let range = match &request {
            BlockRequest::Read { offset, len, .. } => Some((*offset, u64::from(*len))),
            BlockRequest::Write { offset, data, .. } => Some((*offset, data.len() as u64)),
            BlockRequest::Discard { offset, len, .. }
            | BlockRequest::WriteZeroes { offset, len, .. } => Some((*offset, *len)),
            BlockRequest::Flush { .. } => None,
        };
        let is_a_read = matches!(request, BlockRequest::Read { .. });
        let local_data = match range {
            Some((offset, len)) if is_a_read => self.local_read_allowed(offset, len),
            _ => self.disk_state == DiskState::UpToDate && self.local_disk_writable(),
        };
        let usable = local_data || self.peer_serves();
        let size = self.exported_size();
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
            // No good copy reachable: nothing can serve the request.
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
        let read_remote = is_a_read && !local_data;
        let is_a_write = is_write(&request);
        self.requests.insert(
            id,
            Request {
                request,
                extents,
                holds_extents: false,
                op: None,
                flush_after,
                local_done: false,
                local_error: false,
                net_pending: 0,
                net_failed: false,
                replicated: false,
                epoch: None,
                flush_epoch: None,
                read_parts: Vec::new(),
                lock: None,
                data_generation: self.data_generation,
            },
        );
        if read_remote || (!is_a_read && !self.local_disk_writable()) {
            // A diskless Primary (or one whose disk failed): the peer serves it.
            return self.serve_without_local_disk(id);
        }
        if is_a_write {
            self.al_waiting.push_back(id);
        } else {
            self.submit_request(id);
        }
    }

    /// Whether the local disk serves a read of `len` bytes at `offset` (DRBD's
    /// drbd_may_do_local_read): an UpToDate disk every read, an Inconsistent one a read of
    /// blocks in sync (no bit set), and no other. Reading an Inconsistent disk's blocks in
    /// sync from the peer instead returned what the peer's disk held while this node's
    /// write to it was still on its way there, and failed there (swarm seed 5789: a
    /// Primary made Inconsistent by a read error, on-io-error pass_on, protocol A). Not while
    /// the bitmap exchange of a handshake merges the peer's bits: they are not all here yet.
    pub(crate) fn local_read_allowed(&self, offset: u64, len: u64) -> bool {
        if !self.local_disk_writable() {
            return false;
        }
        match self.disk_state {
            DiskState::UpToDate => true,
            DiskState::Inconsistent => {
                let exchanging = self.peer.as_ref().is_some_and(|p| {
                    matches!(
                        p.conn,
                        ConnState::WfReportParams
                            | ConnState::StartingSyncS
                            | ConnState::StartingSyncT
                            | ConnState::WfBitMapS
                            | ConnState::WfBitMapT
                            | ConnState::WfSyncUuid
                    )
                });
                let d = self.disk.as_ref().expect("attached");
                let bit = udrbd_meta::BM_BLOCK_SIZE;
                let (first, end) = (offset / bit, offset.saturating_add(len).div_ceil(bit));
                !exchanging && d.bitmap.count_range(first..end) == 0
            }
            _ => false,
        }
    }

    /// Whether writes go to the local disk: attached and not failed (Negotiating is the
    /// handshake after an attach while connected: the meta-data is loaded, writes are
    /// recorded locally as well so that no write falls between the two bitmaps). Not while
    /// detaching, so that the detach can drain what is in flight: a received write is
    /// neg-acked (the peer marks it out of sync); new application IO waits for the end of an
    /// administrative detach (`holds_application_io`) and is served by the peer during a
    /// failure's.
    pub(crate) fn local_disk_writable(&self) -> bool {
        self.disk.is_some()
            && !matches!(
                self.pending,
                Some((
                    _,
                    crate::engine::Pending::Attach(_) | crate::engine::Pending::Detach(_)
                ))
            )
            && (self.disk_state >= DiskState::Inconsistent
                || self.disk_state == DiskState::Negotiating)
    }

    /// Whether new application IO waits: during an administrative detach (or `down`), from
    /// its start until the disk is Diskless, as DRBD's `adm_detach` keeps IO suspended
    /// (`drbd_suspend_io` ... `drbd_resume_io`) around the whole detach, also when the disk
    /// fails or is force-detached meanwhile. A detach the engine started for a failure or a
    /// `detach --force` (command id 0) does not: while Failed, new IO is served by the peer.
    ///
    /// Serving it meanwhile from the peer alone, with the disk still UpToDate to everyone
    /// (the peer was not told), left acknowledged writes off the detaching disk that nobody
    /// knew to resync when the disk came back: the peer marked nothing and made no new data
    /// generation, so that disk, attached again, served the old data (swarm seed 16).
    pub(crate) fn holds_application_io(&self) -> bool {
        // `suspend-io` holds it as well, until `resume-io`.
        self.user_susp
            || matches!(
                self.pending,
                Some((id, crate::engine::Pending::Detach(_))) if id != CommandId(0)
            )
    }

    /// Looks at the requests held during an administrative detach once it is over.
    pub(crate) fn release_held_requests(&mut self) {
        while !self.holds_application_io()
            && let Some(request) = self.held_requests.pop_front()
        {
            self.on_block_request(request);
        }
    }

    /// Whether the peer can serve application IO: connected, receiving writes, UpToDate.
    pub(crate) fn peer_serves(&self) -> bool {
        self.replicating()
            && self
                .peer
                .as_ref()
                .is_some_and(|p| p.peer_disk == DiskState::UpToDate)
    }

    /// Serves request `id` through the peer alone (no usable local disk): reads are sent as
    /// P_DATA_REQUEST, writes replicate and complete with the peer's ack (their blocks are
    /// out of sync in a bitmap still in memory), a flush waits for the barrier acks. Without
    /// a peer that has the data, the request fails.
    pub(crate) fn serve_without_local_disk(&mut self, id: BlockRequestId) {
        if !self.peer_serves() {
            return self.fail_request(id);
        }
        let request = self.requests[&id].request.clone();
        match request {
            BlockRequest::Read { offset, len, .. } => {
                let parts = self.send_read(id, offset, len);
                let r = self.requests.get_mut(&id).expect("request");
                r.local_done = true;
                r.local_error = false;
                r.read_parts.clear();
                r.net_pending += parts;
            }
            BlockRequest::Flush { .. } => {
                let epoch = self.flush_epoch();
                let r = self.requests.get_mut(&id).expect("request");
                r.local_done = true;
                r.local_error = false;
                r.flush_epoch = epoch;
                self.try_complete(id);
            }
            _ if self.requests[&id].data_generation != self.data_generation => {
                // Arrived before this node took its peer's data (a write stuck on a frozen
                // disk while a split-brain Primary, whose node became the survivor's
                // SyncTarget; swarm seed 19958): the data it belongs to was given up. Sent
                // now, it would land on the survivor, which DRBD never does (it sends a write
                // when it arrives, or not at all).
                self.fail_request(id)
            }
            _ => {
                let parts = self.send_write(id, &request);
                let r = self.requests.get_mut(&id).expect("request");
                r.net_pending += parts;
                r.replicated = true;
                r.local_done = true;
                // Not on the local disk: only the peer's ack makes it a success.
                r.local_error = true;
                if let Some((offset, len)) = written_range(&request) {
                    self.mark_out_of_sync(offset, len);
                }
                self.try_complete(id);
            }
        }
    }

    /// The local operation of request `id` was abandoned (disk-timeout, `detach --force`):
    /// as if it had failed, without counting an IO error.
    pub(crate) fn local_part_abandoned(&mut self, id: BlockRequestId) {
        let Some(r) = self.requests.get_mut(&id) else {
            return;
        };
        r.op = None;
        r.flush_after = false;
        let request = r.request.clone();
        self.unlock_request(id);
        match request {
            BlockRequest::Read { .. } | BlockRequest::Flush { .. } => {
                if request_is_waiting_for_peer_only(&self.requests[&id]) {
                    // A flush whose peer part is under way.
                    let r = self.requests.get_mut(&id).expect("request");
                    r.local_done = true;
                    self.try_complete(id);
                } else {
                    self.serve_without_local_disk(id);
                }
            }
            _ => {
                if let Some((offset, len)) = written_range(&request) {
                    self.mark_out_of_sync(offset, len);
                }
                let r = self.requests.get_mut(&id).expect("request");
                r.local_done = true;
                r.local_error = true;
                if !r.replicated {
                    // Never sent: the peer gets it now (or it fails).
                    self.release_held_extents(id);
                    self.serve_without_local_disk(id);
                } else {
                    self.try_complete(id);
                }
            }
        }
    }

    /// The size of the replicated device in bytes.
    pub(crate) fn exported_size(&self) -> u64 {
        match self.disk.as_ref() {
            Some(d) => d.size_sect * 512,
            None => self.link().map_or(0, |l| l.agreed_size_sect * 512),
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
        let is_flush = matches!(kind, DiskOpKind::Flush);
        let op = self.submit(OpPurpose::Request(id), DiskArea::Data, offset, kind);
        self.requests.get_mut(&id).expect("request").op = Some(op);
        let request = self.requests[&id].request.clone();
        if is_write(&request) && self.replicating() {
            let parts = self.send_write(id, &request);
            let r = self.requests.get_mut(&id).expect("request");
            r.net_pending += parts;
            r.replicated = true;
        } else if is_flush {
            // The peer's part: the barrier acks of every closed epoch (the peer flushed).
            let epoch = self.flush_epoch();
            self.requests.get_mut(&id).expect("request").flush_epoch = epoch;
        }
    }

    /// Tries to start every write waiting for activity-log extents, in arrival order. A write
    /// overlapping one in flight (or an earlier waiting one) waits; while the data socket is
    /// congested nothing new starts.
    pub(crate) fn start_waiting_writes(&mut self) {
        if self.disk.is_none() || self.disk_state == DiskState::Failed {
            return;
        }
        let waiting: Vec<BlockRequestId> = self.al_waiting.iter().copied().collect();
        let mut blocked: Vec<(u64, u64)> = Vec::new();
        for id in waiting {
            if self.requests[&id].data_generation != self.data_generation {
                // It waited (its AL transaction on a frozen disk) while this node, demoted,
                // took its peer's data as SyncTarget (swarm seed 19958: a split-brain
                // Primary's write, started at last, went to the survivor with the resync's
                // data). The data it was written against is gone: it fails.
                self.al_waiting.retain(|w| *w != id);
                self.fail_request(id);
                continue;
            }
            if self.replicating() && self.send_congested() {
                return;
            }
            let (offset, len) = written_range(&self.requests[&id].request).expect("a write");
            let (start, end) = (offset, offset + len);
            let overlaps_blocked = blocked.iter().any(|&(s, e)| s < end && start < e);
            if overlaps_blocked
                || self.range_locked(start, end)
                || self.verify_holds(start, end)
                || !self.within_durable_size(end)
                || !self.hold_extents(id)
            {
                blocked.push((start, end));
                continue;
            }
            let (first, last) = self.requests[&id].extents.expect("a write");
            let d = self.disk.as_ref().expect("attached");
            // Mutation::WriteBeforeAlTransaction breaks this rule: the write goes to the disk
            // while its extents' AL transaction is not yet durable.
            let mutated = self.config.mutation == Some(Mutation::WriteBeforeAlTransaction);
            if mutated || (first..=last).all(|e| d.al.is_active(e)) {
                self.al_waiting.retain(|w| *w != id);
                let lock = self.lock_range(start, end);
                self.requests.get_mut(&id).expect("request").lock = Some(lock);
                self.submit_request(id);
            } else {
                blocked.push((start, end));
            }
        }
    }

    /// Whether a write ending at byte `end` may go to the local disk: not past the size the
    /// superblock on disk records while a grow's superblock is still being written (see
    /// `Disk::grow_pending`).
    pub(crate) fn within_durable_size(&self, end: u64) -> bool {
        let Some(d) = self.disk.as_ref() else {
            return true;
        };
        d.grow_pending.is_none_or(|(old, _)| end <= old * 512)
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
        if !d.al.activate_all(first, last) {
            return false;
        }
        self.requests.get_mut(&id).expect("request").holds_extents = true;
        true
    }

    /// Releases the activity-log references request `id` holds (if any).
    pub(crate) fn release_held_extents(&mut self, id: BlockRequestId) {
        self.release_extents(id);
    }

    fn release_extents(&mut self, id: BlockRequestId) {
        let r = self.requests.get_mut(&id).expect("request");
        if !std::mem::take(&mut r.holds_extents) {
            return;
        }
        let (first, last) = r.extents.expect("a write");
        if let Some(d) = self.disk.as_mut() {
            d.al.release_all(first, last);
        }
    }

    /// Drives the activity-log writer: prepare a transaction, write the evicted extents' bitmap
    /// pages, then the transaction block with FUA.
    pub(crate) fn drive_activity_log(&mut self) {
        if self.disk_state == DiskState::Failed || self.resize_holds_activity_log() {
            return;
        }
        let holds_new = self.resize_holds_new_al_transactions();
        let Some(d) = self.disk.as_mut() else { return };
        if matches!(d.al_writer, AlWriter::Idle) {
            if holds_new {
                return;
            }
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
        if matches!(d.al_writer, AlWriter::Preflushed { .. }) {
            let AlWriter::Preflushed { prepared } = std::mem::take(&mut d.al_writer) else {
                unreachable!()
            };
            return self.write_al_transaction(prepared);
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
        if !to_write.is_empty() && !self.md_preflushed(crate::engine::MdWriter::BitmapPages) {
            return;
        }
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
        if !prepared.evicted.is_empty() {
            // Writes that completed in an evicted extent may still be in the disk's cache:
            // once the transaction is durable, a crash replay no longer marks that extent.
            d.al_writer = AlWriter::Preflushing { prepared };
            self.submit(OpPurpose::AlPreflush, DiskArea::Data, 0, DiskOpKind::Flush);
            return;
        }
        self.write_al_transaction(prepared);
    }

    /// Writes a prepared activity-log transaction block (FUA).
    fn write_al_transaction(
        &mut self,
        prepared: Box<udrbd_meta::activity_log::PreparedTransaction>,
    ) {
        let d = self.disk.as_mut().expect("attached");
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
        r.op = None;
        if result.is_ok() && std::mem::take(&mut r.flush_after) {
            // Discard and write-zeroes with FUA: durable through a flush before completing.
            let op = self.submit(OpPurpose::Request(id), DiskArea::Data, 0, DiskOpKind::Flush);
            self.requests.get_mut(&id).expect("request").op = Some(op);
            return;
        }
        let r = self.requests.get_mut(&id).expect("completed request");
        r.local_done = true;
        let error = match result {
            Ok(Some(data)) => {
                r.read_parts.push((0, data));
                None
            }
            Ok(None) => None,
            Err(_) => Some(r.request.clone()),
        };
        // The local write is done: later overlapping writes and resync reads may go. (The
        // peer applies them in stream order; holding the lock until the peer's ack would
        // deadlock against a resync request the peer holds for the same blocks.)
        self.unlock_request(id);
        let Some(request) = error else {
            return self.try_complete(id);
        };
        // A local IO error: the blocks are out of sync here (the next resync heals them); a
        // read is retried from the peer, a write succeeded if the peer has it.
        let kind = match request {
            BlockRequest::Read { offset, len, .. } => {
                self.mark_out_of_sync(offset, u64::from(len));
                self.serve_without_local_disk(id);
                LocalIoError::Read
            }
            BlockRequest::Flush { .. } => {
                self.requests.get_mut(&id).expect("request").local_error = true;
                self.try_complete(id);
                LocalIoError::Write
            }
            _ => {
                if let Some((offset, len)) = written_range(&request) {
                    self.mark_out_of_sync(offset, len);
                }
                let r = self.requests.get_mut(&id).expect("request");
                r.local_error = true;
                if r.replicated {
                    self.try_complete(id);
                } else {
                    self.release_held_extents(id);
                    self.serve_without_local_disk(id);
                }
                LocalIoError::Write
            }
        };
        self.local_io_error(kind);
    }

    fn unlock_request(&mut self, id: BlockRequestId) {
        let lock = self.requests.get_mut(&id).and_then(|r| r.lock.take());
        self.unlock(lock);
    }

    /// Completes the request if its local and network parts are both done.
    pub(crate) fn try_complete(&mut self, id: BlockRequestId) {
        let Some(r) = self.requests.get(&id) else {
            return;
        };
        // Mutation::AckBeforePeerAck breaks this rule: a replicated write completes without
        // the peer's acknowledgement (P_WRITE_ACK under protocol C).
        let net_pending =
            if self.config.mutation == Some(Mutation::AckBeforePeerAck) && r.replicated {
                0
            } else {
                r.net_pending
            };
        if !r.local_done || net_pending > 0 || r.flush_epoch.is_some() || r.op.is_some() {
            return;
        }
        self.release_extents(id);
        self.unlock_request(id);
        let r = self.requests.remove(&id).expect("request");
        if let Some(epoch) = r.epoch
            && self.peer.as_ref().is_some_and(|p| p.next_epoch == epoch)
        {
            // A completed write closes its epoch: later writes may depend on it.
            self.close_epoch();
        }
        if r.replicated
            && r.local_error
            && let Some((offset, len)) = written_range(&r.request)
        {
            // Marked when the local part failed, and again now, as DRBD's drbd_req_destroy
            // sets out-of-sync unless both parts are OK: a resync's P_RS_WRITE_ACK for the
            // same blocks can come in between and clear the first mark (the peer wrote the
            // resync data, then this write); this node's disk lacks the write (swarm seed
            // 43079: a SyncSource's local write failed under pass_on).
            self.mark_out_of_sync(offset, len);
        }
        let ok = if r.replicated {
            // A write the peer has (or whose loss is recorded in the bitmap) succeeded.
            !r.local_error || !r.net_failed
        } else {
            !r.local_error && !r.net_failed
        };
        if !ok {
            return self.complete(id, Err(BlockError::Io));
        }
        self.account(&r.request);
        // Mutation::NoBitmapWhileDisconnected breaks this rule: the write is not recorded.
        if !r.replicated
            && self.config.has_peer
            && self.config.mutation != Some(Mutation::NoBitmapWhileDisconnected)
            && let Some((offset, len)) = written_range(&r.request)
        {
            // No peer received it: out of sync until a resync.
            self.mark_out_of_sync(offset, len);
        }
        let data = match r.request {
            BlockRequest::Read { offset, len, .. } => {
                Some(assemble_read(offset, len, r.read_parts))
            }
            _ => None,
        };
        self.complete(id, Ok(data));
    }

    /// Completes a request that can no longer be served (its disk failed).
    pub(crate) fn fail_request(&mut self, id: BlockRequestId) {
        self.release_extents(id);
        self.unlock_request(id);
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

/// A flush whose local part is not needed any more but whose barrier acks are awaited.
fn request_is_waiting_for_peer_only(r: &Request) -> bool {
    r.flush_epoch.is_some()
}

fn is_write(request: &BlockRequest) -> bool {
    matches!(
        request,
        BlockRequest::Write { .. }
            | BlockRequest::Discard { .. }
            | BlockRequest::WriteZeroes { .. }
    )
}

/// Joins the parts of a read (one local buffer at offset 0, or the peer's replies by sector).
fn assemble_read(offset: u64, len: u32, mut parts: Vec<(u64, Bytes)>) -> Bytes {
    if parts.len() == 1 {
        return parts.pop().expect("one").1;
    }
    parts.sort_by_key(|(o, _)| *o);
    let mut out = Vec::with_capacity(len as usize);
    for (o, data) in parts {
        debug_assert_eq!(o, offset + out.len() as u64);
        out.extend_from_slice(&data);
    }
    Bytes::from(out)
}

pub(crate) fn written_range(request: &BlockRequest) -> Option<(u64, u64)> {
    match request {
        BlockRequest::Write { offset, data, .. } => Some((*offset, data.len() as u64)),
        BlockRequest::Discard { offset, len, .. }
        | BlockRequest::WriteZeroes { offset, len, .. } => Some((*offset, *len)),
        _ => None,
    }
}
