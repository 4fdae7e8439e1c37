//! A private nftables table per test for a pair of daemons: named counters of the TCP bytes
//! each node sends to the other (only between the pair's own addresses and ports) and a chain
//! that throttles that traffic or drops it both ways (a network partition). The table is deleted when the
//! guard is dropped, also when the test panics.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};

/// Which way the traffic goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the first address of the pair to the second (alice to bob).
    AToB,
    /// From the second address to the first (bob to alice).
    BToA,
}

impl Direction {
    fn counter(self) -> &'static str {
        match self {
            Direction::AToB => "a2b",
            Direction::BToA => "b2a",
        }
    }
}

/// `table inet udrbd_test_<pid>_<n>`, deleted on drop.
pub struct NftTable {
    /// The table's name.
    pub name: String,
    a: SocketAddr,
    b: SocketAddr,
}

fn ipv4(addr: SocketAddr) -> std::net::Ipv4Addr {
    match addr.ip() {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(ip) => panic!("nft helper handles IPv4 pairs only, got {ip}"),
    }
}

/// Runs `nft ARGS`, which must succeed; returns stdout.
fn nft(args: &[&str]) -> String {
    let o = Command::new("nft")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("nft {args:?}: {e} (apt-get install nftables)"));
    assert!(
        o.status.success(),
        "nft {args:?} failed ({}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Feeds `script` to `nft -f -`, which must succeed.
fn nft_script(script: &str) {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("nft -f -: {e} (apt-get install nftables)"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "nft -f - failed ({}): {}\n{script}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
}

/// An `nft -f -` that has been given its script but not the end of its input yet; killed
/// (without applying) on drop.
pub struct PreparedScript {
    child: Option<std::process::Child>,
    script: String,
}

impl PreparedScript {
    fn new(script: String) -> PreparedScript {
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("nft -f -: {e} (apt-get install nftables)"));
        child
            .stdin
            .as_mut()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        PreparedScript {
            child: Some(child),
            script,
        }
    }

    /// Closes nft's input: it applies the script; waits for it, which must succeed.
    pub fn apply(mut self) {
        let mut child = self.child.take().unwrap();
        drop(child.stdin.take());
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "nft -f - failed ({}): {}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr),
            self.script
        );
    }
}

impl Drop for PreparedScript {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The rules' match expressions of the TCP traffic from `src` to `dst` on the connections
/// between them: `src` connecting to `dst`'s listening port, and `src`'s answers on a
/// connection `dst` opened to `src`'s listening port (never both for one packet).
fn flows(src: SocketAddr, dst: SocketAddr) -> [String; 2] {
    let (si, di) = (ipv4(src), ipv4(dst));
    let (sp, dp) = (src.port(), dst.port());
    [
        format!("ip saddr {si} ip daddr {di} tcp sport {sp}"),
        format!("ip saddr {si} ip daddr {di} tcp dport {dp} tcp sport != {sp}"),
    ]
}

impl NftTable {
    /// Creates the table for the pair `a` (alice) and `b` (bob): counters `a2b` and `b2a` in
    /// an output chain (priority 0), and an empty `partition` chain hooked before it
    /// (priority -10), so packets it drops are not counted.
    pub fn for_pair(a: SocketAddr, b: SocketAddr) -> NftTable {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "udrbd_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut rules = String::new();
        for (dir, src, dst) in [(Direction::AToB, a, b), (Direction::BToA, b, a)] {
            for flow in flows(src, dst) {
                rules.push_str(&format!("    {flow} counter name \"{}\"\n", dir.counter()));
            }
        }
        let script = format!(
            "table inet {name} {{\n  counter a2b {{ }}\n  counter b2a {{ }}\n  chain count {{\n    type filter hook output priority 0; policy accept;\n{rules}  }}\n  chain partition {{\n    type filter hook output priority -10; policy accept;\n  }}\n}}\n"
        );
        nft_script(&script);
        NftTable { name, a, b }
    }

    /// The bytes (IP packets, headers included) counted in `dir` since the creation or the
    /// last [`NftTable::reset`].
    pub fn bytes(&self, dir: Direction) -> u64 {
        let out = nft(&["-j", "list", "counter", "inet", &self.name, dir.counter()]);
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("nft -j: {e}: {out}"));
        v["nftables"]
            .as_array()
            .and_then(|items| items.iter().find_map(|i| i["counter"]["bytes"].as_u64()))
            .unwrap_or_else(|| panic!("no counter {} in {out}", dir.counter()))
    }

    /// Zeroes both counters.
    pub fn reset(&self) {
        for dir in [Direction::AToB, Direction::BToA] {
            nft(&["reset", "counter", "inet", &self.name, dir.counter()]);
        }
    }

    /// Drops every packet between the pair's connections, both ways.
    pub fn partition(&self) {
        self.prepare_partition().apply();
    }

    /// A partition ready to be applied with the least delay: `nft` already runs and has read
    /// its rules, and applies them when [`PreparedScript::apply`] closes its input.
    pub fn prepare_partition(&self) -> PreparedScript {
        let mut script = String::new();
        for (src, dst) in [(self.a, self.b), (self.b, self.a)] {
            for flow in flows(src, dst) {
                script.push_str(&format!(
                    "add rule inet {} partition {flow} drop\n",
                    self.name
                ));
            }
        }
        PreparedScript::new(script)
    }

    /// Throttles the pair's traffic in `dir` (each connection on its own) to about
    /// `bytes_per_second` by dropping what exceeds it: TCP backs off and retransmits, so data
    /// queues up in the sender's socket buffer. nft's token bucket starts full, so the first
    /// second's worth (and a 16 KiB burst) passes at once. [`NftTable::heal`] removes it.
    pub fn throttle(&self, dir: Direction, bytes_per_second: u64) {
        let (src, dst) = match dir {
            Direction::AToB => (self.a, self.b),
            Direction::BToA => (self.b, self.a),
        };
        let kbytes = (bytes_per_second / 1024).max(1);
        let mut script = String::new();
        for flow in flows(src, dst) {
            script.push_str(&format!(
                "add rule inet {} partition {flow} limit rate over {kbytes} kbytes/second burst 16 kbytes drop\n",
                self.name
            ));
        }
        nft_script(&script);
    }

    /// Removes the partition's drop rules.
    pub fn heal(&self) {
        nft(&["flush", "chain", "inet", &self.name, "partition"]);
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.name])
            .output();
    }
}
