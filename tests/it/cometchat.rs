//! CometChat: the client against the stateful emulator over real HTTP.

use std::time::Duration;

use tokio::time::Instant;

use rosterd::config::secret::Secret;
use rosterd::model::{MemberId, MemberOutcome, Op, OpKind, Outcome, Role};
use rosterd::provider::cometchat::CometChat;
use rosterd::provider::{ErrorClass, Kind, Provider};
use rosterd::sandbox::cometchat::{RateLimit, Scope};
use rosterd::sandbox::{Fault, FaultKind, SandboxState};

use crate::support::*;

fn mid(s: &str) -> MemberId {
    MemberId::new(s)
}

fn op(kind: OpKind, member: &str) -> Op {
    Op::new(kind, mid(member))
}

fn failed_code(o: &MemberOutcome) -> Option<&str> {
    match &o.outcome {
        Outcome::Failed { code, .. } => Some(code),
        _ => None,
    }
}

#[tokio::test]
async fn cometchat_fetch_reads_every_page_of_members_and_bans() {
    bounded(30, async {
        let members = users("m", 263);
        let banned = users("b", 57);
        let mut seeded: Vec<(&str, Scope)> = members
            .iter()
            .map(|u| (u.as_str(), Scope::Participant))
            .collect();
        seeded[5].1 = Scope::Moderator;
        let banned_refs: Vec<&str> = banned.iter().map(String::as_str).collect();
        let g = group(Some("m000"), &seeded, &banned_refs);
        let sb = sandbox(cc_state(
            members.iter().chain(&banned).cloned(),
            vec![("big", g)],
        ))
        .await;
        let client = cc_client(&sb, 50);

        let live = client.fetch(&ctx(), &gid("big")).await.unwrap();

        assert_eq!(live.members.len(), 263);
        assert_eq!(
            live.members[&mid("m000")],
            Role::Admin,
            "the owner is listed as admin"
        );
        assert_eq!(live.members[&mid("m005")], Role::Moderator);
        assert_eq!(live.members[&mid("m262")], Role::Participant);
        assert_eq!(live.owner, Some(mid("m000")));
        assert_eq!(live.bans.as_ref().unwrap().len(), 57);
        let log = sb.cometchat.requests();
        let member_pages = log.iter().filter(|r| r.path.ends_with("/members")).count();
        let ban_pages = log
            .iter()
            .filter(|r| r.path.ends_with("/bannedusers"))
            .count();
        assert_eq!(
            (member_pages, ban_pages),
            (6, 2),
            "pages of 50 until a short page"
        );
        assert!(log.iter().all(|r| r.method == "GET"));
        sb.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn cometchat_a_server_paging_smaller_than_asked_is_read_to_the_end() {
    bounded(30, async {
        let members = users("m", 250);
        let seeded: Vec<(&str, Scope)> = members
            .iter()
            .map(|u| (u.as_str(), Scope::Participant))
            .collect();
        let mut state = cc_state(
            members.clone(),
            vec![("g", group(Some("m000"), &seeded, &[]))],
        );
        // The client asks for 1000 a page; this server hands out 100 and says so.
        state.page_cap = Some(100);
        let sb = sandbox(state).await;
        let live = cc_client(&sb, 1000).fetch(&ctx(), &gid("g")).await.unwrap();
        assert_eq!(live.members.len(), 250, "not just the first page");
        let pages = sb
            .cometchat
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/members"))
            .count();
        assert_eq!(pages, 3);
        sb.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn cometchat_fetch_stops_after_an_exactly_full_last_page() {
    bounded(30, async {
        let members = users("m", 100);
        let seeded: Vec<(&str, Scope)> = members
            .iter()
            .map(|u| (u.as_str(), Scope::Participant))
            .collect();
        let sb = sandbox(cc_state(
            members.clone(),
            vec![("g", group(None, &seeded, &[]))],
        ))
        .await;
        let live = cc_client(&sb, 25).fetch(&ctx(), &gid("g")).await.unwrap();
        assert_eq!(live.members.len(), 100);
        assert_eq!(
            live.owner, None,
            "app_system owns groups created without an owner"
        );
        let pages = sb
            .cometchat
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/members"))
            .count();
        assert_eq!(pages, 5, "four full pages and one empty page");
        sb.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn cometchat_ids_differing_only_in_case_produce_no_churn() {
    bounded(30, async {
        let g = group(Some("Alice"), &[("BOB", Scope::Moderator)], &["Mallory"]);
        let sb = sandbox(cc_state(
            ["ALICE".into(), "Bob".into(), "mallory".into()],
            vec![("Eng", g)],
        ))
        .await;
        let client = cc_client(&sb, 1000);

        let live = client.fetch(&ctx(), &gid("eng")).await.unwrap();
        let alice = Kind::Cometchat.normalize_member("Alice").unwrap();
        let bob = Kind::Cometchat.normalize_member("BoB").unwrap();
        assert_eq!(live.owner.as_ref(), Some(&alice));
        assert_eq!(live.members.get(&bob), Some(&Role::Moderator));
        assert!(
            live.bans
                .unwrap()
                .contains(&Kind::Cometchat.normalize_member("MALLORY").unwrap())
        );

        // Adding a member under another spelling is a no-op the provider reports as done.
        let out = client
            .apply(
                &ctx(),
                &gid("eng"),
                &batch(
                    OpKind::Add,
                    vec![op(OpKind::Add, "bob").with_role(Role::Moderator)],
                ),
            )
            .await
            .unwrap();
        assert_eq!(out, vec![MemberOutcome::already(mid("bob"))]);
        assert_eq!(sb.cometchat.group(CC_APP, "eng").unwrap().members.len(), 2);
        sb.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn cometchat_adds_mix_scopes_in_one_call_and_report_unknown_users_per_member() {
    bounded(30, async {
        let g = group(Some("alice"), &[("bob", Scope::Participant)], &[]);
        let sb = sandbox(cc_state(
            ["alice", "bob", "carol", "dave"].map(String::from),
            vec![("g", g)],
        ))
        .await;
        let client = cc_client(&sb, 1000);
        let ops = vec![
            op(OpKind::Add, "carol").with_role(Role::Admin),
            op(OpKind::Add, "ghost").with_role(Role::Participant),
            op(OpKind::Add, "dave").with_role(Role::Moderator),
        ];

        let out = client
            .apply(&ctx(), &gid("g"), &batch(OpKind::Add, ops))
            .await
            .unwrap();

        assert_eq!(out[0], MemberOutcome::done(mid("carol")));
        assert_eq!(failed_code(&out[1]), Some("ERR_UID_NOT_FOUND"));
        assert_eq!(out[2], MemberOutcome::done(mid("dave")));
        let live = sb.cometchat.group(CC_APP, "g").unwrap();
        assert_eq!(live.members["carol"], Scope::Admin);
        assert_eq!(live.members["dave"], Scope::Moderator);
        assert!(!live.members.contains_key("ghost"));
        assert_eq!(
            sb.cometchat.writes().len(),
            1,
            "one POST for the whole batch"
        );

        // A single-member call about an unknown user is an outcome, not an error.
        let out = client
            .apply(
                &ctx(),
                &gid("g"),
                &batch(
                    OpKind::Promote,
                    vec![op(OpKind::Promote, "ghost").with_role(Role::Admin)],
                ),
            )
            .await
            .unwrap();
        assert_eq!(failed_code(&out[0]), Some("ERR_UID_NOT_FOUND"));
        sb.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn cometchat_owner_is_never_kicked_banned_or_rescoped() {
    bounded(30, async {
        let g = group(Some("alice"), &[("bob", Scope::Admin)], &[]);
        let sb = sandbox(cc_state(["alice", "bob"].map(String::from), vec![("g", g)])).await;
        let client = cc_client(&sb, 1000);
        let before = sb.cometchat.group(CC_APP, "g").unwrap();

        for b in [
            batch(OpKind::Remove, vec![op(OpKind::Remove, "alice")]),
            batch(OpKind::Ban, vec![op(OpKind::Ban, "alice")]),
            batch(
                OpKind::Demote,
                vec![op(OpKind::Demote, "alice").with_role(Role::Participant)],
            ),
        ] {
            let out = client.apply(&ctx(), &gid("g"), &b).await.unwrap();
            assert_eq!(
                failed_code(&out[0]),
                Some("ERR_GROUP_NO_CLEARANCE"),
                "{:?}",
                b.kind
            );
        }
        assert_eq!(sb.cometchat.group(CC_APP, "g").unwrap(), before);
        sb.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn cometchat_repeated_writes_are_already_done() {
    bounded(30, async {
        let g = group(Some("alice"), &[("bob", Scope::Moderator)], &["mallory"]);
        let sb = sandbox(cc_state(
            ["alice", "bob", "carol", "mallory"].map(String::from),
            vec![("g", g)],
        ))
        .await;
        let client = cc_client(&sb, 1000);
        let cases = [
            batch(OpKind::Remove, vec![op(OpKind::Remove, "carol")]),
            batch(OpKind::Unban, vec![op(OpKind::Unban, "carol")]),
            batch(
                OpKind::Promote,
                vec![op(OpKind::Promote, "bob").with_role(Role::Moderator)],
            ),
            batch(OpKind::Ban, vec![op(OpKind::Ban, "mallory")]),
        ];
        for b in cases {
            let out = client.apply(&ctx(), &gid("g"), &b).await.unwrap();
            assert_eq!(out[0].outcome, Outcome::AlreadyDone, "{:?}", b.kind);
        }
        sb.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn cometchat_every_write_kind_changes_the_emulator_state() {
    bounded(30, async {
        let g = group(
            Some("alice"),
            &[
                ("bob", Scope::Participant),
                ("carol", Scope::Admin),
                ("dave", Scope::Participant),
            ],
            &["mallory"],
        );
        let users = ["alice", "bob", "carol", "dave", "erin", "mallory", "trent"].map(String::from);
        let sb = sandbox(cc_state(users, vec![("g", g)])).await;
        let client = cc_client(&sb, 1000);
        let g_id = gid("g");
        for b in [
            batch(OpKind::Unban, vec![op(OpKind::Unban, "mallory")]),
            batch(
                OpKind::Add,
                vec![op(OpKind::Add, "erin").with_role(Role::Moderator)],
            ),
            batch(
                OpKind::Promote,
                vec![op(OpKind::Promote, "bob").with_role(Role::Admin)],
            ),
            batch(
                OpKind::Demote,
                vec![op(OpKind::Demote, "carol").with_role(Role::Participant)],
            ),
            batch(OpKind::Remove, vec![op(OpKind::Remove, "dave")]),
            batch(OpKind::Ban, vec![op(OpKind::Ban, "trent")]),
            batch(
                OpKind::TransferOwner,
                vec![op(OpKind::TransferOwner, "bob")],
            ),
        ] {
            let out = client.apply(&ctx(), &g_id, &b).await.unwrap();
            assert_eq!(out[0].outcome, Outcome::Done, "{:?}", b.kind);
        }
        let live = client.fetch(&ctx(), &g_id).await.unwrap();
        assert_eq!(live.owner, Some(mid("bob")));
        let roles: Vec<(&str, Role)> = live.members.iter().map(|(m, r)| (m.as_str(), *r)).collect();
        assert_eq!(
            roles,
            vec![
                ("alice", Role::Admin),
                ("bob", Role::Admin),
                ("carol", Role::Participant),
                ("erin", Role::Moderator)
            ]
        );
        assert_eq!(
            live.bans.unwrap().into_iter().collect::<Vec<_>>(),
            vec![mid("trent")]
        );
        sb.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn cometchat_mutes_are_refused_as_fatal() {
    bounded(30, async {
        let sb = sandbox(cc_state(
            ["alice".to_string()],
            vec![("g", group(Some("alice"), &[], &[]))],
        ))
        .await;
        let err = cc_client(&sb, 1000)
            .apply(
                &ctx(),
                &gid("g"),
                &batch(OpKind::Mute, vec![op(OpKind::Mute, "alice")]),
            )
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::Fatal);
        assert!(sb.cometchat.requests().is_empty(), "nothing was sent");
        sb.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn cometchat_unknown_group_and_wrong_key_are_fatal_and_never_echo_the_key() {
    bounded(30, async {
        let sb = sandbox(cc_state(["alice".to_string()], vec![])).await;
        let err = cc_client(&sb, 1000)
            .fetch(&ctx(), &gid("nope"))
            .await
            .unwrap_err();
        assert_eq!(
            (err.class, err.code.as_deref()),
            (ErrorClass::Fatal, Some("ERR_GUID_NOT_FOUND"))
        );

        let wrong = "ffffffffffffffffffffffffffffffffffffffff";
        let client = CometChat::with_key(&cc_instance(&sb, None), Secret::new(wrong)).unwrap();
        let err = client.fetch(&ctx(), &gid("nope")).await.unwrap_err();
        assert_eq!(
            (err.class, err.code.as_deref()),
            (ErrorClass::Fatal, Some("AUTH_ERR_APIKEY_NOT_FOUND"))
        );
        let shown = format!("{err} {err:?} {client:?}");
        assert!(!shown.contains(wrong) && !shown.contains(CC_KEY), "{shown}");
        let logged = serde_json::to_string(&sb.cometchat.requests()).unwrap();
        assert!(!logged.contains(wrong));
        sb.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn cometchat_emulator_rejects_more_than_25_ids_per_call() {
    bounded(30, async {
        let all = users("u", 30);
        let sb = sandbox(cc_state(all.clone(), vec![("g", group(None, &[], &[]))])).await;
        let url = format!("{}/groups/g/members", sb.base_url(Kind::Cometchat).unwrap());
        let body = serde_json::json!({ "participants": &all[..20], "usersToBan": &all[20..26] });
        let resp = reqwest_client()
            .post(&url)
            .header("apikey", CC_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400);
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "ERR_BAD_REQUEST");
        assert!(
            sb.cometchat.group(CC_APP, "g").unwrap().members.is_empty(),
            "nothing was applied"
        );

        // The client splits an oversized batch itself, so every member still lands.
        let ops = all
            .iter()
            .map(|u| op(OpKind::Add, u).with_role(Role::Participant))
            .collect();
        let out = cc_client(&sb, 1000)
            .apply(&ctx(), &gid("g"), &batch(OpKind::Add, ops))
            .await
            .unwrap();
        assert!(out.iter().all(|o| o.outcome == Outcome::Done));
        assert_eq!(sb.cometchat.group(CC_APP, "g").unwrap().members.len(), 30);
        sb.shutdown().await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn cometchat_throttling_obeys_retry_after() {
    bounded(30, async {
        let sb = sandbox(cc_state(
            ["alice".to_string()],
            vec![("g", group(Some("alice"), &[], &[]))],
        ))
        .await;
        sb.cometchat.set_rate_limit(Some(RateLimit::per_second(1)));
        let client = cc_client(&sb, 1000);

        let started = Instant::now();
        let live = client.fetch(&ctx(), &gid("g")).await.unwrap();
        let elapsed = started.elapsed();

        assert_eq!(live.owner, Some(mid("alice")));
        let log = sb.cometchat.requests();
        let throttled = log.iter().filter(|r| r.status == 429).count();
        // Three reads at 1/s: the 2nd and 3rd are each throttled once with Retry-After: 1, and a
        // client that waits as told is never throttled twice for the same read. (The pacer
        // halves its 1000/s test rate per throttle, far above this limit: the named waits
        // govern here.)
        assert_eq!(throttled, 2, "{log:#?}");
        assert!(
            elapsed >= Duration::from_millis(1900),
            "waited only {elapsed:?}"
        );
        sb.shutdown().await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn cometchat_transient_faults_are_retried() {
    bounded(30, async {
        let g = group(Some("alice"), &[], &[]);
        let sb = sandbox(cc_state(
            ["alice", "bob", "carol"].map(String::from),
            vec![("g", g)],
        ))
        .await;
        let client = cc_client(&sb, 1000);
        sb.cometchat.inject(Fault::next(1, FaultKind::Status(500)));
        sb.cometchat
            .inject(Fault::next(1, FaultKind::Reset).writes_only());
        sb.cometchat
            .inject(Fault::next(1, FaultKind::Status(503)).writes_only());

        let live = client.fetch(&ctx(), &gid("g")).await.unwrap();
        assert_eq!(live.owner, Some(mid("alice")));
        let out = client
            .apply(
                &ctx(),
                &gid("g"),
                &batch(
                    OpKind::Add,
                    vec![op(OpKind::Add, "bob").with_role(Role::Participant)],
                ),
            )
            .await
            .unwrap();
        assert!(out[0].outcome.is_ok(), "{out:?}");
        assert!(
            sb.cometchat
                .group(CC_APP, "g")
                .unwrap()
                .members
                .contains_key("bob")
        );
        let faults: Vec<_> = sb
            .cometchat
            .requests()
            .into_iter()
            .filter_map(|r| r.fault)
            .collect();
        assert_eq!(faults, vec!["status 500", "reset", "status 503"]);
        sb.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn cometchat_emulator_reset_drops_the_connection() {
    bounded(30, async {
        let sb = sandbox(cc_state(["alice".to_string()], vec![])).await;
        let url = format!("{}/users/alice", sb.base_url(Kind::Cometchat).unwrap());
        sb.cometchat.inject(Fault::next(1, FaultKind::Reset));
        let http = reqwest_client();
        let first = http.get(&url).header("apikey", CC_KEY).send().await;
        assert!(first.is_err(), "a reset yields no response: {first:?}");
        let second = http
            .get(&url)
            .header("apikey", CC_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(second.status().as_u16(), 200);
        sb.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn cometchat_sandbox_state_round_trips_through_yaml_and_json() {
    let yaml = r#"
cometchat:
  rate_limit: { requests: 10, per: 1s }
  apps:
    demo:
      api_key: k
      users: [Alice, bob]
      groups:
        Eng:
          owner: alice
          members: { BOB: moderator }
          banned: [mallory]
"#;
    let state = SandboxState::parse(yaml, false).unwrap();
    let sb = sandbox(state.cometchat).await;
    let dumped = sb.dump();
    let g = &dumped.cometchat.apps["demo"].groups["eng"];
    assert_eq!(
        g.members.get("alice"),
        Some(&Scope::Admin),
        "the owner is an admin member"
    );
    assert_eq!(g.members.get("bob"), Some(&Scope::Moderator));
    assert!(dumped.cometchat.apps["demo"].users.contains("mallory"));
    assert_eq!(dumped.cometchat.rate_limit, Some(RateLimit::per_second(10)));
    assert_eq!(
        SandboxState::parse(&dumped.to_json(), true).unwrap(),
        dumped
    );
    sb.shutdown().await;
}

/// `rosterd sandbox` prints where each emulator listens and the key it accepts, and that key
/// opens the printed URL.
#[tokio::test]
async fn cometchat_sandbox_command_prints_a_working_base_url_and_key() {
    bounded(20, async {
        let token = tokio_util::sync::CancellationToken::new();
        let printed = Captured::default();
        let mut sink = printed.clone();
        let served = rosterd::sandbox::serve(
            None,
            rosterd::sandbox::Ports::EPHEMERAL,
            &mut sink,
            token.clone(),
        );
        let probe = async {
            let text = loop {
                let text = printed.text();
                if text.contains("apikey") {
                    break text;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            let mut lines = text.lines();
            let first = lines.next().unwrap();
            let (kind, url) = first.split_once('\t').unwrap();
            assert_eq!(kind, "cometchat", "{text}");
            let key = lines
                .find_map(|l| l.split_once("apikey ").map(|(_, k)| k.trim().to_owned()))
                .unwrap();
            let seed = rosterd::sandbox::default_state().unwrap();
            let (_, app) = seed.cometchat.apps.iter().next().unwrap();
            assert_eq!(key, app.api_key);
            let guid = app.groups.keys().next().unwrap();
            let client = reqwest_client();
            let ok = client
                .get(format!("{url}/groups/{guid}"))
                .header("apikey", &key)
                .send()
                .await
                .unwrap();
            assert_eq!(ok.status().as_u16(), 200);
            let refused = client
                .get(format!("{url}/groups/{guid}"))
                .header("apikey", "not-the-key")
                .send()
                .await
                .unwrap();
            assert_eq!(refused.status().as_u16(), 401);
            token.cancel();
        };
        let (result, ()) = tokio::join!(served, probe);
        result.unwrap();
    })
    .await;
}

#[test]
fn cometchat_sandbox_state_errors_name_the_line() {
    let err = SandboxState::parse("cometchat:\n  apps:\n    demo:\n      nope: 1\n", false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 4"), "{err}");
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn cometchat_demo_seed_parses() {
    let state = rosterd::sandbox::default_state().unwrap();
    assert!(!state.cometchat.apps.is_empty());
}

fn reqwest_client() -> reqwest::Client {
    rosterd::provider::http::build_reqwest(&Default::default()).unwrap()
}

// ---- Round trips through the reconcile engine -------------------------------------------------

use rosterd::reconcile::{self, GroupStatus};

/// The emulator's roster of a group as rosterd roles, for comparing with a manifest.
fn emulated_roster(
    sb: &rosterd::sandbox::Sandbox,
    guid: &str,
) -> (Option<String>, Vec<(String, Role)>, Vec<String>) {
    let g = sb.cometchat.group(CC_APP, guid).expect("group exists");
    let roles = g
        .members
        .iter()
        .map(|(u, s)| {
            let r = match s {
                Scope::Admin => Role::Admin,
                Scope::Moderator => Role::Moderator,
                Scope::Participant => Role::Participant,
            };
            (u.clone(), r)
        })
        .collect();
    (g.owner, roles, g.banned.into_iter().collect())
}

#[tokio::test]
async fn cometchat_round_trip_with_drift_of_every_kind_converges_and_then_writes_nothing() {
    bounded(60, async {
        use Scope::*;
        let live = group(
            Some("alice"),
            &[
                ("bob", Participant),   // promote to admin
                ("carol", Admin),       // demote to moderator
                ("dave", Moderator),    // demote to participant
                ("erin", Participant),  // promote to moderator
                ("frank", Participant), // unlisted: remove
                ("trent", Moderator),   // ban (banning removes)
                ("JUDY", Participant),  // in sync, spelled differently
            ],
            &["mallory"], // unban
        );
        let users = [
            "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
            "mallory", "oscar", "trent",
        ];
        let sb = sandbox(cc_state(users.map(String::from), vec![("eng", live)])).await;
        let want = desired(
            "eng",
            Some("alice"),
            &[
                ("alice", Role::Admin),
                ("bob", Role::Admin),
                ("carol", Role::Moderator),
                ("dave", Role::Participant),
                ("erin", Role::Moderator),
                ("Grace", Role::Admin),
                ("heidi", Role::Participant),
                ("ivan", Role::Moderator),
                ("judy", Role::Participant),
            ],
            Some(&["trent", "oscar"]),
        );
        let targets = cc_targets(&sb, None);

        let report = reconcile::run(
            &ctx(),
            std::slice::from_ref(&want),
            &targets,
            &run_opts(true),
            None,
        )
        .await;

        assert_eq!(report.exit_code(true, false), 0, "{report:#?}");
        assert_eq!(report.groups[0].status, GroupStatus::Applied);
        let plan = report.groups[0].plan.as_ref().unwrap();
        // unban 1 + one add call for 3 + 2 promotions + 2 demotions + 1 removal + one ban call for 2.
        assert_eq!(plan.calls(), 8, "{plan:#?}");
        assert_eq!(
            sb.cometchat.writes().len(),
            8,
            "one request per planned call"
        );
        let (owner, roster, banned) = emulated_roster(&sb, "eng");
        assert_eq!(owner.as_deref(), Some("alice"));
        let expected: Vec<(String, Role)> = want
            .members
            .iter()
            .map(|(m, r)| (m.0.clone(), *r))
            .collect();
        assert_eq!(roster, expected);
        assert_eq!(banned, vec!["oscar".to_string(), "trent".to_string()]);

        // A second plan finds nothing, and a second apply sends no write at all.
        sb.cometchat.clear_log();
        let again = reconcile::run(
            &ctx(),
            std::slice::from_ref(&want),
            &targets,
            &run_opts(false),
            None,
        )
        .await;
        assert!(again.plan().is_empty(), "{:#?}", again.plan());
        let again = reconcile::run(
            &ctx(),
            std::slice::from_ref(&want),
            &targets,
            &run_opts(true),
            None,
        )
        .await;
        assert_eq!(again.exit_code(true, false), 0);
        assert_eq!(again.groups[0].status, GroupStatus::InSync);
        assert!(
            sb.cometchat.writes().is_empty(),
            "{:#?}",
            sb.cometchat.writes()
        );
        sb.shutdown().await;
    })
    .await;
}

/// Live and desired state for 120 adds, 60 removals and 30 scope changes (15 up, 15 down).
fn big_drift() -> (
    rosterd::sandbox::cometchat::State,
    rosterd::model::DesiredGroup,
) {
    let adds = users("add", 120);
    let extras = users("extra", 60);
    let ups = users("up", 15);
    let downs = users("down", 15);
    let keep = users("keep", 10);
    let mut live: Vec<(&str, Scope)> = vec![];
    live.extend(extras.iter().map(|u| (u.as_str(), Scope::Participant)));
    live.extend(ups.iter().map(|u| (u.as_str(), Scope::Participant)));
    live.extend(downs.iter().map(|u| (u.as_str(), Scope::Moderator)));
    live.extend(keep.iter().map(|u| (u.as_str(), Scope::Participant)));
    let mut want: Vec<(&str, Role)> = vec![("owner", Role::Admin)];
    want.extend(adds.iter().map(|u| (u.as_str(), Role::Participant)));
    want.extend(ups.iter().map(|u| (u.as_str(), Role::Moderator)));
    want.extend(downs.iter().map(|u| (u.as_str(), Role::Participant)));
    want.extend(keep.iter().map(|u| (u.as_str(), Role::Participant)));
    let all_users = [
        adds.clone(),
        extras.clone(),
        ups.clone(),
        downs.clone(),
        keep.clone(),
        vec!["owner".into()],
    ]
    .concat();
    let state = cc_state(all_users, vec![("big", group(Some("owner"), &live, &[]))]);
    (state, desired("big", Some("owner"), &want, None))
}

#[tokio::test]
async fn cometchat_large_drift_takes_the_minimum_number_of_write_calls() {
    bounded(60, async {
        let (state, want) = big_drift();
        let sb = sandbox(state).await;
        let targets = cc_targets(&sb, None);

        let report = reconcile::run(
            &ctx(),
            std::slice::from_ref(&want),
            &targets,
            &run_opts(true),
            None,
        )
        .await;

        assert_eq!(report.exit_code(true, false), 0, "{report:#?}");
        let plan = report.groups[0].plan.as_ref().unwrap();
        assert_eq!(
            (plan.count(OpKind::Add), plan.count(OpKind::Remove)),
            (120, 60)
        );
        assert_eq!(plan.count(OpKind::Promote) + plan.count(OpKind::Demote), 30);
        // ⌈120/25⌉ + 60 + 30 = 95.
        assert_eq!(sb.cometchat.writes().len(), 95);
        assert_eq!(report.calls(), 95);
        let (_, roster, _) = emulated_roster(&sb, "big");
        let expected: Vec<(String, Role)> = want
            .members
            .iter()
            .map(|(m, r)| (m.0.clone(), *r))
            .collect();
        assert_eq!(roster, expected);
        sb.shutdown().await;
    })
    .await;
}

/// Sixty adds go out as ⌈60/25⌉ = 3 requests, and the report's API calls are the requests the
/// emulator saw, no more, no fewer.
#[tokio::test]
async fn cometchat_add_of_sixty_ids_reports_the_requests_the_emulator_logged() {
    bounded(30, async {
        let new = users("n", 60);
        let sb = sandbox(cc_state(
            new.iter().cloned().chain(["alice".to_string()]),
            vec![("g", group(Some("alice"), &[("alice", Scope::Admin)], &[]))],
        ))
        .await;
        let mut members: Vec<(&str, Role)> = new
            .iter()
            .map(|u| (u.as_str(), Role::Participant))
            .collect();
        members.push(("alice", Role::Admin));
        let want = desired("g", Some("alice"), &members, Some(&[]));
        let targets = cc_targets(&sb, None);
        let report = reconcile::run(
            &ctx(),
            std::slice::from_ref(&want),
            &targets,
            &run_opts(true),
            None,
        )
        .await;
        assert_eq!(report.exit_code(true, false), 0, "{report:#?}");
        assert_eq!(sb.cometchat.writes().len(), 3);
        assert_eq!(report.calls(), 3);
        assert_eq!(report.groups[0].requests.writes, 3);
        sb.shutdown().await;
    })
    .await;
}

/// Wall time of the 120/60/30 apply against an emulator limited to 10 requests/s, with the
/// client paced at 10/s too. Prints the figure (`--nocapture`).
#[tokio::test(start_paused = true)]
async fn cometchat_large_drift_at_ten_requests_per_second() {
    bounded(110, async {
        let (mut state, want) = big_drift();
        state.rate_limit = Some(RateLimit::per_second(10));
        let sb = sandbox(state).await;
        let targets = cc_targets(&sb, Some(10.0));

        let started = Instant::now();
        let report = reconcile::run(&ctx(), std::slice::from_ref(&want), &targets, &run_opts(true), None).await;
        let elapsed = started.elapsed();

        assert_eq!(report.exit_code(true, false), 0, "{report:#?}");
        let log = sb.cometchat.requests();
        let throttled = log.iter().filter(|r| r.status == 429).count();
        eprintln!(
            "cometchat 120 adds / 60 removals / 30 scope changes at 10 req/s: {:.2}s, {} requests, {} writes, {} throttled",
            elapsed.as_secs_f64(),
            log.len(),
            sb.cometchat.writes().len(),
            throttled
        );
        assert_eq!(sb.cometchat.writes().len(), 95);
        // 95 writes and 4 reads (group, members and bans to plan; only the members to verify)
        // at 10/s: exactly 98 gaps of 0.1 s (on paused time, to the millisecond tokio's timers
        // round to), and the client's pace is never throttled.
        assert_eq!(log.len(), 99);
        assert_eq!(throttled, 0);
        assert!(
            elapsed >= Duration::from_millis(9_800) && elapsed < Duration::from_millis(9_900),
            "{elapsed:?}"
        );
        sb.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn cometchat_unknown_user_fails_alone_and_the_run_exits_3() {
    bounded(60, async {
        let live = group(Some("alice"), &[("bob", Scope::Participant)], &[]);
        let sb = sandbox(cc_state(
            ["alice", "bob", "carol"].map(String::from),
            vec![("g", live)],
        ))
        .await;
        let want = desired(
            "g",
            Some("alice"),
            &[
                ("alice", Role::Admin),
                ("bob", Role::Moderator),
                ("carol", Role::Participant),
                ("ghost", Role::Participant),
            ],
            None,
        );
        let report = reconcile::run(
            &ctx(),
            std::slice::from_ref(&want),
            &cc_targets(&sb, None),
            &run_opts(true),
            None,
        )
        .await;

        assert_eq!(report.exit_code(true, false), 3);
        let failed: Vec<_> = report.groups[0]
            .failed_ops()
            .map(|o| (o.member.as_str().to_string(), o.outcome.clone()))
            .collect();
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(failed[0].0, "ghost");
        assert!(
            matches!(&failed[0].1, Outcome::Failed { code, .. } if code == "ERR_UID_NOT_FOUND")
        );
        let g = sb.cometchat.group(CC_APP, "g").unwrap();
        assert_eq!(g.members.get("carol"), Some(&Scope::Participant));
        assert_eq!(g.members.get("bob"), Some(&Scope::Moderator));
        sb.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn cometchat_api_key_never_appears_in_output_errors_plans_logs_or_audit() {
    bounded(60, async {
        let (logs, _guard) = capture_logs();

        let live = group(
            Some("alice"),
            &[("bob", Scope::Participant), ("frank", Scope::Participant)],
            &["mallory"],
        );
        let sb = sandbox(cc_state(
            ["alice", "bob", "frank", "mallory"].map(String::from),
            vec![("g", live)],
        ))
        .await;
        sb.cometchat
            .inject(Fault::next(1, FaultKind::Status(500)).writes_only());
        let want = desired(
            "g",
            Some("alice"),
            &[
                ("alice", Role::Admin),
                ("bob", Role::Admin),
                ("ghost", Role::Participant),
            ],
            Some(&[]),
        );
        let missing = desired("missing", None, &[("alice", Role::Admin)], None);
        let targets = cc_targets(&sb, None);
        let (report, mut seen) = applied_and_shown(&[want, missing], &targets).await;
        assert_eq!(
            report.exit_code(true, false),
            3,
            "ghost fails and the missing group cannot be read"
        );

        seen.extend([
            serde_json::to_string(&sb.cometchat.requests()).unwrap(),
            format!("{:?}", targets["cc"].instance),
        ]);
        let wrong = CometChat::with_key(
            &cc_instance(&sb, None),
            Secret::new("feedfacefeedfacefeedfacefeedfacefeedface"),
        )
        .unwrap();
        let err = wrong.fetch(&ctx(), &gid("g")).await.unwrap_err();
        seen.push(format!("{err} {err:?}"));
        drop(_guard);
        seen.push(logs.text());

        assert!(
            seen[5].contains("ghost"),
            "the audit log has the per-member outcome"
        );
        assert!(
            seen.last().unwrap().contains("ghost"),
            "the logs were captured"
        );
        for s in &seen {
            assert!(!s.contains(CC_KEY), "the API key leaked into: {s}");
            assert!(
                !s.contains("feedfacefeedface"),
                "the API key leaked into: {s}"
            );
        }
        sb.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn cometchat_demo_applies_the_manifests_and_ends_in_sync() {
    bounded(60, async {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
        let mut out = Vec::new();
        let started = Instant::now();
        let code = rosterd::demo::demo(&dir, &mut out, false).await.unwrap();
        let out = String::from_utf8(out).unwrap();
        eprintln!("{out}\n(demo took {:?})", started.elapsed());
        assert_eq!(code, 0, "{out}");
        let (first, rest) = out.split_once("== apply ==").expect("an apply section");
        let (applied, second) = rest
            .split_once("== plan after apply ==")
            .expect("a second plan");
        for op in ["grace", "trent", "mallory", "peggy", "heidi-eu"] {
            assert!(first.contains(op), "the first plan names {op}:\n{first}");
        }
        // The demo covers other providers too; these are the CometChat groups.
        for g in ["eng-oncall", "eng-announce", "support-desk"] {
            let line = format!("group {g}: applied and verified");
            assert!(applied.contains(&line), "{applied}");
            let block = second.split(&format!("group {g} ")).nth(1).unwrap_or("");
            assert!(
                block.lines().nth(1).is_some_and(|l| l.contains("in sync")),
                "{second}"
            );
        }
        assert!(
            !out.contains("sandbox-demo-key"),
            "the key is never printed"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    })
    .await;
}

/// 100 groups, each with one add, one removal and one promotion, against an emulator limited to
/// 10 requests/s with the client paced at 10/s: 3 reads to plan, 3 writes, and a verify that
/// re-reads only the member listing — 7 requests a group, where 9 were needed before. On
/// paused time; prints the figures.
#[tokio::test(start_paused = true)]
async fn cometchat_hundred_small_drifts_read_only_what_the_writes_changed() {
    bounded(600, async {
        let mut groups = Vec::new();
        let mut want = Vec::new();
        let mut all_users = vec!["alice".to_string()];
        for i in 0..100 {
            let (stay, gone, new) = (format!("s{i:03}"), format!("r{i:03}"), format!("n{i:03}"));
            all_users.extend([stay.clone(), gone.clone(), new.clone()]);
            let gid = format!("g{i:03}");
            groups.push((
                gid.clone(),
                group(
                    Some("alice"),
                    &[
                        ("alice", Scope::Admin),
                        (stay.as_str(), Scope::Participant),
                        (gone.as_str(), Scope::Participant),
                    ],
                    &[],
                ),
            ));
            want.push(desired(
                &gid,
                Some("alice"),
                &[
                    ("alice", Role::Admin),
                    (stay.as_str(), Role::Moderator),
                    (new.as_str(), Role::Participant),
                ],
                Some(&[]),
            ));
        }
        let mut state = cc_state(
            all_users,
            groups.iter().map(|(g, grp)| (g.as_str(), grp.clone())).collect(),
        );
        state.rate_limit = Some(RateLimit::per_second(10));
        let sb = sandbox(state).await;
        let targets = cc_targets(&sb, Some(10.0));
        let started = Instant::now();
        let report = reconcile::run(&ctx(), &want, &targets, &run_opts(true), None).await;
        let elapsed = started.elapsed();
        assert_eq!(report.exit_code(true, false), 0, "{report:#?}");
        let log = sb.cometchat.requests();
        let throttled = log.iter().filter(|r| r.status == 429).count();
        let writes = sb.cometchat.writes().len();
        println!(
            "cometchat 100 groups x (1 add, 1 removal, 1 promotion) at 10 req/s: {:.2}s, {} requests ({} reads, {writes} writes), {throttled} throttled",
            elapsed.as_secs_f64(),
            log.len(),
            log.len() - writes
        );
        assert_eq!(writes, 300);
        assert_eq!(log.len(), 700, "3 reads to plan, 3 writes, 1 read to verify");
        assert_eq!(throttled, 0);
        // A second run finds every group in sync and costs only its plan reads.
        let before = sb.cometchat.requests().len();
        let again = reconcile::run(&ctx(), &want, &targets, &run_opts(true), None).await;
        assert!(again.plan().is_empty(), "{:#?}", again.plan());
        assert_eq!(sb.cometchat.requests().len() - before, 300);
        sb.shutdown().await;
    })
    .await;
}
