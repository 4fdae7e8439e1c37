//! drbd.conf handlers (`handlers { NAME "shell command"; }`): run when the engine reports
//! [`udrbd_core::Event::Handler`], with the environment drbdadm gives them (facts §7.3).
//!
//! A handler runs as `/bin/sh -c COMMAND` in its own process; a thread waits for it and logs
//! its exit status, so the resource loop never blocks on it. The engine does not wait for the
//! result either (DRBD's exit-code protocols of fence-peer and before-resync-* are not used).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::config::ResolvedResource;

/// The kernel's usermode-helper environment plus drbdadm's variables for `resource`.
pub fn environment(resource: &ResolvedResource, config: &Path) -> Vec<(&'static str, String)> {
    let af = |a: &SocketAddr| if a.is_ipv4() { "ipv4" } else { "ipv6" };
    let peers = resource.peer.names.join(" ");
    let mut env = vec![
        ("HOME", "/".to_string()),
        ("TERM", "linux".to_string()),
        ("PATH", "/sbin:/usr/sbin:/bin:/usr/bin".to_string()),
        ("DRBD_RESOURCE", resource.name.clone()),
        ("DRBD_CONF", config.display().to_string()),
        ("DRBD_MINOR", resource.minor.to_string()),
        ("DRBD_VOLUME", "0".to_string()),
        ("DRBD_PEER_AF", af(&resource.peer.address).to_string()),
        ("DRBD_PEER_ADDRESS", resource.peer.address.ip().to_string()),
        ("DRBD_PEERS", peers),
        (
            "DRBD_PEER",
            resource.peer.names.first().cloned().unwrap_or_default(),
        ),
        ("DRBD_MY_AF", af(&resource.address).to_string()),
        ("DRBD_MY_ADDRESS", resource.address.ip().to_string()),
    ];
    if let Some(disk) = &resource.disk {
        env.push(("DRBD_LL_DISK", disk.display().to_string()));
    }
    env
}

/// Starts the handler `name` of `resource` if one is configured; returns at once.
pub fn run(name: &str, resource: &ResolvedResource, config: &Path) {
    let Some(command) = resource.options.handlers.get(name) else {
        tracing::info!(resource = %resource.name, "no {name} handler configured");
        return;
    };
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(command)
        .env_clear()
        .envs(environment(resource, config))
        .stdin(Stdio::null());
    tracing::info!(resource = %resource.name, "helper command: {name} ({command})");
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(resource = %resource.name, "cannot run the {name} handler: {e}");
            return;
        }
    };
    let resource_name = resource.name.clone();
    let name = name.to_string();
    let spawned = std::thread::Builder::new()
        .name(format!("handler-{name}"))
        .spawn(move || match child.wait() {
            Ok(status) => match status.code() {
                Some(code) => tracing::info!(
                    resource = %resource_name,
                    "helper command: {name} exit code {code}"
                ),
                None => tracing::warn!(
                    resource = %resource_name,
                    "helper command: {name} killed ({status})"
                ),
            },
            Err(e) => tracing::error!(resource = %resource_name, "waiting for {name}: {e}"),
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start a thread to wait for a handler: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn resource(handlers: &str) -> ResolvedResource {
        let text = format!(
            "resource r7 {{\n  handlers {{ {handlers} }}\n  on alice {{ device minor 7; disk /tmp/a.img; address 127.0.0.21:7100; meta-disk internal; }}\n  on bob {{ device minor 7; disk /tmp/b.img; address 127.0.0.22:7100; meta-disk internal; }}\n}}\n"
        );
        Config::parse_str("t.res", &text)
            .unwrap()
            .resource_for_node("r7", "alice")
            .unwrap()
    }

    #[test]
    fn drbdadm_environment() {
        let env = environment(&resource(""), Path::new("/etc/x.res"));
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("DRBD_RESOURCE"), Some("r7"));
        assert_eq!(get("DRBD_MINOR"), Some("7"));
        assert_eq!(get("DRBD_VOLUME"), Some("0"));
        assert_eq!(get("DRBD_CONF"), Some("/etc/x.res"));
        assert_eq!(get("DRBD_PEER_AF"), Some("ipv4"));
        assert_eq!(get("DRBD_PEER_ADDRESS"), Some("127.0.0.22"));
        assert_eq!(get("DRBD_PEERS"), Some("bob"));
        assert_eq!(get("DRBD_MY_ADDRESS"), Some("127.0.0.21"));
        assert_eq!(get("DRBD_LL_DISK"), Some("/tmp/a.img"));
        assert_eq!(get("PATH"), Some("/sbin:/usr/sbin:/bin:/usr/bin"));
    }

    #[test]
    fn runs_the_command_with_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let r = resource(&format!(
            "split-brain \"echo $DRBD_RESOURCE $DRBD_PEER_ADDRESS > {}\";",
            out.display()
        ));
        run("split-brain", &r, Path::new("/etc/x.res"));
        run("fence-peer", &r, Path::new("/etc/x.res"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_to_string(&out).map_or(true, |s| !s.ends_with('\n')) {
            assert!(std::time::Instant::now() < deadline, "handler did not run");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "r7 127.0.0.22\n");
    }
}
