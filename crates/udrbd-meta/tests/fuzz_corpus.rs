//! Replays the cargo-fuzz corpus of `fuzz/fuzz_targets/meta_decode.rs` on stable Rust: every
//! input the fuzzer kept must still decode to a value or a typed error, never a panic.
// The test reads the corpus from disk; the library itself stays free of file IO.
#![allow(clippy::disallowed_methods)]

use std::path::Path;

fn meta_decode(data: &[u8]) {
    let _ = udrbd_meta::Superblock::decode(data);
    let _ = udrbd_meta::AlTransaction::decode(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = udrbd_meta::dump::parse_dump(text, 1 << 16);
        let _ = udrbd_meta::gi::apply_set_gi(text, Default::default(), Default::default());
    }
}

#[test]
fn replay_meta_decode_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/meta_decode");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/corpus/meta_decode exists") {
        let path = entry.unwrap().path();
        meta_decode(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n >= 4, "corpus has only {n} inputs");
    println!("replayed {n} inputs");
}
