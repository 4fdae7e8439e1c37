//! Every on-disk decoder of udrbd-meta on arbitrary bytes: typed errors, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = udrbd_meta::Superblock::decode(data);
    let _ = udrbd_meta::AlTransaction::decode(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = udrbd_meta::dump::parse_dump(text, 1 << 16);
        let _ = udrbd_meta::gi::apply_set_gi(text, Default::default(), Default::default());
    }
});
