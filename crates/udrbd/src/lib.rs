//! The `udrbd` binary's library half: drivers, config parser, control socket, CLI.
//!
//! This is the only crate of the workspace that touches files, sockets, threads and the clock.

pub mod backing;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod engine_config;
pub mod exit_code;
pub mod handlers;
pub mod meta_io;
pub mod nbd_client;
pub mod offline;
pub mod peer_net;
pub mod resource_loop;
pub mod status_format;
pub mod uring;
