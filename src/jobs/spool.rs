//! A job's output channel on the runner: every byte the server has not
//! acknowledged, in memory up to a cap, then in a bounded spool file, sent
//! in order and resent from the server's acknowledgement after a reconnect.
//!
//! ```text
//!   push ─▶ [ mem: acked … sent … ] [ spill file: later records ] ◀─ push once mem is full
//!              ▲ ACK drops the front      │ refill when mem is half empty
//!              └──────────────────────────┘ (file truncated when read to its end)
//!   next_frame: the first record at `sent`, while sent − acked < window
//!   link up (welcome.acks): acked = max(acked, ack); sent = acked → resend
//!
//!   the spool file cannot grow (disk full, ENOSPC):
//!   push ─▶ [ held: at most one read's records, in memory ] ─▶ has_room() = false
//!              │ every ACK: refill (the file is truncated once read to its end),
//!              └─ then held ─▶ memory or file again ─▶ has_room() once held is empty
//! ```
//!
//! A full disk loses nothing and fails nothing: the record that could not
//! be written is held in memory (beyond the memory cap, but only what one
//! read gave: the reader asks `has_room()` before every read), the source
//! is not read any more (the child blocks on its pipe, as when the spool
//! reaches its cap), and the cause is given once to the owner
//! (`take_spool_error`, written to the job's log). The server's
//! acknowledgements free memory, then the file; the held records follow
//! and the source is read again. While the link is down and the disk full
//! the job just waits (its timeout still runs).
//!
//! While the link is up the source is paced by the network instead: it is
//! read only while memory has room for another record and the file is
//! empty, so a job that outruns the server waits on its pipe (like any
//! pipe reader) and its bytes never take the detour through the disk —
//! which, with the file in the path, cost a write, a read back and a
//! truncate per byte and held the relay under its goal. The file is for
//! output produced while the link is down; after a reconnect the source
//! waits until the file has been sent.
//!
//! ```text
//!   has_room():  held records  ─▶ no
//!                link up       ─▶ file empty and memory has room for one more record
//!                link down     ─▶ the file is under its cap
//! ```
//!
//! Offsets are byte offsets of the channel's payload stream (each record is
//! one DATA frame's payload), so a resend starts exactly where the server's
//! copy ends: no gap, no duplicate. The spool file never outlives the
//! process (a restarted runner reports the job failed; see `ledger.rs`), so
//! its format is private: `tag u8, seq u64, len u32, payload`.

use crate::protocol::{self, FrameHeader, FrameKind, StreamTag};
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

/// One DATA frame's worth of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub tag: StreamTag,
    pub payload: Vec<u8>,
}

/// Bounds of one channel.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes held in memory before spilling to the file.
    pub mem: usize,
    /// Bytes the spool file may hold.
    pub spool: u64,
    /// Bytes sent and not yet acknowledged.
    pub window: u64,
}

struct Spill {
    path: PathBuf,
    file: File,
    /// Where the next record is written and the next unread one starts.
    write_pos: u64,
    read_pos: u64,
}

pub struct OutChannel {
    channel: u32,
    limits: Limits,
    produced: u64,
    acked: u64,
    sent: u64,
    mem: VecDeque<Record>,
    mem_bytes: usize,
    spill_path: PathBuf,
    spill: Option<Spill>,
    /// Records the spool file could not take (disk full), in order after
    /// everything in memory and in the file.
    held: VecDeque<Record>,
    /// The link is up: the source is paced by memory (see the module doc).
    online: bool,
    /// Why the spool could not grow, not yet reported to the owner.
    spool_error: Option<io::Error>,
}

impl OutChannel {
    pub fn new(channel: u32, limits: Limits, spill_path: PathBuf) -> OutChannel {
        OutChannel {
            channel,
            limits,
            produced: 0,
            acked: 0,
            sent: 0,
            mem: VecDeque::new(),
            mem_bytes: 0,
            spill_path,
            spill: None,
            held: VecDeque::new(),
            online: false,
            spool_error: None,
        }
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

    fn spilled(&self) -> u64 {
        self.spill.as_ref().map_or(0, |s| s.write_pos - s.read_pos)
    }

    /// Bytes in memory (for figures and tests).
    pub fn mem_bytes(&self) -> usize {
        self.mem_bytes
    }

    /// Whether the source may be read. Link up: while memory can take
    /// another whole record and nothing waits in the file. Link down: once
    /// memory is full everything goes to the spool (order), so the spool's
    /// room is what counts.
    pub fn has_room(&self) -> bool {
        if !self.held.is_empty() {
            return false;
        }
        if self.online {
            self.spilled() == 0 && self.mem_bytes + protocol::MAX_DATA_PAYLOAD <= self.limits.mem
        } else {
            self.spilled() < self.limits.spool
        }
    }

    /// Records waiting for the disk (for tests and figures).
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The spool's write error since the last call (once per stall).
    pub fn take_spool_error(&mut self) -> Option<io::Error> {
        self.spool_error.take()
    }

    /// Everything produced is acknowledged.
    pub fn is_drained(&self) -> bool {
        self.acked >= self.produced
    }

    /// Append output. Never loses it: a record the spool file cannot take
    /// (disk full) is held in memory and the source must stop (see the
    /// module doc); the cause is kept for `take_spool_error`.
    pub fn push(&mut self, tag: StreamTag, payload: Vec<u8>) {
        let len = payload.len() as u64;
        let rec = Record {
            seq: self.produced,
            tag,
            payload,
        };
        self.produced += len;
        if !self.held.is_empty() {
            self.held.push_back(rec);
        } else if self.spilled() > 0 || self.mem_bytes + rec.payload.len() > self.limits.mem {
            if let Err(e) = self.spill_write(&rec) {
                self.spool_error = Some(e);
                self.held.push_back(rec);
            }
        } else {
            self.mem_bytes += rec.payload.len();
            self.mem.push_back(rec);
        }
    }

    /// Held records go on once there is room: into memory when the file is
    /// empty and memory has room, else into the file.
    fn flush_held(&mut self) {
        while let Some(rec) = self.held.pop_front() {
            if self.spilled() == 0
                && (self.mem_bytes == 0 || self.mem_bytes + rec.payload.len() <= self.limits.mem)
            {
                self.mem_bytes += rec.payload.len();
                self.mem.push_back(rec);
            } else if let Err(e) = self.spill_write(&rec) {
                // Still full: wait for the next acknowledgement.
                log_still_full(&e);
                self.held.push_front(rec);
                return;
            }
        }
    }

    fn spill_write(&mut self, rec: &Record) -> io::Result<()> {
        if self.spill.is_none() {
            if let Some(dir) = self.spill_path.parent() {
                fs::create_dir_all(dir)?;
            }
            let file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&self.spill_path)?;
            self.spill = Some(Spill {
                path: self.spill_path.clone(),
                file,
                write_pos: 0,
                read_pos: 0,
            });
        }
        let Some(sp) = self.spill.as_mut() else {
            return Ok(());
        };
        let mut head = [0u8; 13];
        head[0] = rec.tag as u8;
        head[1..9].copy_from_slice(&rec.seq.to_be_bytes());
        head[9..13].copy_from_slice(&(rec.payload.len() as u32).to_be_bytes());
        sp.file.seek(SeekFrom::Start(sp.write_pos))?;
        let written = sp
            .file
            .write_all(&head)
            .and_then(|()| sp.file.write_all(&rec.payload));
        if let Err(e) = written {
            // Cut back to the last whole record: the file stays readable.
            let _ = sp.file.set_len(sp.write_pos);
            return Err(e);
        }
        sp.write_pos += 13 + rec.payload.len() as u64;
        Ok(())
    }

    /// Move spilled records into memory while it has room (a record over
    /// the cap waits until memory is empty, then goes alone).
    fn refill(&mut self) -> io::Result<()> {
        loop {
            let Some(sp) = self.spill.as_mut() else {
                return Ok(());
            };
            if sp.read_pos >= sp.write_pos {
                // Read to its end: start the file over (frees the disk).
                if sp.write_pos > 0 {
                    sp.file.set_len(0)?;
                }
                sp.read_pos = 0;
                sp.write_pos = 0;
                return Ok(());
            }
            sp.file.seek(SeekFrom::Start(sp.read_pos))?;
            let mut head = [0u8; 13];
            sp.file.read_exact(&mut head)?;
            let tag = tag_from(head[0]);
            let mut seq = [0u8; 8];
            seq.copy_from_slice(&head[1..9]);
            let len = u32::from_be_bytes([head[9], head[10], head[11], head[12]]) as usize;
            if self.mem_bytes > 0 && self.mem_bytes + len > self.limits.mem {
                return Ok(());
            }
            let mut payload = vec![0u8; len];
            sp.file.read_exact(&mut payload)?;
            sp.read_pos += 13 + len as u64;
            self.mem_bytes += len;
            self.mem.push_back(Record {
                seq: u64::from_be_bytes(seq),
                tag,
                payload,
            });
        }
    }

    /// The server stored everything before `seq`.
    pub fn ack(&mut self, seq: u64) -> io::Result<()> {
        let seq = seq.min(self.produced);
        if seq <= self.acked {
            return Ok(());
        }
        self.acked = seq;
        self.sent = self.sent.max(seq);
        while let Some(front) = self.mem.front() {
            if front.seq + front.payload.len() as u64 > seq {
                break;
            }
            self.mem_bytes -= front.payload.len();
            self.mem.pop_front();
        }
        self.refill()?;
        self.flush_held();
        Ok(())
    }

    /// A new link: resend from what the server says it has.
    pub fn link_up(&mut self, server_has: Option<u64>) -> io::Result<()> {
        if let Some(seq) = server_has {
            self.ack(seq)?;
        }
        self.sent = self.acked;
        self.online = true;
        Ok(())
    }

    /// The link is gone: output goes on into memory, then the file.
    pub fn link_down(&mut self) {
        self.online = false;
    }

    /// The next DATA frame to send, if the window allows.
    pub fn next_frame(&mut self) -> Option<Vec<u8>> {
        if self.sent - self.acked >= self.limits.window {
            return None;
        }
        let rec = self
            .mem
            .iter()
            .find(|r| r.seq + r.payload.len() as u64 > self.sent)?;
        // A record is sent whole; `sent` is always at a record boundary.
        let header = FrameHeader {
            kind: FrameKind::Data,
            tag: rec.tag,
            channel: self.channel,
            seq: rec.seq,
        };
        self.sent = rec.seq + rec.payload.len() as u64;
        Some(protocol::encode_frame(header, &rec.payload))
    }

    /// Whether a frame could be sent now.
    pub fn wants_send(&self) -> bool {
        self.sent - self.acked < self.limits.window && self.sent < self.produced && {
            // Spilled records must come back to memory first.
            self.mem
                .back()
                .is_some_and(|r| r.seq + r.payload.len() as u64 > self.sent)
        }
    }
}

impl Drop for OutChannel {
    fn drop(&mut self) {
        if let Some(sp) = self.spill.take() {
            let _ = fs::remove_file(&sp.path);
        }
    }
}

fn log_still_full(e: &io::Error) {
    crate::debug!("jobs", "spool still cannot grow: {e}");
}

fn tag_from(b: u8) -> StreamTag {
    match b {
        1 => StreamTag::Stdout,
        2 => StreamTag::Stderr,
        3 => StreamTag::Pty,
        4 => StreamTag::System,
        _ => StreamTag::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn chan(dir: &std::path::Path, mem: usize, window: u64) -> OutChannel {
        OutChannel::new(
            7,
            Limits {
                mem,
                spool: 1 << 20,
                window,
            },
            dir.join("7.spool"),
        )
    }

    fn payloads(frames: &[Vec<u8>], from: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            let (h, p) = protocol::decode_frame(f).unwrap();
            assert_eq!(h.seq, from + out.len() as u64, "frames are contiguous");
            out.extend_from_slice(p);
        }
        out
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tether-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn spills_to_the_file_and_resends_from_the_ack_without_gap_or_duplicate() {
        let dir = tmp("resend");
        let mut c = chan(&dir, 100, 1 << 20);
        let mut want = Vec::new();
        for i in 0..50u8 {
            let p = vec![i; 30];
            want.extend_from_slice(&p);
            c.push(StreamTag::Stdout, p);
        }
        assert!(c.mem_bytes() <= 100, "memory stays under its cap");
        assert!(dir.join("7.spool").exists(), "the rest went to the file");
        // Send some; the link drops; the server had stored 60 bytes.
        for _ in 0..3 {
            c.next_frame().unwrap();
        }
        c.link_up(Some(60)).unwrap();
        let mut frames = Vec::new();
        loop {
            while let Some(f) = c.next_frame() {
                frames.push(f);
            }
            let Some(last) = frames.last() else { break };
            let (h, p) = protocol::decode_frame(last).unwrap();
            let end = h.seq + p.len() as u64;
            if end == c.produced() {
                break;
            }
            // The server stores what came and acknowledges it; the
            // spilled records come back into memory.
            c.ack(end).unwrap();
        }
        let (first, _) = protocol::decode_frame(&frames[0]).unwrap();
        assert_eq!(first.seq, 60, "resent from the ack");
        let mut all = want[..60].to_vec();
        all.extend(payloads(&frames, 60));
        assert_eq!(all, want, "no gap, no duplicate");
        c.ack(c.produced()).unwrap();
        assert!(c.is_drained());
        drop(c);
        assert!(
            !dir.join("7.spool").exists(),
            "the spool goes with the channel"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    /// Link up: the source waits for memory and nothing touches the disk;
    /// link down: the file takes the rest; back up: the source waits until
    /// the file has been sent, and nothing is lost or repeated.
    #[test]
    fn with_the_link_up_the_network_paces_the_source_and_the_disk_is_left_alone() {
        let dir = tmp("online");
        let rec = protocol::MAX_DATA_PAYLOAD;
        let mut c = chan(&dir, 4 * rec, 4 * rec as u64);
        c.link_up(None).unwrap();
        let mut want = Vec::new();
        let mut push = |c: &mut OutChannel, i: u8| {
            let p = vec![i; rec];
            want.extend_from_slice(&p);
            c.push(StreamTag::Stdout, p);
        };
        let mut i = 0u8;
        while c.has_room() {
            push(&mut c, i);
            i += 1;
            assert!(i < 10, "the source must stop");
        }
        assert_eq!(i, 4, "memory's worth, then the source waits");
        assert!(!dir.join("7.spool").exists(), "the disk was not used");
        let mut frames = Vec::new();
        while let Some(f) = c.next_frame() {
            frames.push(f);
        }
        c.ack(2 * rec as u64).unwrap();
        assert!(c.has_room(), "an acknowledgement makes room");

        // The link drops: output goes on, past memory into the file.
        c.link_down();
        while c.has_room() && i < 12 {
            push(&mut c, i);
            i += 1;
        }
        assert!(c.spilled() > 0, "the file took what memory could not");
        // Back up, the server had 2 records: the source waits until the
        // file is sent, then everything arrives once.
        c.link_up(Some(2 * rec as u64)).unwrap();
        assert!(!c.has_room(), "the file goes first");
        frames.clear();
        while !c.is_drained() {
            let before = frames.len();
            while let Some(f) = c.next_frame() {
                frames.push(f);
            }
            assert!(frames.len() > before, "progress");
            let (h, p) = protocol::decode_frame(frames.last().unwrap()).unwrap();
            c.ack(h.seq + p.len() as u64).unwrap();
        }
        assert_eq!(payloads(&frames, 2 * rec as u64), want[2 * rec..].to_vec());
        assert!(c.has_room());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_window_bounds_what_is_in_flight() {
        let dir = tmp("window");
        let mut c = chan(&dir, 1 << 20, 100);
        for _ in 0..10 {
            c.push(StreamTag::Stderr, vec![b'x'; 40]);
        }
        let mut n = 0;
        while c.next_frame().is_some() {
            n += 1;
        }
        assert_eq!(n, 3, "40 + 40 + 40 ≥ 100: the window is full");
        assert!(!c.wants_send());
        c.ack(80).unwrap();
        assert!(c.wants_send());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_full_disk_holds_the_record_stops_the_source_and_loses_nothing() {
        // /dev/full: every write fails with ENOSPC, like a full filesystem.
        // Through a symlink: the channel removes its spool file when dropped.
        let dir = tmp("devfull");
        fs::create_dir_all(&dir).unwrap();
        let link = dir.join("3.spool");
        std::os::unix::fs::symlink("/dev/full", &link).unwrap();
        let mut c = OutChannel::new(
            3,
            Limits {
                mem: 100,
                spool: 1 << 20,
                window: 1 << 20,
            },
            link,
        );
        let mut want = Vec::new();
        let mut i = 0u8;
        while c.has_room() {
            let p = vec![i; 30];
            want.extend_from_slice(&p);
            c.push(StreamTag::Stdout, p);
            i += 1;
            assert!(i < 10, "the source must stop");
        }
        assert_eq!(c.held(), 1, "only the record the disk refused is held");
        let e = c.take_spool_error().expect("the cause is reported");
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert!(c.take_spool_error().is_none(), "once");
        // The server stores and acknowledges what was sent; the held
        // record moves on and the source may be read again.
        let mut frames = Vec::new();
        while !c.is_drained() {
            let before = frames.len();
            while let Some(f) = c.next_frame() {
                frames.push(f);
            }
            assert!(frames.len() > before, "progress");
            let (h, p) = protocol::decode_frame(frames.last().unwrap()).unwrap();
            c.ack(h.seq + p.len() as u64).unwrap();
        }
        assert_eq!(payloads(&frames, 0), want, "no gap, no duplicate");
        assert!(c.has_room());
        drop(c);
        assert!(Path::new("/dev/full").exists(), "only the link went");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_full_spool_stops_the_source() {
        let dir = tmp("full");
        let mut c = OutChannel::new(
            1,
            Limits {
                mem: 64,
                spool: 128,
                window: 1 << 20,
            },
            dir.join("1.spool"),
        );
        let mut pushed = 0;
        while c.has_room() {
            c.push(StreamTag::Stdout, vec![0; 32]);
            pushed += 1;
            assert!(pushed < 100);
        }
        assert!(c.mem_bytes() <= 64);
        assert!(
            c.spilled() <= 128 + 45,
            "the spool stays at its cap (one record over at most)"
        );
        // Acknowledging drains memory, refills it from the spool, and makes room.
        c.ack(c.produced() / 2).unwrap();
        assert!(c.has_room());
        let _ = fs::remove_dir_all(&dir);
    }
}
