//! CometChat: the client against the stateful emulator over real HTTP.

use std::time::{Duration, Instant};

use rosterd::config::secret::Secret;
use rosterd::model::{Batch, GroupId, MemberId, MemberOutcome, Op, OpKind, Outcome, Role};
use rosterd::provider::cometchat::CometChat;
use rosterd::provider::{ErrorClass, Kind, Provider};
use rosterd::sandbox::cometchat::{RateLimit, Scope};
use rosterd::sandbox::{Fault, FaultKind, SandboxState};

use crate::support::*;

fn gid(s: &str) -> GroupId {
    GroupId(s.to_string())
}

fn mid(s: &str) -> MemberId {
    MemberId::new(s)
}

fn batch(kind: OpKind, ops: Vec<Op>) -> Batch {
    Batch { kind, ops }
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

        let live = client.fetch(&gid("big")).await.unwrap();

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
        let live = cc_client(&sb, 25).fetch(&gid("g")).await.unwrap();
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

        let live = client.fetch(&gid("eng")).await.unwrap();
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
            .apply(&gid("g"), &batch(OpKind::Add, ops))
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
            let out = client.apply(&gid("g"), &b).await.unwrap();
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
            let out = client.apply(&gid("g"), &b).await.unwrap();
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
            let out = client.apply(&g_id, &b).await.unwrap();
            assert_eq!(out[0].outcome, Outcome::Done, "{:?}", b.kind);
        }
        let live = client.fetch(&g_id).await.unwrap();
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
        let err = cc_client(&sb, 1000).fetch(&gid("nope")).await.unwrap_err();
        assert_eq!(
            (err.class, err.code.as_deref()),
            (ErrorClass::Fatal, Some("ERR_GUID_NOT_FOUND"))
        );

        let wrong = "ffffffffffffffffffffffffffffffffffffffff";
        let client = CometChat::with_key(&cc_instance(&sb, None), Secret::new(wrong)).unwrap();
        let err = client.fetch(&gid("nope")).await.unwrap_err();
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
            .apply(&gid("g"), &batch(OpKind::Add, ops))
            .await
            .unwrap();
        assert!(out.iter().all(|o| o.outcome == Outcome::Done));
        assert_eq!(sb.cometchat.group(CC_APP, "g").unwrap().members.len(), 30);
        sb.shutdown().await;
    })
    .await;
}

#[tokio::test]
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
        let live = client.fetch(&gid("g")).await.unwrap();
        let elapsed = started.elapsed();

        assert_eq!(live.owner, Some(mid("alice")));
        let log = sb.cometchat.requests();
        let throttled = log.iter().filter(|r| r.status == 429).count();
        // Three reads at 1/s: the 2nd and 3rd are each throttled once with Retry-After: 1, and a
        // client that waits as told is never throttled twice for the same read.
        assert_eq!(throttled, 2, "{log:#?}");
        assert!(
            elapsed >= Duration::from_millis(1900),
            "waited only {elapsed:?}"
        );
        sb.shutdown().await;
    })
    .await;
}

#[tokio::test]
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

        let live = client.fetch(&gid("g")).await.unwrap();
        assert_eq!(live.owner, Some(mid("alice")));
        let out = client
            .apply(
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

#[test]
fn cometchat_demo_seed_parses() {
    let state = rosterd::sandbox::default_state().unwrap();
    assert!(!state.cometchat.apps.is_empty());
}

fn reqwest_client() -> reqwest::Client {
    rosterd::provider::http::build_reqwest(&Default::default()).unwrap()
}
