//! A minimal blocking NBD client (fixed newstyle, NBD_OPT_GO, simple replies) for `udrbd demo`,
//! so the demo needs no external NBD tool. One request at a time; the protocol constants come
//! from udrbd-nbd (NetworkBlockDevice/nbd doc/proto.md).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use udrbd_nbd::wire::*;

/// The simple reply magic.
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// The request magic.
const REQUEST_MAGIC: u32 = 0x2560_9513;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;

/// Why an NBD exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum NbdClientError {
    /// The socket failed.
    #[error("NBD socket: {0}")]
    Io(#[from] std::io::Error),
    /// The server said something unexpected.
    #[error("NBD protocol: {0}")]
    Protocol(String),
    /// The server answered a request with an error.
    #[error("NBD request failed with error {0}")]
    Request(u32),
}

/// A connected client.
pub struct NbdClient {
    stream: UnixStream,
    size: u64,
    next_cookie: u64,
}

impl NbdClient {
    /// Connects to the export `name` on the unix socket `path`.
    pub fn connect(path: &Path, name: &str) -> Result<NbdClient, NbdClientError> {
        let mut stream = UnixStream::connect(path)?;
        let mut hello = [0u8; 18];
        stream.read_exact(&mut hello)?;
        if u64::from_be_bytes(hello[0..8].try_into().expect("8")) != NBDMAGIC
            || u64::from_be_bytes(hello[8..16].try_into().expect("8")) != IHAVEOPT
        {
            return Err(NbdClientError::Protocol("not a newstyle NBD server".into()));
        }
        stream.write_all(&(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES).to_be_bytes())?;
        // NBD_OPT_GO with the export name and no info requests.
        let mut option = Vec::new();
        option.extend_from_slice(&IHAVEOPT.to_be_bytes());
        option.extend_from_slice(&NBD_OPT_GO.to_be_bytes());
        option.extend_from_slice(&((4 + name.len() + 2) as u32).to_be_bytes());
        option.extend_from_slice(&(name.len() as u32).to_be_bytes());
        option.extend_from_slice(name.as_bytes());
        option.extend_from_slice(&0u16.to_be_bytes());
        stream.write_all(&option)?;
        let mut size = None;
        loop {
            let mut head = [0u8; 20];
            stream.read_exact(&mut head)?;
            let reply = u32::from_be_bytes(head[12..16].try_into().expect("4"));
            let len = u32::from_be_bytes(head[16..20].try_into().expect("4")) as usize;
            let mut data = vec![0u8; len];
            stream.read_exact(&mut data)?;
            match reply {
                NBD_REP_INFO if data.len() >= 12 => {
                    if u16::from_be_bytes([data[0], data[1]]) == NBD_INFO_EXPORT {
                        size = Some(u64::from_be_bytes(data[2..10].try_into().expect("8")));
                    }
                }
                NBD_REP_ACK => break,
                other => {
                    return Err(NbdClientError::Protocol(format!(
                        "NBD_OPT_GO refused (reply {other:#x}: {})",
                        String::from_utf8_lossy(&data)
                    )));
                }
            }
        }
        let size = size.ok_or_else(|| NbdClientError::Protocol("no export size".into()))?;
        Ok(NbdClient {
            stream,
            size,
            next_cookie: 1,
        })
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn request(
        &mut self,
        command: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> Result<(), NbdClientError> {
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        let mut head = Vec::with_capacity(28 + payload.len());
        head.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        head.extend_from_slice(&0u16.to_be_bytes());
        head.extend_from_slice(&command.to_be_bytes());
        head.extend_from_slice(&cookie.to_be_bytes());
        head.extend_from_slice(&offset.to_be_bytes());
        head.extend_from_slice(&len.to_be_bytes());
        head.extend_from_slice(payload);
        self.stream.write_all(&head)?;
        if command == CMD_DISC {
            return Ok(());
        }
        let mut reply = [0u8; 16];
        self.stream.read_exact(&mut reply)?;
        if u32::from_be_bytes(reply[0..4].try_into().expect("4")) != SIMPLE_REPLY_MAGIC
            || u64::from_be_bytes(reply[8..16].try_into().expect("8")) != cookie
        {
            return Err(NbdClientError::Protocol("unexpected reply".into()));
        }
        match u32::from_be_bytes(reply[4..8].try_into().expect("4")) {
            0 => Ok(()),
            error => Err(NbdClientError::Request(error)),
        }
    }

    /// Writes `data` at `offset`.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), NbdClientError> {
        self.request(CMD_WRITE, offset, data.len() as u32, data)
    }

    /// Reads `len` bytes at `offset`.
    pub fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, NbdClientError> {
        self.request(CMD_READ, offset, len, &[])?;
        let mut data = vec![0u8; len as usize];
        self.stream.read_exact(&mut data)?;
        Ok(data)
    }

    /// Makes every completed write durable.
    pub fn flush(&mut self) -> Result<(), NbdClientError> {
        self.request(CMD_FLUSH, 0, 0, &[])
    }

    /// Ends the session.
    pub fn disconnect(mut self) -> Result<(), NbdClientError> {
        self.request(CMD_DISC, 0, 0, &[])
    }
}
