//! Pure pieces of option haggling: parsing option data and building the replies to
//! `NBD_OPT_INFO`/`NBD_OPT_GO`. The sequencing lives in [`crate::ServerConnection`].

use bytes::Bytes;

use crate::export::Export;
use crate::wire;

/// The parsed data of `NBD_OPT_INFO` / `NBD_OPT_GO`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InfoRequest {
    /// The export name (`""` is the default export).
    pub name: String,
    /// `NBD_INFO_NAME` was requested.
    pub wants_name: bool,
    /// `NBD_INFO_DESCRIPTION` was requested.
    pub wants_description: bool,
}

/// Parses `NBD_OPT_INFO`/`NBD_OPT_GO` data; `Err` carries the message of the
/// `NBD_REP_ERR_INVALID` reply. Layout: u32 name length N (at most length - 6), N bytes name,
/// u16 count K, K x u16 info types; nothing may follow.
pub(crate) fn parse_info_request(data: &[u8]) -> Result<InfoRequest, &'static str> {
    if data.len() < 6 {
        return Err("option data shorter than 6 bytes");
    }
    let name_len = usize::try_from(wire::be_u32(&data[0..4])).unwrap_or(usize::MAX);
    if name_len > data.len() - 6 {
        return Err("export name length exceeds the option data");
    }
    let name = parse_name(&data[4..4 + name_len])?;
    let rest = &data[4 + name_len..];
    let count = usize::from(wire::be_u16(&rest[0..2]));
    let items = &rest[2..];
    if items.len() != 2 * count {
        return Err("number of information requests does not match the option length");
    }
    let mut request = InfoRequest {
        name,
        wants_name: false,
        wants_description: false,
    };
    for item in items.chunks_exact(2) {
        // Unknown items are ignored (MUST), and so are EXPORT and BLOCK_SIZE: both are always
        // sent.
        match wire::be_u16(item) {
            wire::NBD_INFO_NAME => request.wants_name = true,
            wire::NBD_INFO_DESCRIPTION => request.wants_description = true,
            _ => {}
        }
    }
    Ok(request)
}

/// An export name as the client sent it: UTF-8, no NUL, at most 4096 bytes.
pub(crate) fn parse_name(bytes: &[u8]) -> Result<String, &'static str> {
    let name = std::str::from_utf8(bytes).map_err(|_| "export name is not UTF-8")?;
    if !wire::is_valid_name(name) {
        return Err("export name contains NUL or is longer than 4096 bytes");
    }
    Ok(name.to_owned())
}

/// The replies to a successful `NBD_OPT_INFO`/`NBD_OPT_GO`, in order: `NBD_INFO_EXPORT`,
/// `NBD_INFO_BLOCK_SIZE` (always: we enforce non-default constraints, so the spec says we MUST
/// send it when asked, and sending it unasked is allowed), `NBD_INFO_NAME` and
/// `NBD_INFO_DESCRIPTION` when asked, then `NBD_REP_ACK`.
pub(crate) fn info_replies(option: u32, request: &InfoRequest, export: &Export) -> Vec<Bytes> {
    let mut replies = Vec::with_capacity(5);
    replies.push(wire::encode_info_export(
        option,
        export.size,
        export.flags.to_wire(),
    ));
    replies.push(wire::encode_info_block_size(option));
    if request.wants_name {
        replies.push(wire::encode_info_string(
            option,
            wire::NBD_INFO_NAME,
            &export.name,
        ));
    }
    // A description is optional: none is sent when the export has none.
    if let (true, Some(description)) = (request.wants_description, &export.description) {
        let description = wire::wire_string(description);
        replies.push(wire::encode_info_string(
            option,
            wire::NBD_INFO_DESCRIPTION,
            description,
        ));
    }
    replies.push(wire::encode_option_reply(option, wire::NBD_REP_ACK, &[]));
    replies
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(name: &[u8], infos: &[u16]) -> Vec<u8> {
        let mut d = Vec::new();
        d.extend_from_slice(&(name.len() as u32).to_be_bytes());
        d.extend_from_slice(name);
        d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for info in infos {
            d.extend_from_slice(&info.to_be_bytes());
        }
        d
    }

    #[test]
    fn parses_name_and_requests() {
        let request = parse_info_request(&data(b"r0", &[3, 1, 2, 77])).unwrap();
        assert_eq!(
            request,
            InfoRequest {
                name: "r0".into(),
                wants_name: true,
                wants_description: true
            }
        );
        let default = parse_info_request(&data(b"", &[])).unwrap();
        assert_eq!(default.name, "");
        assert!(!default.wants_name && !default.wants_description);
    }

    #[test]
    fn rejects_malformed_data() {
        assert!(parse_info_request(&[0, 0, 0, 0, 0]).is_err()); // < 6 bytes
        let mut long_name = data(b"r0", &[]);
        long_name[3] = 3; // claims 3 bytes of name, leaving 1 for the count
        assert!(parse_info_request(&long_name).is_err());
        let mut huge = data(b"r0", &[]);
        huge[0] = 0xff;
        assert!(parse_info_request(&huge).is_err());
        let mut extra = data(b"r0", &[1]);
        extra.push(0); // trailing byte
        assert!(parse_info_request(&extra).is_err());
        let mut short = data(b"r0", &[1, 2]);
        short.pop();
        assert!(parse_info_request(&short).is_err());
        assert!(parse_info_request(&data(b"r\0", &[])).is_err());
        assert!(parse_info_request(&data(&[0xff, 0xfe], &[])).is_err());
    }
}
