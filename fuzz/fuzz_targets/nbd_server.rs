//! The NBD server machine on an arbitrary client byte stream: typed errors, never a panic, and
//! only valid requests handed to the device. The checks are `udrbd_nbd::fuzzing::nbd_server`,
//! shared with the stable corpus replay (crates/udrbd-nbd/tests/fuzz_corpus.rs).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    udrbd_nbd::fuzzing::nbd_server(data);
});
