//! One resource as one node sees it: its own host section, its peer, and the effective options
//! (DRBD defaults, overridden by `common`, overridden by the resource).

use std::net::SocketAddr;
use std::path::PathBuf;

use super::Config;
use super::defs::{HostDef, MetaDisk, ResourceDef};
use super::error::{ConfigError, ErrorKind};
use super::model::{AfterSb0pri, EffectiveOptions};
use super::options::Section;
use super::source::Span;

/// The other node of a two-node resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerHost {
    /// The names of the peer's `on` section.
    pub names: Vec<String>,
    pub address: SocketAddr,
}

/// A resource resolved for one node, every default filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedResource {
    pub name: String,
    /// The node this was resolved for.
    pub node: String,
    pub minor: u32,
    pub device: PathBuf,
    /// `None`: diskless (`disk none`).
    pub disk: Option<PathBuf>,
    pub meta_disk: MetaDisk,
    /// This node's replication address.
    pub address: SocketAddr,
    pub peer: PeerHost,
    /// `net`, `disk`, `startup`, `options`, `handlers` and `nbd`, effective.
    pub options: EffectiveOptions,
}

impl Config {
    /// The resource named `name`.
    pub fn resource(&self, name: &str) -> Option<&ResourceDef> {
        self.resources.iter().find(|resource| resource.name == name)
    }

    /// The resources that have an `on` section for `node`, in file order.
    pub fn resources_for_node(&self, node: &str) -> Vec<&ResourceDef> {
        self.resources
            .iter()
            .filter(|resource| resource.host(node).is_some())
            .collect()
    }

    /// Resolves `resource` for `node`. Fails if the resource does not exist, does not have
    /// exactly two `on` sections, does not name `node`, or its effective options contradict
    /// each other.
    pub fn resource_for_node(
        &self,
        resource: &str,
        node: &str,
    ) -> Result<ResolvedResource, ConfigError> {
        let def = self
            .resource(resource)
            .ok_or_else(|| self.unknown_resource(resource))?;
        let (own, peer) = self.own_and_peer(def, node)?;
        let mut options = EffectiveOptions::default();
        self.common.apply_to(&mut options);
        def.settings.apply_to(&mut options);
        self.resolve_discard_node(def, &mut options.net.after_sb_0pri, own, peer)?;
        self.check_timeout(def, &options)?;
        Ok(ResolvedResource {
            name: def.name.clone(),
            node: node.to_owned(),
            minor: own.device.minor,
            device: own.device.path.clone(),
            disk: own.disk.clone(),
            meta_disk: own.meta_disk.clone(),
            address: own.address,
            peer: PeerHost {
                names: peer.names.clone(),
                address: peer.address,
            },
            options,
        })
    }

    fn error(&self, span: Span, kind: ErrorKind) -> ConfigError {
        ConfigError::at(&self.files, span, kind)
    }

    fn unknown_resource(&self, name: &str) -> ConfigError {
        let known: Vec<&str> = self.resources.iter().map(|r| r.name.as_str()).collect();
        let file = self
            .files
            .first()
            .map_or("<config>", |file| file.name.as_str());
        let kind = ErrorKind::UnknownResource {
            name: name.to_owned(),
            known: known.join(", "),
        };
        ConfigError::whole_file(file, kind)
    }

    /// The `on` section of `node` and the other one; exactly two `on` sections for now.
    fn own_and_peer<'r>(
        &self,
        def: &'r ResourceDef,
        node: &str,
    ) -> Result<(&'r HostDef, &'r HostDef), ConfigError> {
        let [first, second] = def.hosts.as_slice() else {
            let kind = ErrorKind::HostCount {
                resource: def.name.clone(),
                count: def.hosts.len(),
            };
            return Err(self.error(def.at, kind));
        };
        match (first.is_named(node), second.is_named(node)) {
            (true, _) => Ok((first, second)),
            (_, true) => Ok((second, first)),
            _ => Err(self.error(
                def.at,
                ErrorKind::UnknownHost {
                    node: node.to_owned(),
                    resource: def.name.clone(),
                    hosts: def.host_names().join(", "),
                },
            )),
        }
    }

    /// The span of the effective setting of `name` in `section` (resource before common).
    fn setting_span(&self, def: &ResourceDef, section: Section, name: &str) -> Option<Span> {
        let setting = def
            .settings
            .get(section, name)
            .or_else(|| self.common.get(section, name));
        setting.map(|setting| setting.at)
    }

    /// `discard-node-NAME` becomes `discard-local` or `discard-remote`, as drbdadm does.
    fn resolve_discard_node(
        &self,
        def: &ResourceDef,
        policy: &mut AfterSb0pri,
        own: &HostDef,
        peer: &HostDef,
    ) -> Result<(), ConfigError> {
        let AfterSb0pri::DiscardNode(name) = policy else {
            return Ok(());
        };
        *policy = if own.is_named(name) {
            AfterSb0pri::DiscardLocal
        } else if peer.is_named(name) {
            AfterSb0pri::DiscardRemote
        } else {
            let span = self
                .setting_span(def, Section::Net, "after-sb-0pri")
                .unwrap_or(def.at);
            let kind = ErrorKind::BadValue {
                option: "after-sb-0pri".to_owned(),
                value: format!("discard-node-{name}"),
                expected: format!(
                    "discard-node- followed by one of {}",
                    def.host_names().join(", ")
                ),
            };
            return Err(self.error(span, kind));
        };
        Ok(())
    }

    /// DRBD requires `timeout` < `connect-int` and `timeout` < `ping-int`.
    fn check_timeout(
        &self,
        def: &ResourceDef,
        options: &EffectiveOptions,
    ) -> Result<(), ConfigError> {
        let net = &options.net;
        for (other, interval) in [("connect-int", net.connect_int), ("ping-int", net.ping_int)] {
            if net.timeout < interval {
                continue;
            }
            let span = self
                .setting_span(def, Section::Net, "timeout")
                .or_else(|| self.setting_span(def, Section::Net, other))
                .unwrap_or(def.at);
            let kind = ErrorKind::TimeoutTooLong {
                timeout_tenths: u64::try_from(net.timeout.as_millis() / 100).unwrap_or(u64::MAX),
                other,
                other_seconds: interval.as_secs(),
            };
            return Err(self.error(span, kind));
        }
        Ok(())
    }
}
