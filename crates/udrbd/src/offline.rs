//! The offline meta-data commands, mirroring drbdmeta for format v08: `create-md`, `dump-md`,
//! `get-gi`, `show-gi`, `set-gi`, `apply-al`, `restore-md`, `dstate`.
//!
//! Every command validates everything it will write before it writes anything (a bad input
//! leaves the device untouched), writes the bitmap and activity log before the superblock, and
//! syncs before it returns. Results go to `out`; warnings to `warn` (a successful command
//! without warnings writes nothing there).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use udrbd_meta::activity_log::{self, AlBlockError, AlTransaction, ReplayOutcome};
use udrbd_meta::dump::{self, BitmapRenderer, DumpParseError};
use udrbd_meta::gi;
use udrbd_meta::layout::{LayoutError, bm_bytes_for};
use udrbd_meta::superblock::{
    BM_BYTES_PER_BIT, DRBDMETA_AL_NR_EXTENTS, LayoutMismatch, MD_MAGIC_07, SuperblockError,
};
use udrbd_meta::{
    AlGeometry, BLOCK_4K, Layout, Magic, MdFlags, MetaDiskKind, Superblock, human_size_kib,
};

use crate::exit_code::ExitCode;
use crate::meta_io::{Access, AlignedBuf, DeviceError, MetaDevice};

/// Bitmap IO chunk: large enough to stream quickly, small enough to keep memory flat.
const BITMAP_CHUNK: usize = 4 << 20;

/// Where the meta-data is: a device and a `meta-disk` kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaTarget {
    /// The device holding the meta-data (the backing disk for internal meta-data).
    pub device: PathBuf,
    /// Internal, flexible external or indexed.
    pub kind: MetaDiskKind,
}

/// Why an offline command failed; each maps to an [`ExitCode`].
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// Opening or doing IO on the device.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The device cannot hold meta-data of this shape.
    #[error("{}: {source}", .path.display())]
    Layout {
        /// The device.
        path: PathBuf,
        /// Why.
        source: LayoutError,
    },
    /// No v08 superblock where it should be.
    #[error("{}: at byte {offset}: {source}", .path.display())]
    NoMetaData {
        /// The device.
        path: PathBuf,
        /// Where the superblock was expected.
        offset: u64,
        /// What was found instead.
        source: SuperblockError,
    },
    /// A superblock whose offsets do not fit the device.
    #[error("{}: {source}", .path.display())]
    Mismatch {
        /// The device.
        path: PathBuf,
        /// The differing field.
        source: LayoutMismatch,
    },
    /// Reading the dump file.
    #[error("{}: {source}", .path.display())]
    DumpFile {
        /// The dump file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A syntax error in the dump file.
    #[error("{}:{}:{}: {} (found {found})", .path.display(), .source.line, .source.column, .source.kind)]
    DumpSyntax {
        /// The dump file.
        path: PathBuf,
        /// Line, column and kind.
        source: DumpParseError,
        /// The offending text.
        found: String,
    },
    /// `create-md` / `restore-md` found something it must not destroy without `--force`.
    #[error("{}: refusing to overwrite: {what} (use --force to overwrite)", .path.display())]
    WouldOverwrite {
        /// The device.
        path: PathBuf,
        /// What is there.
        what: String,
    },
    /// `dump-md` on unclean meta-data.
    #[error("{}: Found meta data is \"unclean\", please apply-al first (or dump-md --force)", .path.display())]
    Unclean {
        /// The device.
        path: PathBuf,
    },
    /// `apply-al` with PRIMARY_IND set and no usable log.
    #[error("{}: {what}; the node was Primary, so its activity log is needed: nothing was replayed or written", .path.display())]
    ActivityLogUnusable {
        /// The device.
        path: PathBuf,
        /// drbdmeta's message.
        what: &'static str,
    },
    /// A bad argument value.
    #[error("{0}")]
    InvalidValue(String),
    /// Writing the output.
    #[error("writing output: {0}")]
    Output(io::Error),
}

impl OfflineError {
    /// The exit code for this error.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            OfflineError::Device(DeviceError::NotFound(_)) => ExitCode::NotFound,
            OfflineError::Device(DeviceError::NotADevice { .. }) => ExitCode::NotADevice,
            OfflineError::Device(DeviceError::Busy(_)) => ExitCode::Busy,
            OfflineError::Device(DeviceError::Io { .. }) => ExitCode::Io,
            OfflineError::Device(DeviceError::ShortRead { .. }) => ExitCode::LayoutMismatch,
            OfflineError::Layout { source, .. } => match source {
                LayoutError::DeviceTooSmall { .. } => ExitCode::TooSmall,
                _ => ExitCode::InvalidValue,
            },
            OfflineError::NoMetaData { source, .. } => match source {
                SuperblockError::V07 | SuperblockError::V09 => ExitCode::UnsupportedVersion,
                SuperblockError::Truncated => ExitCode::LayoutMismatch,
                _ => ExitCode::NoMetaData,
            },
            OfflineError::Mismatch { .. } => ExitCode::LayoutMismatch,
            OfflineError::DumpFile { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                ExitCode::NotFound
            }
            OfflineError::DumpFile { .. } => ExitCode::Io,
            OfflineError::DumpSyntax { source, .. } if source.is_truncation() => {
                ExitCode::DumpTruncated
            }
            OfflineError::DumpSyntax { .. } => ExitCode::DumpSyntax,
            OfflineError::WouldOverwrite { .. } => ExitCode::WouldOverwrite,
            OfflineError::Unclean { .. } => ExitCode::Unclean,
            OfflineError::ActivityLogUnusable { .. } => ExitCode::ActivityLogUnusable,
            OfflineError::InvalidValue(_) => ExitCode::InvalidValue,
            OfflineError::Output(_) => ExitCode::Io,
        }
    }
}

fn out_err(e: io::Error) -> OfflineError {
    OfflineError::Output(e)
}

/// A device with its meta-data read and checked.
pub struct Loaded {
    /// The open device.
    pub device: MetaDevice,
    /// The layout recomputed from the device size and the stored AL geometry.
    pub layout: Layout,
    /// The superblock.
    pub superblock: Superblock,
}

/// Opens `target` and reads its superblock; checks the stored offsets against the device.
pub fn load(target: &MetaTarget, access: Access) -> Result<Loaded, OfflineError> {
    let device = MetaDevice::open(&target.device, access)?;
    let path = target.device.clone();
    let offset =
        Layout::superblock_byte_for(target.kind, device.size_bytes()).map_err(|source| {
            OfflineError::Layout {
                path: path.clone(),
                source,
            }
        })?;
    let block = device.read_at(offset, BLOCK_4K as usize)?;
    let superblock = match Superblock::decode(&block) {
        Ok(sb) => sb,
        Err(SuperblockError::WrongMagic(magic)) => {
            return Err(probe_v07(&device, target.kind, &path).unwrap_or(
                OfflineError::NoMetaData {
                    path,
                    offset,
                    source: SuperblockError::WrongMagic(magic),
                },
            ));
        }
        Err(source) => {
            return Err(OfflineError::NoMetaData {
                path,
                offset,
                source,
            });
        }
    };
    let layout = Layout::for_kind(target.kind, device.size_bytes(), superblock.al_geometry())
        .map_err(|source| OfflineError::Layout {
            path: path.clone(),
            source,
        })?;
    superblock
        .check_layout(&layout)
        .map_err(|source| OfflineError::Mismatch { path, source })?;
    Ok(Loaded {
        device,
        layout,
        superblock,
    })
}

/// DRBD 0.7 kept internal meta-data in the last 128 MiB of the device, its magic at byte 28
/// of that area: name it instead of reporting a wrong magic.
fn probe_v07(device: &MetaDevice, kind: MetaDiskKind, path: &Path) -> Option<OfflineError> {
    const V07_RESERVED: u64 = 128 << 20;
    if kind != MetaDiskKind::Internal {
        return None;
    }
    let end = device.size_bytes() / 4096 * 4096;
    let offset = end.checked_sub(V07_RESERVED).filter(|&o| o > 0)?;
    let block = device.read_at(offset, BLOCK_4K as usize).ok()?;
    (u32::from_be_bytes(block[28..32].try_into().ok()?) == MD_MAGIC_07).then(|| {
        OfflineError::NoMetaData {
            path: path.to_path_buf(),
            offset,
            source: SuperblockError::V07,
        }
    })
}

impl Loaded {
    fn write_superblock(&self, sb: &Superblock) -> Result<(), OfflineError> {
        let block = AlignedBuf::from_slice(&sb.encode()[..]);
        self.device
            .write_at(self.layout.superblock_byte(), &block)?;
        self.device.sync()?;
        Ok(())
    }

    /// The last agreed size, clipped to what the device can hold (as drbdmeta clips it).
    fn la_size_sect(&self, warn: &mut dyn Write) -> Result<u64, OfflineError> {
        let la = self.superblock.la_size_sect;
        let clipped = self.layout.clip_la_size(la);
        if clipped != la {
            writeln!(
                warn,
                "la-size-sect was too big ({la}), truncated ({clipped})!"
            )
            .map_err(out_err)?;
        }
        Ok(clipped)
    }
}

/// Options of `create-md`.
#[derive(Clone, Copy, Debug)]
pub struct CreateOptions {
    /// AL geometry.
    pub al: AlGeometry,
    /// Overwrite existing meta-data or signatures.
    pub force: bool,
    /// `la_peer_max_bio_size` to store (drbdmeta's `--peer-max-bio-size`, default 0).
    pub peer_max_bio_size: u32,
}

/// `create-md`: zeroed bitmap, INITIALIZED activity log, a fresh superblock.
pub fn create_md(
    target: &MetaTarget,
    opts: CreateOptions,
    out: &mut dyn Write,
) -> Result<(), OfflineError> {
    let device = MetaDevice::open(&target.device, Access::Write)?;
    let layout = Layout::for_kind(target.kind, device.size_bytes(), opts.al).map_err(|source| {
        OfflineError::Layout {
            path: target.device.clone(),
            source,
        }
    })?;
    if !opts.force {
        refuse_existing(&device, &layout)?;
    }
    writeln!(out, "initializing activity log").map_err(out_err)?;
    write_zeroes(&device, layout.bm_byte(), layout.bm_area_bytes())?;
    write_initialized_al(&device, &layout)?;
    writeln!(out, "Writing meta data...").map_err(out_err)?;
    let sb = Superblock::new_created(&layout, opts.peer_max_bio_size);
    let block = AlignedBuf::from_slice(&sb.encode()[..]);
    device.write_at(layout.superblock_byte(), &block)?;
    device.sync()?;
    writeln!(out, "New drbd meta data block successfully created.").map_err(out_err)?;
    Ok(())
}

/// Refuses when the device holds meta-data (any version) or a file-system or partition
/// signature.
fn refuse_existing(device: &MetaDevice, layout: &Layout) -> Result<(), OfflineError> {
    let refuse = |what: String| OfflineError::WouldOverwrite {
        path: device.path().to_path_buf(),
        what,
    };
    let block = device.read_at(layout.superblock_byte(), BLOCK_4K as usize)?;
    match Superblock::decode(&block) {
        Ok(_) => {
            return Err(refuse(format!(
                "valid v08 meta-data found at byte {}",
                layout.superblock_byte()
            )));
        }
        Err(SuperblockError::V07 | SuperblockError::V09) => {
            return Err(refuse(format!(
                "{} found at byte {}",
                Superblock::decode(&block).unwrap_err(),
                layout.superblock_byte()
            )));
        }
        Err(_) => {
            if let Some(v07) = probe_v07(device, layout.kind, device.path()) {
                return Err(refuse(v07.to_string()));
            }
        }
    }
    // Signatures live in the first 68 KiB (btrfs at 64 KiB + 64 is the farthest).
    let head_len = (device.size_bytes().min(72 * 1024) / 4096 * 4096) as usize;
    if head_len > 0 {
        let head = device.read_at(0, head_len)?;
        if let Some((name, at)) = find_signature(&head) {
            return Err(refuse(format!("{name} signature found at byte {at}")));
        }
    }
    Ok(())
}

/// Known file-system, volume and partition-table signatures: (name, offset, bytes).
const SIGNATURES: &[(&str, usize, &[u8])] = &[
    ("ext2/3/4 file system", 1080, &[0x53, 0xEF]),
    ("XFS file system", 0, b"XFSB"),
    ("btrfs file system", 65_600, b"_BHRfS_M"),
    ("swap space", 4086, b"SWAPSPACE2"),
    ("swap space", 4086, b"SWAP-SPACE"),
    ("LVM2 physical volume", 512, b"LABELONE"),
    ("LUKS volume", 0, b"LUKS\xba\xbe"),
    ("GPT partition table", 512, b"EFI PART"),
    ("ISO 9660 file system", 32_769, b"CD001"),
    ("squashfs file system", 0, b"hsqs"),
    ("DOS partition table or boot sector", 510, &[0x55, 0xAA]),
];

fn find_signature(head: &[u8]) -> Option<(&'static str, usize)> {
    SIGNATURES
        .iter()
        .find(|(_, at, magic)| head.get(*at..*at + magic.len()) == Some(*magic))
        .map(|&(name, at, _)| (name, at))
}

fn write_zeroes(device: &MetaDevice, offset: u64, len: u64) -> Result<(), OfflineError> {
    let chunk = AlignedBuf::zeroed(BITMAP_CHUNK);
    let mut done = 0;
    while done < len {
        let n = (len - done).min(BITMAP_CHUNK as u64) as usize;
        if n == BITMAP_CHUNK {
            device.write_at(offset + done, &chunk)?;
        } else {
            device.write_at(offset + done, &AlignedBuf::zeroed(n.next_multiple_of(512)))?;
        }
        done += n as u64;
    }
    Ok(())
}

fn write_initialized_al(device: &MetaDevice, layout: &Layout) -> Result<(), OfflineError> {
    let blocks = layout.al.ring_blocks();
    let one = AlTransaction::initialized().encode();
    let mut ring = AlignedBuf::zeroed((blocks * BLOCK_4K) as usize);
    for b in 0..blocks as usize {
        ring[b * BLOCK_4K as usize..(b + 1) * BLOCK_4K as usize].copy_from_slice(&one[..]);
    }
    device.write_at(layout.al_byte(), &ring)?;
    Ok(())
}

/// `dump-md`: the text of drbdmeta, streamed from the device.
pub fn dump_md(
    target: &MetaTarget,
    force: bool,
    header_comments: &[String],
    out: &mut dyn Write,
    warn: &mut dyn Write,
) -> Result<(), OfflineError> {
    let loaded = load(target, Access::Read)?;
    if !loaded.superblock.is_clean() {
        if !force {
            return Err(OfflineError::Unclean {
                path: target.device.clone(),
            });
        }
        writeln!(
            warn,
            "Found meta data is \"unclean\", please apply-al first"
        )
        .map_err(out_err)?;
    }
    let la = loaded.la_size_sect(warn)?;
    let mut sb = loaded.superblock;
    sb.la_size_sect = la;
    let bm_bytes = bm_bytes_for(la);
    dump::write_header(out, header_comments, &loaded.layout, &sb, bm_bytes).map_err(out_err)?;
    let mut renderer = BitmapRenderer::new(out);
    let mut words = Vec::with_capacity(BITMAP_CHUNK / 8);
    // A reader thread keeps the next chunk coming while this one is rendered: the dump is
    // bound by IO, and two 4 MiB buffers keep memory flat.
    let device = &loaded.device;
    let bm_start = loaded.layout.bm_byte();
    std::thread::scope(|scope| -> Result<(), OfflineError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<AlignedBuf, DeviceError>>(1);
        scope.spawn(move || {
            let mut done = 0u64;
            while done < bm_bytes {
                let n = (bm_bytes - done).min(BITMAP_CHUNK as u64) as usize;
                let chunk = device.read_at(bm_start + done, n);
                let failed = chunk.is_err();
                if tx.send(chunk).is_err() || failed {
                    return;
                }
                done += n as u64;
            }
        });
        for chunk in rx {
            let buf = chunk?;
            words.clear();
            words.extend(
                buf.chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))),
            );
            renderer.push(&words).map_err(out_err)?;
        }
        Ok(())
    })?;
    renderer.finish().map_err(out_err)?;
    Ok(())
}

/// `get-gi`.
pub fn get_gi(target: &MetaTarget, out: &mut dyn Write) -> Result<(), OfflineError> {
    let l = load(target, Access::Read)?;
    writeln!(
        out,
        "{}",
        gi::get_gi(&l.superblock.uuids, l.superblock.flags)
    )
    .map_err(out_err)
}

/// `show-gi`.
pub fn show_gi(
    target: &MetaTarget,
    out: &mut dyn Write,
    warn: &mut dyn Write,
) -> Result<(), OfflineError> {
    let l = load(target, Access::Read)?;
    let la = l.la_size_sect(warn)?;
    let sb = &l.superblock;
    write!(
        out,
        "{}",
        gi::show_gi(&sb.uuids, sb.flags, la, sb.la_peer_max_bio_size)
    )
    .map_err(out_err)
}

/// `dstate`.
pub fn dstate(target: &MetaTarget, out: &mut dyn Write) -> Result<(), OfflineError> {
    let l = load(target, Access::Read)?;
    writeln!(out, "{}", gi::dstate(l.superblock.flags)).map_err(out_err)
}

/// `set-gi GI`: prints the old and new lines and writes the superblock (magic and bits not
/// named in GI are kept).
pub fn set_gi(target: &MetaTarget, gi_text: &str, out: &mut dyn Write) -> Result<(), OfflineError> {
    let l = load(target, Access::Write)?;
    let old = l.superblock;
    let (uuids, flags) = gi::apply_set_gi(gi_text, old.uuids, old.flags)
        .map_err(|e| OfflineError::InvalidValue(format!("set-gi: {e}")))?;
    writeln!(out, "previously {}", gi::get_gi(&old.uuids, old.flags)).map_err(out_err)?;
    writeln!(out, "set GI to  {}", gi::get_gi(&uuids, flags)).map_err(out_err)?;
    let new = Superblock {
        uuids,
        flags,
        ..old
    };
    l.write_superblock(&new)
}

/// `apply-al`: replays the activity log into the bitmap exactly as drbdmeta does
/// (drbd-v08-facts.md §3.4), re-initialises the ring and marks the meta-data clean.
pub fn apply_al(
    target: &MetaTarget,
    out: &mut dyn Write,
    warn: &mut dyn Write,
) -> Result<(), OfflineError> {
    let l = load(target, Access::Write)?;
    let sb = l.superblock;
    let geometry = l.layout.al;
    let ring = read_al_ring(&l)?;
    let replay = activity_log::replay(&ring, geometry, sb.magic == Magic::V84Unclean);
    for w in &replay.warnings {
        writeln!(warn, "{w}").map_err(out_err)?;
    }
    let primary = sb.flags.has(MdFlags::PRIMARY_IND);
    let reinitialize = match &replay.outcome {
        ReplayOutcome::Legacy => {
            writeln!(out, "No usable activity log found.").map_err(out_err)?;
            true
        }
        ReplayOutcome::NoUsableLog | ReplayOutcome::NoValidUpdate => {
            let what = if replay.outcome == ReplayOutcome::NoUsableLog {
                "No usable activity log found. Do you need to create-md?"
            } else {
                "No valid AL update transaction found."
            };
            if primary {
                return Err(OfflineError::ActivityLogUnusable {
                    path: target.device.clone(),
                    what,
                });
            }
            writeln!(warn, "{what}").map_err(out_err)?;
            writeln!(warn, "Error ignored, no need to apply the AL").map_err(out_err)?;
            true
        }
        ReplayOutcome::Initialized => false,
        ReplayOutcome::Active { extents, .. } => {
            if primary {
                let la = l.la_size_sect(warn)?;
                mark_extents_out_of_sync(&l, extents, la, out, warn)?;
            }
            true
        }
    };
    if reinitialize {
        write_initialized_al(&l.device, &l.layout)?;
        l.device.sync()?;
    }
    if !sb.is_clean() {
        let mut clean = sb;
        clean.magic = Magic::V08;
        clean.flags.set(MdFlags::AL_CLEAN, true);
        l.write_superblock(&clean)?;
    }
    Ok(())
}

fn read_al_ring(l: &Loaded) -> Result<Vec<Result<AlTransaction, AlBlockError>>, OfflineError> {
    let blocks = l.layout.al.ring_blocks();
    let raw = l
        .device
        .read_at(l.layout.al_byte(), (blocks * BLOCK_4K) as usize)?;
    Ok((0..blocks)
        .map(|p| {
            let b = l.layout.al.block_of_position(p) as usize * BLOCK_4K as usize;
            AlTransaction::decode(&raw[b..b + BLOCK_4K as usize])
        })
        .collect())
}

/// Sets the 128 bitmap bytes of every hot extent inside `bm_bytes(la)`, block by block.
fn mark_extents_out_of_sync(
    l: &Loaded,
    extents: &std::collections::BTreeSet<u32>,
    la_size_sect: u64,
    out: &mut dyn Write,
    warn: &mut dyn Write,
) -> Result<(), OfflineError> {
    if extents.is_empty() {
        writeln!(out, "Nothing to do.").map_err(out_err)?;
        return Ok(());
    }
    let bm_bytes = bm_bytes_for(la_size_sect);
    let extent_bytes = activity_log::BITS_PER_AL_EXTENT / 8;
    let mut newly_set = 0u64;
    let mut block: Option<(u64, AlignedBuf)> = None;
    for &e in extents {
        let start = u64::from(e) * extent_bytes;
        if start >= bm_bytes {
            writeln!(
                warn,
                "extent {e} beyond end of bitmap! ({start} >= {bm_bytes})"
            )
            .map_err(out_err)?;
            continue;
        }
        let end = (start + extent_bytes).min(bm_bytes);
        let block_nr = start / BLOCK_4K;
        if block.as_ref().is_none_or(|(nr, _)| *nr != block_nr) {
            if let Some((nr, buf)) = block.take() {
                l.device
                    .write_at(l.layout.bm_byte() + nr * BLOCK_4K, &buf)?;
            }
            let buf = l
                .device
                .read_at(l.layout.bm_byte() + block_nr * BLOCK_4K, BLOCK_4K as usize)?;
            block = Some((block_nr, buf));
        }
        let (_, buf) = block.as_mut().expect("block loaded");
        let base = (block_nr * BLOCK_4K) as usize;
        for byte in &mut buf[start as usize - base..end as usize - base] {
            newly_set += u64::from(byte.count_zeros());
            *byte = 0xFF;
        }
    }
    if let Some((nr, buf)) = block {
        l.device
            .write_at(l.layout.bm_byte() + nr * BLOCK_4K, &buf)?;
    }
    l.device.sync()?;
    writeln!(
        out,
        "Marked additional {} as out-of-sync based on AL.",
        human_size_kib(newly_set * 4)
    )
    .map_err(out_err)
}

/// Options of `restore-md`.
#[derive(Clone, Copy, Debug, Default)]
pub struct RestoreOptions {
    /// AL geometry overriding the dump's (`--al-stripes`/`--al-stripe-size-kB`).
    pub al_override: Option<AlGeometry>,
    /// Overwrite valid meta-data.
    pub force: bool,
}

/// `restore-md FILE`: parses a dump and writes its superblock and bitmap (the AL is not
/// touched, as in drbdmeta).
pub fn restore_md(
    target: &MetaTarget,
    dump_path: &Path,
    opts: RestoreOptions,
    out: &mut dyn Write,
    warn: &mut dyn Write,
) -> Result<(), OfflineError> {
    let text = std::fs::read_to_string(dump_path).map_err(|source| OfflineError::DumpFile {
        path: dump_path.to_path_buf(),
        source,
    })?;
    let device = MetaDevice::open(&target.device, Access::Write)?;
    // Parse against the largest bitmap the default geometry allows; re-checked below.
    let probe = Layout::for_kind(target.kind, device.size_bytes(), AlGeometry::DEFAULT).map_err(
        |source| OfflineError::Layout {
            path: target.device.clone(),
            source,
        },
    )?;
    let parsed = dump::parse_dump(&text, probe.bm_area_bytes() / 8).map_err(|source| {
        let found = text
            .get(source.span.0..source.span.1)
            .unwrap_or("")
            .to_string();
        OfflineError::DumpSyntax {
            path: dump_path.to_path_buf(),
            found: if found.is_empty() {
                "end of file".into()
            } else {
                format!("'{found}'")
            },
            source,
        }
    })?;
    let al = match opts.al_override {
        Some(al) => al,
        None => {
            let g = AlGeometry::from_superblock(parsed.al_stripes, parsed.al_stripe_size_4k);
            g.validate().map_err(|source| OfflineError::Layout {
                path: target.device.clone(),
                source,
            })?;
            g
        }
    };
    let layout = Layout::for_kind(target.kind, device.size_bytes(), al).map_err(|source| {
        OfflineError::Layout {
            path: target.device.clone(),
            source,
        }
    })?;
    if parsed.words.len() as u64 * 8 > layout.bm_area_bytes() {
        return Err(OfflineError::InvalidValue(format!(
            "{}: the dump's bitmap ({} bytes) is larger than the device's bitmap area ({} bytes)",
            dump_path.display(),
            parsed.words.len() * 8,
            layout.bm_area_bytes()
        )));
    }
    if !opts.force {
        let block = device.read_at(layout.superblock_byte(), BLOCK_4K as usize)?;
        if Superblock::decode(&block).is_ok() {
            return Err(OfflineError::WouldOverwrite {
                path: target.device.clone(),
                what: format!(
                    "valid v08 meta-data found at byte {}",
                    layout.superblock_byte()
                ),
            });
        }
    }
    // drbdmeta restores only the bitmap that covers la-size-sect.
    let la_size_sect = layout.clip_la_size(parsed.la_size_sect);
    let covered_words = (bm_bytes_for(la_size_sect) / 8) as usize;
    let words = if parsed.words.len() > covered_words {
        writeln!(warn, "Bitmap info too large, truncated!").map_err(out_err)?;
        &parsed.words[..covered_words]
    } else {
        &parsed.words[..]
    };
    write_words(&device, &layout, words)?;
    let sb = Superblock {
        magic: Magic::V08,
        la_size_sect,
        uuids: udrbd_meta::GenerationUuids::from_array(parsed.uuids),
        device_uuid: parsed.device_uuid,
        flags: MdFlags(parsed.flags),
        md_size_sect: layout.md_size_sect as u32,
        al_offset: layout.al_offset_sect as i32,
        al_nr_extents: DRBDMETA_AL_NR_EXTENTS,
        bm_offset: layout.bm_offset_sect as i32,
        bm_bytes_per_bit: BM_BYTES_PER_BIT,
        la_peer_max_bio_size: parsed.la_peer_max_bio_size as u32,
        al_stripes: al.stripes,
        al_stripe_size_4k: al.stripe_size_4k,
    };
    device.write_at(
        layout.superblock_byte(),
        &AlignedBuf::from_slice(&sb.encode()[..]),
    )?;
    device.sync()?;
    writeln!(out, "Successfully restored meta data").map_err(out_err)
}

/// Writes bitmap words from the start of the bitmap area; the last sector is zero-padded and
/// the rest of its 4 KiB block is kept.
fn write_words(device: &MetaDevice, layout: &Layout, words: &[u64]) -> Result<(), OfflineError> {
    for (chunk_nr, chunk) in words.chunks(BITMAP_CHUNK / 8).enumerate() {
        let offset = layout.bm_byte() + (chunk_nr * BITMAP_CHUNK) as u64;
        let len = (chunk.len() * 8).next_multiple_of(BLOCK_4K as usize);
        let mut buf = if chunk.len() * 8 == len {
            AlignedBuf::zeroed(len)
        } else {
            // Read-modify-write the last block: keep what lies past the restored sectors.
            let mut b = AlignedBuf::zeroed(len);
            let tail = len - BLOCK_4K as usize;
            let old = device.read_at(offset + tail as u64, BLOCK_4K as usize)?;
            let keep_from = (chunk.len() * 8).next_multiple_of(512) - tail;
            b[tail + keep_from..].copy_from_slice(&old[keep_from..]);
            b
        };
        for (i, w) in chunk.iter().enumerate() {
            buf[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        device.write_at(offset, &buf)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        let mut head = vec![0u8; 72 * 1024];
        assert_eq!(find_signature(&head), None);
        head[1080] = 0x53;
        head[1081] = 0xEF;
        assert_eq!(find_signature(&head), Some(("ext2/3/4 file system", 1080)));
        let mut head = vec![0u8; 4096];
        head[510] = 0x55;
        head[511] = 0xAA;
        assert_eq!(find_signature(&head).unwrap().1, 510);
    }
}
