//! Engine tests against the in-memory provider: end states, call counts, failure isolation.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::*;
use crate::config::secret::SecretRef;
use crate::model::{GroupId, MemberId, RemovalLimit, Role, Unlisted};
use crate::provider::memory::MemoryProvider;
use crate::provider::{CommonSettings, Instance, Kind, KindSettings, cometchat};

fn m(s: &str) -> MemberId {
    MemberId::new(s)
}

fn roster(entries: &[(&str, Role)]) -> BTreeMap<MemberId, Role> {
    entries.iter().map(|(id, r)| (m(id), *r)).collect()
}

fn desired(name: &str, members: &[(&str, Role)]) -> DesiredGroup {
    DesiredGroup {
        name: name.to_string(),
        provider: "cc".to_string(),
        kind: Kind::Cometchat,
        id: GroupId(name.to_string()),
        owner: None,
        members: roster(members),
        bans: Some(BTreeSet::new()),
        mutes: None,
        unlisted: Unlisted::Remove,
        max_removals: RemovalLimit::Count(100),
        protected: BTreeSet::new(),
        source: format!("groups/{name}.yaml:1:1"),
        names: Default::default(),
    }
}

fn live(owner: &str, members: &[(&str, Role)]) -> LiveGroup {
    LiveGroup {
        members: roster(members),
        owner: Some(m(owner)),
        bans: Some(BTreeSet::new()),
        ..LiveGroup::default()
    }
}

fn targets(p: Arc<MemoryProvider>) -> BTreeMap<String, Target> {
    let instance = Instance {
        name: "cc".to_string(),
        kind: Kind::Cometchat,
        common: CommonSettings::default(),
        settings: KindSettings::new(cometchat::Settings {
            app_id: "app".to_string(),
            region: "eu".to_string(),
            api_key: SecretRef::Env("UNUSED".to_string()),
        }),
    };
    BTreeMap::from([("cc".to_string(), Target::new(instance, p))])
}

fn apply_opts() -> RunOptions {
    RunOptions {
        apply: true,
        ..RunOptions::default()
    }
}

fn ctx() -> Ctx {
    Ctx::at(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000))
}

#[tokio::test]
async fn apply_converges_and_a_second_run_writes_nothing() {
    let p = Arc::new(MemoryProvider::new(Kind::Cometchat));
    p.set_group(
        "g",
        live(
            "alice",
            &[
                ("alice", Role::Admin),
                ("bob", Role::Admin),
                ("zed", Role::Participant),
            ],
        ),
    );
    let mut g = desired(
        "g",
        &[
            ("alice", Role::Admin),
            ("bob", Role::Participant),
            ("carol", Role::Moderator),
        ],
    );
    g.bans = Some(BTreeSet::from([m("mallory")]));
    let t = targets(p.clone());

    let report = run(&ctx(), std::slice::from_ref(&g), &t, &apply_opts(), None).await;
    assert_eq!(report.exit_code(true, false), 0, "{report:#?}");
    assert_eq!(report.groups[0].status, GroupStatus::Applied);
    let after = p.group("g").unwrap();
    assert_eq!(after.members, g.members);
    assert_eq!(after.bans, Some(BTreeSet::from([m("mallory")])));
    let calls = p.log().len();
    // add carol, demote bob, remove zed, ban mallory
    assert_eq!(calls, 4);

    let second = run(&ctx(), std::slice::from_ref(&g), &t, &apply_opts(), None).await;
    assert_eq!(second.groups[0].status, GroupStatus::InSync);
    assert_eq!(p.log().len(), calls, "a second apply makes no write call");
}

#[tokio::test]
async fn a_member_that_fails_is_reported_and_the_rest_is_applied() {
    let p = Arc::new(MemoryProvider::new(Kind::Cometchat));
    p.set_group("g", live("alice", &[("alice", Role::Admin)]));
    p.nonexistent.lock().unwrap().insert(m("ghost"));
    let g = desired(
        "g",
        &[
            ("alice", Role::Admin),
            ("ghost", Role::Participant),
            ("bob", Role::Participant),
        ],
    );
    let report = run(&ctx(), &[g], &targets(p.clone()), &apply_opts(), None).await;
    assert_eq!(report.exit_code(true, false), 3);
    let failed: Vec<_> = report.groups[0]
        .failed_ops()
        .map(|o| o.member.as_str().to_string())
        .collect();
    assert_eq!(failed, vec!["ghost"]);
    assert!(p.group("g").unwrap().members.contains_key(&m("bob")));
}

#[tokio::test]
async fn a_failed_read_aborts_only_that_group() {
    let p = Arc::new(MemoryProvider::new(Kind::Cometchat));
    p.set_group(
        "broken",
        live(
            "alice",
            &[("alice", Role::Admin), ("bob", Role::Participant)],
        ),
    );
    p.set_group("fine", live("alice", &[("alice", Role::Admin)]));
    p.fail_fetches_of("broken");
    // The manifest of `broken` lists nobody but alice: a plan from a failed read must not remove bob.
    let groups = [
        desired("broken", &[("alice", Role::Admin)]),
        desired(
            "fine",
            &[("alice", Role::Admin), ("carol", Role::Participant)],
        ),
    ];
    let report = run(&ctx(), &groups, &targets(p.clone()), &apply_opts(), None).await;
    assert_eq!(report.exit_code(true, false), 3);
    let broken = report.groups.iter().find(|g| g.group == "broken").unwrap();
    assert!(broken.error.is_some() && broken.plan.is_none());
    assert!(
        p.log().iter().all(|c| c.group.as_str() != "broken"),
        "nothing written to the unreadable group"
    );
    assert!(p.group("broken").unwrap().members.contains_key(&m("bob")));
    assert!(p.group("fine").unwrap().members.contains_key(&m("carol")));
}

#[tokio::test]
async fn a_blocked_group_writes_nothing_while_others_apply() {
    let p = Arc::new(MemoryProvider::new(Kind::Cometchat));
    let many: Vec<(String, Role)> = (0..10)
        .map(|i| (format!("u{i}"), Role::Participant))
        .collect();
    let many_ref: Vec<(&str, Role)> = many
        .iter()
        .map(|(s, r)| (s.as_str(), *r))
        .chain([("alice", Role::Admin)])
        .collect();
    p.set_group("big", live("alice", &many_ref));
    p.set_group("small", live("alice", &[("alice", Role::Admin)]));
    let mut big = desired("big", &[("alice", Role::Admin)]);
    big.max_removals = RemovalLimit::Percent(10.0);
    let small = desired(
        "small",
        &[("alice", Role::Admin), ("bob", Role::Participant)],
    );
    let report = run(
        &ctx(),
        &[big.clone(), small],
        &targets(p.clone()),
        &apply_opts(),
        None,
    )
    .await;
    assert_eq!(report.exit_code(true, false), 4);
    assert_eq!(
        p.group("big").unwrap().members.len(),
        11,
        "nothing removed from the blocked group"
    );
    assert!(p.group("small").unwrap().members.contains_key(&m("bob")));

    let forced = RunOptions {
        allow_mass_removal: true,
        ..apply_opts()
    };
    let report = run(&ctx(), &[big], &targets(p.clone()), &forced, None).await;
    assert_eq!(report.exit_code(true, false), 0);
    assert_eq!(p.group("big").unwrap().members.len(), 1);
}

#[tokio::test]
async fn a_failed_admin_add_keeps_the_admin_floor() {
    let p = Arc::new(MemoryProvider::new(Kind::Cometchat));
    p.set_group(
        "g",
        live(
            "owner",
            &[
                ("owner", Role::Participant),
                ("old1", Role::Admin),
                ("old2", Role::Admin),
            ],
        ),
    );
    p.nonexistent.lock().unwrap().insert(m("new1"));
    // Replace both admins with new ones; new1 does not exist, so one old admin must stay.
    let g = desired(
        "g",
        &[
            ("owner", Role::Participant),
            ("new1", Role::Admin),
            ("new2", Role::Admin),
        ],
    );
    let report = run(&ctx(), &[g], &targets(p.clone()), &apply_opts(), None).await;
    assert_eq!(report.exit_code(true, false), 3);
    let after = p.group("g").unwrap();
    let admins = after
        .members
        .values()
        .filter(|r| **r == Role::Admin)
        .count();
    assert_eq!(
        admins, 2,
        "min(live admins, desired admins) = 2 admins kept: {after:?}"
    );
    assert!(
        report.groups[0]
            .outcomes
            .iter()
            .any(|o| matches!(o.outcome, Outcome::Skipped { .. }))
    );
}

#[tokio::test]
async fn admins_are_replaced_when_every_admin_add_succeeds() {
    let p = Arc::new(MemoryProvider::new(Kind::Cometchat));
    p.set_group(
        "g",
        live(
            "owner",
            &[
                ("owner", Role::Participant),
                ("old1", Role::Admin),
                ("old2", Role::Admin),
            ],
        ),
    );
    // One new admin for two old ones: the floor only guards against failed adds.
    let g = desired("g", &[("owner", Role::Participant), ("new1", Role::Admin)]);
    let report = run(&ctx(), &[g], &targets(p.clone()), &apply_opts(), None).await;
    assert_eq!(report.exit_code(true, false), 0, "{report:?}");
    let after = p.group("g").unwrap();
    let admins: Vec<&MemberId> = after
        .members
        .iter()
        .filter(|(_, r)| **r == Role::Admin)
        .map(|(m, _)| m)
        .collect();
    assert_eq!(admins, vec![&m("new1")]);
}

/// `n` groups that each need one add, on a provider that takes 20 ms per call.
fn slow_groups(n: usize) -> (Arc<MemoryProvider>, Vec<DesiredGroup>) {
    let p = Arc::new(MemoryProvider::new(Kind::Cometchat).with_latency(Duration::from_millis(20)));
    let groups = (0..n)
        .map(|i| {
            let name = format!("g{i}");
            p.set_group(&name, live("alice", &[("alice", Role::Admin)]));
            desired(&name, &[("alice", Role::Admin), ("bob", Role::Participant)])
        })
        .collect();
    (p, groups)
}

#[tokio::test(start_paused = true)]
async fn groups_of_one_instance_respect_the_concurrency_bound() {
    let (p, groups) = slow_groups(8);
    let t: BTreeMap<String, Target> = targets(p.clone())
        .into_iter()
        .map(|(k, t)| (k, t.with_concurrency(2)))
        .collect();
    let report = run(&ctx(), &groups, &t, &apply_opts(), None).await;
    assert_eq!(report.exit_code(true, false), 0);
    assert!(
        p.max_in_flight() <= 2,
        "max in flight {}",
        p.max_in_flight()
    );
    assert!(p.max_in_flight() >= 2, "groups ran concurrently");
}

#[tokio::test(start_paused = true)]
async fn the_concurrency_of_an_instance_comes_from_its_settings() {
    for (configured, bound) in [(None, DEFAULT_CONCURRENCY), (Some(3), 3)] {
        let (p, groups) = slow_groups(12);
        let t: BTreeMap<String, Target> = targets(p.clone())
            .into_iter()
            .map(|(k, t)| {
                let mut inst = t.instance.clone();
                inst.common.concurrency = configured;
                (k, Target::new(inst, t.provider))
            })
            .collect();
        let report = run(&ctx(), &groups, &t, &apply_opts(), None).await;
        assert_eq!(report.exit_code(true, false), 0);
        assert_eq!(p.max_in_flight(), bound, "{configured:?}");
    }
}

#[tokio::test]
async fn the_audit_log_has_a_line_per_call_and_per_member() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit/audit.jsonl");
    let audit = AuditLog::open(&path).unwrap();
    let p = Arc::new(MemoryProvider::new(Kind::Cometchat));
    p.set_group(
        "g",
        live(
            "alice",
            &[("alice", Role::Admin), ("zed", Role::Participant)],
        ),
    );
    let g = desired(
        "g",
        &[
            ("alice", Role::Admin),
            ("bob", Role::Participant),
            ("carol", Role::Participant),
        ],
    );
    run(&ctx(), &[g], &targets(p), &apply_opts(), Some(&audit)).await;
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let calls = lines.iter().filter(|l| l["type"] == "call").count();
    let members = lines.iter().filter(|l| l["type"] == "member").count();
    assert_eq!((calls, members), (2, 3), "{text}");
    assert!(
        lines
            .iter()
            .all(|l| l["group"] == "g" && l["ts"].is_string())
    );
}

#[tokio::test]
async fn plan_mode_writes_nothing_and_reports_pending_changes() {
    let p = Arc::new(MemoryProvider::new(Kind::Cometchat));
    p.set_group("g", live("alice", &[("alice", Role::Admin)]));
    let g = desired("g", &[("alice", Role::Admin), ("bob", Role::Participant)]);
    let opts = RunOptions {
        apply: false,
        ..apply_opts()
    };
    let report = run(&ctx(), &[g], &targets(p.clone()), &opts, None).await;
    assert_eq!(report.exit_code(false, true), 2);
    assert_eq!(report.exit_code(false, false), 0);
    assert!(p.log().is_empty());
    assert_eq!(report.plan().groups[0].ops.len(), 1);
}
