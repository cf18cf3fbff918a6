//! The fixture kit of the integration tests: a sandbox on ephemeral ports, provider instances
//! pointed at it, targets, desired groups and batches of any kind, a run context, a time bound
//! for every test, and the captures the secret tests search. Each provider's module adds only
//! its own world (seed state) and client builder.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use rosterd::config::secret::{Secret, SecretRef};
use rosterd::model::{
    Batch, DesiredGroup, GroupId, MemberId, Op, OpKind, RemovalLimit, Role, Unlisted,
};
use rosterd::provider::cometchat::{CometChat, Settings};
use rosterd::provider::{CommonSettings, Instance, Kind, KindSettings, Provider};
use rosterd::reconcile::Target;
use rosterd::sandbox::cometchat::{App, Group, Scope, State};
use rosterd::sandbox::{Ports, Sandbox, SandboxState};
use tokio_util::sync::CancellationToken;

/// The API key of the test app. It must never show up in any output.
pub const CC_KEY: &str = "0123456789abcdef0123456789abcdef0badc0de";
/// The test app's id in the emulator state.
pub const CC_APP: &str = "it";

/// Run a test body, failing it if it takes longer than `secs`.
pub async fn bounded<T>(secs: u64, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .expect("test exceeded its time bound")
}

/// Poll `check` every 50 ms until it yields a value, failing after `secs` seconds. The one
/// real-time wait of the suite, for what only real time moves: a daemon process or task
/// reacting to real file-system events and signals. Pacing, backoff and schedules are tested on
/// tokio's paused clock instead (`provider/http_tests.rs`, `provider/pace.rs`,
/// `daemon/scheduler.rs`, the `start_paused` integration tests).
pub async fn poll<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A CometChat world: the given users, and groups given as (guid, owner, members, banned).
pub fn cc_state(users: impl IntoIterator<Item = String>, groups: Vec<(&str, Group)>) -> State {
    let app = App {
        api_key: CC_KEY.into(),
        users: users.into_iter().collect(),
        groups: groups
            .into_iter()
            .map(|(g, grp)| (g.to_string(), grp))
            .collect(),
    };
    State {
        apps: BTreeMap::from([(CC_APP.to_string(), app)]),
        rate_limit: None,
        page_cap: None,
        echo_credentials: false,
    }
}

/// A group with an owner, members and banned users.
pub fn group(owner: Option<&str>, members: &[(&str, Scope)], banned: &[&str]) -> Group {
    Group {
        name: None,
        owner: owner.map(String::from),
        members: members.iter().map(|(u, s)| (u.to_string(), *s)).collect(),
        banned: banned
            .iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>(),
    }
}

/// Start a sandbox of the given emulator states on ephemeral ports.
pub async fn start(state: SandboxState) -> Sandbox {
    Sandbox::start(state, Ports::EPHEMERAL, CancellationToken::new())
        .await
        .expect("sandbox starts")
}

/// Start a sandbox whose CometChat emulator holds `cometchat`.
pub async fn sandbox(cometchat: State) -> Sandbox {
    start(SandboxState {
        cometchat,
        ..SandboxState::default()
    })
    .await
}

/// An instance named `name` of `kind` with `settings`, pointed at the sandbox's emulator of
/// its kind (where it has one), with a generous rate so tests are paced by the emulator, not by
/// the provider's default, and a 5 s timeout.
pub fn instance_of(sb: &Sandbox, name: &str, kind: Kind, settings: KindSettings) -> Instance {
    Instance {
        name: name.into(),
        kind,
        common: CommonSettings {
            base_url: sb.base_url(kind).map(String::from),
            rate: Some(1000.0),
            timeout: Some(Duration::from_secs(5)),
            ..CommonSettings::default()
        },
        settings,
    }
}

/// The targets of a run: one instance and its client.
pub fn one_target(
    instance: Instance,
    provider: impl Provider + 'static,
) -> BTreeMap<String, Target> {
    BTreeMap::from([(
        instance.name.clone(),
        Target::new(instance, std::sync::Arc::new(provider)),
    )])
}

/// A desired group of instance `provider` (of `kind`): `members` as given, unlisted members
/// removed, no bans or mutes managed, no removal cap (tests set their own drift).
pub fn desired_of(
    kind: Kind,
    provider: &str,
    name: String,
    id: &str,
    owner: Option<MemberId>,
    members: impl IntoIterator<Item = (MemberId, Role)>,
) -> DesiredGroup {
    DesiredGroup {
        name,
        provider: provider.into(),
        kind,
        id: GroupId(id.to_string()),
        owner,
        members: members.into_iter().collect(),
        bans: None,
        mutes: None,
        unlisted: Unlisted::Remove,
        max_removals: RemovalLimit::Count(100_000),
        protected: BTreeSet::new(),
        source: "tests/it".into(),
        names: Default::default(),
    }
}

pub fn gid(s: &str) -> GroupId {
    GroupId(s.to_string())
}

pub fn batch(kind: OpKind, ops: Vec<Op>) -> Batch {
    Batch { kind, ops }
}

/// A `cometchat` instance named `cc` pointed at the sandbox; `rate` replaces the test rate.
pub fn cc_instance(sb: &Sandbox, rate: Option<f64>) -> Instance {
    let mut i = instance_of(
        sb,
        "cc",
        Kind::Cometchat,
        KindSettings::new(Settings {
            app_id: "itapp".into(),
            region: "eu".into(),
            api_key: SecretRef::Env("ROSTERD_IT_UNSET_COMETCHAT_KEY".into()),
        }),
    );
    if let Some(r) = rate {
        i.common.rate = Some(r);
    }
    i
}

/// A client of the sandbox's CometChat emulator with the test key.
pub fn cc_client(sb: &Sandbox, page_size: usize) -> CometChat {
    CometChat::with_key(&cc_instance(sb, None), Secret::new(CC_KEY))
        .expect("client builds")
        .with_page_size(page_size)
}

/// Users `prefix000` .. `prefix{n-1}`.
pub fn users(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:03}")).collect()
}

/// A desired CometChat group of instance `cc`, removing unlisted members, with no removal cap.
pub fn desired(
    id: &str,
    owner: Option<&str>,
    members: &[(&str, Role)],
    bans: Option<&[&str]>,
) -> DesiredGroup {
    let norm = |s: &str| {
        Kind::Cometchat
            .normalize_member(s)
            .expect("a valid CometChat id")
    };
    let mut d = desired_of(
        Kind::Cometchat,
        "cc",
        format!("{id}-group"),
        id,
        owner.map(norm),
        members.iter().map(|(m, r)| (norm(m), *r)),
    );
    d.bans = bans.map(|b| b.iter().map(|m| norm(m)).collect());
    d
}

/// The reconcile targets: instance `cc` against the sandbox, with the given client rate.
pub fn cc_targets(sb: &Sandbox, rate: Option<f64>) -> BTreeMap<String, Target> {
    let instance = cc_instance(sb, rate);
    let client = CometChat::with_key(&instance, Secret::new(CC_KEY)).expect("client builds");
    one_target(instance, client)
}

/// The context of a test run: the wall-clock time now (advancing with tokio's clock, so paused
/// in tests on paused time), never cancelled.
pub fn ctx() -> rosterd::ctx::Ctx {
    rosterd::ctx::Ctx::at(std::time::SystemTime::now())
}

/// Run options: apply (or only plan), mass removals allowed (the tests set their own drift).
pub fn run_opts(apply: bool) -> rosterd::reconcile::RunOptions {
    rosterd::reconcile::RunOptions {
        apply,
        allow_mass_removal: true,
        ..Default::default()
    }
}

/// A `Write` that appends to a shared buffer: captured printed output or log lines.
#[derive(Clone, Default)]
pub struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Capture every log line of this thread, at every level, while the guard lives.
pub fn capture_logs() -> (Captured, tracing::subscriber::DefaultGuard) {
    let logs = Captured::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}

/// Apply `groups` (mass removals allowed) on the test context.
pub async fn apply(
    groups: &[DesiredGroup],
    targets: &BTreeMap<String, Target>,
) -> rosterd::reconcile::Report {
    rosterd::reconcile::run(&ctx(), groups, targets, &run_opts(true), None).await
}

/// Plan `groups` without applying them, on the test context.
pub async fn plan_only(
    groups: &[DesiredGroup],
    targets: &BTreeMap<String, Target>,
) -> rosterd::reconcile::Report {
    rosterd::reconcile::run(&ctx(), groups, targets, &run_opts(false), None).await
}

/// Apply `groups` with an audit log, and return the report with everything the run shows a
/// user ([`everything_shown`]).
pub async fn applied_and_shown(
    groups: &[DesiredGroup],
    targets: &BTreeMap<String, Target>,
) -> (rosterd::reconcile::Report, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let audit_path = dir.path().join("audit.jsonl");
    let audit = rosterd::audit::AuditLog::open(&audit_path).unwrap();
    let report =
        rosterd::reconcile::run(&ctx(), groups, targets, &run_opts(true), Some(&audit)).await;
    let shown = everything_shown(&report, &audit_path);
    (report, shown)
}

/// Everything a run shows a user, as text: the plan in its three renderings, the report (Debug
/// and JSON) and the audit log. Secret tests add their provider's own pieces and search it all.
pub fn everything_shown(
    report: &rosterd::reconcile::Report,
    audit: &std::path::Path,
) -> Vec<String> {
    let plan = report.plan();
    vec![
        rosterd::plan::render::text(&plan, false),
        rosterd::plan::render::json(&plan).to_string(),
        rosterd::plan::render::markdown(&plan),
        format!("{report:?}"),
        serde_json::to_string(report).unwrap(),
        std::fs::read_to_string(audit).unwrap(),
    ]
}
