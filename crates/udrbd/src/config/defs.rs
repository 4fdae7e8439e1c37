//! The parsed config as written: resources, their hosts, and option settings per section, each
//! remembering where it was written. Inheritance (`common` under `resource`) and defaults are
//! applied only when resolving a resource for a node ([`super::Config::resource_for_node`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use super::model::EffectiveOptions;
use super::options::{OptionSpec, Section, Value};
use super::source::Span;

/// One `name value;` inside an option section.
#[derive(Debug, Clone)]
pub struct Setting {
    /// The option's row in [`super::options::OPTIONS`].
    pub spec: &'static OptionSpec,
    pub value: Value,
    /// The option's name as written.
    pub at: Span,
}

/// The option settings of `common` or of one resource, all sections together (each
/// [`Setting`]'s spec names its section). At most one setting per (section, option).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub items: Vec<Setting>,
}

impl Settings {
    /// The setting of `name` in `section`, if written.
    pub fn get(&self, section: Section, name: &str) -> Option<&Setting> {
        self.items
            .iter()
            .find(|setting| setting.spec.section == section && setting.spec.name == name)
    }

    /// Stores every setting into `options`, overriding what is there.
    pub(crate) fn apply_to(&self, options: &mut EffectiveOptions) {
        for setting in &self.items {
            setting.spec.apply(options, &setting.value);
        }
    }
}

/// Where the DRBD meta-data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaDisk {
    /// At the end of the backing disk (`meta-disk internal`).
    Internal,
    /// A device of its own, sized to fit (`meta-disk /dev/X` or `flexible-meta-disk /dev/X`).
    FlexExternal(PathBuf),
    /// Slot N of 128 MiB on a shared device (`meta-disk /dev/X [N]`).
    Indexed(PathBuf, u32),
}

/// `device /dev/drbdN`, `device minor N` or `device PATH minor N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub path: PathBuf,
    pub minor: u32,
}

/// One `on HOST [HOST...] { }` section, with resource-level `device`/`disk`/`meta-disk`
/// filled in. Only volume 0 exists for now, so its fields live here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDef {
    /// The host names this section applies to (`uname -n` of the node).
    pub names: Vec<String>,
    pub device: Device,
    /// `None` for `disk none` (diskless).
    pub disk: Option<PathBuf>,
    /// `Internal` when not written.
    pub meta_disk: MetaDisk,
    pub address: SocketAddr,
    /// The `on` keyword.
    pub at: Span,
}

impl HostDef {
    pub fn is_named(&self, node: &str) -> bool {
        self.names.iter().any(|name| name == node)
    }
}

/// One `resource NAME { }`.
#[derive(Debug, Clone)]
pub struct ResourceDef {
    pub name: String,
    /// The resource's name as written.
    pub at: Span,
    pub hosts: Vec<HostDef>,
    /// The resource's own option sections (without `common`).
    pub settings: Settings,
}

impl ResourceDef {
    /// The `on` section naming `node`.
    pub fn host(&self, node: &str) -> Option<&HostDef> {
        self.hosts.iter().find(|host| host.is_named(node))
    }

    /// All host names, in order, for messages.
    pub fn host_names(&self) -> Vec<&str> {
        self.hosts
            .iter()
            .flat_map(|host| host.names.iter().map(String::as_str))
            .collect()
    }
}
