//! Replays the cargo-fuzz corpus of `fuzz/fuzz_targets/wire_decode.rs` on stable Rust: every
//! input the fuzzer kept must still decode to values or typed errors, never a panic, with the
//! same checks as the fuzz target (`udrbd_wire::fuzzing::wire_decode`, which both call).
// The test reads the corpus from disk; the library itself stays free of file IO.
#![allow(clippy::disallowed_methods)]

use std::path::Path;

use udrbd_wire::fuzzing::wire_decode;
#[test]
fn replay_wire_decode_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/wire_decode");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/corpus/wire_decode exists") {
        let path = entry.unwrap().path();
        wire_decode(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n >= 4, "corpus has only {n} inputs");
    println!("replayed {n} inputs");
}
