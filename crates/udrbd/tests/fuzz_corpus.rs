//! Replays the cargo-fuzz corpus of `fuzz/fuzz_targets/config_parse.rs` on stable Rust.

use std::path::Path;

fn config_parse(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(config) = udrbd::config::Config::parse_str("fuzz.res", text)
    {
        for r in &config.resources {
            for h in &r.hosts {
                for name in &h.names {
                    let _ = config.resource_for_node(&r.name, name);
                }
            }
        }
    }
}

#[test]
fn replay_config_parse_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/config_parse");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/corpus/config_parse exists") {
        let path = entry.unwrap().path();
        config_parse(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n >= 3, "corpus has only {n} inputs");
    println!("replayed {n} inputs");
}
