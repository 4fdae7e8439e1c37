//! A hostile network between peers: packets altered, dropped, repeated or replayed on the
//! way ([`Cluster::set_tamper`](crate::cluster::Cluster::set_tamper)), so that every engine
//! meets a peer that sends what no honest DRBD sends. What a peer can send is the engine's
//! input like any other: it must answer with a named error or a disconnect, never with a
//! panic, a broken invariant or a request that never completes (the [`crate::hostile`]
//! runs judge that).
//!
//! Only DRBD packets with an h100 header (everything after the connection's first packets)
//! are touched; the handshake's feature and auth packets are fuzzed by udrbd-core's
//! `tests/connection.rs`. A packet is `head` (header and fixed payload) plus `data` (the
//! payload of P_DATA and its kin, which the engine stores without reading). The alterations,
//! one per tampered packet:
//!
//! - **field**: one 1-, 2-, 4- or 8-byte big-endian word of the fixed payload (a sector, a
//!   size, a block id, a sequence or barrier number, a state word, a UUID, bitmap words) gets
//!   an edge value: 0, 1, all ones, the signed maximum, its old value plus or minus one, one
//!   bit flipped, doubled, halved, the device's sector count, or random;
//! - **command**: the header names another command (the payload stays), mostly a known one;
//! - **length**: the header's length is off (the rest of the stream is read out of step);
//! - **drop**: the packet never arrives;
//! - **duplicate**: it arrives twice;
//! - **replay**: an earlier packet of the same socket arrives first.
//!
//! The sender is told that all it sent was sent, as over a real socket.

use std::collections::{BTreeMap, VecDeque};

use bytes::{Bytes, BytesMut};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::RngCore;
use udrbd_core::connection::ConnId;
use udrbd_wire::command::Command;
use udrbd_wire::header::{LONG_HEADER_SIZE, MAGIC_H100};

use crate::net::NodeId;

/// Earlier packets kept per socket, for replays.
const RECENT: usize = 32;

/// How many packets were altered, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TamperCounts {
    /// Packets looked at (h100 packets sent while tampering was on).
    pub seen: u64,
    /// A payload word changed.
    pub field: u64,
    /// The header's command changed.
    pub command: u64,
    /// The header's length changed.
    pub length: u64,
    /// Dropped.
    pub dropped: u64,
    /// Sent twice.
    pub duplicated: u64,
    /// An earlier packet sent before it.
    pub replayed: u64,
}

impl TamperCounts {
    /// Adds another run's counts.
    pub fn add(&mut self, o: &TamperCounts) {
        self.seen += o.seen;
        self.field += o.field;
        self.command += o.command;
        self.length += o.length;
        self.dropped += o.dropped;
        self.duplicated += o.duplicated;
        self.replayed += o.replayed;
    }

    /// Packets altered in any way.
    pub fn altered(&self) -> u64 {
        self.field + self.command + self.length + self.dropped + self.duplicated + self.replayed
    }
}

/// The tampering state of a cluster's network.
pub(crate) struct Tamper {
    /// Chance per packet, in parts per million (0: off).
    pub(crate) per_million: u32,
    rng: ChaCha8Rng,
    /// The device's size in sectors (an edge value for sector fields).
    device_sectors: u64,
    /// The last packets sent on each socket: (head, data).
    recent: BTreeMap<(NodeId, ConnId), VecDeque<(Bytes, Bytes)>>,
    pub(crate) counts: TamperCounts,
}

impl Tamper {
    pub(crate) fn new(rng: ChaCha8Rng, device_sectors: u64) -> Tamper {
        Tamper {
            per_million: 0,
            rng,
            device_sectors,
            recent: BTreeMap::new(),
            counts: TamperCounts::default(),
        }
    }

    fn below(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n.max(1)
    }

    /// What goes on the wire for one packet `node` sends on `conn`: the segments, in order
    /// (none for a dropped packet).
    pub(crate) fn packet(
        &mut self,
        node: NodeId,
        conn: ConnId,
        head: Bytes,
        data: Bytes,
    ) -> Vec<Bytes> {
        let honest = |head: Bytes, data: Bytes| vec![head, data];
        if self.per_million == 0
            || head.len() < LONG_HEADER_SIZE
            || head[..4] != MAGIC_H100.to_be_bytes()
        {
            return honest(head, data);
        }
        self.counts.seen += 1;
        let recent = self.recent.entry((node, conn)).or_default();
        recent.push_back((head.clone(), data.clone()));
        if recent.len() > RECENT {
            recent.pop_front();
        }
        if self.below(1_000_000) >= u64::from(self.per_million) {
            return honest(head, data);
        }
        match self.below(100) {
            0..50 if head.len() > LONG_HEADER_SIZE => {
                self.counts.field += 1;
                honest(self.alter_field(head), data)
            }
            0..58 => {
                self.counts.command += 1;
                let command = if self.below(8) == 0 {
                    self.below(1 << 16) as u16
                } else {
                    let known = Command::ALL;
                    known[self.below(known.len() as u64) as usize] as u16
                };
                honest(patch(&head, 6, &command.to_be_bytes()), data)
            }
            58..62 => {
                self.counts.length += 1;
                let old = u32::from_be_bytes([head[8], head[9], head[10], head[11]]);
                let new = match self.below(3) {
                    0 => old.wrapping_add(1 + self.below(8) as u32),
                    1 => old.wrapping_sub(1 + self.below(8) as u32),
                    _ => self.rng.next_u32(),
                };
                honest(patch(&head, 8, &new.to_be_bytes()), data)
            }
            62..74 => {
                self.counts.dropped += 1;
                Vec::new()
            }
            74..84 => {
                self.counts.duplicated += 1;
                vec![head.clone(), data.clone(), head, data]
            }
            _ => {
                self.counts.replayed += 1;
                let kept = self.recent[&(node, conn)].len() as u64;
                let pick = self.below(kept) as usize;
                let (old_head, old_data) = self.recent[&(node, conn)][pick].clone();
                vec![old_head, old_data, head, data]
            }
        }
    }

    /// `head` with one word of its fixed payload replaced by an edge value.
    fn alter_field(&mut self, head: Bytes) -> Bytes {
        let payload = head.len() - LONG_HEADER_SIZE;
        let widths: Vec<usize> = [1, 2, 4, 8].into_iter().filter(|w| *w <= payload).collect();
        let width = widths[self.below(widths.len() as u64) as usize];
        let at = LONG_HEADER_SIZE + self.below((payload / width) as u64) as usize * width;
        let mut word = [0u8; 8];
        word[8 - width..].copy_from_slice(&head[at..at + width]);
        let old = u64::from_be_bytes(word);
        let bits = 8 * width as u32;
        let ones = u64::MAX >> (64 - bits);
        let new = match self.below(11) {
            0 => 0,
            1 => 1,
            2 => ones,
            3 => ones >> 1,
            4 => old.wrapping_add(1),
            5 => old.wrapping_sub(1),
            6 => old ^ (1 << self.below(u64::from(bits))),
            7 => old.wrapping_mul(2),
            8 => old / 2,
            9 => self
                .device_sectors
                .wrapping_add(self.below(16))
                .wrapping_sub(8),
            _ => self.rng.next_u64(),
        } & ones;
        patch(&head, at, &new.to_be_bytes()[8 - width..])
    }
}

/// `bytes` with `value` written at `at`.
fn patch(bytes: &[u8], at: usize, value: &[u8]) -> Bytes {
    let mut b = BytesMut::from(bytes);
    b[at..at + value.len()].copy_from_slice(value);
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use udrbd_wire::{DecodeContext, Deframer, HeaderFormat, Packet};

    fn encoded(packet: &Packet) -> (Bytes, Bytes) {
        let e = packet.encode(0, HeaderFormat::Long).unwrap();
        (e.head, e.data)
    }

    #[test]
    fn off_passes_everything_and_on_alters_about_the_asked_share() {
        let mut t = Tamper::new(ChaCha8Rng::seed_from_u64(1), 8192);
        let (head, data) = encoded(&Packet::Ping);
        let out = t.packet(0, ConnId(1), head.clone(), data.clone());
        assert_eq!(out, vec![head.clone(), data.clone()]);
        assert_eq!(t.counts, TamperCounts::default());
        t.per_million = 100_000;
        for _ in 0..10_000 {
            t.packet(0, ConnId(1), head.clone(), data.clone());
        }
        assert_eq!(t.counts.seen, 10_000);
        let altered = t.counts.altered();
        assert!((800..1200).contains(&altered), "{altered} of 10000 at 10%");
        // A ping has no payload: its field alterations become command changes.
        assert_eq!(t.counts.field, 0);
    }

    #[test]
    fn field_alterations_keep_the_frame_and_change_one_payload_word() {
        let mut t = Tamper::new(ChaCha8Rng::seed_from_u64(2), 8192);
        let (head, _) = encoded(&Packet::SyncUuid(0x1234_5678_9abc_def0));
        let mut changed = 0;
        for _ in 0..200 {
            let new = t.alter_field(head.clone());
            assert_eq!(new.len(), head.len());
            assert_eq!(
                new[..LONG_HEADER_SIZE],
                head[..LONG_HEADER_SIZE],
                "header kept"
            );
            let mut deframer = Deframer::new(DecodeContext::new(HeaderFormat::Long));
            deframer.push(&new);
            match deframer.next_frame() {
                Ok(Some(frame)) => assert!(matches!(frame.packet, Packet::SyncUuid(_))),
                other => panic!("{other:?}"),
            }
            changed += usize::from(new != head);
        }
        assert!(
            changed > 150,
            "only {changed} of 200 alterations changed the word"
        );
    }
}
