//! The `udrbd` command line: verbs, global options, and how a DEVICE argument is resolved.
//!
//! An argument that contains `/` is a device path (drbdmeta's way); a bare name is a resource,
//! resolved through `--config FILE [--node NAME]` to its backing disk and `meta-disk`.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use udrbd_meta::{AlGeometry, MetaDiskKind};

use crate::config::{Config, MetaDisk};
use crate::control::ControlRequest;
use crate::exit_code::ExitCode;
use crate::offline::{self, CreateOptions, MetaTarget, OfflineError, RestoreOptions};

/// The exit codes of offline and online verbs, for `udrbd help`.
fn help_footer() -> String {
    format!(
        "{}\nOnline verbs (up, down, attach, detach, primary, secondary, connect, disconnect, invalidate,\ninvalidate-remote, new-current-uuid, outdate, pause-sync, resume-sync, suspend-io, resume-io,\nverify, resize, adjust, role, cstate, dstate RESOURCE, wait-connect, status, events) exit like drbdsetup:\n   5  wait-connect timed out; refused: disk state lower than Outdated (-16)\n  10  failure (Failure: (N) ...)\n  11  state change refused (State change failed: (N) ...)\n  16  refused: can not resync without local disk (-4)\n  17  refused: need access to UpToDate data (-2)\n  20  local problem (e.g. the daemon is not running)\n",
        ExitCode::help_table()
    )
}

/// Default configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/udrbd/udrbd.conf";

/// udrbd: DRBD's replicated block device as a userspace daemon.
#[derive(Debug, Parser)]
#[command(name = "udrbd", version, about, after_help = help_footer())]
pub struct Cli {
    #[command(flatten)]
    pub globals: Globals,
    #[command(subcommand)]
    pub verb: Verb,
}

/// Options accepted before or after the verb.
#[derive(Debug, Args, Clone)]
pub struct Globals {
    /// Configuration file (DRBD resource syntax), used to resolve resource names.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's name in the configuration (default: the host name).
    #[arg(long, global = true, value_name = "NAME")]
    pub node: Option<String>,
    /// The daemon's run directory (control socket, NBD sockets).
    #[arg(long, global = true, value_name = "DIR", default_value = "/run/udrbd")]
    pub run_dir: PathBuf,
}

/// Where the meta-data of a DEVICE argument lives.
#[derive(Debug, Args, Clone)]
pub struct DeviceArg {
    /// A device or file path (contains '/'), or a resource name resolved through --config.
    #[arg(value_name = "DEVICE")]
    pub device: String,
    /// meta-disk of a DEVICE path: internal, flex-external, or an index N (128 MiB slots).
    #[arg(long, value_name = "KIND", default_value = "internal")]
    pub meta_disk: String,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Write fresh v08 meta-data (zeroed bitmap, initialized activity log).
    #[command(name = "create-md")]
    CreateMd {
        #[command(flatten)]
        target: DeviceArg,
        /// Activity-log stripes.
        #[arg(long, default_value_t = 1)]
        al_stripes: u32,
        /// Activity-log stripe size in KiB.
        #[arg(long = "al-stripe-size-kB", default_value_t = 32)]
        al_stripe_size_kb: u32,
        /// Last peer max BIO size to record, in bytes.
        #[arg(long, default_value_t = 0)]
        peer_max_bio_size: u32,
        /// Overwrite existing meta-data, file systems and partition tables.
        #[arg(long)]
        force: bool,
    },
    /// Print the meta-data as text (drbdmeta's format).
    #[command(name = "dump-md")]
    DumpMd {
        #[command(flatten)]
        target: DeviceArg,
        /// Dump unclean meta-data anyway.
        #[arg(long)]
        force: bool,
    },
    /// Print the generation identifiers and flags on one line.
    #[command(name = "get-gi")]
    GetGi {
        #[command(flatten)]
        target: DeviceArg,
    },
    /// Print the generation identifiers and flags, explained.
    #[command(name = "show-gi")]
    ShowGi {
        #[command(flatten)]
        target: DeviceArg,
    },
    /// Set generation identifiers and flags: CURRENT:BITMAP:HIST1:HIST2:c:u:p:n:f:o:x.
    #[command(name = "set-gi")]
    SetGi {
        #[command(flatten)]
        target: DeviceArg,
        /// Colon-separated fields; an empty field keeps its value.
        #[arg(value_name = "GI")]
        gi: String,
        /// Accepted for drbdmeta compatibility (udrbd never prompts).
        #[arg(long)]
        force: bool,
    },
    /// Replay the activity log into the bitmap and mark the meta-data clean.
    #[command(name = "apply-al")]
    ApplyAl {
        #[command(flatten)]
        target: DeviceArg,
    },
    /// Write meta-data from a dump-md text.
    #[command(name = "restore-md")]
    RestoreMd {
        #[command(flatten)]
        target: DeviceArg,
        /// The dump file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Activity-log stripes (overrides the dump).
        #[arg(long)]
        al_stripes: Option<u32>,
        /// Activity-log stripe size in KiB (overrides the dump).
        #[arg(long = "al-stripe-size-kB")]
        al_stripe_size_kb: Option<u32>,
        /// Overwrite valid meta-data.
        #[arg(long)]
        force: bool,
    },
    /// Print the disk state: local/peer from the daemon for a resource it hosts, else the one
    /// recorded in the meta-data (a DEVICE path, or a resource when no daemon runs).
    Dstate {
        #[command(flatten)]
        target: DeviceArg,
    },
    /// Run the daemon for this node's resources (foreground).
    Daemon {
        /// Start without bringing the resources up (no attach, no connect).
        #[arg(long)]
        no_up: bool,
    },
    /// Bring a resource up (attach, connect); succeeds if it is up already.
    Up {
        /// Resource name.
        resource: String,
    },
    /// Take a resource down (demote if allowed, disconnect, detach).
    Down {
        /// Resource name.
        resource: String,
    },
    /// Attach the backing device.
    Attach {
        /// Resource name.
        resource: String,
    },
    /// Detach the backing device.
    Detach {
        /// Resource name.
        resource: String,
        /// Abandon in-flight IO (a frozen disk).
        #[arg(long)]
        force: bool,
    },
    /// Promote to Primary.
    Primary {
        /// Resource name.
        resource: String,
        /// Promote without UpToDate data (the initial sync source).
        #[arg(long)]
        force: bool,
    },
    /// Demote to Secondary.
    Secondary {
        /// Resource name.
        resource: String,
    },
    /// Connect to the peer (from StandAlone).
    Connect {
        /// Resource name.
        resource: String,
        /// In a split brain, this node gives up its changes.
        #[arg(long)]
        discard_my_data: bool,
    },
    /// Disconnect from the peer and stay StandAlone.
    Disconnect {
        /// Resource name.
        resource: String,
    },
    /// Discard the local data: a full resync from the peer.
    Invalidate {
        /// Resource name.
        resource: String,
    },
    /// Discard the peer's data: a full resync to the peer.
    #[command(name = "invalidate-remote")]
    InvalidateRemote {
        /// Resource name.
        resource: String,
    },
    /// Start a new data generation.
    #[command(name = "new-current-uuid")]
    NewCurrentUuid {
        /// Resource name.
        resource: String,
        /// Both nodes' fresh disks become UpToDate without a resync (skip the initial sync).
        #[arg(long)]
        clear_bitmap: bool,
    },
    /// Mark the local data Outdated (not while connected).
    Outdate {
        /// Resource name.
        resource: String,
    },
    /// Pause the resync (PausedSyncS/T on both nodes) until resume-sync; also one that starts
    /// later.
    #[command(name = "pause-sync")]
    PauseSync {
        /// Resource name.
        resource: String,
    },
    /// Let a resync paused by pause-sync continue.
    #[command(name = "resume-sync")]
    ResumeSync {
        /// Resource name.
        resource: String,
    },
    /// Hold new IO on the device (e.g. for a snapshot of the backing device) until resume-io;
    /// IO in flight completes.
    #[command(name = "suspend-io")]
    SuspendIo {
        /// Resource name.
        resource: String,
    },
    /// Let IO held by suspend-io go on.
    #[command(name = "resume-io")]
    ResumeIo {
        /// Resource name.
        resource: String,
    },
    /// Apply the configuration file as it is now: disk and net options, handlers; reconnect
    /// for changed handshake options (protocol, cram-hmac-alg, after-sb-*, verify-alg,
    /// addresses); then attach and connect as `up`.
    Adjust {
        /// Resource name.
        resource: String,
    },
    /// Online verify: compare every block with the peer's by digest (net verify-alg); the
    /// blocks that differ are marked out of sync on both nodes (disconnect and connect to
    /// resync them). Returns once the verify started; `status` shows its progress.
    Verify {
        /// Resource name.
        resource: String,
        /// First sector to verify (default: where the last verify stopped, or 0).
        #[arg(long, short = 's')]
        start: Option<u64>,
        /// Sector to stop at (default: the end of the device).
        #[arg(long, short = 'S')]
        stop: Option<u64>,
    },
    /// Online resize, after the backing devices grew (lvextend, truncate): internal
    /// meta-data moves to the new end of the backing device, and the device grows to what
    /// both disks hold; the new part is resynced from the Primary. Run it on one node.
    /// `--size` sets the user size (as drbd.conf's `size`), which may also shrink the
    /// device: shrink the file system first.
    Resize {
        /// Resource name.
        resource: String,
        /// The device's size: sectors, or bytes with a K, M or G suffix; 0: as large as
        /// the disks allow (default: the size in force, from drbd.conf or the last --size).
        #[arg(long)]
        size: Option<String>,
        /// Grow while StandAlone, trusting that the peer's disk grew as well.
        #[arg(long)]
        assume_peer_has_space: bool,
        /// The new part needs no resync (both disks hold the same there, e.g. zeros).
        #[arg(long)]
        assume_clean: bool,
    },
    /// Print the roles: local/peer (e.g. Primary/Secondary).
    Role {
        /// Resource name.
        resource: String,
    },
    /// Print the connection state (DRBD 8.4's: StandAlone, WFConnection, Connected,
    /// SyncSource, ...).
    Cstate {
        /// Resource name.
        resource: String,
    },
    /// Wait until the connection is established (Connected or a sync state).
    #[command(name = "wait-connect")]
    WaitConnect {
        /// Resource name.
        resource: String,
        /// Give up after S seconds (exit 5); default: wait for ever.
        #[arg(long, value_name = "S")]
        timeout: Option<u64>,
    },
    /// Stream state changes (drbdsetup events2 form) until interrupted.
    Events {
        /// Resource name (default: all).
        resource: Option<String>,
        /// Print the current state and exit.
        #[arg(long)]
        now: bool,
        /// Include the statistics.
        #[arg(long, short)]
        statistics: bool,
    },
    /// Show the state of one or all resources (DRBD 9's status format).
    Status {
        /// Resource name (default: all).
        resource: Option<String>,
        /// Print every item.
        #[arg(long, short)]
        verbose: bool,
        /// Print the statistics.
        #[arg(long, short)]
        statistics: bool,
        /// drbdsetup status --json.
        #[arg(long)]
        json: bool,
    },
    /// Two daemons on loopback replicate a file-backed disk: initial sync, writes through
    /// NBD, the Primary killed, the peer promoted, the data verified, the old Primary resynced.
    /// Needs no root and no config.
    Demo {
        /// Backing file size per node, MiB.
        #[arg(long, default_value_t = 256)]
        size_mib: u64,
        /// Data written through NBD before the failover, MiB.
        #[arg(long, default_value_t = 64)]
        write_mib: u64,
        /// Keep the demo directory.
        #[arg(long)]
        keep: bool,
    },
}

/// A failure of a verb, with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The demo failed.
    #[error("demo: {0}")]
    Demo(#[from] crate::demo::DemoError),
    /// The daemon refused or failed the command: its message, drbdsetup's exit code.
    #[error("{message}")]
    Daemon {
        /// DRBD's wording.
        message: String,
        /// drbdsetup's exit code.
        code: u8,
    },
    /// The daemon could not be reached.
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    /// The daemon failed.
    #[error(transparent)]
    DaemonStart(#[from] crate::daemon::DaemonError),
    /// An offline meta-data command failed.
    #[error(transparent)]
    Offline(#[from] OfflineError),
    /// The configuration could not be used.
    #[error("{0}")]
    Config(String),
    /// A bad argument value.
    #[error("{0}")]
    InvalidValue(String),
}

impl CliError {
    /// The exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Offline(e) => e.exit_code().code(),
            CliError::Config(_) | CliError::DaemonStart(_) => ExitCode::Config.code(),
            CliError::InvalidValue(_) => ExitCode::InvalidValue.code(),
            CliError::Daemon { code, .. } => *code,
            CliError::Control(_) => ONLINE_LOCAL_ERROR,
            CliError::Demo(_) => ExitCode::Io.code(),
        }
    }
}

/// Runs a parsed command line. `argv` is echoed in dump-md's header.
pub fn run(
    cli: Cli,
    argv: &[String],
    out: &mut dyn Write,
    warn: &mut dyn Write,
) -> Result<(), CliError> {
    let g = &cli.globals;
    match cli.verb {
        Verb::CreateMd {
            target,
            al_stripes,
            al_stripe_size_kb,
            peer_max_bio_size,
            force,
        } => {
            let al = AlGeometry::from_options(al_stripes, al_stripe_size_kb)
                .map_err(|e| CliError::InvalidValue(e.to_string()))?;
            let opts = CreateOptions {
                al,
                force,
                peer_max_bio_size,
            };
            offline::create_md(&resolve(g, &target)?, opts, out)?;
        }
        Verb::DumpMd { target, force } => {
            let header = dump_header_comments(argv);
            offline::dump_md(&resolve(g, &target)?, force, &header, out, warn)?;
        }
        Verb::GetGi { target } => offline::get_gi(&resolve(g, &target)?, out)?,
        Verb::ShowGi { target } => offline::show_gi(&resolve(g, &target)?, out, warn)?,
        Verb::SetGi { target, gi, .. } => offline::set_gi(&resolve(g, &target)?, &gi, out)?,
        Verb::ApplyAl { target } => offline::apply_al(&resolve(g, &target)?, out, warn)?,
        Verb::RestoreMd {
            target,
            file,
            al_stripes,
            al_stripe_size_kb,
            force,
        } => {
            let al_override = match (al_stripes, al_stripe_size_kb) {
                (None, None) => None,
                (s, k) => Some(
                    AlGeometry::from_options(s.unwrap_or(1), k.unwrap_or(32))
                        .map_err(|e| CliError::InvalidValue(e.to_string()))?,
                ),
            };
            let opts = RestoreOptions { al_override, force };
            offline::restore_md(&resolve(g, &target)?, &file, opts, out, warn)?;
        }
        Verb::Dstate { target } => dstate(g, &target, out)?,
        Verb::Daemon { no_up } => {
            let config = g
                .config
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
            let node = g.node.clone().unwrap_or_else(hostname);
            crate::daemon::run(crate::daemon::DaemonOptions {
                config,
                node,
                run_dir: g.run_dir.clone(),
                no_up,
            })?;
        }
        Verb::Up { resource } => online(g, ControlRequest::new("up", Some(&resource)), out)?,
        Verb::Down { resource } => online(g, ControlRequest::new("down", Some(&resource)), out)?,
        Verb::Attach { resource } => {
            online(g, ControlRequest::new("attach", Some(&resource)), out)?
        }
        Verb::Detach { resource, force } => {
            let mut r = ControlRequest::new("detach", Some(&resource));
            r.force = force;
            online(g, r, out)?;
        }
        Verb::Primary { resource, force } => {
            let mut r = ControlRequest::new("primary", Some(&resource));
            r.force = force;
            online(g, r, out)?;
        }
        Verb::Secondary { resource } => {
            online(g, ControlRequest::new("secondary", Some(&resource)), out)?
        }
        Verb::Connect {
            resource,
            discard_my_data,
        } => {
            let mut r = ControlRequest::new("connect", Some(&resource));
            r.discard_my_data = discard_my_data;
            online(g, r, out)?;
        }
        Verb::NewCurrentUuid {
            resource,
            clear_bitmap,
        } => {
            let mut r = ControlRequest::new("new-current-uuid", Some(&resource));
            r.clear_bitmap = clear_bitmap;
            online(g, r, out)?;
        }
        Verb::Disconnect { resource } => simple(g, "disconnect", &resource, out)?,
        Verb::Invalidate { resource } => simple(g, "invalidate", &resource, out)?,
        Verb::InvalidateRemote { resource } => simple(g, "invalidate-remote", &resource, out)?,
        Verb::Outdate { resource } => simple(g, "outdate", &resource, out)?,
        Verb::PauseSync { resource } => simple(g, "pause-sync", &resource, out)?,
        Verb::ResumeSync { resource } => simple(g, "resume-sync", &resource, out)?,
        Verb::SuspendIo { resource } => simple(g, "suspend-io", &resource, out)?,
        Verb::ResumeIo { resource } => simple(g, "resume-io", &resource, out)?,
        Verb::Verify {
            resource,
            start,
            stop,
        } => {
            let mut r = ControlRequest::new("verify", Some(&resource));
            r.start_sector = start;
            r.stop_sector = stop;
            online(g, r, out)?;
        }
        Verb::Resize {
            resource,
            size,
            assume_peer_has_space,
            assume_clean,
        } => {
            let mut r = ControlRequest::new("resize", Some(&resource));
            if let Some(text) = size {
                let spec =
                    crate::config::options::find_option(crate::config::Section::Disk, "size")
                        .expect("the disk section's size option");
                match spec.parse(Some(&text)) {
                    Ok(crate::config::Value::Number(sectors)) => r.size_sectors = Some(sectors),
                    Ok(other) => unreachable!("size is a number, not {other:?}"),
                    Err(e) => return Err(CliError::InvalidValue(format!("--size: {e}"))),
                }
            }
            r.assume_peer_has_space = assume_peer_has_space;
            r.assume_clean = assume_clean;
            online(g, r, out)?;
        }
        Verb::Adjust { resource } => simple(g, "adjust", &resource, out)?,
        Verb::Role { resource } => simple(g, "role", &resource, out)?,
        Verb::Cstate { resource } => simple(g, "cstate", &resource, out)?,
        Verb::WaitConnect { resource, timeout } => {
            let mut r = ControlRequest::new("wait-connect", Some(&resource));
            r.timeout_secs = timeout;
            // The daemon answers when connected or at the timeout; wait a little longer.
            let wait = timeout.map(|t| std::time::Duration::from_secs(t.saturating_add(30)));
            online_with(g, r, wait, out)?;
        }
        Verb::Events {
            resource,
            now,
            statistics,
        } => {
            let mut r = ControlRequest::new("events", resource.as_deref());
            r.now = now;
            r.statistics = statistics;
            crate::control::stream(&g.run_dir, &r, out)?;
        }
        Verb::Demo {
            size_mib,
            write_mib,
            keep,
        } => crate::demo::run(
            &crate::demo::DemoOptions {
                size_mib,
                write_mib,
                keep,
            },
            out,
        )?,
        Verb::Status {
            resource,
            verbose,
            statistics,
            json,
        } => {
            let mut r = ControlRequest::new("status", resource.as_deref());
            r.verbose = verbose;
            r.statistics = statistics;
            r.json = json;
            online(g, r, out)?;
        }
    }
    Ok(())
}

/// drbdsetup's exit code for a local problem (the daemon cannot be reached).
pub const ONLINE_LOCAL_ERROR: u8 = 20;

/// Sends a request with no options but the resource to the daemon.
fn simple(g: &Globals, verb: &str, resource: &str, out: &mut dyn Write) -> Result<(), CliError> {
    online(g, ControlRequest::new(verb, Some(resource)), out)
}

/// `dstate`: online (local/peer) for a resource name when a daemon answers on the run
/// directory; offline (the meta-data's disk state) for a device path or without a daemon.
fn dstate(g: &Globals, target: &DeviceArg, out: &mut dyn Write) -> Result<(), CliError> {
    if !target.device.contains('/') {
        let request = ControlRequest::new("dstate", Some(&target.device));
        match online(g, request, out) {
            Err(CliError::Control(crate::control::ControlError::Connect { .. })) => {}
            other => return other,
        }
    }
    offline::dstate(&resolve(g, target)?, out)?;
    Ok(())
}

/// Sends a request to the daemon and prints its output.
fn online(g: &Globals, request: ControlRequest, out: &mut dyn Write) -> Result<(), CliError> {
    online_with(g, request, Some(std::time::Duration::from_secs(600)), out)
}

/// As [`online`], waiting up to `timeout` for the reply (`None`: for ever).
fn online_with(
    g: &Globals,
    request: ControlRequest,
    timeout: Option<std::time::Duration>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let reply = crate::control::call_with(&g.run_dir, &request, timeout)?;
    out.write_all(reply.output.as_bytes())
        .map_err(|e| CliError::Offline(OfflineError::Output(e)))?;
    if reply.ok {
        Ok(())
    } else {
        Err(CliError::Daemon {
            message: reply.error,
            code: reply.exit_code,
        })
    }
}

/// Resolves a DEVICE argument: a path (with `--meta-disk`), or a resource of the config.
pub fn resolve(g: &Globals, arg: &DeviceArg) -> Result<MetaTarget, CliError> {
    if arg.device.contains('/') {
        return Ok(MetaTarget {
            device: PathBuf::from(&arg.device),
            kind: parse_meta_disk_kind(&arg.meta_disk)?,
        });
    }
    let config_path = g
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    let config = Config::load(&config_path).map_err(|e| CliError::Config(e.to_string()))?;
    let node = match &g.node {
        Some(n) => n.clone(),
        None => hostname(),
    };
    let resource = config
        .resource_for_node(&arg.device, &node)
        .map_err(|e| CliError::Config(e.to_string()))?;
    let disk = resource.disk.clone().ok_or_else(|| {
        CliError::Config(format!(
            "resource {} has no disk on node {node} (disk none): it has no meta-data",
            arg.device
        ))
    })?;
    Ok(match &resource.meta_disk {
        MetaDisk::Internal => MetaTarget {
            device: disk,
            kind: MetaDiskKind::Internal,
        },
        MetaDisk::FlexExternal(path) => MetaTarget {
            device: path.clone(),
            kind: MetaDiskKind::FlexExternal,
        },
        MetaDisk::Indexed(path, index) => MetaTarget {
            device: path.clone(),
            kind: MetaDiskKind::Indexed(*index),
        },
    })
}

fn parse_meta_disk_kind(s: &str) -> Result<MetaDiskKind, CliError> {
    match s {
        "internal" | "flex-internal" => Ok(MetaDiskKind::Internal),
        "flex-external" => Ok(MetaDiskKind::FlexExternal),
        n => n.parse().map(MetaDiskKind::Indexed).map_err(|_| {
            CliError::InvalidValue(format!(
                "--meta-disk: '{n}' is not internal, flex-external or an index"
            ))
        }),
    }
}

/// This machine's node name (`uname -n`), DRBD's default for `on HOST`.
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// The comment lines drbdmeta puts at the top of a dump: date and command.
fn dump_header_comments(argv: &[String]) -> Vec<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    vec![
        format!("{} +0000 [{now}]", format_utc(now)),
        format!("{}> {}", hostname(), argv.join(" ")),
    ]
}

/// `YYYY-MM-DD HH:MM:SS` in UTC (days-from-civil inverted; no time-zone database needed).
fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(1_795_314_783), "2026-11-22 02:33:03");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00");
    }

    #[test]
    fn meta_disk_kinds() {
        assert_eq!(
            parse_meta_disk_kind("internal").unwrap(),
            MetaDiskKind::Internal
        );
        assert_eq!(parse_meta_disk_kind("3").unwrap(), MetaDiskKind::Indexed(3));
        assert!(parse_meta_disk_kind("x").is_err());
    }
}
