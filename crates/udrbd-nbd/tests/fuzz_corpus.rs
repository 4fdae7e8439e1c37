//! Replays the cargo-fuzz corpus of `fuzz/fuzz_targets/nbd_server.rs` on stable Rust: every
//! client byte stream the fuzzer kept must still be served or refused with typed errors, never
//! a panic, with the same checks as the fuzz target (`udrbd_nbd::fuzzing::nbd_server`, which
//! both call).
// The test reads the corpus from disk; the library itself stays free of file IO.
#![allow(clippy::disallowed_methods)]

use std::path::Path;

use udrbd_nbd::fuzzing::{Reached, nbd_server};

#[test]
fn replay_nbd_server_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/nbd_server");
    let mut n = 0;
    let mut total = Reached::default();
    let mut closed = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/corpus/nbd_server exists") {
        let path = entry.unwrap().path();
        let reached = nbd_server(&std::fs::read(&path).unwrap());
        n += 1;
        total.transmission |= reached.transmission;
        total.requests += reached.requests;
        total.failed += reached.failed;
        closed += u32::from(reached.protocol_error);
    }
    assert!(n >= 4, "corpus has only {n} inputs");
    println!("replayed {n} inputs: {total:?}, {closed} closed by a protocol error");
    // The replay exercises the transmission phase, not only the handshake.
    assert!(
        total.transmission,
        "no input reached the transmission phase"
    );
    assert!(
        total.requests >= 10 && total.failed >= 1,
        "too few requests: {total:?}"
    );
    assert!(closed >= 1, "no input was closed by a protocol error");
}
