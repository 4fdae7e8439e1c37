//! From a resolved drbd.conf resource to the engine's [`NetConfig`]: the peer's name and
//! address, the `net` section, and the resync-controller options of `disk`.
//!
//! Pure mapping, no IO. The daemon calls [`net_config`] once before it starts the resource
//! loops, so an option the engine cannot use (an unknown cram-hmac-alg) stops the daemon with a
//! message instead of leaving one resource unable to connect.

use std::time::Duration;

use udrbd_core::NetConfig;
use udrbd_core::connection::CramHmac;
use udrbd_core::resync_controller::ResyncControllerConfig;
use udrbd_core::sync_decision as sd;
use udrbd_wire::WireProtocol;

use crate::config::{
    AfterSb0pri, AfterSb1pri, AfterSb2pri, DiskOptions, NetOptions, Protocol, ResolvedResource,
    RrConflict,
};

/// The engine's net configuration of `resource`: its own name and address, the peer's, and
/// every `net` option the engine reads. `connect_at_start` is false: the daemon issues
/// `connect` itself after the attach (like `drbdadm up`).
pub fn net_config(resource: &ResolvedResource) -> Result<NetConfig, String> {
    let peer_name = resource
        .peer
        .names
        .first()
        .cloned()
        .unwrap_or_else(|| "peer".to_string());
    let mut c = NetConfig::new(
        &resource.node,
        resource.address,
        &peer_name,
        resource.peer.address,
    );
    let net = &resource.options.net;
    c.protocol = protocol(net.protocol);
    c.cram_hmac = cram_hmac(net).map_err(|e| format!("{}: {e}", resource.name))?;
    c.split_brain = split_brain_policy(net);
    c.timeout = net.timeout;
    c.ko_count = net.ko_count;
    c.connect_int = net.connect_int;
    c.ping_int = net.ping_int;
    c.ping_timeout = net.ping_timeout;
    c.socket_check_timeout = net.socket_check_timeout;
    c.max_epoch_size = net.max_epoch_size;
    c.sndbuf_size = net.sndbuf_size_bytes;
    c.use_rle = net.use_rle;
    c.resync = resync_controller(&resource.options.disk, net);
    c.resync
        .validate()
        .map_err(|e| format!("{}: {e}", resource.name))?;
    c.discard_my_data = false;
    c.connect_at_start = false;
    c.verify_alg = net
        .verify_alg
        .as_deref()
        .map(udrbd_core::VerifyAlg::new)
        .transpose()
        .map_err(|e| format!("{}: {e}", resource.name))?;
    c.csums_alg = net
        .csums_alg
        .as_deref()
        .map(udrbd_core::VerifyAlg::new)
        .transpose()
        .map_err(|e| {
            format!(
                "{}: csums-alg {:?} is not supported (udrbd computes crc32c, sha1, sha256 and sha512)",
                resource.name, e.name
            )
        })?;
    Ok(c)
}

fn protocol(p: Protocol) -> WireProtocol {
    match p {
        Protocol::A => WireProtocol::A,
        Protocol::B => WireProtocol::B,
        Protocol::C => WireProtocol::C,
    }
}

/// `cram-hmac-alg` turns authentication on; `shared-secret` is its key (empty if unset, as in
/// DRBD). A secret without an algorithm is ignored, as DRBD does.
fn cram_hmac(net: &NetOptions) -> Result<Option<CramHmac>, String> {
    let Some(alg) = &net.cram_hmac_alg else {
        return Ok(None);
    };
    let secret = net.shared_secret.as_deref().unwrap_or("");
    CramHmac::new(alg, secret.as_bytes())
        .map(Some)
        .map_err(|e| e.to_string())
}

/// after-sb-0pri/1pri/2pri, always-asbp and rr-conflict. `discard-node-NAME` was resolved to
/// discard-local/remote by the config resolver (against this node's names).
fn split_brain_policy(net: &NetOptions) -> sd::SplitBrainPolicy {
    sd::SplitBrainPolicy {
        after_sb_0pri: match &net.after_sb_0pri {
            AfterSb0pri::Disconnect => sd::AfterSb0pri::Disconnect,
            AfterSb0pri::DiscardYoungerPrimary => sd::AfterSb0pri::DiscardYoungerPrimary,
            AfterSb0pri::DiscardOlderPrimary => sd::AfterSb0pri::DiscardOlderPrimary,
            AfterSb0pri::DiscardZeroChanges => sd::AfterSb0pri::DiscardZeroChanges,
            AfterSb0pri::DiscardLeastChanges => sd::AfterSb0pri::DiscardLeastChanges,
            AfterSb0pri::DiscardLocal => sd::AfterSb0pri::DiscardLocal,
            AfterSb0pri::DiscardRemote => sd::AfterSb0pri::DiscardRemote,
            // The resolver never leaves this; a bug if it did. Disconnect is the safe choice.
            AfterSb0pri::DiscardNode(_) => sd::AfterSb0pri::Disconnect,
        },
        after_sb_1pri: match net.after_sb_1pri {
            AfterSb1pri::Disconnect => sd::AfterSb1pri::Disconnect,
            AfterSb1pri::Consensus => sd::AfterSb1pri::Consensus,
            AfterSb1pri::ViolentlyAs0p => sd::AfterSb1pri::ViolentlyAs0p,
            AfterSb1pri::DiscardSecondary => sd::AfterSb1pri::DiscardSecondary,
            AfterSb1pri::CallPriLostAfterSb => sd::AfterSb1pri::CallPriLostAfterSb,
        },
        after_sb_2pri: match net.after_sb_2pri {
            AfterSb2pri::Disconnect => sd::AfterSb2pri::Disconnect,
            AfterSb2pri::ViolentlyAs0p => sd::AfterSb2pri::ViolentlyAs0p,
            AfterSb2pri::CallPriLostAfterSb => sd::AfterSb2pri::CallPriLostAfterSb,
        },
        always_asbp: net.always_asbp,
        rr_conflict: match net.rr_conflict {
            RrConflict::Disconnect => sd::RrConflict::Disconnect,
            RrConflict::Violently => sd::RrConflict::Violently,
            RrConflict::CallPriLost => sd::RrConflict::CallPriLost,
        },
    }
}

/// A duration in DRBD's 0.1 s unit.
fn tenths(d: Duration) -> u64 {
    u64::try_from(d.as_millis() / 100).unwrap_or(u64::MAX)
}

fn resync_controller(disk: &DiskOptions, net: &NetOptions) -> ResyncControllerConfig {
    ResyncControllerConfig {
        resync_rate_kib_per_sec: u64::from(disk.resync_rate_kib_per_sec),
        c_plan_ahead_tenths: tenths(disk.c_plan_ahead),
        c_fill_target_sectors: disk.c_fill_target_sectors,
        c_delay_target_tenths: tenths(disk.c_delay_target),
        c_max_rate_kib_per_sec: u64::from(disk.c_max_rate_kib_per_sec),
        c_min_rate_kib_per_sec: u64::from(disk.c_min_rate_kib_per_sec),
        max_buffers_pages: u64::from(net.max_buffers),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const BASE: &str = "  on alice { device /dev/drbd1; disk /tmp/a; address 127.0.0.11:7001; meta-disk internal; }\n  on bob { device /dev/drbd1; disk /tmp/b; address 127.0.0.12:7002; meta-disk internal; }\n";

    fn resolve(sections: &str, node: &str) -> ResolvedResource {
        let text = format!("resource r0 {{\n{sections}\n{BASE}}}\n");
        let config = Config::parse_str("test.res", &text).unwrap();
        config.resource_for_node("r0", node).unwrap()
    }

    #[test]
    fn defaults_are_drbds() {
        let c = net_config(&resolve("", "alice")).unwrap();
        assert_eq!(c.own_name, "alice");
        assert_eq!(c.peer_name, "bob");
        assert_eq!(c.own_address, "127.0.0.11:7001".parse().unwrap());
        assert_eq!(c.peer_address, "127.0.0.12:7002".parse().unwrap());
        assert_eq!(c.protocol, WireProtocol::C);
        assert!(c.cram_hmac.is_none());
        assert_eq!(c.split_brain, sd::SplitBrainPolicy::default());
        assert_eq!(c.timeout, Duration::from_secs(6));
        assert_eq!(c.ko_count, 7);
        assert_eq!(c.connect_int, Duration::from_secs(10));
        assert_eq!(c.ping_int, Duration::from_secs(10));
        assert_eq!(c.ping_timeout, Duration::from_millis(500));
        assert_eq!(c.socket_check_timeout, Duration::ZERO);
        assert_eq!(c.resync.max_buffers_pages, 2048);
        assert_eq!(c.max_epoch_size, 2048);
        assert_eq!(c.sndbuf_size, 0);
        assert!(c.use_rle);
        assert_eq!(c.resync, ResyncControllerConfig::default());
        assert!(!c.discard_my_data);
        assert!(!c.connect_at_start);
    }

    #[test]
    fn every_mapped_option() {
        let sections = "  net {\n    protocol A; cram-hmac-alg sha256; shared-secret \"s3cret\";\n    after-sb-0pri discard-node-bob; after-sb-1pri consensus; after-sb-2pri violently-as0p;\n    always-asbp yes; rr-conflict violently; timeout 5; ko-count 3; connect-int 2;\n    ping-int 3; ping-timeout 7; socket-check-timeout 9; max-buffers 4000;\n    max-epoch-size 100; sndbuf-size 1M; use-rle no;\n  }\n  disk { resync-rate 10M; c-plan-ahead 0; c-fill-target 1M; c-delay-target 20; c-max-rate 200M; c-min-rate 1M; }\n";
        let c = net_config(&resolve(sections, "alice")).unwrap();
        assert_eq!(c.protocol, WireProtocol::A);
        let hmac = c.cram_hmac.as_ref().expect("cram-hmac");
        assert_eq!(hmac.alg().kernel_name(), "sha256");
        assert_eq!(
            c.split_brain,
            sd::SplitBrainPolicy {
                after_sb_0pri: sd::AfterSb0pri::DiscardRemote,
                after_sb_1pri: sd::AfterSb1pri::Consensus,
                after_sb_2pri: sd::AfterSb2pri::ViolentlyAs0p,
                always_asbp: true,
                rr_conflict: sd::RrConflict::Violently,
            }
        );
        assert_eq!(c.timeout, Duration::from_millis(500));
        assert_eq!(c.ko_count, 3);
        assert_eq!(c.connect_int, Duration::from_secs(2));
        assert_eq!(c.ping_int, Duration::from_secs(3));
        assert_eq!(c.ping_timeout, Duration::from_millis(700));
        assert_eq!(c.socket_check_timeout, Duration::from_millis(900));
        assert_eq!(c.resync.max_buffers_pages, 4000);
        assert_eq!(c.max_epoch_size, 100);
        assert_eq!(c.sndbuf_size, 1 << 20);
        assert!(!c.use_rle);
        assert_eq!(
            c.resync,
            ResyncControllerConfig {
                resync_rate_kib_per_sec: 10240,
                c_plan_ahead_tenths: 0,
                c_fill_target_sectors: 2048,
                c_delay_target_tenths: 20,
                c_max_rate_kib_per_sec: 204_800,
                c_min_rate_kib_per_sec: 1024,
                max_buffers_pages: 4000,
            }
        );
    }

    #[test]
    fn discard_node_is_local_on_that_node_and_remote_on_the_other() {
        let sections = "  net { after-sb-0pri discard-node-alice; }\n";
        let on_alice = net_config(&resolve(sections, "alice")).unwrap();
        let on_bob = net_config(&resolve(sections, "bob")).unwrap();
        assert_eq!(
            on_alice.split_brain.after_sb_0pri,
            sd::AfterSb0pri::DiscardLocal
        );
        assert_eq!(
            on_bob.split_brain.after_sb_0pri,
            sd::AfterSb0pri::DiscardRemote
        );
        assert_eq!(on_bob.own_name, "bob");
        assert_eq!(on_bob.peer_name, "alice");
        assert_eq!(on_bob.own_address, "127.0.0.12:7002".parse().unwrap());
    }

    #[test]
    fn every_after_sb_word_maps() {
        for word in AfterSb0pri::WORDS {
            let sections = format!("  net {{ after-sb-0pri {word}; }}\n");
            net_config(&resolve(&sections, "alice")).unwrap();
        }
        for word in <AfterSb1pri as crate::config::WordEnum>::WORDS {
            let sections = format!("  net {{ after-sb-1pri {word}; }}\n");
            net_config(&resolve(&sections, "alice")).unwrap();
        }
    }

    #[test]
    fn an_unknown_cram_hmac_alg_is_an_error_and_a_lone_secret_is_ignored() {
        let e = net_config(&resolve("  net { cram-hmac-alg md5; }\n", "alice")).unwrap_err();
        assert!(e.starts_with("r0: cram-hmac-alg must be"), "{e}");
        let c = net_config(&resolve("  net { shared-secret x; }\n", "alice")).unwrap();
        assert!(c.cram_hmac.is_none());
    }

    #[test]
    fn verify_alg_names_the_digest_and_an_unknown_one_is_an_error() {
        let c = net_config(&resolve("  net { verify-alg sha256; }\n", "alice")).unwrap();
        assert_eq!(c.verify_alg, Some(udrbd_core::VerifyAlg::Sha256));
        assert_eq!(net_config(&resolve("", "alice")).unwrap().verify_alg, None);
        let e = net_config(&resolve("  net { verify-alg md5; }\n", "alice")).unwrap_err();
        assert_eq!(
            e,
            "r0: verify-alg \"md5\" is not supported (udrbd computes crc32c, sha1, sha256 and sha512)"
        );
    }

    #[test]
    fn csums_alg_names_the_digest_and_an_unknown_one_is_an_error() {
        let c = net_config(&resolve("  net { csums-alg crc32c; }\n", "alice")).unwrap();
        assert_eq!(c.csums_alg, Some(udrbd_core::VerifyAlg::Crc32c));
        assert_eq!(net_config(&resolve("", "alice")).unwrap().csums_alg, None);
        let e = net_config(&resolve("  net { csums-alg md5; }\n", "alice")).unwrap_err();
        assert_eq!(
            e,
            "r0: csums-alg \"md5\" is not supported (udrbd computes crc32c, sha1, sha256 and sha512)"
        );
    }
}
