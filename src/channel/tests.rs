//! The channel's tests, once for its three users: the spooled job channel
//! (memory, spool file, full disk, resend from the server's offset), the
//! terminal's stream (bytes joined into frames, resend from its own ACK,
//! END after the data) and the log channel (nothing kept once sent, the
//! window and CREDIT bound the reading).

use super::*;
use std::fs;
use std::path::Path;

fn chan(dir: &std::path::Path, mem: usize, window: u64) -> OutChannel {
    OutChannel::spooled(
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
    let mut c = OutChannel::spooled(
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
    let mut c = OutChannel::spooled(
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

// ---- a terminal's stream: memory only, kept until acknowledged -------------

fn term(window: u64) -> OutChannel {
    let limits = Limits {
        mem: window as usize,
        spool: 0,
        window,
    };
    OutChannel::new(0x8000_0001, limits, Keep::UntilAcked)
}

fn frame(f: &[u8]) -> (FrameKind, u64, Vec<u8>) {
    let (h, p) = protocol::decode_frame(f).unwrap();
    (h.kind, h.seq, p.to_vec())
}

/// Bytes read one piece at a time go out in as few frames as fit; a
/// frame once sent is never changed (later bytes start a new one).
#[test]
fn appended_bytes_join_the_unsent_frame_and_never_a_sent_one() {
    let mut c = term(1 << 20);
    c.link_up(None).unwrap();
    for b in b"hello" {
        c.append(StreamTag::Pty, &[*b]);
    }
    let (kind, seq, p) = frame(&c.next_frame().unwrap());
    assert_eq!(
        (kind, seq, p.as_slice()),
        (FrameKind::Data, 0, &b"hello"[..])
    );
    c.append(StreamTag::Pty, b" world");
    let (_, seq, p) = frame(&c.next_frame().unwrap());
    assert_eq!((seq, p.as_slice()), (5, &b" world"[..]));
    assert!(c.next_frame().is_none());
    // A burst larger than a frame: cut at the frame limit, contiguous.
    let burst = vec![b'x'; 2 * MAX_DATA_PAYLOAD + 10];
    c.append(StreamTag::Pty, &burst);
    let mut frames = Vec::new();
    while let Some(f) = c.next_frame() {
        frames.push(f);
    }
    assert_eq!(frames.len(), 3);
    assert_eq!(payloads(&frames, 11), burst);
    assert_eq!(c.produced(), 11 + burst.len() as u64);
}

/// The terminal reads only what fits under its window of unacknowledged
/// bytes; an ACK makes room again, and a CREDIT does not grow memory.
#[test]
fn a_terminal_reads_only_up_to_its_window_of_unacknowledged_output() {
    let mut c = term(1000);
    c.link_up(None).unwrap();
    assert_eq!(c.room(), 1000);
    c.append(StreamTag::Pty, &[b'a'; 600]);
    assert_eq!(c.room(), 400);
    c.next_frame().unwrap();
    c.append(StreamTag::Pty, &[b'b'; 400]);
    assert_eq!(c.room(), 0, "the shell blocks on its writes");
    c.next_frame().unwrap();
    c.credit(100_000);
    assert_eq!(c.room(), 0, "memory stays at its cap");
    c.ack(600).unwrap();
    assert_eq!(c.room(), 600);
    assert_eq!(c.mem_bytes(), 400);
}

/// Echo of single keystrokes, each sent before the next comes, while the
/// server does not acknowledge: records are counted at their bookkeeping
/// cost, so their number stays bounded, not only their bytes.
#[test]
fn tiny_records_count_at_their_cost_in_memory() {
    let mut c = term(64 * 1024);
    c.link_up(None).unwrap();
    let mut n = 0;
    while c.room() > 0 {
        c.append(StreamTag::Pty, b"x");
        c.next_frame().unwrap();
        n += 1;
        assert!(n <= 64 * 1024, "the source must stop");
    }
    assert_eq!(n, 1024, "64 KiB at 64 bytes a record");
    assert_eq!(c.mem_bytes(), 1024);
    c.ack(512).unwrap();
    assert_eq!(c.room(), 512 * 64);
}

/// Link loss: output goes on into memory; the next link resends from our
/// own ACK (the server drops what it already has), then END follows the
/// last byte, at its offset.
#[test]
fn a_reconnect_resends_from_the_ack_and_end_follows_the_data() {
    let mut c = term(1 << 20);
    c.link_up(None).unwrap();
    c.append(StreamTag::Pty, b"one ");
    c.next_frame().unwrap();
    c.append(StreamTag::Pty, b"two ");
    c.next_frame().unwrap();
    c.on_frame(FrameKind::Ack, 4).unwrap();
    c.link_down();
    c.append(StreamTag::Pty, b"three");
    assert!(c.end_frame("exited 0").is_none(), "bytes are waiting");
    c.link_up(None).unwrap();
    let mut frames = Vec::new();
    while let Some(f) = c.next_frame() {
        frames.push(f);
    }
    assert_eq!(payloads(&frames, 4), b"two three".to_vec());
    let (kind, seq, p) = frame(&c.end_frame("exited 0").unwrap());
    assert_eq!(
        (kind, seq, p.as_slice()),
        (FrameKind::End, 13, &b"exited 0"[..])
    );
    assert!(!c.is_drained());
    c.ack(13).unwrap();
    assert!(c.is_drained());
    assert_eq!(c.mem_bytes(), 0);
}

// ---- a log channel: nothing kept once sent -----------------------------

fn log(window: u64) -> OutChannel {
    let limits = Limits {
        mem: 4 << 20,
        spool: 0,
        window,
    };
    OutChannel::new(0x4000_0001, limits, Keep::UntilSent)
}

/// The stream is read while its unacknowledged bytes are under the window;
/// what is sent leaves memory at once; only what waits for the link counts
/// as pending.
#[test]
fn a_log_channel_frees_what_it_sent_and_reads_within_its_window() {
    let mut c = log(100);
    for _ in 0..3 {
        c.push(StreamTag::Stdout, vec![b'l'; 30]);
    }
    assert_eq!((c.room(), c.pending()), (10, 90));
    assert!(!c.has_room(), "no whole record fits");
    c.next_frame().unwrap();
    assert_eq!((c.mem_bytes(), c.pending()), (60, 60), "sent: gone");
    assert_eq!(c.room(), 10, "still unacknowledged");
    c.push(StreamTag::Stderr, vec![b'e'; 10]);
    assert_eq!(c.room(), 0);
    c.on_frame(FrameKind::Ack, 30).unwrap();
    assert_eq!(c.room(), 30);
    let mut frames = Vec::new();
    while let Some(f) = c.next_frame() {
        frames.push(f);
    }
    assert_eq!(frames.len(), 3);
    assert_eq!(frame(&frames[2]).1, 90);
    assert_eq!((c.mem_bytes(), c.pending()), (0, 0));
    let (kind, seq, _) = frame(&c.end_frame("end of log").unwrap());
    assert_eq!((kind, seq), (FrameKind::End, 100));
}

/// CREDIT is an absolute offset: it widens the window (never narrows it)
/// and a repeat changes nothing.
#[test]
fn credit_widens_the_window_and_is_idempotent() {
    let mut c = log(100);
    c.push(StreamTag::Stdout, vec![0; 100]);
    assert_eq!(c.room(), 0);
    c.on_frame(FrameKind::Credit, 250).unwrap();
    assert_eq!(c.room(), 150);
    c.on_frame(FrameKind::Credit, 250).unwrap();
    c.on_frame(FrameKind::Credit, 50).unwrap();
    assert_eq!(c.room(), 150, "idempotent, never narrower");
    // Sending too: 100 in flight, the old window, does not stop it.
    c.push(StreamTag::Stdout, vec![1; 100]);
    assert!(c.next_frame().is_some() && c.next_frame().is_some());
    c.on_frame(FrameKind::End, 999).unwrap();
    assert_eq!(c.acked(), 0, "other kinds are not acknowledgements");
}
