//! The peer-protocol decoders of udrbd-wire on arbitrary bytes: typed errors, never a panic.
//! The checks are `udrbd_wire::fuzzing::wire_decode`, shared with the stable corpus replay
//! (crates/udrbd-wire/tests/fuzz_corpus.rs).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    udrbd_wire::fuzzing::wire_decode(data);
});
