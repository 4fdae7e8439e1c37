//! The drbd.conf parser: a realistic two-node config, then one test per error case with its
//! exact `file:line:column` and message, then a never-panics property.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;
use udrbd::config::{
    AfterSb0pri, Config, ConfigError, ErrorKind, MetaDisk, OnIoError, Protocol, parse_str,
};

const MAIN: &str = r#"# udrbd test config: common settings, then the resources from drbd.d/
global {
    usage-count no;
    disable-ip-verification;
}

common {
    startup { wfc-timeout 120; degr-wfc-timeout 60; }
    net {
        protocol C;
        timeout 50;             # 0.1 s units: 5 s
        ping-timeout 10;        # 1 s, overridden by r0
        connect-int 20;         # seconds
        max-buffers 8000;       # pages
        sndbuf-size 512K;       # bytes
        rcvbuf-size 1M;
        cram-hmac-alg sha1;
        shared-secret "s3cr\"et";
    }
    disk {
        on-io-error detach;     # the one behaviour udrbd has
        resync-rate 10M;        # KiB/s: 10 MiB/s = 10240
        c-fill-target 1M;       # sectors: 1 MiB = 2048
        c-plan-ahead 0;
    }
    handlers {
        split-brain "/usr/lib/drbd/notify-split-brain.sh root";
    }
    nbd { listen 127.0.0.1:10809; }
}

include "drbd.d/*.res";
"#;

const R0: &str = r#"resource r0 {
    net {
        ping-timeout 7;                 # overrides common
        after-sb-0pri discard-node-bob;
        congestion-fill 2G;             # sectors: 4194304
        ko-count 4;
        allow-two-primaries no;
        use-rle no;
        tcp-cork;                       # bare flag: yes
    }
    disk {
        c-max-rate 100M;                # KiB/s: 102400
        c-min-rate 4096;
        c-delay-target 5;               # 0.5 s
        al-extents 3389;
        md-flushes yes;
    }
    handlers {
        fence-peer "/usr/lib/drbd/crm-fence-peer.sh";
        split-brain "/bin/true";        # overrides common
    }
    skip {
        anything goes here { even "}" and nested blocks; }
    }
    device /dev/drbd0;                  # resource level: for every host not setting it
    disk /dev/vg/r0;
    meta-disk internal;
    on alice {
        address 192.168.1.1:7789;
    }
    on bob {
        device /dev/drbd_r0 minor 0;
        disk none;
        address ipv4 192.168.1.2:7789;
    }
}
"#;

const R1: &str = r#"resource "r1" {
    nbd { listen [::1]:10810; }
    on alice {
        volume 0 {
            device minor 7;
            disk /dev/sdb1;
            meta-disk /dev/sdc1 [2];
        }
        address ipv6 [fd00::1]:7790;
    }
    on bob carol {
        device /dev/drbd7;
        disk "/dev/disk/by-id/with space";
        flexible-meta-disk /dev/sdc2;
        address ipv6 [fd00::2]:7790;
    }
}
"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create dir");
    }
    fs::write(&path, text).expect("write file");
    path
}

fn realistic() -> (tempfile::TempDir, Config) {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = write(dir.path(), "drbd.conf", MAIN);
    write(dir.path(), "drbd.d/r0.res", R0);
    write(dir.path(), "drbd.d/r1.res", R1);
    let config = Config::load(&main).expect("realistic config loads");
    (dir, config)
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("socket address")
}

#[test]
fn realistic_config_loads_with_includes() {
    let (dir, config) = realistic();
    let names: Vec<&str> = config.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["r0", "r1"]);
    assert_eq!(config.files.len(), 3);
    assert_eq!(
        config.files[1].name,
        dir.path().join("drbd.d/r0.res").display().to_string()
    );
    let for_alice: Vec<&str> = config
        .resources_for_node("alice")
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(for_alice, ["r0", "r1"]);
    let for_carol: Vec<&str> = config
        .resources_for_node("carol")
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(for_carol, ["r1"]);
    assert!(config.resources_for_node("dave").is_empty());
}

#[test]
fn realistic_r0_for_alice_inherits_and_converts_units() {
    let (_dir, config) = realistic();
    let r0 = config
        .resource_for_node("r0", "alice")
        .expect("r0 resolves for alice");
    assert_eq!((r0.name.as_str(), r0.node.as_str()), ("r0", "alice"));
    assert_eq!(
        (r0.minor, r0.device.as_path()),
        (0, Path::new("/dev/drbd0"))
    );
    assert_eq!(r0.disk.as_deref(), Some(Path::new("/dev/vg/r0")));
    assert_eq!(r0.meta_disk, MetaDisk::Internal);
    assert_eq!(r0.address, addr("192.168.1.1:7789"));
    assert_eq!(r0.peer.names, ["bob"]);
    assert_eq!(r0.peer.address, addr("192.168.1.2:7789"));

    let net = &r0.options.net;
    assert_eq!(net.protocol, Protocol::C);
    assert_eq!(net.timeout, Duration::from_secs(5), "0.1 s units");
    assert_eq!(
        net.ping_timeout,
        Duration::from_millis(700),
        "resource overrides common"
    );
    assert_eq!(net.connect_int, Duration::from_secs(20), "seconds");
    assert_eq!(net.ping_int, Duration::from_secs(10), "default");
    assert_eq!(net.max_buffers, 8000);
    assert_eq!(net.sndbuf_size_bytes, 512 * 1024);
    assert_eq!(net.rcvbuf_size_bytes, 1024 * 1024);
    assert_eq!(net.congestion_fill_sectors, 4_194_304, "2G in sectors");
    assert_eq!(net.ko_count, 4);
    assert_eq!(net.cram_hmac_alg.as_deref(), Some("sha1"));
    assert_eq!(
        net.shared_secret.as_deref(),
        Some("s3cr\"et"),
        "escaped quote"
    );
    assert_eq!(
        net.after_sb_0pri,
        AfterSb0pri::DiscardRemote,
        "discard-node-bob, seen by alice"
    );
    assert!(!net.allow_two_primaries && !net.use_rle && net.tcp_cork);
    assert_eq!(net.max_epoch_size, 2048, "default");

    let disk = &r0.options.disk;
    assert_eq!(disk.on_io_error, OnIoError::Detach);
    assert_eq!(
        disk.resync_rate_kib_per_sec, 10_240,
        "10M relative to bytes"
    );
    assert_eq!(disk.c_fill_target_sectors, 2048, "1M in sectors");
    assert_eq!(disk.c_plan_ahead, Duration::ZERO);
    assert_eq!(disk.c_max_rate_kib_per_sec, 102_400);
    assert_eq!(disk.c_min_rate_kib_per_sec, 4096);
    assert_eq!(disk.c_delay_target, Duration::from_millis(500));
    assert_eq!(disk.al_extents, 3389);
    assert!(disk.md_flushes && disk.disk_flushes && disk.al_updates);

    let startup = &r0.options.startup;
    assert_eq!(startup.wfc_timeout, Duration::from_secs(120));
    assert_eq!(startup.degr_wfc_timeout, Duration::from_secs(60));
    assert_eq!(startup.outdated_wfc_timeout, Duration::ZERO);

    let handlers = &r0.options.handlers;
    assert_eq!(handlers.get("split-brain"), Some("/bin/true"));
    assert_eq!(
        handlers.get("fence-peer"),
        Some("/usr/lib/drbd/crm-fence-peer.sh")
    );
    assert_eq!(handlers.commands.len(), 2);
    assert_eq!(
        r0.options.nbd.listen,
        Some(addr("127.0.0.1:10809")),
        "from common"
    );
}

#[test]
fn realistic_r0_for_bob_is_diskless_with_a_named_device() {
    let (_dir, config) = realistic();
    let r0 = config
        .resource_for_node("r0", "bob")
        .expect("r0 resolves for bob");
    assert_eq!(
        (r0.minor, r0.device.as_path()),
        (0, Path::new("/dev/drbd_r0"))
    );
    assert_eq!(r0.disk, None);
    assert_eq!(r0.address, addr("192.168.1.2:7789"));
    assert_eq!(r0.peer.names, ["alice"]);
    assert_eq!(r0.options.net.after_sb_0pri, AfterSb0pri::DiscardLocal);
}

#[test]
fn realistic_r1_volume_zero_ipv6_and_meta_disk_spellings() {
    let (_dir, config) = realistic();
    let alice = config
        .resource_for_node("r1", "alice")
        .expect("r1 for alice");
    assert_eq!(
        (alice.minor, alice.device.as_path()),
        (7, Path::new("/dev/drbd7"))
    );
    assert_eq!(alice.disk.as_deref(), Some(Path::new("/dev/sdb1")));
    assert_eq!(
        alice.meta_disk,
        MetaDisk::Indexed(PathBuf::from("/dev/sdc1"), 2)
    );
    assert_eq!(alice.address, addr("[fd00::1]:7790"));
    assert_eq!(alice.peer.names, ["bob", "carol"]);
    assert_eq!(
        alice.options.nbd.listen,
        Some(addr("[::1]:10810")),
        "resource overrides common"
    );
    assert_eq!(
        alice.options.net.ping_timeout,
        Duration::from_secs(1),
        "common only"
    );

    let carol = config
        .resource_for_node("r1", "carol")
        .expect("r1 for carol");
    assert_eq!(
        (carol.minor, carol.device.as_path()),
        (7, Path::new("/dev/drbd7"))
    );
    assert_eq!(
        carol.disk.as_deref(),
        Some(Path::new("/dev/disk/by-id/with space"))
    );
    assert_eq!(
        carol.meta_disk,
        MetaDisk::FlexExternal(PathBuf::from("/dev/sdc2"))
    );
    assert_eq!(carol.address, addr("[fd00::2]:7790"));
    assert_eq!(carol.peer.address, addr("[fd00::1]:7790"));
}

#[test]
fn bare_resource_gets_every_drbd_default() {
    let text = "resource r { on a { device minor 1; disk /d; address 10.0.0.1:7000; }\n\
                on b { device minor 1; disk /d; address 10.0.0.2:7000; } }";
    let config = parse_str("t.res", text).expect("parses");
    let resolved = config.resource_for_node("r", "b").expect("resolves");
    assert_eq!(resolved.options, udrbd::config::EffectiveOptions::default());
    assert_eq!(resolved.options.net.timeout, Duration::from_secs(6));
    assert_eq!(resolved.options.disk.c_plan_ahead, Duration::from_secs(2));
    assert_eq!(resolved.options.nbd.listen, None);
}

// ---- errors: exact position and message ----

fn error(text: &str) -> String {
    match parse_str("t.res", text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(error) => error.to_string(),
    }
}

/// A two-host resource `r0` with `extra` inside its `net` section (line 3).
fn in_net(extra: &str) -> String {
    format!(
        "resource r0 {{\n  net {{\n    {extra}\n  }}\n  on alice {{ device minor 0; disk /d; address 10.0.0.1:7789; }}\n  on bob {{ device minor 0; disk /d; address 10.0.0.2:7789; }}\n}}\n"
    )
}

/// The same, with `extra` inside `disk`.
fn in_disk(extra: &str) -> String {
    in_net(extra).replacen("net {", "disk {", 1)
}

#[test]
fn unknown_keyword_at_top_level() {
    assert_eq!(
        error("# a comment\nresorce r0 {\n}\n"),
        "t.res:2:1: unknown keyword 'resorce' at top level \
         (expected one of global, common, resource, include, skip)"
    );
}

#[test]
fn unknown_keyword_in_net() {
    let message = error(&in_net("protocl C;"));
    assert!(
        message.starts_with(
            "t.res:3:5: unknown keyword 'protocl' in net section \
             (expected one of protocol, cram-hmac-alg, shared-secret, allow-two-primaries,"
        ),
        "{message}"
    );
    assert!(
        message.ends_with("congestion-extents, csums-after-crash-only, tcp-congestion)"),
        "{message}"
    );
}

#[test]
fn unknown_keyword_in_disk() {
    let message = error(&in_disk("on-io-eror detach;"));
    assert!(
        message.starts_with(
            "t.res:3:5: unknown keyword 'on-io-eror' in disk section \
             (expected one of on-io-error, fencing, disk-timeout, al-extents,"
        ),
        "{message}"
    );
}

#[test]
fn unknown_keyword_in_on_section() {
    assert_eq!(
        error("resource r0 {\n  on alice {\n    adress 10.0.0.1:7789;\n  }\n}\n"),
        "t.res:3:5: unknown keyword 'adress' in on section \
         (expected one of device, disk, meta-disk, address, volume)"
    );
}

#[test]
fn missing_semicolon_before_next_option() {
    let text = in_net("protocol C\n    timeout 60;");
    assert_eq!(
        error(&text),
        "t.res:3:15: missing ';' after 'protocol C', found 'timeout' (expected ';')"
    );
}

#[test]
fn missing_semicolon_before_closing_brace() {
    assert_eq!(
        error("resource r0 {\n  net { protocol C }\n}\n"),
        "t.res:2:19: missing ';' after 'protocol C', found '}' (expected ';')"
    );
}

#[test]
fn missing_semicolon_after_bare_flag() {
    assert_eq!(
        error(&in_net("tcp-cork\n    timeout 60;")),
        "t.res:3:13: missing ';' after 'tcp-cork', found 'timeout' (expected ';')"
    );
}

#[test]
fn unknown_host_when_resolving() {
    let config = parse_str("t.res", &in_net("protocol C;")).expect("parses");
    let error = config
        .resource_for_node("r0", "carol")
        .expect_err("carol is no host");
    assert_eq!(
        error.to_string(),
        "t.res:1:10: unknown host carol in resource r0 (hosts: alice, bob)"
    );
    assert!(matches!(error.kind(), ErrorKind::UnknownHost { .. }));
}

#[test]
fn unknown_resource_when_resolving() {
    let config = parse_str("t.res", &in_net("protocol C;")).expect("parses");
    let error = config.resource_for_node("r9", "alice").expect_err("no r9");
    assert_eq!(
        error.to_string(),
        "t.res: unknown resource 'r9' (expected one of r0)"
    );
}

#[test]
fn bad_enum_value() {
    assert_eq!(
        error(&in_net("protocol D;")),
        "t.res:3:14: bad value 'D' for 'protocol' (expected one of A, B, C)"
    );
    assert_eq!(
        error(&in_net("rr-conflict violent;")),
        "t.res:3:17: bad value 'violent' for 'rr-conflict' \
         (expected one of disconnect, violently, call-pri-lost)"
    );
}

#[test]
fn bad_flag_value() {
    assert_eq!(
        error(&in_net("use-rle maybe;")),
        "t.res:3:13: bad value 'maybe' for 'use-rle' (expected yes or no)"
    );
}

#[test]
fn out_of_range_value() {
    assert_eq!(
        error(&in_net("timeout 700;")),
        "t.res:3:13: value 700 of 'timeout' is out of range \
         (expected 1 to 600 tenths of a second)"
    );
    assert_eq!(
        error(&in_net("sndbuf-size 20M;")),
        "t.res:3:17: value 20M (20971520 bytes) of 'sndbuf-size' is out of range \
         (expected 0 to 10485760 bytes)"
    );
    assert_eq!(
        error(&in_net("max-buffers 16;")),
        "t.res:3:17: value 16 of 'max-buffers' is out of range (expected 32 to 131072 pages)"
    );
    assert_eq!(
        error(&in_disk("al-extents 99999999999999999999999;")),
        "t.res:3:16: value 99999999999999999999999 of 'al-extents' is out of range \
         (expected 67 to 65534)"
    );
}

#[test]
fn bad_suffix() {
    assert_eq!(
        error(&in_disk("resync-rate 10X;")),
        "t.res:3:17: bad unit suffix 'X' in '10X' for 'resync-rate' (expected one of K, M, G)"
    );
    assert_eq!(
        error(&in_net("timeout 6K;")),
        "t.res:3:13: bad unit suffix 'K' in '6K' for 'timeout' \
         (expected no suffix: a number of tenths of a second)"
    );
}

#[test]
fn bad_number() {
    assert_eq!(
        error(&in_net("ko-count -1;")),
        "t.res:3:14: bad value '-1' for 'ko-count' (expected a number)"
    );
}

#[test]
fn volume_other_than_zero_is_rejected() {
    let text =
        "resource r0 {\n  on alice {\n    volume 1 {\n      device minor 1;\n    }\n  }\n}\n";
    assert_eq!(
        error(text),
        "t.res:3:12: volume 1 is not supported yet (expected volume 0)"
    );
}

#[test]
fn unsupported_option_rejected_unless_value_is_udrbds_behaviour() {
    for policy in ["pass_on", "detach", "call-local-io-error"] {
        let text = in_disk(&format!("on-io-error {policy};"));
        assert!(parse_str("t.res", &text).is_ok(), "{policy}");
    }
    assert!(parse_str("t.res", &in_disk("disk-timeout 30;")).is_ok());
    assert_eq!(
        error(&in_disk("al-updates no;")),
        "t.res:3:5: option 'al-updates' is not supported yet with value 'no' \
         (expected 'yes', the only behaviour udrbd has)"
    );
    assert!(parse_str("t.res", &in_disk("al-updates;")).is_ok());
    assert!(parse_str("t.res", &in_disk("disk-barrier no;")).is_ok());
    assert!(parse_str("t.res", &in_disk("disk-timeout 0;")).is_ok());
    let startup = in_net("protocol C;").replacen("net {", "startup {", 1);
    assert!(
        parse_str("t.res", &startup).is_err(),
        "protocol is no startup option"
    );
    let startup = in_net("become-primary-on alice;").replacen("net {", "startup {", 1);
    assert_eq!(
        error(&startup),
        "t.res:3:5: option 'become-primary-on' is not supported yet (expected it left out)"
    );
    let options = in_net("cpu-mask ff;").replacen("net {", "options {", 1);
    assert_eq!(
        error(&options),
        "t.res:3:5: option 'cpu-mask' is not supported yet (expected it left out)"
    );
}

#[test]
fn unterminated_block() {
    assert_eq!(
        error("resource r0 {\n  net {\n    protocol C;\n"),
        "t.res:2:7: unterminated block: '{' after 'net' is never closed (expected '}')"
    );
}

#[test]
fn unterminated_string() {
    assert_eq!(
        error("resource r0 {\n  handlers {\n    split-brain \"echo hi;\n  }\n}\n"),
        "t.res:3:17: unterminated string (expected '\"' before the end of the line)"
    );
}

#[test]
fn duplicate_resource() {
    let text = format!("{}\nresource r0 {{ }}\n", in_net("protocol C;"));
    assert_eq!(
        error(&text),
        "t.res:9:10: duplicate resource 'r0', first at t.res:1:10 (expected each resource once)"
    );
}

#[test]
fn duplicate_option() {
    assert_eq!(
        error(&in_net("protocol C; protocol A;")),
        "t.res:3:17: duplicate option 'protocol', first at t.res:3:5 (expected each option once)"
    );
}

#[test]
fn device_without_a_minor() {
    let text = "resource r0 {\n  device /dev/sdb;\n}\n";
    assert_eq!(
        error(text),
        "t.res:2:10: bad value '/dev/sdb' for 'device' \
         (expected /dev/drbdN, minor N or PATH minor N)"
    );
}

#[test]
fn ipv6_address_needs_the_family() {
    let text = "resource r0 {\n  on a {\n    address [fd00::1]:7789;\n  }\n}\n";
    assert_eq!(
        error(text),
        "t.res:3:13: bad value '[fd00::1]:7789' for 'address' \
         (expected [ipv4] A.B.C.D:PORT or ipv6 [ADDR]:PORT)"
    );
}

#[test]
fn host_without_address() {
    let text = "resource r0 {\n  on alice {\n    device minor 0;\n    disk /d;\n  }\n}\n";
    assert_eq!(
        error(text),
        "t.res:2:3: missing 'address' for host 'alice' (expected address A.B.C.D:PORT;)"
    );
}

#[test]
fn timeout_must_be_below_ping_int() {
    let config = parse_str("t.res", &in_net("ping-int 5; timeout 60;")).expect("parses");
    let error = config
        .resource_for_node("r0", "alice")
        .expect_err("6 s >= 5 s");
    assert_eq!(
        error.to_string(),
        "t.res:3:17: 'timeout' (60 tenths of a second) is not shorter than 'ping-int' (5 s) \
         (expected timeout < connect-int and timeout < ping-int)"
    );
}

#[test]
fn three_hosts_are_refused_when_resolving() {
    let text = "resource r0 {\n  device minor 0; disk /d;\n  on a { address 10.0.0.1:1; }\n  on b { address 10.0.0.2:1; }\n  on c { address 10.0.0.3:1; }\n}\n";
    let config = parse_str("t.res", text).expect("parses");
    let error = config
        .resource_for_node("r0", "a")
        .expect_err("three hosts");
    assert_eq!(
        error.to_string(),
        "t.res:1:10: resource 'r0' has 3 'on' sections (expected exactly 2)"
    );
}

#[test]
fn include_in_parse_str_is_refused() {
    assert_eq!(
        error("include \"drbd.d/*.res\";\n"),
        "t.res:1:9: include \"drbd.d/*.res\" cannot be read by parse_str (expected Config::load)"
    );
}

#[test]
fn include_of_a_missing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = write(dir.path(), "main.res", "# main\ninclude \"missing.res\";\n");
    let error = Config::load(&main).expect_err("missing include");
    assert_eq!(
        error.to_string(),
        format!(
            "{}:2:9: include \"missing.res\" matched no file (expected an existing file)",
            main.display()
        )
    );
}

#[test]
fn include_glob_matching_nothing_includes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = write(dir.path(), "main.res", "include \"drbd.d/*.res\";\n");
    let config = Config::load(&main).expect("an empty glob is fine");
    assert!(config.resources.is_empty());
}

#[test]
fn include_cycle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = write(dir.path(), "a.res", "include \"b.res\";\n");
    let b = write(dir.path(), "b.res", "\n  include \"a.res\";\n");
    let error = Config::load(&a).expect_err("cycle");
    assert_eq!(
        error.to_string(),
        format!(
            "{b}:2:11: include cycle: {a} -> {b} -> {a} (expected includes without a cycle)",
            a = a.display(),
            b = b.display()
        )
    );
}

#[test]
fn errors_in_included_files_name_that_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = write(dir.path(), "main.res", "common { }\ninclude \"d/*.res\";\n");
    let bad = write(
        dir.path(),
        "d/bad.res",
        "resource r0 {\n  net {\n    protocol Z;\n  }\n}\n",
    );
    let error = Config::load(&main).expect_err("bad value in the included file");
    assert_eq!(
        error.to_string(),
        format!(
            "{}:3:14: bad value 'Z' for 'protocol' (expected one of A, B, C)",
            bad.display()
        )
    );
}

#[test]
fn top_level_file_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nope.res");
    let error = Config::load(&path).expect_err("no file");
    assert_eq!(
        error.to_string(),
        format!(
            "{}: cannot read file: no such file (expected a readable regular file)",
            path.display()
        )
    );
    assert!(error.position().is_none());
}

#[test]
fn fancy_report_shows_the_source_line() {
    let error: ConfigError = parse_str("t.res", &in_net("protocol D;")).expect_err("bad value");
    let mut report = String::new();
    let handler =
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor());
    handler.render_report(&mut report, &error).expect("render");
    assert!(report.contains("[t.res:3:14]"), "{report}");
    assert!(report.contains("protocol D;"), "{report}");
    assert!(report.contains("here"), "{report}");
}

// ---- never panics ----

/// Statements made of DRBD's words and symbols, to reach deeper than random text does.
fn drbd_like() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("resource".to_owned()),
        Just("on".to_owned()),
        Just("net".to_owned()),
        Just("disk".to_owned()),
        Just("volume".to_owned()),
        Just("device".to_owned()),
        Just("minor".to_owned()),
        Just("meta-disk".to_owned()),
        Just("address".to_owned()),
        Just("ipv6".to_owned()),
        Just("common".to_owned()),
        Just("skip".to_owned()),
        Just("include".to_owned()),
        Just("protocol".to_owned()),
        Just("after-sb-0pri".to_owned()),
        Just("timeout".to_owned()),
        Just("resync-rate".to_owned()),
        Just("{".to_owned()),
        Just("}".to_owned()),
        Just(";".to_owned()),
        Just("\"".to_owned()),
        Just("#".to_owned()),
        Just("\n".to_owned()),
        "[a-z0-9:/\\[\\].-]{1,8}",
        "[0-9]{1,25}[KMGx]?",
    ];
    prop::collection::vec(token, 0..80).prop_map(|tokens| tokens.join(" "))
}

fn exercise(text: &str) {
    if let Ok(config) = parse_str("fuzz.res", text) {
        for resource in &config.resources {
            for name in resource.host_names() {
                let _ = config.resource_for_node(&resource.name, name);
            }
        }
    }
    if let Err(error) = parse_str("fuzz.res", text) {
        let _ = error.to_string();
    }
}

proptest! {
    #[test]
    fn parse_str_never_panics_on_any_string(text in ".*") {
        exercise(&text);
    }

    #[test]
    fn parse_str_never_panics_on_drbd_like_text(text in drbd_like()) {
        exercise(&text);
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let text = "a {".repeat(100_000);
    let message = error(&text);
    assert!(message.contains("blocks nested too deeply"), "{message}");
    let skip = format!("skip {}", "{".repeat(100_000));
    assert!(error(&skip).contains("unterminated block"));
}

/// udrbd always flushes data and meta-data: turning flushes off is not supported (yet), and is
/// refused rather than silently ignored.
#[test]
fn turning_flushes_off_is_not_supported_yet() {
    for option in ["disk-flushes", "md-flushes", "disk-drain"] {
        let text = format!(
            "resource r0 {{\n  disk {{ {option} no; }}\n  on a {{ device minor 0; disk /x; address 127.0.0.1:7789; meta-disk internal; }}\n  on b {{ device minor 0; disk /y; address 127.0.0.2:7789; meta-disk internal; }}\n}}\n"
        );
        let e = parse_str("t.res", &text).unwrap_err().to_string();
        assert!(e.starts_with("t.res:2:"), "{e}");
        assert!(e.contains("not supported yet"), "{e}");
        let ok = text.replace(" no;", " yes;");
        parse_str("t.res", &ok).unwrap();
    }
}

/// `tcp-congestion` (udrbd's own net option) names the peer sockets' congestion control;
/// a name longer than the kernel's 15 characters is refused where it stands.
#[test]
fn tcp_congestion_names_the_congestion_control() {
    let config = parse_str("t.res", &in_net("tcp-congestion cubic;")).unwrap();
    let resolved = config.resource_for_node("r0", "alice").unwrap();
    assert_eq!(
        resolved.options.net.tcp_congestion.as_deref(),
        Some("cubic")
    );
    let config = parse_str("t.res", &in_net("")).unwrap();
    let resolved = config.resource_for_node("r0", "alice").unwrap();
    assert_eq!(resolved.options.net.tcp_congestion, None, "the system's");
    let message = error(&in_net("tcp-congestion a-name-of-sixteen;"));
    assert!(message.starts_with("t.res:3:20: "), "{message}");
}
