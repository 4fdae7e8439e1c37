//! Replication and resync data flow (drbd-v08-facts.md §6.3, §6.5).
//!
//! Primary side: a write is sent as P_DATA (split at the peer's max-bio-size) when its local
//! write is submitted, so overlapping writes reach both disks in the same order. It completes
//! when the local write completed and, per protocol, the bytes went to the socket (A), the
//! peer received them (B, P_RECV_ACK) or wrote them (C, P_WRITE_ACK). Completing a write of
//! the current epoch closes the epoch with P_BARRIER; a flush waits for the barrier acks of
//! every closed epoch (the peer flushed before acking). When the link drops, everything sent
//! and not confirmed by a barrier ack is marked out of sync.
//!
//! Receiver side: received writes are written (never two overlapping ones at once), acked
//! per their flags, counted in epochs; an epoch is acked with P_BARRIER_ACK after its writes
//! completed and the disk was flushed.
//!
//! Resync: the SyncTarget requests runs of out-of-sync blocks at the controller's pace; the
//! source reads and replies; the target writes, acks (the source clears its bits), and
//! clears its own bits only after a flush made the data durable.
//!
//! Range locks: application writes, resync reads (source), received writes and resync
//! requests (target, from request to written reply) never overlap while in flight; a later
//! one waits. This keeps both replicas applying overlapping writes in the same order.

use bytes::Bytes;
use udrbd_wire::{
    Barrier, BarrierAck, BlockDesc, BlockId, BlockRequest as WireBlockRequest, DataHeader,
    DataPacket, Digest, DpFlags, FeatureFlags, Packet, Trim, WireProtocol,
};

use crate::engine::{LocalIoError, OpPurpose, Resource};
use crate::mutation::Mutation;
use crate::peer::{ClosedEpoch, MAX_RESYNC_REQUEST, SentRequest, Socket, ack_for};
use crate::state::{ConnState, DiskState};
use crate::timer::Timer;
use crate::types::*;

/// Largest P_TRIM we send.
const MAX_TRIM: u64 = 128 << 20;

/// A write received from the peer (application or resync data).
#[derive(Clone, Debug)]
pub(crate) struct PeerWrite {
    pub(crate) link_gen: u64,
    pub(crate) sector: u64,
    pub(crate) len: u64,
    pub(crate) block_id: u64,
    pub(crate) kind: PeerWriteKind,
    pub(crate) op: DiskOpKind,
    pub(crate) epoch: u64,
    pub(crate) lock: Option<u64>,
    /// A write of a Primary without a usable disk: the activity-log extents it must hold
    /// (this node has the only copy; see `receive_data`), inclusive.
    pub(crate) extents: Option<(u32, u32)>,
    /// Whether those extents' references are held.
    pub(crate) holds_extents: bool,
    /// Submitted to the disk: its payload counts in `Resource::peer_bytes_on_disk`.
    pub(crate) submitted: bool,
}

impl PeerWrite {
    /// The bytes of payload it holds (none for a discard or zeroing).
    pub(crate) fn payload_bytes(&self) -> u64 {
        match &self.op {
            DiskOpKind::Write { data, .. } => data.len() as u64,
            _ => 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PeerWriteKind {
    /// Application data: ack with P_WRITE_ACK if asked (P_RS_WRITE_ACK with MAY_SET_IN_SYNC).
    Data { write_ack: bool, rs_ack: bool },
    /// Resync data (target).
    Resync,
}

/// A read for the peer (P_DATA_REQUEST or P_RS_DATA_REQUEST).
#[derive(Clone, Debug)]
pub(crate) struct PeerRead {
    pub(crate) link_gen: u64,
    pub(crate) sector: u64,
    pub(crate) len: u32,
    pub(crate) block_id: u64,
    pub(crate) kind: PeerReadKind,
    pub(crate) lock: Option<u64>,
    /// Submitted to the disk: its length counts in `Resource::peer_bytes_on_disk`.
    pub(crate) submitted: bool,
}

/// What a read for the peer answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PeerReadKind {
    /// P_DATA_REQUEST: answered with P_DATA_REPLY.
    Application,
    /// P_RS_DATA_REQUEST: answered with P_RS_DATA_REPLY.
    Resync,
    /// P_OV_REQUEST (this node is VerifyT): answered with P_OV_REPLY, the block's digest.
    VerifyRequest,
    /// This node's own block for a P_OV_REPLY (this node is VerifyS): compared with the
    /// peer's digest it carried.
    VerifyCompare(Digest),
    /// SyncTarget with a csums-alg: this node's own block, whose digest goes to the source
    /// in a P_CSUM_RS_REQUEST. It carries the resync's request tag (see
    /// `Resync::request_tag`); the request's range lock is held in `rs_request_locks`
    /// since the request was issued, so that the block stays as read until the answer.
    CsumRequest(BlockId),
    /// SyncSource: this node's block for a P_CSUM_RS_REQUEST, compared with the target's
    /// digest: equal, the blocks are in sync (P_RS_IS_IN_SYNC); else the data goes as for
    /// a P_RS_DATA_REQUEST.
    CsumCompare(Digest),
}

/// Something waiting for a range lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LockWaiter {
    PeerWrite(u64),
    PeerRead(u64),
}

impl Resource {
    // ---- range locks ---------------------------------------------------------------------

    pub(crate) fn range_locked(&self, start: u64, end: u64) -> bool {
        self.locks.values().any(|&(s, e)| s < end && start < e)
    }

    pub(crate) fn lock_range(&mut self, start: u64, end: u64) -> u64 {
        let id = self.next_lock;
        self.next_lock += 1;
        self.locks.insert(id, (start, end));
        id
    }

    pub(crate) fn unlock(&mut self, lock: Option<u64>) {
        if let Some(l) = lock {
            self.locks.remove(&l);
        }
    }

    /// Starts the peer's writes and reads waiting for a lock, in order.
    pub(crate) fn start_lock_waiters(&mut self) {
        let waiting: Vec<LockWaiter> = self.lock_waiting.iter().copied().collect();
        let mut blocked: Vec<(u64, u64)> = Vec::new();
        for w in waiting {
            let range = match w {
                LockWaiter::PeerWrite(id) => {
                    let pw = &self.peer_writes[&id];
                    (pw.sector * 512, pw.sector * 512 + pw.len)
                }
                LockWaiter::PeerRead(id) => {
                    let pr = &self.peer_reads[&id];
                    (pr.sector * 512, pr.sector * 512 + u64::from(pr.len))
                }
            };
            let overlaps_blocked = blocked.iter().any(|&(s, e)| s < range.1 && range.0 < e);
            if let LockWaiter::PeerWrite(id) = w
                && self.local_disk_writable()
                && self.disk_state != DiskState::Failed
                && !overlaps_blocked
                && (!self.within_durable_size(range.1) || !self.peer_write_extents_active(id))
            {
                blocked.push(range);
                continue;
            }
            // Mutation::ResyncOverwritesNewerWrite breaks this rule: a received application
            // write does not wait for resync requests and resync writes of its blocks.
            let locked = if matches!(w, LockWaiter::PeerWrite(_))
                && self.config.mutation == Some(Mutation::ResyncOverwritesNewerWrite)
            {
                let resync: std::collections::BTreeSet<u64> = (self.rs_request_locks.values())
                    .copied()
                    .chain(self.peer_writes.values().filter_map(|p| {
                        (p.kind == PeerWriteKind::Resync)
                            .then_some(p.lock)
                            .flatten()
                    }))
                    .collect();
                self.locks
                    .iter()
                    .any(|(id, &(s, e))| !resync.contains(id) && s < range.1 && range.0 < e)
            } else {
                self.range_locked(range.0, range.1)
            };
            if overlaps_blocked || locked {
                blocked.push(range);
                continue;
            }
            self.lock_waiting.retain(|x| *x != w);
            let lock = self.lock_range(range.0, range.1);
            if !self.local_disk_writable() {
                // The disk failed (or is detaching) while this waited: answered as failed
                // (P_NEG_ACK / P_NEG_RS_DREPLY, the blocks out of sync), not an IO error.
                let eio = Err(DiskError { errno: 5 });
                let counting = std::mem::replace(&mut self.disk_errors.abandoning, true);
                match w {
                    LockWaiter::PeerWrite(id) => {
                        self.peer_writes.get_mut(&id).expect("waiting").lock = Some(lock);
                        self.on_peer_write_done(id, eio);
                    }
                    LockWaiter::PeerRead(id) => {
                        self.peer_reads.get_mut(&id).expect("waiting").lock = Some(lock);
                        self.on_peer_read_done(id, eio);
                    }
                }
                self.disk_errors.abandoning = counting;
                continue;
            }
            match w {
                LockWaiter::PeerWrite(id) => {
                    self.peer_writes.get_mut(&id).expect("waiting").lock = Some(lock);
                    self.submit_peer_write(id);
                }
                LockWaiter::PeerRead(id) => {
                    self.peer_reads.get_mut(&id).expect("waiting").lock = Some(lock);
                    self.submit_peer_read(id);
                }
            }
        }
    }

    /// Takes the activity-log references of a diskless Primary's write (all or none, as for
    /// a local write) and tells whether its extents are active (their transaction durable).
    fn peer_write_extents_active(&mut self, id: u64) -> bool {
        let pw = &self.peer_writes[&id];
        let Some((first, last)) = pw.extents else {
            return true;
        };
        let holds = pw.holds_extents;
        let Some(d) = self.disk.as_mut() else {
            return true;
        };
        if !holds {
            if !d.al.activate_all(first, last) {
                return false;
            }
            self.peer_writes
                .get_mut(&id)
                .expect("waiting")
                .holds_extents = true;
        }
        let d = self.disk.as_ref().expect("attached");
        // And the superblock saying MDF_PRIMARY_IND (set while the peer is a diskless
        // Primary) is durable: only then does a crash replay the activity log.
        (first..=last).all(|e| d.al.is_active(e)) && d.sb_durable == d.sb_version
    }

    /// Releases the activity-log references of a diskless Primary's write.
    pub(crate) fn release_peer_write_extents(&mut self, pw: &PeerWrite) {
        if !pw.holds_extents {
            return;
        }
        let (first, last) = pw.extents.expect("held extents");
        if let Some(d) = self.disk.as_mut() {
            d.al.release_all(first, last);
        }
    }

    /// Gives back the activity-log references an epoch held for its writes.
    pub(crate) fn release_epoch_extents(&mut self, held: &[(u32, u32)]) {
        if let Some(d) = self.disk.as_mut() {
            for &(first, last) in held {
                d.al.release_all(first, last);
            }
        }
    }

    // ---- primary side: sending -----------------------------------------------------------

    /// Whether a new write should be sent to the peer now.
    pub(crate) fn replicating(&self) -> bool {
        self.peer
            .as_ref()
            .is_some_and(|p| p.link.is_some() && p.replicating())
    }

    /// The data socket has more queued than sndbuf-size: new writes wait.
    pub(crate) fn send_congested(&self) -> bool {
        let Some(p) = self.peer.as_ref() else {
            return false;
        };
        let Some(l) = p.link.as_ref() else {
            return false;
        };
        let limit = if p.config.sndbuf_size == 0 {
            crate::peer::AUTO_SNDBUF
        } else {
            p.config.sndbuf_size
        };
        l.data_queued - l.data_sent > limit
    }

    /// Sends a write (or discard / write-zeroes) to the peer; returns the number of packets
    /// whose acknowledgement the request waits for.
    pub(crate) fn send_write(&mut self, id: BlockRequestId, request: &BlockRequest) -> u32 {
        let protocol = self.peer.as_ref().expect("peer").config.protocol;
        let (trim_agreed, max_bio) = {
            let l = self.link().expect("link");
            (
                l.features.contains(FeatureFlags::TRIM),
                u64::from(l.peer_max_bio) & !4095,
            )
        };
        let mut flags = DpFlags::RW_SYNC;
        flags = flags
            | match protocol {
                WireProtocol::A => DpFlags::default(),
                WireProtocol::B => DpFlags::SEND_RECEIVE_ACK,
                WireProtocol::C => DpFlags::SEND_WRITE_ACK,
            };
        let epoch = self.peer.as_ref().expect("peer").next_epoch;
        let mut parts = 0;
        match request {
            BlockRequest::Write {
                offset, data, fua, ..
            } => {
                if *fua {
                    flags = flags | DpFlags::FUA;
                }
                let mut done = 0u64;
                let total = data.len() as u64;
                while done < total {
                    let n = (total - done).min(max_bio.max(4096));
                    let chunk = data.slice(done as usize..(done + n) as usize);
                    self.send_data_packet(id, offset + done, chunk, flags, protocol);
                    parts += 1;
                    done += n;
                }
            }
            BlockRequest::Discard {
                offset, len, fua, ..
            }
            | BlockRequest::WriteZeroes {
                offset, len, fua, ..
            } => {
                if *fua {
                    flags = flags | DpFlags::FUA;
                }
                let step = if trim_agreed {
                    MAX_TRIM
                } else {
                    max_bio.max(4096)
                };
                let mut done = 0u64;
                while done < *len {
                    let n = (*len - done).min(step);
                    if trim_agreed {
                        self.send_trim_packet(
                            id,
                            offset + done,
                            n,
                            flags | DpFlags::DISCARD,
                            protocol,
                        );
                    } else {
                        let zeros = self.zeros(n as usize);
                        self.send_data_packet(id, offset + done, zeros, flags, protocol);
                    }
                    parts += 1;
                    done += n;
                }
            }
            _ => unreachable!("not a write"),
        }
        let (offset, len) = match request {
            BlockRequest::Write { offset, data, .. } => (*offset, data.len() as u64),
            BlockRequest::Discard { offset, len, .. }
            | BlockRequest::WriteZeroes { offset, len, .. } => (*offset, *len),
            _ => unreachable!(),
        };
        let max_epoch = self.peer.as_ref().expect("peer").config.max_epoch_size;
        // The epoch takes its own reference on the write's activity-log extents, held until
        // the barrier ack (see ClosedEpoch): the write's reference ends when it completes.
        let write_holds = self.requests.get(&id).filter(|r| r.holds_extents);
        let epoch_holds = match (write_holds.and_then(|r| r.extents), self.disk.as_mut()) {
            (Some((first, last)), Some(d)) => {
                assert!(
                    d.al.activate_all(first, last),
                    "extents a write holds are in the activity log"
                );
                Some((first, last))
            }
            _ => None,
        };
        let link = self.link_mut();
        link.epoch_writes += parts;
        link.epoch_ranges.push((offset, len));
        link.epoch_held_extents.extend(epoch_holds);
        if let Some(r) = self.requests.get_mut(&id) {
            r.epoch = Some(epoch);
        }
        if self.link().expect("link").epoch_writes >= max_epoch {
            self.close_epoch();
        }
        if protocol == WireProtocol::A {
            self.on_data_sent();
        }
        parts
    }

    fn zeros(&mut self, n: usize) -> Bytes {
        if self.zero_buffer.len() < n {
            self.zero_buffer = Bytes::from(vec![0u8; n.max(1 << 20)]);
        }
        self.zero_buffer.slice(..n)
    }

    fn new_block_id(&mut self) -> u64 {
        let link = self.link_mut();
        let id = link.next_block_id;
        link.next_block_id += 1;
        id
    }

    fn send_data_packet(
        &mut self,
        id: BlockRequestId,
        offset: u64,
        data: Bytes,
        flags: DpFlags,
        protocol: WireProtocol,
    ) {
        let len = data.len() as u64;
        self.peer.as_mut().expect("peer").sent_bytes += len;
        self.send_write_part(id, offset, len, flags, protocol, |header| {
            Packet::Data(DataPacket {
                header,
                digest: Digest::EMPTY,
                data,
            })
        });
    }

    fn send_trim_packet(
        &mut self,
        id: BlockRequestId,
        offset: u64,
        len: u64,
        flags: DpFlags,
        protocol: WireProtocol,
    ) {
        self.send_write_part(id, offset, len, flags, protocol, |header| {
            Packet::Trim(Trim {
                header,
                size: len as u32,
            })
        });
    }

    /// Sends one part of a write (the packet built around its p_data header) and tracks it
    /// until the protocol's acknowledgement.
    fn send_write_part(
        &mut self,
        id: BlockRequestId,
        offset: u64,
        len: u64,
        flags: DpFlags,
        protocol: WireProtocol,
        packet: impl FnOnce(DataHeader) -> Packet,
    ) {
        let block_id = self.new_block_id();
        let seq_num = self.next_seq();
        self.send(
            Socket::Data,
            &packet(DataHeader {
                sector: offset / 512,
                block_id: BlockId(block_id),
                seq_num,
                dp_flags: flags,
            }),
        );
        let queued_end = self.link().expect("link").data_queued;
        self.track_sent(
            block_id,
            SentRequest::Write {
                request: id,
                offset,
                len,
                queued_end,
                ack: protocol,
            },
        );
    }

    /// Records a request sent to the peer (answered by block id; ko-count watches its age).
    fn track_sent(&mut self, block_id: u64, sent: SentRequest) {
        let now = self.now;
        let link = self.link_mut();
        link.sent_log.push_back((block_id, now));
        link.sent.insert(block_id, sent);
    }

    /// Sends a read to the peer (the local disk is not UpToDate); returns the parts.
    pub(crate) fn send_read(&mut self, id: BlockRequestId, offset: u64, len: u32) -> u32 {
        let max_bio = u64::from(self.link().expect("link").peer_max_bio) & !4095;
        let mut done = 0u64;
        let mut parts = 0;
        while done < u64::from(len) {
            let n = (u64::from(len) - done).min(max_bio.max(4096));
            let block_id = self.new_block_id();
            self.send(
                Socket::Data,
                &Packet::DataRequest(WireBlockRequest {
                    sector: (offset + done) / 512,
                    block_id: BlockId(block_id),
                    blksize: n as u32,
                    pad: 0,
                }),
            );
            self.track_sent(
                block_id,
                SentRequest::Read {
                    request: id,
                    offset: offset + done,
                    len: n,
                },
            );
            parts += 1;
            done += n;
        }
        parts
    }

    /// Closes the current epoch (if it holds writes) with P_BARRIER.
    pub(crate) fn close_epoch(&mut self) {
        let Some(p) = self.peer.as_mut() else { return };
        let Some(link) = p.link.as_mut() else { return };
        if link.epoch_writes == 0 {
            return;
        }
        let nr = p.next_epoch;
        p.next_epoch += 1;
        let epoch = ClosedEpoch {
            number: nr,
            writes: std::mem::take(&mut link.epoch_writes),
            ranges: std::mem::take(&mut link.epoch_ranges),
            held_extents: std::mem::take(&mut link.epoch_held_extents),
        };
        link.unacked_epochs.push_back(epoch);
        self.send(
            Socket::Data,
            &Packet::Barrier(Barrier {
                barrier: nr as u32,
                pad: 0,
            }),
        );
    }

    /// A flush: closes the current epoch and returns the epoch whose barrier ack completes
    /// the flush's network part (None: nothing unacknowledged).
    pub(crate) fn flush_epoch(&mut self) -> Option<u64> {
        if !self.replicating() {
            return None;
        }
        self.close_epoch();
        if self.config.mutation == Some(Mutation::FlushWithoutBarrierAck) {
            // Mutation: the flush does not wait for the peer's P_BARRIER_ACK (its flush).
            return None;
        }
        self.link()?.unacked_epochs.back().map(|e| e.number)
    }

    pub(crate) fn flush_satisfied(&self, epoch: u64) -> bool {
        self.link()
            .and_then(|l| l.unacked_epochs.front())
            .is_none_or(|front| front.number > epoch)
    }

    /// Protocol A: writes whose bytes the socket took are done.
    pub(crate) fn on_data_sent(&mut self) {
        let Some(link) = self.link() else { return };
        let sent = link.data_sent;
        let done: Vec<(u64, BlockRequestId)> = link
            .sent
            .iter()
            .filter_map(|(b, s)| match s {
                SentRequest::Write {
                    request,
                    queued_end,
                    ack: WireProtocol::A,
                    ..
                } if *queued_end <= sent => Some((*b, *request)),
                _ => None,
            })
            .collect();
        for (block_id, request) in done {
            self.link_mut().sent.remove(&block_id);
            self.net_part_done(request);
        }
    }

    /// What block id `block_id` of ours stands for on the current link, if anything.
    fn sent_request(&self, block_id: u64) -> Option<SentRequest> {
        self.link().and_then(|l| l.sent.get(&block_id)).copied()
    }

    /// One network part of a request is done.
    pub(crate) fn net_part_done(&mut self, id: BlockRequestId) {
        if let Some(r) = self.requests.get_mut(&id) {
            assert!(r.net_pending > 0, "net part done twice");
            r.net_pending -= 1;
            self.try_complete(id);
        }
    }

    /// A write's network part failed (P_NEG_ACK, or the link went away before the ack): it
    /// succeeded only if the local disk has it.
    pub(crate) fn net_write_failed(&mut self, id: BlockRequestId) {
        if let Some(r) = self.requests.get_mut(&id) {
            r.net_failed = true;
        }
        self.net_part_done(id);
    }

    pub(crate) fn peer_read_failed(&mut self, id: BlockRequestId) {
        if let Some(r) = self.requests.get_mut(&id) {
            r.net_failed = true;
            r.net_pending -= 1;
            self.try_complete(id);
        }
    }

    /// Flush requests whose epochs were acknowledged (or whose link is gone) complete.
    pub(crate) fn flushes_may_complete(&mut self) {
        let waiting: Vec<BlockRequestId> = self
            .requests
            .iter()
            .filter(|(_, r)| r.flush_epoch.is_some())
            .map(|(id, _)| *id)
            .collect();
        for id in waiting {
            let epoch = self.requests[&id].flush_epoch.expect("filtered");
            if self.link().is_none() || self.flush_satisfied(epoch) {
                self.requests.get_mut(&id).expect("request").flush_epoch = None;
                self.try_complete(id);
            }
        }
    }

    // ---- receiving -----------------------------------------------------------------------

    pub(crate) fn on_replication_packet(
        &mut self,
        _socket: Socket,
        packet: Packet,
    ) -> Result<(), String> {
        match packet {
            Packet::Data(p) => self.receive_data(
                p.header,
                p.data.len() as u64,
                DiskOpKind::Write {
                    data: p.data,
                    fua: false,
                },
            ),
            Packet::Trim(t) | Packet::Zeroes(t) => {
                let len = u64::from(t.size);
                self.receive_data(t.header, len, DiskOpKind::WriteZeroes { len })
            }
            Packet::Barrier(b) => {
                let link = self.link_mut();
                let back = link.recv_epochs.back_mut().expect("an open epoch");
                back.barrier = Some(b.barrier);
                link.recv_epochs.push_back(Default::default());
                self.finish_recv_epochs();
                Ok(())
            }
            Packet::DataRequest(r) => self.receive_read_request(r, PeerReadKind::Application),
            Packet::RsDataRequest(r) => self.receive_read_request(r, PeerReadKind::Resync),
            Packet::OvRequest(r) => self.receive_read_request(r, PeerReadKind::VerifyRequest),
            Packet::CsumRsRequest(r) => {
                if self
                    .peer
                    .as_ref()
                    .is_none_or(|p| p.config.csums_alg.is_none())
                {
                    return Err("P_CSUM_RS_REQUEST without a csums-alg".to_string());
                }
                self.receive_read_request(r.request, PeerReadKind::CsumCompare(r.digest))
            }
            Packet::OvReply(r) => self.receive_ov_reply(r),
            Packet::OvResult(a) => {
                peer_range(a.sector, u64::from(a.blksize))?;
                self.receive_ov_result(a.sector, a.blksize, a.block_id);
                Ok(())
            }
            Packet::RsDataReply(p) => self.receive_resync_reply(p),
            // A block id answers only the kind of request it stands for; a reply that does
            // not match leaves the entry in place, so that the connection's teardown still
            // finds the request the part belongs to (a hostile peer's P_DATA_REPLY naming a
            // write's block id otherwise orphaned that write for ever).
            Packet::DataReply(p) => {
                let block_id = p.header.block_id.0;
                match self.sent_request(block_id) {
                    Some(SentRequest::Read {
                        request,
                        offset,
                        len,
                    }) if p.header.sector.checked_mul(512) == Some(offset)
                        && p.data.len() as u64 == len =>
                    {
                        self.link_mut().sent.remove(&block_id);
                        if let Some(r) = self.requests.get_mut(&request) {
                            r.read_parts.push((offset, p.data));
                        }
                        self.net_part_done(request);
                        Ok(())
                    }
                    Some(SentRequest::Read { offset, len, .. }) => Err(format!(
                        "P_DATA_REPLY for block id {block_id:#x} carries sector {} and {} bytes, the request was sector {} and {len} bytes",
                        p.header.sector,
                        p.data.len(),
                        offset / 512
                    )),
                    _ => Err(format!("P_DATA_REPLY for unknown block id {block_id:#x}")),
                }
            }
            Packet::NegDReply(a) => match self.sent_request(a.block_id.0) {
                Some(SentRequest::Read { request, .. }) => {
                    self.link_mut().sent.remove(&a.block_id.0);
                    self.peer_read_failed(request);
                    Ok(())
                }
                _ => Err("P_NEG_DREPLY for an unknown block id".to_string()),
            },
            Packet::RecvAck(a) | Packet::WriteAck(a) | Packet::RsWriteAck(a)
                if a.block_id != BlockId::SYNCER =>
            {
                match self.sent_request(a.block_id.0) {
                    Some(SentRequest::Write { request, .. }) => {
                        let link = self.link_mut();
                        link.sent_with_bitmap.remove(&a.block_id.0);
                        link.sent.remove(&a.block_id.0);
                        self.net_part_done(request);
                        Ok(())
                    }
                    // Protocol A parts are done when sent; a late ack is fine.
                    None => {
                        self.link_mut().sent_with_bitmap.remove(&a.block_id.0);
                        Ok(())
                    }
                    Some(SentRequest::Read { .. }) => Err("write ack for a read".to_string()),
                }
            }
            Packet::RsWriteAck(a) => {
                // Source: the target wrote the resync data this node read: in sync, unless
                // the block was marked out of sync since the read. Under protocol A an
                // application write that failed locally after the read completed before
                // this ack came, and its mark was cleared: the target held the newer data,
                // this disk the old, and no bit said so (swarm seed 61222).
                let (start, len) = peer_range(a.sector, u64::from(a.blksize))?;
                let link = self.link_mut();
                if let Some(i) = link.rs_replies.iter().position(|&r| r == (start, len)) {
                    link.rs_replies.swap_remove(i);
                    self.clear_in_sync(start, len);
                }
                self.source_maybe_finished();
                Ok(())
            }
            Packet::NegAck(a) => match self.sent_request(a.block_id.0) {
                Some(SentRequest::Write {
                    request,
                    offset,
                    len,
                    ..
                }) => {
                    let link = self.link_mut();
                    let in_bitmap = link.sent_with_bitmap.remove(&a.block_id.0);
                    link.sent.remove(&a.block_id.0);
                    // See `Link::sent_with_bitmap`.
                    if !in_bitmap {
                        self.mark_out_of_sync(offset, len);
                    }
                    self.net_write_failed(request);
                    Ok(())
                }
                Some(SentRequest::Read { .. }) => Err("P_NEG_ACK for a read".to_string()),
                None => {
                    // A resync write, or a protocol A write done when sent: the block is not
                    // on the peer.
                    let (start, len) = peer_range(a.sector, u64::from(a.blksize))?;
                    self.link_mut().sent_with_bitmap.remove(&a.block_id.0);
                    self.mark_out_of_sync(start, len);
                    Ok(())
                }
            },
            Packet::RsIsInSync(a) => self.receive_rs_is_in_sync(a),
            Packet::NegRsDReply(a)
                if a.block_id == BlockId::SYNCER
                    && self.verify_request_failed(a.sector, a.blksize) =>
            {
                Ok(())
            }
            Packet::NegRsDReply(a) | Packet::RsCancel(a) => {
                if !self.csum_request_answered(a.sector, a.block_id) {
                    // A request of an aborted resync (see `Resync::request_tag`).
                    return Ok(());
                }
                // The request is answered: it leaves the controller's in-flight count as a
                // data reply does. Without this every failed request stayed "in flight"
                // for ever and, once max-buffers/2 of them had failed, the resync never
                // asked again (a stall found by the swarm). The bit stays set: a later pass
                // of the resync retries it.
                self.resync_request_unanswered(a.sector, a.blksize);
                self.log(
                    LogLevel::Warn,
                    format!("resync read failed on the peer at sector {}", a.sector),
                );
                Ok(())
            }
            Packet::BarrierAck(BarrierAck { barrier, set_size }) => {
                let link = self.link_mut();
                let Some(front) = link.unacked_epochs.front() else {
                    return Err(format!("P_BARRIER_ACK {barrier} without an open epoch"));
                };
                if front.number as u32 != barrier {
                    return Err(format!(
                        "P_BARRIER_ACK {barrier}, expected {}",
                        front.number as u32
                    ));
                }
                if front.writes != set_size {
                    return Err(format!(
                        "BAD! BarrierAck #{barrier} received with n_writes={set_size}, expected n_writes={}",
                        front.writes
                    ));
                }
                let acked = link.unacked_epochs.pop_front().expect("checked");
                // The peer has them on stable storage: the activity log may let them go.
                self.release_epoch_extents(&acked.held_extents);
                self.flushes_may_complete();
                Ok(())
            }
            Packet::OutOfSync(BlockDesc {
                sector, blksize, ..
            }) => {
                let (start, len) = peer_range(sector, u64::from(blksize))?;
                self.mark_out_of_sync(start, len);
                Ok(())
            }
            other => Err(format!(
                "unsupported packet {:?} ({:#06x})",
                other.command(),
                other.command_number()
            )),
        }
    }

    fn receive_data(&mut self, header: DataHeader, len: u64, op: DiskOpKind) -> Result<(), String> {
        let sector = header.sector;
        let block_id = header.block_id.0;
        let flags = header.dp_flags;
        let size = self.disk.as_ref().map_or(0, |d| d.size_sect * 512);
        let (start, _) = peer_range(sector, len)?;
        if start + len > size && self.disk.is_some() {
            return Err(format!(
                "write beyond the end of the device (sector {sector})"
            ));
        }
        let op = match op {
            DiskOpKind::Write { data, .. } => DiskOpKind::Write {
                data,
                fua: flags.contains(DpFlags::FUA),
            },
            other => other,
        };
        let rs_ack = flags.contains(DpFlags::MAY_SET_IN_SYNC);
        let write_ack = flags.contains(DpFlags::SEND_WRITE_ACK) || rs_ack;
        if flags.contains(DpFlags::SEND_RECEIVE_ACK) {
            let seq = self.next_seq();
            self.send(
                Socket::Meta,
                &Packet::RecvAck(ack_for(sector, block_id, len as u32, seq)),
            );
        }
        let writable = self.local_disk_writable();
        let mut extents = None;
        if writable
            && self
                .peer
                .as_ref()
                .is_some_and(|p| p.peer_disk < DiskState::Inconsistent)
        {
            // The peer (a Primary without a usable disk) has no copy: this node has the only
            // one, and the peer's disk will need these blocks. As DRBD's receive_Data ("we
            // have the only disk of the cluster"): marked out of sync, and written under this
            // node's activity log, so that a crash of this node replays the extents into its
            // bitmap (MDF_PRIMARY_IND is set meanwhile). Without it a crash lost the bits,
            // which were in memory only (swarm seed 269).
            self.mark_out_of_sync(sector * 512, len);
            if len > 0 {
                extents = Some((
                    udrbd_meta::activity_log::extent_of_sector(sector),
                    udrbd_meta::activity_log::extent_of_sector(sector + (len - 1) / 512),
                ));
            }
        }
        let epoch = {
            let link = self.link_mut();
            link.recv_epochs.back_mut().expect("open epoch").writes += 1;
            link.recv_epoch_base + link.recv_epochs.len() as u64 - 1
        };
        if !writable {
            let seq = self.next_seq();
            self.send(
                Socket::Meta,
                &Packet::NegAck(ack_for(sector, block_id, len as u32, seq)),
            );
            self.recv_epoch_write_done(epoch);
            return Ok(());
        }
        let id = self.next_peer_op;
        self.next_peer_op += 1;
        let link_gen = self.link_gen;
        self.insert_peer_write(
            id,
            PeerWrite {
                link_gen,
                sector,
                len,
                block_id,
                kind: PeerWriteKind::Data { write_ack, rs_ack },
                op,
                epoch,
                lock: None,
                extents,
                holds_extents: false,
                submitted: false,
            },
        );
        self.lock_waiting.push_back(LockWaiter::PeerWrite(id));
        self.start_lock_waiters();
        Ok(())
    }

    /// Takes in a received write (or resync reply): its payload counts in
    /// `Resource::peer_bytes_held` until it completes.
    fn insert_peer_write(&mut self, id: u64, pw: PeerWrite) {
        self.peer_bytes_held += pw.payload_bytes();
        self.peer_writes.insert(id, pw);
    }

    /// Takes in a read request of the peer: its length counts in
    /// `Resource::peer_bytes_held` until it is answered.
    fn insert_peer_read(&mut self, id: u64, pr: PeerRead) {
        self.peer_bytes_held += u64::from(pr.len);
        self.peer_reads.insert(id, pr);
    }

    pub(crate) fn submit_peer_write(&mut self, id: u64) {
        let pw = self.peer_writes.get_mut(&id).expect("peer write");
        pw.submitted = true;
        self.peer_bytes_on_disk += pw.payload_bytes();
        let pw = &self.peer_writes[&id];
        let (offset, kind) = (pw.sector * 512, pw.op.clone());
        self.submit(OpPurpose::PeerWrite(id), DiskArea::Data, offset, kind);
    }

    pub(crate) fn on_peer_write_done(&mut self, id: u64, result: Result<Option<Bytes>, DiskError>) {
        let pw = self.peer_writes.remove(&id).expect("peer write");
        self.peer_bytes_held -= pw.payload_bytes();
        if pw.submitted {
            self.peer_bytes_on_disk -= pw.payload_bytes();
        }
        self.unlock(pw.lock);
        self.release_peer_write_extents(&pw);
        let current = pw.link_gen == self.link_gen && self.link().is_some();
        if result.is_err() {
            if current {
                let seq = self.next_seq();
                let ack = ack_for(pw.sector, pw.block_id, pw.len as u32, seq);
                self.send(Socket::Meta, &Packet::NegAck(ack));
                if pw.kind == PeerWriteKind::Resync {
                    // The request is answered (DRBD's drbd_rs_failed_io: its bits stay set,
                    // the resync goes on). Left in `rs_requests`, every failed resync write
                    // kept a request slot for ever, and once all slots were held the resync
                    // stalled (swarm seed 4584: a SyncTarget whose disk failed its writes,
                    // under on-io-error pass_on).
                    let link = self.link_mut();
                    link.rs_requests.remove(&pw.sector);
                    link.rs_sect_in += pw.len / 512;
                } else {
                    self.recv_epoch_write_done(pw.epoch);
                }
            }
            self.mark_out_of_sync(pw.sector * 512, pw.len);
            self.local_io_error(LocalIoError::Write);
            return;
        }
        match pw.kind {
            PeerWriteKind::Data { write_ack, rs_ack } => {
                self.statistics.written_kib += pw.len / 1024;
                if current {
                    if write_ack {
                        let seq = self.next_seq();
                        let ack = ack_for(pw.sector, pw.block_id, pw.len as u32, seq);
                        let packet = if rs_ack {
                            Packet::RsWriteAck(ack)
                        } else {
                            Packet::WriteAck(ack)
                        };
                        self.send(Socket::Meta, &packet);
                    }
                    self.recv_epoch_write_done(pw.epoch);
                }
            }
            PeerWriteKind::Resync => {
                self.statistics.written_kib += pw.len / 1024;
                if current {
                    // In sync once durable: the flush that follows clears the bits. Not the
                    // data of an earlier link: it was read before that link's end, and the
                    // bits now are the next handshake's, which may say the source has
                    // written the block since (swarm seed 78860: a write slow on this disk
                    // completed in the next resync and cleared the bit of a block the
                    // source had written after that read; DRBD's disconnect waits for its
                    // resync writes before a new handshake).
                    self.rs_unflushed.push((pw.sector * 512, pw.len));
                    let seq = self.next_seq();
                    self.send(
                        Socket::Meta,
                        &Packet::RsWriteAck(ack_for(
                            pw.sector,
                            BlockId::SYNCER.0,
                            pw.len as u32,
                            seq,
                        )),
                    );
                    let link = self.link_mut();
                    link.rs_requests.remove(&pw.sector);
                    link.rs_sect_in += pw.len / 512;
                }
            }
        }
    }

    fn recv_epoch_write_done(&mut self, epoch: u64) {
        let Some(link) = self.peer.as_mut().and_then(|p| p.link.as_mut()) else {
            return;
        };
        if epoch < link.recv_epoch_base {
            return;
        }
        let index = (epoch - link.recv_epoch_base) as usize;
        if let Some(e) = link.recv_epochs.get_mut(index) {
            e.done += 1;
        }
        self.finish_recv_epochs();
    }

    /// Acks every finished epoch at the front: flushed first, when it held writes.
    pub(crate) fn finish_recv_epochs(&mut self) {
        let link_gen = self.link_gen;
        let diskless = self.disk.is_none();
        loop {
            let Some(link) = self.peer.as_mut().and_then(|p| p.link.as_mut()) else {
                return;
            };
            let Some(front) = link.recv_epochs.front() else {
                return;
            };
            let Some(barrier) = front.barrier else { return };
            if front.done < front.writes {
                return;
            }
            let writes = front.writes;
            if front.flush_done || writes == 0 || diskless {
                link.recv_epochs.pop_front();
                link.recv_epoch_base += 1;
                self.send(
                    Socket::Meta,
                    &Packet::BarrierAck(BarrierAck {
                        barrier,
                        set_size: writes,
                    }),
                );
                continue;
            }
            if link.recv_flush_in_flight {
                return;
            }
            // One flush makes every complete epoch durable: cover all consecutive ones.
            let complete = link
                .recv_epochs
                .iter()
                .take_while(|e| e.barrier.is_some() && e.done == e.writes)
                .count() as u64;
            let through = link.recv_epoch_base + complete - 1;
            link.recv_flush_in_flight = true;
            self.submit(
                OpPurpose::EpochFlush { link_gen, through },
                DiskArea::Data,
                0,
                DiskOpKind::Flush,
            );
            return;
        }
    }

    pub(crate) fn on_epoch_flushed(
        &mut self,
        link_gen: u64,
        through: u64,
        result: Result<Option<Bytes>, DiskError>,
    ) {
        if result.is_err() {
            self.local_io_error(LocalIoError::Write);
        }
        if link_gen != self.link_gen || self.link().is_none() {
            return;
        }
        let failing = self.disk_state == DiskState::Failed;
        let link = self.link_mut();
        link.recv_flush_in_flight = false;
        if result.is_err() && failing {
            // The flush failed, or was abandoned by a forced detach, and the disk is going:
            // these epochs are not known durable here, so they are not acked as if they
            // were. The detach decides (`recv_epochs_after_disk_loss`). A failed flush on a
            // disk that stays (on-io-error pass_on) still counts as done, as in DRBD, which
            // then falls back to draining.
            return;
        }
        let base = link.recv_epoch_base;
        for (i, e) in link.recv_epochs.iter_mut().enumerate() {
            if base + i as u64 <= through {
                e.flush_done = true;
            }
        }
        self.finish_recv_epochs();
    }

    /// The disk is gone (the last step of a detach). Peer writes that completed on it are
    /// durable only if a successful flush covered them (`covered`); the barrier ack of their
    /// epoch tells the Primary they are, and it forgets them.
    /// - Covered: their epochs count as flushed, and are acked.
    /// - Not covered (a forced detach of a frozen disk, whose last flush is still stuck; a
    ///   flush that failed): acking would be a lie. A crash of this node would lose the
    ///   writes still in the disk's volatile cache, with nothing marked anywhere: the
    ///   Primary had forgotten them, and this node's bitmap went with its disk. So the
    ///   connection is dropped instead. The Primary marks every write it has no barrier ack
    ///   for as out of sync (as after any connection loss), and resyncs them once this node
    ///   has a disk again.
    ///
    /// DRBD 8.4 acks barriers without a flush once the disk is gone and relies on the
    /// detach's meta-data flush; that flush cannot complete on a frozen disk (swarm seeds
    /// 4656 and 6410: a frozen Secondary force-detached by disk-timeout, then crashed).
    pub(crate) fn recv_epochs_after_disk_loss(&mut self, covered: bool) {
        let Some(link) = self.peer.as_mut().and_then(|p| p.link.as_mut()) else {
            return;
        };
        if covered {
            // Closed epochs only: the open one takes more writes, and a disk attached again
            // on this link gets them; its barrier ack waits for a flush of that disk (swarm
            // seed 46261: the open epoch was marked flushed at a detach, the node attached
            // and became SyncTarget, and the writes it then took were acked as durable
            // without a flush; a crash lost them, with nothing marked anywhere). While the
            // node stays diskless, finish_recv_epochs acks it without a flush.
            for epoch in link.recv_epochs.iter_mut().filter(|e| e.barrier.is_some()) {
                epoch.flush_done = true;
            }
            self.finish_recv_epochs();
            return;
        }
        if link.recv_epochs.iter().any(|e| e.done > 0 && !e.flush_done) {
            self.drop_connection(
                ConnState::NetworkFailure,
                Some(
                    "the disk went away before the peer's writes on it were flushed: \
                     reconnecting, so that the peer resyncs them"
                        .to_string(),
                ),
            );
        }
    }

    fn receive_read_request(
        &mut self,
        r: WireBlockRequest,
        kind: PeerReadKind,
    ) -> Result<(), String> {
        let len = r.blksize;
        if len == 0 || len > crate::peer::MAX_BIO_SIZE || !len.is_multiple_of(512) {
            return Err(format!("read request of {len} bytes"));
        }
        let readable = self.disk.is_some() && self.disk_state == DiskState::UpToDate;
        let size = self.disk.as_ref().map_or(0, |d| d.size_sect * 512);
        let (start, _) = peer_range(r.sector, u64::from(len))?;
        if start + u64::from(len) > size && readable {
            return Err(format!("read request beyond the end (sector {})", r.sector));
        }
        let verify_alg = self.peer.as_ref().and_then(|p| p.config.verify_alg);
        if !readable || (kind == PeerReadKind::VerifyRequest && verify_alg.is_none()) {
            let seq = self.next_seq();
            let ack = ack_for(r.sector, r.block_id.0, len, seq);
            let packet = if kind == PeerReadKind::Application {
                Packet::NegDReply(ack)
            } else {
                Packet::NegRsDReply(ack)
            };
            self.send(Socket::Meta, &packet);
            return Ok(());
        }
        if kind == PeerReadKind::VerifyRequest {
            self.verify_request_received(r.sector);
        }
        // The answers to a P_CSUM_RS_REQUEST carry ID_SYNCER, not its block id: a DRBD
        // source does not echo it either (see `csum_request_answered`), so the peer matches
        // them by sector whoever the source is.
        let block_id = match kind {
            PeerReadKind::CsumCompare(_) => BlockId::SYNCER,
            _ => r.block_id,
        };
        self.queue_peer_read(r.sector, len, block_id.0, kind);
        Ok(())
    }

    /// A read for the peer (or for a verify's comparison) waits behind the peer's writes
    /// received before it. Application reads too: with protocol A/B a diskless Primary's
    /// write completed before this node wrote it, and a read of its blocks that overtook it
    /// returned the old data (swarm seed 3767).
    pub(crate) fn queue_peer_read(
        &mut self,
        sector: u64,
        len: u32,
        block_id: u64,
        kind: PeerReadKind,
    ) {
        let id = self.new_peer_read(sector, len, block_id, kind);
        self.lock_waiting.push_back(LockWaiter::PeerRead(id));
        self.start_lock_waiters();
    }

    /// A read of this node's disk for the peer (or for its resync), of this link, not yet
    /// locked nor submitted: its id.
    fn new_peer_read(&mut self, sector: u64, len: u32, block_id: u64, kind: PeerReadKind) -> u64 {
        let id = self.next_peer_op;
        self.next_peer_op += 1;
        let link_gen = self.link_gen;
        self.insert_peer_read(
            id,
            PeerRead {
                link_gen,
                sector,
                len,
                block_id,
                kind,
                lock: None,
                submitted: false,
            },
        );
        id
    }

    pub(crate) fn submit_peer_read(&mut self, id: u64) {
        let pr = self.peer_reads.get_mut(&id).expect("peer read");
        pr.submitted = true;
        self.peer_bytes_on_disk += u64::from(pr.len);
        let pr = &self.peer_reads[&id];
        let (offset, len) = (pr.sector * 512, pr.len);
        self.submit(
            OpPurpose::PeerRead(id),
            DiskArea::Data,
            offset,
            DiskOpKind::Read { len },
        );
    }

    pub(crate) fn on_peer_read_done(&mut self, id: u64, result: Result<Option<Bytes>, DiskError>) {
        let pr = self.peer_reads.remove(&id).expect("peer read");
        self.peer_bytes_held -= u64::from(pr.len);
        if pr.submitted {
            self.peer_bytes_on_disk -= u64::from(pr.len);
        }
        self.unlock(pr.lock);
        let current = pr.link_gen == self.link_gen && self.link().is_some();
        let offset = pr.sector * 512;
        if result.is_ok() {
            self.statistics.read_kib += u64::from(pr.len) / 1024;
        }
        match (result, pr.kind) {
            (Ok(data), PeerReadKind::VerifyCompare(digest)) => {
                if current {
                    let data = data.unwrap_or_default();
                    self.compare_verified_block(pr.sector, pr.len, digest, Some(&data));
                }
            }
            (Ok(data), PeerReadKind::VerifyRequest) => {
                if current {
                    let data = data.unwrap_or_default();
                    self.answer_ov_request(pr.sector, pr.len, Some(&data));
                }
            }
            (Ok(data), PeerReadKind::CsumRequest(tag)) => {
                if current {
                    self.send_csum_request(pr.sector, pr.len, tag, &data.unwrap_or_default());
                }
            }
            (Ok(data), PeerReadKind::CsumCompare(digest))
                if current && self.csum_equal(digest, data.as_deref().unwrap_or_default()) =>
            {
                // DRBD's w_e_end_csum_rs_req: in sync here at once. The range lock kept
                // local writes off the block from before the read until now.
                self.clear_in_sync(offset, u64::from(pr.len));
                if let Some(r) = self.link_mut().resync.as_mut() {
                    r.same_csum_bits += u64::from(pr.len) / udrbd_meta::BM_BLOCK_SIZE;
                }
                let seq = self.next_seq();
                let ack = ack_for(pr.sector, pr.block_id, pr.len, seq);
                self.send(Socket::Meta, &Packet::RsIsInSync(ack));
                self.source_maybe_finished();
            }
            (Ok(data), kind) => {
                if current {
                    let data = data.unwrap_or_default();
                    self.peer.as_mut().expect("peer").sent_bytes += data.len() as u64;
                    let header = DataHeader {
                        sector: pr.sector,
                        block_id: BlockId(pr.block_id),
                        seq_num: 0,
                        dp_flags: DpFlags::default(),
                    };
                    let packet = DataPacket {
                        header,
                        digest: Digest::EMPTY,
                        data,
                    };
                    let resync =
                        matches!(kind, PeerReadKind::Resync | PeerReadKind::CsumCompare(_));
                    let packet = if resync {
                        self.link_mut().rs_replies.push((offset, u64::from(pr.len)));
                        Packet::RsDataReply(packet)
                    } else {
                        Packet::DataReply(packet)
                    };
                    self.send(Socket::Data, &packet);
                    if resync && self.config.mutation == Some(Mutation::ClearBitBeforeWriteAck) {
                        // Mutation: in sync as soon as the data is sent, not at P_RS_WRITE_ACK.
                        self.clear_in_sync(offset, u64::from(pr.len));
                        self.source_maybe_finished();
                    }
                }
            }
            (Err(_), PeerReadKind::VerifyCompare(digest)) => {
                // compare_verified_block marks the block and reports the error.
                if current {
                    self.compare_verified_block(pr.sector, pr.len, digest, None);
                } else {
                    self.mark_out_of_sync(offset, u64::from(pr.len));
                    self.local_io_error(LocalIoError::Read);
                }
            }
            (Err(_), PeerReadKind::CsumRequest(tag)) => {
                // No digest of an unreadable block: the request asks for the data instead,
                // its lock still held. (DRBD's w_e_send_csum drops the request, and a block
                // this disk cannot read stays unsynced for as long as the resync retries
                // it under on-io-error pass_on.) Under detach the resync ends anyway.
                if current && self.resync_request_in_flight(pr.sector, pr.len, tag) {
                    self.send(
                        Socket::Data,
                        &Packet::RsDataRequest(WireBlockRequest {
                            sector: pr.sector,
                            block_id: tag,
                            blksize: pr.len,
                            pad: 0,
                        }),
                    );
                }
                self.local_io_error(LocalIoError::Read);
            }
            (Err(_), kind) => {
                if current {
                    match kind {
                        // DRBD's w_e_end_ov_req: a zeroed digest, which the source's
                        // comparison finds different.
                        PeerReadKind::VerifyRequest => {
                            self.answer_ov_request(pr.sector, pr.len, None)
                        }
                        _ => {
                            let seq = self.next_seq();
                            let ack = ack_for(pr.sector, pr.block_id, pr.len, seq);
                            let resync =
                                matches!(kind, PeerReadKind::Resync | PeerReadKind::CsumCompare(_));
                            let packet = if resync {
                                Packet::NegRsDReply(ack)
                            } else {
                                Packet::NegDReply(ack)
                            };
                            self.send(Socket::Meta, &packet);
                        }
                    }
                }
                self.mark_out_of_sync(offset, u64::from(pr.len));
                self.local_io_error(LocalIoError::Read);
            }
        }
    }

    // ---- resync --------------------------------------------------------------------------

    fn receive_resync_reply(&mut self, p: DataPacket) -> Result<(), String> {
        let sector = p.header.sector;
        if !self.csum_request_answered(sector, p.header.block_id) {
            // A reply to a request of a resync that was aborted (a disk failed or
            // detached): dropped. See `Resync::request_tag`.
            return Ok(());
        }
        let Some(&bytes) = self.link().and_then(|l| l.rs_requests.get(&sector)) else {
            return Err(format!(
                "P_RS_DATA_REPLY for sector {sector} that was not requested"
            ));
        };
        if bytes != p.data.len() as u64 {
            return Err(format!(
                "P_RS_DATA_REPLY of {} bytes for a request of {bytes}",
                p.data.len()
            ));
        }
        let lock = self.rs_request_locks.remove(&sector);
        if self.disk.is_none() || self.disk_state == DiskState::Failed {
            self.unlock(lock);
            self.link_mut().rs_requests.remove(&sector);
            return Ok(());
        }
        let id = self.next_peer_op;
        self.next_peer_op += 1;
        let link_gen = self.link_gen;
        self.insert_peer_write(
            id,
            PeerWrite {
                link_gen,
                sector,
                len: bytes,
                block_id: BlockId::SYNCER.0,
                kind: PeerWriteKind::Resync,
                op: DiskOpKind::Write {
                    data: p.data,
                    fua: false,
                },
                epoch: 0,
                lock,
                extents: None,
                holds_extents: false,
                submitted: false,
            },
        );
        // The request's lock is held since the request went out: write at once.
        self.submit_peer_write(id);
        Ok(())
    }

    /// Target: a resync request ended without data (P_NEG_RS_DREPLY, P_RS_CANCEL, or with a
    /// csums-alg the local read for its digest failed): it leaves the controller's in-flight
    /// count as a data reply does and its range lock goes; its bits stay set.
    fn resync_request_unanswered(&mut self, sector: u64, blksize: u32) {
        let link = self.link_mut();
        link.rs_sect_in += u64::from(blksize) / 512;
        link.rs_requests.remove(&sector);
        let lock = self.rs_request_locks.remove(&sector);
        self.unlock(lock);
    }

    /// Target with a csums-alg: its own block of a request was read; its digest goes to the
    /// source (DRBD's w_e_send_csum). Nothing goes for a request no longer in flight (its
    /// resync ended or was aborted while the read was on the disk).
    fn send_csum_request(&mut self, sector: u64, len: u32, tag: BlockId, data: &[u8]) {
        let in_flight = self.resync_request_in_flight(sector, len, tag);
        let alg = self.peer.as_ref().and_then(|p| p.config.csums_alg);
        let Some(alg) = alg.filter(|_| in_flight) else {
            return;
        };
        self.link_mut().rs_csum_sent.insert(sector, tag);
        self.send(
            Socket::Data,
            &Packet::CsumRsRequest(udrbd_wire::DigestRequest {
                request: WireBlockRequest {
                    sector,
                    block_id: tag,
                    blksize: len,
                    pad: 0,
                },
                digest: alg.digest(data),
            }),
        );
    }

    /// Target: the request of this resync (its tag) for these bytes at `sector` is still
    /// waiting for its answer.
    fn resync_request_in_flight(&self, sector: u64, len: u32, tag: BlockId) -> bool {
        self.answers_current_resync(tag)
            && self
                .link()
                .is_some_and(|l| l.rs_requests.get(&sector) == Some(&u64::from(len)))
    }

    /// Source: the target's digest is that of this block.
    fn csum_equal(&self, digest: Digest, data: &[u8]) -> bool {
        let alg = self.peer.as_ref().and_then(|p| p.config.csums_alg);
        alg.is_some_and(|alg| alg.digest(data) == digest)
    }

    /// Target: P_RS_IS_IN_SYNC, the source found its block equal to the digest of this
    /// node's (DRBD's got_IsInSync). The bits clear once this disk's copy, read for the
    /// digest, is durable: the flush after resync writes covers it (a block read back from
    /// the disk's cache may still be lost by a crash).
    fn receive_rs_is_in_sync(&mut self, a: udrbd_wire::BlockAck) -> Result<(), String> {
        if !self.csum_request_answered(a.sector, a.block_id) {
            return Ok(());
        }
        let Some(&bytes) = self.link().and_then(|l| l.rs_requests.get(&a.sector)) else {
            return Err(format!(
                "P_RS_IS_IN_SYNC for sector {} that was not requested",
                a.sector
            ));
        };
        if bytes != u64::from(a.blksize) {
            return Err(format!(
                "P_RS_IS_IN_SYNC of {} bytes for a request of {bytes}",
                a.blksize
            ));
        }
        self.resync_request_unanswered(a.sector, a.blksize);
        if self.disk.is_none() || self.disk_state == DiskState::Failed {
            return Ok(());
        }
        self.rs_unflushed.push((a.sector * 512, bytes));
        if let Some(r) = self.link_mut().resync.as_mut() {
            r.same_csum_bits += bytes / udrbd_meta::BM_BLOCK_SIZE;
        }
        Ok(())
    }

    /// Target: whether an answer from the source for `sector` belongs to the resync running
    /// now; an answer to one of its P_CSUM_RS_REQUESTs is no longer awaited.
    ///
    /// A DRBD 8.4 source does not echo the block id of a P_CSUM_RS_REQUEST: its P_RS_IS_IN_SYNC
    /// and P_NEG_RS_DREPLY carry whatever shares the peer request's union with the digest
    /// pointer, and a P_RS_DATA_REPLY for a block that differed carries ID_SYNCER
    /// (w_e_end_csum_rs_req). So an answer that is not tagged as this resync's is matched by
    /// its sector: first to an aborted resync's request still unanswered there (which keeps
    /// new requests from that sector, see `issue_resync_requests`), then to this resync's.
    fn csum_request_answered(&mut self, sector: u64, block_id: BlockId) -> bool {
        if self.answers_current_resync(block_id) {
            if let Some(link) = self.peer.as_mut().and_then(|p| p.link.as_mut()) {
                link.rs_csum_sent.remove(&sector);
            }
            return true;
        }
        let Some(link) = self.peer.as_mut().and_then(|p| p.link.as_mut()) else {
            return false;
        };
        let tagged = crate::peer::is_resync_request_tag(block_id);
        if let Some(tags) = link.stale_csum_replies.get_mut(&sector) {
            if let Some(i) = tags.iter().position(|t| *t == block_id) {
                tags.remove(i);
            } else if !tagged {
                tags.pop_front();
            }
            if tags.is_empty() {
                link.stale_csum_replies.remove(&sector);
            }
            return false;
        }
        // An earlier resync's tag: the answer to a request it made without a digest.
        !tagged && link.rs_csum_sent.remove(&sector).is_some()
    }

    /// Target: an answer from the source belongs to the resync running now.
    fn answers_current_resync(&self, block_id: BlockId) -> bool {
        self.link()
            .and_then(|l| l.resync.as_ref())
            .is_some_and(|r| !r.source && r.request_tag == block_id)
    }

    /// The source: the target wrote these blocks.
    fn clear_in_sync(&mut self, offset: u64, len: u64) {
        if let Some(d) = self.disk.as_mut() {
            let bits = crate::peer::bits_of(offset, len, d.bitmap.bits());
            if !bits.is_empty() {
                d.bitmap.clear_range(bits);
            }
        }
    }

    fn source_maybe_finished(&mut self) {
        let conn = self.peer.as_ref().map(|p| p.conn);
        // Also while paused: the acknowledgements of what was in flight may end it.
        if matches!(conn, Some(ConnState::SyncSource | ConnState::PausedSyncS))
            && self.disk.is_some()
            && self.resync_bits_left() == 0
        {
            self.resync_finished_source();
        }
    }

    /// Flushes resync writes, then clears their bits.
    pub(crate) fn drive_resync_flush(&mut self) {
        if self.rs_flush_in_flight.is_some() || self.rs_unflushed.is_empty() {
            return;
        }
        if self.disk.is_none() || self.disk_state == DiskState::Failed {
            self.rs_unflushed.clear();
            return;
        }
        let ranges = std::mem::take(&mut self.rs_unflushed);
        self.rs_flush_in_flight = Some(ranges);
        self.submit(OpPurpose::ResyncFlush, DiskArea::Data, 0, DiskOpKind::Flush);
    }

    pub(crate) fn on_resync_flushed(&mut self, result: Result<Option<Bytes>, DiskError>) {
        let ranges = self.rs_flush_in_flight.take().unwrap_or_default();
        if result.is_err() {
            self.local_io_error(LocalIoError::Write);
            return;
        }
        for (offset, len) in ranges {
            self.clear_in_sync(offset, len);
        }
        self.target_maybe_finished();
    }

    /// A block marked out of sync is no longer vouched for by what was read or written
    /// before: a target's resync write awaiting its flush, a source's resync reply awaiting
    /// its P_RS_WRITE_ACK. Those claims are dropped, so they clear no bits.
    pub(crate) fn forget_in_sync_claims(&mut self, offset: u64, len: u64) {
        drop_overlapping(&mut self.rs_unflushed, offset, len);
        if let Some(f) = self.rs_flush_in_flight.as_mut() {
            drop_overlapping(f, offset, len);
        }
        if let Some(link) = self.peer.as_mut().and_then(|p| p.link.as_mut()) {
            drop_overlapping(&mut link.rs_replies, offset, len);
        }
    }

    fn target_maybe_finished(&mut self) {
        let target = matches!(
            self.peer.as_ref().map(|p| p.conn),
            Some(ConnState::SyncTarget | ConnState::PausedSyncT)
        );
        if !target {
            return;
        }
        let idle = self.link().is_some_and(|l| l.rs_requests.is_empty())
            && self.rs_unflushed.is_empty()
            && self.rs_flush_in_flight.is_none();
        if idle && self.disk.is_some() && self.resync_bits_left() == 0 {
            self.resync_finished_target();
        }
    }

    /// One 100 ms step of the resync (DRBD's `make_resync_request`).
    pub(crate) fn resync_step(&mut self) {
        let now = self.now;
        if self
            .peer
            .as_ref()
            .is_some_and(|p| matches!(p.conn, ConnState::PausedSyncS | ConnState::PausedSyncT))
        {
            // Paused: no new requests and no rate marks (the pause is not part of the
            // resync's time); what was in flight completes. `apply_sync_pause` steps again at
            // once when it continues.
            self.timers.set(
                Timer::ResyncStep,
                now.plus(crate::resync_controller::SLEEP_TIME),
            );
            self.target_maybe_finished();
            return;
        }
        let left = self.resync_bits_left();
        let Some(link) = self.peer.as_mut().and_then(|p| p.link.as_mut()) else {
            return;
        };
        let Some(resync) = link.resync.as_mut() else {
            return;
        };
        resync.controller.advance_marks(now, left);
        let sb_version = resync.sb_version;
        if resync.source {
            self.timers.set(
                Timer::ResyncStep,
                now.plus(crate::resync_controller::SLEEP_TIME),
            );
            return;
        }
        let sect_in = std::mem::take(&mut link.rs_sect_in);
        let in_flight: u64 = link.rs_requests.values().map(|b| b / 4096).sum();
        let wanted = link
            .resync
            .as_mut()
            .expect("checked")
            .controller
            .step(sect_in, in_flight);
        let sb_ready = self
            .disk
            .as_ref()
            .is_some_and(|d| d.sb_durable >= sb_version);
        if self.bitmap_is_durable()
            && let Some(r) = self.link_mut().resync.as_mut()
        {
            r.bitmap_written = true;
        }
        let bitmap_ready = self.pages_durable_enough();
        let mut issued = 0u64;
        if sb_ready && bitmap_ready {
            issued = self.issue_resync_requests(wanted);
        }
        if let Some(r) = self.link_mut().resync.as_mut() {
            r.controller.unissued(wanted - issued);
        }
        self.timers.set(
            Timer::ResyncStep,
            now.plus(crate::resync_controller::SLEEP_TIME),
        );
        self.target_maybe_finished();
    }

    /// Resync may start before lazily written pages are on disk once the bitmap was written
    /// in full after the exchange (only pages dirtied later remain).
    fn pages_durable_enough(&self) -> bool {
        self.link()
            .and_then(|l| l.resync.as_ref())
            .is_some_and(|r| r.bitmap_written)
    }

    fn issue_resync_requests(&mut self, budget: u64) -> u64 {
        let max_bio = u64::from(self.link().expect("link").peer_max_bio);
        let max_bits = (MAX_RESYNC_REQUEST.min(max_bio) / udrbd_meta::BM_BLOCK_SIZE).max(1);
        let exchange_bits = self.exchange_bits();
        let csums = self
            .peer
            .as_ref()
            .is_some_and(|p| p.config.csums_alg.is_some());
        let mut issued = 0;
        let mut cursor = self
            .link()
            .and_then(|l| l.resync.as_ref())
            .map_or(0, |r| r.cursor);
        let mut wrapped = false;
        while issued < budget {
            let d = self.disk.as_ref().expect("attached");
            let next = d
                .bitmap
                .find_next_set(cursor)
                .filter(|b| *b < exchange_bits);
            let Some(start) = next else {
                if wrapped {
                    break;
                }
                wrapped = true;
                cursor = 0;
                continue;
            };
            if wrapped
                && start
                    >= self
                        .link()
                        .and_then(|l| l.resync.as_ref())
                        .map_or(0, |r| r.cursor)
            {
                break;
            }
            let mut end = start + 1;
            while end < exchange_bits
                && end - start < max_bits.min(budget - issued)
                && d.bitmap.test(end)
            {
                end += 1;
            }
            cursor = end;
            let (offset, len) = (
                start * udrbd_meta::BM_BLOCK_SIZE,
                (end - start) * udrbd_meta::BM_BLOCK_SIZE,
            );
            let size = d.size_sect * 512;
            let len = len.min(size.saturating_sub(offset));
            if len == 0 {
                continue;
            }
            let in_flight = self.link().is_some_and(|l| {
                l.rs_requests
                    .range(..(offset + len) / 512)
                    .next_back()
                    .is_some_and(|(s, b)| s * 512 + b > offset)
            });
            let unflushed = self
                .rs_unflushed
                .iter()
                .chain(self.rs_flush_in_flight.iter().flatten())
                .any(|&(o, l)| o < offset + len && offset < o + l);
            // An aborted resync's P_CSUM_RS_REQUEST there is unanswered: its answer could not
            // be told from a new request's (see `csum_request_answered`).
            let stale_csum = self
                .link()
                .is_some_and(|l| l.stale_csum_replies.contains_key(&(offset / 512)));
            if in_flight || unflushed || stale_csum || self.range_locked(offset, offset + len) {
                continue;
            }
            let lock = self.lock_range(offset, offset + len);
            self.rs_request_locks.insert(offset / 512, lock);
            let link = self.link_mut();
            link.rs_requests.insert(offset / 512, len);
            let block_id = link.resync.as_ref().expect("resyncing").request_tag;
            if csums {
                // DRBD's read_for_csum: the digest of this node's block goes instead. The
                // request's lock (above) covers the read.
                let kind = PeerReadKind::CsumRequest(block_id);
                let id = self.new_peer_read(offset / 512, len as u32, block_id.0, kind);
                self.submit_peer_read(id);
            } else {
                self.send(
                    Socket::Data,
                    &Packet::RsDataRequest(WireBlockRequest {
                        sector: offset / 512,
                        block_id,
                        blksize: len as u32,
                        pad: 0,
                    }),
                );
            }
            issued += end - start;
        }
        if let Some(r) = self.link_mut().resync.as_mut() {
            r.cursor = cursor;
        }
        issued.min(budget)
    }

    /// Received writes not yet acked (status `unacked`).
    pub(crate) fn peer_unacked(&self) -> u32 {
        self.peer_writes
            .values()
            .filter(|w| w.link_gen == self.link_gen)
            .count() as u32
    }
}

/// The byte range of `len` bytes at a sector the peer named: a protocol error when it does
/// not fit a byte offset (no honest peer names a sector past 2^55), so that later arithmetic
/// on the range cannot overflow.
fn peer_range(sector: u64, len: u64) -> Result<(u64, u64), String> {
    sector
        .checked_mul(512)
        .filter(|start| start.checked_add(len).is_some())
        .map(|start| (start, len))
        .ok_or_else(|| format!("sector {sector} (+{len} bytes) is out of range"))
}

/// Removes from `ranges` every (offset, bytes) range that overlaps [offset, offset + len).
fn drop_overlapping(ranges: &mut Vec<(u64, u64)>, offset: u64, len: u64) {
    let end = offset + len;
    ranges.retain(|&(o, l)| !(o < end && offset < o + l));
}
