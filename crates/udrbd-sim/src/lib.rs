//! The deterministic simulator (ARCHITECTURE.md §4): the real engine around simulated disks,
//! driven by one seeded generator and one simulated clock that jumps to the next deadline.
//!
//! Single-node scenarios ([`single`]): random workloads with crashes, checked for durability,
//! register semantics and bitmap soundness. Clusters ([`cluster`]): two (or more) engines
//! joined by a [`SimNet`], for scripted replication scenarios, with durability and
//! convergence checkers. Random pair runs ([`workload`]): one fault per epoch, checked for
//! durability across failovers and convergence. Swarm runs ([`swarm`]): every seed draws its
//! own fault probabilities and workload mix, a few thousand operations with faults on disks
//! and network, crashes and admin commands, judged by named checkers ([`checker::Checker`])
//! and returned as typed failures; the `vopr` binary runs seeds, ranges and timed runs, and
//! the speed benchmark ([`bench`]).
#![forbid(unsafe_code)]

pub mod bench;
pub mod checker;
pub mod cluster;
pub mod disk;
pub mod hostile;
pub mod net;
pub mod single;
pub mod swarm;
pub mod tamper;
pub mod workload;

pub use checker::{Checker, SimFailure};
pub use cluster::{Cluster, ClusterOptions};
pub use disk::{Faults, SimDisk};
pub use net::{NetEvent, SimNet};
