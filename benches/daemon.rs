//! The daemon's figures (issue: daemon benchmarks). Not a criterion loop: each figure is one
//! bounded scenario against the CometChat emulator on 127.0.0.1, printed as a line.
//!
//! Run: `cargo bench --bench daemon` (about two minutes), or `cargo bench --bench daemon --
//! idle resync` for some. Figures:
//! 1. edit -> first write: time from a manifest write to the first write call the emulator sees;
//! 2. convergence of 100 groups under a provider rate limit vs (write calls / rate) and vs
//!    (all requests / rate);
//! 3. idle RSS and CPU of `rosterd run` with 1,000 groups in sync (a child process, measured
//!    from /proc), next to the RSS of `rosterd validate` on the same tree (the loaded state);
//! 4. reads per second over one resync period of 1,000 groups in sync (flat, not a burst).

use std::path::Path;
use std::time::{Duration, Instant};

use rosterd::daemon::{DaemonOptions, run};
use rosterd::provider::Kind;
use rosterd::sandbox::cometchat::{App, Group, RateLimit, Scope, State};
use rosterd::sandbox::{Ports, Sandbox, SandboxState};
use tokio_util::sync::CancellationToken;

const KEY: &str = "bench-key-0000000000000000000000000000000";

fn world(groups: usize, members_live: &[&str], rate: Option<RateLimit>) -> State {
    let mut users: std::collections::BTreeSet<String> =
        ["alice", "bob", "carol"].map(String::from).into();
    users.extend((0..groups).map(|i| format!("u{i:04}")));
    let groups = (0..groups)
        .map(|i| {
            let members = members_live
                .iter()
                .map(|m| {
                    (
                        m.to_string(),
                        if *m == "alice" {
                            Scope::Admin
                        } else {
                            Scope::Participant
                        },
                    )
                })
                .collect();
            (
                format!("g{i:04}"),
                Group {
                    name: None,
                    owner: Some("alice".into()),
                    members,
                    banned: Default::default(),
                },
            )
        })
        .collect();
    State {
        apps: [(
            "bench".to_string(),
            App {
                api_key: KEY.into(),
                users,
                groups,
            },
        )]
        .into(),
        rate_limit: rate,
        page_cap: None,
        echo_credentials: false,
    }
}

fn tree(dir: &Path, base: &str, groups: usize, rate: &str, members: impl Fn(usize) -> String) {
    tree_resync(dir, base, groups, rate, "1h", members)
}

fn tree_resync(
    dir: &Path,
    base: &str,
    groups: usize,
    rate: &str,
    resync: &str,
    members: impl Fn(usize) -> String,
) {
    std::fs::create_dir_all(dir.join("groups")).unwrap();
    std::fs::write(dir.join("key"), KEY).unwrap();
    std::fs::write(
        dir.join("rosterd.yaml"),
        format!("manifests: groups/\nresync: {resync}\nlisten: 127.0.0.1:0\nproviders:\n  cc:\n    kind: cometchat\n    app_id: bench\n    region: eu\n    api_key: {{ file: key }}\n    base_url: {base}\n    rate: {rate}\n"),
    )
    .unwrap();
    let mut text = String::new();
    for i in 0..groups {
        text.push_str(&format!(
            "---\ngroup: g{i:04}\nprovider: cc\nid: g{i:04}\nadmins: [alice]\nparticipants: [{}]\n",
            members(i)
        ));
    }
    std::fs::write(dir.join("groups/all.yaml"), text).unwrap();
}

async fn wait(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while !f() {
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

async fn sandbox(state: State) -> Sandbox {
    Sandbox::start(
        SandboxState {
            cometchat: state,
            ..SandboxState::default()
        },
        Ports::EPHEMERAL,
        CancellationToken::new(),
    )
    .await
    .unwrap()
}

async fn edit_to_first_write() {
    let sb = sandbox(world(1, &["alice", "bob"], None)).await;
    let dir = tempfile::tempdir().unwrap();
    tree(
        dir.path(),
        sb.base_url(Kind::Cometchat).unwrap(),
        1,
        "1000/s",
        |_| "bob".into(),
    );
    let mut opts = DaemonOptions::new(&dir.path().join("rosterd.yaml"));
    opts.listen = Some("127.0.0.1:0".parse().unwrap());
    let debounce = opts.debounce;
    let stop = CancellationToken::new();
    let h = tokio::spawn(run(opts, stop.clone()));
    assert!(wait(10, || !sb.cometchat.requests().is_empty()).await);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut samples = Vec::new();
    for i in 0..8 {
        let before = sb.cometchat.writes().len();
        let who = if i % 2 == 0 { "bob, carol" } else { "bob" };
        let t = Instant::now();
        std::fs::write(
            dir.path().join("groups/all.yaml"),
            format!(
                "group: g0000\nprovider: cc\nid: g0000\nadmins: [alice]\nparticipants: [{who}]\n"
            ),
        )
        .unwrap();
        assert!(
            wait(10, || sb.cometchat.writes().len() > before).await,
            "no write after the edit"
        );
        samples.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    samples.sort();
    println!(
        "edit -> first write: median {:?}, min {:?}, max {:?} over {} edits (debounce {:?}; target debounce + 200 ms = {:?})",
        samples[samples.len() / 2],
        samples[0],
        samples[samples.len() - 1],
        samples.len(),
        debounce,
        debounce + Duration::from_millis(200)
    );
    stop.cancel();
    h.await.unwrap().unwrap();
}

async fn hundred_groups_under_a_rate_limit() {
    let rate = 20u32;
    let sb = sandbox(world(100, &["alice"], Some(RateLimit::per_second(rate)))).await;
    let dir = tempfile::tempdir().unwrap();
    // Each group misses one member: one add call per group.
    tree(
        dir.path(),
        sb.base_url(Kind::Cometchat).unwrap(),
        100,
        &format!("{rate}/s"),
        |i| format!("u{i:04}"),
    );
    let mut opts = DaemonOptions::new(&dir.path().join("rosterd.yaml"));
    opts.listen = Some("127.0.0.1:0".parse().unwrap());
    let stop = CancellationToken::new();
    let t = Instant::now();
    let h = tokio::spawn(run(opts, stop.clone()));
    let done = wait(300, || {
        let st = sb.cometchat.state();
        st.apps["bench"]
            .groups
            .iter()
            .all(|(g, grp)| grp.members.len() == 2 || g.is_empty())
    })
    .await;
    let elapsed = t.elapsed();
    assert!(done, "100 groups did not converge");
    let reqs = sb.cometchat.requests();
    let writes = reqs.iter().filter(|r| r.is_write()).count();
    let throttled = reqs.iter().filter(|r| r.status == 429).count();
    let served = reqs.len() - throttled;
    let ideal_writes = writes as f64 / rate as f64;
    let ideal_all = served as f64 / rate as f64;
    println!(
        "100 groups at {rate} req/s: converged in {:.2} s; {writes} write calls ({:.2} s at the rate: {:.2}x), {served} requests in all incl. reads ({:.2} s: {:.2}x), {throttled} answered 429",
        elapsed.as_secs_f64(),
        ideal_writes,
        elapsed.as_secs_f64() / ideal_writes,
        ideal_all,
        elapsed.as_secs_f64() / ideal_all
    );
    stop.cancel();
    h.await.unwrap().unwrap();
}

/// The same 100 groups when the limit is on writes (WhatsApp-style pacing: `interval` between
/// write calls, reads unpaced): convergence against (write calls / write rate).
async fn hundred_groups_under_a_write_pace() {
    let per_sec = 10.0;
    let sb = sandbox(world(100, &["alice"], None)).await;
    let dir = tempfile::tempdir().unwrap();
    tree(
        dir.path(),
        sb.base_url(Kind::Cometchat).unwrap(),
        100,
        "1000/s",
        |i| format!("u{i:04}"),
    );
    let root = std::fs::read_to_string(dir.path().join("rosterd.yaml")).unwrap();
    std::fs::write(
        dir.path().join("rosterd.yaml"),
        format!("{root}    interval: 100ms\n"),
    )
    .unwrap();
    let mut opts = DaemonOptions::new(&dir.path().join("rosterd.yaml"));
    opts.listen = Some("127.0.0.1:0".parse().unwrap());
    let stop = CancellationToken::new();
    let t = Instant::now();
    let h = tokio::spawn(run(opts, stop.clone()));
    let done = wait(300, || {
        sb.cometchat.state().apps["bench"]
            .groups
            .values()
            .all(|g| g.members.len() == 2)
    })
    .await;
    let elapsed = t.elapsed();
    assert!(done, "100 groups did not converge");
    let writes = sb
        .cometchat
        .requests()
        .iter()
        .filter(|r| r.is_write())
        .count();
    let ideal = writes as f64 / per_sec;
    println!(
        "100 groups, writes paced at {per_sec}/s (interval 100ms): converged in {:.2} s; {writes} write calls ({ideal:.2} s at the pace: {:.2}x)",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() / ideal
    );
    stop.cancel();
    h.await.unwrap().unwrap();
}

fn rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
}

async fn idle_with_a_thousand_groups() {
    let sb = sandbox(world(1000, &["alice", "bob"], None)).await;
    let dir = tempfile::tempdir().unwrap();
    tree(
        dir.path(),
        sb.base_url(Kind::Cometchat).unwrap(),
        1000,
        "1000/s",
        |_| "bob".into(),
    );
    let exe = env!("CARGO_BIN_EXE_rosterd");
    let cfg = dir.path().join("rosterd.yaml");
    let validate = std::process::Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .arg(exe)
        .args(["validate", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let loaded_kb: u64 = String::from_utf8_lossy(&validate.stderr)
        .trim()
        .lines()
        .last()
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut child = std::process::Command::new(exe)
        .args(["run", "--config"])
        .arg(&cfg)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    // All 1,000 groups read once (3 reads each), then idle.
    assert!(
        wait(120, || sb.cometchat.requests().len() >= 3000).await,
        "initial pass did not finish"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    // 60 s: two safety rescans (every 30 s) fall inside the window.
    let (t0, c0) = (Instant::now(), cpu_ticks(pid));
    tokio::time::sleep(Duration::from_secs(60)).await;
    let ticks = cpu_ticks(pid) - c0;
    let cpu = ticks as f64 / 100.0 / t0.elapsed().as_secs_f64() * 100.0;
    let rss = rss_kb(pid);
    println!(
        "idle with 1,000 groups: RSS {:.1} MB (`rosterd validate` of the same tree peaks at {:.1} MB: +{:.1} MB), CPU {:.2}% over 60 s",
        rss as f64 / 1024.0,
        loaded_kb as f64 / 1024.0,
        (rss as f64 - loaded_kb as f64) / 1024.0,
        cpu
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// Reads per second over one resync period of 1,000 groups in sync (`rosterd run` child
/// process, resync 30 s): each group has its own phase, so the reads come flat, not in a burst.
async fn resync_reads_of_a_thousand_groups() {
    let period = 30u64;
    let sb = sandbox(world(1000, &["alice", "bob"], None)).await;
    let dir = tempfile::tempdir().unwrap();
    tree_resync(
        dir.path(),
        sb.base_url(Kind::Cometchat).unwrap(),
        1000,
        "1000/s",
        &format!("{period}s"),
        |_| "bob".into(),
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rosterd"))
        .args(["run", "--config"])
        .arg(dir.path().join("rosterd.yaml"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    assert!(
        wait(120, || sb.cometchat.requests().len() >= 3000).await,
        "initial pass did not finish"
    );
    let initial = started.elapsed();
    // The first period overlaps the initial pass (groups whose phase comes early resync while
    // later ones still have their first run): count the second period, a steady one.
    tokio::time::sleep(Duration::from_secs(period).saturating_sub(initial)).await;
    let mut counts = Vec::new();
    let mut last = sb.cometchat.requests().len();
    for _ in 0..period {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = sb.cometchat.requests().len();
        counts.push(now - last);
        last = now;
    }
    let total: usize = counts.iter().sum();
    let mean = total as f64 / period as f64;
    let mut sorted = counts.clone();
    sorted.sort();
    println!(
        "resync of 1,000 groups in sync over their second period ({period} s; the initial pass took {:.1} s): {total} reads, per second min {} / median {} / max {} (mean {mean:.0}; max/mean {:.2}); every second: {counts:?}",
        initial.as_secs_f64(),
        sorted[0],
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1],
        sorted[sorted.len() - 1] as f64 / mean
    );
    let _ = child.kill();
    let _ = child.wait();
}

fn main() {
    // `cargo bench --bench daemon [-- name...]`: every scenario, or those whose name contains
    // one of the words given (edit, hundred, idle, resync).
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let pick = |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if pick("edit") {
            edit_to_first_write().await;
        }
        if pick("hundred-rate") {
            hundred_groups_under_a_rate_limit().await;
        }
        if pick("hundred-pace") {
            hundred_groups_under_a_write_pace().await;
        }
        if pick("idle") {
            idle_with_a_thousand_groups().await;
        }
        if pick("resync") {
            resync_reads_of_a_thousand_groups().await;
        }
    });
}
