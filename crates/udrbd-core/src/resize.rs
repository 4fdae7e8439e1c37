//! Online resize (`resize`, DRBD's drbd_adm_resize and drbd_determine_dev_size): the backing
//! device grew, the meta-data follows it, and the device grows to what both disks can hold.
//!
//! The flow, as in DRBD 8.4:
//! 1. `resize` asks the backing device for its size ([`DiskOpKind::Capacity`]); so does a node
//!    whose connected peer announces a larger disk (the kernel reads its size live).
//! 2. Internal meta-data lives at the end of the backing device, so a grown device moves it:
//!    the superblock is written at the new end first, with MDF_FULL_SYNC|MDF_AL_DISABLED, then
//!    every bitmap page, then the activity-log ring, then the superblock with the flags it had.
//! 3. The device size is the smaller of the two disks (or this disk alone, StandAlone with
//!    `--assume-peer-has-space`). The initiator sends P_SIZES with c_size 0, which makes the
//!    peer answer with its own; a device that grew while Connected resyncs the new part from
//!    the Primary (DRBD's resync_after_online_grow), unless `--assume-clean`.
//!
//! Invariants:
//! - data IO goes on throughout: the new meta-data area lies past the old data area (a grow
//!   of less than 4 KiB changes nothing), and the data area grows only once the size is agreed
//!   and durable (`Disk::grow_pending`);
//! - nothing is written at the new place before the superblock that names it with
//!   MDF_FULL_SYNC is durable: a crash in between finds the old meta-data or none (as DRBD), a
//!   crash after it a full sync;
//! - no activity-log transaction is written between the switch and the ring's rewrite, which
//!   carries the whole active set (the in-memory log, with its references, is kept);
//! - MDF_FULL_SYNC is cleared only once every bitmap page and the ring are durable there.

use udrbd_meta::layout::{Layout, MetaDiskKind};
use udrbd_meta::superblock::MdFlags;

use crate::engine::{AlWriter, OpPurpose, Pending, Resource};
use crate::state::{CommandError, ConnState, DiskState, Role};
use crate::types::{CommandId, DiskArea, DiskError, DiskOpKind, LogLevel};

/// P_SIZES dds_flags: the initiator grows StandAlone (`--assume-peer-has-space`).
pub(crate) const DDSF_FORCED: u16 = 1;
/// P_SIZES dds_flags: the new part needs no resync (`--assume-clean`).
pub(crate) const DDSF_NO_RESYNC: u16 = 2;

/// A user size (sectors) in whole 4 KiB blocks, at least one; 0 (no limit) stays 0.
pub(crate) fn whole_blocks(user_size_sect: u64) -> u64 {
    match user_size_sect {
        0 => 0,
        s => (s & !7).max(8),
    }
}

/// Where a resize is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResizeStep {
    /// The backing device is asked for its size.
    Capacity,
    /// The meta-data moves to `layout`: waiting until no meta-data write is in flight.
    Quiesce { layout: Layout, usable_sect: u64 },
    /// The superblock at the new place, with MDF_FULL_SYNC|MDF_AL_DISABLED (this version).
    FirstSuperblock { version: u64 },
    /// Every bitmap page at the new place.
    Bitmap,
    /// The activity-log ring at the new place.
    ActivityLog,
    /// The superblock with its own flags again (this version).
    LastSuperblock { version: u64 },
}

/// A resize under way: `Pending::Resize`. `initiator` for the `resize` command (its id is
/// the pending one); a resize a peer's P_SIZES started runs under command id 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Resize {
    pub(crate) step: ResizeStep,
    pub(crate) dds_flags: u16,
    pub(crate) initiator: bool,
    /// MDF_FULL_SYNC and MDF_AL_DISABLED as they were before the move.
    pub(crate) kept_flags: u32,
    /// What the disk could hold when the resize started (sectors).
    pub(crate) usable_before: u64,
    /// The user size the resize sets (sectors, 0: no limit; `--size`, or the current one).
    pub(crate) user_size: u64,
}

impl Resource {
    /// `resize [--assume-peer-has-space] [--assume-clean]`: DRBD's checks, then the backing
    /// device's size is asked for.
    pub(crate) fn start_resize(
        &mut self,
        dds_flags: u16,
        user_size: u64,
    ) -> Result<Option<Pending>, CommandError> {
        if self.disk.is_none() || self.disk_state < DiskState::Inconsistent {
            return Err(CommandError::NoDiskConfig);
        }
        let peer = self.peer.as_ref().map(|p| (p.conn, p.peer_role));
        if peer.is_some_and(|(conn, _)| conn > ConnState::Connected) {
            return Err(CommandError::ResizeDuringResync);
        }
        if self.role == Role::Secondary
            && peer
                .is_some_and(|(conn, role)| conn == ConnState::Connected && role == Role::Secondary)
        {
            return Err(CommandError::ResizeNeedsPrimary);
        }
        Ok(Some(Pending::Resize(
            self.measure_disk(dds_flags, true, user_size),
        )))
    }

    /// A connected peer's P_SIZES names a disk larger than this one: this backing device may
    /// have grown as well (DRBD reads its size at every P_SIZES). Returns false when no
    /// resize can start now (another command, an attach negotiating, a failed disk): the
    /// sizes are then taken as they are.
    pub(crate) fn start_peer_resize(&mut self, dds_flags: u16) -> bool {
        if self.pending.is_some()
            || self.attach_negotiation.is_some()
            || self.disk.is_none()
            || self.disk_state < DiskState::Inconsistent
        {
            return false;
        }
        let user_size = self.user_size_in_force();
        let resize = self.measure_disk(dds_flags, false, user_size);
        self.pending = Some((CommandId(0), Pending::Resize(resize)));
        true
    }

    /// Asks the backing device for its size: the first step of a resize.
    fn measure_disk(&mut self, dds_flags: u16, initiator: bool, user_size: u64) -> Resize {
        self.submit(OpPurpose::Capacity, DiskArea::Data, 0, DiskOpKind::Capacity);
        Resize {
            step: ResizeStep::Capacity,
            dds_flags,
            initiator,
            kept_flags: 0,
            usable_before: self.disk.as_ref().map_or(0, |d| d.usable_sect),
            user_size,
        }
    }

    fn resize_state(&self) -> Option<(CommandId, Resize)> {
        match self.pending {
            Some((id, Pending::Resize(r))) => Some((id, r)),
            _ => None,
        }
    }

    fn set_resize_step(&mut self, step: ResizeStep) {
        if let Some((_, Pending::Resize(r))) = self.pending.as_mut() {
            r.step = step;
        }
    }

    /// Whether bitmap pages wait: the superblock that names the new place is not yet durable.
    pub(crate) fn resize_holds_bitmap(&self) -> bool {
        matches!(
            self.resize_state(),
            Some((_, r)) if matches!(r.step, ResizeStep::FirstSuperblock { .. })
        )
    }

    /// Whether no activity-log transaction may be written: between the switch and the
    /// ring's rewrite at the new place.
    pub(crate) fn resize_holds_activity_log(&self) -> bool {
        matches!(
            self.resize_state(),
            Some((_, r)) if matches!(
                r.step,
                ResizeStep::FirstSuperblock { .. } | ResizeStep::Bitmap | ResizeStep::ActivityLog
            )
        )
    }

    /// Whether no new activity-log transaction may be prepared: also while the resize waits
    /// for the one under way.
    pub(crate) fn resize_holds_new_al_transactions(&self) -> bool {
        self.resize_holds_activity_log()
            || matches!(
                self.resize_state(),
                Some((_, r)) if matches!(r.step, ResizeStep::Quiesce { .. })
            )
    }

    /// The backing device's size came (8 bytes, little-endian), or could not be read.
    pub(crate) fn on_capacity(&mut self, result: Result<Option<bytes::Bytes>, DiskError>) {
        let Some((id, resize)) = self.resize_state() else {
            return;
        };
        let bytes = match result {
            Ok(Some(b)) if b.len() == 8 => u64::from_le_bytes(b[..].try_into().expect("8 bytes")),
            _ => return self.end_resize(id, resize, Err(CommandError::BackingSizeUnknown)),
        };
        let d = self.disk.as_ref().expect("a resize keeps its disk");
        let layout = match d.layout.kind {
            MetaDiskKind::Internal => {
                match Layout::internal(bytes, d.layout.al) {
                    Ok(l) => l,
                    Err(e) => {
                        self.log(
                        LogLevel::Error,
                        format!("resize: no meta-data layout for a backing device of {bytes} bytes: {e}"),
                    );
                        return self.end_resize(id, resize, Err(CommandError::ImplicitShrink));
                    }
                }
            }
            // External meta-data stays where it is; the bitmap it holds limits the data.
            MetaDiskKind::FlexExternal | MetaDiskKind::Indexed(_) => d.layout,
        };
        let usable_sect = layout.max_data_sect.min(bytes / 512) & !7;
        // A device may shrink only to an explicit user size (`--size`), never because its
        // backing device did (DRBD's ERR_IMPLICIT_SHRINK); internal meta-data never moves
        // down, over data.
        let keep = match resize.user_size {
            0 => d.size_sect,
            user => user.min(d.size_sect),
        };
        if usable_sect < keep || layout.md_offset_sect < d.layout.md_offset_sect {
            self.log(
                LogLevel::Error,
                format!(
                    "the backing device shrank ({} < {} sectors): implicit shrink not allowed",
                    usable_sect, keep
                ),
            );
            return self.end_resize(id, resize, Err(CommandError::ImplicitShrink));
        }
        if layout == d.layout {
            let d = self.disk.as_mut().expect("attached");
            d.usable_sect = d.usable_sect.max(usable_sect);
            return self.end_resize(id, resize, Ok(()));
        }
        // The new meta-data lies past everything the data area holds now.
        assert!(
            layout.bm_byte().min(layout.al_byte()) >= d.usable_sect * 512,
            "moved meta-data overlaps the data area"
        );
        self.set_resize_step(ResizeStep::Quiesce {
            layout,
            usable_sect,
        });
    }

    /// Advances a resize; called from `drive_pending_command`.
    pub(crate) fn drive_resize(&mut self, id: CommandId, resize: Resize) {
        match resize.step {
            ResizeStep::Capacity => {}
            ResizeStep::Quiesce {
                layout,
                usable_sect,
            } => {
                let d = self.disk.as_ref().expect("attached");
                let quiet = matches!(d.al_writer, AlWriter::Idle)
                    && d.pages_in_flight.is_empty()
                    && !d.sb_in_flight
                    && !self.ops.values().any(|p| *p == OpPurpose::AlInitialize);
                if quiet {
                    self.move_meta_data(resize, layout, usable_sect);
                }
            }
            ResizeStep::FirstSuperblock { version } => {
                if self.disk.as_ref().is_some_and(|d| d.sb_durable >= version) {
                    self.set_resize_step(ResizeStep::Bitmap);
                    self.write_dirty_pages();
                }
            }
            ResizeStep::Bitmap => {
                // Every page written at the new place once (pages dirtied since go out with
                // the lazy write-out, as anywhere).
                let d = self.disk.as_ref().expect("attached");
                if d.owed_pages.is_empty() && d.owed_pages_in_flight.is_empty() {
                    self.set_resize_step(ResizeStep::ActivityLog);
                    self.rewrite_activity_log();
                } else {
                    self.write_dirty_pages();
                }
            }
            ResizeStep::ActivityLog => {
                if self.ops.values().any(|p| *p == OpPurpose::AlInitialize) {
                    return;
                }
                let d = self.disk.as_mut().expect("attached");
                let moved = MdFlags::FULL_SYNC | MdFlags::AL_DISABLED;
                d.sb.flags = MdFlags((d.sb.flags.0 & !moved) | resize.kept_flags);
                d.sb_version += 1;
                let version = d.sb_version;
                self.set_resize_step(ResizeStep::LastSuperblock { version });
            }
            ResizeStep::LastSuperblock { version } => {
                if self.disk.as_ref().is_some_and(|d| d.sb_durable >= version) {
                    self.end_resize(id, resize, Ok(()));
                }
            }
        }
    }

    /// The switch: from now on every meta-data write goes to `layout`. The bitmap covers the
    /// new data area (new bits clear: a grow of the device marks what it adds).
    fn move_meta_data(&mut self, resize: Resize, layout: Layout, usable_sect: u64) {
        let d = self.disk.as_mut().expect("attached");
        let old_usable = d.usable_sect;
        d.layout = layout;
        d.usable_sect = usable_sect;
        d.bitmap = d
            .bitmap
            .resized(usable_sect.div_ceil(udrbd_meta::SECTORS_PER_BIT), false);
        // All of them dirty: each owed to the new place.
        d.owed_pages = (0..d.bitmap.pages()).collect();
        d.owed_pages_in_flight.clear();
        d.sb.set_layout(&layout);
        let moved = MdFlags::FULL_SYNC | MdFlags::AL_DISABLED;
        let kept_flags = d.sb.flags.0 & moved;
        d.sb.flags = MdFlags(d.sb.flags.0 | moved);
        d.sb_version += 1;
        let version = d.sb_version;
        if let Some((_, Pending::Resize(r))) = self.pending.as_mut() {
            *r = Resize {
                step: ResizeStep::FirstSuperblock { version },
                kept_flags,
                ..resize
            };
        }
        self.log(
            LogLevel::Info,
            format!(
                "Writing the whole bitmap, md moved (backing device {old_usable} -> {usable_sect} usable sectors)"
            ),
        );
    }

    /// Writes the whole ring at its new place: the active set as it is, then empty blocks.
    fn rewrite_activity_log(&mut self) {
        let d = self.disk.as_mut().expect("attached");
        let ring = bytes::Bytes::from(d.al.restart_ring());
        self.write_activity_log_ring(ring);
    }

    /// The local part of a resize is over: the sizes are agreed again, and the command (if
    /// any) ends.
    fn end_resize(&mut self, id: CommandId, resize: Resize, result: Result<(), CommandError>) {
        self.pending = None;
        if resize.initiator {
            // The size changes only with the connection idle or gone: a connection that came
            // up while the disk was measured (or the meta-data moved) offered the old size
            // in its handshake, and its bitmap exchange and resync cover that. Changing it
            // under them left the device smaller than what the resync covered, and the
            // target never finished (a swarm run's `resize --size` ending mid-handshake).
            let link_busy = self.link().is_some()
                && self
                    .peer
                    .as_ref()
                    .is_some_and(|p| p.conn != ConnState::Connected);
            let result = match result {
                Ok(()) if link_busy => {
                    self.log(
                        LogLevel::Warn,
                        "resize: a connection is being set up or resyncing; the size stays"
                            .to_string(),
                    );
                    Err(CommandError::ResizeDuringResync)
                }
                other => other,
            };
            if result.is_ok() {
                if let Some(d) = self.disk.as_mut() {
                    d.user_size_sect = resize.user_size;
                }
                self.resize_determine_size(resize.dds_flags);
            }
            self.finish_command(id, result);
        } else {
            // Only on the connection that asked, idle: a new connection's handshake took
            // the sizes already (this disk's new size goes with the next one), and a size
            // that changed under a bitmap exchange or a resync would not match it.
            let connected = self.link().is_some_and(|l| l.handshake_done)
                && self
                    .peer
                    .as_ref()
                    .is_some_and(|p| p.conn == ConnState::Connected);
            let sizes = self.link().and_then(|l| l.peer_sizes).filter(|_| connected);
            let measured = self
                .disk
                .as_ref()
                .is_some_and(|d| d.usable_sect != resize.usable_before);
            if let Some(sizes) = sizes {
                // The peer's sizes are taken now; a disk that grew answers with its own.
                if let Err(e) = self.apply_peer_sizes(sizes, measured) {
                    self.protocol_error(e);
                }
            }
        }
        self.state_changed();
    }

    /// The initiator's drbd_determine_dev_size after its disk was measured: the smaller of
    /// the two disks while connected; StandAlone the last agreed size, or the whole disk
    /// with `--assume-peer-has-space`. Connected, P_UUIDS and P_SIZES (c_size 0: the peer
    /// answers) go to the peer.
    fn resize_determine_size(&mut self, dds_flags: u16) {
        let connected = self
            .peer
            .as_ref()
            .is_some_and(|p| p.conn == ConnState::Connected);
        let d = self.disk.as_ref().expect("attached");
        let (usable, current) = (d.usable_sect, d.size_sect);
        let peer_disk = self
            .link()
            .and_then(|l| l.peer_sizes)
            .map_or(0, |s| s.d_size);
        let size = if connected && peer_disk != 0 {
            usable.min(peer_disk)
        } else if dds_flags & DDSF_FORCED != 0 {
            self.log(
                LogLevel::Warn,
                "Resize while not connected was forced by the user!".to_string(),
            );
            usable
        } else {
            current
        };
        // The user size caps it; an explicit one below the device shrinks it (DRBD has the
        // admin shrink the file system first; requests past the new end fail).
        let user_size = self.user_size_in_force();
        let size = self.capped_by_user_size(size, user_size);
        let grew = size > current;
        if size != current {
            self.set_device_size(size, dds_flags & DDSF_NO_RESYNC == 0);
        }
        if connected {
            if let Some(link) = self.peer.as_mut().and_then(|p| p.link.as_mut()) {
                link.agreed_size_sect = size;
                link.resize_pending = Some(grew);
            }
            self.send_uuids(0);
            self.send_sizes_flags(true, dds_flags);
        }
    }

    /// The attached disk's user size in force (sectors; 0: none, or no disk).
    pub(crate) fn user_size_in_force(&self) -> u64 {
        self.disk.as_ref().map_or(0, |d| d.user_size_sect)
    }

    /// `size` capped by a user size `user` (sectors, 0: none), as DRBD's drbd_new_dev_size: a
    /// user size larger than what the disks allow is an error logged, and the disks' size
    /// stays.
    pub(crate) fn capped_by_user_size(&mut self, size: u64, user: u64) -> u64 {
        if user == 0 || user == size {
            return size;
        }
        if user > size {
            self.log(
                LogLevel::Error,
                format!("Requested disk size is too big ({user} > {size})"),
            );
            return size;
        }
        user
    }

    /// The device grows (or shrinks, within what a peer agreed) to `size` sectors, recorded
    /// in the superblock (la_size_sect) before writes past the old end go to the disk. A
    /// grown part is marked out of sync unless `mark_new` is false (`--assume-clean`).
    pub(crate) fn set_device_size(&mut self, size: u64, mark_new: bool) {
        let d = self.disk.as_mut().expect("attached");
        let current = d.size_sect;
        if size == current {
            return;
        }
        d.size_sect = size;
        d.sb.la_size_sect = size;
        d.sb_version += 1;
        // Until this version is durable, the superblock on disk says the size a grow
        // started from (an earlier grow's, if that is still being written): writes past
        // it wait (`within_durable_size`). A shrink to within it needs no wait.
        let durable_size = d.grow_pending.map_or(current, |(old, _)| old);
        d.grow_pending = (size > durable_size).then_some((durable_size, d.sb_version));
        if size > current && mark_new {
            // Grown: what the device did not cover may differ between the disks (DRBD's
            // drbd_bm_resize with set_new_bits): the resync brings it. Those bits are
            // durable before the grown size is (`Disk::owed_pages`).
            self.mark_out_of_sync(current * 512, (size - current) * 512);
            let d = self.disk.as_mut().expect("attached");
            let bits =
                current / udrbd_meta::SECTORS_PER_BIT..size.div_ceil(udrbd_meta::SECTORS_PER_BIT);
            // A clean page not being written holds its bits on disk already; a clean one
            // in flight carries them.
            for page in d.bitmap.pages_of(bits) {
                if d.bitmap.is_dirty(page) {
                    d.owed_pages.insert(page);
                } else if d.pages_in_flight.contains(&page) {
                    d.owed_pages_in_flight.insert(page);
                }
            }
            self.write_dirty_pages();
        }
        self.log(
            LogLevel::Info,
            format!("size of the device: {current} -> {size} sectors"),
        );
    }

    /// DRBD's resync_after_online_grow: the device grew while Connected, so its new part
    /// is resynced, from the Primary (between two Secondaries, from the node that resolves
    /// conflicts); the other side waits for the source's P_SYNC_UUID.
    pub(crate) fn resync_after_online_grow(&mut self) {
        let Some(p) = self.peer.as_ref() else { return };
        if p.conn != ConnState::Connected
            || p.peer_disk < DiskState::Inconsistent
            || self.disk_state < DiskState::Inconsistent
        {
            return;
        }
        let source = if self.role != p.peer_role {
            self.role == Role::Primary
        } else {
            self.link().is_some_and(|l| l.resolve_conflicts)
        };
        self.log(
            LogLevel::Info,
            "Resync of new storage after online grow".to_string(),
        );
        if source {
            self.start_resync_source();
        } else {
            self.set_conn(ConnState::WfSyncUuid);
        }
    }

    /// Checks that a resize under way is consistent.
    pub(crate) fn resize_invariants(&self) {
        let Some((id, r)) = self.resize_state() else {
            return;
        };
        assert!(
            r.initiator || id == CommandId(0),
            "a peer's resize runs under command id 0"
        );
        let d = self.disk.as_ref().expect("a resize keeps its disk");
        assert!(d.size_sect <= d.usable_sect, "device larger than its disk");
        if matches!(
            r.step,
            ResizeStep::FirstSuperblock { .. } | ResizeStep::Bitmap | ResizeStep::ActivityLog
        ) {
            let moved = MdFlags::FULL_SYNC | MdFlags::AL_DISABLED;
            assert_eq!(
                d.sb.flags.0 & moved,
                moved,
                "the meta-data moves without MDF_FULL_SYNC|MDF_AL_DISABLED"
            );
            assert!(
                matches!(d.al_writer, AlWriter::Idle),
                "an activity-log transaction while the meta-data moves"
            );
        }
    }
}
