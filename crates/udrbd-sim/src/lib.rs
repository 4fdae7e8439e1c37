//! The deterministic simulator (ARCHITECTURE.md §4): the real engine around simulated disks,
//! driven by one seeded generator and one simulated clock that jumps to the next deadline.
//!
//! Single-node scenarios ([`single`]): random workloads with crashes, checked for durability,
//! register semantics and bitmap soundness. Clusters ([`cluster`]): two (or more) engines
//! joined by a [`SimNet`], for scripted replication scenarios, with durability and
//! convergence checkers. Random pair runs ([`workload`]): one fault per epoch, checked for
//! durability across failovers and convergence; the `vopr` binary runs one seed.
#![forbid(unsafe_code)]

pub mod bench;
pub mod checker;
pub mod cluster;
pub mod disk;
pub mod net;
pub mod single;
pub mod swarm;
pub mod workload;

pub use checker::{Checker, SimFailure};
pub use cluster::{Cluster, ClusterOptions};
pub use disk::{Faults, SimDisk};
pub use net::{NetEvent, SimNet};
