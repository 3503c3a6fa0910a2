//! The sending half of one data channel (docs/protocol.md §3–§5), written
//! once for jobs, logs and terminals: byte offsets, the window, ACK and
//! CREDIT, the records the server has not acknowledged (in memory, then,
//! for jobs, in a bounded spool file), the resend from the server's offset
//! after a reconnect, and the END frame. Sans-IO: records in, frames out;
//! the only I/O is the spool file (`spool.rs`).
//!
//! ```text
//!   push / append ─▶ [ mem: acked … sent … ] [ spool file: later records ] ◀─ push once mem is full
//!                       ▲ ACK drops the front     │ refill when mem has room
//!                       └─────────────────────────┘ (file truncated when read to its end)
//!   next_frame: the first record at `sent`, while sent − acked < window
//!   CREDIT (absolute offset): the window widens to it, never narrows
//!   link up (server's offset): acked = max(acked, offset); sent = acked → resend
//!   end_frame: END at `produced`, once every byte is sent
//! ```
//!
//! Offsets are byte offsets of the channel's payload stream, and a record is
//! sent whole as one DATA frame, so a resend starts exactly where the
//! server's copy ends: no gap, no duplicate (the server drops any overlap).
//!
//! What a channel keeps ([`Keep`]):
//! - `UntilAcked` (jobs, terminals): every byte until the server has it,
//!   to resend after a reconnect;
//! - `UntilSent` (logs): nothing once it is handed to the link. A log
//!   channel belongs to its connection (the server reopens it from its own
//!   cursor), and the container's log file is its spool.
//!
//! Where the source's next bytes may go (`room`, `has_room`): the source
//! is read only while there is room, so a fast one waits on its pipe, PTY
//! or socket instead of filling memory.
//!
//! ```text
//!   held records (disk full)          ─▶ no room
//!   spooled, link down                ─▶ the file, up to its cap
//!   spooled, link up, file not empty  ─▶ no room (the file goes first)
//!   otherwise                         ─▶ memory: min(mem cap − in memory, window − unacknowledged)
//!                                        (a record counts as at least 64 bytes in memory)
//! ```
//!
//! While the link is up a spooled source is paced by the network: its
//! bytes never take the detour through the disk, which (a write, a read
//! back and a truncate per byte) held the job relay under its goal. The
//! file is for output produced while the link is down; after a reconnect
//! the source waits until the file has been sent.
//!
//! A full disk loses nothing and fails nothing: the record the file could
//! not take is held in memory (beyond the memory cap, but only what one
//! read gave: the reader asks `has_room()` before every read), the source
//! is not read any more, and the cause is given once to the owner
//! (`take_spool_error`). The server's acknowledgements free memory, then
//! the file; the held records follow and the source is read again.

mod spool;
#[cfg(test)]
mod tests;

use crate::protocol::{self, FrameHeader, FrameKind, StreamTag, MAX_DATA_PAYLOAD};
use spool::Spool;
use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;

/// What memory counts a record as, at least (its slot and allocation).
const RECORD_COST: usize = 64;

/// One DATA frame's payload at its offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub tag: StreamTag,
    pub payload: Vec<u8>,
}

impl Record {
    fn end(&self) -> u64 {
        self.seq + self.payload.len() as u64
    }
}

/// Bounds of one channel.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes held in memory (before spilling to the spool file, if any).
    pub mem: usize,
    /// Bytes the spool file may hold (a spooled channel only).
    pub spool: u64,
    /// Bytes sent and not yet acknowledged; a CREDIT may widen it.
    pub window: u64,
}

/// How long a channel keeps what it produced (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Until the server acknowledges it: resent after a reconnect.
    UntilAcked,
    /// Until it is handed to the link: the channel ends with its link.
    UntilSent,
}

/// Where the source's next bytes would go.
enum Way {
    /// Nowhere: records wait for the disk, or the file waits to be sent.
    Stopped,
    /// The spool file, with this much room.
    File(u64),
    /// Memory, with this much room.
    Memory(usize),
}

pub struct OutChannel {
    channel: u32,
    limits: Limits,
    keep: Keep,
    /// `limits.window`, widened by CREDIT frames.
    window: u64,
    /// Offset after the last byte produced, the server's acknowledgement,
    /// and the next byte to send (acked ≤ sent ≤ produced).
    produced: u64,
    acked: u64,
    sent: u64,
    /// Records from the front (acked or sent, per `keep`) on, in order.
    mem: VecDeque<Record>,
    mem_bytes: usize,
    /// The records after `mem`, for a spooled channel.
    spool: Option<Spool>,
    /// The link is up: a spooled source is paced by memory.
    online: bool,
}

impl OutChannel {
    /// A channel in memory only.
    pub fn new(channel: u32, limits: Limits, keep: Keep) -> OutChannel {
        OutChannel {
            channel,
            limits,
            keep,
            window: limits.window,
            produced: 0,
            acked: 0,
            sent: 0,
            mem: VecDeque::new(),
            mem_bytes: 0,
            spool: None,
            online: false,
        }
    }

    /// A channel that keeps every byte until acknowledged, past its memory
    /// cap in a spool file at `path` (created on first use, removed with
    /// the channel). The file never outlives the process (a restarted
    /// runner reports the job failed), so its format is private.
    pub fn spooled(channel: u32, limits: Limits, path: PathBuf) -> OutChannel {
        let mut c = OutChannel::new(channel, limits, Keep::UntilAcked);
        c.spool = Some(Spool::new(path, limits.spool));
        c
    }

    pub fn channel(&self) -> u32 {
        self.channel
    }

    /// Offset after the last byte produced.
    pub fn produced(&self) -> u64 {
        self.produced
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Bytes produced and not yet handed to the link.
    pub fn pending(&self) -> u64 {
        self.produced - self.sent
    }

    /// Bytes in memory (for figures and tests).
    pub fn mem_bytes(&self) -> usize {
        self.mem_bytes
    }

    /// Bytes in the spool file.
    fn spilled(&self) -> u64 {
        self.spool.as_ref().map_or(0, Spool::len)
    }

    /// Records waiting for the disk (for tests and figures).
    pub fn held(&self) -> usize {
        self.spool.as_ref().map_or(0, |s| s.held.len())
    }

    /// The spool's write error since the last call (once per stall).
    pub fn take_spool_error(&mut self) -> Option<io::Error> {
        self.spool.as_mut().and_then(|s| s.error.take())
    }

    /// Everything produced is acknowledged.
    pub fn is_drained(&self) -> bool {
        self.acked >= self.produced
    }

    fn way(&self) -> Way {
        if let Some(sp) = &self.spool {
            if !sp.held.is_empty() {
                return Way::Stopped;
            }
            if !self.online {
                // Once memory is full everything goes to the file (order),
                // so the file's room is what counts.
                return Way::File(sp.cap.saturating_sub(sp.len()));
            }
            if sp.len() > 0 {
                return Way::Stopped;
            }
        }
        // A record costs its bookkeeping too: tiny ones (a terminal's echo
        // while the server is slow to acknowledge) cannot pile up by the
        // hundred thousand under a cap counted in payload bytes.
        let used = self.mem_bytes.max(self.mem.len() * RECORD_COST);
        let mem = self.limits.mem.saturating_sub(used);
        let window = self.window.saturating_sub(self.produced - self.acked);
        Way::Memory(mem.min(usize::try_from(window).unwrap_or(usize::MAX)))
    }

    /// Bytes the source may give now: for a source that reads what fits
    /// (a terminal, a log stream).
    pub fn room(&self) -> usize {
        match self.way() {
            Way::Stopped => 0,
            Way::File(n) => usize::try_from(n).unwrap_or(usize::MAX),
            Way::Memory(n) => n,
        }
    }

    /// Whether a source that gives up to a whole record per read (a job's
    /// pipe) may be read: memory has room for a whole record, or the spool
    /// file is under its cap (one record over it at most).
    pub fn has_room(&self) -> bool {
        match self.way() {
            Way::Stopped => false,
            Way::File(n) => n > 0,
            Way::Memory(n) => n >= MAX_DATA_PAYLOAD,
        }
    }

    /// Append one record (at most a frame's payload). Never loses it: a
    /// record the spool file cannot take (disk full) is held in memory and
    /// the source must stop (see the module doc); the cause is kept for
    /// `take_spool_error`.
    pub fn push(&mut self, tag: StreamTag, payload: Vec<u8>) {
        let len = payload.len();
        let rec = Record {
            seq: self.produced,
            tag,
            payload,
        };
        self.produced += len as u64;
        if let Some(sp) = self.spool.as_mut() {
            if !sp.held.is_empty() {
                return sp.held.push_back(rec);
            }
            if sp.len() > 0 || self.mem_bytes + len > self.limits.mem {
                if let Err(e) = sp.write(&rec) {
                    sp.error = Some(e);
                    sp.held.push_back(rec);
                }
                return;
            }
        }
        self.mem_bytes += len;
        self.mem.push_back(rec);
    }

    /// Append stream bytes (a terminal's output): they join the last
    /// record while it is unsent, has the same tag and is under a frame's
    /// payload, so a burst goes out in few frames; a sent record is never
    /// changed.
    pub fn append(&mut self, tag: StreamTag, mut bytes: &[u8]) {
        let tail_in_mem = self.spilled() == 0 && self.held() == 0;
        while !bytes.is_empty() {
            let sent = self.sent;
            let last = self.mem.back_mut().filter(|r| {
                tail_in_mem && r.tag == tag && r.seq >= sent && r.payload.len() < MAX_DATA_PAYLOAD
            });
            if let Some(last) = last {
                let n = (MAX_DATA_PAYLOAD - last.payload.len()).min(bytes.len());
                last.payload.extend_from_slice(&bytes[..n]);
                self.mem_bytes += n;
                self.produced += n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let n = bytes.len().min(MAX_DATA_PAYLOAD);
            self.push(tag, bytes[..n].to_vec());
            bytes = &bytes[n..];
        }
    }

    /// An ACK or CREDIT frame from the server for this channel.
    pub fn on_frame(&mut self, kind: FrameKind, seq: u64) -> io::Result<()> {
        match kind {
            FrameKind::Ack => self.ack(seq),
            FrameKind::Credit => {
                self.credit(seq);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The server stored everything before `seq`. Errors only reading the
    /// spool file back (a channel in memory never fails).
    pub fn ack(&mut self, seq: u64) -> io::Result<()> {
        let seq = seq.min(self.produced);
        if seq <= self.acked {
            return Ok(());
        }
        self.acked = seq;
        self.sent = self.sent.max(seq);
        while let Some(front) = self.mem.front() {
            if front.end() > seq {
                break;
            }
            self.mem_bytes -= front.payload.len();
            self.mem.pop_front();
        }
        self.refill()?;
        self.flush_held();
        Ok(())
    }

    /// The sender may send up to offset `seq` (absolute, so idempotent):
    /// the window widens to it and never narrows. Memory stays at its cap.
    pub fn credit(&mut self, seq: u64) {
        self.window = self.window.max(seq.saturating_sub(self.acked));
    }

    /// A new link: resend from what the server says it has (`None`: from
    /// our own acknowledgement; the server drops the overlap).
    pub fn link_up(&mut self, server_has: Option<u64>) -> io::Result<()> {
        if let Some(seq) = server_has {
            self.ack(seq)?;
        }
        self.sent = self.acked;
        self.online = true;
        Ok(())
    }

    /// The link is gone: a spooled source goes on into memory, then the file.
    pub fn link_down(&mut self) {
        self.online = false;
    }

    /// The next DATA frame to send, if the window allows.
    pub fn next_frame(&mut self) -> Option<Vec<u8>> {
        if self.sent - self.acked >= self.window {
            return None;
        }
        // Records are in offset order; `sent` is always at a record
        // boundary, except after an ACK inside a record (sent again whole).
        // Kept until sent, memory holds only unsent records: the first.
        let mut i = 0;
        while self.mem.get(i)?.end() <= self.sent {
            i += 1;
        }
        let rec = &self.mem[i];
        let header = FrameHeader {
            kind: FrameKind::Data,
            tag: rec.tag,
            channel: self.channel,
            seq: rec.seq,
        };
        let frame = protocol::encode_frame(header, &rec.payload);
        self.sent = rec.end();
        if self.keep == Keep::UntilSent {
            self.mem_bytes -= rec.payload.len();
            self.mem.pop_front();
        }
        Some(frame)
    }

    /// Whether a frame could be sent now.
    pub fn wants_send(&self) -> bool {
        self.sent - self.acked < self.window
            && self.sent < self.produced
            // Spilled records must come back to memory first.
            && self.mem.back().is_some_and(|r| r.end() > self.sent)
    }

    /// The END frame with `reason`, once every byte produced is sent (the
    /// stream ends at `produced`); `None` while some wait.
    pub fn end_frame(&self, reason: &str) -> Option<Vec<u8>> {
        if self.sent < self.produced {
            return None;
        }
        let header = FrameHeader {
            kind: FrameKind::End,
            tag: StreamTag::None,
            channel: self.channel,
            seq: self.produced,
        };
        Some(protocol::encode_frame(header, reason.as_bytes()))
    }

    /// Move spilled records into memory while it has room (a record over
    /// the cap waits until memory is empty, then goes alone).
    fn refill(&mut self) -> io::Result<()> {
        let Some(sp) = self.spool.as_mut() else {
            return Ok(());
        };
        loop {
            let room = if self.mem_bytes == 0 {
                usize::MAX
            } else {
                self.limits.mem.saturating_sub(self.mem_bytes)
            };
            let Some(rec) = sp.read(room)? else {
                return Ok(());
            };
            self.mem_bytes += rec.payload.len();
            self.mem.push_back(rec);
        }
    }

    /// Held records go on once there is room: into memory when the file is
    /// empty and memory has room, else into the file.
    fn flush_held(&mut self) {
        let Some(sp) = self.spool.as_mut() else {
            return;
        };
        while let Some(rec) = sp.held.pop_front() {
            let len = rec.payload.len();
            if sp.len() == 0 && (self.mem_bytes == 0 || self.mem_bytes + len <= self.limits.mem) {
                self.mem_bytes += len;
                self.mem.push_back(rec);
            } else if let Err(e) = sp.write(&rec) {
                // Still full: wait for the next acknowledgement.
                crate::debug!("channel", "spool still cannot grow: {e}");
                sp.held.push_front(rec);
                return;
            }
        }
    }
}
