//! The seeds of the `control` and `frame` fuzz targets (`fuzz/seeds/`:
//! every message type of the protocol, both directions, an unknown type,
//! every frame kind) sent by a connected runner to the real server. The
//! fuzz targets prove the shared decoders; this proves what the server
//! does with what they let through: each input is handled or refused
//! with a 4004 close, and the server keeps answering, never a dropped
//! connection (a panicked task) or a hang.

use crate::util::*;

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect();
    out.sort();
    out
}

/// After `sent`, a `ping` must come back as `pong` (the connection lives)
/// unless the server closed it as a protocol violation. Other messages the
/// server sends meanwhile (a fingerprint resync, an error) are skipped.
async fn still_served(ws: &mut Ws, sent: &str) -> bool {
    let ping = r#"{"type":"ping","id":777001,"sent_ms":1}"#;
    if ws.send(WsMessage::text(ping)).await.is_err() {
        // Closed already: the close frame is waiting to be read.
    }
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(WsMessage::Text(t)))) => {
                if let Ok(Decoded::Known(env)) = decode_control(t.as_str()) {
                    if env.id == 777001 && matches!(env.body, Message::Pong(_)) {
                        return true;
                    }
                }
            }
            Ok(Some(Ok(WsMessage::Close(Some(f))))) => {
                assert_eq!(
                    u16::from(f.code),
                    protocol::close::PROTOCOL_VIOLATION,
                    "{sent}: closed with {f:?}"
                );
                return false;
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("{sent}: the server dropped or hung: {other:?}"),
        }
    }
}

#[tokio::test]
async fn fuzz_seeds_sent_by_a_runner_are_handled_or_refused() {
    let s = server().await;
    let (_, api) = tenant(&s.router, "acme").await;
    let (_, credential) = runner(&s.router, &api).await;
    let mut ws = online(&s, &credential, 5000).await;
    let inputs = seeds("control")
        .into_iter()
        .map(|(n, b)| (n, WsMessage::text(String::from_utf8(b).unwrap())))
        .chain(
            seeds("frame")
                .into_iter()
                .map(|(n, b)| (n, WsMessage::binary(b))),
        );
    let (mut kept, mut refused) = (0, 0);
    for (name, msg) in inputs {
        ws.send(msg).await.unwrap();
        if still_served(&mut ws, &name).await {
            kept += 1;
        } else {
            refused += 1;
            ws = online(&s, &credential, 5000).await;
        }
    }
    assert!(
        kept > 0 && kept + refused >= 20,
        "{kept} kept, {refused} refused"
    );
    let (status, _) = call(&s.router, "GET", "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
}
