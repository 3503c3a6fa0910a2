//! The blocking client's answers (`src/http.rs` on `src/net/http.rs`):
//! enrollment and release downloads over HTTPS, i.e. whatever the server,
//! or anything in between, answers. The decoder is the one the Docker
//! target fuzzes; this target fuzzes it as the client sets it up (a 16 KiB
//! head bound, a body limit, HEAD requests) and the error body it reads.
//!
//! Input: `[opts] [bytes …]`; opts bit 0 = the request was HEAD, bits 1-7
//! how the bytes are cut (and the body limit). Checked: `feed` never says
//! it used more than given and stops short only once done; the body limit
//! holds; the outcome (response or error) does not depend on the cuts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether::http::{answer_decoder, error_body};
use tether::net::http::parse_head;
use tether_fuzz::{opts, pieces};

fn run(data: &[u8], head_request: bool, max_body: usize, mode: u8) -> String {
    let mut p = answer_decoder(head_request, max_body);
    let mut rest_after = 0;
    for read in pieces(data, mode) {
        if p.is_done() {
            rest_after += read.len();
            continue;
        }
        match p.feed(read) {
            Ok(n) => {
                assert!(n <= read.len());
                if n < read.len() {
                    assert!(p.is_done(), "stopped short before the end");
                    rest_after += read.len() - n;
                }
            }
            Err(e) => return format!("error {e:?}"),
        }
    }
    if !p.is_done() {
        if let Err(e) = p.eof() {
            return format!("eof {e:?}");
        }
    }
    let r = p.take().expect("done means a response");
    assert!(r.body.len() <= max_body, "body over the limit");
    let _ = error_body(&r);
    format!("{:?} {:?} rest {rest_after}", r.head, r.body)
}

fuzz_target!(|data: &[u8]| {
    let Some((o, data)) = opts(data) else { return };
    let head_request = o & 1 == 1;
    let mode = o >> 1;
    let max_body = 16 + usize::from(o) * 8;
    let whole = run(data, head_request, max_body, 0);
    if mode != 0 {
        assert_eq!(
            whole,
            run(data, head_request, max_body, mode),
            "depends on the cuts"
        );
    }
    if let Some(end) = tether::net::http::find_head_end(data, 0) {
        let _ = parse_head(&data[..end]);
    }
});
