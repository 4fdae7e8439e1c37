//! The golden vectors of drbd-wire-observed.md ("Golden vectors"), one packet each: decoded
//! to the values the kernel meant, and the values encoded back to the same bytes.

use bytes::Bytes;
use udrbd_wire::{
    AfterSbPolicy, AlgName, Barrier, BarrierAck, BlockAck, BlockId, BlockRequest, CompressedBitmap,
    ConnFlags, ConnectionFeatures, DataHeader, DataPacket, DecodeContext, Deframer, Digest,
    DigestRequest, DpFlags, FeatureFlags, HeaderFormat, Packet, PlainBitmap, ProtocolParams,
    QueueLimits, ResyncController, Sizes, State, StateChange, StateChangeReply, StateWord,
    SyncParams, Uuids, WireProtocol,
};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .collect::<String>();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Decodes `bytes` as one packet (with `digest` bytes of integrity digest), checks it equals
/// `packet`, and that `packet` encodes to `bytes`.
fn check(bytes: &[u8], format: HeaderFormat, digest: usize, packet: Packet) {
    let mut d = Deframer::new(DecodeContext::new(format).with_integrity_digest_len(digest));
    d.push(bytes);
    let frame = d.next_frame().unwrap().expect("one whole packet");
    assert_eq!(d.buffered(), 0);
    assert_eq!(frame.packet, packet);
    assert_eq!(packet.encode(0, format).unwrap().to_vec(), bytes);
}

fn long(h: &str, packet: Packet) {
    check(&hex(h), HeaderFormat::Long, 0, packet);
}

fn ack(sector: u64, block_id: BlockId, blksize: u32, seq_num: u32) -> BlockAck {
    BlockAck {
        sector,
        block_id,
        blksize,
        seq_num,
    }
}

#[test]
fn connection_setup() {
    check(
        &hex("83740267fff20000"),
        HeaderFormat::Short,
        0,
        Packet::InitialData,
    );
    check(
        &hex("83740267fff10000"),
        HeaderFormat::Short,
        0,
        Packet::InitialMeta,
    );
    let mut features = hex("83740267fffe0048 00000056 0000000f 00000065 00000000");
    features.extend([0; 56]);
    check(
        &features,
        HeaderFormat::Short,
        0,
        Packet::ConnectionFeatures(ConnectionFeatures::drbd84(FeatureFlags(0xf))),
    );
}

#[test]
fn handshake_packets() {
    let protocol = |alg: &str| {
        Packet::Protocol(ProtocolParams {
            protocol: WireProtocol::C,
            after_sb_0p: AfterSbPolicy::Disconnect,
            after_sb_1p: AfterSbPolicy::Disconnect,
            after_sb_2p: AfterSbPolicy::Disconnect,
            conn_flags: ConnFlags(0),
            two_primaries: false,
            integrity_alg: Some(AlgName::new(alg.as_bytes()).unwrap()),
        })
    };
    long(
        "8620ec200000000b0000001900000000 00000003 00000000 00000000 00000000 00000000 00000000 00",
        protocol(""),
    );
    long(
        "8620ec200000000b0000001f00000000 00000003 00000000 00000000 00000000 00000000 00000000 \
         63726333326300",
        protocol("crc32c"),
    );
    let mut sync = hex("8620ec20000000230000009400000000 000000fa");
    sync.extend([0; 128]);
    sync.extend(hex("00000014 0000000a 00000064 00019000"));
    check(
        &sync,
        HeaderFormat::Long,
        0,
        Packet::SyncParam89(SyncParams {
            resync_rate: 250,
            verify_alg: AlgName::NONE,
            csums_alg: AlgName::NONE,
            controller: Some(ResyncController {
                c_plan_ahead: 20,
                c_delay_target: 10,
                c_fill_target: 100,
                c_max_rate: 102400,
            }),
        }),
    );
    long(
        "8620ec200000000d0000003800000000 0000000000003fb0 0000000000000000 0000000000003fb0 \
         0001fe00 0000 0000 00001000 00000200 00000000 00001000 00000000 00 00 00 00",
        Packet::Sizes(Sizes {
            d_size: 16304,
            u_size: 0,
            c_size: 16304,
            max_bio_size: 130560,
            queue_order_type: 0,
            dds_flags: 0,
            queue_limits: Some(QueueLimits {
                physical_block_size: 4096,
                logical_block_size: 512,
                alignment_offset: 0,
                io_min: 4096,
                io_opt: 0,
                ..QueueLimits::default()
            }),
        }),
    );
    long(
        "8620ec200000000c0000003000000000 0000000000000004 0000000000000000 0000000000000000 \
         0000000000000000 00000000000007f6 0000000000000000",
        Packet::Uuids(Uuids {
            current: 4,
            bits_set: 2038,
            ..Uuids::default()
        }),
    );
    long(
        "8620ec200000000c0000003000000000 5e6f9dc7aa6aa66d 8f39ffa60f11e129 f357401a95aa6a39 \
         0000000000000004 0000000000000013 0000000000000000",
        Packet::Uuids(Uuids {
            current: 0x5e6f_9dc7_aa6a_a66d,
            bitmap: 0x8f39_ffa6_0f11_e129,
            history: [0xf357_401a_95aa_6a39, 4],
            bits_set: 19,
            flags: 0,
        }),
    );
    long(
        "8620ec200000000e0000000400000000 0000c882",
        Packet::State(State::from_word(StateWord(0xc882)).unwrap()),
    );
    long(
        "8620ec200000000f0000000800000000 f357401a95aa6a39",
        Packet::SyncUuid(0xf357_401a_95aa_6a39),
    );
}

#[test]
fn state_changes_and_pings() {
    let change = |mask, val| StateChange {
        mask: StateWord(mask),
        val: StateWord(val),
    };
    long(
        "8620ec20000000120000000800000000 00001e03 00001001",
        Packet::StateChgReq(change(0x1e03, 0x1001)),
    );
    long(
        "8620ec200000001d0000000400000000 00000001",
        Packet::StateChgReply(StateChangeReply { retcode: 1 }),
    );
    long(
        "8620ec200000002a0000000800000000 000001f0 00000010",
        Packet::ConnStChgReq(change(0x1f0, 0x10)),
    );
    long(
        "8620ec200000002b0000000400000000 00000001",
        Packet::ConnStChgReply(StateChangeReply { retcode: 1 }),
    );
    long("8620ec20000000130000000000000000", Packet::Ping);
    long("8620ec20000000140000000000000000", Packet::PingAck);
    long("8620ec20000000070000000000000000", Packet::UnplugRemote);
    // A refusal travels as a negative s32.
    long(
        "8620ec200000001d0000000400000000 fffffffe",
        Packet::StateChgReply(StateChangeReply { retcode: -2 }),
    );
}

#[test]
fn bitmaps() {
    let compressed = |first_run_set| {
        Packet::CompressedBitmap(CompressedBitmap {
            first_run_set,
            pad_bits: 3,
            code: Bytes::from_static(&[0x3f, 0xc5, 0x06]),
        })
    };
    long(
        "8620ec20000000240000000400000000 b2 3fc506",
        compressed(true),
    );
    long(
        "8620ec20000000240000000400000000 32 3fc506",
        compressed(false),
    );
    long(
        "8620ec20000000040000000000000000",
        Packet::Bitmap(PlainBitmap::default()),
    );
    let mut words = [0u64; 32];
    words[0] = 2;
    words[4] = 0x0000_1000_0000_0000;
    words[20] = 0xffff;
    words[31] = 0x0020_0000_0000_0000;
    let mut bytes = hex("8620ec20000000040000010000000000");
    for w in words {
        bytes.extend(w.to_le_bytes());
    }
    assert_eq!(&bytes[16..24], hex("0200000000000000"));
    check(
        &bytes,
        HeaderFormat::Long,
        0,
        Packet::Bitmap(PlainBitmap::from_words(&words)),
    );
}

#[test]
fn resync() {
    long(
        "8620ec20000000090000001800000000 0000000000000000 ffffffffffffffff 00007000 00000000",
        Packet::RsDataRequest(BlockRequest {
            sector: 0,
            block_id: BlockId::SYNCER,
            blksize: 28672,
            pad: 0,
        }),
    );
    long(
        "8620ec20000000170000001800000000 0000000000000000 ffffffffffffffff 00007000 00000001",
        Packet::RsWriteAck(ack(0, BlockId::SYNCER, 28672, 1)),
    );
    let mut reply =
        hex("8620ec20000000020000701800000000 0000000000000000 ffffffffffffffff 00000000 00000000");
    reply.extend([0; 28672]);
    check(
        &reply,
        HeaderFormat::Long,
        0,
        Packet::RsDataReply(DataPacket {
            header: DataHeader {
                sector: 0,
                block_id: BlockId::SYNCER,
                seq_num: 0,
                dp_flags: DpFlags(0),
            },
            digest: Digest::EMPTY,
            data: Bytes::from(vec![0; 28672]),
        }),
    );
}

#[test]
fn writes() {
    let header = DataHeader {
        sector: 80,
        block_id: BlockId(0x0027_ea02_148e_ffff),
        seq_num: 1,
        dp_flags: DpFlags(0x102),
    };
    let data = Bytes::from((0..4096u32).map(|i| i as u8).collect::<Vec<u8>>());
    let head =
        hex("8620ec20000000000000101800000000 0000000000000050 0027ea02148effff 00000001 00000102");
    let packet = Packet::Data(DataPacket {
        header,
        digest: Digest::EMPTY,
        data: data.clone(),
    });
    let encoded = packet.encode(0, HeaderFormat::Long).unwrap();
    assert_eq!(&encoded.head[..], head, "header segment");
    assert_eq!(encoded.data, data, "data segment is the caller's buffer");
    assert_eq!(encoded.data.as_ptr(), data.as_ptr(), "not copied");
    check(&encoded.to_vec(), HeaderFormat::Long, 0, packet);

    // With data-integrity-alg crc32c: the digest follows p_data and counts in the length.
    let head = hex(
        "8620ec20000000000000101c00000000 00000000000000a0 402cea02148effff 00000001 00000102 \
         cb79682b",
    );
    let packet = Packet::Data(DataPacket {
        header: DataHeader {
            sector: 160,
            block_id: BlockId(0x402c_ea02_148e_ffff),
            ..header
        },
        digest: Digest::new(&[0xcb, 0x79, 0x68, 0x2b]).unwrap(),
        data: data.clone(),
    });
    let encoded = packet.encode(0, HeaderFormat::Long).unwrap();
    assert_eq!(&encoded.head[..], head);
    check(&encoded.to_vec(), HeaderFormat::Long, 4, packet);

    long(
        "8620ec20000000160000001800000000 0000000000000050 0027ea02148effff 00001000 000000b9",
        Packet::WriteAck(ack(80, BlockId(0x0027_ea02_148e_ffff), 4096, 185)),
    );
    long(
        "8620ec20000000030000000800000000 00000000 00000000",
        Packet::Barrier(Barrier { barrier: 0, pad: 0 }),
    );
    long(
        "8620ec200000001c0000000800000000 00000000 00000001",
        Packet::BarrierAck(BarrierAck {
            barrier: 0,
            set_size: 1,
        }),
    );
}

#[test]
fn verify_and_csums() {
    long(
        "8620ec200000001e0000001800000000 0000000000000000 ffffffffffffffff 00001000 00000102",
        Packet::OvRequest(BlockRequest {
            sector: 0,
            block_id: BlockId::SYNCER,
            blksize: 4096,
            pad: 0x102,
        }),
    );
    long(
        "8620ec200000001f0000001c00000000 0000000000000000 ffffffffffffffff 00001000 00000000 \
         cb79682b",
        Packet::OvReply(DigestRequest {
            request: BlockRequest {
                sector: 0,
                block_id: BlockId::SYNCER,
                blksize: 4096,
                pad: 0,
            },
            digest: Digest::new(&[0xcb, 0x79, 0x68, 0x2b]).unwrap(),
        }),
    );
    long(
        "8620ec20000000200000001800000000 0000000000000000 0000000000001267 00001000 00000012",
        Packet::OvResult(ack(0, BlockId::IN_SYNC, 4096, 18)),
    );
    long(
        "8620ec20000000210000001c00000000 0000000000000190 ffffffffffffffff 00002000 00000000 \
         915a911a",
        Packet::CsumRsRequest(DigestRequest {
            request: BlockRequest {
                sector: 400,
                block_id: BlockId::SYNCER,
                blksize: 8192,
                pad: 0,
            },
            digest: Digest::new(&[0x91, 0x5a, 0x91, 0x1a]).unwrap(),
        }),
    );
}

#[test]
fn auth() {
    let challenge = hex(
        "25c6ac50787d8606206b96aa96d187cbf12b41a4c383a5766d2a53a6b386b264\
         0de539fd5a1b033ace3a62c0e8f55c83a1080db7b912675a7c904c5e53166e3e",
    );
    let mut bytes = hex("8620ec20000000100000004000000000");
    bytes.extend(&challenge);
    check(
        &bytes,
        HeaderFormat::Long,
        0,
        Packet::AuthChallenge(Bytes::from(challenge)),
    );
    let response = hex("de67a7d5eaed20a174c22d918924989fbb6db573b3b71a3242dfebcccb4cca55");
    let mut bytes = hex("8620ec20000000110000002000000000");
    bytes.extend(&response);
    check(
        &bytes,
        HeaderFormat::Long,
        0,
        Packet::AuthResponse(Bytes::from(response)),
    );
}
