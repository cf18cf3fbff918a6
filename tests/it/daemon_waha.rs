//! The daemon against the WAHA emulator: one WhatsApp account acts for every group, so what the
//! daemon learned about it — its serial-write gate, its cooldown — must outlive reloads; a
//! provider counts as reached once it answered a read; and stopping never waits on a cooldown.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rosterd::daemon::{DaemonOptions, run};
use rosterd::provider::Kind;
use rosterd::sandbox::waha::{Engine, Group, Me, Overlimit, State, WaRole};
use rosterd::sandbox::{Fault, FaultKind, Sandbox};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::support::bounded;
use crate::waha::start as sandbox;

const KEY: &str = "waha-daemon-key-5d1e0b7c9a3f";
const ME_PHONE: &str = "491700000001";
const OWNER: &str = "491700000002@c.us";
const A: &str = "120363000000000011@g.us";
const B: &str = "120363000000000012@g.us";

fn phone(n: u32) -> String {
    format!("4917100000{n:02}")
}

fn world(overlimit: Option<Overlimit>) -> State {
    let admins = || {
        [
            (format!("{ME_PHONE}@c.us"), WaRole::Admin),
            (OWNER.to_string(), WaRole::Superadmin),
        ]
        .into_iter()
        .collect()
    };
    let mut b = Group {
        name: None,
        members: admins(),
    };
    b.members
        .insert(format!("{}@c.us", phone(90)), WaRole::Participant);
    State {
        api_key: KEY.into(),
        engine: Engine::Gows,
        me: Me {
            phone: format!("+{ME_PHONE}"),
            lid: None,
        },
        overlimit,
        groups: [
            (
                A.to_string(),
                Group {
                    name: None,
                    members: admins(),
                },
            ),
            (B.to_string(), b),
        ]
        .into(),
        ..State::default()
    }
}

/// WhatsApp lets one add through per 10 hours: every add after the first is refused.
fn full_window() -> State {
    world(Some(Overlimit {
        adds: 1,
        per: Duration::from_secs(36_000),
    }))
}

/// An in-process daemon on `cfg`.
fn spawn(
    cfg: &Path,
    debounce: Duration,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let stop = CancellationToken::new();
    let handle = tokio::spawn(run(options(cfg, debounce), stop.clone()));
    (stop, handle)
}

/// A tree with instance `wa`: group `a` adds members `adds`, group `b` holds the people.yaml
/// team `crew` (`crew` people 90.., first one already in the group).
fn tree(dir: &Path, sb: &Sandbox, extra: &str, adds: std::ops::Range<u32>, crew: u32) -> PathBuf {
    let base = sb.base_url(Kind::Waha).unwrap();
    std::fs::write(dir.join("key"), KEY).unwrap();
    std::fs::write(
        dir.join("rosterd.yaml"),
        format!(
            "manifests: groups/\npeople: people.yaml\nresync: 1h\nlisten: 127.0.0.1:0\nproviders:\n  wa:\n    kind: waha\n    base_url: {base}\n    session: default\n    api_key: {{ file: key }}\n    interval: 0s\n    rate: 1000/s\n    timeout: 5s\n{extra}"
        ),
    )
    .unwrap();
    people(dir, crew);
    std::fs::create_dir_all(dir.join("groups")).unwrap();
    let adds: Vec<String> = adds.map(|n| format!("\"+{}\"", phone(n))).collect();
    std::fs::write(
        dir.join("groups/a.yaml"),
        format!(
            "group: a\nprovider: wa\nid: \"{A}\"\nadmins: [\"+{ME_PHONE}\", \"+{}\"]\nparticipants: [{}]\n",
            &OWNER[..12],
            adds.join(", ")
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("groups/b.yaml"),
        format!(
            "group: b\nprovider: wa\nid: \"{B}\"\nadmins: [\"+{ME_PHONE}\", \"+{}\"]\nparticipants: [\"@crew\"]\n",
            &OWNER[..12]
        ),
    )
    .unwrap();
    dir.join("rosterd.yaml")
}

/// people.yaml with a team `crew` of `n` people (phones 90, 91, ...).
fn people(dir: &Path, n: u32) {
    let mut text = String::from("people:\n");
    for i in 0..n {
        text.push_str(&format!("  p{i}: {{ waha: \"+{}\" }}\n", phone(90 + i)));
    }
    let names: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
    text.push_str(&format!("teams:\n  crew: [{}]\n", names.join(", ")));
    std::fs::write(dir.join("people.yaml"), text).unwrap();
}

fn has(sb: &Sandbox, group: &str, n: u32) -> bool {
    sb.waha
        .group(group)
        .is_some_and(|g| g.members.contains_key(&format!("{}@c.us", phone(n))))
}

/// Whether a request path is about `group` (however the client spelled the `@`).
fn on(path: &str, group: &str) -> bool {
    path.contains(group) || path.contains(&group.replace('@', "%40"))
}

fn writes_to(sb: &Sandbox, group: &str) -> usize {
    sb.waha
        .writes()
        .iter()
        .filter(|r| on(&r.path, group))
        .count()
}

fn options(cfg: &Path, debounce: Duration) -> DaemonOptions {
    let mut opts = DaemonOptions::new(cfg);
    opts.listen = Some("127.0.0.1:0".parse().unwrap());
    opts.debounce = debounce;
    opts.poll = Duration::from_secs(3600);
    opts.grace = Duration::from_secs(10);
    opts
}

/// Wait (real time: a real daemon task on real file events) until `f` holds.
async fn until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    crate::support::poll(secs, what, || std::future::ready(f().then_some(()))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waha_emulator_sees_overlapping_writes() {
    bounded(30, async {
        // The in-flight count the daemon tests rely on does see two writes at once.
        let sb = sandbox(world(None)).await;
        sb.waha
            .inject(Fault::sometimes(1.0, FaultKind::Slow(Duration::from_millis(300))).writes_only());
        let base = sb.base_url(Kind::Waha).unwrap().to_string();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let post = |n: u32| {
            let url = format!("{base}/api/default/groups/{A}/participants/add");
            async move {
                reqwest::Client::new()
                    .post(url)
                    .header("x-api-key", KEY)
                    .json(&serde_json::json!({"participants": [{"id": format!("{}@c.us", phone(n))}]}))
                    .send()
                    .await
                    .unwrap();
            }
        };
        tokio::join!(post(1), post(2));
        assert_eq!(sb.waha.max_writes_in_flight(), 2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_people_edit_while_a_waha_group_applies_never_overlaps_writes_on_the_account() {
    bounded(60, async {
        let sb = sandbox(world(None)).await;
        // Every write takes 300 ms and the interval is zero: group a always has a write in
        // flight while it applies, so any write of b beside it would overlap.
        sb.waha.inject(
            Fault::sometimes(1.0, FaultKind::Slow(Duration::from_millis(300))).writes_only(),
        );
        let dir = tempfile::tempdir().unwrap();
        let cfg = tree(dir.path(), &sb, "", 10..22, 1);
        let (stop, daemon) = spawn(&cfg, Duration::from_millis(100));
        until(20, "a is applying", || writes_to(&sb, A) >= 2).await;
        // One more person in the team: b must run again, beside a, on the same account.
        people(dir.path(), 2);
        until(30, "b got the new team member", || has(&sb, B, 91)).await;
        let a_writes_when_b_wrote = writes_to(&sb, A);
        until(30, "a converged", || (10..22).all(|n| has(&sb, A, n))).await;
        assert!(
            a_writes_when_b_wrote < 12,
            "b's write came while a was still applying ({a_writes_when_b_wrote} of 12)"
        );
        assert_eq!(
            sb.waha.max_writes_in_flight(),
            1,
            "two writes in flight on one WhatsApp account"
        );
        stop.cancel();
        daemon.await.unwrap().unwrap();
    })
    .await
}

fn signal(sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &std::process::id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

fn throttled(sb: &Sandbox) -> usize {
    sb.waha
        .requests()
        .iter()
        .filter(|r| r.fault.as_deref() == Some("rate-overlimit"))
        .count()
}

/// Wait on tokio's (paused) clock, 100 ms at a time, until `f` holds.
async fn until_paused(mut f: impl FnMut() -> bool) {
    while !f() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_throttle_cooldown_survives_a_people_reload() {
    bounded(7200, async {
        // WhatsApp lets one add through per 10 hours: a's second add draws rate-overlimit, and
        // the client cools down for a minute (20% jitter: at least 48 s).
        let sb = sandbox(full_window()).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = tree(dir.path(), &sb, "", 10..12, 1);
        let stop = CancellationToken::new();
        // The watcher never fires in this test: SIGHUP alone reloads.
        let daemon = tokio::spawn(run(options(&cfg, Duration::from_secs(3600)), stop.clone()));
        until_paused(|| throttled(&sb) == 1).await;
        let throttled_at = Instant::now();
        let seen = sb.waha.requests().len();

        people(dir.path(), 2);
        signal("-HUP");
        until_paused(|| sb.waha.requests()[seen..].iter().any(|r| on(&r.path, B))).await;
        let waited = throttled_at.elapsed();
        assert!(
            waited >= Duration::from_secs(48),
            "b's first read after the reload waited out the cooldown, {waited:?}"
        );
        // ... and then asked to add the new member (WhatsApp's window is still full).
        until_paused(|| {
            sb.waha.requests()[seen..]
                .iter()
                .any(|r| r.method == "POST" && on(&r.path, B))
        })
        .await;
        stop.cancel();
        daemon.await.unwrap().unwrap();
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn stopping_during_a_fifteen_minute_waha_cooldown_takes_under_two_seconds() {
    bounded(36_000, async {
        let sb = sandbox(full_window()).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = tree(dir.path(), &sb, "", 10..30, 1);
        let (stop, daemon) = spawn(&cfg, Duration::from_secs(3600));
        // Throttles in a row double the cooldown from a minute: the 5th reaches the 15-minute
        // cap (60 s · 2⁴ = 16 min, capped), and the 6th call waits on it.
        until_paused(|| throttled(&sb) == 5).await;
        let fifth = Instant::now();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(throttled(&sb), 5, "still cooling down a minute later");
        let requests = sb.waha.requests().len();
        let stopping = Instant::now();
        stop.cancel();
        daemon.await.unwrap().unwrap();
        let took = stopping.elapsed();
        assert!(took < Duration::from_secs(2), "stopped in {took:?}");
        assert_eq!(
            sb.waha.requests().len(),
            requests,
            "nothing sent after the stop"
        );
        assert!(
            fifth.elapsed() < Duration::from_secs(62),
            "the stop came a minute into the cooldown"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_once_every_provider_answered_a_read_while_the_first_apply_runs() {
    bounded(60, async {
        let sb = sandbox(world(None)).await;
        sb.waha
            .inject(Fault::sometimes(1.0, FaultKind::Slow(Duration::from_millis(400))).writes_only());
        let dir = tempfile::tempdir().unwrap();
        // A second instance nobody answers for, used by its own manifest.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_port = dead.local_addr().unwrap().port();
        drop(dead);
        let extra = format!(
            "  wx:\n    kind: waha\n    base_url: http://127.0.0.1:{dead_port}\n    api_key: {{ file: key }}\n    timeout: 1s\n"
        );
        let cfg = tree(dir.path(), &sb, &extra, 10..22, 1);
        std::fs::write(
            dir.path().join("groups/x.yaml"),
            format!("group: x\nprovider: wx\nid: \"120363000000000099@g.us\"\nadmins: [\"+{ME_PHONE}\"]\n"),
        )
        .unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut opts = options(&cfg, Duration::from_millis(100));
        opts.listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
        let stop = CancellationToken::new();
        let daemon = tokio::spawn(run(opts, stop.clone()));
        let _ = rustls::crypto::ring::default_provider().install_default();
        let readyz = || async move {
            let r = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await;
            match r {
                Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                Err(_) => (0, String::new()),
            }
        };
        until(20, "a is applying", || writes_to(&sb, A) >= 1).await;
        let (code, body) = readyz().await;
        assert_eq!(code, 503, "{body}");
        assert!(
            body.contains("providers not reached yet: wx\n"),
            "names only the provider not reached: {body}"
        );

        // wx is no longer in use: ready, with a still applying.
        std::fs::remove_file(dir.path().join("groups/x.yaml")).unwrap();
        crate::support::poll(4, "ready once wx is no longer in use", || async {
            (readyz().await.0 == 200).then_some(())
        })
        .await;
        let applied = writes_to(&sb, A);
        assert!(applied < 12, "ready before the first apply finished ({applied} of 12 writes)");
        stop.cancel();
        daemon.await.unwrap().unwrap();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_waha_cooldown_exits_0_within_two_seconds() {
    bounded(60, async {
        // The `rosterd run` process, end to end: its first throttle starts a cooldown of about
        // a minute, and SIGTERM lands in it.
        let sb = sandbox(full_window()).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = tree(dir.path(), &sb, "", 10..12, 1);
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("rosterd"))
            .args(["run", "--config"])
            .arg(&cfg)
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        until(30, "the first throttle", || throttled(&sb) == 1).await;
        let requests = sb.waha.requests().len();
        let term = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(term.success());
        let status = crate::support::poll(2, "the exit within 2 s of SIGTERM", || {
            std::future::ready(child.try_wait().unwrap())
        })
        .await;
        assert_eq!(status.code(), Some(0));
        assert_eq!(
            sb.waha.requests().len(),
            requests,
            "nothing sent after SIGTERM"
        );
    })
    .await
}
