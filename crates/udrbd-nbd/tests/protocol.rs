//! Per-option and per-command tests of `ServerConnection`, with byte vectors written out from
//! the layouts in proto.md (NetworkBlockDevice/nbd doc/proto.md).

mod common;

use bytes::Bytes;
use common::*;
use udrbd_nbd::wire::{self, Cookie};
use udrbd_nbd::{
    CloseReason, Completion, Errno, ExportAnswer, ExportFlags, HandleError, Input, Op, Phase,
    ProtocolError, QueryPurpose, RequestId, ServerConfig, UsageError,
};

const REPLY_MAGIC: [u8; 8] = [0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9];

/// An option reply written out field by field: magic, option, type, length, data.
fn rep(option: u32, reply_type: u32, data: &[u8]) -> Vec<u8> {
    let mut b = REPLY_MAGIC.to_vec();
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&reply_type.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

fn ack(option: u32) -> Vec<u8> {
    rep(option, 1, &[])
}

/// The flags of `ExportFlags::block_device()`:
/// HAS_FLAGS|SEND_FLUSH|SEND_FUA|SEND_TRIM|SEND_WRITE_ZEROES|CAN_MULTI_CONN.
const BLOCK_DEVICE_FLAGS: [u8; 2] = [0x01, 0x6d];

fn info_export(option: u32) -> Vec<u8> {
    // NBD_INFO_EXPORT (0), size 1 MiB, flags.
    let mut data = vec![0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0];
    data.extend_from_slice(&BLOCK_DEVICE_FLAGS);
    rep(option, 3, &data)
}

fn info_block_size(option: u32) -> Vec<u8> {
    // NBD_INFO_BLOCK_SIZE (3): min 512, preferred 4096, max 32 MiB.
    rep(option, 3, &[0, 3, 0, 0, 2, 0, 0, 0, 0x10, 0, 0x02, 0, 0, 0])
}

fn after_greeting() -> Harness {
    let mut h = Harness::new();
    h.take_sent();
    h.feed(&client_flags(3)).unwrap();
    h
}

// ---- Handshake ---------------------------------------------------------------------------------

#[test]
fn greeting_is_the_fixed_newstyle_greeting() {
    let mut h = Harness::new();
    assert_eq!(
        h.take_sent(),
        [
            0x4e, 0x42, 0x44, 0x4d, 0x41, 0x47, 0x49, 0x43, // NBDMAGIC
            0x49, 0x48, 0x41, 0x56, 0x45, 0x4f, 0x50, 0x54, // IHAVEOPT
            0x00, 0x03, // FIXED_NEWSTYLE | NO_ZEROES
        ]
    );
    assert_eq!(h.conn.phase(), Phase::Handshake);
}

#[test]
fn unknown_client_flags_close_the_connection() {
    let mut h = Harness::new();
    let err = h.feed(&client_flags(4)).unwrap_err();
    assert_eq!(
        err,
        HandleError::Protocol(ProtocolError::UnknownClientFlags { flags: 4 })
    );
    assert_eq!(h.conn.phase(), Phase::Closed);
    assert_eq!(h.conn.receive_window(), 0);
}

#[test]
fn client_without_fixed_newstyle_is_still_served() {
    let mut h = Harness::new();
    h.take_sent();
    h.feed(&client_flags(0)).unwrap();
    h.feed(&option(wire::NBD_OPT_EXPORT_NAME, b"r0")).unwrap();
    // size, flags, 124 zeroes (no C_NO_ZEROES)
    let sent = h.take_sent();
    assert_eq!(sent.len(), 8 + 2 + 124);
    assert!(sent[10..].iter().all(|&b| b == 0));
}

#[test]
fn opt_go_default_export() {
    let mut h = after_greeting();
    h.feed(&option(wire::NBD_OPT_GO, &go_data("", &[])))
        .unwrap();
    let mut expected = info_export(7);
    expected.extend(info_block_size(7));
    expected.extend(ack(7));
    // Spelled out once in full: the INFO_EXPORT reply.
    assert_eq!(
        &expected[..32],
        &[
            0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, // option reply magic
            0, 0, 0, 7, // NBD_OPT_GO
            0, 0, 0, 3, // NBD_REP_INFO
            0, 0, 0, 12, // length
            0, 0, // NBD_INFO_EXPORT
            0, 0, 0, 0, 0, 0x10, 0, 0, // 1 MiB
            0x01, 0x6d, // transmission flags
        ]
    );
    assert_eq!(h.take_sent(), expected);
    assert_eq!(h.queries, vec![String::new()]);
    let (export, structured) = h.transmission.clone().unwrap();
    assert_eq!(export.name, "r0");
    assert!(!structured);
    assert_eq!(h.conn.phase(), Phase::Transmission);
}

#[test]
fn opt_go_with_name_and_description_requests() {
    let mut h = after_greeting();
    h.feed(&option(
        wire::NBD_OPT_GO,
        &go_data(
            "",
            &[wire::NBD_INFO_NAME, wire::NBD_INFO_DESCRIPTION, 3, 999],
        ),
    ))
    .unwrap();
    let mut expected = info_export(7);
    expected.extend(info_block_size(7));
    expected.extend(rep(7, 3, b"\x00\x01r0"));
    expected.extend(rep(7, 3, b"\x00\x02udrbd resource r0"));
    expected.extend(ack(7));
    assert_eq!(h.take_sent(), expected);
}

#[test]
fn opt_info_then_go_named_export() {
    let mut h = after_greeting();
    h.feed(&option(wire::NBD_OPT_INFO, &go_data("r0", &[])))
        .unwrap();
    let mut expected = info_export(6);
    expected.extend(info_block_size(6));
    expected.extend(ack(6));
    assert_eq!(h.take_sent(), expected);
    assert_eq!(h.conn.phase(), Phase::Handshake);
    assert!(h.transmission.is_none());
    h.feed(&option(wire::NBD_OPT_GO, &go_data("r0", &[])))
        .unwrap();
    assert_eq!(h.conn.phase(), Phase::Transmission);
    assert_eq!(h.queries, vec!["r0".to_string(), "r0".to_string()]);
}

#[test]
fn refused_export_sends_the_callers_message_and_negotiation_goes_on() {
    let mut h = after_greeting();
    h.feed(&option(wire::NBD_OPT_GO, &go_data("r1", &[])))
        .unwrap();
    // NBD_REP_ERR_UNKNOWN = 2^31 + 6, with the message as data.
    assert_eq!(
        h.take_sent(),
        rep(7, 0x8000_0006, SECONDARY_MESSAGE.as_bytes())
    );
    assert_eq!(h.conn.phase(), Phase::Handshake);
    h.feed(&option(wire::NBD_OPT_INFO, &go_data("nope", &[])))
        .unwrap();
    assert_eq!(
        h.take_sent(),
        rep(6, 0x8000_0006, b"no export named \"nope\"")
    );
    h.feed(&option(wire::NBD_OPT_GO, &go_data("", &[])))
        .unwrap();
    assert_eq!(h.conn.phase(), Phase::Transmission);
}

#[test]
fn export_query_waits_for_the_caller() {
    let mut h = after_greeting();
    h.auto_answer = false;
    h.feed(&option(wire::NBD_OPT_GO, &go_data("r0", &[])))
        .unwrap();
    assert_eq!(
        h.conn.receive_window(),
        0,
        "nothing is read while the caller decides"
    );
    assert!(h.take_sent().is_empty());
    let mut q = udrbd_nbd::ServerConnection::new(ServerConfig::default());
    // A query's purpose is reported.
    while q.poll_output().is_some() {}
    q.handle(Input::Received(&client_flags(1))).unwrap();
    q.handle(Input::Received(&option(wire::NBD_OPT_EXPORT_NAME, b"r0")))
        .unwrap();
    assert!(matches!(
        q.poll_output(),
        Some(udrbd_nbd::Output::ExportQuery { ref name, purpose: QueryPurpose::ExportName }) if name == "r0"
    ));
    // Answering later works.
    h.input(Input::ExportAnswer(catalog(
        "r0",
        ExportFlags::block_device(),
    )))
    .unwrap();
    assert_eq!(h.conn.phase(), Phase::Transmission);
    // An answer nobody asked for is a usage error.
    let err = h
        .input(Input::ExportAnswer(catalog(
            "r0",
            ExportFlags::block_device(),
        )))
        .unwrap_err();
    assert_eq!(err, HandleError::Usage(UsageError::NoExportQuery));
}

#[test]
fn export_with_unaligned_size_is_refused_to_the_caller() {
    let mut h = after_greeting();
    h.auto_answer = false;
    h.feed(&option(wire::NBD_OPT_GO, &go_data("r0", &[])))
        .unwrap();
    let ExportAnswer::Serve(mut export) = catalog("r0", ExportFlags::block_device()) else {
        unreachable!()
    };
    export.size = 1000;
    let err = h
        .input(Input::ExportAnswer(ExportAnswer::Serve(export)))
        .unwrap_err();
    assert_eq!(
        err,
        HandleError::Usage(UsageError::ExportSizeUnaligned { size: 1000 })
    );
    assert_eq!(
        h.conn.phase(),
        Phase::Handshake,
        "still waiting for a proper answer"
    );
}

#[test]
fn malformed_opt_go_gets_err_invalid() {
    let mut h = after_greeting();
    let cases: Vec<Vec<u8>> = vec![
        vec![0, 0, 0],                           // shorter than 6
        vec![0, 0, 0, 9, b'r', b'0', 0, 0],      // name length beyond data
        [go_data("r0", &[1]), vec![0]].concat(), // trailing byte
        go_data("r0", &[1, 2])[..9].to_vec(),    // count says 2, one present
        go_data("r\0", &[]),                     // NUL in name
    ];
    for data in cases {
        h.feed(&option(wire::NBD_OPT_GO, &data)).unwrap();
        let sent = h.take_sent();
        assert_eq!(
            &sent[..20],
            &rep(7, 0x8000_0003, &sent[20..])[..20],
            "{data:?}"
        );
        assert_eq!(h.conn.phase(), Phase::Handshake);
    }
    h.feed(&option(wire::NBD_OPT_GO, &go_data("", &[])))
        .unwrap();
    assert_eq!(h.conn.phase(), Phase::Transmission);
}

#[test]
fn opt_list_sends_one_rep_server_per_export() {
    let mut h = after_greeting();
    h.feed(&option(wire::NBD_OPT_LIST, &[])).unwrap();
    let mut expected = rep(3, 2, b"\x00\x00\x00\x02r0primary");
    expected.extend(rep(3, 2, b"\x00\x00\x00\x02r1"));
    expected.extend(ack(3));
    assert_eq!(h.take_sent(), expected);
    h.feed(&option(wire::NBD_OPT_LIST, b"x")).unwrap();
    let sent = h.take_sent();
    assert_eq!(&sent[..16], &rep(3, 0x8000_0003, &[])[..16]);
}

#[test]
fn opt_abort_acks_and_closes() {
    let mut h = after_greeting();
    h.feed(&option(wire::NBD_OPT_ABORT, b"ignored")).unwrap();
    assert_eq!(h.take_sent(), ack(2));
    assert_eq!(h.closed, Some(CloseReason::Aborted));
    assert_eq!(h.conn.phase(), Phase::Closed);
    // Anything after is ignored.
    h.feed(b"garbage").unwrap();
    assert!(h.take_sent().is_empty());
}

#[test]
fn opt_export_name_honours_no_zeroes() {
    let mut h = after_greeting(); // client flags 3: C_NO_ZEROES
    h.feed(&option(wire::NBD_OPT_EXPORT_NAME, b"")).unwrap();
    assert_eq!(h.take_sent(), [0, 0, 0, 0, 0, 0x10, 0, 0, 0x01, 0x6d]);
    assert_eq!(h.conn.phase(), Phase::Transmission);

    let mut h = Harness::new();
    h.take_sent();
    h.feed(&client_flags(1)).unwrap();
    h.feed(&option(wire::NBD_OPT_EXPORT_NAME, b"r0")).unwrap();
    let mut expected = vec![0, 0, 0, 0, 0, 0x10, 0, 0, 0x01, 0x6d];
    expected.extend([0u8; 124]);
    assert_eq!(h.take_sent(), expected);
}

#[test]
fn opt_export_name_refused_closes_without_reply() {
    let mut h = after_greeting();
    h.feed(&option(wire::NBD_OPT_EXPORT_NAME, b"r1")).unwrap();
    assert!(h.take_sent().is_empty());
    assert_eq!(h.closed, Some(CloseReason::ExportRefused));
    assert_eq!(h.conn.phase(), Phase::Closed);
}

#[test]
fn opt_export_name_with_invalid_name_is_fatal() {
    let mut h = after_greeting();
    let err = h
        .feed(&option(wire::NBD_OPT_EXPORT_NAME, &[0xff, 0xfe]))
        .unwrap_err();
    assert_eq!(err, HandleError::Protocol(ProtocolError::InvalidExportName));
}

#[test]
fn opt_structured_reply() {
    let mut h = after_greeting();
    h.feed(&option(wire::NBD_OPT_STRUCTURED_REPLY, &[]))
        .unwrap();
    assert_eq!(h.take_sent(), ack(8));
    h.feed(&option(wire::NBD_OPT_STRUCTURED_REPLY, b"x"))
        .unwrap();
    assert_eq!(&h.take_sent()[..16], &rep(8, 0x8000_0003, &[])[..16]);
    h.feed(&option(wire::NBD_OPT_GO, &go_data("", &[])))
        .unwrap();
    assert!(h.transmission.as_ref().unwrap().1);
    assert!(h.conn.structured_replies());
}

#[test]
fn unknown_options_get_err_unsup_and_the_next_option_parses() {
    let mut h = after_greeting();
    for opt in [
        wire::NBD_OPT_STARTTLS,
        wire::NBD_OPT_LIST_META_CONTEXT,
        wire::NBD_OPT_SET_META_CONTEXT,
        11,
        4,
        0xdead_beef,
    ] {
        h.feed(&option(opt, b"some data the server must skip"))
            .unwrap();
        let sent = h.take_sent();
        // NBD_REP_ERR_UNSUP = 2^31 + 1, with a message
        assert_eq!(&sent[..16], &rep(opt, 0x8000_0001, &[])[..16]);
        assert_eq!(
            sent.len(),
            20 + u32::from_be_bytes(sent[16..20].try_into().unwrap()) as usize
        );
    }
    h.feed(&option(wire::NBD_OPT_GO, &go_data("", &[])))
        .unwrap();
    assert_eq!(h.conn.phase(), Phase::Transmission);
}

#[test]
fn option_too_long_is_fatal() {
    let mut h = after_greeting();
    let mut header = b"IHAVEOPT".to_vec();
    header.extend(7u32.to_be_bytes());
    header.extend((64u32 << 10 | 1).to_be_bytes());
    let err = h.feed(&header).unwrap_err();
    assert!(
        matches!(
            err,
            HandleError::Protocol(ProtocolError::OptionTooLong { option: 7, .. })
        ),
        "{err:?}"
    );
    assert_eq!(h.conn.phase(), Phase::Closed);
}

#[test]
fn bad_option_magic_is_fatal() {
    let mut h = after_greeting();
    let mut bytes = option(wire::NBD_OPT_GO, &go_data("", &[]));
    bytes[0] = b'X';
    let err = h.feed(&bytes).unwrap_err();
    assert!(matches!(
        err,
        HandleError::Protocol(ProtocolError::BadOptionMagic { .. })
    ));
}

#[test]
fn too_many_options_is_fatal() {
    let config = ServerConfig {
        max_options: 3,
        ..ServerConfig::default()
    };
    let mut h = Harness::with_config(config);
    h.feed(&client_flags(3)).unwrap();
    for _ in 0..3 {
        h.feed(&option(wire::NBD_OPT_STRUCTURED_REPLY, &[]))
            .unwrap();
    }
    let err = h
        .feed(&option(wire::NBD_OPT_STRUCTURED_REPLY, &[]))
        .unwrap_err();
    assert_eq!(
        err,
        HandleError::Protocol(ProtocolError::TooManyOptions { limit: 3 })
    );
}

#[test]
fn handshake_fed_one_byte_at_a_time() {
    let mut h = Harness::new();
    h.take_sent();
    let mut bytes = client_flags(3).to_vec();
    bytes.extend(option(wire::NBD_OPT_STRUCTURED_REPLY, &[]));
    bytes.extend(option(wire::NBD_OPT_GO, &go_data("r0", &[1])));
    bytes.extend(request(wire::NBD_CMD_READ, 0, 5, 0, 512));
    for b in bytes {
        h.feed(&[b]).unwrap();
    }
    assert_eq!(h.conn.phase(), Phase::Transmission);
    assert_eq!(h.requests.len(), 1);
    assert_eq!(
        h.requests[0].op,
        Op::Read {
            offset: 0,
            len: 512
        }
    );
}

// ---- Transmission: commands ---------------------------------------------------------------------

fn simple(error: u32, cookie: u64) -> Vec<u8> {
    let mut b = vec![0x67, 0x44, 0x66, 0x98];
    b.extend(error.to_be_bytes());
    b.extend(cookie.to_be_bytes());
    b
}

fn chunk(flags: u16, reply_type: u16, cookie: u64, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0x66, 0x8e, 0x33, 0xef];
    b.extend(flags.to_be_bytes());
    b.extend(reply_type.to_be_bytes());
    b.extend(cookie.to_be_bytes());
    b.extend((payload.len() as u32).to_be_bytes());
    b.extend(payload);
    b
}

fn structured_error(cookie: u64, errno: u32, message: &str) -> Vec<u8> {
    let mut payload = errno.to_be_bytes().to_vec();
    payload.extend((message.len() as u16).to_be_bytes());
    payload.extend(message.as_bytes());
    chunk(1, 0x8001, cookie, &payload)
}

#[test]
fn read_simple_reply_carries_the_data_without_copying_it() {
    let mut h = Harness::negotiated(false);
    h.feed(&request(wire::NBD_CMD_READ, 0, 0xabcd, 4096, 1024))
        .unwrap();
    assert_eq!(h.requests.len(), 1);
    let r = h.requests.pop().unwrap();
    assert_eq!(r.cookie, Cookie(0xabcd));
    assert_eq!(
        r.op,
        Op::Read {
            offset: 4096,
            len: 1024
        }
    );
    let data = pattern(4096, 1024);
    h.conn
        .handle(Input::Completion {
            id: r.id,
            result: Completion::Data(data.clone()),
        })
        .unwrap();
    let Some(udrbd_nbd::Output::Send(t)) = h.conn.poll_output() else {
        panic!("a reply")
    };
    assert_eq!(&t.head[..], &simple(0, 0xabcd)[..]);
    assert_eq!(
        t.payload.as_ptr(),
        data.as_ptr(),
        "payload is the completion's buffer"
    );
    assert_eq!(t.payload, data);
}

#[test]
fn read_structured_reply_is_one_offset_data_chunk_with_done() {
    let mut h = Harness::negotiated(true);
    h.feed(&request(wire::NBD_CMD_READ, 0, 7, 512, 512))
        .unwrap();
    h.complete_all();
    let mut payload = 512u64.to_be_bytes().to_vec();
    payload.extend_from_slice(&pattern(512, 512));
    // flags DONE (1), type OFFSET_DATA (1), length 8 + 512
    assert_eq!(h.take_sent(), chunk(1, 1, 7, &payload));
}

#[test]
fn write_with_fua() {
    let mut h = Harness::negotiated(false);
    let data = pattern(0, 4096);
    let mut bytes = request(wire::NBD_CMD_WRITE, wire::NBD_CMD_FLAG_FUA, 11, 8192, 4096);
    bytes.extend_from_slice(&data);
    h.feed(&bytes).unwrap();
    assert_eq!(h.requests.len(), 1);
    assert_eq!(
        h.requests[0].op,
        Op::Write {
            offset: 8192,
            data: data.clone(),
            fua: true
        }
    );
    h.complete_all();
    assert_eq!(h.take_sent(), simple(0, 11));
}

#[test]
fn requests_read_in_place_come_out_alike_and_large_payloads_aligned() {
    let mut h = Harness::negotiated(false);
    let mut bytes = Vec::new();
    let mut expected = Vec::new();
    // (The export is 1 MiB.)
    for (i, len) in [4096u32, 1 << 19, 512, 256 * 1024, 1 << 20]
        .into_iter()
        .enumerate()
    {
        let offset = if len == 1 << 20 { 0 } else { 4096 * i as u64 };
        let data = pattern(offset, len as usize);
        bytes.extend(request(wire::NBD_CMD_WRITE, 0, i as u64, offset, len));
        bytes.extend_from_slice(&data);
        expected.push(Op::Write {
            offset,
            data,
            fua: false,
        });
    }
    bytes.extend(request(wire::NBD_CMD_FLUSH, 0, 9, 0, 0));
    expected.push(Op::Flush);
    h.feed_in_place(&bytes).unwrap();
    let ops: Vec<Op> = h.requests.iter().map(|r| r.op.clone()).collect();
    // (Not assert_eq: a failure would print megabytes.)
    assert!(ops == expected, "{} requests differ", ops.len());
    for r in &h.requests {
        if let Op::Write { data, .. } = &r.op
            && data.len() >= 64 * 1024
        {
            assert_eq!(data.as_ptr() as usize % udrbd_nbd::server::PAYLOAD_ALIGN, 0);
        }
    }
    // Right after a large WRITE the driver is asked for one header only.
    let mut h = Harness::negotiated(false);
    let mut bytes = request(wire::NBD_CMD_WRITE, 0, 1, 0, 1 << 20);
    bytes.extend_from_slice(&pattern(0, 1 << 20));
    h.feed_in_place(&bytes).unwrap();
    assert_eq!(h.requests.len(), 1);
    assert_eq!(h.conn.preferred_read(), wire::REQUEST_HEADER_LEN);
    // An Appended that does not match what was appended is refused.
    assert!(matches!(
        h.conn.handle(Input::Appended(5)),
        Err(udrbd_nbd::HandleError::Usage(_))
    ));
}

#[test]
fn flush_trim_write_zeroes_structured() {
    let mut h = Harness::negotiated(true);
    let mut bytes = request(wire::NBD_CMD_FLUSH, 0, 1, 0, 0);
    bytes.extend(request(
        wire::NBD_CMD_TRIM,
        wire::NBD_CMD_FLAG_FUA,
        2,
        0,
        65536,
    ));
    bytes.extend(request(
        wire::NBD_CMD_WRITE_ZEROES,
        wire::NBD_CMD_FLAG_NO_HOLE,
        3,
        512,
        1024,
    ));
    h.feed(&bytes).unwrap();
    let ops: Vec<Op> = h.requests.iter().map(|r| r.op.clone()).collect();
    assert_eq!(
        ops,
        vec![
            Op::Flush,
            Op::Trim {
                offset: 0,
                len: 65536,
                fua: true
            },
            Op::WriteZeroes {
                offset: 512,
                len: 1024,
                no_hole: true,
                fua: false
            },
        ]
    );
    h.complete_all();
    let mut expected = chunk(1, 0, 1, &[]);
    expected.extend(chunk(1, 0, 2, &[]));
    expected.extend(chunk(1, 0, 3, &[]));
    assert_eq!(h.take_sent(), expected);
}

#[test]
fn replies_go_out_in_completion_order_with_the_right_cookies() {
    let mut h = Harness::negotiated(false);
    let mut bytes = request(wire::NBD_CMD_FLUSH, 0, 1, 0, 0);
    bytes.extend(request(wire::NBD_CMD_TRIM, 0, 2, 0, 512));
    h.feed(&bytes).unwrap();
    let (a, b) = (h.requests[0].id, h.requests[1].id);
    h.input(Input::Completion {
        id: b,
        result: Completion::Done,
    })
    .unwrap();
    h.input(Input::Completion {
        id: a,
        result: Completion::Error(Errno::Io),
    })
    .unwrap();
    let mut expected = simple(0, 2);
    expected.extend(simple(5, 1));
    assert_eq!(h.take_sent(), expected);
}

#[test]
fn disc_waits_for_requests_in_flight_then_closes() {
    let mut h = Harness::negotiated(false);
    let mut bytes = request(wire::NBD_CMD_READ, 0, 1, 0, 512);
    bytes.extend(request(wire::NBD_CMD_DISC, 0, 2, 0, 0));
    bytes.extend(b"trailing bytes after DISC are dropped");
    h.feed(&bytes).unwrap();
    assert_eq!(h.conn.phase(), Phase::Draining);
    assert_eq!(h.closed, None);
    assert_eq!(h.conn.receive_window(), 0);
    h.complete_all();
    let mut expected = simple(0, 1);
    expected.extend_from_slice(&pattern(0, 512));
    assert_eq!(
        h.take_sent(),
        expected,
        "the outstanding read is answered; DISC is not"
    );
    assert_eq!(h.closed, Some(CloseReason::Disconnected));
    assert_eq!(h.conn.phase(), Phase::Closed);
}

#[test]
fn disc_with_nothing_in_flight_closes_at_once() {
    let mut h = Harness::negotiated(true);
    h.feed(&request(wire::NBD_CMD_DISC, 0, 2, 0, 0)).unwrap();
    assert!(h.take_sent().is_empty());
    assert_eq!(h.closed, Some(CloseReason::Disconnected));
}

#[test]
fn zero_length_requests_succeed_without_device_io() {
    let mut h = Harness::negotiated(false);
    let mut bytes = request(wire::NBD_CMD_READ, 0, 1, 512, 0);
    bytes.extend(request(wire::NBD_CMD_WRITE, 0, 2, 512, 0));
    bytes.extend(request(wire::NBD_CMD_TRIM, 0, 3, SIZE, 0));
    h.feed(&bytes).unwrap();
    assert!(h.requests.is_empty());
    let mut expected = simple(0, 1);
    expected.extend(simple(0, 2));
    expected.extend(simple(0, 3));
    assert_eq!(h.take_sent(), expected);
    let mut h = Harness::negotiated(true);
    h.feed(&request(wire::NBD_CMD_READ, 0, 1, 512, 0)).unwrap();
    assert_eq!(
        h.take_sent(),
        chunk(1, 0, 1, &[]),
        "no OFFSET_DATA chunk can describe 0 bytes"
    );
}

#[test]
fn device_errors_become_error_replies() {
    let mut h = Harness::negotiated(true);
    h.feed(&request(wire::NBD_CMD_READ, 0, 9, 0, 512)).unwrap();
    let id = h.requests.pop().unwrap().id;
    h.input(Input::Completion {
        id,
        result: Completion::Error(Errno::Io),
    })
    .unwrap();
    assert_eq!(h.take_sent(), structured_error(9, 5, "input/output error"));
}

#[test]
fn reused_cookies_are_told_apart_by_request_id() {
    let mut h = Harness::negotiated(false);
    let mut bytes = request(wire::NBD_CMD_READ, 0, 42, 0, 512);
    bytes.extend(write(42, 512, &[7u8; 512]));
    h.feed(&bytes).unwrap();
    assert_eq!(h.requests.len(), 2);
    assert_ne!(h.requests[0].id, h.requests[1].id);
    let write_id = h.requests[1].id;
    h.input(Input::Completion {
        id: write_id,
        result: Completion::Done,
    })
    .unwrap();
    assert_eq!(h.take_sent(), simple(0, 42));
}

// ---- Transmission: bad requests ---------------------------------------------------------------

#[test]
fn read_past_the_end_gets_einval_and_the_connection_stays_usable() {
    for structured in [false, true] {
        let mut h = Harness::negotiated(structured);
        let mut bytes = request(wire::NBD_CMD_READ, 0, 1, SIZE - 512, 1024);
        bytes.extend(request(wire::NBD_CMD_READ, 0, 2, 0, 512));
        h.feed(&bytes).unwrap();
        assert_eq!(h.requests.len(), 1);
        assert_eq!(h.requests[0].cookie, Cookie(2));
        let expected = if structured {
            structured_error(1, 22, "request past the end of the export")
        } else {
            simple(22, 1)
        };
        assert_eq!(h.take_sent(), expected);
    }
}

#[test]
fn write_past_the_end_gets_enospc_and_its_data_is_skipped() {
    let mut h = Harness::negotiated(false);
    let mut bytes = write(1, SIZE, &[0xee; 4096]);
    bytes.extend(write(2, 0, &[0x11; 512]));
    h.feed(&bytes).unwrap();
    assert_eq!(h.take_sent(), simple(28, 1));
    assert_eq!(h.requests.len(), 1);
    assert_eq!(
        h.requests[0].op,
        Op::Write {
            offset: 0,
            data: Bytes::from(vec![0x11; 512]),
            fua: false
        }
    );
}

#[test]
fn write_zeroes_past_the_end_gets_enospc() {
    let mut h = Harness::negotiated(false);
    h.feed(&request(wire::NBD_CMD_WRITE_ZEROES, 0, 1, SIZE - 512, 1024))
        .unwrap();
    assert_eq!(h.take_sent(), simple(28, 1));
}

#[test]
fn unaligned_requests_get_einval() {
    let mut h = Harness::negotiated(false);
    let mut bytes = request(wire::NBD_CMD_READ, 0, 1, 1, 512);
    bytes.extend(request(wire::NBD_CMD_READ, 0, 2, 0, 511));
    bytes.extend(write(3, 100, &[1; 512]));
    bytes.extend(request(wire::NBD_CMD_TRIM, 0, 4, 512, 100));
    bytes.extend(request(wire::NBD_CMD_READ, 0, 5, 0, 512));
    h.feed(&bytes).unwrap();
    let mut expected = simple(22, 1);
    for cookie in 2..=4 {
        expected.extend(simple(22, cookie));
    }
    assert_eq!(h.take_sent(), expected);
    assert_eq!(h.requests.len(), 1);
    assert_eq!(h.requests[0].cookie, Cookie(5));
}

#[test]
fn oversized_write_is_rejected_and_its_data_streamed_away_without_buffering() {
    let mut h = Harness::negotiated(true);
    let length = wire::MAX_BLOCK_SIZE + 512;
    h.feed(&request(wire::NBD_CMD_WRITE, 0, 1, 0, length))
        .unwrap();
    assert!(
        h.take_sent().is_empty(),
        "the reply waits until the client has sent the data"
    );
    let limit = h.conn.receive_limit();
    let chunk = vec![0xaa; 1 << 16];
    let mut left = length as usize;
    while left > 0 {
        let n = left.min(chunk.len());
        h.feed(&chunk[..n]).unwrap();
        left -= n;
        assert_eq!(
            h.conn.receive_window(),
            limit,
            "skipped data is never buffered"
        );
    }
    assert!(h.requests.is_empty());
    assert_eq!(
        h.take_sent(),
        structured_error(
            1,
            22,
            "request longer than the maximum block size of 32 MiB"
        )
    );
    h.feed(&request(wire::NBD_CMD_READ, 0, 2, 0, 512)).unwrap();
    assert_eq!(h.requests.len(), 1, "the next request decodes");
    assert_eq!(h.requests[0].cookie, Cookie(2));
}

#[test]
fn oversized_read_and_write_zeroes_get_einval() {
    let mut h = Harness::negotiated(false);
    let mut bytes = request(wire::NBD_CMD_READ, 0, 1, 0, wire::MAX_BLOCK_SIZE + 512);
    bytes.extend(request(
        wire::NBD_CMD_WRITE_ZEROES,
        0,
        2,
        0,
        wire::MAX_BLOCK_SIZE + 512,
    ));
    h.feed(&bytes).unwrap();
    let mut expected = simple(22, 1);
    expected.extend(simple(22, 2));
    assert_eq!(h.take_sent(), expected);
}

#[test]
fn unknown_command_gets_einval() {
    let mut h = Harness::negotiated(true);
    let mut bytes = request(0x42, 0, 1, 0, 512);
    bytes.extend(request(5, 0, 2, 0, 512)); // NBD_CMD_CACHE: not implemented
    bytes.extend(request(wire::NBD_CMD_READ, 0, 3, 0, 512));
    h.feed(&bytes).unwrap();
    let mut expected = structured_error(1, 22, "unknown or not advertised command");
    expected.extend(structured_error(2, 22, "unknown or not advertised command"));
    assert_eq!(h.take_sent(), expected);
    assert_eq!(h.requests.len(), 1);
}

#[test]
fn flags_that_do_not_belong_get_einval() {
    let plain = ExportFlags {
        flush: true,
        ..ExportFlags::default()
    };
    let mut h = Harness::negotiated_with(ServerConfig::default(), plain, false);
    let mut bytes = write(1, 0, &[0; 512]);
    bytes[4..6].copy_from_slice(&wire::NBD_CMD_FLAG_FUA.to_be_bytes()); // FUA without SEND_FUA
    bytes.extend(request(
        wire::NBD_CMD_READ,
        wire::NBD_CMD_FLAG_DF,
        2,
        0,
        512,
    )); // DF not advertised
    bytes.extend(request(
        wire::NBD_CMD_READ,
        wire::NBD_CMD_FLAG_NO_HOLE,
        3,
        0,
        512,
    )); // NO_HOLE on READ
    bytes.extend(request(wire::NBD_CMD_TRIM, 0, 4, 0, 512)); // TRIM not advertised
    bytes.extend(request(wire::NBD_CMD_WRITE_ZEROES, 0, 5, 0, 512)); // nor WRITE_ZEROES
    bytes.extend(request(wire::NBD_CMD_FLUSH, 0, 6, 512, 0)); // flush with an offset
    bytes.extend(request(wire::NBD_CMD_FLUSH, 0, 7, 0, 0)); // fine
    h.feed(&bytes).unwrap();
    let mut expected = Vec::new();
    for cookie in 1..=6 {
        expected.extend(simple(22, cookie));
    }
    assert_eq!(h.take_sent(), expected);
    assert_eq!(h.requests.len(), 1);
    assert_eq!(h.requests[0].op, Op::Flush);
}

#[test]
fn read_only_export_refuses_writes_with_eperm() {
    let ro = ExportFlags {
        read_only: true,
        ..ExportFlags::block_device()
    };
    let mut h = Harness::negotiated_with(ServerConfig::default(), ro, false);
    let mut bytes = write(1, 0, &[0; 512]);
    bytes.extend(request(wire::NBD_CMD_TRIM, 0, 2, 0, 512));
    bytes.extend(request(wire::NBD_CMD_READ, 0, 3, 0, 512));
    h.feed(&bytes).unwrap();
    let mut expected = simple(1, 1);
    expected.extend(simple(1, 2));
    assert_eq!(h.take_sent(), expected);
    assert_eq!(h.requests.len(), 1);
}

#[test]
fn bad_request_magic_is_fatal() {
    let mut h = Harness::negotiated(false);
    let mut bytes = request(wire::NBD_CMD_READ, 0, 1, 0, 512);
    bytes[3] = 0x14;
    let err = h.feed(&bytes).unwrap_err();
    assert_eq!(
        err,
        HandleError::Protocol(ProtocolError::BadRequestMagic { magic: 0x2560_9514 })
    );
    assert_eq!(h.conn.phase(), Phase::Closed);
    // Later inputs (e.g. a late completion) are ignored.
    h.input(Input::Completion {
        id: RequestId(0),
        result: Completion::Done,
    })
    .unwrap();
}

#[test]
fn garbage_after_a_valid_request_is_fatal_and_drops_the_queued_output() {
    let mut h = Harness::negotiated(false);
    let mut bytes = request(wire::NBD_CMD_FLUSH, 0, 1, 0, 0);
    bytes.extend(b"this is not an NBD request at all");
    let err = h.feed(&bytes).unwrap_err();
    assert!(matches!(
        err,
        HandleError::Protocol(ProtocolError::BadRequestMagic { .. })
    ));
    // A hard disconnect: nothing decoded in the same call is handed out.
    assert!(h.requests.is_empty());
    assert_eq!(h.conn.outstanding(), 0);
}

// ---- Back-pressure and usage errors -----------------------------------------------------------

#[test]
fn max_outstanding_stops_decoding_until_a_completion() {
    let config = ServerConfig {
        max_outstanding: 2,
        ..ServerConfig::default()
    };
    let mut h = Harness::negotiated_with(config, ExportFlags::block_device(), false);
    let mut bytes = Vec::new();
    for cookie in 1..=3 {
        bytes.extend(request(wire::NBD_CMD_READ, 0, cookie, 0, 512));
    }
    h.feed(&bytes).unwrap();
    assert_eq!(h.requests.len(), 2);
    assert_eq!(h.conn.outstanding(), 2);
    assert_eq!(h.conn.receive_window(), 0, "stop reading the socket");
    let first = h.requests.remove(0);
    h.input(Input::Completion {
        id: first.id,
        result: completion_for(&first),
    })
    .unwrap();
    assert_eq!(h.requests.len(), 2, "the third request came out");
    assert_eq!(h.requests[1].cookie, Cookie(3));
    assert!(h.conn.receive_window() == 0, "full again");
}

#[test]
fn unsent_bytes_stop_decoding_until_sent() {
    let config = ServerConfig {
        max_unsent_bytes: 100,
        ..ServerConfig::default()
    };
    let mut h = Harness::negotiated_with(config, ExportFlags::block_device(), false);
    // Feed directly, without the harness's automatic Sent reports.
    let mut bytes = Vec::new();
    for cookie in 1..=20 {
        bytes.extend(request(wire::NBD_CMD_READ, 0, cookie, SIZE, 512)); // each rejected: 16 bytes
    }
    h.conn.handle(Input::Received(&bytes)).unwrap();
    let mut replies = 0;
    while let Some(udrbd_nbd::Output::Send(_)) = h.conn.poll_output() {
        replies += 1;
    }
    assert_eq!(replies, 7, "7 x 16 bytes reach the 100-byte limit");
    assert_eq!(h.conn.receive_window(), 0);
    h.conn.handle(Input::Sent(112)).unwrap();
    let mut more = 0;
    while let Some(udrbd_nbd::Output::Send(_)) = h.conn.poll_output() {
        more += 1;
    }
    assert_eq!(more, 7);
    let err = h.conn.handle(Input::Sent(1000)).unwrap_err();
    assert!(matches!(
        err,
        HandleError::Usage(UsageError::SentTooMuch { .. })
    ));
}

#[test]
fn completion_usage_errors_change_nothing() {
    let mut h = Harness::negotiated(false);
    h.feed(&request(wire::NBD_CMD_READ, 0, 1, 0, 512)).unwrap();
    let id = h.requests[0].id;
    let err = h
        .input(Input::Completion {
            id: RequestId(99),
            result: Completion::Done,
        })
        .unwrap_err();
    assert_eq!(
        err,
        HandleError::Usage(UsageError::UnknownRequest { id: 99 })
    );
    let err = h
        .input(Input::Completion {
            id,
            result: Completion::Data(Bytes::from(vec![0; 100])),
        })
        .unwrap_err();
    assert!(matches!(
        err,
        HandleError::Usage(UsageError::CompletionMismatch { .. })
    ));
    let err = h
        .input(Input::Completion {
            id,
            result: Completion::Done,
        })
        .unwrap_err();
    assert!(matches!(
        err,
        HandleError::Usage(UsageError::CompletionMismatch { .. })
    ));
    assert_eq!(h.conn.outstanding(), 1);
    h.complete_all();
    assert_eq!(h.conn.outstanding(), 0);
}

#[test]
fn receive_beyond_the_limit_is_a_usage_error() {
    let mut h = Harness::negotiated(false);
    let room = h.conn.receive_window();
    let too_much = vec![0u8; room + 1];
    let err = h.conn.handle(Input::Received(&too_much)).unwrap_err();
    assert!(matches!(
        err,
        HandleError::Usage(UsageError::ReceiveBufferFull { .. })
    ));
    assert_eq!(h.conn.phase(), Phase::Transmission);
}
