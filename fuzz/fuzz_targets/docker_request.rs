//! The request side of the Docker Engine HTTP codec (`src/net/http.rs`
//! `Request`, `src/engine/api.rs` `Api`): container ids and names, exec
//! ids, signals, image names and archive paths come from the server's
//! messages and from deploy specs, and are encoded into request lines here.
//!
//! Input: `[which] [id \0 value]`. Checked for every builder: the head is
//! one request line and `Name: value` lines, nothing else (no CR, LF or NUL
//! smuggled in); the target has no space or control byte; the id stays one
//! path segment (the path has as many segments as with a plain id); the
//! query is `key=value` pairs; the engine's version strings parse or not
//! without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether::engine::api::{Api, ApiVersion, ExecConfig, Filters, LogsOptions};
use tether::net::http::Request;
use tether_fuzz::opts;

fn check(req: &Request, segments: usize) {
    let bytes = req.encode();
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    let head = std::str::from_utf8(&bytes[..end]).expect("an ASCII head");
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap();
    let parts: Vec<&str> = line.split(' ').collect();
    assert_eq!(parts.len(), 3, "request line {line:?}");
    assert_eq!(parts[2], "HTTP/1.1");
    let target = parts[1];
    assert!(
        target.bytes().all(|b| b.is_ascii_graphic() && b != b'#'),
        "{target:?}"
    );
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    assert_eq!(
        path.split('/').count(),
        segments,
        "the id left its segment: {path:?}"
    );
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        assert_eq!(pair.matches('=').count(), 1, "query pair {pair:?}");
    }
    for l in lines {
        let (name, value) = l
            .split_once(": ")
            .unwrap_or_else(|| panic!("header line {l:?}"));
        assert!(!name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()));
        assert!(
            !value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0),
            "{value:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((o, bytes)) = opts(data) else { return };
    let text = String::from_utf8_lossy(bytes);
    let (id, value) = text.split_once('\0').unwrap_or((&text, ""));
    if let Some(v) = ApiVersion::parse(id) {
        let _ = v.to_string();
    }
    let api = Api::new(ApiVersion::new(1, 41));
    // "/v1.41/containers/ID/json" is 5 segments; "/v1.41/containers/ID" 4.
    match o % 12 {
        0 => check(&api.inspect_container(id), 5),
        1 => check(&api.start(id), 5),
        2 => check(&api.stop(id, Some(u32::from(o))), 5),
        3 => check(&api.kill(id, Some(value)), 5),
        4 => check(&api.remove(id, o & 16 != 0, o & 32 != 0), 4),
        5 => {
            let opts = LogsOptions {
                follow: true,
                stdout: true,
                stderr: o & 16 != 0,
                timestamps: true,
                tail: Some(u64::from(o)),
                since: None,
                until: None,
            };
            check(&api.logs(id, &opts), 5)
        }
        6 => {
            let cfg = ExecConfig {
                attach_stdin: true,
                attach_stdout: true,
                attach_stderr: true,
                tty: true,
                cmd: vec![value.to_owned()],
                env: vec![],
                working_dir: None,
                user: Some(value.to_owned()),
                console_size: None,
            };
            check(&api.exec_create(id, &cfg), 5);
            check(&api.exec_start(id, true), 5);
            check(&api.exec_resize(id, 24, 80), 5);
            check(&api.exec_inspect(id), 5);
        }
        7 => check(&api.rename(id, value), 5),
        8 => check(&api.put_archive(id, value, vec![0; 1024]), 5),
        9 => check(&api.pull(id, value), 4),
        10 => check(&api.create_container(Some(id), b"{}".to_vec()), 4),
        _ => {
            let f = Filters::new().add(id, value).add("label", id);
            let json = f.to_json();
            let _: serde_json::Value = serde_json::from_str(&json).expect("filters are JSON");
            check(&api.list_containers(true, &f), 4);
            check(&api.prune_containers(&f), 4);
            check(&api.events(&f, Some(1), None), 3);
        }
    }
});
