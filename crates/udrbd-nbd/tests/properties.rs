//! Properties of `ServerConnection` over generated input: the request deframer returns the same
//! requests however the byte stream is cut, and no input makes the machine panic or break an
//! invariant, in either phase.

mod common;

use bytes::Bytes;
use common::*;
use proptest::prelude::*;
use udrbd_nbd::wire::{self, Cookie};
use udrbd_nbd::{ExportFlags, Input, Op, Phase, ServerConfig};

const SECTORS: u64 = SIZE / 512;

#[derive(Clone, Debug)]
enum Spec {
    Read {
        sector: u64,
        count: u32,
    },
    Write {
        sector: u64,
        count: u32,
        fill: u8,
        fua: bool,
    },
    Flush,
    Trim {
        sector: u64,
        count: u32,
        fua: bool,
    },
    WriteZeroes {
        sector: u64,
        count: u32,
        no_hole: bool,
        fua: bool,
    },
}

fn spec() -> impl Strategy<Value = Spec> {
    let sector = 0..SECTORS - 16;
    prop_oneof![
        (sector.clone(), 1..16u32).prop_map(|(sector, count)| Spec::Read { sector, count }),
        (sector.clone(), 1..8u32, any::<u8>(), any::<bool>()).prop_map(
            |(sector, count, fill, fua)| Spec::Write {
                sector,
                count,
                fill,
                fua
            }
        ),
        Just(Spec::Flush),
        (sector.clone(), 1..16u32, any::<bool>()).prop_map(|(sector, count, fua)| Spec::Trim {
            sector,
            count,
            fua
        }),
        (sector, 1..16u32, any::<bool>(), any::<bool>()).prop_map(
            |(sector, count, no_hole, fua)| Spec::WriteZeroes {
                sector,
                count,
                no_hole,
                fua
            }
        ),
    ]
}

/// The wire bytes of a request and the op the machine must hand out for it.
fn encode(spec: &Spec, cookie: u64) -> (Vec<u8>, Op) {
    let fua_flag = |fua: bool| if fua { wire::NBD_CMD_FLAG_FUA } else { 0 };
    match *spec {
        Spec::Read { sector, count } => {
            let (offset, len) = (sector * 512, count * 512);
            (
                request(wire::NBD_CMD_READ, 0, cookie, offset, len),
                Op::Read { offset, len },
            )
        }
        Spec::Write {
            sector,
            count,
            fill,
            fua,
        } => {
            let offset = sector * 512;
            let data = vec![fill; count as usize * 512];
            let mut bytes = request(
                wire::NBD_CMD_WRITE,
                fua_flag(fua),
                cookie,
                offset,
                data.len() as u32,
            );
            bytes.extend_from_slice(&data);
            (
                bytes,
                Op::Write {
                    offset,
                    data: Bytes::from(data),
                    fua,
                },
            )
        }
        Spec::Flush => (request(wire::NBD_CMD_FLUSH, 0, cookie, 0, 0), Op::Flush),
        Spec::Trim { sector, count, fua } => {
            let (offset, len) = (sector * 512, count * 512);
            (
                request(wire::NBD_CMD_TRIM, fua_flag(fua), cookie, offset, len),
                Op::Trim { offset, len, fua },
            )
        }
        Spec::WriteZeroes {
            sector,
            count,
            no_hole,
            fua,
        } => {
            let (offset, len) = (sector * 512, count * 512);
            let flags = fua_flag(fua)
                | if no_hole {
                    wire::NBD_CMD_FLAG_NO_HOLE
                } else {
                    0
                };
            (
                request(wire::NBD_CMD_WRITE_ZEROES, flags, cookie, offset, len),
                Op::WriteZeroes {
                    offset,
                    len,
                    no_hole,
                    fua,
                },
            )
        }
    }
}

/// Splits `bytes` at the given cut points (taken modulo the length).
fn cut(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    if bytes.is_empty() {
        return vec![];
    }
    let mut points: Vec<usize> = cuts.iter().map(|c| c % bytes.len()).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points.dedup();
    points
        .windows(2)
        .map(|w| bytes[w[0]..w[1]].to_vec())
        .collect()
}

/// Completes every request the harness holds, including those that completions unblock.
fn complete_everything(h: &mut Harness, seen: &mut Vec<(Cookie, Op)>) {
    while !h.requests.is_empty() {
        seen.extend(h.requests.iter().map(|r| (r.cookie, r.op.clone())));
        h.complete_all();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn deframer_returns_the_same_requests_however_the_stream_is_cut(
        specs in prop::collection::vec(spec(), 0..40),
        cuts in prop::collection::vec(any::<usize>(), 0..60),
        structured in any::<bool>(),
        max_outstanding in 1..5u32,
        in_place in any::<bool>(),
    ) {
        let config = ServerConfig { max_outstanding, ..ServerConfig::default() };
        let mut h = Harness::negotiated_with(config, ExportFlags::block_device(), structured);
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        let mut reply_bytes = 0usize;
        for (i, spec) in specs.iter().enumerate() {
            let cookie = 1000 + i as u64;
            let (bytes, op) = encode(spec, cookie);
            stream.extend(bytes);
            reply_bytes += match (&op, structured) {
                (Op::Read { len, .. }, false) => 16 + *len as usize,
                (Op::Read { len, .. }, true) => 20 + 8 + *len as usize,
                (_, false) => 16,
                (_, true) => 20,
            };
            expected.push((Cookie(cookie), op));
        }
        let mut seen = Vec::new();
        for piece in cut(&stream, &cuts) {
            if !in_place {
                h.feed(&piece).unwrap();
                complete_everything(&mut h, &mut seen);
                continue;
            }
            // As the daemon reads: straight into the receive buffer, as much as it offers.
            let mut rest = &piece[..];
            while !rest.is_empty() {
                let mut room = h.conn.receive_buffer();
                let n = bytes::BufMut::remaining_mut(&room).min(rest.len());
                if n == 0 {
                    complete_everything(&mut h, &mut seen);
                    prop_assert!(h.conn.receive_window() > 0, "stuck");
                    continue;
                }
                bytes::BufMut::put_slice(&mut room, &rest[..n]);
                rest = &rest[n..];
                h.input(Input::Appended(n)).unwrap();
            }
            complete_everything(&mut h, &mut seen);
        }
        prop_assert_eq!(seen, expected);
        prop_assert_eq!(h.take_sent().len(), reply_bytes);
        prop_assert_eq!(h.conn.outstanding(), 0);
        prop_assert_eq!(h.conn.phase(), Phase::Transmission);
    }

    #[test]
    fn handshake_never_panics_on_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
        prefix in 0..4usize,
    ) {
        let mut h = Harness::new();
        // Sometimes start with a valid prefix so the option parser sees the noise.
        let mut stream = match prefix {
            0 => Vec::new(),
            1 => client_flags(3).to_vec(),
            2 => [client_flags(1).to_vec(), b"IHAVEOPT".to_vec()].concat(),
            _ => [client_flags(3).to_vec(), option(wire::NBD_OPT_GO, &go_data("", &[]))].concat(),
        };
        stream.extend(bytes);
        for piece in cut(&stream, &cuts) {
            let _ = h.feed(&piece);
            complete_everything(&mut h, &mut Vec::new());
        }
    }

    #[test]
    fn transmission_never_panics_on_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
        structured in any::<bool>(),
    ) {
        let mut h = Harness::negotiated(structured);
        for piece in cut(&bytes, &cuts) {
            let _ = h.feed(&piece);
            complete_everything(&mut h, &mut Vec::new());
        }
    }

    #[test]
    fn transmission_never_panics_on_well_framed_nonsense(
        headers in prop::collection::vec(
            (any::<u16>(), 0..10u16, any::<u64>(), prop_oneof![any::<u64>(), (0..SECTORS + 4).prop_map(|s| s * 512)],
             prop_oneof![any::<u32>(), (0..64u32).prop_map(|s| s * 512)], prop::collection::vec(any::<u8>(), 0..1024)),
            0..16),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
        structured in any::<bool>(),
        read_only in any::<bool>(),
    ) {
        let flags = ExportFlags { read_only, ..ExportFlags::block_device() };
        let mut h = Harness::negotiated_with(ServerConfig { max_outstanding: 2, ..ServerConfig::default() }, flags, structured);
        let mut stream = Vec::new();
        for (flags, command, cookie, offset, length, tail) in headers {
            stream.extend(request(command, flags, cookie, offset, length));
            stream.extend(tail);
        }
        for piece in cut(&stream, &cuts) {
            let _ = h.feed(&piece);
            complete_everything(&mut h, &mut Vec::new());
        }
    }
}
