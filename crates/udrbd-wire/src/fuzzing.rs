//! The checks of the `wire_decode` cargo-fuzz target (`fuzz/fuzz_targets/wire_decode.rs`),
//! shared with the stable replay of its corpus (`tests/fuzz_corpus.rs`) so the two cannot
//! drift apart. Not part of the protocol API.
//!
//! The first byte picks the header format, the integrity digest length and how the stream is
//! cut; the rest is the stream. Every frame that decodes must re-encode and decode to itself;
//! bitmap packets go to a receiver; the same bytes are also tried as a compressed bitmap code
//! and as the words of a bitmap that must survive a send/receive round trip. Bad input gets
//! typed errors; a panic here is a bug (the assertions are the fuzzer's oracle).

use bytes::Bytes;
use udrbd_meta::Bitmap;

use crate::{
    BitmapReceiver, BitmapSender, CompressedBitmap, DecodeContext, Deframer, HeaderFormat, Packet,
};

/// Runs every check on one fuzzer input.
pub fn wire_decode(data: &[u8]) {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let format = [
        HeaderFormat::Short,
        HeaderFormat::ShortOrBig,
        HeaderFormat::Long,
    ][usize::from(control % 3)];
    let digest_len = [0, 4, 32, 64][usize::from((control >> 2) & 3)];
    let cut = usize::from(control >> 4) + 1;
    let bits = (stream.len() as u64 * 37) % 9000;

    let context = DecodeContext::new(format).with_integrity_digest_len(digest_len);
    let mut deframer = Deframer::new(context);
    let mut receiver = BitmapReceiver::new(bits, format);
    let mut bitmap = Bitmap::new(bits);
    // Odd chunks go in sliced (push_bytes), even ones copied (push).
    let shared = Bytes::copy_from_slice(stream);
    for (i, chunk) in stream.chunks(cut).enumerate() {
        if i % 2 == 1 {
            let at = chunk.as_ptr() as usize - stream.as_ptr() as usize;
            deframer.push_bytes(shared.slice(at..at + chunk.len()));
        } else {
            deframer.push(chunk);
        }
        while let Ok(Some(frame)) = deframer.next_frame() {
            if let Ok(encoded) = frame.packet.encode(frame.volume, format) {
                let mut again = Deframer::new(context);
                again.push(&encoded.to_vec());
                let decoded = again.next_frame().expect("re-encoded packet decodes");
                assert_eq!(decoded.as_ref().map(|f| &f.packet), Some(&frame.packet));
            }
            if matches!(
                frame.packet,
                Packet::Bitmap(_) | Packet::CompressedBitmap(_)
            ) {
                let _ = receiver.receive(&frame.packet, &mut bitmap);
            }
        }
    }

    // The bytes as a compressed bitmap code.
    let mut receiver = BitmapReceiver::new(bits, HeaderFormat::Long);
    let code = CompressedBitmap {
        first_run_set: control & 1 == 1,
        pad_bits: (control >> 1) & 7,
        code: Bytes::copy_from_slice(&stream[..stream.len().min(4079)]),
    };
    let _ = receiver.receive(&Packet::CompressedBitmap(code), &mut Bitmap::new(bits));

    // The bytes as bitmap words: sender then receiver reproduce them.
    let mut source = Bitmap::new(bits);
    let words: Vec<u64> = stream
        .chunks(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(w)
        })
        .collect();
    source.or_words(0, &words);
    let mut sender = BitmapSender::new(bits, format, control & 0x80 == 0);
    let mut receiver = BitmapReceiver::new(bits, format);
    let mut received = Bitmap::new(bits);
    while let Some(packet) = sender.next_packet(&source) {
        receiver
            .receive(&packet, &mut received)
            .expect("our own bitmap packets are accepted");
    }
    assert!(receiver.is_done());
    assert_eq!(received.words(), source.words());
}
