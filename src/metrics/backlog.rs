//! The bounded queue of encoded metrics between the encoder and the
//! connection: it holds every schema and record the server has not
//! acknowledged, in order, within a byte budget (256 KiB by default, hours
//! of an idle host), and drops the oldest first when full.
//!
//! Every encoded schema and record goes through it, connected or not. The
//! connection takes items at the send cursor; they stay until the server's
//! `metrics_ack` says they are stored, so records sent into a link that
//! silently died are sent again on the next one:
//!
//! ```text
//!                 acknowledged: dropped     sent, kept until acked   not sent yet
//!  ack_through ──▶ ✗  ✗  ✗  [ S  r  r  r  r | r  r  S  r  r ] ◀── push_schema / push_record
//!                            ▲ front        ▲ cursor ──next_to_send()──▶ connection
//!                            │ oldest dropped when over budget
//!  base: the decoder state just before the front (schema JSON + values,
//!        timestamp), so the front can be sent as a key record and each
//!        front record's timestamp is known (a delta carries ts − prev)
//! ```
//!
//! Delta records only decode after the record before them. A new
//! connection ([`Backlog::restart`]) rewinds the cursor to the front: the
//! schema in force is sent again first, and the first record is re-encoded
//! as a key record from `base`. Dropping records nobody received (over
//! budget, or acknowledged before this connection sent them) does the same
//! for the records after them. The server thus always gets schema, key,
//! deltas… on every connection, whatever was dropped, and after
//! `ack_through(welcome.metrics_ts)` nothing it already stored.
//!
//! Storage is one ring of bytes (`kind, varint length, payload` per item),
//! so the budget is the real memory use, without per-item allocations.

use crate::metrics::wire::{Chain, Schema};
use std::collections::VecDeque;

/// Default byte budget: at ~60 bytes per idle-host record, about 4 000
/// records, or 5½ hours at 5 s (the requirement is one hour, 720).
pub const DEFAULT_BUDGET: usize = 256 * 1024;

const KIND_SCHEMA: u8 = b'S';
const KIND_RECORD: u8 = b'R';

/// What to send next.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// Send as the metrics schema control message before the records after it.
    Schema(Schema),
    /// One binary record (see [`crate::metrics::wire`]).
    Record(Vec<u8>),
}

/// What [`Backlog::next_to_send`] would give, without taking it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A schema (queued, or the one in force, sent again).
    Schema,
    /// A record of this many bytes, sent as queued.
    Record(usize),
    /// A record that goes out re-encoded as a key record (longer).
    Key,
}

/// One item's place in the ring.
#[derive(Debug, Clone, Copy)]
struct Head {
    kind: u8,
    /// Header length (kind byte + varint).
    hlen: usize,
    /// Payload length.
    len: usize,
}

impl Head {
    fn total(&self) -> usize {
        self.hlen + self.len
    }
}

#[derive(Debug)]
pub struct Backlog {
    budget: usize,
    ring: VecDeque<u8>,
    items: usize,
    records: usize,
    /// Bytes of the ring before the send cursor: sent on this connection,
    /// not yet acknowledged.
    sent: usize,
    /// Decoder state just before the front item.
    base: Chain,
    /// JSON of the schema in force before the front item.
    base_schema: Option<String>,
    /// The next record sent must be a key record (built from `base`).
    rekey: bool,
    /// Before anything else, send the schema in force again.
    resend_schema: bool,
    dropped: u64,
}

impl Default for Backlog {
    fn default() -> Backlog {
        Backlog::new(DEFAULT_BUDGET)
    }
}

impl Backlog {
    pub fn new(budget: usize) -> Backlog {
        Backlog {
            budget,
            ring: VecDeque::new(),
            items: 0,
            records: 0,
            sent: 0,
            base: Chain::default(),
            base_schema: None,
            rekey: true,
            resend_schema: false,
            dropped: 0,
        }
    }

    /// Queues a schema (the encoder returned one). False if it alone is
    /// larger than the budget and was not queued.
    pub fn push_schema(&mut self, schema: &Schema) -> bool {
        self.push(KIND_SCHEMA, schema.to_json().as_bytes())
    }

    /// Queues one encoded record. False if it alone is larger than the
    /// budget and was not queued.
    pub fn push_record(&mut self, record: &[u8]) -> bool {
        self.push(KIND_RECORD, record)
    }

    /// The next item to send, oldest first. It moves the send cursor past
    /// the item but keeps it until [`ack_through`](Self::ack_through)
    /// covers it (or the budget forces it out).
    pub fn next_to_send(&mut self) -> Option<Item> {
        loop {
            let head = self.head_at(self.sent);
            if self.resend_schema {
                self.resend_schema = false;
                let in_force = self
                    .base_schema
                    .as_deref()
                    .and_then(|j| Schema::from_json(j).ok());
                if let (true, Some(s)) = (head.is_none_or(|h| h.kind != KIND_SCHEMA), in_force) {
                    return Some(Item::Schema(s));
                }
            }
            let head = head?;
            let payload = self.payload(self.sent, head);
            self.sent += head.total();
            if head.kind == KIND_SCHEMA {
                let text = std::str::from_utf8(&payload).unwrap_or_default();
                if let Ok(s) = Schema::from_json(text) {
                    return Some(Item::Schema(s));
                }
                continue;
            }
            if !self.rekey {
                return Some(Item::Record(payload));
            }
            // Only schemas can lie between the front and the first record
            // after a rewind, so `base` is this record's predecessor.
            let mut state = self.base.clone();
            if state.apply(&payload).is_err() {
                // Cannot happen with records from one encoder; if it does,
                // skip to the next record, still re-keying.
                continue;
            }
            self.rekey = false;
            let mut key = Vec::with_capacity(payload.len() * 2);
            state.write_key(&mut key);
            return Some(Item::Record(key));
        }
    }

    /// What [`next_to_send`](Self::next_to_send) would give, without taking it.
    pub fn peek(&self) -> Option<Next> {
        let head = self.head_at(self.sent);
        if self.resend_schema
            && self.base_schema.is_some()
            && head.is_none_or(|h| h.kind != KIND_SCHEMA)
        {
            return Some(Next::Schema);
        }
        let head = head?;
        Some(match head.kind {
            KIND_SCHEMA => Next::Schema,
            _ if self.rekey => Next::Key,
            _ => Next::Record(head.len),
        })
    }

    /// Send and forget: the next item, dropped at once as if acknowledged
    /// (for a receiver that acknowledges nothing).
    pub fn pop(&mut self) -> Option<Item> {
        let item = self.next_to_send();
        while self.sent > 0 && !self.ring.is_empty() {
            self.drop_front(true);
        }
        item
    }

    /// The receiver stored every record up to `ts_ms`: forget them (and
    /// the schemas before them). Returns how many records went. Records
    /// the cursor had not reached yet are forgotten too (they were stored
    /// from an earlier connection); the next record sent is then a key
    /// record, after the schema in force.
    pub fn ack_through(&mut self, ts_ms: u64) -> usize {
        self.ack(ts_ms, false)
    }

    /// [`ack_through`](Self::ack_through) for an acknowledgement on the
    /// current connection (`metrics_ack`): it can only cover what was sent
    /// on it, so it never reaches past the cursor. A record with an older
    /// time than one already stored (the wall clock stepped back) is thus
    /// still sent, not forgotten unseen.
    pub fn ack_sent_through(&mut self, ts_ms: u64) -> usize {
        self.ack(ts_ms, true)
    }

    fn ack(&mut self, ts_ms: u64, only_sent: bool) -> usize {
        let mut n = 0;
        while let Some(head) = self.head_at(0) {
            if only_sent && self.sent == 0 {
                break;
            }
            if head.kind == KIND_SCHEMA {
                // A schema goes with the first record after it.
                match self.head_at(head.total()) {
                    Some(h) if h.kind == KIND_RECORD => {
                        let rec = self.payload(head.total(), h);
                        if self.base.next_ts(&rec).is_ok_and(|t| t > ts_ms) {
                            break;
                        }
                    }
                    // Superseded by the schema after it.
                    Some(_) => {}
                    None => break,
                }
                self.drop_front(true);
                continue;
            }
            let rec = self.payload(0, head);
            // A record whose time cannot be read cannot be decoded either.
            if self.base.next_ts(&rec).is_ok_and(|t| t > ts_ms) {
                break;
            }
            self.drop_front(true);
            n += 1;
        }
        n
    }

    /// A new connection: rewind the cursor to the front. The next item is
    /// the schema in force, then the front record as a key record (the
    /// server's decoder starts fresh).
    pub fn restart(&mut self) {
        self.sent = 0;
        self.resend_schema = true;
        self.rekey = true;
    }

    /// Items (schemas and records) queued.
    pub fn len(&self) -> usize {
        self.items
    }

    pub fn is_empty(&self) -> bool {
        self.items == 0
    }

    /// Records queued, sent or not.
    pub fn records(&self) -> usize {
        self.records
    }

    /// Whether everything queued went out on this connection (nothing is
    /// left to send, though some may wait for an acknowledgement).
    pub fn all_sent(&self) -> bool {
        self.peek().is_none()
    }

    /// Bytes held, counted against the budget.
    pub fn bytes(&self) -> usize {
        self.ring.len()
            + self.base_schema.as_ref().map_or(0, String::len)
            + self.base.values.len() * std::mem::size_of::<Option<i64>>()
    }

    /// Records dropped to stay within the budget, since creation.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn push(&mut self, kind: u8, payload: &[u8]) -> bool {
        let mut header = [0u8; 11];
        header[0] = kind;
        let hlen = 1 + put_varint(&mut header[1..], payload.len() as u64);
        let need = hlen + payload.len();
        if need > self.budget {
            return false;
        }
        while !self.ring.is_empty() && self.bytes() + need > self.budget {
            self.drop_front(false);
        }
        // Grow by doubling but never past the budget, so capacity (the real
        // memory) stays within it too.
        if self.ring.len() + need > self.ring.capacity() {
            let target = (self.ring.capacity() * 2)
                .max(self.ring.len() + need)
                .min(self.budget.max(self.ring.len() + need));
            self.ring.reserve_exact(target - self.ring.len());
        }
        self.ring.extend(&header[..hlen]);
        self.ring.extend(payload);
        self.items += 1;
        if kind == KIND_RECORD {
            self.records += 1;
        }
        true
    }

    /// Forget the front item: `acked` (the receiver has it) or dropped
    /// for the budget (lost, counted).
    fn drop_front(&mut self, acked: bool) {
        let Some(head) = self.head_at(0) else {
            return;
        };
        let payload = self.payload(0, head);
        self.ring.drain(..head.total().min(self.ring.len()));
        self.items = self.items.saturating_sub(1);
        // Was it sent on this connection? Then the receiver's decoder has
        // it and what follows still decodes.
        let was_sent = self.sent > 0;
        self.sent = self.sent.saturating_sub(head.total());
        if head.kind == KIND_SCHEMA {
            self.base_schema = String::from_utf8(payload).ok();
            if !was_sent {
                self.resend_schema = true;
            }
            return;
        }
        self.records = self.records.saturating_sub(1);
        if !acked {
            self.dropped += 1;
        }
        if self.base.apply(&payload).is_err() {
            self.base = Chain::default();
        }
        if !was_sent {
            self.rekey = true;
        }
    }

    /// The item starting `at` bytes into the ring.
    fn head_at(&self, at: usize) -> Option<Head> {
        let kind = *self.ring.get(at)?;
        let mut len = 0u64;
        let mut hlen: usize = 1;
        for (i, b) in self.ring.range(at + 1..).take(10).enumerate() {
            len |= u64::from(b & 0x7f) << (7 * i);
            hlen += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        // Our own framing, so it is consistent; clamp anyway rather than panic.
        let len = usize::try_from(len)
            .unwrap_or(usize::MAX)
            .min(self.ring.len().saturating_sub(at + hlen));
        Some(Head { kind, hlen, len })
    }

    fn payload(&self, at: usize, head: Head) -> Vec<u8> {
        let start = at + head.hlen;
        self.ring.range(start..start + head.len).copied().collect()
    }
}

fn put_varint(out: &mut [u8], mut v: u64) -> usize {
    let mut i = 0;
    while v >= 0x80 {
        out[i] = (v as u8) | 0x80;
        v >>= 7;
        i += 1;
    }
    out[i] = v as u8;
    i + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::sample::tests::idle_stream;
    use crate::metrics::wire::tests::random_stream;
    use crate::metrics::wire::{Decoder, Encoder, SeriesSource};

    /// Decodes everything popped, as the server would; returns the
    /// timestamps and the values of each record.
    fn drain(b: &mut Backlog, dec: &mut Decoder) -> Vec<(u64, Vec<Option<i64>>)> {
        let mut out = Vec::new();
        while let Some(item) = b.pop() {
            match item {
                Item::Schema(s) => dec.set_schema(s).unwrap(),
                Item::Record(r) => {
                    let d = dec.decode(&r).unwrap();
                    out.push((d.ts_ms, d.values.to_vec()));
                }
            }
        }
        out
    }

    fn values(s: &dyn SeriesSource) -> (u64, Vec<Option<i64>>) {
        let mut v = Vec::new();
        s.for_each_series(&mut |_, _, _, x| v.push(x));
        (s.timestamp_ms(), v)
    }

    fn push(b: &mut Backlog, enc: &mut Encoder, s: &dyn SeriesSource) {
        let mut rec = Vec::new();
        if let Some(schema) = enc.encode(s, &mut rec) {
            assert!(b.push_schema(schema));
        }
        assert!(b.push_record(&rec));
    }

    #[test]
    fn holds_at_least_an_hour_of_an_idle_host() {
        let samples = idle_stream(6000);
        let mut b = Backlog::default();
        let mut enc = Encoder::new();
        for s in &samples {
            push(&mut b, &mut enc, s);
            assert!(b.bytes() <= DEFAULT_BUDGET);
            assert!(b.ring.capacity() <= DEFAULT_BUDGET);
        }
        println!(
            "backlog: {} idle-host samples in {} bytes ({} dropped)",
            samples.len() as u64 - b.dropped(),
            b.bytes(),
            b.dropped()
        );
        assert!(samples.len() as u64 - b.dropped() >= 720);
        // What survives decodes to exactly the newest samples.
        let mut dec = Decoder::new();
        let got = drain(&mut b, &mut dec);
        let want: Vec<_> = samples[samples.len() - got.len()..]
            .iter()
            .map(|s| values(s))
            .collect();
        assert_eq!(got, want);
        assert!(b.is_empty());
    }

    #[test]
    fn drops_oldest_and_rekeys_across_schema_changes() {
        let samples = random_stream(3, 400);
        for budget in [2000, 5000, 20000] {
            let mut b = Backlog::new(budget);
            let mut enc = Encoder::new();
            for s in &samples {
                push(&mut b, &mut enc, s);
                assert!(b.bytes() <= budget, "{} > {budget}", b.bytes());
            }
            assert!(b.dropped() > 0);
            let mut dec = Decoder::new();
            let got = drain(&mut b, &mut dec);
            assert!(!got.is_empty());
            let want: Vec<_> = samples[samples.len() - got.len()..]
                .iter()
                .map(|s| values(s))
                .collect();
            assert_eq!(got, want, "budget {budget}");
        }
    }

    #[test]
    fn restart_resends_schema_and_key() {
        let samples = random_stream(5, 30);
        let mut b = Backlog::default();
        let mut enc = Encoder::new();
        let mut dec = Decoder::new();
        let mut got = Vec::new();
        for (i, s) in samples.iter().enumerate() {
            push(&mut b, &mut enc, s);
            if i % 7 == 3 {
                // Connection lost and re-established: the server starts a
                // fresh decoder.
                b.restart();
                dec = Decoder::new();
            }
            if i % 2 == 0 {
                got.extend(drain(&mut b, &mut dec));
            }
        }
        got.extend(drain(&mut b, &mut dec));
        let want: Vec<_> = samples.iter().map(|s| values(s)).collect();
        assert_eq!(got, want);
        // A restart with nothing queued only resends the schema.
        b.restart();
        assert!(matches!(b.pop(), Some(Item::Schema(_))));
        assert_eq!(b.pop(), None);
    }

    #[test]
    fn oversized_item_is_refused() {
        let mut b = Backlog::new(10);
        assert!(!b.push_record(&[0u8; 20]));
        assert!(b.is_empty());
        assert!(b.push_record(&[1, 0, 0, 0]));
        assert_eq!(b.len(), 1);
    }

    /// What a server does with what `next_to_send` gives on one connection: a
    /// fresh decoder, every item decoded; returns (ts, values) per record.
    fn send(b: &mut Backlog, dec: &mut Decoder, max: usize) -> Vec<(u64, Vec<Option<i64>>)> {
        let mut out = Vec::new();
        while out.len() < max {
            let peeked = b.peek();
            let Some(item) = b.next_to_send() else {
                assert_eq!(peeked, None);
                break;
            };
            match item {
                Item::Schema(s) => {
                    assert_eq!(peeked, Some(Next::Schema));
                    dec.set_schema(s).unwrap();
                }
                Item::Record(r) => {
                    match peeked {
                        Some(Next::Record(n)) => assert_eq!(n, r.len()),
                        Some(Next::Key) => assert_eq!(r[0], 0x01, "a key record"),
                        other => panic!("peek said {other:?} for a record"),
                    }
                    let d = dec.decode(&r).unwrap();
                    out.push((d.ts_ms, d.values.to_vec()));
                }
            }
        }
        out
    }

    fn all_values(samples: &[crate::metrics::wire::tests::Fake]) -> Vec<(u64, Vec<Option<i64>>)> {
        samples.iter().map(|s| values(s)).collect()
    }

    #[test]
    fn sent_records_stay_until_acknowledged() {
        let samples = random_stream(11, 40);
        let mut b = Backlog::default();
        let mut enc = Encoder::new();
        for s in &samples[..10] {
            push(&mut b, &mut enc, s);
        }
        let mut dec = Decoder::new();
        let got = send(&mut b, &mut dec, usize::MAX);
        assert_eq!(got, all_values(&samples[..10]));
        assert!(b.all_sent());
        // Sent, not acknowledged: all still held.
        assert_eq!(b.records(), 10);
        assert_eq!(b.ack_through(samples[3].ts), 4);
        assert_eq!(b.records(), 6);
        // Acknowledging again, or older, changes nothing.
        assert_eq!(b.ack_through(samples[3].ts), 0);
        assert_eq!(b.ack_through(0), 0);
        // The same connection goes on with deltas, no schema, no key.
        for s in &samples[10..15] {
            push(&mut b, &mut enc, s);
        }
        assert!(matches!(b.peek(), Some(Next::Record(_))));
        assert_eq!(
            send(&mut b, &mut dec, usize::MAX),
            all_values(&samples[10..15])
        );
        assert_eq!(b.ack_through(samples[14].ts), 11);
        assert!(b.is_empty());
        assert_eq!(b.dropped(), 0);
    }

    #[test]
    fn a_cut_without_ack_resends_from_the_oldest_unacknowledged() {
        let samples = random_stream(12, 60);
        let mut b = Backlog::default();
        let mut enc = Encoder::new();
        // Connection 1: the server stores (and acks) up to 5, then the link
        // dies silently while 6..20 are sent into it.
        let mut dec = Decoder::new();
        let mut stored = Vec::new();
        for s in &samples[..20] {
            push(&mut b, &mut enc, s);
            stored.extend(send(&mut b, &mut dec, usize::MAX));
        }
        stored.truncate(6);
        b.ack_through(samples[5].ts);
        // Offline for a while.
        for s in &samples[20..35] {
            push(&mut b, &mut enc, s);
        }
        // Connection 2: welcome says nothing newer than 5 is stored.
        b.ack_through(samples[5].ts);
        b.restart();
        let mut dec = Decoder::new();
        assert_eq!(b.peek(), Some(Next::Schema));
        let again = send(&mut b, &mut dec, usize::MAX);
        assert_eq!(again, all_values(&samples[6..35]), "no gap, no duplicate");
        stored.extend(again);
        assert_eq!(stored, all_values(&samples[..35]));
    }

    #[test]
    fn welcome_metrics_ts_skips_what_is_stored() {
        let samples = random_stream(13, 30);
        let mut b = Backlog::default();
        let mut enc = Encoder::new();
        let mut dec = Decoder::new();
        for s in &samples[..12] {
            push(&mut b, &mut enc, s);
        }
        // Sent and stored, but the ack was lost with the link.
        send(&mut b, &mut dec, usize::MAX);
        // The new connection's welcome carries the newest stored ts.
        b.ack_through(samples[11].ts);
        b.restart();
        assert_eq!(b.records(), 0);
        let mut dec = Decoder::new();
        // Only the schema again (the server's decoder is new) ...
        assert_eq!(send(&mut b, &mut dec, usize::MAX), vec![]);
        // ... and the next record stands alone.
        push(&mut b, &mut enc, &samples[12]);
        assert_eq!(b.peek(), Some(Next::Key));
        assert_eq!(
            send(&mut b, &mut dec, usize::MAX),
            all_values(&samples[12..13])
        );
    }

    #[test]
    fn rewind_in_the_middle_of_a_resend() {
        let samples = random_stream(14, 80);
        let mut b = Backlog::default();
        let mut enc = Encoder::new();
        for s in &samples[..50] {
            push(&mut b, &mut enc, s);
        }
        let mut stored: Vec<(u64, Vec<Option<i64>>)> = Vec::new();
        let mut acked = 0u64;
        // Several connections, each dying after a few records, acking some.
        for round in 0..8 {
            b.ack_through(acked);
            b.restart();
            let mut dec = Decoder::new();
            let got = send(&mut b, &mut dec, 3 + round);
            for g in got {
                if !stored.iter().any(|s| s.0 == g.0) {
                    stored.push(g);
                }
            }
            if let Some(last) = stored.get(stored.len().saturating_sub(2)) {
                acked = last.0;
                b.ack_through(acked);
            }
        }
        b.ack_through(acked);
        b.restart();
        let mut dec = Decoder::new();
        for g in send(&mut b, &mut dec, usize::MAX) {
            if !stored.iter().any(|s| s.0 == g.0) {
                stored.push(g);
            }
        }
        assert_eq!(stored, all_values(&samples[..50]));
    }

    #[test]
    fn an_ack_past_the_cursor_rekeys() {
        let samples = random_stream(15, 20);
        let mut b = Backlog::default();
        let mut enc = Encoder::new();
        for s in &samples[..10] {
            push(&mut b, &mut enc, s);
        }
        let mut dec = Decoder::new();
        assert_eq!(send(&mut b, &mut dec, 3), all_values(&samples[..3]));
        // The server says it has up to 6 (from elsewhere): 3..=6 are not sent.
        b.ack_through(samples[6].ts);
        assert_eq!(b.peek(), Some(Next::Key));
        assert_eq!(
            send(&mut b, &mut dec, usize::MAX),
            all_values(&samples[7..10])
        );
    }

    #[test]
    fn an_ack_on_the_connection_never_passes_the_cursor() {
        let samples = random_stream(16, 20);
        let mut b = Backlog::default();
        let mut enc = Encoder::new();
        for s in &samples[..10] {
            push(&mut b, &mut enc, s);
        }
        let mut dec = Decoder::new();
        assert_eq!(send(&mut b, &mut dec, 3), all_values(&samples[..3]));
        // An ack for a time past what was sent (a clock stepped back, or a
        // confused server) forgets only what was sent.
        assert_eq!(b.ack_sent_through(samples[8].ts), 3);
        assert_eq!(b.records(), 7);
        assert!(matches!(b.peek(), Some(Next::Record(_))));
        assert_eq!(
            send(&mut b, &mut dec, usize::MAX),
            all_values(&samples[3..10])
        );
        assert_eq!(b.ack_sent_through(samples[9].ts), 7);
        assert!(b.is_empty());
    }

    #[test]
    fn budget_drops_sent_records_first_and_resend_rekeys() {
        let samples = idle_stream(400);
        let budget = 16 * 1024;
        let mut b = Backlog::new(budget);
        let mut enc = Encoder::new();
        let mut dec = Decoder::new();
        let mut got = Vec::new();
        // Connected, sending everything, never acknowledged (dead link).
        for s in &samples {
            push(&mut b, &mut enc, s);
            got.extend(send(&mut b, &mut dec, usize::MAX));
            assert!(b.bytes() <= budget);
        }
        assert_eq!(got.len(), samples.len());
        assert!(b.dropped() > 0);
        // The next connection gets what is left: the newest, decodable.
        b.restart();
        let mut dec = Decoder::new();
        let again = send(&mut b, &mut dec, usize::MAX);
        assert_eq!(again.len(), b.records());
        let want = all_sample_values(&samples[samples.len() - again.len()..]);
        assert_eq!(again, want);
    }

    fn all_sample_values(
        samples: &[crate::metrics::sample::Sample],
    ) -> Vec<(u64, Vec<Option<i64>>)> {
        samples.iter().map(|s| values(s)).collect()
    }
}
