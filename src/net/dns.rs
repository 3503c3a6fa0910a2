//! Name resolution. `getaddrinfo` blocks and mio has no resolver, so lookups
//! run on ONE helper thread (the runner's only thread besides the loop). The
//! loop hands it a request and gets the answer through a channel plus a
//! `mio::Waker`. Each request carries a generation number: when the loop has
//! given up on a lookup (timeout), its late answer is recognised and dropped.
//!
//! ```text
//!  loop ──resolve(gen)──▶ [slot: latest request] ──▶ helper thread: getaddrinfo
//!  loop ◀──wake────────── [channel: (gen, result)] ◀──┘
//! ```
//!
//! The request slot holds at most one request (a newer one replaces an
//! unstarted older one), so a hung lookup cannot queue up work without bound.
//! IP literals never reach the thread.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// At most this many addresses are tried per attempt.
pub const MAX_ADDRS: usize = 8;

/// Stack of the helper thread; musl's resolver needs little, glibc with NSS a
/// bit more. Untouched pages cost no memory.
const STACK_SIZE: usize = 256 * 1024;

#[derive(Debug)]
pub struct Answer {
    pub gen: u64,
    pub result: io::Result<Vec<SocketAddr>>,
}

struct Request {
    gen: u64,
    host: String,
    port: u16,
}

#[derive(Default)]
struct Slot {
    request: Option<Request>,
    closed: bool,
}

/// The loop's handle on the helper thread (started on first use).
pub struct Resolver {
    waker: Arc<mio::Waker>,
    slot: Arc<(Mutex<Slot>, Condvar)>,
    answers_tx: Sender<Answer>,
    answers: Receiver<Answer>,
    started: bool,
    next_gen: u64,
}

impl Resolver {
    pub fn new(waker: Arc<mio::Waker>) -> Resolver {
        let (answers_tx, answers) = mpsc::channel();
        Resolver {
            waker,
            slot: Arc::new((Mutex::new(Slot::default()), Condvar::new())),
            answers_tx,
            answers,
            started: false,
            next_gen: 0,
        }
    }

    /// Start a lookup; the answer arrives via [`Resolver::try_recv`] after the
    /// waker fires. IP literals are answered at once (still via the channel,
    /// so the caller has one code path).
    pub fn resolve(&mut self, host: &str, port: u16) -> io::Result<u64> {
        self.next_gen += 1;
        let gen = self.next_gen;
        if let Ok(ip) = host.parse::<IpAddr>() {
            let _ = self.answers_tx.send(Answer {
                gen,
                result: Ok(vec![SocketAddr::new(ip, port)]),
            });
            self.waker.wake()?;
            return Ok(gen);
        }
        if !self.started {
            self.spawn()?;
        }
        let (lock, cvar) = &*self.slot;
        let mut slot = lock.lock().unwrap_or_else(|p| p.into_inner());
        slot.request = Some(Request {
            gen,
            host: host.to_owned(),
            port,
        });
        cvar.notify_one();
        Ok(gen)
    }

    /// The next answer, if any (the caller checks `gen`).
    pub fn try_recv(&mut self) -> Option<Answer> {
        self.answers.try_recv().ok()
    }

    fn spawn(&mut self) -> io::Result<()> {
        let slot = self.slot.clone();
        let tx = self.answers_tx.clone();
        let waker = self.waker.clone();
        std::thread::Builder::new()
            .name("tether-dns".into())
            .stack_size(STACK_SIZE)
            .spawn(move || helper(slot, tx, waker))?;
        self.started = true;
        Ok(())
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        // Not joined: a hung getaddrinfo must not hang the exit.
        let (lock, cvar) = &*self.slot;
        let mut slot = lock.lock().unwrap_or_else(|p| p.into_inner());
        slot.closed = true;
        cvar.notify_one();
    }
}

fn helper(slot: Arc<(Mutex<Slot>, Condvar)>, tx: Sender<Answer>, waker: Arc<mio::Waker>) {
    let (lock, cvar) = &*slot;
    loop {
        let req = {
            let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if s.closed {
                    return;
                }
                if let Some(r) = s.request.take() {
                    break r;
                }
                s = cvar.wait(s).unwrap_or_else(|p| p.into_inner());
            }
        };
        let result = lookup(&req.host, req.port);
        if tx
            .send(Answer {
                gen: req.gen,
                result,
            })
            .is_err()
        {
            return;
        }
        let _ = waker.wake();
    }
}

/// `getaddrinfo`, capped to [`MAX_ADDRS`] addresses.
pub fn lookup(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    #[cfg(test)]
    if let Some(addrs) = test_names::lookup(host, port) {
        return Ok(addrs);
    }
    let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs()?.take(MAX_ADDRS).collect();
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "no addresses found",
        ));
    }
    Ok(addrs)
}

/// Names with several addresses for the unit tests (this machine's
/// /etc/hosts gives `localhost` one, and tests may not edit it).
#[cfg(test)]
pub mod test_names {
    use std::net::{IpAddr, SocketAddr};
    use std::sync::Mutex;

    static NAMES: Mutex<Vec<(String, Vec<IpAddr>)>> = Mutex::new(Vec::new());

    /// From now on `name` resolves to `ips`, in this order.
    pub fn set(name: &str, ips: &[IpAddr]) {
        let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
        names.retain(|(n, _)| n != name);
        names.push((name.to_owned(), ips.to_vec()));
    }

    pub(super) fn lookup(host: &str, port: u16) -> Option<Vec<SocketAddr>> {
        let names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
        let (_, ips) = names.iter().find(|(n, _)| n == host)?;
        Some(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
    }
}

/// Blocking lookup with a timeout, for the CLI's blocking client: a one-off
/// thread does the lookup and is abandoned (not joined) on timeout.
pub fn resolve_blocking(host: &str, port: u16, timeout: Duration) -> io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let (tx, rx) = mpsc::channel();
    let owned = host.to_owned();
    std::thread::Builder::new()
        .name("tether-dns".into())
        .stack_size(STACK_SIZE)
        .spawn(move || {
            let _ = tx.send(lookup(&owned, port));
        })?;
    rx.recv_timeout(timeout)
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "DNS lookup timed out"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn resolver_answers_through_the_waker_and_tags_generations() {
        let mut poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(1)).unwrap());
        let mut r = Resolver::new(waker);
        let g1 = r.resolve("127.0.0.1", 80).unwrap();
        let g2 = r.resolve("localhost", 443).unwrap();
        assert!(g2 > g1);
        let mut events = mio::Events::with_capacity(4);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while got.len() < 2 && Instant::now() < deadline {
            poll.poll(&mut events, Some(Duration::from_millis(200)))
                .unwrap();
            while let Some(a) = r.try_recv() {
                got.push(a);
            }
        }
        assert_eq!(got.len(), 2);
        let a1 = got.iter().find(|a| a.gen == g1).unwrap();
        assert_eq!(
            a1.result.as_ref().unwrap(),
            &vec!["127.0.0.1:80".parse().unwrap()]
        );
        let a2 = got.iter().find(|a| a.gen == g2).unwrap();
        assert!(a2
            .result
            .as_ref()
            .unwrap()
            .iter()
            .all(|a| a.port() == 443 && a.ip().is_loopback()));
    }

    #[test]
    fn blocking_lookup_of_literals_and_failures() {
        let a = resolve_blocking("::1", 9, Duration::from_secs(5)).unwrap();
        assert_eq!(a, vec!["[::1]:9".parse().unwrap()]);
        assert!(resolve_blocking("no-such-host.invalid", 1, Duration::from_secs(10)).is_err());
    }
}
