//! The daemon against the CometChat emulator, real HTTP on 127.0.0.1, every test bounded:
//! edits converge, broken edits write nothing, deleted manifests remove nobody, atomic saves
//! and ConfigMap symlink swaps are seen, drift is corrected on resync, quick edits coalesce,
//! faults never remove a wanted member, and stopping finishes the call in flight.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rosterd::daemon::{DaemonOptions, run};
use rosterd::sandbox::cometchat::Scope;
use rosterd::sandbox::{Fault, FaultKind, Sandbox};
use tokio_util::sync::CancellationToken;

use crate::support::{CC_APP, CC_KEY, bounded, cc_state, group, poll, sandbox};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// rosterd.yaml pointed at the sandbox, with the api key in a file (no process-wide env).
pub fn write_root(dir: &Path, sb: &Sandbox, manifests: &str) -> PathBuf {
    let base = sb.base_url(rosterd::provider::Kind::Cometchat).unwrap();
    std::fs::write(dir.join("key"), CC_KEY).unwrap();
    let root = format!(
        "manifests: {manifests}\npeople: people.yaml\nresync: 1h\nproviders:\n  cc:\n    kind: cometchat\n    app_id: it\n    region: eu\n    api_key: {{ file: key }}\n    base_url: {base}\n    rate: 500/s\n    timeout: 5s\n"
    );
    std::fs::write(dir.join("rosterd.yaml"), root).unwrap();
    std::fs::write(dir.join("people.yaml"), "people: {}\n").unwrap();
    dir.join("rosterd.yaml")
}

/// A tree with `groups/team.yaml` wanting bob beside alice.
fn team_tree(sb: &Sandbox) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_root(dir.path(), sb, "groups/");
    std::fs::create_dir(dir.path().join("groups")).unwrap();
    std::fs::write(dir.path().join("groups/team.yaml"), manifest(&["bob"])).unwrap();
    (dir, cfg)
}

fn manifest(members: &[&str]) -> String {
    format!(
        "group: team\nprovider: cc\nid: team\nadmins: [alice]\nparticipants: [{}]\nmax_removals: 100\n",
        members.join(", ")
    )
}

pub fn world() -> rosterd::sandbox::cometchat::State {
    cc_state(
        ["alice", "bob", "carol", "dave", "erin", "zed"].map(String::from),
        vec![(
            "team",
            group(
                Some("alice"),
                &[("alice", Scope::Admin), ("zed", Scope::Participant)],
                &[],
            ),
        )],
    )
}

fn members(sb: &Sandbox) -> Vec<String> {
    sb.cometchat
        .group(CC_APP, "team")
        .map(|g| g.members.keys().cloned().collect())
        .unwrap_or_default()
}

pub async fn until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    poll(secs, what, || std::future::ready(f().then_some(()))).await
}

pub struct Daemon {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub port: u16,
}

pub fn start(config: &Path, resync: Duration) -> Daemon {
    start_debounced(config, resync, Duration::from_millis(200))
}

/// A daemon whose safety rescan never comes within a test.
fn start_debounced(config: &Path, resync: Duration, debounce: Duration) -> Daemon {
    let port = free_port();
    let mut opts = DaemonOptions::new(config);
    opts.listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
    opts.debounce = debounce;
    opts.poll = Duration::from_secs(3600);
    opts.resync = Some(resync);
    opts.grace = Duration::from_secs(10);
    let stop = CancellationToken::new();
    let handle = tokio::spawn(run(opts, stop.clone()));
    Daemon { stop, handle, port }
}

/// Send SIGHUP to this test process (the daemon under test handles it).
fn sighup() {
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
}

impl Daemon {
    pub async fn get(&self, path: &str) -> (u16, String) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let r = reqwest::get(format!("http://127.0.0.1:{}{path}", self.port)).await;
        match r {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(_) => (0, String::new()),
        }
    }
    /// GET `path` until `ok` holds of the body (at most 30 s); returns the body.
    pub async fn get_until(&self, path: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        poll(30, what, || async {
            let body = self.get(path).await.1;
            ok(&body).then_some(body)
        })
        .await
    }
    pub async fn stop(self) {
        self.stop.cancel();
        self.handle.await.unwrap().unwrap();
    }
    /// A metric's value on `/metrics` ([`sample`]).
    pub async fn counter(&self, name: &str) -> u64 {
        sample(&self.get("/metrics").await.1, name)
    }
    /// Wait until `name` reaches at least `n`: a run finished, a rescan happened, as the
    /// daemon itself counts them (rather than a guess at how long they take).
    pub async fn counter_at_least(&self, name: &str, n: u64) {
        poll(30, name, || async {
            (self.counter(name).await >= n).then_some(())
        })
        .await
    }
}

/// A metric's value: one series (`name{label="…"}`), or the sum over a name's series.
fn sample(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Whether the emulator ever removed or banned `who` (kick, single ban, or `usersToBan`).
fn removed(sb: &Sandbox, who: &str) -> bool {
    sb.cometchat.writes().iter().any(|r| {
        (r.method == "DELETE" && r.path.ends_with(&format!("/members/{who}")))
            || (r.method == "POST" && r.path.ends_with(&format!("/bannedusers/{who}")))
            || r.body
                .as_ref()
                .and_then(|b| b.get("usersToBan"))
                .and_then(|b| b.as_array())
                .is_some_and(|a| a.iter().any(|u| u == who))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_converges_on_edits_and_keeps_the_last_valid_version_of_a_broken_file() {
    bounded(60, async {
        let sb = sandbox(world()).await;
        let (dir, cfg) = team_tree(&sb);
        let d = start(&cfg, Duration::from_secs(1));
        until(15, "initial convergence", || {
            members(&sb) == ["alice", "bob"]
        })
        .await;
        assert_eq!(d.get("/healthz").await.0, 200);
        poll(5, "ready once the provider was reached", || async {
            (d.get("/readyz").await.0 == 200).then_some(())
        })
        .await;

        // An edit converges.
        std::fs::write(
            dir.path().join("groups/team.yaml"),
            manifest(&["bob", "carol"]),
        )
        .unwrap();
        until(15, "edit applied", || {
            members(&sb) == ["alice", "bob", "carol"]
        })
        .await;

        // A broken edit writes nothing and shows on /status; the last valid version stays.
        let writes = sb.cometchat.writes().len();
        std::fs::write(
            dir.path().join("groups/team.yaml"),
            "group: team\nprovider: cc\nparticipants: [bob\n",
        )
        .unwrap();
        let status = d
            .get_until("/status", "the file error on /status", |s| {
                s.contains("team.yaml")
            })
            .await;
        assert!(
            status.contains("team.yaml"),
            "the error is on /status: {status}"
        );
        assert!(!status.contains(CC_KEY));
        assert_eq!(
            sb.cometchat.writes().len(),
            writes,
            "a broken edit writes nothing"
        );
        let metrics = d.get("/metrics").await.1;
        assert!(metrics.contains("rosterd_manifest_errors 1"), "{metrics}");
        // The pace the instance runs at (its configured rate; nothing throttled it).
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("rosterd_pace_requests_per_second{provider=\"cc\"}")),
            "{metrics}"
        );

        // Drift made in the service is corrected from the last valid version on the next run.
        sb.cometchat.with_state(|s| {
            s.apps
                .get_mut(CC_APP)
                .unwrap()
                .groups
                .get_mut("team")
                .unwrap()
                .members
                .remove("carol");
        });
        until(15, "drift corrected from the last valid version", || {
            members(&sb) == ["alice", "bob", "carol"]
        })
        .await;
        assert!(!removed(&sb, "bob") && !removed(&sb, "carol"));
        d.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_removes_nobody_when_a_manifest_is_deleted() {
    bounded(60, async {
        // A second group keeps the resync going, so the resyncs after the deletion are counted
        // as they happen rather than waited for.
        let mut w = world();
        w.apps.get_mut(CC_APP).unwrap().groups.insert(
            "other".into(),
            group(Some("alice"), &[("alice", Scope::Admin)], &[]),
        );
        let sb = sandbox(w).await;
        let (dir, cfg) = team_tree(&sb);
        std::fs::write(
            dir.path().join("groups/other.yaml"),
            "group: other\nprovider: cc\nid: other\nadmins: [alice]\n",
        )
        .unwrap();
        let d = start(&cfg, Duration::from_millis(300));
        until(15, "initial convergence", || {
            members(&sb) == ["alice", "bob"]
        })
        .await;
        std::fs::remove_file(dir.path().join("groups/team.yaml")).unwrap();
        d.get_until("/metrics", "the deletion seen", |m| {
            sample(m, "rosterd_managed_groups") == 1
        })
        .await;
        sb.cometchat.with_state(|s| {
            let g = s
                .apps
                .get_mut(CC_APP)
                .unwrap()
                .groups
                .get_mut("team")
                .unwrap();
            g.members.insert("erin".into(), Scope::Participant);
        });
        let writes = sb.cometchat.writes().len();
        // Three resync runs of the other group, each one full period after the deletion.
        let runs = d.counter("rosterd_reconciles_total").await;
        d.counter_at_least("rosterd_reconciles_total", runs + 3)
            .await;
        assert_eq!(
            sb.cometchat.writes().len(),
            writes,
            "an unmanaged group is not touched"
        );
        assert_eq!(members(&sb), ["alice", "bob", "erin"]);
        let status = d.get("/status").await.1;
        assert!(!status.contains("\"team\""), "{status}");
        d.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_sees_atomic_saves_and_configmap_symlink_swaps() {
    bounded(60, async {
        let sb = sandbox(world()).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_root(dir.path(), &sb, "cm/");
        // A ConfigMap volume: cm/team.yaml -> ..data/team.yaml, ..data -> ..v1
        let cm = dir.path().join("cm");
        std::fs::create_dir_all(cm.join("..v1")).unwrap();
        std::fs::write(cm.join("..v1/team.yaml"), manifest(&["bob"])).unwrap();
        std::os::unix::fs::symlink("..v1", cm.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/team.yaml", cm.join("team.yaml")).unwrap();
        let d = start(&cfg, Duration::from_secs(3600));
        until(15, "initial convergence", || {
            members(&sb) == ["alice", "bob"]
        })
        .await;

        // The kubelet's update: a new version folder, then an atomic swap of ..data.
        std::fs::create_dir_all(cm.join("..v2")).unwrap();
        std::fs::write(cm.join("..v2/team.yaml"), manifest(&["bob", "dave"])).unwrap();
        std::os::unix::fs::symlink("..v2", cm.join("..data_tmp")).unwrap();
        std::fs::rename(cm.join("..data_tmp"), cm.join("..data")).unwrap();
        until(15, "symlink swap seen", || {
            members(&sb) == ["alice", "bob", "dave"]
        })
        .await;

        // An editor's atomic save: write a temp file, rename it over the target.
        let target = std::fs::canonicalize(cm.join("team.yaml")).unwrap();
        let tmp = target.with_extension("tmp~");
        std::fs::write(&tmp, manifest(&["bob", "dave", "erin"])).unwrap();
        std::fs::rename(&tmp, &target).unwrap();
        until(15, "atomic save seen", || {
            members(&sb) == ["alice", "bob", "dave", "erin"]
        })
        .await;
        d.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_coalesces_quick_edits_into_one_run() {
    bounded(60, async {
        let sb = sandbox(world()).await;
        let (dir, cfg) = team_tree(&sb);
        let d = start(&cfg, Duration::from_secs(3600));
        until(15, "initial convergence", || {
            members(&sb) == ["alice", "bob"]
        })
        .await;
        // The run that converged has finished (and its verifying read with it) once counted.
        d.counter_at_least("rosterd_reconciles_total", 1).await;
        let watch = "rosterd_rescans_total{reason=\"watch\"}";
        let watch_rescans = d.counter(watch).await;
        let reads_before = sb
            .cometchat
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with("/groups/team"))
            .count();
        std::fs::write(
            dir.path().join("groups/team.yaml"),
            manifest(&["bob", "carol"]),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("groups/team.yaml"),
            manifest(&["bob", "carol", "dave"]),
        )
        .unwrap();
        until(15, "both edits applied", || {
            members(&sb) == ["alice", "bob", "carol", "dave"]
        })
        .await;
        // The edit's run has finished once counted. The two writes came within the debounce,
        // so the watcher handed over one batch: one rescan, hence one run.
        d.counter_at_least("rosterd_reconciles_total", 2).await;
        assert_eq!(
            d.counter(watch).await - watch_rescans,
            1,
            "two quick writes make one rescan"
        );
        let reads = sb
            .cometchat
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with("/groups/team"))
            .count();
        // One run reads the group object once, to plan: the verify after member writes re-reads
        // only the member listing.
        assert_eq!(reads - reads_before, 1, "two quick edits make one run");
        let adds = sb
            .cometchat
            .writes()
            .iter()
            .filter(|r| r.method == "POST")
            .count();
        assert_eq!(
            adds, 2,
            "the initial add and one add carrying both new members"
        );
        d.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_converges_under_injected_faults_and_never_removes_a_wanted_member() {
    bounded(90, async {
        let people: Vec<String> = (0..30).map(|i| format!("p{i:02}")).collect();
        let mut users: Vec<String> = people.clone();
        users.extend(["alice", "zed"].map(String::from));
        // Every wanted member is present with the wrong scope: 30 scope changes and 1 kick.
        let mut live: Vec<(&str, Scope)> = people
            .iter()
            .map(|p| (p.as_str(), Scope::Moderator))
            .collect();
        live.extend([("alice", Scope::Admin), ("zed", Scope::Participant)]);
        let state = cc_state(users, vec![("team", group(Some("alice"), &live, &[]))]);
        let sb = sandbox(state).await;
        sb.cometchat
            .inject(Fault::sometimes(0.07, FaultKind::Status(503)));
        sb.cometchat
            .inject(Fault::sometimes(0.07, FaultKind::Reset));
        sb.cometchat.inject(Fault::sometimes(
            0.06,
            FaultKind::Slow(Duration::from_millis(300)),
        ));
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_root(dir.path(), &sb, "groups/");
        std::fs::create_dir(dir.path().join("groups")).unwrap();
        let refs: Vec<&str> = people.iter().map(String::as_str).collect();
        std::fs::write(dir.path().join("groups/team.yaml"), manifest(&refs)).unwrap();
        let d = start(&cfg, Duration::from_millis(500));
        let mut want: Vec<String> = people.clone();
        want.insert(0, "alice".into());
        let in_sync = |sb: &Sandbox| {
            sb.cometchat.group(CC_APP, "team").is_some_and(|g| {
                g.members.keys().cloned().collect::<Vec<_>>() == want
                    && g.members
                        .iter()
                        .all(|(m, s)| m == "alice" || *s == Scope::Participant)
            })
        };
        until(60, "convergence under 20% faults", || in_sync(&sb)).await;
        for p in &people {
            assert!(!removed(&sb, p), "{p} is wanted and was removed");
        }
        assert!(
            sb.cometchat.requests().iter().any(|r| r.fault.is_some()),
            "faults were injected"
        );
        d.stop().await;
    })
    .await
}

/// A tree whose group needs an add then a kick, with the first write slowed to 1.5 s so a
/// signal lands while it is in flight; returns the config path of a `rosterd run` process.
async fn slow_first_write(sb: &Sandbox, dir: &Path) -> PathBuf {
    sb.cometchat
        .inject(Fault::next(1, FaultKind::Slow(Duration::from_millis(1500))).writes_only());
    let cfg = write_root(dir, sb, "groups/");
    std::fs::create_dir(dir.join("groups")).unwrap();
    std::fs::write(dir.join("groups/team.yaml"), manifest(&["bob", "carol"])).unwrap();
    let root = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("listen: 127.0.0.1:{}\n{root}", free_port())).unwrap();
    cfg
}

fn spawn_daemon(cfg: &Path) -> std::process::Child {
    std::process::Command::new(assert_cmd::cargo::cargo_bin("rosterd"))
        .args(["run", "--config"])
        .arg(cfg)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Wait until the plan's reads are done (the ban list is read last) and the first write is
/// under way.
async fn first_write_in_flight(sb: &Sandbox) {
    until(20, "the plan was read", || {
        sb.cometchat
            .requests()
            .iter()
            .any(|r| r.path.ends_with("/bannedusers"))
    })
    .await;
    // The write after the reads is held 1.5 s by the injected fault, and the emulator logs a
    // request only when it answers: 400 ms in, that write is surely in flight.
    tokio::time::sleep(Duration::from_millis(400)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_sigterm_lets_the_call_in_flight_finish_and_exits_0() {
    bounded(60, async {
        let sb = sandbox(world()).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = slow_first_write(&sb, dir.path()).await;
        let mut child = spawn_daemon(&cfg);
        first_write_in_flight(&sb).await;
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = poll(20, "the exit after SIGTERM", || {
            std::future::ready(child.try_wait().unwrap())
        })
        .await;
        assert_eq!(status.code(), Some(0), "SIGTERM exits 0");
        let writes = sb.cometchat.writes();
        assert_eq!(
            writes.len(),
            1,
            "the call in flight completed, nothing after it: {writes:?}"
        );
        assert_eq!(writes[0].status, 200);
        assert_eq!(
            members(&sb),
            ["alice", "bob", "carol", "zed"],
            "the add landed; the kick was never sent"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_killed_mid_apply_and_restarted_converges_with_no_extra_removals() {
    bounded(60, async {
        let sb = sandbox(world()).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = slow_first_write(&sb, dir.path()).await;
        let mut child = spawn_daemon(&cfg);
        first_write_in_flight(&sb).await;
        child.kill().unwrap(); // SIGKILL mid-write
        child.wait().unwrap();
        let mut child = spawn_daemon(&cfg);
        until(20, "converged after restart", || {
            members(&sb) == ["alice", "bob", "carol"]
        })
        .await;
        let kicks: Vec<_> = sb
            .cometchat
            .writes()
            .into_iter()
            .filter(|r| r.method == "DELETE")
            .collect();
        assert_eq!(kicks.len(), 1, "only zed was ever removed: {kicks:?}");
        assert!(kicks[0].path.ends_with("/members/zed"));
        child.kill().unwrap();
        child.wait().unwrap();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_status_names_a_failed_member_as_the_manifest_does() {
    bounded(60, async {
        let sb = sandbox(world()).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_root(dir.path(), &sb, "groups/");
        std::fs::write(
            dir.path().join("people.yaml"),
            "people:\n  ghosty: { cometchat: ghost }\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("groups")).unwrap();
        std::fs::write(
            dir.path().join("groups/team.yaml"),
            manifest(&["bob", "ghosty"]),
        )
        .unwrap();
        let d = start(&cfg, Duration::from_secs(3600));
        let status = d
            .get_until("/status", "the failed run on /status", |s| {
                s.contains("failed")
            })
            .await;
        assert!(
            status.contains("1 operation(s) failed: add ghosty (ghost)"),
            "{status}"
        );
        d.stop().await;
    })
    .await
}

/// The value of one sample in the Prometheus text, 0 when absent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_daemon_reads_no_file_and_an_edit_writes_only_after_the_debounce() {
    bounded(60, async {
        let sb = sandbox(world()).await;
        let (dir, cfg) = team_tree(&sb);
        let debounce = Duration::from_millis(400);
        let d = start_debounced(&cfg, Duration::from_secs(3600), debounce);
        until(15, "initial convergence", || {
            members(&sb) == ["alice", "bob"]
        })
        .await;
        let before = d.get("/metrics").await.1;
        let reads = sample(&before, "rosterd_file_reads_total");
        assert_eq!(
            reads, 3,
            "one scan at start: rosterd.yaml, people.yaml, team.yaml"
        );

        // Someone reads every file (opens, reads, closes) and touches their metadata: no
        // content changed, so no rescan and no file read, over several debounce periods.
        for f in ["rosterd.yaml", "people.yaml", "key", "groups/team.yaml"] {
            let p = dir.path().join(f);
            std::fs::read(&p).unwrap();
            let perms = std::fs::metadata(&p).unwrap().permissions();
            std::fs::set_permissions(&p, perms).unwrap();
        }
        tokio::time::sleep(debounce * 4).await;
        let idle = d.get("/metrics").await.1;
        assert_eq!(sample(&idle, "rosterd_file_reads_total"), reads, "{idle}");
        assert_eq!(
            sample(&idle, "rosterd_rescans_total{reason=\"watch\"}"),
            0,
            "{idle}"
        );

        // An edit: one rescan, and its first write only once the debounce has passed.
        let writes = sb.cometchat.writes().len();
        let edited = Instant::now();
        std::fs::write(
            dir.path().join("groups/team.yaml"),
            manifest(&["bob", "carol"]),
        )
        .unwrap();
        until(15, "the edit's first write", || {
            sb.cometchat.writes().len() > writes
        })
        .await;
        let first_write = edited.elapsed();
        assert!(
            first_write >= debounce,
            "the first write came {first_write:?} after the edit, before the debounce"
        );
        tokio::time::sleep(debounce * 3).await;
        let after = d.get("/metrics").await.1;
        assert_eq!(
            sample(&after, "rosterd_rescans_total{reason=\"watch\"}"),
            1,
            "{after}"
        );
        assert_eq!(sample(&after, "rosterd_file_reads_total"), reads + 3);
        d.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_at_once_with_nothing_else_reading_the_files() {
    bounded(60, async {
        let sb = sandbox(world()).await;
        let (dir, cfg) = team_tree(&sb);
        // Neither the watcher (an hour's debounce) nor the safety rescan reads the files here.
        let d = start_debounced(&cfg, Duration::from_secs(3600), Duration::from_secs(3600));
        until(15, "initial convergence", || {
            members(&sb) == ["alice", "bob"]
        })
        .await;
        std::fs::write(
            dir.path().join("groups/team.yaml"),
            manifest(&["bob", "carol"]),
        )
        .unwrap();
        sighup();
        until(15, "the edit applied after SIGHUP", || {
            members(&sb) == ["alice", "bob", "carol"]
        })
        .await;
        let m = d.get("/metrics").await.1;
        assert_eq!(
            sample(&m, "rosterd_rescans_total{reason=\"signal\"}"),
            1,
            "{m}"
        );
        assert_eq!(
            sample(&m, "rosterd_rescans_total{reason=\"watch\"}"),
            0,
            "{m}"
        );
        d.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoints_answer_while_a_large_tree_is_rescanned() {
    bounded(120, async {
        let sb = sandbox(world()).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_root(dir.path(), &sb, "groups/");
        // A large people.yaml makes every configuration load slow.
        let mut people = String::from("people:\n");
        for i in 0..20_000 {
            people.push_str(&format!("  person{i:06}: {{ cometchat: user{i:06} }}\n"));
        }
        std::fs::write(dir.path().join("people.yaml"), people).unwrap();
        std::fs::create_dir(dir.path().join("groups")).unwrap();
        std::fs::write(dir.path().join("groups/team.yaml"), manifest(&["bob"])).unwrap();
        let d = start_debounced(&cfg, Duration::from_secs(3600), Duration::from_secs(3600));
        until(60, "initial convergence", || {
            members(&sb) == ["alice", "bob"]
        })
        .await;
        let reads = sample(&d.get("/metrics").await.1, "rosterd_file_reads_total");
        sighup();
        let started = Instant::now();
        let mut answered = Vec::new();
        for path in ["/status", "/readyz", "/metrics", "/healthz"] {
            let t = Instant::now();
            let (code, body) = d.get(path).await;
            answered.push((path, code, t.elapsed()));
            if path == "/metrics" {
                assert_eq!(
                    sample(&body, "rosterd_rescans_total{reason=\"signal\"}"),
                    1,
                    "the rescan started"
                );
                assert_eq!(
                    sample(&body, "rosterd_file_reads_total"),
                    reads,
                    "... and had not finished ({:?} after SIGHUP)",
                    started.elapsed()
                );
            }
        }
        for (path, code, took) in answered {
            assert_eq!(code, 200, "{path}");
            assert!(took < Duration::from_secs(1), "{path} took {took:?}");
        }
        // The rescan ends and is folded in.
        poll(60, "the rescan to finish", || async {
            (sample(&d.get("/metrics").await.1, "rosterd_file_reads_total") != reads).then_some(())
        })
        .await;
        d.stop().await;
    })
    .await
}
