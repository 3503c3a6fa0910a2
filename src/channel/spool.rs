//! A channel's bounded spool file: the records after those in memory, in
//! order, and the records the file could not take (disk full), held in
//! memory after them. Opened on the first record, truncated each time it is
//! read to its end, removed with the channel.
//!
//! Format (private: the file never outlives the process): per record
//! `tag u8, seq u64, len u32, payload`, big-endian.

use super::Record;
use crate::protocol::StreamTag;
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

const HEAD: usize = 13;

pub(super) struct Spool {
    path: PathBuf,
    /// Bytes the file may hold (one record over it at most).
    pub cap: u64,
    file: Option<SpillFile>,
    /// Records the file could not take (disk full), in order after
    /// everything in memory and in the file.
    pub held: VecDeque<Record>,
    /// Why the file could not grow, not yet reported to the owner.
    pub error: Option<io::Error>,
}

struct SpillFile {
    file: File,
    /// Where the next record is written and the next unread one starts.
    write_pos: u64,
    read_pos: u64,
}

impl Spool {
    pub fn new(path: PathBuf, cap: u64) -> Spool {
        Spool {
            path,
            cap,
            file: None,
            held: VecDeque::new(),
            error: None,
        }
    }

    /// Bytes in the file not read back yet.
    pub fn len(&self) -> u64 {
        self.file.as_ref().map_or(0, |f| f.write_pos - f.read_pos)
    }

    /// Append a record; on failure the file is cut back to its last whole
    /// record (it stays readable).
    pub fn write(&mut self, rec: &Record) -> io::Result<()> {
        let sp = match &mut self.file {
            Some(sp) => sp,
            None => {
                if let Some(dir) = self.path.parent() {
                    fs::create_dir_all(dir)?;
                }
                let file = OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .read(true)
                    .write(true)
                    .open(&self.path)?;
                self.file.insert(SpillFile {
                    file,
                    write_pos: 0,
                    read_pos: 0,
                })
            }
        };
        let mut head = [0u8; HEAD];
        head[0] = rec.tag as u8;
        head[1..9].copy_from_slice(&rec.seq.to_be_bytes());
        head[9..13].copy_from_slice(&(rec.payload.len() as u32).to_be_bytes());
        sp.file.seek(SeekFrom::Start(sp.write_pos))?;
        let written = sp
            .file
            .write_all(&head)
            .and_then(|()| sp.file.write_all(&rec.payload));
        if let Err(e) = written {
            let _ = sp.file.set_len(sp.write_pos);
            return Err(e);
        }
        sp.write_pos += (HEAD + rec.payload.len()) as u64;
        Ok(())
    }

    /// The next record, if its payload fits in `room` bytes. Read to its
    /// end, the file starts over (frees the disk).
    pub fn read(&mut self, room: usize) -> io::Result<Option<Record>> {
        let Some(sp) = self.file.as_mut() else {
            return Ok(None);
        };
        if sp.read_pos >= sp.write_pos {
            if sp.write_pos > 0 {
                sp.file.set_len(0)?;
            }
            sp.read_pos = 0;
            sp.write_pos = 0;
            return Ok(None);
        }
        sp.file.seek(SeekFrom::Start(sp.read_pos))?;
        let mut head = [0u8; HEAD];
        sp.file.read_exact(&mut head)?;
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&head[1..9]);
        let len = u32::from_be_bytes([head[9], head[10], head[11], head[12]]) as usize;
        if len > room {
            return Ok(None);
        }
        let mut payload = vec![0u8; len];
        sp.file.read_exact(&mut payload)?;
        sp.read_pos += (HEAD + len) as u64;
        Ok(Some(Record {
            seq: u64::from_be_bytes(seq),
            tag: tag_from(head[0]),
            payload,
        }))
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
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
