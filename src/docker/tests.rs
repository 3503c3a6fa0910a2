//! Fixture tests: recorded engine answers (see `fixtures/README.md`) fed
//! whole, split at every point, byte by byte and, for small ones, split at
//! every pair of points; each way must give the same events. Then the
//! meaning of each answer is checked, our request builders are compared
//! with the bytes the engine accepted, and corrupted fixtures must never
//! make anything panic.

use crate::engine::api::{
    self, Api, ApiError, ApiVersion, BuildOptions, ExecConfig, Filters, LogsOptions,
};
use crate::engine::stream::{self, LineSplitter, StreamDecoder, StreamError, StreamKind};
use crate::net::http::{
    self, BufferedDecoder, Event, Expect, Head, HttpError, Response, ResponseDecoder,
};

/// How the bytes after the head are read further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Content {
    Plain,
    /// Multiplexed frames (`Tty: false`).
    Mux,
    /// Raw TTY bytes.
    Tty,
    /// JSON lines.
    Lines,
}

struct Fixture {
    name: &'static str,
    bytes: &'static [u8],
    expect: Expect,
    content: Content,
}

macro_rules! fixture {
    ($name:literal, $expect:ident, $content:ident) => {
        Fixture {
            name: $name,
            bytes: include_bytes!(concat!("fixtures/", $name, ".http")),
            expect: Expect::$expect,
            content: Content::$content,
        }
    };
}

fn fixtures() -> Vec<Fixture> {
    vec![
        // Recorded from Engine 20.10.24 (API 1.41).
        fixture!("ping", Normal, Plain),
        fixture!("ping_head", NoBody, Plain),
        fixture!("version", Normal, Plain),
        fixture!("version_too_new_400", Normal, Plain),
        fixture!("keepalive_two", Normal, Plain),
        fixture!("create_201", Normal, Plain),
        fixture!("start_204", Normal, Plain),
        fixture!("start_304", Normal, Plain),
        fixture!("inspect", Normal, Plain),
        fixture!("not_found_404", Normal, Plain),
        fixture!("logs_follow_mux", Normal, Mux),
        fixture!("logs_follow_tty", Normal, Tty),
        fixture!("logs_tail_mux", Normal, Mux),
        fixture!("list_all", Normal, Plain),
        fixture!("kill_409", Normal, Plain),
        fixture!("delete_409", Normal, Plain),
        fixture!("stats_oneshot", Normal, Plain),
        fixture!("exec_create_201", Normal, Plain),
        fixture!("exec_start_101", Hijack, Mux),
        fixture!("exec_inspect", Normal, Plain),
        fixture!("exec_start_200_raw", Hijack, Tty),
        fixture!("exec_resize", Normal, Plain),
        fixture!("restart_204", Normal, Plain),
        fixture!("stop_204", Normal, Plain),
        fixture!("stop_304", Normal, Plain),
        fixture!("exec_create_409", Normal, Plain),
        fixture!("delete_204", Normal, Plain),
        fixture!("build_error", Normal, Lines),
        fixture!("pull_error", Normal, Plain),
        fixture!("prune_containers", Normal, Plain),
        fixture!("prune_images", Normal, Plain),
        fixture!("events", Normal, Lines),
        // Handwritten: newer engines, other servers, broken answers.
        fixture!("ping_engine27", Normal, Plain),
        fixture!("version_engine29", Normal, Plain),
        fixture!("version_too_old_400", Normal, Plain),
        fixture!("exec_start_101_engine27", Hijack, Mux),
        fixture!("events_engine29", Normal, Lines),
        fixture!("pull_progress", Normal, Lines),
        fixture!("logs_follow_truncated", Normal, Mux),
        fixture!("not_docker_ssh", Normal, Plain),
        fixture!("not_docker_nginx", Normal, Plain),
        fixture!("chunked_trailers", Normal, Plain),
        fixture!("until_close", Normal, Plain),
        fixture!("continue_100", Normal, Plain),
        fixture!("bad_chunk_size", Normal, Plain),
        fixture!("chunk_size_overflow", Normal, Plain),
        fixture!("bad_status_line", Normal, Plain),
        fixture!("bad_header", Normal, Plain),
    ]
}

fn fixture(name: &str) -> Fixture {
    fixtures()
        .into_iter()
        .find(|f| f.name == name)
        .expect("known fixture")
}

/// Events with adjacent body pieces merged, so that any split of the input
/// gives the same list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Head(Head),
    Body(Vec<u8>),
    End,
    /// The raw stream after an upgrade.
    Upgraded(Vec<u8>),
    /// `eof()` said: `true` when it ended a read-until-close body.
    Eof(bool),
    Err(HttpError),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Outcome {
    events: Vec<Ev>,
    /// Body or raw stream through a `StreamDecoder`, same-stream pieces merged.
    output: Vec<(StreamKind, Vec<u8>)>,
    lines: Vec<(Vec<u8>, bool)>,
    stream_error: Option<StreamError>,
}

enum Post {
    Plain,
    Stream(StreamDecoder),
    Lines(LineSplitter),
}

const MAX_LINE: usize = 64 * 1024;

struct Driver {
    dec: ResponseDecoder,
    post: Post,
    out: Outcome,
    upgraded: bool,
    failed: bool,
    fed: usize,
    body_bytes: usize,
}

impl Driver {
    fn new(expect: Expect, content: Content) -> Driver {
        let post = match content {
            Content::Plain => Post::Plain,
            Content::Mux => Post::Stream(StreamDecoder::for_tty(false)),
            Content::Tty => Post::Stream(StreamDecoder::for_tty(true)),
            Content::Lines => Post::Lines(LineSplitter::new(MAX_LINE)),
        };
        Driver {
            dec: ResponseDecoder::new(expect),
            post,
            out: Outcome::default(),
            upgraded: false,
            failed: false,
            fed: 0,
            body_bytes: 0,
        }
    }

    fn push(&mut self, piece: &[u8]) {
        self.fed += piece.len();
        if self.failed {
            return;
        }
        if self.upgraded {
            self.raw(piece);
            return;
        }
        let mut rest = piece;
        loop {
            let step = match self.dec.feed(rest) {
                Ok(step) => step,
                Err(e) => {
                    self.out.events.push(Ev::Err(e));
                    self.failed = true;
                    return;
                }
            };
            assert!(step.consumed <= rest.len());
            assert!(self.dec.buffered() <= http::MAX_HEAD);
            rest = &rest[step.consumed..];
            match step.item {
                None => {
                    assert!(rest.is_empty(), "None must mean all input was used");
                    return;
                }
                Some(Event::Head(h)) => self.out.events.push(Ev::Head(h)),
                Some(Event::Body(b)) => {
                    assert!(!b.is_empty(), "no empty body events");
                    self.body_bytes += b.len();
                    assert!(self.body_bytes <= self.fed, "body larger than the input");
                    match self.out.events.last_mut() {
                        Some(Ev::Body(acc)) => acc.extend_from_slice(b),
                        _ => self.out.events.push(Ev::Body(b.to_vec())),
                    }
                    self.post(b);
                }
                Some(Event::End) => self.out.events.push(Ev::End),
                Some(Event::Upgraded) => {
                    self.upgraded = true;
                    self.out.events.push(Ev::Upgraded(Vec::new()));
                    self.raw(rest);
                    assert_eq!(self.dec.feed(b"x"), Err(HttpError::AfterUpgrade));
                    return;
                }
            }
        }
    }

    fn raw(&mut self, bytes: &[u8]) {
        if let Some(Ev::Upgraded(acc)) = self.out.events.last_mut() {
            acc.extend_from_slice(bytes);
        }
        self.post(bytes);
    }

    fn post(&mut self, bytes: &[u8]) {
        match &mut self.post {
            Post::Plain => {}
            Post::Stream(dec) => {
                if self.out.stream_error.is_some() {
                    return;
                }
                let mut rest = bytes;
                loop {
                    let step = match dec.feed(rest) {
                        Ok(step) => step,
                        Err(e) => {
                            self.out.stream_error = Some(e);
                            return;
                        }
                    };
                    rest = &rest[step.consumed..];
                    let Some(piece) = step.item else { return };
                    match self.out.output.last_mut() {
                        Some((kind, acc)) if *kind == piece.kind => {
                            acc.extend_from_slice(piece.data)
                        }
                        _ => self.out.output.push((piece.kind, piece.data.to_vec())),
                    }
                }
            }
            Post::Lines(splitter) => {
                let mut rest = bytes;
                loop {
                    let step = splitter.feed(rest);
                    let Some(line) = step.item else { break };
                    self.out.lines.push((line.bytes.to_vec(), line.truncated));
                    rest = &rest[step.consumed..];
                }
                assert!(splitter.buffered() <= MAX_LINE + 1);
            }
        }
    }

    fn finish(mut self) -> Outcome {
        if !self.failed && !self.upgraded {
            match self.dec.eof() {
                Ok(Some(Event::End)) => self.out.events.push(Ev::Eof(true)),
                Ok(None) => self.out.events.push(Ev::Eof(false)),
                Ok(Some(other)) => panic!("eof gave {other:?}"),
                Err(e) => self.out.events.push(Ev::Err(e)),
            }
        }
        match &mut self.post {
            Post::Plain => {}
            Post::Stream(dec) => {
                if self.out.stream_error.is_none() {
                    self.out.stream_error = dec.finish().err();
                }
            }
            Post::Lines(splitter) => {
                if let Some(line) = splitter.finish() {
                    self.out.lines.push((line.bytes.to_vec(), line.truncated));
                }
            }
        }
        self.out
    }
}

fn run(f: &Fixture, pieces: &[&[u8]]) -> Outcome {
    let mut d = Driver::new(f.expect, f.content);
    for p in pieces {
        d.push(p);
    }
    d.finish()
}

fn whole(name: &str) -> Outcome {
    let f = fixture(name);
    run(&f, &[f.bytes])
}

// ---------------------------------------------------------------------------
// Every split point

#[test]
fn every_split_point_gives_the_same_events() {
    for f in fixtures() {
        let want = run(&f, &[f.bytes]);
        assert!(!want.events.is_empty(), "{}", f.name);
        for i in 0..=f.bytes.len() {
            let got = run(&f, &[&f.bytes[..i], &f.bytes[i..]]);
            assert_eq!(got, want, "{} split at {i}", f.name);
        }
        let bytes: Vec<&[u8]> = f.bytes.chunks(1).collect();
        assert_eq!(run(&f, &bytes), want, "{} byte by byte", f.name);
    }
}

#[test]
fn every_pair_of_split_points_in_small_fixtures() {
    for f in fixtures().into_iter().filter(|f| f.bytes.len() <= 260) {
        let want = run(&f, &[f.bytes]);
        let n = f.bytes.len();
        for i in 0..=n {
            for j in i..=n {
                let got = run(&f, &[&f.bytes[..i], &f.bytes[i..j], &f.bytes[j..]]);
                assert_eq!(got, want, "{} split at {i} and {j}", f.name);
            }
        }
    }
}

#[test]
fn buffered_decoder_agrees_at_every_split_point() {
    for f in fixtures() {
        let collect = |pieces: &[&[u8]]| -> Result<Response, HttpError> {
            let mut dec = BufferedDecoder::new(f.expect, 1 << 20);
            for p in pieces {
                let used = dec.feed(p)?;
                if dec.is_done() {
                    return Ok(dec.take().expect("done"));
                }
                assert_eq!(used, p.len());
            }
            dec.eof()?;
            Ok(dec.take().expect("done after eof"))
        };
        let want = collect(&[f.bytes]);
        for i in 0..=f.bytes.len() {
            assert_eq!(
                collect(&[&f.bytes[..i], &f.bytes[i..]]),
                want,
                "{} at {i}",
                f.name
            );
        }
    }
}

// ---------------------------------------------------------------------------
// What each answer means

fn head_and_body(out: &Outcome) -> (Head, Vec<u8>) {
    let mut head = None;
    let mut body = Vec::new();
    for ev in &out.events {
        match ev {
            Ev::Head(h) if head.is_none() => head = Some(h.clone()),
            Ev::Body(b) => body.extend_from_slice(b),
            _ => {}
        }
    }
    (head.expect("a head"), body)
}

fn response(name: &str) -> Response {
    let (head, body) = head_and_body(&whole(name));
    Response {
        head,
        body,
        upgraded: false,
    }
}

fn engine_error(name: &str) -> ApiError {
    api::check(response(name)).expect_err("an error answer")
}

fn v(s: &str) -> ApiVersion {
    ApiVersion::parse(s).expect("version")
}

#[test]
fn ping_and_negotiation() {
    let out = whole("ping");
    let (head, body) = head_and_body(&out);
    assert_eq!(body, b"OK");
    assert_eq!(out.events.last(), Some(&Ev::Eof(false)));
    let engine = api::engine_version_from_ping(&head).unwrap();
    assert_eq!(api::negotiate(engine, None), Ok(v("1.41")));

    let out = whole("ping_head");
    assert!(matches!(&out.events[..], [Ev::Head(h), Ev::End, Ev::Eof(false)] if h.status == 200));

    let (head, _) = head_and_body(&whole("ping_engine27"));
    assert_eq!(head.header("docker-experimental"), Some("false"));
    let engine = api::engine_version_from_ping(&head).unwrap();
    assert_eq!(api::negotiate(engine, None), Ok(v("1.47")));

    let info: api::VersionInfo = api::parse_json(response("version")).unwrap();
    assert_eq!(info.version, "20.10.24+dfsg1");
    assert_eq!(info.min_api_version.as_deref(), Some("1.12"));
    assert_eq!(api::negotiate_from_version(&info), Ok(v("1.41")));

    let info: api::VersionInfo = api::parse_json(response("version_engine29")).unwrap();
    assert_eq!(api::negotiate_from_version(&info), Ok(v("1.52")));
    let api = Api::new(api::negotiate_from_version(&info).unwrap());
    assert!(api.start("web").target().starts_with("/v1.52/"));

    for name in ["version_too_new_400", "version_too_old_400"] {
        let e = engine_error(name);
        assert!(e.is_version_refused(), "{name}: {e}");
    }
    assert_eq!(
        engine_error("version_too_new_400"),
        ApiError::Engine {
            status: 400,
            message: "client version 1.99 is too new. Maximum supported API version is 1.41".into()
        }
    );
}

#[test]
fn not_docker() {
    let out = whole("not_docker_ssh");
    assert_eq!(out.events, [Ev::Err(HttpError::NotHttp)]);
    let (head, _) = head_and_body(&whole("not_docker_nginx"));
    assert!(matches!(
        api::engine_version_from_ping(&head),
        Err(ApiError::NotDocker(_))
    ));
    assert_eq!(
        whole("bad_status_line").events,
        [Ev::Err(HttpError::BadStatusLine)]
    );
    assert_eq!(whole("bad_header").events, [Ev::Err(HttpError::BadHeader)]);
}

#[test]
fn engine_messages_are_kept_unchanged() {
    assert_eq!(
        engine_error("not_found_404"),
        ApiError::Engine {
            status: 404,
            message: "No such container: x".into()
        }
    );
    let e = engine_error("kill_409");
    assert!(e.is_conflict());
    assert!(
        e.to_string()
            .contains("Cannot kill container: tt-logs: Container "),
        "{e}"
    );
    assert!(engine_error("delete_409")
        .to_string()
        .contains("You cannot remove a running container"));
    assert!(engine_error("exec_create_409")
        .to_string()
        .ends_with("is not running"));
    let e = engine_error("pull_error");
    assert_eq!(e.status(), Some(500));
    assert!(e.to_string().contains("registry-1.docker.io"), "{e}");
}

#[test]
fn container_lifecycle_answers() {
    for name in ["start_204", "stop_204", "restart_204", "delete_204"] {
        let out = whole(name);
        assert!(
            matches!(&out.events[..], [Ev::Head(h), Ev::End, Ev::Eof(false)] if h.status == 204),
            "{name}: {:?}",
            out.events
        );
    }
    for name in ["start_304", "stop_304"] {
        let resp = api::check(response(name)).unwrap();
        assert_eq!((resp.head.status, resp.body.len()), (304, 0), "{name}");
    }
    let created: api::CreatedContainer = api::parse_json(response("create_201")).unwrap();
    assert_eq!(created.id.len(), 64);
    assert!(created.warnings.is_empty());

    let inspect: api::ContainerInspect = api::parse_json(response("inspect")).unwrap();
    assert_eq!(inspect.name, "/tt-web");
    assert!(inspect.state.running);
    assert!(!inspect.config.tty);
    assert_eq!(
        inspect.config.labels.get("tether.app").map(String::as_str),
        Some("web")
    );

    let list: Vec<api::ContainerSummary> = api::parse_json(response("list_all")).unwrap();
    assert_eq!(list.len(), 2);
    let web = list.iter().find(|c| c.names == ["/tt-web"]).unwrap();
    assert_eq!(web.state, "running");
    assert!(web.status.starts_with("Up "));
    assert_eq!(web.ports[0].public_port, Some(18080));
    assert_eq!(web.ports[0].ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        web.labels.get("tether.managed").map(String::as_str),
        Some("true")
    );
    let logs = list.iter().find(|c| c.names == ["/tt-logs"]).unwrap();
    assert_eq!(logs.state, "exited");
    assert!(logs.ports.is_empty());
    assert!(logs.created > 1_700_000_000);

    let pruned: api::PrunedContainers = api::parse_json(response("prune_containers")).unwrap();
    assert_eq!(pruned.deleted.len(), 2);
    // `"ImagesDeleted": null` reads as empty.
    let pruned: api::PrunedImages = api::parse_json(response("prune_images")).unwrap();
    assert!(pruned.deleted.is_empty());

    let stats: api::Stats = api::parse_json(response("stats_oneshot")).unwrap();
    assert!(stats.memory_stats.usage.is_some());
    assert!(stats.cpu_stats.online_cpus.is_some());
    assert!(stats.cpu_percent().is_some());
}

/// Demultiplexed output split into lines per stream, each parsed for its timestamp.
fn log_lines(out: &Outcome, timestamps: bool) -> Vec<(StreamKind, String)> {
    let mut all = Vec::new();
    for (kind, bytes) in &out.output {
        let mut splitter = LineSplitter::new(1024);
        let mut rest = &bytes[..];
        loop {
            let step = splitter.feed(rest);
            let Some(line) = step.item else { break };
            let text = if timestamps {
                let (ts, msg) = stream::split_log_timestamp(line.bytes).unwrap();
                assert!(ts.secs > 1_700_000_000);
                msg
            } else {
                line.bytes
            };
            all.push((*kind, String::from_utf8_lossy(text).into_owned()));
            rest = &rest[step.consumed..];
        }
    }
    all.sort_by(|a, b| a.1.cmp(&b.1));
    all
}

#[test]
fn logs_streams() {
    use StreamKind::{Stderr, Stdout};
    let out = whole("logs_follow_mux");
    assert_eq!(out.stream_error, None);
    assert_eq!(out.events.last(), Some(&Ev::Eof(false)));
    let want: Vec<(StreamKind, String)> = [
        (Stderr, "err 1"),
        (Stderr, "err 2"),
        (Stderr, "err 3"),
        (Stdout, "out 1"),
        (Stdout, "out 2"),
        (Stdout, "out 3"),
    ]
    .iter()
    .map(|(k, s)| (*k, s.to_string()))
    .collect();
    assert_eq!(log_lines(&out, true), want);

    let out = whole("logs_tail_mux");
    assert_eq!(
        log_lines(&out, false),
        [(Stderr, "err 3".into()), (Stdout, "out 3".into())]
    );

    // A TTY merges the streams and ends lines with CRLF.
    let out = whole("logs_follow_tty");
    assert_eq!(out.output.len(), 1);
    assert_eq!(
        log_lines(&out, true),
        [
            (Stdout, "tty 1".into()),
            (Stdout, "tty 2".into()),
            (Stdout, "tty 3".into())
        ]
    );

    // The same TTY bytes read as multiplexed fail clearly.
    let f = fixture("logs_follow_tty");
    let misread = run(
        &Fixture {
            content: Content::Mux,
            ..f
        },
        &[f.bytes],
    );
    assert!(matches!(
        misread.stream_error,
        Some(StreamError::BadFrameHeader(_))
    ));

    // The daemon died mid-stream: the lines before it, then "truncated".
    let out = whole("logs_follow_truncated");
    assert_eq!(out.events.last(), Some(&Ev::Err(HttpError::Truncated)));
    assert_eq!(HttpError::Truncated.to_string(), "truncated response");
    assert_eq!(out.stream_error, Some(StreamError::Truncated));
    let lines = log_lines(&out, true);
    assert!(lines.contains(&(Stdout, "out 1".into())) && lines.contains(&(Stderr, "err 1".into())));
}

#[test]
fn hijacked_exec() {
    use StreamKind::{Stderr, Stdout};
    let out = whole("exec_start_101");
    let [Ev::Head(head), Ev::Upgraded(_)] = &out.events[..] else {
        panic!("{:?}", out.events)
    };
    assert_eq!((head.status, head.reason.as_str()), (101, "UPGRADED"));
    assert_eq!(head.header("upgrade"), Some("tcp"));
    // Engine 20.10 says raw-stream even though this exec (Tty false) is multiplexed.
    assert_eq!(
        head.media_type().as_deref(),
        Some("application/vnd.docker.raw-stream")
    );
    assert_eq!(
        out.output,
        [
            (Stdout, b"hello from stdin\n".to_vec()),
            (Stderr, b"oops\n".to_vec())
        ]
    );

    let out = whole("exec_start_101_engine27");
    let Ev::Head(head) = &out.events[0] else {
        panic!()
    };
    assert_eq!(
        head.media_type().as_deref(),
        Some("application/vnd.docker.multiplexed-stream")
    );
    assert_eq!(out.output[1].0, Stderr);

    // An engine that answers 200 and hijacks anyway.
    let out = whole("exec_start_200_raw");
    assert!(matches!(&out.events[..], [Ev::Head(h), Ev::Upgraded(_)] if h.status == 200));
    assert_eq!(out.output, [(Stdout, b"tty exec\r\ndone\r\n".to_vec())]);

    let created: api::CreatedExec = api::parse_json(response("exec_create_201")).unwrap();
    assert_eq!(created.id.len(), 64);
    let inspect: api::ExecInspect = api::parse_json(response("exec_inspect")).unwrap();
    assert_eq!((inspect.running, inspect.exit_code), (false, Some(0)));
    let resize = api::check(response("exec_resize")).unwrap();
    assert_eq!(resize.head.status, 200);
}

#[test]
fn json_line_streams() {
    let out = whole("build_error");
    let lines: Vec<api::ProgressLine> = out
        .lines
        .iter()
        .map(|(l, truncated)| {
            assert!(!truncated);
            serde_json::from_slice(l).unwrap()
        })
        .collect();
    assert_eq!(
        lines[0].stream.as_deref(),
        Some("Step 1/2 : FROM tether-test/busybox")
    );
    assert!(lines
        .iter()
        .any(|l| l.stream.as_deref() == Some("building\n")));
    let last = lines.last().unwrap();
    assert_eq!(
        last.error_message(),
        Some("The command '/bin/sh -c echo building && exit 3' returned a non-zero code: 3")
    );
    assert_eq!(last.error_detail.as_ref().and_then(|d| d.code), Some(3));
    assert!(lines[..lines.len() - 1]
        .iter()
        .all(|l| l.error_message().is_none()));

    let out = whole("pull_progress");
    let lines: Vec<api::ProgressLine> = out
        .lines
        .iter()
        .map(|(l, _)| serde_json::from_slice(l).unwrap())
        .collect();
    let detail = lines[2].progress_detail.as_ref().unwrap();
    assert_eq!(
        (detail.current, detail.total),
        (Some(32768), Some(3_623_807))
    );
    assert_eq!(lines.len(), 10);

    let out = whole("events");
    let events: Vec<api::Event> = out
        .lines
        .iter()
        .map(|(l, _)| serde_json::from_slice(l).unwrap())
        .collect();
    assert!(events.len() > 20);
    assert!(events.iter().all(|e| e.kind == "container"));
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    for want in ["create", "start", "die", "kill", "destroy", "prune"] {
        assert!(actions.contains(&want), "{want} in {actions:?}");
    }
    assert!(actions.iter().any(|a| a.starts_with("exec_create: ")));
    let start = events.iter().find(|e| e.action == "start").unwrap();
    assert_eq!(
        start.actor.attributes.get("name").map(String::as_str),
        Some("tt-web")
    );
    assert_eq!(start.time_nano / 1_000_000_000, start.time);

    let out = whole("events_engine29");
    let events: Vec<api::Event> = out
        .lines
        .iter()
        .map(|(l, _)| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(events[1].action, "die");
    assert_eq!(
        events[1]
            .actor
            .attributes
            .get("exitCode")
            .map(String::as_str),
        Some("137")
    );
}

#[test]
fn http_framing_fixtures() {
    let out = whole("keepalive_two");
    let statuses: Vec<u16> = out
        .events
        .iter()
        .filter_map(|e| match e {
            Ev::Head(h) => Some(h.status),
            _ => None,
        })
        .collect();
    assert_eq!(statuses, [200, 404]);
    assert_eq!(out.events.iter().filter(|e| **e == Ev::End).count(), 2);
    assert_eq!(out.events.last(), Some(&Ev::Eof(false)));

    let out = whole("chunked_trailers");
    assert_eq!(head_and_body(&out).1, b"hello world");
    assert_eq!(out.events.last(), Some(&Ev::Eof(false)));

    let out = whole("until_close");
    assert_eq!(out.events.last(), Some(&Ev::Eof(true)));
    assert!(head_and_body(&out).1.starts_with(b"no length"));

    let out = whole("continue_100");
    assert!(matches!(&out.events[0], Ev::Head(h) if h.status == 201));

    assert_eq!(
        whole("bad_chunk_size").events.last(),
        Some(&Ev::Err(HttpError::BadChunkSize))
    );
    let out = whole("chunk_size_overflow");
    assert_eq!(
        out.events.last(),
        Some(&Ev::Err(HttpError::ChunkSizeOverflow))
    );
    assert_eq!(
        head_and_body(&out).1,
        b"hello",
        "bytes before the error were delivered"
    );
}

#[test]
fn buffered_answers_respect_the_callers_limit() {
    // Content-Length known: refused at the head, before any body is kept.
    let f = fixture("inspect");
    let mut dec = BufferedDecoder::new(Expect::Normal, 1024);
    assert_eq!(
        dec.feed(f.bytes),
        Err(HttpError::BodyTooLarge { limit: 1024 })
    );
    // Chunked: refused once the limit is passed.
    let f = fixture("events");
    let mut dec = BufferedDecoder::new(Expect::Normal, 4096);
    let err = f.bytes.chunks(100).find_map(|p| dec.feed(p).err());
    assert_eq!(err, Some(HttpError::BodyTooLarge { limit: 4096 }));
    assert_eq!(
        HttpError::BodyTooLarge { limit: 4096 }.to_string(),
        "response body larger than 4096 bytes"
    );
}

#[test]
fn keep_alive_with_a_head_request_between() {
    // GET /_ping, HEAD /_ping, GET /version on one connection.
    let mut wire = fixture("ping").bytes.to_vec();
    wire.extend_from_slice(fixture("ping_head").bytes);
    wire.extend_from_slice(fixture("version").bytes);
    let kinds = [Expect::Normal, Expect::NoBody, Expect::Normal];
    let mut dec = ResponseDecoder::new(kinds[0]);
    let mut statuses = Vec::new();
    let mut ends = 0;
    let mut rest = &wire[..];
    loop {
        let step = dec.feed(rest).unwrap();
        rest = &rest[step.consumed..];
        match step.item {
            None => break,
            Some(Event::Head(h)) => {
                statuses.push((h.status, h.header("content-length").map(str::to_owned)))
            }
            Some(Event::End) => {
                ends += 1;
                assert!(dec.can_reuse());
                if let Some(next) = kinds.get(ends) {
                    dec.expect_next(*next).unwrap();
                }
            }
            Some(_) => {}
        }
    }
    assert_eq!(ends, 3);
    assert_eq!(statuses[1], (200, Some("0".into())));
    assert!(rest.is_empty());
    assert_eq!(dec.eof(), Ok(None));
}

#[test]
fn head_larger_than_the_limit() {
    let mut input = b"HTTP/1.1 200 OK\r\n".to_vec();
    while input.len() <= http::MAX_HEAD {
        input.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    input.extend_from_slice(b"\r\n");
    let f = Fixture {
        name: "big",
        bytes: &[],
        expect: Expect::Normal,
        content: Content::Plain,
    };
    for piece in [1, 1000, input.len()] {
        let pieces: Vec<&[u8]> = input.chunks(piece).collect();
        let out = run(&f, &pieces);
        assert_eq!(
            out.events,
            [Ev::Err(HttpError::HeadTooLarge)],
            "pieces of {piece}"
        );
    }
}

// ---------------------------------------------------------------------------
// Our requests are the ones the engine accepted

fn recorded_request(name: &str) -> &'static [u8] {
    match name {
        "ping" => include_bytes!("fixtures/ping.req"),
        "ping_head" => include_bytes!("fixtures/ping_head.req"),
        "version" => include_bytes!("fixtures/version.req"),
        "create_201" => include_bytes!("fixtures/create_201.req"),
        "start_204" => include_bytes!("fixtures/start_204.req"),
        "inspect" => include_bytes!("fixtures/inspect.req"),
        "not_found_404" => include_bytes!("fixtures/not_found_404.req"),
        "logs_follow_mux" => include_bytes!("fixtures/logs_follow_mux.req"),
        "logs_tail_mux" => include_bytes!("fixtures/logs_tail_mux.req"),
        "list_all" => include_bytes!("fixtures/list_all.req"),
        "kill_409" => include_bytes!("fixtures/kill_409.req"),
        "delete_409" => include_bytes!("fixtures/delete_409.req"),
        "delete_204" => include_bytes!("fixtures/delete_204.req"),
        "stats_oneshot" => include_bytes!("fixtures/stats_oneshot.req"),
        "exec_create_201" => include_bytes!("fixtures/exec_create_201.req"),
        "exec_start_101" => include_bytes!("fixtures/exec_start_101.req"),
        "exec_inspect" => include_bytes!("fixtures/exec_inspect.req"),
        "exec_resize" => include_bytes!("fixtures/exec_resize.req"),
        "restart_204" => include_bytes!("fixtures/restart_204.req"),
        "stop_204" => include_bytes!("fixtures/stop_204.req"),
        "build_error" => include_bytes!("fixtures/build_error.req"),
        "pull_error" => include_bytes!("fixtures/pull_error.req"),
        "prune_containers" => include_bytes!("fixtures/prune_containers.req"),
        "prune_images" => include_bytes!("fixtures/prune_images.req"),
        "events" => include_bytes!("fixtures/events.req"),
        _ => panic!("no recorded request {name}"),
    }
}

/// The `n`th path segment of a recorded request line (ids the engine made).
fn segment(req: &[u8], n: usize) -> String {
    let line = req.split(|&b| b == b'\r').next().unwrap();
    let target = std::str::from_utf8(line)
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap();
    let path = target.split('?').next().unwrap();
    path.split('/').nth(n).unwrap().to_owned()
}

fn query_value(req: &[u8], key: &str) -> String {
    let line = std::str::from_utf8(req.split(|&b| b == b'\r').next().unwrap()).unwrap();
    let query = line.split(' ').nth(1).unwrap().split_once('?').unwrap().1;
    let pair = query
        .split('&')
        .find(|p| p.starts_with(&format!("{key}=")))
        .unwrap();
    pair[key.len() + 1..].to_owned()
}

fn body_of(req: &[u8]) -> Vec<u8> {
    let end = req.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    req[end..].to_vec()
}

fn assert_same(name: &str, ours: &[u8]) {
    let theirs = recorded_request(name);
    assert_eq!(
        String::from_utf8_lossy(ours),
        String::from_utf8_lossy(theirs),
        "request for {name}"
    );
}

#[test]
fn requests_match_what_the_engine_accepted() {
    let api = Api::new(v("1.41"));
    let managed = Filters::new().add("label", "tether.managed=true");
    assert_same("ping", &Api::ping().encode());
    assert_same("ping_head", &Api::ping_head().encode());
    assert_same("version", &Api::version_info().encode());
    let create = recorded_request("create_201");
    assert_same(
        "create_201",
        &api.create_container(Some("tt-web"), body_of(create))
            .encode(),
    );
    assert_same("start_204", &api.start("tt-web").encode());
    assert_same("inspect", &api.inspect_container("tt-web").encode());
    assert_same("not_found_404", &api.inspect_container("x").encode());
    let follow = LogsOptions {
        follow: true,
        ..LogsOptions::default()
    };
    assert_same("logs_follow_mux", &api.logs("tt-logs", &follow).encode());
    let tail = LogsOptions {
        tail: Some(2),
        timestamps: false,
        ..LogsOptions::default()
    };
    assert_same("logs_tail_mux", &api.logs("tt-logs", &tail).encode());
    assert_same("list_all", &api.list_containers(true, &managed).encode());
    assert_same("kill_409", &api.kill("tt-logs", Some("SIGTERM")).encode());
    assert_same("delete_409", &api.remove("tt-web", false, false).encode());
    assert_same("delete_204", &api.remove("tt-tty", true, true).encode());
    assert_same("stats_oneshot", &api.stats_once("tt-web").encode());
    let exec = ExecConfig {
        attach_stdin: true,
        attach_stdout: true,
        attach_stderr: true,
        tty: false,
        cmd: vec!["sh".into(), "-c".into(), "cat; echo oops >&2".into()],
        ..ExecConfig::default()
    };
    assert_same(
        "exec_create_201",
        &api.exec_create("tt-web", &exec).encode(),
    );
    let exec_id = segment(recorded_request("exec_start_101"), 3);
    let start = api.exec_start(&exec_id, false);
    assert_eq!(start.expect(), Expect::Hijack);
    assert_same("exec_start_101", &start.encode());
    assert_same("exec_inspect", &api.exec_inspect(&exec_id).encode());
    let tty_exec = segment(recorded_request("exec_resize"), 3);
    assert_same("exec_resize", &api.exec_resize(&tty_exec, 40, 120).encode());
    assert_same("restart_204", &api.restart("tt-web", Some(1)).encode());
    assert_same("stop_204", &api.stop("tt-web", Some(1)).encode());
    assert_same(
        "pull_error",
        &api.pull("tether-test/nope", "latest").encode(),
    );
    assert_same("prune_containers", &api.prune_containers(&managed).encode());
    assert_same("prune_images", &api.prune_images(true).encode());
    let events = recorded_request("events");
    let since = query_value(events, "since").parse().unwrap();
    let until = query_value(events, "until").parse().unwrap();
    let containers = Filters::new().add("type", "container");
    assert_same(
        "events",
        &api.events(&containers, Some(since), Some(until)).encode(),
    );

    // The build upload: our chunk encoding of the same tar, in the same pieces.
    let recorded = recorded_request("build_error");
    let opts = BuildOptions {
        tag: Some("tt-fail".into()),
        ..BuildOptions::default()
    };
    let build = api.build(&opts);
    assert!(build.is_chunked());
    let mut ours = build.encode();
    let mut upload = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    upload.extend_from_slice(&recorded[ours.len()..]);
    let mut dec = BufferedDecoder::new(Expect::Normal, 1 << 20);
    dec.feed(&upload).unwrap();
    let tar = dec.take().unwrap().body;
    assert_eq!(tar.len() % 512, 0, "a tar archive");
    for piece in tar.chunks(4096) {
        ours.extend(http::encode_chunk(piece));
    }
    ours.extend_from_slice(http::LAST_CHUNK);
    assert_same("build_error", &ours);
}

// ---------------------------------------------------------------------------
// Robustness

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(8) {
            0 => out.truncate(at),
            1 if at < out.len() => out[at] = rng.next() as u8,
            2 if at < out.len() => out[at] ^= 1 << rng.below(8),
            3 => {
                let n = rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                out.splice(at..at, bytes);
            }
            4 => {
                let end = (at + rng.below(64)).min(out.len());
                out.drain(at..end);
            }
            5 => {
                let end = (at + rng.below(64)).min(out.len());
                let copy = out[at..end].to_vec();
                out.splice(at..at, copy);
            }
            // Framing-shaped damage: hex digits, CRLFs, frame headers.
            6 => {
                let pick: &[u8] = [
                    &b"f"[..],
                    b"\r\n",
                    b"\n",
                    b"ffffffffffffffffff",
                    b";",
                    b"\x02\0\0\0\xff\xff\xff\xff",
                    b"0\r\n\r\n",
                ][rng.below(7)];
                out.splice(at..at, pick.iter().copied());
            }
            _ => {}
        }
    }
    out
}

#[test]
fn corrupted_fixtures_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for f in fixtures() {
        for round in 0..300 {
            let input = mutate(&mut rng, f.bytes);
            // Random pieces, so damage lands on every kind of boundary.
            let mut pieces = Vec::new();
            let mut rest = &input[..];
            while !rest.is_empty() {
                let n = 1 + rng.below(if round % 2 == 0 { 8 } else { 512 });
                let (a, b) = rest.split_at(n.min(rest.len()));
                pieces.push(a);
                rest = b;
            }
            let expect = [Expect::Normal, Expect::NoBody, Expect::Hijack][rng.below(3)];
            let content =
                [Content::Plain, Content::Mux, Content::Tty, Content::Lines][rng.below(4)];
            let fx = Fixture {
                name: f.name,
                bytes: &[],
                expect,
                content,
            };
            let out = run(&fx, &pieces);
            // Whatever happened, the first answer is understood or refused the same way whole.
            let again = run(&fx, &[&input]);
            assert_eq!(out, again, "{} round {round}", f.name);

            let mut dec = BufferedDecoder::new(expect, 2048);
            for p in &pieces {
                if dec.feed(p).is_err() || dec.is_done() {
                    break;
                }
            }
            let _ = dec.eof();
            if let Some(resp) = dec.take() {
                assert!(resp.body.len() <= 2048);
                let _ = api::check(resp.clone()).map_err(|e| e.to_string());
                let _ = api::parse_json::<Vec<api::ContainerSummary>>(resp.clone());
                let _ = api::engine_version_from_ping(&resp.head);
            }
            for (line, _) in &out.lines {
                let _ = serde_json::from_slice::<api::Event>(line);
                let _ = stream::split_log_timestamp(line);
            }
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(42);
    for _ in 0..2000 {
        let len = rng.below(300);
        let mut input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if rng.below(2) == 0 {
            let mut head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            head.append(&mut input);
            input = head;
        }
        for content in [Content::Mux, Content::Lines] {
            let f = Fixture {
                name: "random",
                bytes: &[],
                expect: Expect::Normal,
                content,
            };
            let _ = run(&f, &[&input]);
        }
        let _ = stream::parse_rfc3339(&input);
        let _ = http::parse_head(&input);
    }
}

// ---------------------------------------------------------------------------
// Against a real engine: `cargo test -- --ignored` with dockerd running and
// the local image `tether-test/busybox` (see fixtures/README.md).

mod live {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    const SOCKET: &str = "/var/run/docker.sock";
    const IMAGE: &str = "tether-test/busybox";

    fn connect() -> UnixStream {
        let s = UnixStream::connect(SOCKET).expect("docker socket");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }

    /// One request, whole answer; a blocking stand-in for the event loop.
    fn call(req: &http::Request) -> Response {
        let mut s = connect();
        s.write_all(&req.encode()).unwrap();
        let mut dec = BufferedDecoder::new(req.expect(), 1 << 20);
        let mut buf = [0u8; 4096];
        while !dec.is_done() {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                dec.eof().unwrap();
                break;
            }
            dec.feed(&buf[..n]).unwrap();
        }
        dec.take().unwrap()
    }

    /// Stream an answer (or a hijacked connection) through a `Driver`.
    fn stream(mut s: UnixStream, expect: Expect, content: Content) -> Outcome {
        let mut d = Driver::new(expect, content);
        let mut buf = [0u8; 1024];
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            d.push(&buf[..n]);
            if d.out.events.last() == Some(&Ev::End) {
                break;
            }
        }
        d.finish()
    }

    #[test]
    #[ignore = "needs a running dockerd and the tether-test/busybox image"]
    fn against_a_real_engine() {
        let info: api::VersionInfo = api::parse_json(call(&Api::version_info())).unwrap();
        let api = Api::new(api::negotiate_from_version(&info).unwrap());
        let ping = call(&Api::ping());
        assert!(api::engine_version_from_ping(&ping.head).unwrap() >= api.version());

        let name = "tether-live-test";
        let _ = call(&api.remove(name, true, true));
        let config = format!(
            r#"{{"Image":"{IMAGE}","Cmd":["sh","-c","echo one; echo two >&2; sleep 30"],"Labels":{{"tether.test":"1"}}}}"#
        );
        let created: api::CreatedContainer =
            api::parse_json(call(&api.create_container(Some(name), config.into_bytes()))).unwrap();
        assert_eq!(call(&api.start(&created.id)).head.status, 204);
        assert_eq!(call(&api.start(name)).head.status, 304);

        let list: Vec<api::ContainerSummary> = api::parse_json(call(
            &api.list_containers(true, &Filters::new().add("label", "tether.test=1")),
        ))
        .unwrap();
        assert_eq!(list.len(), 1);

        // Logs without follow end; with timestamps, split per stream.
        std::thread::sleep(Duration::from_millis(500));
        let mut s = connect();
        s.write_all(&api.logs(name, &LogsOptions::default()).encode())
            .unwrap();
        let out = stream(s, Expect::Normal, Content::Mux);
        assert_eq!(out.stream_error, None);
        let lines = log_lines(&out, true);
        assert_eq!(
            lines,
            [
                (StreamKind::Stdout, "one".into()),
                (StreamKind::Stderr, "two".into())
            ]
        );

        // Exec with stdin, hijacked.
        let exec = ExecConfig {
            attach_stdin: true,
            attach_stdout: true,
            attach_stderr: true,
            cmd: vec!["sh".into(), "-c".into(), "cat; echo bye >&2; exit 3".into()],
            ..ExecConfig::default()
        };
        let created_exec: api::CreatedExec =
            api::parse_json(call(&api.exec_create(name, &exec))).unwrap();
        let mut s = connect();
        s.write_all(&api.exec_start(&created_exec.id, false).encode())
            .unwrap();
        // Stdin only after the head: bytes sent earlier can be lost.
        let mut d = Driver::new(Expect::Hijack, Content::Mux);
        let mut buf = [0u8; 1024];
        while !d.upgraded {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed before the upgrade");
            d.push(&buf[..n]);
        }
        s.write_all(b"ping\n").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            d.push(&buf[..n]);
        }
        let out = d.finish();
        assert!(matches!(out.events[1], Ev::Upgraded(_)), "{:?}", out.events);
        assert_eq!(
            out.output,
            [
                (StreamKind::Stdout, b"ping\n".to_vec()),
                (StreamKind::Stderr, b"bye\n".to_vec())
            ]
        );
        let inspect: api::ExecInspect =
            api::parse_json(call(&api.exec_inspect(&created_exec.id))).unwrap();
        assert_eq!(inspect.exit_code, Some(3));

        let stats: api::Stats = api::parse_json(call(&api.stats_once(name))).unwrap();
        assert!(stats.memory_stats.usage.is_some());
        assert_eq!(call(&api.kill(name, Some("SIGKILL"))).head.status, 204);
        let e = api::check(call(&api.kill(name, None))).unwrap_err();
        assert!(e.is_conflict(), "{e}");
        assert_eq!(call(&api.remove(name, true, true)).head.status, 204);
        let e = api::check(call(&api.inspect_container(name))).unwrap_err();
        assert_eq!(
            e,
            ApiError::Engine {
                status: 404,
                message: format!("No such container: {name}")
            }
        );
    }
}
