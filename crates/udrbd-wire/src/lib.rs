//! DRBD 8.4's peer protocol, pure: headers, packets, bitmap RLE/VLI, a deframer.
//! Not built yet: this crate fixes the workspace layout (ARCHITECTURE.md §2).
#![forbid(unsafe_code)]
