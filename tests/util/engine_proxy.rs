//! A unix-socket proxy in front of the real Docker engine, for faults the
//! engine itself will not produce: every connection is forwarded byte for
//! byte, except that while `hold_exec_create` is on, an exec create
//! request is accepted and read but never answered (a stalled engine).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Default)]
struct Shared {
    hold_exec_create: AtomicBool,
    /// Exec creates held so far.
    held: AtomicU32,
    stop: AtomicBool,
}

pub struct EngineProxy {
    path: PathBuf,
    sh: Arc<Shared>,
}

impl EngineProxy {
    /// Listen at `path`, forwarding to `engine`.
    pub fn start(path: &Path, engine: &str) -> EngineProxy {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let sh = Arc::new(Shared::default());
        let (sh2, engine) = (sh.clone(), engine.to_owned());
        std::thread::spawn(move || {
            while !sh2.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let (sh, engine) = (sh2.clone(), engine.clone());
                        std::thread::spawn(move || handle(s, &sh, &engine));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        EngineProxy {
            path: path.to_owned(),
            sh,
        }
    }

    pub fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }

    pub fn hold_exec_create(&self, on: bool) {
        self.sh.hold_exec_create.store(on, Ordering::SeqCst);
    }

    pub fn held(&self) -> u32 {
        self.sh.held.load(Ordering::SeqCst)
    }
}

impl Drop for EngineProxy {
    fn drop(&mut self) {
        self.sh.stop.store(true, Ordering::SeqCst);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `POST /v1.41/containers/NAME/exec HTTP/1.1`
fn is_exec_create(line: &str) -> bool {
    let mut parts = line.split(' ');
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return false;
    };
    let path = target.split('?').next().unwrap_or("");
    method == "POST" && path.contains("/containers/") && path.ends_with("/exec")
}

fn handle(mut client: UnixStream, sh: &Shared, engine: &str) {
    // The request line decides; it is never split by a real client, but
    // read until it is whole anyway.
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 8192 {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or("");
    if sh.hold_exec_create.load(Ordering::SeqCst) && is_exec_create(line) {
        sh.held.fetch_add(1, Ordering::SeqCst);
        // Read and drop everything until the client gives up.
        while let Ok(n) = client.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        return;
    }
    let Ok(mut upstream) = UnixStream::connect(engine) else {
        return;
    };
    if upstream.write_all(&head).is_err() {
        return;
    }
    let (Ok(mut c2), Ok(mut u2)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut u2);
        let _ = u2.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut upstream, &mut client);
    let _ = client.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}
