//! The sans-IO DRBD engine (ARCHITECTURE.md §3). Not built yet: this crate is a placeholder
//! that fixes the workspace layout and the dependency direction (meta, wire -> core).
#![forbid(unsafe_code)]
