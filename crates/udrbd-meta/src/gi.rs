//! Generation-identifier texts: `get-gi`, `show-gi`, `dstate` output and `set-gi` input,
//! exactly as drbdmeta 9.22 prints and parses them for v08 (drbd-v08-facts.md §2.4).
//!
//! `get-gi` is `CURRENT:BITMAP:HIST1:HIST2:c:u:p:n:f:o:x`: four UUIDs as 16 upper-case hex
//! digits, then seven 0/1 flags: CONSISTENT, WAS_UP_TO_DATE, PRIMARY_IND, CONNECTED_IND,
//! FULL_SYNC, PEER_OUT_DATED, CRASHED_PRIMARY. AL_CLEAN and AL_DISABLED are not shown, and
//! `set-gi` preserves them.

use crate::human_size_kib;
use crate::superblock::{GenerationUuids, MdFlags};

/// The MDF bits of the seven `get-gi` flag fields, in order.
pub const GI_FLAG_BITS: [u32; 7] = [
    MdFlags::CONSISTENT,
    MdFlags::WAS_UP_TO_DATE,
    MdFlags::PRIMARY_IND,
    MdFlags::CONNECTED_IND,
    MdFlags::FULL_SYNC,
    MdFlags::PEER_OUT_DATED,
    MdFlags::CRASHED_PRIMARY,
];

/// The `get-gi` line (without newline).
pub fn get_gi(uuids: &GenerationUuids, flags: MdFlags) -> String {
    let u = uuids.to_array();
    let mut s = format!("{:016X}:{:016X}:{:016X}:{:016X}", u[0], u[1], u[2], u[3]);
    for bit in GI_FLAG_BITS {
        s.push_str(if flags.has(bit) { ":1" } else { ":0" });
    }
    s
}

/// What `dstate` prints for these flags.
pub fn dstate(flags: MdFlags) -> &'static str {
    if !flags.has(MdFlags::CONSISTENT) {
        "Inconsistent"
    } else if !flags.has(MdFlags::WAS_UP_TO_DATE) {
        "Outdated"
    } else if flags.has(MdFlags::PEER_OUT_DATED) {
        "UpToDate"
    } else {
        "Consistent"
    }
}

/// The whole `show-gi` output, newline-terminated.
pub fn show_gi(
    uuids: &GenerationUuids,
    flags: MdFlags,
    la_size_sect: u64,
    la_peer_max_bio_size: u32,
) -> String {
    let mut s = String::from(SHOW_GI_HEAD);
    s.push_str(&get_gi(uuids, flags));
    s.push('\n');
    s.push_str(SHOW_GI_LEGEND);
    s.push('\n');
    s.push_str(&flags_line(flags));
    s.push('\n');
    s.push_str(if flags.has(MdFlags::AL_CLEAN) {
        "meta-data: clean\n"
    } else {
        "meta-data: need apply-al\n"
    });
    if la_size_sect == 0 {
        s.push_str("zero size device -- never seen peer yet?\n");
    } else {
        s.push_str(&format!(
            "last agreed size: {} ({la_size_sect} sectors)\n",
            human_size_kib(la_size_sect / 2)
        ));
        s.push_str(&format!(
            "last agreed max bio size: {la_peer_max_bio_size} Byte\n"
        ));
    }
    s
}

const SHOW_GI_HEAD: &str = "
       +--<  Current data generation UUID  >-
       |               +--<  Bitmap's base data generation UUID  >-
       |               |                 +--<  younger history UUID  >-
       |               |                 |         +-<  older history  >-
       V               V                 V         V
";

const SHOW_GI_LEGEND: &str =
    "                                                                    ^ ^ ^ ^ ^ ^ ^
                                      -<  Data consistency flag  >--+ | | | | | |
                             -<  Data was/is currently up-to-date  >--+ | | | | |
                                  -<  Node was/is currently primary  >--+ | | | |
                                  -<  Node was/is currently connected  >--+ | | |
         -<  Node was in the progress of setting all bits in the bitmap  >--+ | |
                        -<  The peer's disk was out-dated or inconsistent  >--+ |
      -<  This node was a crashed primary, and has not seen its peer since   >--+
";

fn flags_line(flags: MdFlags) -> String {
    let mut s = String::from("flags:");
    if flags.has(MdFlags::CRASHED_PRIMARY) {
        s.push_str(" crashed");
    }
    s.push_str(if flags.has(MdFlags::PRIMARY_IND) {
        " Primary"
    } else {
        " Secondary"
    });
    s.push_str(if flags.has(MdFlags::CONNECTED_IND) {
        ", Connected"
    } else {
        ", StandAlone"
    });
    s.push_str(", ");
    s.push_str(if !flags.has(MdFlags::CONSISTENT) {
        "Inconsistent"
    } else if flags.has(MdFlags::WAS_UP_TO_DATE) {
        "UpToDate"
    } else {
        "Outdated"
    });
    if flags.has(MdFlags::FULL_SYNC) {
        s.push_str(", need full sync");
    }
    if flags.has(MdFlags::PEER_OUT_DATED) {
        s.push_str(", peer Outdated");
    }
    s
}

/// Why a `set-gi` argument is rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SetGiError {
    /// A UUID field that is not hex or does not fit 64 bits.
    #[error("'{0}' is not a 64-bit hex UUID")]
    BadUuid(String),
    /// A flag field other than 0 or 1 (drbdmeta's message).
    #[error("'{0}' is not 0 or 1.")]
    BadFlag(String),
}

/// Applies a `set-gi` argument to the current values: empty fields keep the current value,
/// missing trailing fields too; UUIDs are hex with or without `0x`; flags are 0 or 1. Bits not
/// covered by the seven flag fields are preserved.
pub fn apply_set_gi(
    text: &str,
    uuids: GenerationUuids,
    flags: MdFlags,
) -> Result<(GenerationUuids, MdFlags), SetGiError> {
    // Like drbdmeta, fields past the eleventh are ignored.
    let fields: Vec<&str> = text.split(':').take(4 + GI_FLAG_BITS.len()).collect();
    let mut u = uuids.to_array();
    let mut flags = flags;
    for (i, field) in fields.iter().enumerate() {
        if field.is_empty() {
            continue;
        }
        if i < 4 {
            u[i] = parse_hex_uuid(field)?;
        } else {
            // drbdmeta reads flags as C integers (0x.. hex, 0.. octal), then wants 0 or 1.
            let on = match parse_c_integer(field) {
                Some(0) => false,
                Some(1) => true,
                _ => return Err(SetGiError::BadFlag(field.to_string())),
            };
            flags.set(GI_FLAG_BITS[i - 4], on);
        }
    }
    Ok((GenerationUuids::from_array(u), flags))
}

/// A non-negative integer as C's `strtol(.., 0)` reads a whole field.
fn parse_c_integer(field: &str) -> Option<u64> {
    if let Some(hex) = field
        .strip_prefix("0x")
        .or_else(|| field.strip_prefix("0X"))
    {
        u64::from_str_radix(hex, 16).ok()
    } else if field.len() > 1 && field.starts_with('0') {
        u64::from_str_radix(&field[1..], 8).ok()
    } else {
        field.parse().ok()
    }
}

fn parse_hex_uuid(field: &str) -> Result<u64, SetGiError> {
    let hex = field
        .strip_prefix("0x")
        .or_else(|| field.strip_prefix("0X"))
        .unwrap_or(field);
    if hex.is_empty() || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(SetGiError::BadUuid(field.to_string()));
    }
    u64::from_str_radix(hex, 16).map_err(|_| SetGiError::BadUuid(field.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags_of(gi: &str) -> MdFlags {
        let (_, f) =
            apply_set_gi(&format!("::::{gi}"), GenerationUuids::default(), MdFlags(0)).unwrap();
        f
    }

    #[test]
    fn get_gi_after_create() {
        let u = GenerationUuids {
            current: 4,
            ..Default::default()
        };
        assert_eq!(
            get_gi(&u, MdFlags(MdFlags::AL_CLEAN)),
            "0000000000000004:0000000000000000:0000000000000000:0000000000000000:0:0:0:0:0:0:0"
        );
    }

    /// The flag table of drbd-v08-facts.md §2.2 and §2.4, verified against drbdmeta 9.22.
    #[test]
    fn flag_fields_and_words() {
        for (gi, raw) in [
            ("1", 0x01),
            ("0:1", 0x10),
            ("0:0:1", 0x02),
            ("0:0:0:1", 0x04),
            ("0:0:0:0:1", 0x08),
            ("0:0:0:0:0:1", 0x20),
            ("0:0:0:0:0:0:1", 0x40),
        ] {
            assert_eq!(flags_of(gi).0, raw, "{gi}");
        }
        for (gi, line, state) in [
            (
                "0:0:0:0:0:0:0",
                "flags: Secondary, StandAlone, Inconsistent",
                "Inconsistent",
            ),
            (
                "1:0:0:0:0:0:0",
                "flags: Secondary, StandAlone, Outdated",
                "Outdated",
            ),
            (
                "1:1:0:0:0:0:0",
                "flags: Secondary, StandAlone, UpToDate",
                "Consistent",
            ),
            (
                "1:1:0:1:0:1:0",
                "flags: Secondary, Connected, UpToDate, peer Outdated",
                "UpToDate",
            ),
            (
                "1:1:1:0:1:0:1",
                "flags: crashed Primary, StandAlone, UpToDate, need full sync",
                "Consistent",
            ),
            (
                "0:0:1:1:1:1:1",
                "flags: crashed Primary, Connected, Inconsistent, need full sync, peer Outdated",
                "Inconsistent",
            ),
        ] {
            assert_eq!(flags_line(flags_of(gi)), line);
            assert_eq!(dstate(flags_of(gi)), state);
        }
    }

    #[test]
    fn show_gi_golden() {
        let u = GenerationUuids {
            current: 4,
            ..Default::default()
        };
        let flags = MdFlags(flags_of("1:1:1:0:1:0:1").0 | MdFlags::AL_CLEAN);
        let expected = "
       +--<  Current data generation UUID  >-
       |               +--<  Bitmap's base data generation UUID  >-
       |               |                 +--<  younger history UUID  >-
       |               |                 |         +-<  older history  >-
       V               V                 V         V
0000000000000004:0000000000000000:0000000000000000:0000000000000000:1:1:1:0:1:0:1
                                                                    ^ ^ ^ ^ ^ ^ ^
                                      -<  Data consistency flag  >--+ | | | | | |
                             -<  Data was/is currently up-to-date  >--+ | | | | |
                                  -<  Node was/is currently primary  >--+ | | | |
                                  -<  Node was/is currently connected  >--+ | | |
         -<  Node was in the progress of setting all bits in the bitmap  >--+ | |
                        -<  The peer's disk was out-dated or inconsistent  >--+ |
      -<  This node was a crashed primary, and has not seen its peer since   >--+

flags: crashed Primary, StandAlone, UpToDate, need full sync
meta-data: clean
zero size device -- never seen peer yet?
";
        assert_eq!(show_gi(&u, flags, 0, 0), expected);
        let tail = show_gi(&u, flags, 524_200, 1 << 20);
        assert!(tail.ends_with(
            "last agreed size: 256 MB (524200 sectors)\nlast agreed max bio size: 1048576 Byte\n"
        ));
    }

    #[test]
    fn set_gi_rules() {
        let start = GenerationUuids::from_array([4, 0, 0, 0]);
        let (u, f) = apply_set_gi("abc::0x10", start, MdFlags(MdFlags::AL_CLEAN)).unwrap();
        assert_eq!(u.to_array(), [0xABC, 0, 0x10, 0]);
        assert_eq!(f, MdFlags(MdFlags::AL_CLEAN), "AL_CLEAN preserved");
        assert_eq!(
            apply_set_gi("::::2", start, MdFlags(0)),
            Err(SetGiError::BadFlag("2".into()))
        );
        assert_eq!(
            apply_set_gi("xyz", start, MdFlags(0)),
            Err(SetGiError::BadUuid("xyz".into()))
        );
        // Extra fields are ignored; flags are C integers.
        let (u, f) = apply_set_gi("1:2:3:4:0:0:0:0:0:0:0:7", start, MdFlags(0)).unwrap();
        assert_eq!((u.to_array(), f), ([1, 2, 3, 4], MdFlags(0)));
        let (_, f) = apply_set_gi("::::01:0x1", start, MdFlags(0)).unwrap();
        assert_eq!(f.0, MdFlags::CONSISTENT | MdFlags::WAS_UP_TO_DATE);
    }
}
