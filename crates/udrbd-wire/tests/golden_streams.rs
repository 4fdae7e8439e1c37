//! Whole byte streams of two kernel 8.4.11 nodes (tests/golden/*.bin, cut from the captures in
//! /work/shared/reference/captures by tests/golden/extract.py): every packet must deframe,
//! decode, and encode back to exactly the bytes the kernel sent; the bitmap packets must be
//! exactly what [`BitmapSender`] produces for the bitmap they carry.
// The test reads its fixtures from disk; the library itself stays free of file IO.
#![allow(clippy::disallowed_methods)]

use std::path::Path;

use bytes::Bytes;
use udrbd_meta::Bitmap;
use udrbd_wire::{
    AfterSbPolicy, AlgName, BitmapProgress, BitmapReceiver, BitmapSender, BlockId, Command,
    ConnState, DecodeContext, Deframer, DiskState, DpFlags, FeatureFlags, Frame, HeaderFormat,
    Packet, Role, StateField, WireProtocol,
};

/// Bits of the 8 MiB test device's bitmap (16304 sectors).
const BITS: u64 = 2038;

struct Decoded {
    frames: Vec<Frame>,
    /// (start, end) of every frame in the stream.
    spans: Vec<(usize, usize)>,
    /// The header format each frame was decoded with.
    formats: Vec<HeaderFormat>,
}

fn read(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.bin"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Follows the connection's protocol as the engine will: 8-byte headers until the first
/// P_INITIAL_META (meta socket) or the peer's P_CONNECTION_FEATURES (data socket), h100 after;
/// a 4-byte integrity digest once P_PROTOCOL named crc32c. `chunks` cuts the input.
fn deframe(bytes: &[u8], chunks: &mut dyn Iterator<Item = usize>) -> Decoded {
    let starts_short = bytes.starts_with(&[0x83, 0x74, 0x02, 0x67]);
    let format = if starts_short {
        HeaderFormat::Short
    } else {
        HeaderFormat::Long
    };
    let mut deframer = Deframer::new(DecodeContext::new(format));
    let mut out = Decoded {
        frames: Vec::new(),
        spans: Vec::new(),
        formats: Vec::new(),
    };
    let (mut pushed, mut consumed) = (0usize, 0usize);
    loop {
        let format = deframer.context().format();
        match deframer.next_frame().expect("kernel bytes decode") {
            Some(frame) => {
                let end = pushed - deframer.buffered();
                out.spans.push((consumed, end));
                consumed = end;
                match &frame.packet {
                    Packet::InitialMeta | Packet::ConnectionFeatures(_) => {
                        deframer.set_header_format(HeaderFormat::for_agreed_version(101));
                    }
                    Packet::Protocol(p) if p.integrity_alg == Some(alg("crc32c")) => {
                        deframer.set_integrity_digest_len(4);
                    }
                    _ => {}
                }
                out.formats.push(format);
                out.frames.push(frame);
            }
            None if pushed == bytes.len() => break,
            None => {
                let n = chunks
                    .next()
                    .unwrap_or(usize::MAX)
                    .min(bytes.len() - pushed);
                deframer.push(&bytes[pushed..pushed + n]);
                pushed += n;
            }
        }
    }
    assert_eq!(deframer.buffered(), 0, "stream ends at a packet boundary");
    assert_eq!(consumed, bytes.len());
    out
}

fn alg(name: &str) -> AlgName {
    AlgName::new(name.as_bytes()).unwrap()
}

/// Decodes a fixture and checks that every packet re-encodes to its exact bytes.
fn golden(name: &str) -> Vec<Packet> {
    let bytes = read(name);
    let decoded = deframe(&bytes, &mut std::iter::repeat(bytes.len()));
    for ((frame, &(start, end)), &format) in decoded
        .frames
        .iter()
        .zip(&decoded.spans)
        .zip(&decoded.formats)
    {
        let encoded = frame.packet.encode(frame.volume, format).unwrap();
        assert_eq!(
            encoded.to_vec(),
            &bytes[start..end],
            "{name}: {:?} at byte {start} re-encodes differently",
            frame.packet.command()
        );
        assert_eq!(frame.volume, 0);
    }
    // Cut at every 7th byte: same frames.
    let cut = deframe(&bytes, &mut std::iter::repeat(7));
    assert_eq!(cut.frames, decoded.frames);
    decoded.frames.into_iter().map(|f| f.packet).collect()
}

fn count(packets: &[Packet], command: Command) -> usize {
    packets
        .iter()
        .filter(|p| p.command() == Some(command))
        .count()
}

const ALL: &[&str] = &[
    "s1-c2-meta-AtoB",
    "s1-c2-meta-BtoA",
    "s1-c3-data-BtoA",
    "s1-c3-data-AtoB-head",
    "s1-c3-data-AtoB-writes",
    "s1-c3-data-AtoB-tail",
    "s1-c6-data-AtoB",
    "s1-c6-data-BtoA",
    "s1-c7-meta-BtoA",
    "s1-c7-meta-AtoB",
    "s1-c10-data-AtoB",
    "s1-c10-data-BtoA",
    "s2-c1-data-AtoB",
    "s2-c1-data-BtoA",
    "s2-c2-meta-BtoA",
    "s3-c1-data-AtoB",
    "s3-c1-data-BtoA",
    "s3-c2-meta-AtoB",
    "s3-c5-data-AtoB",
    "s3-c5-data-BtoA",
];

#[test]
fn every_captured_packet_round_trips_byte_for_byte() {
    let mut total = 0;
    let mut seen = std::collections::BTreeSet::new();
    for name in ALL {
        let packets = golden(name);
        total += packets.len();
        seen.extend(packets.iter().filter_map(Packet::command));
    }
    assert!(total > 900, "{total} packets");
    // Every command the captures contain.
    for c in [
        Command::InitialData,
        Command::InitialMeta,
        Command::ConnectionFeatures,
        Command::AuthChallenge,
        Command::AuthResponse,
        Command::Protocol,
        Command::SyncParam89,
        Command::Sizes,
        Command::Uuids,
        Command::State,
        Command::StateChgReq,
        Command::StateChgReply,
        Command::ConnStChgReq,
        Command::ConnStChgReply,
        Command::Ping,
        Command::PingAck,
        Command::Data,
        Command::UnplugRemote,
        Command::WriteAck,
        Command::Barrier,
        Command::BarrierAck,
        Command::Bitmap,
        Command::CompressedBitmap,
        Command::SyncUuid,
        Command::RsDataRequest,
        Command::RsDataReply,
        Command::RsWriteAck,
        Command::OvRequest,
        Command::OvReply,
        Command::OvResult,
        Command::CsumRsRequest,
    ] {
        assert!(seen.contains(&c), "no {c} in the golden streams");
    }
}

#[test]
fn s1_first_handshake_values() {
    let p = golden("s1-c3-data-BtoA");
    assert_eq!(p[0], Packet::InitialData);
    let Packet::ConnectionFeatures(f) = &p[1] else {
        panic!("{:?}", p[1])
    };
    assert_eq!(
        (f.protocol_min, f.feature_flags, f.protocol_max),
        (86, FeatureFlags(0xf), 101)
    );
    let Packet::Protocol(proto) = &p[2] else {
        panic!()
    };
    assert_eq!(proto.protocol, WireProtocol::C);
    assert_eq!(proto.after_sb_0p, AfterSbPolicy::Disconnect);
    assert_eq!(proto.integrity_alg, Some(AlgName::NONE));
    let Packet::SyncParam89(sp) = &p[3] else {
        panic!()
    };
    assert_eq!(sp.resync_rate, 250);
    assert!(sp.verify_alg.is_empty() && sp.csums_alg.is_empty());
    let c = sp.controller.unwrap();
    assert_eq!(
        (
            c.c_plan_ahead,
            c.c_delay_target,
            c.c_fill_target,
            c.c_max_rate
        ),
        (20, 10, 100, 102400)
    );
    let Packet::Sizes(s) = &p[4] else { panic!() };
    assert_eq!((s.d_size, s.u_size, s.c_size), (16304, 0, 16304));
    assert_eq!(s.max_bio_size, 130560);
    let q = s.queue_limits.unwrap();
    assert_eq!(
        (q.physical_block_size, q.logical_block_size, q.io_min),
        (4096, 512, 4096)
    );
    let Packet::Uuids(u) = &p[5] else { panic!() };
    assert_eq!((u.current, u.bitmap, u.bits_set, u.flags), (4, 0, 2038, 0));
    let Packet::State(st) = &p[6] else { panic!() };
    assert_eq!(
        st.to_string(),
        "Secondary/Unknown WFConnection Inconsistent/DUnknown"
    );
    let Packet::State(st) = &p[7] else { panic!() };
    assert_eq!(
        (st.conn, st.pdsk),
        (ConnState::Connected, DiskState::Inconsistent)
    );
    // B answers the sync handshake as WFBitMapT and sends the all-set compressed bitmap.
    let Packet::State(st) = &p[9] else { panic!() };
    assert_eq!((st.peer, st.conn), (Role::Primary, ConnState::WfBitMapT));
    let Packet::RsDataRequest(r) = &p[11] else {
        panic!("{:?}", p[11])
    };
    assert_eq!(
        (r.sector, r.block_id, r.blksize),
        (0, BlockId::SYNCER, 28672)
    );
}

#[test]
fn s1_writes_and_acks() {
    let p = golden("s1-c3-data-AtoB-writes");
    let Packet::Data(d) = &p[0] else { panic!() };
    assert_eq!(d.header.sector, 80);
    assert_eq!(d.header.block_id, BlockId(0x0027_ea02_148e_ffff));
    assert_eq!(d.header.seq_num, 1);
    assert_eq!(
        d.header.dp_flags,
        DpFlags::RW_SYNC | DpFlags::SEND_WRITE_ACK
    );
    assert!(d.digest.is_empty());
    assert_eq!(d.data.len(), 4096);
    assert_eq!(p[1], Packet::UnplugRemote);
    let Packet::Barrier(b) = &p[2] else { panic!() };
    assert_eq!(b.barrier, 0);
    let Packet::Barrier(b) = &p[4] else { panic!() };
    // A little-endian counter on the wire: 01000000.
    assert_eq!(b.barrier, 0x0100_0000);

    let meta = golden("s1-c2-meta-BtoA");
    let acks: Vec<_> = meta
        .iter()
        .filter_map(|p| match p {
            Packet::WriteAck(a) => Some(*a),
            _ => None,
        })
        .collect();
    // The first write ack: sector 80, the P_DATA's cookie echoed, seq 185 (after 184
    // P_RS_WRITE_ACKs on the same counter).
    assert_eq!(acks[0].sector, 80);
    assert_eq!(acks[0].block_id, d.header.block_id);
    assert_eq!((acks[0].blksize, acks[0].seq_num), (4096, 185));
    assert!(count(&meta, Command::RsWriteAck) > 150);
    assert!(
        meta.contains(&Packet::StateChgReply(udrbd_wire::StateChangeReply {
            retcode: 1
        }))
    );

    let tail = golden("s1-c3-data-AtoB-tail");
    let Packet::ConnStChgReq(req) = &tail[6] else {
        panic!("{:?}", tail[6])
    };
    assert_eq!(req.mask.0, StateField::Conn.mask());
    assert_eq!(
        req.val.field(StateField::Conn),
        ConnState::Disconnecting as u32
    );
    let Packet::Uuids(u) = &tail[7] else { panic!() };
    assert_eq!(u.current, 0x5E6F_9DC7_AA6A_A66D);
    assert_eq!(u.bitmap, 0x8F39_FFA6_0F11_E129);
}

/// Feeds the bitmap packets of a stream to a receiver, then checks that a sender fed the
/// received bitmap produces the very same packets.
fn bitmap_exchange(name: &str, use_rle: bool) -> Bitmap {
    let packets = golden(name);
    let bitmap_packets: Vec<&Packet> = packets
        .iter()
        .filter(|p| matches!(p, Packet::Bitmap(_) | Packet::CompressedBitmap(_)))
        .collect();
    let mut bitmap = Bitmap::new(BITS);
    let mut receiver = BitmapReceiver::new(BITS, HeaderFormat::Long);
    for (i, p) in bitmap_packets.iter().enumerate() {
        let progress = receiver.receive(p, &mut bitmap).unwrap();
        let last = i + 1 == bitmap_packets.len();
        assert_eq!(progress == BitmapProgress::Done, last, "{name} packet {i}");
    }
    let mut sender = BitmapSender::new(BITS, HeaderFormat::Long, use_rle);
    let mut sent = Vec::new();
    while let Some(p) = sender.next_packet(&bitmap) {
        sent.push(p);
    }
    let expected: Vec<Packet> = bitmap_packets.into_iter().cloned().collect();
    assert_eq!(
        sent, expected,
        "{name}: sender output differs from the kernel's"
    );
    bitmap
}

fn set_bits(bitmap: &Bitmap) -> Vec<u64> {
    (0..BITS).filter(|&b| bitmap.test(b)).collect()
}

#[test]
fn s1_plain_bitmap_ends_with_an_empty_packet() {
    for name in ["s1-c6-data-AtoB", "s1-c6-data-BtoA"] {
        let bitmap = bitmap_exchange(name, false);
        let mut expected = vec![1, 300];
        expected.extend(1280..1296);
        expected.push(2037);
        assert_eq!(set_bits(&bitmap), expected, "{name}");
        let packets = golden(name);
        assert_eq!(count(&packets, Command::Bitmap), 2);
    }
}

#[test]
fn s1_compressed_bitmaps() {
    let all = bitmap_exchange("s1-c3-data-BtoA", true);
    assert_eq!(all.count(), BITS);
    for name in ["s1-c10-data-AtoB", "s1-c10-data-BtoA"] {
        let bitmap = bitmap_exchange(name, true);
        assert_eq!(set_bits(&bitmap), [0, 2, 3, 500, 1000, 1001], "{name}");
    }
    // s2 and s3: all-clear, and runs 50 clear, 2 set, 1986 clear.
    assert_eq!(bitmap_exchange("s2-c1-data-AtoB", true).count(), 0);
    assert_eq!(
        set_bits(&bitmap_exchange("s3-c5-data-AtoB", true)),
        [50, 51]
    );
}

#[test]
fn s2_auth_packets() {
    let a = golden("s2-c1-data-AtoB");
    let b = golden("s2-c1-data-BtoA");
    let challenge = |p: &[Packet]| {
        p.iter()
            .find_map(|p| match p {
                Packet::AuthChallenge(c) => Some(c.clone()),
                _ => None,
            })
            .unwrap()
    };
    let response = |p: &[Packet]| {
        p.iter()
            .find_map(|p| match p {
                Packet::AuthResponse(r) => Some(r.clone()),
                _ => None,
            })
            .unwrap()
    };
    assert_eq!(challenge(&a).len(), 64);
    assert_eq!(
        challenge(&b),
        Bytes::from(hex(
            "25c6ac50787d8606206b96aa96d187cbf12b41a4c383a5766d2a53a6b386b264\
             0de539fd5a1b033ace3a62c0e8f55c83a1080db7b912675a7c904c5e53166e3e"
        ))
    );
    assert_eq!(
        response(&a),
        Bytes::from(hex(
            "de67a7d5eaed20a174c22d918924989fbb6db573b3b71a3242dfebcccb4cca55"
        ))
    );
    assert_eq!(response(&b).len(), 32);
}

#[test]
fn s3_integrity_digests_verify_and_csums() {
    let a = golden("s3-c1-data-AtoB");
    let Packet::Protocol(p) = &a[2] else {
        panic!("{:?}", a[2])
    };
    assert_eq!(p.integrity_alg, Some(alg("crc32c")));
    let Packet::SyncParam89(sp) = &a[3] else {
        panic!()
    };
    assert_eq!(
        (sp.verify_alg, sp.csums_alg),
        (alg("crc32c"), alg("crc32c"))
    );
    let data: Vec<_> = a
        .iter()
        .filter_map(|p| match p {
            Packet::Data(d) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(data.len(), 17);
    assert_eq!(data[0].header.sector, 160);
    assert_eq!(data[0].digest.as_bytes(), [0xcb, 0x79, 0x68, 0x2b]);
    assert_eq!(data[0].data.len(), 4096);
    let ov: Vec<_> = a
        .iter()
        .filter_map(|p| match p {
            Packet::OvRequest(r) => Some(r),
            _ => None,
        })
        .collect();
    // Stale send-buffer bytes in the pad (drbd-wire-observed.md difference 3).
    assert_eq!(ov[0].pad, 0x102);
    assert_eq!(ov[0].blksize, 4096);

    let b = golden("s3-c1-data-BtoA");
    let Some(Packet::OvReply(reply)) = b.iter().find(|p| p.command() == Some(Command::OvReply))
    else {
        panic!()
    };
    assert_eq!(reply.digest.as_bytes(), [0xcb, 0x79, 0x68, 0x2b]);
    let meta = golden("s3-c2-meta-AtoB");
    let Some(Packet::OvResult(r)) = meta.iter().find(|p| p.command() == Some(Command::OvResult))
    else {
        panic!()
    };
    assert_eq!(r.block_id, BlockId::IN_SYNC);

    let csum = golden("s3-c5-data-BtoA");
    let Some(Packet::CsumRsRequest(c)) = csum
        .iter()
        .find(|p| p.command() == Some(Command::CsumRsRequest))
    else {
        panic!()
    };
    assert_eq!((c.request.sector, c.request.blksize), (400, 8192));
    assert_eq!(c.digest.as_bytes(), [0x91, 0x5a, 0x91, 0x1a]);
    let reply = golden("s3-c5-data-AtoB");
    let Some(Packet::RsDataReply(d)) = reply
        .iter()
        .find(|p| p.command() == Some(Command::RsDataReply))
    else {
        panic!()
    };
    assert_eq!(d.digest.as_bytes(), [0x3e, 0x8e, 0x53, 0xce]);
    assert_eq!(d.data.len(), 8192);
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
