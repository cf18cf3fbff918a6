//! Tencent Cloud Chat: the client against the stateful emulator over real HTTP. Time is a
//! fixed clock shared by the emulator, the client and the planner, so timed mutes are exact and
//! no test sleeps to let one expire.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rosterd::config::secret::{Secret, SecretRef};
use rosterd::ctx::Ctx;
use rosterd::model::*;
use rosterd::plan::render;
use rosterd::provider::tencent::{MaxBatch, Settings, Tencent};
use rosterd::provider::{ErrorClass, Instance, Kind, KindSettings, Provider};
use rosterd::reconcile::{self, GroupStatus, Report, RunOptions, Target};
use rosterd::sandbox::tencent::{
    App, FOREVER, Group, GroupType, Limits, MemberRole, RateLimit, State,
};
use rosterd::sandbox::{Fault, FaultKind, Sandbox, SandboxState};

use crate::support::{bounded, desired_of, gid, instance_of, one_target, start, users};

const APP: u64 = 1_400_000_042;
/// The app's key. It must never show up in any output.
const KEY: &str = "it-tencent-5bd2850fff3ecb11d7c805251c51ee46";
/// The fixed "now" of the tests.
const T: u64 = 1_800_000_000;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// A run's context whose clock reads `secs`.
fn ctx_at(secs: u64) -> Ctx {
    Ctx::at(at(secs))
}

/// A run's context on the emulator's clock (which stands at `T`).
fn ctx() -> Ctx {
    ctx_at(T)
}

fn mid(s: &str) -> MemberId {
    MemberId::new(s)
}

fn group(ty: GroupType, owner: Option<&str>, members: &[(&str, MemberRole)]) -> Group {
    Group {
        group_type: ty,
        owner: owner.map(String::from),
        members: members.iter().map(|(a, r)| (a.to_string(), *r)).collect(),
        ..Group::default()
    }
}

fn world(accounts: &[String], groups: Vec<(&str, Group)>, limits: Limits) -> State {
    State {
        apps: BTreeMap::from([(
            APP,
            App {
                secret_key: KEY.into(),
                admin: "administrator".into(),
                accounts: accounts.iter().cloned().collect(),
                bans_enabled: true,
                limits,
                groups: groups
                    .into_iter()
                    .map(|(g, grp)| (g.to_string(), grp))
                    .collect(),
            },
        )]),
        rate_limit: None,
        echo_credentials: false,
    }
}

/// A sandbox whose Tencent emulator's clock stands at `T`.
async fn sandbox(state: State) -> Sandbox {
    let sb = start(SandboxState {
        tencent: state,
        ..SandboxState::default()
    })
    .await;
    sb.tencent.set_now(Some(at(T)));
    sb
}

fn instance(sb: &Sandbox, max_batch: Option<MaxBatch>) -> Instance {
    instance_of(
        sb,
        "tim",
        Kind::Tencent,
        KindSettings::new(Settings {
            sdk_app_id: APP,
            identifier: "administrator".into(),
            secret_key: SecretRef::Env("ROSTERD_IT_UNSET_TENCENT_KEY".into()),
            region: None,
            max_batch,
        }),
    )
}

fn client(inst: &Instance, key: &str) -> Tencent {
    Tencent::with_key(inst, Secret::new(key)).expect("client builds")
}

fn targets(sb: &Sandbox, max_batch: Option<MaxBatch>) -> BTreeMap<String, Target> {
    let inst = instance(sb, max_batch);
    let provider = client(&inst, KEY);
    one_target(inst, provider)
}

fn opts(apply: bool) -> RunOptions {
    RunOptions {
        apply,
        allow_mass_removal: true,
        ..RunOptions::default()
    }
}

fn desired(id: &str, owner: Option<&str>, members: &[(&str, Role)]) -> DesiredGroup {
    desired_of(
        Kind::Tencent,
        "tim",
        format!("{id}-group"),
        id,
        owner.map(mid),
        members.iter().map(|(m, r)| (mid(m), *r)),
    )
}

fn write_calls(sb: &Sandbox) -> usize {
    sb.tencent.writes().len()
}

fn role_of(r: Role) -> MemberRole {
    match r {
        Role::Admin => MemberRole::Admin,
        _ => MemberRole::Member,
    }
}

#[tokio::test]
async fn tencent_round_trip_converges_with_timed_mutes_bans_and_owner_then_stays_quiet() {
    bounded(60, async {
        let mut accounts = users("p", 120);
        accounts.extend(
            [
                "owner0", "alice", "demoted", "gone1", "gone2", "mallory", "forgiven", "mexp",
                "mext", "msame", "mun", "mforever", "new1", "new2",
            ]
            .map(String::from),
        );
        let mut live: Vec<(&str, MemberRole)> = accounts[..120]
            .iter()
            .map(|a| (a.as_str(), MemberRole::Member))
            .collect();
        live.extend([
            ("alice", MemberRole::Member),
            ("demoted", MemberRole::Admin),
            ("gone1", MemberRole::Member),
            ("gone2", MemberRole::Admin),
            ("mallory", MemberRole::Member),
            ("mexp", MemberRole::Member),
            ("mext", MemberRole::Member),
            ("msame", MemberRole::Member),
            ("mun", MemberRole::Member),
            ("mforever", MemberRole::Member),
        ]);
        let mut g = group(GroupType::Public, Some("owner0"), &live);
        g.muted = BTreeMap::from([
            ("mexp".into(), T - 100),   // expired: the manifest wants it again
            ("mext".into(), T + 60),    // ends soon: the manifest extends it
            ("msame".into(), T + 3600), // already right
            ("mun".into(), T + 1000),   // not in the manifest: unmuted
        ]);
        g.banned = BTreeMap::from([("forgiven".into(), FOREVER)]);
        let sb = sandbox(world(&accounts, vec![("@TGS#round", g)], Limits::default())).await;

        let mut want: Vec<(&str, Role)> = accounts[..120]
            .iter()
            .map(|a| (a.as_str(), Role::Participant))
            .collect();
        want.extend([
            ("owner0", Role::Admin),
            ("alice", Role::Admin),
            ("demoted", Role::Participant),
            ("mexp", Role::Participant),
            ("mext", Role::Participant),
            ("msame", Role::Participant),
            ("mun", Role::Participant),
            ("mforever", Role::Participant),
            ("new1", Role::Participant),
            ("new2", Role::Admin),
        ]);
        let mut d = desired("@TGS#round", Some("alice"), &want);
        d.bans = Some(BTreeSet::from([mid("mallory")]));
        d.mutes = Some(BTreeMap::from([
            (mid("mexp"), Mute::Until(at(T + 7200))),
            (mid("mext"), Mute::Until(at(T + 86_400))),
            (mid("msame"), Mute::Until(at(T + 3600))),
            (mid("mforever"), Mute::Indefinite),
            (mid("new1"), Mute::Until(at(T + 600))),
        ]));
        let t = targets(&sb, None);

        let first =
            reconcile::run(&ctx_at(T), std::slice::from_ref(&d), &t, &opts(true), None).await;
        let g0 = &first.groups[0];
        assert_eq!(
            g0.status,
            GroupStatus::Applied,
            "{:?} {:?}",
            g0.error,
            g0.drift
        );
        let plan = g0.plan.as_ref().unwrap();
        for kind in [
            OpKind::Add,
            OpKind::Promote,
            OpKind::Demote,
            OpKind::Remove,
            OpKind::Mute,
            OpKind::Unmute,
            OpKind::Ban,
            OpKind::Unban,
            OpKind::TransferOwner,
        ] {
            assert!(plan.count(kind) > 0, "the drift covers {kind}");
        }

        // The emulator now holds exactly the manifest.
        let after = sb.tencent.group(APP, "@TGS#round").unwrap();
        assert_eq!(after.owner.as_deref(), Some("alice"));
        let mut expect: BTreeMap<String, MemberRole> = d
            .members
            .iter()
            .map(|(m, r)| (m.0.clone(), role_of(*r)))
            .collect();
        expect.insert("alice".into(), MemberRole::Owner);
        assert_eq!(after.members, expect);
        assert_eq!(
            after.muted,
            BTreeMap::from([
                ("mexp".to_string(), T + 7200),
                ("mext".to_string(), T + 86_400),
                ("msame".to_string(), T + 3600),
                ("mforever".to_string(), FOREVER),
                ("new1".to_string(), T + 600),
            ])
        );
        assert_eq!(
            after.banned.keys().cloned().collect::<Vec<_>>(),
            vec!["mallory".to_string()]
        );

        let second =
            reconcile::run(&ctx_at(T), std::slice::from_ref(&d), &t, &opts(false), None).await;
        assert!(second.plan().is_empty(), "{:?}", second.plan());
        sb.tencent.clear_log();
        let again =
            reconcile::run(&ctx_at(T), std::slice::from_ref(&d), &t, &opts(true), None).await;
        assert_eq!(again.groups[0].status, GroupStatus::InSync);
        assert_eq!(write_calls(&sb), 0, "a converged group takes no write call");

        // Two hours later new1's and mexp's mutes have ended on both sides: still nothing to do.
        sb.tencent.set_now(Some(at(T + 7300)));
        let later = reconcile::run(
            &ctx_at(T + 7300),
            std::slice::from_ref(&d),
            &t,
            &opts(true),
            None,
        )
        .await;
        assert!(later.plan().is_empty(), "{:?}", later.plan());
        assert_eq!(write_calls(&sb), 0);
        sb.shutdown().await;
    })
    .await;
}

/// Drift of 400 adds, 150 removals and 200 mutes (one end): the write calls it takes.
async fn large_drift(max_batch: Option<MaxBatch>, limits: Limits) -> (usize, usize) {
    let kept = users("k", 200);
    let gone = users("r", 150);
    let new = users("n", 400);
    let accounts: Vec<String> = kept
        .iter()
        .chain(&gone)
        .chain(&new)
        .cloned()
        .chain(["boss".to_string()])
        .collect();
    let live: Vec<(&str, MemberRole)> = kept
        .iter()
        .chain(&gone)
        .map(|a| (a.as_str(), MemberRole::Member))
        .collect();
    let g = group(GroupType::Public, Some("boss"), &live);
    let sb = sandbox(world(&accounts, vec![("@TGS#big", g)], limits)).await;
    let want: Vec<(&str, Role)> = kept
        .iter()
        .chain(&new)
        .map(|a| (a.as_str(), Role::Participant))
        .chain([("boss", Role::Admin)])
        .collect();
    let mut d = desired("@TGS#big", Some("boss"), &want);
    d.mutes = Some(
        kept.iter()
            .map(|k| (mid(k), Mute::Until(at(T + 3600))))
            .collect(),
    );
    let t = targets(&sb, max_batch);
    let report = reconcile::run(&ctx_at(T), std::slice::from_ref(&d), &t, &opts(true), None).await;
    assert_eq!(
        report.groups[0].status,
        GroupStatus::Applied,
        "{:?}",
        report.groups[0].error
    );
    let after = sb.tencent.group(APP, "@TGS#big").unwrap();
    assert_eq!(after.members.len(), 601);
    assert_eq!(after.muted.len(), 200);
    assert!(after.muted.values().all(|u| *u == T + 3600));
    let calls = write_calls(&sb);
    assert_eq!(report.calls(), calls, "one request per planned call");
    sb.shutdown().await;
    (calls, report.groups[0].plan.as_ref().unwrap().calls())
}

#[tokio::test]
async fn tencent_large_drift_takes_the_minimum_write_calls() {
    bounded(60, async {
        // Defaults: 20 adds, 100 deletes, 500 mutes per call.
        let minimum = 400usize.div_ceil(20) + 150usize.div_ceil(100) + 200usize.div_ceil(500);
        let (calls, planned) = large_drift(None, Limits::default()).await;
        println!("tencent 400 adds/150 removals/200 mutes, default maxima: {calls} write calls, minimum {minimum}");
        assert_eq!((calls, planned), (minimum, minimum));

        // An app whose service takes more per call, with the instance's maxima raised to match.
        let raised = MaxBatch {
            add: Some(300),
            remove: Some(500),
            ..MaxBatch::default()
        };
        let limits = Limits {
            add: 300,
            delete: 500,
            ..Limits::default()
        };
        let minimum = 400usize.div_ceil(300) + 150usize.div_ceil(500) + 200usize.div_ceil(500);
        let (calls, _) = large_drift(Some(raised), limits).await;
        println!("tencent 400 adds/150 removals/200 mutes, maxima raised to 300/500/500: {calls} write calls, minimum {minimum}");
        assert_eq!(calls, minimum);
    })
    .await;
}

#[tokio::test]
async fn tencent_over_limit_batches_are_split_and_the_rest_goes_on() {
    bounded(60, async {
        let new = users("n", 130);
        let mut accounts = new.clone();
        accounts.push("boss".into());
        let g = group(GroupType::Public, Some("boss"), &[]);
        // The instance believes in 300 per add; this app takes 50.
        let limits = Limits {
            add: 50,
            ..Limits::default()
        };
        let sb = sandbox(world(&accounts, vec![("@TGS#split", g)], limits)).await;
        let want: Vec<(&str, Role)> = new
            .iter()
            .map(|a| (a.as_str(), Role::Participant))
            .collect();
        let d = desired("@TGS#split", Some("boss"), &want);
        let t = targets(
            &sb,
            Some(MaxBatch {
                add: Some(300),
                ..MaxBatch::default()
            }),
        );
        let report =
            reconcile::run(&ctx_at(T), std::slice::from_ref(&d), &t, &opts(true), None).await;
        assert_eq!(report.groups[0].status, GroupStatus::Applied);
        assert_eq!(
            sb.tencent.group(APP, "@TGS#split").unwrap().members.len(),
            131
        );
        let adds: Vec<_> = sb
            .tencent
            .writes()
            .into_iter()
            .filter(|r| r.command == "add_group_member")
            .collect();
        let refused = adds.iter().filter(|r| r.error_code == Some(10005)).count();
        assert!(refused >= 1, "the first batch was over the limit");
        for r in adds.iter().filter(|r| r.error_code == Some(0)) {
            let n = r.body.as_ref().unwrap()["MemberList"]
                .as_array()
                .unwrap()
                .len();
            assert!(n <= 50, "accepted calls carry at most 50, found {n}");
        }
        // 130 -> 10005, 65 -> 10005, then the rest at the learned 33: four calls that are
        // taken. The client learns the size once instead of failing each later batch, and the
        // report counts every request, the refused ones too.
        assert_eq!(adds.len(), 2 + 130usize.div_ceil(33), "{adds:#?}");
        assert_eq!(report.calls(), adds.len());
        assert_eq!(report.groups[0].requests.writes as usize, adds.len());
        sb.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn tencent_adds_report_per_member_results_and_unknown_accounts_are_isolated() {
    bounded(30, async {
        let accounts: Vec<String> = ["boss", "member", "banned", "fresh", "fresh2"]
            .map(String::from)
            .to_vec();
        let mut g = group(
            GroupType::Public,
            Some("boss"),
            &[("member", MemberRole::Member)],
        );
        g.banned = BTreeMap::from([("banned".into(), FOREVER)]);
        let sb = sandbox(world(&accounts, vec![("@TGS#adds", g)], Limits::default())).await;
        let c = client(&instance(&sb, None), KEY);
        let ops: Vec<Op> = ["banned", "member", "fresh", "ghost", "fresh2"]
            .iter()
            .map(|m| Op::new(OpKind::Add, mid(m)).with_role(Role::Participant))
            .collect();
        let out = c
            .apply(
                &ctx(),
                &gid("@TGS#adds"),
                &Batch {
                    kind: OpKind::Add,
                    ops,
                },
            )
            .await
            .unwrap();
        let codes: Vec<String> = out
            .iter()
            .map(|o| match &o.outcome {
                Outcome::Done => "done".into(),
                Outcome::AlreadyDone => "already".into(),
                Outcome::Failed { code, .. } => code.clone(),
                Outcome::Skipped { .. } => "skipped".into(),
            })
            .collect();
        assert_eq!(codes, ["RESULT_0", "already", "done", "10019", "done"]);
        let after = sb.tencent.group(APP, "@TGS#adds").unwrap();
        assert!(after.members.contains_key("fresh") && after.members.contains_key("fresh2"));
        assert!(
            after.members.contains_key("member"),
            "nobody is removed by an add"
        );
        assert!(!after.members.contains_key("banned"));
        sb.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn tencent_bans_unavailable_fail_at_plan_naming_the_group_and_type() {
    bounded(30, async {
        let accounts: Vec<String> = ["boss", "a", "b"].map(String::from).to_vec();
        let g = group(
            GroupType::ChatRoom,
            Some("boss"),
            &[("a", MemberRole::Member), ("b", MemberRole::Member)],
        );
        let mut state = world(&accounts, vec![("@TGS#meet", g)], Limits::default());
        state.apps.get_mut(&APP).unwrap().bans_enabled = false;
        let sb = sandbox(state).await;
        let mut d = desired("@TGS#meet", Some("boss"), &[("a", Role::Participant)]);
        d.bans = Some(BTreeSet::from([mid("b")]));
        let report = reconcile::run(
            &ctx(),
            std::slice::from_ref(&d),
            &targets(&sb, None),
            &opts(true),
            None,
        )
        .await;
        let g0 = &report.groups[0];
        assert_eq!(g0.status, GroupStatus::Failed);
        assert!(g0.plan.is_none(), "nothing is planned");
        let e = g0.error.as_deref().unwrap();
        assert!(
            e.contains("@TGS#meet-group") && e.contains("ChatRoom") && e.contains("bans"),
            "{e}"
        );
        assert_eq!(report.exit_code(false, false), 3);
        assert_eq!(write_calls(&sb), 0, "refused at plan, not at apply");
        assert_eq!(sb.tencent.group(APP, "@TGS#meet").unwrap().members.len(), 3);
        sb.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn tencent_work_group_refuses_mutes_and_admins_at_plan_naming_the_type() {
    bounded(30, async {
        let accounts: Vec<String> = ["boss", "a", "b", "c"].map(String::from).to_vec();
        let g = group(
            GroupType::Private,
            Some("boss"),
            &[("a", MemberRole::Member), ("c", MemberRole::Member)],
        );
        let sb = sandbox(world(&accounts, vec![("@TGS#work", g)], Limits::default())).await;
        let t = targets(&sb, None);

        let mut muted = desired(
            "@TGS#work",
            Some("boss"),
            &[("a", Role::Participant), ("b", Role::Participant)],
        );
        muted.mutes = Some(BTreeMap::from([(mid("a"), Mute::Indefinite)]));
        let r = reconcile::run(
            &ctx_at(T),
            std::slice::from_ref(&muted),
            &t,
            &opts(true),
            None,
        )
        .await;
        let e = r.groups[0].error.as_deref().unwrap();
        assert!(e.contains("type Private") && e.contains("mute"), "{e}");

        let admins = desired(
            "@TGS#work",
            Some("boss"),
            &[("a", Role::Admin), ("b", Role::Participant)],
        );
        let r = reconcile::run(
            &ctx_at(T),
            std::slice::from_ref(&admins),
            &t,
            &opts(true),
            None,
        )
        .await;
        let e = r.groups[0].error.as_deref().unwrap();
        assert!(e.contains("type Private") && e.contains("admin"), "{e}");
        assert_eq!(write_calls(&sb), 0);

        // What a Work group can do goes through: b is added and c removed.
        let plain = desired(
            "@TGS#work",
            Some("boss"),
            &[
                ("boss", Role::Participant),
                ("a", Role::Participant),
                ("b", Role::Participant),
            ],
        );
        let r = reconcile::run(
            &ctx_at(T),
            std::slice::from_ref(&plain),
            &t,
            &opts(true),
            None,
        )
        .await;
        assert_eq!(
            r.groups[0].status,
            GroupStatus::Applied,
            "{:?}",
            r.groups[0].error
        );
        let after = sb.tencent.group(APP, "@TGS#work").unwrap();
        assert_eq!(
            after.members.keys().cloned().collect::<Vec<_>>(),
            ["a", "b", "boss"]
        );
        sb.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn tencent_live_and_missing_groups_are_refused_at_read() {
    bounded(30, async {
        let g = group(GroupType::AvChatRoom, Some("boss"), &[]);
        let sb = sandbox(world(
            &["boss".into()],
            vec![("@TGS#live", g)],
            Limits::default(),
        ))
        .await;
        let e = client(&instance(&sb, None), KEY)
            .fetch(&ctx(), &gid("@TGS#live"))
            .await
            .unwrap_err();
        assert_eq!(e.class, ErrorClass::Fatal);
        assert!(e.message.contains("AVChatRoom"), "{e}");
        let e = client(&instance(&sb, None), KEY)
            .fetch(&ctx(), &gid("@TGS#nowhere"))
            .await
            .unwrap_err();
        assert_eq!(
            (e.class, e.code.as_deref()),
            (ErrorClass::Fatal, Some("10010"))
        );
        sb.shutdown().await;
    })
    .await;
}

fn assert_clean(text: &str) {
    assert!(!text.contains(KEY), "the secret key leaked: {text}");
    assert!(
        !text.contains("usersig="),
        "a URL with its UserSig leaked: {text}"
    );
    // Every UserSig is zlib data, whose base64 starts with "eJ".
    assert!(!text.contains("eJ"), "a UserSig leaked: {text}");
}

#[tokio::test]
async fn tencent_wrong_key_is_an_auth_error_without_any_secret() {
    let (logs, _guard) = crate::support::capture_logs();
    bounded(30, async {
        let g = group(GroupType::Public, Some("boss"), &[]);
        let sb = sandbox(world(
            &["boss".into()],
            vec![("@TGS#auth", g)],
            Limits::default(),
        ))
        .await;
        let inst = instance(&sb, None);
        let other = "0ther-key-that-is-not-the-apps-key";
        let e = client(&inst, other)
            .fetch(&ctx(), &gid("@TGS#auth"))
            .await
            .unwrap_err();
        assert_eq!(
            (e.class, e.code.as_deref()),
            (ErrorClass::Fatal, Some("70009"))
        );
        assert!(e.message.contains("authentication failed"), "{e}");
        assert_clean(&e.message);
        assert!(!e.message.contains(other));

        // The right key for a non-admin identifier is refused too.
        let mut inst2 = inst.clone();
        let mut s = inst.settings.get::<Settings>().unwrap().clone();
        s.identifier = "alice".into();
        inst2.settings = KindSettings::new(s);
        let e = client(&inst2, KEY)
            .fetch(&ctx(), &gid("@TGS#auth"))
            .await
            .unwrap_err();
        assert_eq!(e.code.as_deref(), Some("60010"));
        assert_clean(&e.message);

        // Through the engine: the report, the plan in every rendering, Debug output.
        let t = BTreeMap::from([(
            "tim".to_string(),
            Target::new(inst.clone(), Arc::new(client(&inst, other))),
        )]);
        let d = desired("@TGS#auth", Some("boss"), &[]);
        let report: Report =
            reconcile::run(&ctx_at(T), std::slice::from_ref(&d), &t, &opts(true), None).await;
        assert_clean(&format!("{report:?}"));
        assert_clean(&render::text(&report.plan(), false));
        assert_clean(&render::json(&report.plan()).to_string());
        assert_clean(&render::markdown(&report.plan()));
        assert_clean(&format!("{:?}", client(&inst, KEY)));
        // The emulator's own log blanks the UserSig as well.
        for r in sb.tencent.requests() {
            assert!(r.query.contains("usersig=***&"), "{}", r.query);
            let text = serde_json::to_string(&r).unwrap();
            assert!(!text.contains(KEY) && !text.contains("eJ"), "{text}");
        }
        sb.shutdown().await;
    })
    .await;
    // Every log line, at every level, of the client, the engine and the emulator.
    let logs = logs.text();
    assert!(
        logs.contains("cannot read the group"),
        "the logs were captured"
    );
    assert_clean(&logs);
    assert!(!logs.contains("usersig=eJ"), "{logs}");
}

#[tokio::test]
async fn tencent_expired_usersig_is_reissued_once_then_reported() {
    bounded(30, async {
        let g = group(GroupType::Public, Some("boss"), &[]);
        let sb = sandbox(world(
            &["boss".into()],
            vec![("@TGS#exp", g)],
            Limits::default(),
        ))
        .await;
        // The client's clock is two days behind the service: every UserSig it issues has
        // already expired there.
        let c = Tencent::with_key(&instance(&sb, None), Secret::new(KEY)).unwrap();
        let e = c
            .fetch(&ctx_at(T - 2 * 86_400), &gid("@TGS#exp"))
            .await
            .unwrap_err();
        assert_eq!(
            (e.class, e.code.as_deref()),
            (ErrorClass::Fatal, Some("70001"))
        );
        assert_clean(&e.message);
        let codes: Vec<Option<u64>> = sb.tencent.requests().iter().map(|r| r.error_code).collect();
        assert_eq!(codes, [Some(70001), Some(70001)], "one reissue, then stop");

        // With the clocks agreeing, the same client works.
        let ok = client(&instance(&sb, None), KEY)
            .fetch(&ctx(), &gid("@TGS#exp"))
            .await;
        assert!(ok.is_ok());
        sb.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn tencent_transport_errors_carry_no_url_or_usersig() {
    bounded(30, async {
        let sb = sandbox(world(&[], vec![], Limits::default())).await;
        let mut inst = instance(&sb, None);
        // A port nobody listens on.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = dead.local_addr().unwrap().port();
        drop(dead);
        inst.common.base_url = Some(format!("http://127.0.0.1:{port}"));
        let e = client(&inst, KEY)
            .fetch(&ctx(), &gid("@TGS#x"))
            .await
            .unwrap_err();
        assert_eq!(e.class, ErrorClass::Transient);
        assert_clean(&e.message);
        assert!(!e.message.contains("127.0.0.1"), "{e}");
        sb.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn tencent_failing_reads_are_errors_and_remove_nobody() {
    bounded(60, async {
        let accounts: Vec<String> = users("m", 30).into_iter().chain(["boss".into()]).collect();
        let live: Vec<(&str, MemberRole)> = accounts[..30]
            .iter()
            .map(|a| (a.as_str(), MemberRole::Member))
            .collect();
        let g = group(GroupType::Public, Some("boss"), &live);
        let sb = sandbox(world(&accounts, vec![("@TGS#flaky", g)], Limits::default())).await;
        let d = desired("@TGS#flaky", Some("boss"), &[("m000", Role::Participant)]);
        let t = targets(&sb, None);
        // The service answers 10002 (internal error) to every request: the retries run out
        // and the group is an error, never a short roster with 30 members to remove.
        sb.tencent.inject(Fault::next(1000, FaultKind::Status(500)));
        let report =
            reconcile::run(&ctx_at(T), std::slice::from_ref(&d), &t, &opts(true), None).await;
        assert_eq!(report.groups[0].status, GroupStatus::Failed);
        assert!(report.groups[0].plan.is_none());
        let e = report.groups[0].error.as_deref().unwrap();
        assert!(e.contains("10002"), "{e}");
        sb.tencent.clear_faults();
        assert_eq!(write_calls(&sb), 0);
        assert_eq!(
            sb.tencent.group(APP, "@TGS#flaky").unwrap().members.len(),
            31
        );
        sb.shutdown().await;
    })
    .await;
}

/// The emulator keeps the owner a member by construction, so a server that answers as a lagging
/// replica might (info names the owner, the listing lacks them) stands in for it.
#[tokio::test]
async fn tencent_a_listing_without_the_owner_its_info_names_is_refused() {
    bounded(30, async {
        use axum::extract::Request;
        let app = axum::Router::new().fallback(|req: Request| async move {
            let path = req.uri().path().to_string();
            let ok = |extra: serde_json::Value| {
                let mut v =
                    serde_json::json!({"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": ""});
                v.as_object_mut()
                    .unwrap()
                    .extend(extra.as_object().unwrap().clone());
                axum::Json(v)
            };
            if path.ends_with("/get_group_info") {
                ok(
                    serde_json::json!({"GroupInfo": [{"GroupId": "@TGS#part", "Type": "Public",
                    "Owner_Account": "boss", "MemberNum": 2, "ErrorCode": 0, "ErrorInfo": ""}]}),
                )
            } else if path.ends_with("/get_group_member_info") {
                ok(serde_json::json!({"MemberNum": 1, "MemberList": [
                    {"Member_Account": "m000", "Role": "Member", "ShutUpUntil": 0}]}))
            } else {
                ok(serde_json::json!({}))
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let sb = start(SandboxState::default()).await;
        let mut inst = instance(&sb, None);
        inst.common.base_url = Some(format!("http://{addr}"));
        let e = client(&inst, KEY)
            .fetch(&ctx(), &gid("@TGS#part"))
            .await
            .unwrap_err();
        assert_eq!(e.class, ErrorClass::Fatal);
        assert!(e.message.contains("lacks its owner boss"), "{e}");
        server.abort();
        sb.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn tencent_community_groups_page_by_cursor_and_others_by_offset() {
    bounded(30, async {
        let members = users("c", 250);
        let live: Vec<(&str, MemberRole)> = members
            .iter()
            .map(|a| (a.as_str(), MemberRole::Member))
            .collect();
        let mut accounts = members.clone();
        accounts.push("boss".into());
        let sb = sandbox(world(
            &accounts,
            vec![
                (
                    "@TGS#_comm",
                    group(GroupType::Community, Some("boss"), &live),
                ),
                ("@TGS#pub", group(GroupType::Public, Some("boss"), &live)),
            ],
            Limits::default(),
        ))
        .await;
        let c = client(&instance(&sb, None), KEY);
        for id in ["@TGS#_comm", "@TGS#pub"] {
            let g = c.fetch(&ctx(), &gid(id)).await.unwrap();
            assert_eq!(g.members.len(), 251);
            assert_eq!(
                g.members[&mid("boss")],
                Role::Admin,
                "the owner reads as admin"
            );
            assert_eq!(g.owner, Some(mid("boss")));
        }
        let pages: Vec<_> = sb
            .tencent
            .requests()
            .into_iter()
            .filter(|r| r.command == "get_group_member_info")
            .collect();
        assert_eq!(pages.len(), 6, "three pages of 100 each");
        let body = |i: usize| pages[i].body.clone().unwrap();
        assert!(body(0).get("Offset").is_none() && body(0)["Next"] == "");
        assert_eq!(body(2)["Next"], "cursor-200");
        assert_eq!(body(5)["Offset"], 200);
        sb.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn tencent_pages_shorter_than_asked_are_not_the_end_of_the_list() {
    bounded(30, async {
        let members = users("s", 130);
        let live: Vec<(&str, MemberRole)> = members
            .iter()
            .map(|a| (a.as_str(), MemberRole::Member))
            .collect();
        let mut accounts = members.clone();
        accounts.push("boss".into());
        // The service hands out 40 members a page whatever Limit asks for.
        let limits = Limits {
            page: 40,
            clamp_page: true,
            ..Limits::default()
        };
        let sb = sandbox(world(
            &accounts,
            vec![("@TGS#short", group(GroupType::Public, Some("boss"), &live))],
            limits,
        ))
        .await;
        let c = client(&instance(&sb, None), KEY);
        let g = c.fetch(&ctx(), &gid("@TGS#short")).await.unwrap();
        assert_eq!(g.members.len(), 131, "every member, not the first page");

        // Through the engine: a manifest listing everyone plans no removal.
        let mut want: Vec<(&str, Role)> = members
            .iter()
            .map(|a| (a.as_str(), Role::Participant))
            .collect();
        want.push(("boss", Role::Admin));
        let t = targets(&sb, None);
        let d = desired("@TGS#short", Some("boss"), &want);
        let report =
            reconcile::run(&ctx_at(T), std::slice::from_ref(&d), &t, &opts(false), None).await;
        assert!(
            report.groups[0].plan.as_ref().unwrap().is_empty(),
            "{report:#?}"
        );
        sb.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn tencent_mute_time_is_counted_from_the_clock_passed_in() {
    bounded(30, async {
        let accounts: Vec<String> = ["boss", "a", "b"].map(String::from).to_vec();
        let g = group(
            GroupType::Public,
            Some("boss"),
            &[("a", MemberRole::Member), ("b", MemberRole::Member)],
        );
        let sb = sandbox(world(&accounts, vec![("@TGS#mute", g)], Limits::default())).await;
        let inst = instance(&sb, None);
        let inst = &inst;
        let mute = |secs: u64, m: Mute, kind: OpKind| async move {
            let mut op = Op::new(kind, mid("a"));
            if kind == OpKind::Mute {
                op = op.with_mute(m);
            }
            let c = Tencent::with_key(inst, Secret::new(KEY)).unwrap();
            c.apply(
                &ctx_at(secs),
                &gid("@TGS#mute"),
                &Batch {
                    kind,
                    ops: vec![op],
                },
            )
            .await
            .unwrap();
        };
        mute(T, Mute::Until(at(T + 3600)), OpKind::Mute).await;
        mute(T + 600, Mute::Until(at(T + 3600)), OpKind::Mute).await;
        mute(T, Mute::Indefinite, OpKind::Mute).await;
        mute(T, Mute::Indefinite, OpKind::Unmute).await;
        let times: Vec<u64> = sb
            .tencent
            .writes()
            .iter()
            .map(|r| r.body.as_ref().unwrap()["MuteTime"].as_u64().unwrap())
            .collect();
        assert_eq!(times, [3600, 3000, FOREVER, 0]);
        assert!(sb.tencent.group(APP, "@TGS#mute").unwrap().muted.is_empty());
        sb.shutdown().await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn tencent_throttled_answers_are_waited_out_without_repeating_writes() {
    bounded(60, async {
        let new = users("n", 60);
        let mut accounts = new.clone();
        accounts.push("boss".into());
        let sb = sandbox(world(
            &accounts,
            vec![("@TGS#busy", group(GroupType::Public, Some("boss"), &[]))],
            Limits::default(),
        ))
        .await;
        sb.tencent.set_rate_limit(Some(RateLimit {
            requests: 2,
            per: Duration::from_millis(300),
        }));
        let want: Vec<(&str, Role)> = new
            .iter()
            .map(|a| (a.as_str(), Role::Participant))
            .collect();
        let d = desired("@TGS#busy", Some("boss"), &want);
        let t = targets(&sb, None);
        let report =
            reconcile::run(&ctx_at(T), std::slice::from_ref(&d), &t, &opts(true), None).await;
        assert_eq!(
            report.groups[0].status,
            GroupStatus::Applied,
            "{:?}",
            report.groups[0].error
        );
        let log = sb.tencent.requests();
        let throttled = log
            .iter()
            .filter(|r| r.fault.as_deref() == Some("throttled"))
            .count();
        assert!(throttled > 0, "the limit was hit");
        assert_eq!(write_calls(&sb), 3, "60 adds in 3 calls, none repeated");
        assert!(t["tim"].provider.requests().throttled as usize >= throttled);
        assert_eq!(
            sb.tencent.group(APP, "@TGS#busy").unwrap().members.len(),
            61
        );
        sb.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn tencent_demo_applies_the_tencent_group_and_prints_no_key() {
    bounded(60, async {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
        let mut out = Vec::new();
        let code = rosterd::demo::demo(&dir, &mut out, false).await.unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(code, 0, "{out}");
        let (first, rest) = out.split_once("== apply ==").expect("an apply section");
        for what in [
            "dave (dave_tim) muted indefinitely",
            "mallory (mallory_tim) banned",
            "owner -> alice (alice_tim)",
        ] {
            assert!(first.contains(what), "the first plan has {what}:\n{first}");
        }
        assert!(
            rest.contains("group game-lobby: applied and verified"),
            "{rest}"
        );
        let second = rest.split_once("== plan after apply ==").unwrap().1;
        assert!(
            second.contains("group game-lobby (tim tencent, id @TGS#demo-lobby)\n  in sync"),
            "{second}"
        );
        assert!(
            !out.contains("sandbox-demo-tencent-key"),
            "the key is never printed"
        );
        assert!(!out.contains("usersig"), "{out}");
    })
    .await;
}

#[tokio::test]
async fn tencent_mute_ends_shifted_by_the_services_clock_cause_no_churn() {
    bounded(30, async {
        let accounts: Vec<String> = ["boss", "a"].map(String::from).to_vec();
        let g = group(
            GroupType::Public,
            Some("boss"),
            &[("a", MemberRole::Member)],
        );
        let sb = sandbox(world(&accounts, vec![("@TGS#skew", g)], Limits::default())).await;
        // The service's clock runs 3 s ahead of ours: it stores MuteUntil = until + 3.
        sb.tencent.set_now(Some(at(T + 3)));
        let inst = instance(&sb, None);
        let c = Arc::new(Tencent::with_key(&inst, Secret::new(KEY)).unwrap());
        let t = BTreeMap::from([("tim".to_string(), Target::new(inst, c))]);
        let mut d = desired("@TGS#skew", Some("boss"), &[("a", Role::Participant)]);
        d.mutes = Some(BTreeMap::from([(mid("a"), Mute::Until(at(T + 3600)))]));
        let r = reconcile::run(&ctx_at(T), std::slice::from_ref(&d), &t, &opts(true), None).await;
        assert_eq!(
            r.groups[0].status,
            GroupStatus::Applied,
            "{:?}",
            r.groups[0].drift
        );
        assert_eq!(
            sb.tencent.group(APP, "@TGS#skew").unwrap().muted["a"],
            T + 3 + 3600
        );
        let again =
            reconcile::run(&ctx_at(T), std::slice::from_ref(&d), &t, &opts(true), None).await;
        assert!(again.plan().is_empty(), "{:?}", again.plan());
        assert_eq!(write_calls(&sb), 1, "one mute call, no re-mute");
        sb.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn tencent_repeated_bad_usersigs_lock_the_app_and_the_client_stops_at_once() {
    bounded(30, async {
        let g = group(GroupType::Public, Some("boss"), &[]);
        let sb = sandbox(world(
            &["boss".into()],
            vec![("@TGS#lock", g)],
            Limits::default(),
        ))
        .await;
        let inst = instance(&sb, None);
        let bad = client(&inst, "not-the-key");
        for _ in 0..10 {
            let e = bad.fetch(&ctx(), &gid("@TGS#lock")).await.unwrap_err();
            assert_eq!(e.code.as_deref(), Some("70009"));
        }
        assert_eq!(
            sb.tencent.requests().len(),
            10,
            "an auth error is never retried"
        );
        // Now even the right key is refused until the lock ends.
        let good = client(&inst, KEY);
        let e = good.fetch(&ctx(), &gid("@TGS#lock")).await.unwrap_err();
        assert_eq!(
            (e.class, e.code.as_deref()),
            (ErrorClass::Fatal, Some("70050"))
        );
        assert_clean(&e.message);
        sb.tencent.set_now(Some(at(T + 61)));
        assert!(good.fetch(&ctx(), &gid("@TGS#lock")).await.is_ok());
        sb.shutdown().await;
    })
    .await;
}

/// Tencent at its default pace (20 requests/s) against a service that allows 5/s: the pacer
/// learns the limit from the first throttle and stays just under it, probing up slowly. Prints
/// the figures (`--no-capture`); BENCHMARKS quotes them.
#[tokio::test(start_paused = true)]
async fn tencent_default_pace_against_a_slower_service_learns_its_limit() {
    bounded(600, async {
        let promoted = users("a", 150);
        let mut accounts = promoted.clone();
        accounts.push("boss".into());
        let live: Vec<(&str, MemberRole)> = promoted
            .iter()
            .map(|a| (a.as_str(), MemberRole::Member))
            .collect();
        let g = group(GroupType::Public, Some("boss"), &live);
        let sb = sandbox(world(&accounts, vec![("@TGS#pace", g)], Limits::default())).await;
        sb.tencent.set_rate_limit(Some(RateLimit {
            requests: 5,
            per: Duration::from_secs(1),
        }));
        let mut inst = instance(&sb, None);
        inst.common.rate = None;
        let c = client(&inst, KEY);
        let t = one_target(inst, c);
        let want: Vec<(&str, Role)> = promoted
            .iter()
            .map(|a| (a.as_str(), Role::Admin))
            .collect();
        let d = desired("@TGS#pace", Some("boss"), &want);
        let started = tokio::time::Instant::now();
        let report =
            reconcile::run(&ctx_at(T), std::slice::from_ref(&d), &t, &opts(true), None).await;
        let elapsed = started.elapsed().as_secs_f64();
        assert_eq!(report.groups[0].status, GroupStatus::Applied, "{report:#?}");
        let log = sb.tencent.requests();
        let throttled = log
            .iter()
            .filter(|r| r.fault.as_deref() == Some("throttled"))
            .count();
        let accepted = log.len() - throttled;
        let bound = accepted as f64 / 5.0;
        let pace = t["tim"].provider.requests().pace.unwrap();
        println!(
            "tencent default pace vs 5/s: {elapsed:.2}s for {accepted} accepted requests \
             (bound {bound:.2}s, ratio {:.3}), {throttled} of {} throttled ({:.1}%), pace now {pace:.2}/s",
            elapsed / bound,
            log.len(),
            100.0 * throttled as f64 / log.len() as f64
        );
        assert!(elapsed <= 1.10 * bound, "{elapsed:.2}s vs bound {bound:.2}s");
        assert!(
            throttled as f64 <= 0.05 * log.len() as f64,
            "{throttled} of {} throttled",
            log.len()
        );
        sb.shutdown().await;
    })
    .await;
}
