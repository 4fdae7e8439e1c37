//! The deterministic simulator (ARCHITECTURE.md §4): the real engine around simulated disks,
//! driven by one seeded generator and one simulated clock that jumps to the next deadline.
//!
//! Single-node scenarios ([`single`]): random workloads with crashes, checked for durability,
//! register semantics and bitmap soundness. Clusters ([`cluster`]): two (or more) engines
//! joined by a [`SimNet`], for scripted replication scenarios, with durability and
//! convergence checkers. The `vopr` binary comes with random cluster workloads.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod disk;
pub mod net;
pub mod single;

pub use cluster::{Cluster, ClusterOptions};
pub use disk::{Faults, SimDisk};
pub use net::{NetEvent, SimNet};
