//! Attach, detach, promotion and demotion: the commands that take several disk steps.
//!
//! Attach reads the superblock, the activity-log ring and the bitmap; replays the activity log
//! with `apply-al` semantics when the meta-data is unclean (the replayed extents become out of
//! sync); writes the bits it set; re-initialises the ring; and finally writes the superblock
//! with the 8.4 "unclean" magic, which it carries while attached. Each write waits for the one
//! before it, so a crash at any point leaves meta-data that a later attach (or drbdmeta
//! apply-al) recovers from.
//!
//! A clean detach drains the data IO, writes every dirty bitmap page, re-initialises the ring
//! and writes the superblock with magic 08 and MDF_AL_CLEAN: the meta-data is clean.
//! A detaching disk takes no part in a resync (8.4's D_FAILED); when it is released, no
//! resync state remains and no request holds references in its activity log.
//!
//! A promotion writes the superblock saying "Primary" and changes the role once that write is
//! durable; it is judged again then, against the state it takes effect in (UpToDate data
//! here or at a connected peer, no connected Primary peer), and refused if that moved.

use bytes::Bytes;
use udrbd_meta::activity_log::{self, AlTransaction, BITS_PER_AL_EXTENT, ReplayOutcome};
use udrbd_meta::superblock::SuperblockError;
use udrbd_meta::{ActivityLog, BLOCK_4K, Bitmap, Layout, Magic, MdFlags, Superblock};

use crate::engine::{
    AlWriter, Disk, DiskFailure, LocalIoError, OnIoError, OpPurpose, Pending, Resource,
};
use crate::state::{CommandError, ConnState, DiskState, Role, StateChangeError};
use crate::types::*;

/// Bitmap pages read per operation at attach (1 MiB).
const BITMAP_READ_PAGES: u64 = 256;
/// Bitmap reads in flight at attach.
const BITMAP_READS_IN_FLIGHT: usize = 4;

/// The steps of an attach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AttachStep {
    /// Reading the superblock.
    Superblock(AttachParams),
    /// Reading the AL ring.
    ActivityLog,
    /// Reading bitmap pages.
    Bitmap,
    /// Writing the pages the replay changed.
    WriteReplayed,
    /// Re-initialising the ring.
    InitializeAl,
    /// Writing the superblock with the attached state.
    Superblock2 { version: u64, disk_state: DiskState },
}

impl AttachStep {
    /// Whether the superblock may be written in this step.
    pub(crate) fn may_write_superblock(&self) -> bool {
        matches!(self, AttachStep::Superblock2 { .. })
    }
}

/// The steps of a detach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DetachStep {
    /// Waiting for data IO and the AL writer to finish.
    Drain,
    /// Writing every dirty bitmap page.
    WriteBitmap,
    /// Re-initialising the ring (clean detach only).
    InitializeAl,
    /// Writing the clean superblock (clean detach only).
    Superblock { version: u64 },
    /// After a disk failure whose bitmap write-out failed following a read error: the
    /// superblock with MDF_FULL_SYNC (this version) is being written.
    FullSyncSuperblock { version: u64 },
    /// After a disk failure: bitmap written (best effort), now drop the disk.
    Release,
}

impl DetachStep {
    /// The step's name in `status` (`udrbd-detach:STEP`).
    pub(crate) fn words(&self) -> &'static str {
        match self {
            DetachStep::Drain => "waiting-for-io",
            DetachStep::WriteBitmap => "writing-bitmap",
            DetachStep::FullSyncSuperblock { .. } => "writing-full-sync-flag",
            DetachStep::InitializeAl => "clearing-al",
            DetachStep::Superblock { .. } => "writing-superblock",
            DetachStep::Release => "releasing",
        }
    }
}

impl Resource {
    pub(crate) fn start_attach(
        &mut self,
        params: AttachParams,
    ) -> Result<Option<Pending>, CommandError> {
        if self.disk.is_some() {
            return Err(CommandError::AlreadyAttached);
        }
        let outstanding: u64 = self.stale_ops.values().sum();
        // Mutation::AttachWithStuckIo breaks this rule: the old attach's IO may still land.
        if outstanding > 0 && self.config.mutation != Some(crate::Mutation::AttachWithStuckIo) {
            return Err(CommandError::StuckIo { outstanding });
        }
        let offset = Layout::superblock_byte_for(params.meta_kind, params.meta_device_bytes)
            .map_err(|_| CommandError::NoValidMetaData)?;
        // The error kinds and the force-detach state of the last attach are forgotten.
        self.disk_errors = crate::engine::DiskErrors::default();
        self.disk_state = DiskState::Attaching;
        self.state_changed();
        self.submit(
            OpPurpose::ReadSuperblock,
            DiskArea::Superblock,
            offset,
            DiskOpKind::Read {
                len: BLOCK_4K as u32,
            },
        );
        Ok(Some(Pending::Attach(AttachStep::Superblock(params))))
    }

    /// A read (or the ring initialisation) of the attach completed.
    pub(crate) fn on_attach_io(
        &mut self,
        purpose: OpPurpose,
        result: Result<Option<Bytes>, DiskError>,
    ) {
        let data = match result {
            Ok(d) => d,
            Err(_) if !matches!(self.pending, Some((_, Pending::Attach(_)))) => {
                // The ring re-initialisation of a clean detach: a meta-data write error,
                // which detaches (the detach goes on as after a failure).
                return self.local_io_error(crate::engine::LocalIoError::MetaData);
            }
            Err(_) => return self.attach_failed(CommandError::MetaDataIo),
        };
        let outcome = match purpose {
            OpPurpose::ReadSuperblock => self.attach_superblock_read(data.unwrap_or_default()),
            OpPurpose::ReadActivityLog => {
                let d = self.disk.as_mut().expect("attaching");
                d.al_ring = data;
                self.read_bitmap_pages();
                Ok(())
            }
            OpPurpose::ReadBitmap { first, count } => {
                let d = self.disk.as_mut().expect("attaching");
                let bytes = data.unwrap_or_default();
                for i in 0..count {
                    let at = (i * BLOCK_4K) as usize;
                    let page = bytes.get(at..at + BLOCK_4K as usize).unwrap_or(&[]);
                    d.bitmap.load_page(first + i, page);
                }
                self.read_bitmap_pages();
                Ok(())
            }
            OpPurpose::AlInitialize => Ok(()),
            _ => unreachable!("not an attach operation"),
        };
        if let Err(e) = outcome {
            self.attach_failed(e);
        }
    }

    fn attach_superblock_read(&mut self, block: Bytes) -> Result<(), CommandError> {
        let Some((_, Pending::Attach(AttachStep::Superblock(params)))) = self.pending.clone()
        else {
            unreachable!("superblock read outside an attach");
        };
        let sb = Superblock::decode(&block).map_err(|e| match e {
            SuperblockError::WrongSize(_) => CommandError::MetaDataIo,
            _ => CommandError::NoValidMetaData,
        })?;
        let layout = Layout::for_kind(params.meta_kind, params.meta_device_bytes, sb.al_geometry())
            .map_err(|_| CommandError::NoValidMetaData)?;
        sb.check_layout(&layout)
            .map_err(|_| CommandError::NoValidMetaData)?;
        let connected = self
            .peer
            .as_ref()
            .is_some_and(|p| p.conn >= crate::state::ConnState::Connected);
        if self.role == Role::Primary
            && !connected
            && let Some(exposed) = self.exposed_uuid
            && exposed != sb.uuids.current & !1
        {
            // The disk holds other data than what this Primary served (DRBD's
            // ERR_DATA_NOT_CURRENT): attaching it would expose stale data.
            return Err(CommandError::DataNotCurrent { exposed });
        }
        let usable = layout.max_data_sect.min(params.data_device_bytes / 512) & !7;
        if sb.la_size_sect > usable {
            return Err(CommandError::DeviceTooSmall);
        }
        // The device keeps its last agreed size (DRBD's drbd_new_dev_size without a peer): a
        // disk that grew while the node was down does not grow the device before a peer
        // agrees, and a device that a smaller peer shrank stays that small. A Primary that
        // exposed the grown disk alone refused its unchanged peer at the next connect ("the
        // peer's disk is too small"). A fresh disk (0: never negotiated) offers all it holds.
        let size = if sb.la_size_sect >= 8 {
            sb.la_size_sect & !7
        } else {
            usable
        };
        // The user size (`disk { size }`) caps it (DRBD's drbd_new_dev_size), but never
        // truncates a device with data: "refusing to truncate a consistent device".
        let user_size_sect = self.config.user_size_sect;
        let size = self.capped_by_user_size(size, user_size_sect);
        if size < sb.la_size_sect & !7 && sb.flags.has(MdFlags::CONSISTENT) {
            self.log(
                LogLevel::Warn,
                format!(
                    "refusing to truncate a consistent device ({} > size {size} sectors)",
                    sb.la_size_sect
                ),
            );
            return Err(CommandError::DeviceTooSmall);
        }
        let bits = usable.div_ceil(udrbd_meta::SECTORS_PER_BIT);
        let al_extents = self
            .config
            .al_extents
            .min(layout.al.max_al_extents().min(65_533) as u16);
        let bitmap = Bitmap::new(bits);
        let pages = bitmap.pages();
        self.disk = Some(Disk {
            layout,
            sb,
            sb_version: 0,
            sb_durable: 0,
            sb_in_flight: false,
            bitmap,
            al: ActivityLog::new(layout.al, al_extents, 0),
            al_writer: AlWriter::Idle,
            pages_in_flight: Default::default(),
            size_sect: size,
            usable_sect: usable,
            user_size_sect,
            grow_pending: None,
            owed_pages: Default::default(),
            owed_pages_in_flight: Default::default(),
            al_ring: None,
            bitmap_pages_to_read: pages,
            // The disk may hold writes no flush has covered: those of an earlier attach that
            // a forced detach abandoned and that landed after it (attach waits for them to
            // return, not for them to be durable). Counted as one completed data write, they
            // make the attach's first meta-data write flush first, before the attach ends
            // and a resync may clear their bits: otherwise a resync from this disk cleared
            // the bit of such a block, which a crash then took back (swarm seed 9622).
            data_writes_done: 1,
            flushed_through: 0,
            flushes_in_flight: Default::default(),
            sb_flush_need: None,
            bm_flush_need: None,
            al_reinit_flush_need: None,
        });
        self.set_attach_step(AttachStep::ActivityLog);
        self.submit(
            OpPurpose::ReadActivityLog,
            DiskArea::ActivityLog,
            layout.al_byte(),
            DiskOpKind::Read {
                len: (layout.al.ring_blocks() * BLOCK_4K) as u32,
            },
        );
        Ok(())
    }

    /// Issues bitmap reads until all pages are requested; replays once all are in.
    fn read_bitmap_pages(&mut self) {
        self.set_attach_step(AttachStep::Bitmap);
        let in_flight = self
            .ops
            .values()
            .filter(|p| matches!(p, OpPurpose::ReadBitmap { .. }))
            .count();
        let d = self.disk.as_mut().expect("attaching");
        let total = d.bitmap.pages();
        let mut requests = Vec::new();
        let mut slots = BITMAP_READS_IN_FLIGHT.saturating_sub(in_flight);
        while slots > 0 && d.bitmap_pages_to_read > 0 {
            let first = total - d.bitmap_pages_to_read;
            let count = d.bitmap_pages_to_read.min(BITMAP_READ_PAGES);
            d.bitmap_pages_to_read -= count;
            requests.push((first, count, d.layout.bm_byte() + first * BLOCK_4K));
            slots -= 1;
        }
        for (first, count, offset) in requests {
            self.submit(
                OpPurpose::ReadBitmap { first, count },
                DiskArea::Bitmap,
                offset,
                DiskOpKind::Read {
                    len: (count * BLOCK_4K) as u32,
                },
            );
        }
        let reading = self
            .ops
            .values()
            .any(|p| matches!(p, OpPurpose::ReadBitmap { .. }));
        if !reading {
            self.replay_activity_log();
        }
    }

    /// apply-al semantics: with MDF_PRIMARY_IND, every extent of the active set becomes out
    /// of sync (an unusable log of a Primary marks everything). Then the changed pages are
    /// written.
    fn replay_activity_log(&mut self) {
        let d = self.disk.as_mut().expect("attaching");
        let ring = d.al_ring.take().unwrap_or_default();
        let geometry = d.layout.al;
        if !d.sb.is_clean() {
            let blocks: Vec<_> = (0..geometry.ring_blocks())
                .map(|p| {
                    let at = (geometry.block_of_position(p) * BLOCK_4K) as usize;
                    AlTransaction::decode(ring.get(at..at + BLOCK_4K as usize).unwrap_or(&[]))
                })
                .collect();
            let replay = activity_log::replay(&blocks, geometry, d.sb.magic == Magic::V84Unclean);
            if d.sb.flags.has(MdFlags::PRIMARY_IND) {
                self.crashed_primary = true;
                match replay.outcome {
                    ReplayOutcome::Active { extents, .. } => {
                        for e in extents {
                            let first = u64::from(e) * BITS_PER_AL_EXTENT;
                            d.bitmap.set_range(first..first + BITS_PER_AL_EXTENT);
                        }
                    }
                    ReplayOutcome::NoUsableLog | ReplayOutcome::NoValidUpdate => {
                        d.bitmap.set_all();
                    }
                    ReplayOutcome::Initialized | ReplayOutcome::Legacy => {}
                }
            }
        }
        // PRIMARY_IND or CRASHED_PRIMARY at attach make the runtime "crashed primary" bit
        // (facts §2.3), also on clean meta-data: a Primary's clean detach leaves PRIMARY_IND,
        // and with equal UUIDs that disk, whose bitmap holds what the peer may lack, must be
        // the SyncSource (rule 40), not a peer "in sync" that ignores its bits.
        if d.sb.flags.has(MdFlags::CRASHED_PRIMARY) || d.sb.flags.has(MdFlags::PRIMARY_IND) {
            self.crashed_primary = true;
        }
        if d.sb.flags.has(MdFlags::FULL_SYNC) {
            d.bitmap.set_all();
        }
        self.set_attach_step(AttachStep::WriteReplayed);
        self.write_dirty_pages();
    }

    fn set_attach_step(&mut self, step: AttachStep) {
        if let Some((_, Pending::Attach(s))) = self.pending.as_mut() {
            *s = step;
        }
    }

    fn attach_failed(&mut self, e: CommandError) {
        // Only an attach in progress fails: `take()` in the pattern would also drop another
        // command's pending step (a `detach` then waited for ever, unanswered: swarm seed 277).
        let Some((id, Pending::Attach(_))) = self.pending else {
            return;
        };
        self.pending = None;
        // Reads of this attach may still be outstanding: they become stale.
        self.retire_generation();
        self.disk = None;
        self.disk_state = DiskState::Diskless;
        self.finish_command(id, Err(e));
        self.state_changed();
    }

    /// The activity log went away with its disk: a request still holding extents of it (a
    /// replicated write whose local part ended, waiting for the peer's ack) holds nothing
    /// now, as DRBD's drbd_req_destroy skips drbd_al_complete_io once the disk is gone
    /// ("my Disk seems to have failed"). Otherwise the request released them later into the
    /// fresh activity log of the next attach, whose references it never took (found by the
    /// swarm, seeds 29, 157, 381: "activity-log references"). The same for the references
    /// the unconfirmed epochs hold.
    fn forget_activity_log_references(&mut self) {
        for r in self.requests.values_mut() {
            r.holds_extents = false;
        }
        for pw in self.peer_writes.values_mut() {
            pw.holds_extents = false;
        }
        if let Some(link) = self.peer.as_mut().and_then(|p| p.link.as_mut()) {
            link.epoch_held_extents.clear();
            for epoch in &mut link.unacked_epochs {
                epoch.held_extents.clear();
            }
        }
    }

    /// Ends the current attach generation: its outstanding operations are remembered as stuck
    /// until they return, and the next attach gets a new generation.
    pub(crate) fn retire_generation(&mut self) {
        let outstanding = std::mem::take(&mut self.ops);
        for (id, purpose) in outstanding {
            if let OpPurpose::Request(req) = purpose
                && let Some(r) = self.requests.get_mut(&req)
            {
                r.op = None;
            }
            *self.stale_ops.entry(id.generation()).or_default() += 1;
        }
        if !self.stale_ops.contains_key(&self.generation) {
            self.outputs.push_back(Output::Event(Event::DiskReleased {
                generation: self.generation,
            }));
        }
        self.generation += 1;
        self.next_sequence = 0;
    }

    /// Advances a pending attach; returns true when it finished.
    fn drive_attach(&mut self, step: AttachStep) -> bool {
        match step {
            AttachStep::WriteReplayed => {
                if !self.bitmap_is_durable() {
                    return false;
                }
                let d = self.disk.as_mut().expect("attaching");
                d.sb.flags.set(MdFlags::FULL_SYNC, false);
                self.set_attach_step(AttachStep::InitializeAl);
                self.initialize_activity_log();
                false
            }
            AttachStep::InitializeAl => {
                if self.ops.values().any(|p| *p == OpPurpose::AlInitialize) {
                    return false;
                }
                let d = self.disk.as_mut().expect("attaching");
                let flags = d.sb.flags;
                let disk_state = if !flags.has(MdFlags::CONSISTENT) {
                    DiskState::Inconsistent
                } else if flags.has(MdFlags::WAS_UP_TO_DATE) {
                    // fencing dont-care: Consistent counts as UpToDate.
                    DiskState::UpToDate
                } else {
                    DiskState::Outdated
                };
                d.sb.magic = Magic::V84Unclean;
                d.sb.flags.set(MdFlags::AL_CLEAN, false);
                d.sb.la_size_sect = d.size_sect;
                // The kernel records its current number of AL slots here.
                d.sb.al_nr_extents = u32::from(d.al.al_extents());
                d.sb_version += 1;
                let version = d.sb_version;
                // The disk stays Attaching until this superblock is durable (its flags are
                // computed for `disk_state`, see update_md_flags_for): saying UpToDate
                // before, a disk that is stale next to a connected peer looked current
                // until the handshake after the attach (swarm seed 6242, once the attach
                // flushed before its superblock write).
                self.set_attach_step(AttachStep::Superblock2 {
                    version,
                    disk_state,
                });
                self.update_md_flags();
                false
            }
            AttachStep::Superblock2 {
                version,
                disk_state,
            } => {
                let durable = self.disk.as_ref().is_some_and(|d| d.sb_durable >= version);
                if durable {
                    self.disk_state = disk_state;
                }
                durable
            }
            _ => false,
        }
    }

    pub(crate) fn start_detach(&mut self, force: bool) -> Result<Option<Pending>, CommandError> {
        if self.disk.is_none() {
            return Err(CommandError::NoDiskConfig);
        }
        if self.role == Role::Primary && !force && !self.peer_serves() {
            // The only UpToDate copy of a Primary's data.
            return Err(CommandError::StateChange(StateChangeError::NoUpToDateDisk));
        }
        if !force
            && self.peer.as_ref().is_some_and(|p| {
                p.conn >= crate::state::ConnState::Connected
                    && p.peer_role == Role::Primary
                    && p.peer_disk != DiskState::UpToDate
            })
        {
            // The only UpToDate copy of a connected Primary peer's data (it is diskless, or
            // a resync target). In DRBD a detach while connected is a cluster-wide state
            // change (cl_wide_st_chg: disk to D_FAILED) that the Primary refuses, as a
            // Primary with neither disk UpToDate (SS_NO_UP_TO_DATE_DISK). Allowed, the
            // detaching disk neg-acked the Primary's writes, which then lived only on its
            // Inconsistent disk and were overwritten by the next resync from this one:
            // acknowledged writes lost (swarm seed 331). `detach --force` is a hard
            // transition and is not refused.
            return Err(CommandError::StateChange(StateChangeError::NoUpToDateDisk));
        }
        if force {
            self.force_detach(DiskFailure::Forced);
            // The failure's detach took the pending slot; this command only started it.
            return Ok(None);
        }
        // A detaching disk takes no resync data: the resync ends (8.4 detaches through
        // D_FAILED, which aborts it), the bitmap keeps what is left.
        self.abort_resync();
        Ok(Some(Pending::Detach(DetachStep::Drain)))
    }

    /// Tells the peer that the disk is detaching (D_FAILED on the wire, see `send_state_as`),
    /// once the detach's pending step is in place.
    pub(crate) fn announce_detach(&mut self) {
        if matches!(self.pending, Some((_, Pending::Detach(_)))) {
            self.send_state();
        }
    }

    pub(crate) fn start_primary(
        &mut self,
        id: CommandId,
        force: bool,
    ) -> Result<Option<Pending>, CommandError> {
        if self.role == Role::Primary {
            return Ok(None);
        }
        self.check_promotable(force)?;
        if let Some(p) = self.peer.as_ref()
            && p.conn >= crate::state::ConnState::Connected
        {
            if p.peer_role == Role::Primary {
                return Err(CommandError::StateChange(StateChangeError::TwoPrimaries));
            }
            // Cluster-wide: the peer must agree first (P_STATE_CHG_REQ).
            if self.request_primary_from_peer(id, force) {
                return Ok(Some(Pending::PeerApproval));
            }
        }
        self.promote_locally(force)
    }

    /// Primary needs UpToDate data: the local disk's, or a connected UpToDate peer's;
    /// `--force` takes an Inconsistent local disk as UpToDate.
    pub(crate) fn check_promotable(&self, force: bool) -> Result<(), CommandError> {
        let peer_up_to_date = self.peer.as_ref().is_some_and(|p| {
            p.conn >= crate::state::ConnState::Connected && p.peer_disk == DiskState::UpToDate
        });
        if self.disk.is_none() && !peer_up_to_date {
            return Err(CommandError::StateChange(StateChangeError::NoUpToDateDisk));
        }
        let usable = self.disk_state == DiskState::UpToDate
            || (force && self.disk_state >= DiskState::Inconsistent)
            || (peer_up_to_date && self.disk_state >= DiskState::Inconsistent);
        if !usable {
            return Err(CommandError::StateChange(StateChangeError::NoUpToDateDisk));
        }
        Ok(())
    }

    /// The role changes only once the superblock saying "Primary" is durable, where DRBD
    /// changes it at once, in the same atomic state change as its checks. A frozen disk can
    /// hold that write for seconds, and meanwhile the state moves on: a handshake makes the
    /// disk Outdated or Inconsistent (a resync target) or learns that the peer is Primary
    /// (the peer promoted itself, or approved its own promotion while this one waited), or the
    /// connection that made an Inconsistent disk promotable goes away. So the promotion is
    /// judged again in the state it takes effect in, as DRBD's is_valid_state judges every
    /// role change: UpToDate data here or at a connected peer, and never two Primaries
    /// connected (no allow-two-primaries). Without this a node became Primary on an
    /// Inconsistent disk while StandAlone, or Primary while connected to a Primary (found
    /// by the swarm, seeds 244, 257, 269, 283, 293, 432, 464).
    ///
    /// A connection that came up while the promotion waited (its peer did not agree to it)
    /// refuses it too: the peer may have been promoted the same way, each seeing the other
    /// Secondary when its own took effect, and two Primaries were connected (swarm seeds
    /// 45547, 46042: both promotions decided while disconnected, on frozen disks). A retry
    /// goes through the peer.
    fn check_promotion_takes_effect(
        &self,
        approved_on: Option<crate::connection::ConnId>,
    ) -> Result<(), CommandError> {
        // A forced promotion made the disk UpToDate when it started; it is judged as
        // unforced now, so a handshake that made it Inconsistent since refuses it.
        self.check_promotable(false)?;
        if let Some(link) = self.link()
            && Some(link.data) != approved_on
        {
            return Err(CommandError::StateChange(
                StateChangeError::InTransientState,
            ));
        }
        if self.peer.as_ref().is_some_and(|p| {
            p.conn >= crate::state::ConnState::Connected && p.peer_role == Role::Primary
        }) {
            return Err(CommandError::StateChange(StateChangeError::TwoPrimaries));
        }
        Ok(())
    }

    /// The local part of a promotion: a new data generation unless a connected peer follows,
    /// then the superblock saying Primary.
    pub(crate) fn promote_locally(&mut self, force: bool) -> Result<Option<Pending>, CommandError> {
        self.check_promotable(force)?;
        if force {
            self.disk_state = DiskState::UpToDate;
        }
        let peer_follows = self.peer.as_ref().is_some_and(|p| {
            p.conn >= crate::state::ConnState::Connected && p.peer_disk >= DiskState::Inconsistent
        });
        let current = self.new_uuid() | 1;
        let d = self.disk.as_mut().expect("checked");
        if (!peer_follows && d.sb.uuids.bitmap == 0) || force {
            d.sb.uuids.bitmap = d.sb.uuids.current;
            d.sb.uuids.current = current;
            d.sb_version += 1;
        }
        // The role changes when the superblock saying so is durable.
        self.update_md_flags_for(Role::Primary);
        let sb_version = self.disk.as_ref().expect("attached").sb_version;
        // Connected here means the peer agreed (start_primary asks it first).
        let approved_on = self
            .peer
            .as_ref()
            .filter(|p| p.conn >= crate::state::ConnState::Connected)
            .and_then(|p| p.link.as_ref())
            .map(|l| l.data);
        Ok(Some(Pending::Primary {
            sb_version,
            approved_on,
        }))
    }

    pub(crate) fn start_secondary(&mut self) -> Result<Option<Pending>, CommandError> {
        if self.role == Role::Secondary {
            return Ok(None);
        }
        if self.device_in_use() {
            return Err(CommandError::StateChange(StateChangeError::DeviceInUse));
        }
        self.role = Role::Secondary;
        self.state_changed();
        self.send_state();
        if self.disk.is_none() {
            return Ok(None);
        }
        // The bits of writes that never reached a peer must be durable before the superblock
        // stops saying "Primary" (after which apply-al would not replay the AL).
        self.write_dirty_pages();
        Ok(Some(Pending::Secondary { sb_version: None }))
    }

    pub(crate) fn start_down(&mut self) -> Result<Option<Pending>, CommandError> {
        if self.device_in_use() {
            return Err(CommandError::StateChange(StateChangeError::DeviceInUse));
        }
        if self.user_isp || self.user_susp {
            // DRBD's down deletes the device and its state: the next up starts with no
            // pause-sync or suspend-io in force (no opener: no IO is held).
            self.user_isp = false;
            self.user_susp = false;
            self.state_changed();
        }
        if self
            .peer
            .as_ref()
            .is_some_and(|p| p.conn != crate::state::ConnState::StandAlone)
        {
            self.disconnect_now();
        }
        if self.role == Role::Primary {
            self.role = Role::Secondary;
            self.state_changed();
        }
        if self.disk.is_none() {
            return Ok(None);
        }
        self.write_dirty_pages();
        Ok(Some(Pending::Detach(DetachStep::Drain)))
    }

    /// A local IO error: counted, remembered for this attach, then handled by the
    /// `on-io-error` policy (a meta-data error always detaches).
    pub(crate) fn local_io_error(&mut self, kind: LocalIoError) {
        if self.disk.is_none() || self.disk_errors.abandoning {
            return;
        }
        if matches!(self.pending, Some((_, Pending::Attach(_)))) {
            return self.attach_failed(CommandError::MetaDataIo);
        }
        self.disk_errors.count += 1;
        let failure = match kind {
            LocalIoError::Read => {
                self.disk_errors.read_error = true;
                DiskFailure::ReadError
            }
            LocalIoError::Write => DiskFailure::WriteError,
            LocalIoError::MetaData => DiskFailure::MetaDataError,
        };
        if self.disk_state == DiskState::Failed {
            // Already on the way to Diskless (a bitmap page of the detach, a late error).
            return;
        }
        let policy = match kind {
            LocalIoError::MetaData if self.config.on_io_error == OnIoError::PassOn => {
                OnIoError::Detach
            }
            _ => self.config.on_io_error,
        };
        self.log(
            LogLevel::Error,
            format!(
                "Local IO failed ({}); on-io-error {policy:?}",
                failure.words()
            ),
        );
        match policy {
            OnIoError::PassOn => {
                if let Some(negotiation) = self.attach_negotiation.as_mut() {
                    // Negotiating: the state the disk will take is Inconsistent at best.
                    if negotiation.disk_state > DiskState::Inconsistent {
                        negotiation.disk_state = DiskState::Inconsistent;
                        self.update_md_flags();
                    }
                } else if self.disk_state > DiskState::Inconsistent {
                    self.disk_state = DiskState::Inconsistent;
                    self.update_md_flags();
                    self.state_changed();
                    let source = self.peer.as_ref().is_some_and(|p| {
                        matches!(p.conn, ConnState::SyncSource | ConnState::PausedSyncS)
                    });
                    if source {
                        // An Inconsistent disk is no resync source (its reads of the bits
                        // left would be refused for ever, and the pair never converged:
                        // swarm seed 6773). The resync ends; the peer, seeing this side
                        // Connected, ends it too, and its bitmap keeps what is left.
                        self.log(
                            LogLevel::Warn,
                            "the SyncSource's disk is Inconsistent: ending the resync".to_string(),
                        );
                        self.abort_resync();
                    } else {
                        self.send_state();
                    }
                }
            }
            OnIoError::CallLocalIoError => {
                // Before anything is aborted or the peer learns about it: the handler may
                // hard-reset the node.
                self.outputs.push_back(Output::Event(Event::Handler {
                    name: "local-io-error",
                }));
                self.disk_failed(failure);
            }
            OnIoError::Detach => self.disk_failed(failure),
        }
    }

    /// The disk is Failed: on its way to Diskless. New IO is served by the peer; IO already
    /// submitted is waited for (unless force-detached); then the bitmap is written and the
    /// disk released.
    pub(crate) fn disk_failed(&mut self, failure: DiskFailure) {
        if self.disk.is_none() {
            return;
        }
        if matches!(self.pending, Some((_, Pending::Attach(_)))) {
            return self.attach_failed(CommandError::MetaDataIo);
        }
        if self.disk_errors.failure.is_none() {
            self.disk_errors.failure = Some(failure);
        }
        if self.disk_state != DiskState::Failed {
            // A negotiating attach ends here: the disk goes.
            self.attach_negotiation = None;
            self.disk_state = DiskState::Failed;
            self.log(
                LogLevel::Warn,
                format!("disk Failed ({}): detaching", failure.words()),
            );
            self.abort_resync();
            self.state_changed();
            self.send_state();
            // Writes waiting for the AL are served by the peer alone now.
            let waiting: Vec<BlockRequestId> = self.al_waiting.drain(..).collect();
            for id in waiting {
                self.release_held_extents(id);
                self.serve_without_local_disk(id);
            }
        }
        match &self.pending {
            None => self.pending = Some((CommandId(0), Pending::Detach(DetachStep::Drain))),
            Some((_, Pending::Detach(_))) => {}
            Some((id, _)) => {
                let id = *id;
                self.pending = Some((CommandId(0), Pending::Detach(DetachStep::Drain)));
                self.finish_command(id, Err(CommandError::DiskFailed));
            }
        }
    }

    /// disk-timeout or `detach --force`: the disk is Failed and every outstanding operation
    /// is abandoned now. Their late completions are dropped (the generation moves on); a
    /// request's local part counts as failed: reads go to the peer, writes complete when the
    /// peer has them (their blocks are out of sync here).
    pub(crate) fn force_detach(&mut self, failure: DiskFailure) {
        // An attach in progress fails, its outstanding reads becoming stuck IO. Checked before
        // `disk`: until the superblock is read there is no meta-data in memory, and returning
        // early then left the overdue read in place, so the disk-timeout timer re-armed in the
        // past for ever (a livelock the swarm found).
        if matches!(self.pending, Some((_, Pending::Attach(_)))) {
            return self.attach_failed(CommandError::MetaDataIo);
        }
        if self.disk.is_none() {
            return;
        }
        if failure == DiskFailure::Timeout {
            self.disk_errors.count += 1;
        }
        self.disk_errors.forced = true;
        if self.disk_errors.failure.is_none() || self.disk_state != DiskState::Failed {
            self.disk_errors.failure = Some(failure);
        }
        self.disk_failed(failure);
        self.abandon_outstanding_ops();
    }

    /// Moves every outstanding operation to the stuck count of this generation and starts a
    /// new one; ties up whatever waited for them.
    fn abandon_outstanding_ops(&mut self) {
        let outstanding = std::mem::take(&mut self.ops);
        if outstanding.is_empty() {
            return;
        }
        *self.stale_ops.entry(self.generation).or_default() += outstanding.len() as u64;
        self.generation += 1;
        self.next_sequence = 0;
        self.op_started.clear();
        let eio = || Err(DiskError { errno: 5 });
        if let Some(d) = self.disk.as_mut() {
            // Abandoned flushes cover nothing; a writer waiting for one starts another.
            d.flushes_in_flight.clear();
        }
        self.disk_errors.abandoning = true;
        for (_, purpose) in outstanding {
            match purpose {
                OpPurpose::Request(id) => self.local_part_abandoned(id),
                OpPurpose::BitmapPage(page) => {
                    if let Some(d) = self.disk.as_mut() {
                        d.pages_in_flight.remove(&page);
                        // Its contents are unknown on disk now: dirty again in memory.
                        d.bitmap.mark_dirty(page);
                        if d.owed_pages_in_flight.remove(&page) {
                            d.owed_pages.insert(page);
                        }
                    }
                }
                OpPurpose::AlTransaction | OpPurpose::AlPreflush => {
                    if let Some(d) = self.disk.as_mut() {
                        d.al_writer = AlWriter::Idle;
                    }
                }
                OpPurpose::Superblock(_) => {
                    if let Some(d) = self.disk.as_mut() {
                        d.sb_in_flight = false;
                    }
                }
                OpPurpose::PeerWrite(id) => self.on_peer_write_done(id, eio()),
                OpPurpose::PeerRead(id) => self.on_peer_read_done(id, eio()),
                OpPurpose::EpochFlush { link_gen, through } => {
                    self.on_epoch_flushed(link_gen, through, eio())
                }
                OpPurpose::ResyncFlush => self.on_resync_flushed(eio()),
                OpPurpose::MdPreflush | OpPurpose::Capacity => {}
                OpPurpose::ReadSuperblock
                | OpPurpose::ReadActivityLog
                | OpPurpose::ReadBitmap { .. }
                | OpPurpose::AlInitialize => {}
            }
        }
        self.disk_errors.abandoning = false;
    }

    /// Advances the pending command, if any.
    pub(crate) fn drive_pending_command(&mut self) {
        let Some((id, pending)) = self.pending.clone() else {
            return;
        };
        let done = match pending {
            Pending::Attach(step) => {
                let done = self.drive_attach(step);
                if done {
                    self.state_changed();
                    self.pending = None;
                    self.finish_command(id, Ok(()));
                    self.handshake_after_attach();
                    return;
                }
                false
            }
            Pending::Primary {
                sb_version,
                approved_on,
            } => {
                let durable = self
                    .disk
                    .as_ref()
                    .is_some_and(|d| d.sb_durable >= sb_version);
                if durable && let Err(e) = self.check_promotion_takes_effect(approved_on) {
                    self.pending = None;
                    // The superblock said "Primary" for the promotion: say the role again.
                    self.update_md_flags();
                    // A peer that agreed to the promotion counts this node as Primary.
                    self.send_state();
                    self.finish_command(id, Err(e));
                    return;
                }
                if durable {
                    self.role = Role::Primary;
                    self.state_changed();
                    // The peer learns the new role (and generation, after a forced or
                    // disconnected promotion) as the kernel tells it: P_UUIDS, P_STATE.
                    if self.link().is_some() {
                        self.send_uuids(0);
                        self.send_state();
                    }
                }
                durable
            }
            Pending::Secondary { sb_version: None } => {
                // DRBD demotes only with nothing on the fly: the device cannot be demoted
                // while open (`device_in_use`: a request in flight counts), so no write
                // accepted while Primary sets bits after start_secondary's write-out (they
                // would have to be on disk before the superblock stops saying Primary: a
                // crash loses them, apply-al replays only with MDF_PRIMARY_IND).
                // Writes the peer has not confirmed (protocol A/B, or C before the barrier
                // ack) are covered by this node's activity log only while its superblock
                // says Primary: the demotion waits for their barrier acks (the epoch closed
                // now), or for the connection loss that marks them out of sync and writes
                // the bitmap. Otherwise a crash of both nodes left a block that differs with
                // no record (swarm seed 1572, protocol A). DRBD's drbd_set_role does not
                // ("FIXME also wait for all pending P_BARRIER_ACK?").
                if self
                    .link()
                    .is_some_and(|l| !l.unconfirmed_writes().is_empty())
                {
                    self.close_epoch();
                    return;
                }
                self.write_dirty_pages();
                if self.bitmap_is_durable() {
                    // The superblock without MDF_PRIMARY_IND ends the AL's cover: its write
                    // waits for a flush of the completed data writes (drive_superblock).
                    self.update_md_flags_for(self.role);
                    let v = self.disk.as_ref().expect("attached").sb_version;
                    self.pending = Some((
                        id,
                        Pending::Secondary {
                            sb_version: Some(v),
                        },
                    ));
                }
                false
            }
            Pending::Secondary {
                sb_version: Some(v),
            } => self.disk.as_ref().is_none_or(|d| d.sb_durable >= v),
            Pending::Detach(step) => self.drive_detach(step),
            Pending::PeerApproval => false,
            Pending::Resize(resize) => {
                // It ends itself (`end_resize`), also for a peer's resize (command id 0).
                self.drive_resize(id, resize);
                return;
            }
        };
        if done && self.pending.as_ref().is_some_and(|(p, _)| *p == id) {
            self.pending = None;
            if id != CommandId(0) {
                self.finish_command(id, Ok(()));
            }
        }
    }

    fn set_detach_step(&mut self, step: DetachStep) {
        if let Some((_, Pending::Detach(s))) = self.pending.as_mut() {
            *s = step;
        }
    }

    fn drive_detach(&mut self, step: DetachStep) -> bool {
        let failed = self.disk_state == DiskState::Failed;
        match step {
            DetachStep::Drain => {
                let busy = self.ops.values().any(|p| {
                    matches!(
                        p,
                        OpPurpose::Request(_)
                            | OpPurpose::AlTransaction
                            | OpPurpose::AlPreflush
                            | OpPurpose::Superblock(_)
                    )
                }) || !self.al_waiting.is_empty();
                if busy {
                    return false;
                }
                if !failed && self.config.mutation == Some(crate::Mutation::SkipBitmapWriteOnDetach)
                {
                    // Mutation: the meta-data is made clean without writing the bitmap.
                    self.set_detach_step(DetachStep::InitializeAl);
                    self.initialize_activity_log();
                    return false;
                }
                // Writes still on their way to the peer: their local part is done, but the
                // peer may yet lose them (a crash before its flush) after this disk is gone,
                // when nothing could mark them any more. The disk's bitmap keeps them, as
                // DRBD's disk keeps them in its activity log, which a detach leaves for
                // apply-al; udrbd re-initialises the ring below, so the bits must be here
                // (swarm seed 269).
                let unconfirmed = self
                    .link()
                    .map(crate::peer::Link::unconfirmed_writes)
                    .unwrap_or_default();
                for (offset, len) in unconfirmed {
                    self.mark_out_of_sync(offset, len);
                }
                if failed {
                    self.last_chance_flush();
                }
                // "Always write the bitmap on detach": also after a failure (best effort).
                self.write_dirty_pages();
                self.set_detach_step(DetachStep::WriteBitmap);
                false
            }
            DetachStep::WriteBitmap => {
                if failed && self.disk_errors.forced {
                    // Force-detached: nothing is waited for; what is in flight is stuck.
                    self.set_detach_step(DetachStep::Release);
                    return self.drive_detach(DetachStep::Release);
                }
                let in_flight = self
                    .disk
                    .as_ref()
                    .is_some_and(|d| !d.pages_in_flight.is_empty());
                if in_flight || (!failed && !self.bitmap_is_durable()) {
                    if !failed {
                        self.write_dirty_pages();
                    }
                    return false;
                }
                if failed {
                    if self.disk_errors.bitmap_write_failed
                        && self.disk_errors.read_error
                        && !self.disk_errors.superblock_write_failed
                    {
                        // The bits of the bad blocks did not reach the disk: the next attach
                        // must sync everything.
                        let d = self.disk.as_mut().expect("attached");
                        d.sb.flags.set(MdFlags::FULL_SYNC, true);
                        d.sb_version += 1;
                        let version = d.sb_version;
                        self.log(
                            LogLevel::Error,
                            "bitmap write-out failed after a read error: setting MDF_FULL_SYNC"
                                .to_string(),
                        );
                        self.set_detach_step(DetachStep::FullSyncSuperblock { version });
                        return false;
                    }
                    self.set_detach_step(DetachStep::Release);
                    return self.drive_detach(DetachStep::Release);
                }
                // Re-initialising the ring ends the AL's cover of completed writes.
                if !self.md_preflushed(crate::engine::MdWriter::AlReinit) {
                    return false;
                }
                self.set_detach_step(DetachStep::InitializeAl);
                self.initialize_activity_log();
                false
            }
            DetachStep::FullSyncSuperblock { version } => {
                let written = self.disk.as_ref().is_some_and(|d| d.sb_durable >= version);
                let in_flight = self.disk.as_ref().is_some_and(|d| d.sb_in_flight);
                let gave_up = self.disk_errors.superblock_write_failed && !in_flight;
                if !(written || gave_up || self.disk_errors.forced) {
                    return false;
                }
                self.set_detach_step(DetachStep::Release);
                self.drive_detach(DetachStep::Release)
            }
            DetachStep::InitializeAl | DetachStep::Superblock { .. } if failed => {
                // The disk failed during the clean part of a detach (disk-timeout or
                // `detach --force` on a frozen disk, an error of the ring or superblock
                // write): no clean meta-data can be written any more (meta-data IO stops
                // while Failed), so waiting for it would hang the detach. The disk is
                // released as after any failure.
                self.set_detach_step(DetachStep::Release);
                self.drive_detach(DetachStep::Release)
            }
            DetachStep::InitializeAl => {
                if self.ops.values().any(|p| *p == OpPurpose::AlInitialize) {
                    return false;
                }
                // Clean: magic 08 and AL_CLEAN, as drbdmeta leaves meta-data.
                self.update_md_flags();
                let d = self.disk.as_mut().expect("attached");
                d.sb.magic = Magic::V08;
                d.sb.flags.set(MdFlags::AL_CLEAN, true);
                d.sb_version += 1;
                let version = d.sb_version;
                self.set_detach_step(DetachStep::Superblock { version });
                false
            }
            DetachStep::Superblock { version } => {
                if self.disk.as_ref().is_some_and(|d| d.sb_durable < version) {
                    return false;
                }
                self.drive_detach(DetachStep::Release)
            }
            DetachStep::Release => {
                let md_in_flight = self
                    .ops
                    .values()
                    .any(|p| matches!(p, OpPurpose::BitmapPage(_) | OpPurpose::Superblock(_)));
                // Unless force-detached, every outstanding operation is waited for, as DRBD
                // waits for all local references (§5.4: normal failures do not abort
                // in-flight IO): retiring a peer write or an epoch flush here would drop its
                // completion, so the peer would never get its (neg-)ack or barrier ack and
                // would wait for ko-count x timeout. No new local IO starts during a detach
                // (`local_disk_writable`) but what was accepted before, so this ends.
                let waiting = md_in_flight || !self.ops.is_empty() || !self.peer_writes.is_empty();
                if waiting && !self.disk_errors.forced {
                    return false;
                }
                // No resync state without a disk (DRBD's sanitize_state: "abort resync if
                // a disk fails/detaches"), whatever started one during the detach.
                self.abort_resync();
                self.retire_generation();
                // Every data write that completed here is durable (a successful flush
                // covered it), or the peer's writes among them must not be acked as such.
                let covered = self
                    .disk
                    .as_ref()
                    .is_some_and(|d| d.flushed_through >= d.data_writes_done);
                self.disk = None;
                self.forget_activity_log_references();
                self.disk_state = DiskState::Diskless;
                self.state_changed();
                self.send_state();
                self.recv_epochs_after_disk_loss(covered);
                true
            }
        }
    }
}

impl Resource {
    /// Writes the whole ring as create-md does (every block INITIALIZED), with FUA.
    fn initialize_activity_log(&mut self) {
        let d = self.disk.as_ref().expect("attached");
        let ring = initialized_ring(d.layout.al.ring_blocks());
        self.write_activity_log_ring(ring);
    }

    /// Writes `ring`, the whole activity-log ring, at its place, with FUA.
    pub(crate) fn write_activity_log_ring(&mut self, ring: Bytes) {
        let offset = self.disk.as_ref().expect("attached").layout.al_byte();
        self.submit(
            OpPurpose::AlInitialize,
            DiskArea::ActivityLog,
            offset,
            DiskOpKind::Write {
                data: ring,
                fua: true,
            },
        );
    }
}

/// The ring as create-md writes it: every block an INITIALIZED transaction.
fn initialized_ring(blocks: u64) -> Bytes {
    let one = AlTransaction::initialized().encode();
    let mut ring = Vec::with_capacity((blocks * BLOCK_4K) as usize);
    for _ in 0..blocks {
        ring.extend_from_slice(&one[..]);
    }
    Bytes::from(ring)
}
