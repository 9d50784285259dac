//! Messages from handsets (MO): deliver_sm that is not a receipt, its text
//! decoded by data_coding and concatenated parts put back together.
//!
//! Reassembly is bounded: at most `max_messages` partial messages and
//! [`MAX_HELD_BYTES`] of their text are held (the oldest is given up first),
//! each for at most `timeout` after its first part. A message given up is still delivered,
//! with the parts that came and `incomplete` set: a patient's words are
//! not dropped because a carrier lost a segment. Duplicate parts (an SMSC
//! resending after a lost deliver_sm_resp) are ignored.

use crate::pdu::{Sm, esm, tag};
use crate::text::{self, Concat};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A message from a handset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// source_addr (the handset).
    pub from: String,
    /// destination_addr (our number or short code).
    pub to: String,
    pub text: String,
    /// Some parts of a concatenated message never came (timeout or memory
    /// bound); `text` holds the ones that did, in order, with `…` for gaps.
    pub incomplete: bool,
}

/// One deliver_sm's share of a message: its concatenation info (UDH, or
/// the sar_* TLVs) and the octets after any UDH.
pub struct Part<'a> {
    pub concat: Option<Concat>,
    pub data_coding: u8,
    pub payload: &'a [u8],
}

/// Finds the text octets and concatenation info of an MO deliver_sm: the
/// short_message, or the message_payload TLV when short_message is empty.
pub fn part_of(sm: &Sm) -> Part<'_> {
    let body = if sm.short_message.is_empty() {
        sm.tlv(tag::MESSAGE_PAYLOAD).unwrap_or(&[])
    } else {
        &sm.short_message
    };
    let (mut concat, payload) = if sm.esm_class & esm::UDHI != 0 {
        text::parse_udh(body)
    } else {
        (None, body)
    };
    if concat.is_none()
        && let (Some(r), Some(&[total]), Some(&[seq])) = (
            sm.tlv(tag::SAR_MSG_REF_NUM),
            sm.tlv(tag::SAR_TOTAL_SEGMENTS),
            sm.tlv(tag::SAR_SEGMENT_SEQNUM),
        )
        && let &[r1, r2] = r
    {
        concat = Some(Concat {
            reference: u16::from_be_bytes([r1, r2]),
            total,
            seq,
        });
    }
    Part {
        concat,
        data_coding: sm.data_coding,
        payload,
    }
}

/// Octets of partial messages held at most (one message alone may exceed
/// it: 255 parts of 254 octets are 64 KiB).
pub const MAX_HELD_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    from: String,
    to: String,
    reference: u16,
    total: u8,
}

struct Partial {
    parts: Vec<Option<(u8, Vec<u8>)>>,
    received: usize,
    expires: Instant,
    /// Arrival order, to give up the oldest first.
    order: u64,
}

pub struct Reassembler {
    partials: HashMap<Key, Partial>,
    timeout: Duration,
    max_messages: usize,
    next_order: u64,
    /// Octets held in all partials.
    held: usize,
}

impl Reassembler {
    pub fn new(timeout: Duration, max_messages: usize) -> Self {
        Reassembler {
            partials: HashMap::new(),
            timeout,
            max_messages: max_messages.max(1),
            next_order: 0,
            held: 0,
        }
    }

    /// Partial messages held.
    pub fn pending(&self) -> usize {
        self.partials.len()
    }

    /// Takes one part; returns the messages it completes or pushes out.
    pub fn push(&mut self, now: Instant, from: &str, to: &str, part: Part<'_>) -> Vec<Inbound> {
        let whole = |text: String| Inbound {
            from: from.to_owned(),
            to: to.to_owned(),
            text,
            incomplete: false,
        };
        let Some(c) = part
            .concat
            .filter(|c| c.total > 1 && c.seq >= 1 && c.seq <= c.total)
        else {
            return vec![whole(text::decode(part.data_coding, part.payload))];
        };
        let key = Key {
            from: from.to_owned(),
            to: to.to_owned(),
            reference: c.reference,
            total: c.total,
        };
        let mut out = Vec::new();
        if !self.partials.contains_key(&key) && self.partials.len() >= self.max_messages {
            out.extend(self.give_up_oldest(&key));
        }
        while self.held + part.payload.len() > MAX_HELD_BYTES {
            let Some(m) = self.give_up_oldest(&key) else {
                break;
            };
            out.push(m);
        }
        let order = self.next_order;
        let timeout = self.timeout;
        let partial = self.partials.entry(key.clone()).or_insert_with(|| Partial {
            parts: vec![None; c.total as usize],
            received: 0,
            expires: now + timeout,
            order,
        });
        self.next_order += 1;
        let slot = &mut partial.parts[c.seq as usize - 1];
        if slot.is_none() {
            *slot = Some((part.data_coding, part.payload.to_vec()));
            partial.received += 1;
            self.held += part.payload.len();
        }
        if partial.received == partial.parts.len()
            && let Some(p) = self.remove(&key)
        {
            out.push(assemble(key, p));
        }
        out
    }

    fn remove(&mut self, key: &Key) -> Option<Partial> {
        let p = self.partials.remove(key)?;
        self.held -= p
            .parts
            .iter()
            .flatten()
            .map(|(_, b)| b.len())
            .sum::<usize>();
        Some(p)
    }

    /// Gives up the oldest partial message other than `keep`.
    fn give_up_oldest(&mut self, keep: &Key) -> Option<Inbound> {
        let oldest = self
            .partials
            .iter()
            .filter(|(k, _)| *k != keep)
            .min_by_key(|(_, p)| p.order)
            .map(|(k, _)| k.clone())?;
        let p = self.remove(&oldest)?;
        Some(assemble(oldest, p))
    }

    /// Gives up the messages whose time is over.
    pub fn expire(&mut self, now: Instant) -> Vec<Inbound> {
        let due: Vec<Key> = self
            .partials
            .iter()
            .filter(|(_, p)| p.expires <= now)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out: Vec<(u64, Inbound)> = due
            .into_iter()
            .filter_map(|k| {
                let p = self.remove(&k)?;
                Some((p.order, assemble(k, p)))
            })
            .collect();
        out.sort_by_key(|(order, _)| *order);
        out.into_iter().map(|(_, m)| m).collect()
    }

    pub fn next_expiry(&self) -> Option<Instant> {
        self.partials.values().map(|p| p.expires).min()
    }
}

fn assemble(key: Key, p: Partial) -> Inbound {
    let incomplete = p.received < p.parts.len();
    let codings: Vec<u8> = p.parts.iter().flatten().map(|(dcs, _)| *dcs).collect();
    let same = codings.windows(2).all(|w| w[0] == w[1]);
    let text = if same && !incomplete {
        // Decoding the whole keeps a surrogate pair a sender split across
        // segments.
        let bytes: Vec<u8> = p
            .parts
            .iter()
            .flatten()
            .flat_map(|(_, b)| b.clone())
            .collect();
        text::decode(codings.first().copied().unwrap_or(0), &bytes)
    } else {
        let mut text = String::new();
        for part in &p.parts {
            match part {
                Some((dcs, bytes)) => text.push_str(&text::decode(*dcs, bytes)),
                None => text.push('…'),
            }
        }
        text
    };
    Inbound {
        from: key.from,
        to: key.to,
        text,
        incomplete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(reference: u16, total: u8, seq: u8, payload: &[u8]) -> Part<'_> {
        Part {
            concat: Some(Concat {
                reference,
                total,
                seq,
            }),
            data_coding: text::DCS_DEFAULT,
            payload,
        }
    }

    #[test]
    fn parts_in_any_order_with_duplicates() {
        let now = Instant::now();
        let mut r = Reassembler::new(Duration::from_secs(60), 8);
        assert!(r.push(now, "a", "b", part(1, 3, 3, b"c")).is_empty());
        assert!(r.push(now, "a", "b", part(1, 3, 1, b"a")).is_empty());
        assert!(r.push(now, "a", "b", part(1, 3, 1, b"X")).is_empty());
        // Another sender's message with the same reference stays apart.
        assert!(r.push(now, "z", "b", part(1, 3, 2, b"Z")).is_empty());
        let done = r.push(now, "a", "b", part(1, 3, 2, b"b"));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].text, "abc");
        assert!(!done[0].incomplete);
        assert_eq!(r.pending(), 1);
    }

    #[test]
    fn expiry_delivers_what_came() {
        let now = Instant::now();
        let mut r = Reassembler::new(Duration::from_secs(60), 8);
        r.push(now, "a", "b", part(7, 3, 1, b"one "));
        r.push(now, "a", "b", part(7, 3, 3, b" three"));
        assert_eq!(r.next_expiry(), Some(now + Duration::from_secs(60)));
        assert!(r.expire(now + Duration::from_secs(59)).is_empty());
        let out = r.expire(now + Duration::from_secs(60));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].text, "one … three");
        assert!(out[0].incomplete);
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn memory_is_bounded() {
        let now = Instant::now();
        let mut r = Reassembler::new(Duration::from_secs(60), 2);
        r.push(now, "a", "b", part(1, 2, 1, b"1"));
        r.push(now, "a", "b", part(2, 2, 1, b"2"));
        let out = r.push(now, "a", "b", part(3, 2, 1, b"3"));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].text, "1…");
        assert_eq!(r.pending(), 2);
    }

    #[test]
    fn held_octets_are_bounded() {
        let now = Instant::now();
        let mut r = Reassembler::new(Duration::from_secs(60), 10_000);
        let big = vec![b'x'; 200];
        let mut given_up = 0;
        for reference in 0..6000u16 {
            given_up += r.push(now, "a", "b", part(reference, 2, 1, &big)).len();
        }
        assert!(r.held <= MAX_HELD_BYTES);
        assert_eq!(r.pending() + given_up, 6000);
        assert!(given_up > 0);
        let done = r.expire(now + Duration::from_secs(60));
        assert_eq!(done.len() + given_up, 6000);
        assert_eq!(r.held, 0);
    }

    #[test]
    fn a_surrogate_pair_split_by_the_sender_survives() {
        let now = Instant::now();
        let mut r = Reassembler::new(Duration::from_secs(60), 2);
        let bytes: Vec<u8> = "😀".encode_utf16().flat_map(|u| u.to_be_bytes()).collect();
        let mut p1 = part(1, 2, 1, &bytes[..2]);
        p1.data_coding = text::DCS_UCS2;
        let mut p2 = part(1, 2, 2, &bytes[2..]);
        p2.data_coding = text::DCS_UCS2;
        r.push(now, "a", "b", p1);
        assert_eq!(r.push(now, "a", "b", p2)[0].text, "😀");
    }

    #[test]
    fn bogus_concat_info_is_a_single_message() {
        let now = Instant::now();
        let mut r = Reassembler::new(Duration::from_secs(60), 2);
        assert_eq!(r.push(now, "a", "b", part(1, 2, 0, b"x"))[0].text, "x");
        assert_eq!(r.push(now, "a", "b", part(1, 2, 3, b"y"))[0].text, "y");
        assert_eq!(r.push(now, "a", "b", part(1, 1, 1, b"z"))[0].text, "z");
    }
}
