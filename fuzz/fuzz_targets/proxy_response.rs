//! What an HTTP proxy answers to the runner's CONNECT
//! (`src/net/proxy.rs`), and the proxy and server URLs the runner is
//! given (`src/url.rs`: `--server`, `HTTPS_PROXY`).
//!
//! Input: `[opts] [bytes …]`; opts bit 0 = parse the bytes as a URL
//! instead, bits 1-7 how the answer is cut. Checked: the outcome (tunnel
//! with the same leftover bytes, or the same error) does not depend on the
//! cuts, and no leftover byte is lost or invented.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether::net::proxy::{base64, connect_request, ConnectResponse, Progress};
use tether::url::Url;
use tether_fuzz::{opts, pieces};

fn run(data: &[u8], mode: u8) -> Result<Option<Vec<u8>>, String> {
    let mut c = ConnectResponse::new();
    let reads = pieces(data, mode);
    for (i, read) in reads.iter().enumerate() {
        match c.feed(read) {
            Ok(Progress::NeedMore) => {}
            Ok(Progress::Established { mut leftover }) => {
                for r in &reads[i + 1..] {
                    leftover.extend_from_slice(r);
                }
                assert!(leftover.len() <= data.len());
                assert!(
                    data.ends_with(&leftover),
                    "leftover is not the input's tail"
                );
                return Ok(Some(leftover));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(c.eof().to_string())
}

fuzz_target!(|data: &[u8]| {
    let Some((o, data)) = opts(data) else { return };
    if o & 1 == 1 {
        let text = String::from_utf8_lossy(data);
        if let Ok(u) = Url::parse(&text) {
            // What the runner then sends: CONNECT host:port, Basic auth.
            let authority = format!("{}:{}", u.host, u.port);
            let req = connect_request(&authority, Some(("user", "pass")));
            assert!(req.ends_with(b"\r\n\r\n"));
        }
        let _ = base64(data);
        return;
    }
    let mode = o >> 1;
    let whole = run(data, 0);
    if mode != 0 {
        assert_eq!(whole, run(data, mode), "depends on the cuts");
    }
});
