//! Properties: every packet type round-trips through encode and the deframer; a stream cut at
//! random points yields the same packets; the bitmap exchange reproduces any bitmap, with RLE
//! or without; arbitrary bytes never panic anything.

use bytes::Bytes;
use proptest::prelude::*;
use udrbd_meta::Bitmap;
use udrbd_wire::{
    AfterSbPolicy, AlgName, Barrier, BarrierAck, BitmapProgress, BitmapReceiver, BitmapSender,
    BlockAck, BlockDesc, BlockId, BlockRequest, Command, CompressedBitmap, ConnFlags, ConnState,
    ConnectionFeatures, DataHeader, DataPacket, DecodeContext, Deframer, DelayProbe, Digest,
    DigestRequest, DiskState, DpFlags, FeatureFlags, HeaderFormat, LegacySyncParams, Packet,
    PlainBitmap, ProtocolParams, QueueLimits, ResyncController, Role, Sizes, State, StateChange,
    StateChangeReply, StateWord, SyncParams, Trim, Uuids, WireProtocol, WriteSamePacket,
};

fn alg_name() -> impl Strategy<Value = AlgName> {
    proptest::collection::vec(1u8..=255, 0..=63).prop_map(|b| AlgName::new(&b).unwrap())
}

fn digest(max: usize) -> impl Strategy<Value = Digest> {
    proptest::collection::vec(any::<u8>(), 0..=max).prop_map(|b| Digest::new(&b).unwrap())
}

fn fixed_digest(len: usize) -> impl Strategy<Value = Digest> {
    proptest::collection::vec(any::<u8>(), len).prop_map(|b| Digest::new(&b).unwrap())
}

fn bytes(range: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), range).prop_map(Bytes::from)
}

fn data_header() -> impl Strategy<Value = DataHeader> {
    (any::<u64>(), any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(s, b, q, f)| DataHeader {
        sector: s,
        block_id: BlockId(b),
        seq_num: q,
        dp_flags: DpFlags(f),
    })
}

fn sectors() -> impl Strategy<Value = Bytes> {
    (0usize..=8).prop_flat_map(|n| bytes(n * 512..=n * 512))
}

fn block_ack() -> impl Strategy<Value = BlockAck> {
    (any::<u64>(), any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(s, b, l, q)| BlockAck {
        sector: s,
        block_id: BlockId(b),
        blksize: l,
        seq_num: q,
    })
}

fn block_request() -> impl Strategy<Value = BlockRequest> {
    (any::<u64>(), any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(s, b, l, p)| BlockRequest {
        sector: s,
        block_id: BlockId(b),
        blksize: l,
        pad: p,
    })
}

fn block_desc() -> impl Strategy<Value = BlockDesc> {
    (any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(s, l, p)| BlockDesc {
        sector: s,
        blksize: l,
        pad: p,
    })
}

fn state() -> impl Strategy<Value = State> {
    (
        prop::sample::select(Role::ALL.to_vec()),
        prop::sample::select(Role::ALL.to_vec()),
        prop::sample::select(ConnState::ALL.to_vec()),
        prop::sample::select(DiskState::ALL.to_vec()),
        prop::sample::select(DiskState::ALL.to_vec()),
        any::<[bool; 6]>(),
    )
        .prop_map(|(role, peer, conn, disk, pdsk, f)| State {
            role,
            peer,
            conn,
            disk,
            pdsk,
            susp: f[0],
            aftr_isp: f[1],
            peer_isp: f[2],
            user_isp: f[3],
            susp_nod: f[4],
            susp_fen: f[5],
        })
}

fn protocol() -> impl Strategy<Value = ProtocolParams> {
    let policy = || prop::sample::select(AfterSbPolicy::ALL.to_vec());
    (
        prop::sample::select(vec![WireProtocol::A, WireProtocol::B, WireProtocol::C]),
        policy(),
        policy(),
        policy(),
        any::<u32>(),
        any::<bool>(),
        prop::option::of(alg_name()),
    )
        .prop_map(|(protocol, a0, a1, a2, cf, two, alg)| ProtocolParams {
            protocol,
            after_sb_0p: a0,
            after_sb_1p: a1,
            after_sb_2p: a2,
            conn_flags: ConnFlags(cf),
            two_primaries: two,
            integrity_alg: alg,
        })
}

fn sizes() -> impl Strategy<Value = Sizes> {
    (
        any::<[u64; 3]>(),
        any::<u32>(),
        any::<[u16; 2]>(),
        prop::option::of((any::<[u32; 5]>(), any::<[u8; 4]>())),
    )
        .prop_map(|(s, m, q, l)| Sizes {
            d_size: s[0],
            u_size: s[1],
            c_size: s[2],
            max_bio_size: m,
            queue_order_type: q[0],
            dds_flags: q[1],
            queue_limits: l.map(|(w, b)| QueueLimits {
                physical_block_size: w[0],
                logical_block_size: w[1],
                alignment_offset: w[2],
                io_min: w[3],
                io_opt: w[4],
                discard_enabled: b[0],
                discard_zeroes_data: b[1],
                write_same_capable: b[2],
                pad: b[3],
            }),
        })
}

fn sync_params() -> impl Strategy<Value = SyncParams> {
    (
        any::<u32>(),
        alg_name(),
        alg_name(),
        prop::option::of(any::<[u32; 4]>()),
    )
        .prop_map(|(rate, v, c, ctl)| SyncParams {
            resync_rate: rate,
            verify_alg: v,
            csums_alg: c,
            controller: ctl.map(|c| ResyncController {
                c_plan_ahead: c[0],
                c_delay_target: c[1],
                c_fill_target: c[2],
                c_max_rate: c[3],
            }),
        })
}

fn state_change() -> impl Strategy<Value = StateChange> {
    any::<[u32; 2]>().prop_map(|w| StateChange {
        mask: StateWord(w[0]),
        val: StateWord(w[1]),
    })
}

/// Every packet type, data packets with integrity digests of `digest_len` bytes.
fn packet(digest_len: usize) -> impl Strategy<Value = Packet> {
    let data = move || {
        (data_header(), fixed_digest(digest_len), sectors()).prop_map(|(header, digest, data)| {
            DataPacket {
                header,
                digest,
                data,
            }
        })
    };
    let trim = || (data_header(), any::<u32>()).prop_map(|(header, size)| Trim { header, size });
    let digest_request = || {
        (block_request(), digest(64))
            .prop_map(|(request, digest)| DigestRequest { request, digest })
    };
    let reply = || any::<i32>().prop_map(|retcode| StateChangeReply { retcode });
    let simple = prop_oneof![
        Just(Packet::UnplugRemote),
        Just(Packet::Ping),
        Just(Packet::PingAck),
        Just(Packet::InitialMeta),
        Just(Packet::InitialData),
        any::<u64>().prop_map(Packet::SyncUuid),
        any::<[u32; 2]>().prop_map(|b| Packet::Barrier(Barrier {
            barrier: b[0],
            pad: b[1]
        })),
        any::<[u32; 2]>().prop_map(|b| Packet::BarrierAck(BarrierAck {
            barrier: b[0],
            set_size: b[1]
        })),
        any::<[u32; 2]>().prop_map(|b| Packet::DelayProbe(DelayProbe {
            seq_num: b[0],
            offset: b[1]
        })),
        (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(a, f, b, p)| {
            Packet::ConnectionFeatures(ConnectionFeatures {
                protocol_min: a,
                feature_flags: FeatureFlags(f),
                protocol_max: b,
                pad: p,
            })
        }),
        any::<[u64; 6]>().prop_map(|u| Packet::Uuids(Uuids {
            current: u[0],
            bitmap: u[1],
            history: [u[2], u[3]],
            bits_set: u[4],
            flags: u[5],
        })),
        state().prop_map(Packet::State),
        sizes().prop_map(Packet::Sizes),
        protocol().prop_map(Packet::Protocol),
        protocol().prop_map(Packet::ProtocolUpdate),
        sync_params().prop_map(Packet::SyncParam89),
        (any::<u32>(), prop::option::of(alg_name())).prop_map(|(r, v)| {
            Packet::SyncParam(LegacySyncParams {
                resync_rate: r,
                verify_alg: v,
            })
        }),
        bytes(64..=128).prop_map(Packet::AuthChallenge),
        bytes(1..=64).prop_map(Packet::AuthResponse),
        state_change().prop_map(Packet::StateChgReq),
        state_change().prop_map(Packet::ConnStChgReq),
        reply().prop_map(Packet::StateChgReply),
        reply().prop_map(Packet::ConnStChgReply),
    ];
    let blocks = prop_oneof![
        block_ack().prop_map(Packet::RecvAck),
        block_ack().prop_map(Packet::WriteAck),
        block_ack().prop_map(Packet::RsWriteAck),
        block_ack().prop_map(Packet::Superseded),
        block_ack().prop_map(Packet::NegAck),
        block_ack().prop_map(Packet::NegDReply),
        block_ack().prop_map(Packet::NegRsDReply),
        block_ack().prop_map(Packet::OvResult),
        block_ack().prop_map(Packet::RsIsInSync),
        block_ack().prop_map(Packet::RsCancel),
        block_ack().prop_map(Packet::RetryWrite),
        block_request().prop_map(Packet::DataRequest),
        block_request().prop_map(Packet::RsDataRequest),
        block_request().prop_map(Packet::OvRequest),
        block_request().prop_map(Packet::RsThinReq),
        digest_request().prop_map(Packet::OvReply),
        digest_request().prop_map(Packet::CsumRsRequest),
        block_desc().prop_map(Packet::OutOfSync),
        block_desc().prop_map(Packet::RsDeallocated),
        trim().prop_map(Packet::Trim),
        trim().prop_map(Packet::Zeroes),
    ];
    let bulk = prop_oneof![
        data().prop_map(Packet::Data),
        data().prop_map(Packet::DataReply),
        data().prop_map(Packet::RsDataReply),
        (
            data_header(),
            any::<u32>(),
            fixed_digest(digest_len),
            sectors()
        )
            .prop_map(
                |(header, size, digest, data)| Packet::WriteSame(WriteSamePacket {
                    header,
                    size,
                    digest,
                    data
                })
            ),
        proptest::collection::vec(any::<u64>(), 0..=510)
            .prop_map(|w| Packet::Bitmap(PlainBitmap::from_words(&w))),
        (any::<bool>(), 0u8..=7, bytes(1..=300)).prop_map(|(first_run_set, pad_bits, code)| {
            Packet::CompressedBitmap(CompressedBitmap {
                first_run_set,
                pad_bits,
                code,
            })
        }),
    ];
    prop_oneof![simple, blocks, bulk]
}

fn formats() -> impl Strategy<Value = HeaderFormat> {
    prop::sample::select(vec![
        HeaderFormat::Short,
        HeaderFormat::ShortOrBig,
        HeaderFormat::Long,
    ])
}

/// Encodes all packets (volume 0 unless h100), feeds the stream in `cuts`-sized pieces: odd
/// sizes through `push_bytes` (sliced), even ones through `push` (copied); after a size that
/// is a multiple of 3 the next piece is pushed before the frames are taken out.
fn round_trip(
    packets: &[(u16, Packet)],
    format: HeaderFormat,
    digest_len: usize,
    cuts: &[usize],
) -> Vec<(u16, Packet)> {
    let mut stream = Vec::new();
    for (volume, p) in packets {
        stream.extend(p.encode(*volume, format).unwrap().to_vec());
    }
    let ctx = DecodeContext::new(format).with_integrity_digest_len(digest_len);
    let mut deframer = Deframer::new(ctx);
    let mut out = Vec::new();
    let mut at = 0;
    let mut cuts = cuts.iter().cycle();
    let stream = Bytes::from(stream);
    let mut drain = true;
    loop {
        if drain || at == stream.len() {
            while let Some(frame) = deframer.next_frame().unwrap() {
                out.push((frame.volume, frame.packet));
            }
        }
        if at == stream.len() {
            break;
        }
        let cut = *cuts.next().unwrap();
        let n = cut.clamp(1, stream.len() - at);
        if cut % 2 == 1 {
            deframer.push_bytes(stream.slice(at..at + n));
        } else {
            deframer.push(&stream[at..at + n]);
        }
        drain = !cut.is_multiple_of(3);
        at += n;
    }
    assert_eq!(deframer.buffered(), 0);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_packet_round_trips(
        (digest_len, p) in prop::sample::select(vec![0usize, 4, 20, 32, 64])
            .prop_flat_map(|d| (Just(d), packet(d))),
    ) {
        for format in [HeaderFormat::Short, HeaderFormat::ShortOrBig, HeaderFormat::Long] {
            let encoded = p.encode(0, format);
            if format == HeaderFormat::Short {
                // Only packets whose payload fits 16 bits encode with h80.
                if encoded.is_err() {
                    continue;
                }
            }
            let encoded = encoded.unwrap();
            let mut d = Deframer::new(
                DecodeContext::new(format).with_integrity_digest_len(digest_len),
            );
            d.push(&encoded.to_vec());
            let frame = d.next_frame().unwrap().unwrap();
            prop_assert_eq!(&frame.packet, &p);
            prop_assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn a_stream_cut_anywhere_yields_the_same_packets(
        packets in proptest::collection::vec((0u16..4, packet(4)), 1..24),
        cuts in proptest::collection::vec(1usize..200, 1..16),
    ) {
        let out = round_trip(&packets, HeaderFormat::Long, 4, &cuts);
        prop_assert_eq!(out, packets);
    }

    #[test]
    fn short_headers_carry_volume_zero_only(
        packets in proptest::collection::vec(packet(0), 1..12),
        cuts in proptest::collection::vec(1usize..64, 1..8),
        format in formats(),
    ) {
        let packets: Vec<(u16, Packet)> = packets
            .into_iter()
            .filter(|p| p.encode(0, format).is_ok())
            .map(|p| (0, p))
            .collect();
        let out = round_trip(&packets, format, 0, &cuts);
        prop_assert_eq!(out, packets);
    }

    #[test]
    fn bitmap_with_runs_transfers_exactly(
        runs in proptest::collection::vec(1u64..3000, 0..60),
        first_set in any::<bool>(),
        tail in 0u64..200,
        rle in any::<bool>(),
        format in formats(),
    ) {
        let bits: u64 = runs.iter().sum::<u64>() + tail;
        let mut bitmap = Bitmap::new(bits);
        let mut at = 0;
        let mut set = first_set;
        for r in &runs {
            if set {
                bitmap.set_range(at..at + r);
            }
            at += r;
            set = !set;
        }
        transfer_and_check(&bitmap, format, rle)?;
    }

    #[test]
    fn noisy_bitmap_mixes_compressed_and_plain(
        bits in 1u64..200_000,
        // Dense random words (incompressible) between long runs (compressible).
        noise in proptest::collection::vec((any::<u64>(), 0u64..4000, any::<bool>()), 0..40),
        format in formats(),
    ) {
        let mut bitmap = Bitmap::new(bits);
        let words = bits.div_ceil(64);
        let mut w = 0;
        for (value, gap, fill) in noise {
            if w >= words {
                break;
            }
            let word = value & if (w + 1) * 64 > bits { (1u64 << (bits - w * 64)) - 1 } else { !0 };
            bitmap.or_words(w as usize, &[word]);
            let next = (w + 1 + gap / 64).min(words);
            if fill {
                bitmap.set_range((w + 1) * 64..next * 64);
            }
            w = next;
        }
        transfer_and_check(&bitmap, format, true)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        format in formats(),
        digest_len in 0usize..=64,
    ) {
        let mut d = Deframer::new(DecodeContext::new(format).with_integrity_digest_len(digest_len));
        d.push(&bytes);
        while let Ok(Some(_)) = d.next_frame() {}
    }

    #[test]
    fn random_payloads_under_valid_headers_never_panic(
        command in prop::sample::select(Command::ALL.to_vec()),
        payload in proptest::collection::vec(any::<u8>(), 0..300),
        digest_len in prop::sample::select(vec![0usize, 4]),
    ) {
        let ctx = DecodeContext::new(HeaderFormat::Long).with_integrity_digest_len(digest_len);
        if let Ok(packet) = Packet::decode(command as u16, Bytes::from(payload.clone()), &ctx) {
            // Whatever decodes re-encodes to the same bytes, except the ignored reserved
            // bytes of P_CONNECTION_FEATURES.
            let encoded = packet.encode(0, HeaderFormat::Long).unwrap().to_vec();
            if command != Command::ConnectionFeatures {
                prop_assert_eq!(&encoded[16..], &payload[..]);
            }
        }
    }

    #[test]
    fn arbitrary_bitmap_packets_never_panic(
        bits in 0u64..5000,
        packets in proptest::collection::vec(
            prop_oneof![
                (any::<bool>(), 0u8..=7, bytes(0..=40)).prop_map(|(first_run_set, pad_bits, code)| {
                    Packet::CompressedBitmap(CompressedBitmap { first_run_set, pad_bits, code })
                }),
                proptest::collection::vec(any::<u64>(), 0..100)
                    .prop_map(|w| Packet::Bitmap(PlainBitmap::from_words(&w))),
            ],
            1..6,
        ),
    ) {
        let mut bitmap = Bitmap::new(bits);
        let mut receiver = BitmapReceiver::new(bits, HeaderFormat::Long);
        for p in &packets {
            if receiver.receive(p, &mut bitmap).is_err() {
                break;
            }
        }
        bitmap.invariants();
    }
}

fn transfer_and_check(
    bitmap: &Bitmap,
    format: HeaderFormat,
    rle: bool,
) -> Result<(), TestCaseError> {
    let bits = bitmap.bits();
    let mut sender = BitmapSender::new(bits, format, rle);
    let mut receiver = BitmapReceiver::new(bits, format);
    let mut received = Bitmap::new(bits);
    let max_packet = 4096 - format.header_size();
    let mut packets = 0;
    while let Some(p) = sender.next_packet(bitmap) {
        packets += 1;
        let encoded = p.encode(0, format).unwrap();
        prop_assert!(encoded.len() - format.header_size() <= max_packet);
        if let Packet::CompressedBitmap(_) = &p {
            prop_assert!(rle);
        }
        let progress = receiver.receive(&p, &mut received).unwrap();
        prop_assert_eq!(progress == BitmapProgress::Done, sender.is_done());
        prop_assert!(packets < 10_000);
    }
    prop_assert!(receiver.is_done());
    prop_assert_eq!(received.words(), bitmap.words());
    let stats = sender.stats();
    prop_assert_eq!(stats, receiver.stats());
    if !rle {
        prop_assert_eq!(stats.compressed_packets, 0);
    }
    Ok(())
}

#[test]
fn one_mib_of_data_is_the_limit() {
    let data = Bytes::from(vec![7u8; 1 << 20]);
    let p = Packet::Data(DataPacket {
        header: DataHeader::default(),
        digest: Digest::EMPTY,
        data: data.clone(),
    });
    let encoded = p.encode(0, HeaderFormat::Long).unwrap();
    assert_eq!(encoded.head.len(), 16 + 24);
    assert_eq!(encoded.data.as_ptr(), data.as_ptr());
    let mut d = Deframer::new(DecodeContext::new(HeaderFormat::Long));
    d.push(&encoded.head);
    for chunk in encoded.data.chunks(65536) {
        assert_eq!(d.next_frame().unwrap(), None);
        d.push(chunk);
    }
    assert_eq!(d.next_frame().unwrap().unwrap().packet, p);
    let too_big = Packet::Data(DataPacket {
        data: Bytes::from(vec![0u8; (1 << 20) + 512]),
        ..DataPacket::default()
    });
    assert!(too_big.encode(0, HeaderFormat::Long).is_err());
    // h80 cannot carry more than 64 KiB; 95..=99 switch to h95 above 32 KiB.
    assert!(p.encode(0, HeaderFormat::Short).is_err());
    assert_eq!(
        p.encode(0, HeaderFormat::ShortOrBig).unwrap().head[..2],
        [0x83, 0x5a]
    );
    assert!(Packet::Ping.encode(1, HeaderFormat::Short).is_err());
    assert!(
        Packet::Ignored {
            command: 0x200,
            length: 0
        }
        .encode(0, HeaderFormat::Long)
        .is_err()
    );
}
