//! The Docker Engine HTTP/1.1 response codec (`src/net/http.rs`): what
//! the runner reads from the engine's socket (or from whatever answers on
//! a `--docker-socket` path).
//!
//! Input: `[opts] [bytes …]`; opts bits 0-1 pick the request kind
//! (normal, HEAD, hijack, CONNECT), bits 2-7 how the bytes are cut into reads.
//! Checked: the `Step` contract (never more than given; `None` only after
//! using everything; no endless items without input), the head buffer
//! bound, and that the events do not depend on how the bytes were cut:
//! one read or many give the same heads, body bytes, ends and error.
//! `BufferedDecoder` gets the same bytes and must honour its body limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether::net::http::{BufferedDecoder, Event, Expect, ResponseDecoder, MAX_HEAD};
use tether_fuzz::{opts, pieces};

#[derive(Debug, PartialEq)]
enum Seen {
    Head(String),
    Body(Vec<u8>),
    End,
    /// Upgraded, and the raw bytes that followed in the input.
    Upgraded(Vec<u8>),
    Error(String),
    Eof(String),
}

fn push_body(seen: &mut Vec<Seen>, b: &[u8]) {
    if let Some(Seen::Body(prev)) = seen.last_mut() {
        prev.extend_from_slice(b);
    } else {
        seen.push(Seen::Body(b.to_vec()));
    }
}

fn run(data: &[u8], expect: Expect, mode: u8) -> Vec<Seen> {
    let mut dec = ResponseDecoder::new(expect);
    let mut seen = Vec::new();
    let reads = pieces(data, mode);
    for (i, read) in reads.iter().enumerate() {
        let mut rest: &[u8] = read;
        let mut idle_items = 0;
        loop {
            let step = match dec.feed(rest) {
                Ok(s) => s,
                Err(e) => {
                    seen.push(Seen::Error(format!("{e:?}")));
                    return seen;
                }
            };
            assert!(step.consumed <= rest.len(), "consumed more than given");
            assert!(dec.buffered() <= MAX_HEAD, "head buffer over its bound");
            rest = &rest[step.consumed..];
            let Some(item) = step.item else {
                assert!(rest.is_empty(), "None before all input was used");
                break;
            };
            idle_items = if step.consumed == 0 {
                idle_items + 1
            } else {
                0
            };
            assert!(idle_items < 4, "items without input forever");
            match item {
                Event::Head(h) => seen.push(Seen::Head(format!("{h:?}"))),
                Event::Body(b) => {
                    assert!(!b.is_empty(), "empty body event");
                    push_body(&mut seen, b);
                }
                Event::End => seen.push(Seen::End),
                Event::Upgraded => {
                    let mut raw = rest.to_vec();
                    for r in &reads[i + 1..] {
                        raw.extend_from_slice(r);
                    }
                    seen.push(Seen::Upgraded(raw));
                    return seen;
                }
            }
        }
    }
    match dec.eof() {
        Ok(Some(Event::End)) => seen.push(Seen::End),
        Ok(Some(Event::Upgraded)) => seen.push(Seen::Upgraded(Vec::new())),
        Ok(Some(e)) => panic!("eof gave {e:?}"),
        Ok(None) => {}
        Err(e) => seen.push(Seen::Eof(format!("{e:?}"))),
    }
    seen
}

fn buffered(data: &[u8], expect: Expect, mode: u8, limit: usize) {
    let mut dec = BufferedDecoder::new(expect, limit);
    for read in pieces(data, mode) {
        match dec.feed(read) {
            Ok(n) => {
                assert!(n <= read.len());
                if n < read.len() {
                    assert!(dec.is_done(), "stopped early before the end");
                }
            }
            Err(_) => return,
        }
        if dec.is_done() {
            break;
        }
    }
    if !dec.is_done() && dec.eof().is_err() {
        return;
    }
    if let Some(r) = dec.take() {
        assert!(r.body.len() <= limit, "body over the limit");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((o, data)) = opts(data) else { return };
    let expect = match o & 3 {
        1 => Expect::NoBody,
        2 => Expect::Hijack,
        3 => Expect::Connect,
        _ => Expect::Normal,
    };
    let mode = o >> 2;
    let whole = run(data, expect, 0);
    if mode != 0 {
        let cut = run(data, expect, mode);
        assert_eq!(whole, cut, "events depend on how the input was cut");
    }
    buffered(data, expect, mode, 64 + usize::from(o));
});
