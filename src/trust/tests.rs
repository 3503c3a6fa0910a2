//! The verifier against signatures made by Debian's minisign (not by our
//! own signer, so the two cannot agree on a mistake):
//!
//! ```text
//! minisign -G -W -p operator.pub -s k.key       (and other.pub the same way)
//! minisign -S -s k.key -m valid.bin -t 'tether-action job sa_0000000000000001'
//! ```
//!
//! where `valid.bin` is `job_bytes("rn_test", "sa_0000000000000001",
//! 4102444800000, &job())` of `protocol/signed.rs`'s test job, and
//! `expired.bin` the same with `sa_0000000000000002` and not-after 1000.

use super::*;
use crate::protocol::signed::job_bytes;
use crate::protocol::JobStart;

const OPERATOR: &str = include_str!("testdata/operator.pub");
const OTHER: &str = include_str!("testdata/other.pub");
const VALID: &str = include_str!("testdata/valid.minisig");
const EXPIRED: &str = include_str!("testdata/expired.minisig");
const OTHER_KEY: &str = include_str!("testdata/other-key.minisig");

/// A day before the fixtures' not-after (at most 7 days ahead is accepted).
const NOW: u64 = FAR - 86_400_000;
const FAR: u64 = 4_102_444_800_000;

fn job() -> JobStart {
    JobStart {
        job_id: "jb_1".into(),
        channel: 7,
        program: "/bin/sh".into(),
        args: vec!["a".into(), "b c".into()],
        script: Some("echo hi > /tmp/x\n".into()),
        env: vec![("B".into(), "2".into()), ("A".into(), "1".into())],
        secrets: vec![("TOKEN".into(), "s3cret".into())],
        timeout_s: 60,
        deploy: None,
        signed: None,
    }
}

fn verifier(require: &str, keys: &str) -> Verifier {
    Verifier::new(
        TrustConfig {
            require: Require::parse(require).unwrap(),
            keys: vec![keys.to_owned()],
            runner_id: "rn_test".into(),
            state_dir: None,
        },
        NOW,
    )
}

fn signed(id: &str, not_after_ms: u64, sig: &str) -> Signed {
    Signed {
        action_id: id.into(),
        not_after_ms,
        signature: sig.into(),
    }
}

/// Check `j` as the runner does: the bytes from what arrived.
fn check(v: &mut Verifier, j: &JobStart, now: u64) -> Result<(), Refusal> {
    let runner = v.runner_id().to_owned();
    v.check(
        crate::protocol::signed::job_kind(j),
        j.signed.as_ref(),
        |s| job_bytes(&runner, &s.action_id, s.not_after_ms, j),
        now,
    )
}

fn valid_job() -> JobStart {
    let mut j = job();
    j.signed = Some(signed("sa_0000000000000001", FAR, VALID));
    j
}

#[test]
fn a_job_signed_by_a_trusted_key_passes_once() {
    let mut v = verifier("jobs", OPERATOR);
    assert_eq!(check(&mut v, &valid_job(), NOW), Ok(()));
    // The same action again: replayed, even re-sent by a server that
    // gave it another job id.
    let mut again = valid_job();
    again.job_id = "jb_2".into();
    assert_eq!(
        check(&mut v, &again, NOW + 1),
        Err(Refusal::Replayed("sa_0000000000000001".into()))
    );
}

#[test]
fn unsigned_unknown_key_and_expired_are_refused() {
    let mut v = verifier("jobs", OPERATOR);
    assert_eq!(
        check(&mut v, &job(), NOW),
        Err(Refusal::Unsigned(Kind::Job))
    );
    let mut j = job();
    j.signed = Some(signed("sa_0000000000000001", FAR, OTHER_KEY));
    assert_eq!(check(&mut v, &j, NOW), Err(Refusal::UnknownKey));
    let mut j = job();
    j.signed = Some(signed("sa_0000000000000002", 1000, EXPIRED));
    assert_eq!(
        check(&mut v, &j, NOW),
        Err(Refusal::Expired {
            not_after_ms: 1000,
            now_ms: NOW
        })
    );
    // Only the other key trusted: the operator's signature is unknown.
    let mut v = verifier("jobs", OTHER);
    assert_eq!(check(&mut v, &valid_job(), NOW), Err(Refusal::UnknownKey));
    // Garbage in the signature field: a reason, no panic.
    let mut j = job();
    j.signed = Some(signed("sa_x", FAR, "not a signature"));
    assert!(matches!(check(&mut v, &j, NOW), Err(Refusal::Malformed(_))));
    let mut j = job();
    j.signed = Some(signed(&"a".repeat(65), FAR, VALID));
    assert!(matches!(check(&mut v, &j, NOW), Err(Refusal::Malformed(_))));
}

#[test]
fn each_signed_field_altered_on_the_way_is_refused() {
    type Alteration = Box<dyn Fn(&mut JobStart)>;
    let alterations: Vec<(&str, Alteration)> = vec![
        ("program", Box::new(|j| j.program = "/bin/bash".into())),
        ("script", Box::new(|j| j.script = Some("rm -rf /\n".into()))),
        ("args", Box::new(|j| j.args[1] = "b d".into())),
        ("env value", Box::new(|j| j.env[0].1 = "evil".into())),
        (
            "env added",
            Box::new(|j| j.env.push(("LD_PRELOAD".into(), "/x".into()))),
        ),
        ("secret name", Box::new(|j| j.secrets[0].0 = "OTHER".into())),
        ("timeout", Box::new(|j| j.timeout_s = 0)),
        ("deploy", Box::new(|j| j.deploy = Some(Box::default()))),
        (
            "action id",
            Box::new(|j| j.signed.as_mut().unwrap().action_id = "sa_0000000000000009".into()),
        ),
        (
            "not after",
            Box::new(|j| j.signed.as_mut().unwrap().not_after_ms = FAR + 1),
        ),
    ];
    for (what, alter) in alterations {
        let mut v = verifier("jobs,deploys", OPERATOR);
        let mut j = valid_job();
        alter(&mut j);
        let got = check(&mut v, &j, NOW);
        assert_eq!(got, Err(Refusal::Altered), "{what}");
    }
    // Meant for another runner.
    let mut v = verifier("jobs", OPERATOR);
    v.cfg.runner_id = "rn_other".into();
    assert_eq!(check(&mut v, &valid_job(), NOW), Err(Refusal::Altered));
    // What is not signed may change: the job id, the channel, a secret's value.
    let mut v = verifier("jobs", OPERATOR);
    let mut j = valid_job();
    j.job_id = "jb_9".into();
    j.channel = 99;
    j.secrets[0].1 = "rotated".into();
    assert_eq!(check(&mut v, &j, NOW), Ok(()));
}

#[test]
fn only_required_kinds_are_checked() {
    let mut v = verifier("deploys", OPERATOR);
    assert_eq!(check(&mut v, &job(), NOW), Ok(()));
    let mut d = job();
    d.deploy = Some(Box::default());
    assert_eq!(check(&mut v, &d, NOW), Err(Refusal::Unsigned(Kind::Deploy)));
    assert_eq!(
        Require::parse("all").unwrap(),
        Require {
            jobs: true,
            deploys: true,
            terminals: true,
            containers: true,
        }
    );
    assert!(!Require::parse(" deploys,").unwrap().jobs);
    let r = Require::parse("terminals,containers").unwrap();
    assert!(r.of(Kind::Terminal) && r.of(Kind::Container) && !r.of(Kind::Job));
    assert_eq!(Require::parse("all,none").unwrap(), Require::default());
    // An unknown word is refused, naming it.
    let e = Require::parse("jobs,job").unwrap_err();
    assert!(e.contains("\"job\""), "{e}");
}

#[test]
fn remembered_ids_survive_a_restart_and_expire() {
    let dir = std::env::temp_dir().join(format!("tether-trust-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = TrustConfig {
        require: Require::parse("jobs").unwrap(),
        keys: vec![OPERATOR.to_owned()],
        runner_id: "rn_test".into(),
        state_dir: Some(dir.clone()),
    };
    let mut v = Verifier::new(cfg.clone(), NOW);
    assert_eq!(check(&mut v, &valid_job(), NOW), Ok(()));
    drop(v);
    let mut v = Verifier::new(cfg.clone(), NOW);
    assert!(matches!(
        check(&mut v, &valid_job(), NOW),
        Err(Refusal::Replayed(_))
    ));
    // Past its not-after the id is forgotten (and the action is expired).
    let v = Verifier::new(cfg, FAR + 1);
    assert!(v.seen.is_empty());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_record_names_signer_and_outcome() {
    let dir = std::env::temp_dir().join(format!("tether-trust-rec-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = |require: &str| TrustConfig {
        require: Require::parse(require).unwrap(),
        keys: vec![OPERATOR.to_owned()],
        runner_id: "rn_test".into(),
        state_dir: Some(dir.clone()),
    };
    let record = |v: &mut Verifier, j: &JobStart| {
        let verdict = check(v, j, NOW);
        let subject = format!("job={}", audit::field(&j.job_id, 64));
        v.record(&subject, Kind::Job, j.signed.as_ref(), &verdict, NOW);
    };
    let mut v = Verifier::new(cfg("jobs"), NOW);
    record(&mut v, &valid_job());
    record(&mut v, &job());
    // Not required here: the signature is not checked, and the line says so.
    let mut v = Verifier::new(cfg("none"), NOW);
    let mut j = valid_job();
    j.job_id = "jb 2\nforged".into();
    record(&mut v, &j);
    let text = audit::read(&dir).unwrap().unwrap();
    let lines: Vec<&str> = text.lines().map(|l| l.split_once(' ').unwrap().1).collect();
    let key = audit::key_id(VALID).unwrap();
    assert_eq!(
        lines,
        [
            format!("job=jb_1 kind=job action=sa_0000000000000001 signer={key} ran"),
            "job=jb_1 kind=job action=- signer=unsigned refused: unsigned: this host requires \
             a signature on every job (--require-signed)"
                .to_owned(),
            format!(
                "job=jb?2?forged kind=job action=sa_0000000000000001 signer={key} ran unchecked"
            ),
        ]
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_replay_memory_is_bounded() {
    let mut v = verifier("jobs", OPERATOR);
    for i in 0..MAX_REMEMBERED {
        v.seen.insert(format!("sa_{i}"), FAR);
    }
    assert_eq!(check(&mut v, &valid_job(), NOW), Err(Refusal::MemoryFull));
    // Expired ids make room.
    for t in v.seen.values_mut() {
        *t = NOW - 1;
    }
    assert_eq!(check(&mut v, &valid_job(), NOW), Ok(()));
    assert_eq!(v.seen.len(), 1);
}

/// Figure: one verification on this machine (printed; `--no-capture`).
#[test]
fn verification_cost() {
    let j = valid_job();
    let n = 200;
    let t = std::time::Instant::now();
    for i in 0..n {
        let mut v = verifier("jobs", OPERATOR);
        assert_eq!(check(&mut v, &j, NOW + i), Ok(()));
    }
    println!(
        "signed job check (decode, canonical bytes, BLAKE2b, 2 Ed25519 verifications): {:?} each",
        t.elapsed() / n as u32
    );
}

/// The gate (`gate.rs`): a terminal or a container operation that changes
/// state is checked where the host requires it, refused with the reason
/// as an error reply to its request; reads (list, inspect) always pass.
#[test]
fn the_gate_checks_terminals_and_state_changing_container_operations_only() {
    use crate::link::Outgoing;
    use crate::protocol::{DockerOp, DockerRequest, Message as Control, TermOpen};
    let open = TermOpen {
        channel: 1 << 31,
        container: None,
        command: Vec::new(),
        user: None,
        cols: 80,
        rows: 24,
        idle_timeout_s: 0,
        detach_timeout_s: 0,
        window: 0,
        signed: None,
    };
    let docker = |op| DockerRequest {
        op,
        container: Some("web".into()),
        timeout_s: None,
        signal: None,
        force: false,
        volumes: false,
        filters: None,
        signed: None,
    };
    let gate = |require: &str| {
        let v = verifier(require, OPERATOR);
        gate::Gate::new(std::rc::Rc::new(std::cell::RefCell::new(v)))
    };
    let term = Control::TermOpen(open.clone());
    let stop = Control::DockerRequest(docker(DockerOp::Stop));
    let list = Control::DockerRequest(docker(DockerOp::List));
    let inspect = Control::DockerRequest(docker(DockerOp::Inspect));

    let mut g = gate("jobs,deploys");
    assert!(g.screen(1, &term) && g.screen(2, &stop));
    assert!(g.next_message().is_none());

    let mut g = gate("terminals");
    assert!(!g.screen(3, &term));
    assert!(g.screen(4, &stop));
    let mut g = gate("containers");
    assert!(g.screen(5, &term) && g.screen(6, &list) && g.screen(7, &inspect));
    assert!(!g.screen(8, &stop));
    match g.next_message() {
        Some(Outgoing::Reply { id: 8, body }) => match *body {
            Control::Error(e) => {
                assert_eq!(e.code, REFUSED_CODE);
                assert!(e.message.starts_with("unsigned"), "{}", e.message);
                assert!(e.message.contains("every container"), "{}", e.message);
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    assert!(g.next_message().is_none());
    // A stranger's signature on a terminal: unknown key.
    let mut g = gate("all");
    let mut signed_open = open;
    signed_open.signed = Some(signed("sa_0000000000000001", FAR, OTHER_KEY));
    assert!(!g.screen(9, &Control::TermOpen(signed_open)));
    let Some(Outgoing::Reply { body, .. }) = g.next_message() else {
        panic!("no refusal")
    };
    let Control::Error(e) = *body else { panic!() };
    assert!(e.message.starts_with("unknown key"), "{}", e.message);
}
