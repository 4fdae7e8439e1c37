//! The deterministic simulator (ARCHITECTURE.md §4): the real engine around simulated disks,
//! driven by one seeded generator and one simulated clock that jumps to the next deadline.
//!
//! So far it runs single-node scenarios ([`single`]): random workloads with crashes, checked
//! for durability, register semantics and bitmap soundness. Two-node clusters, networks and
//! the `vopr` binary come with replication.
#![forbid(unsafe_code)]

pub mod disk;
pub mod net;
pub mod single;

pub use disk::{Faults, SimDisk};
pub use net::{NetEvent, SimNet};
