//! The deterministic cluster simulator (ARCHITECTURE.md §4). Not built yet: this crate fixes
//! the workspace layout (ARCHITECTURE.md §2).
#![forbid(unsafe_code)]
