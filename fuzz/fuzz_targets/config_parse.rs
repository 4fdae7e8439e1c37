//! The drbd.conf parser on arbitrary text: a located error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = udrbd::config::Config::parse_str("fuzz.res", text) {
            for r in &config.resources {
                for h in &r.hosts {
                    for name in &h.names {
                        let _ = config.resource_for_node(&r.name, name);
                    }
                }
            }
        }
    }
});
