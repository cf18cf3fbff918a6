//! WhatsApp through WAHA: the client against the stateful emulator over real HTTP, for each
//! engine's response shapes (GOWS, NOWEB, WEBJS) and both participant listings.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use rosterd::config::secret::{Secret, SecretRef};
use rosterd::model::{Batch, DesiredGroup, GroupId, MemberId, Op, OpKind, Outcome, Role, Unlisted};
use rosterd::provider::waha::{self, Settings, Waha};
use rosterd::provider::{CommonSettings, ErrorClass, Instance, Kind, KindSettings, Provider};
use rosterd::reconcile::{self, GroupStatus, Report, Target};
use rosterd::sandbox::waha::{Engine, Group, Lid, Me, Overlimit, State, WaRole};
use rosterd::sandbox::{Fault, FaultKind, Sandbox, SandboxState};

use crate::support::{self, applied_and_shown, bounded, capture_logs, ctx, run_opts};

/// The emulator's key. It must never show up in any output.
const KEY: &str = "waha-it-key-7f3c9e1d5b2a4f608e1c";
const GROUP: &str = "120363000000000001@g.us";
const ME_PHONE: &str = "491700000001";
const ME_LID: &str = "900000000000001@lid";
const OWNER: &str = "491700000002@c.us";

const ENGINES: [Engine; 3] = [Engine::Gows, Engine::Noweb, Engine::Webjs];

fn phone(n: u32) -> String {
    format!("4917000000{n:02}@c.us")
}

fn lid(n: u32) -> String {
    format!("9000000000000{n:02}@lid")
}

fn mid(s: &str) -> MemberId {
    Kind::Waha.normalize_member(s).expect("a valid WhatsApp id")
}

/// A WAHA server whose session `default` is WORKING as `ME_PHONE` (lid `ME_LID`).
fn world(engine: Engine, groups: Vec<(&str, Vec<(String, WaRole)>)>) -> State {
    State {
        api_key: KEY.into(),
        engine,
        me: Me {
            phone: format!("+{ME_PHONE}"),
            lid: Some(ME_LID.into()),
        },
        groups: groups
            .into_iter()
            .map(|(id, members)| {
                (
                    id.to_string(),
                    Group {
                        name: None,
                        members: members.into_iter().collect(),
                    },
                )
            })
            .collect(),
        ..State::default()
    }
}

pub(crate) async fn start(state: State) -> Sandbox {
    support::start(SandboxState {
        waha: state,
        ..SandboxState::default()
    })
    .await
}

/// A `waha` instance named `wa` pointed at the sandbox, unpaced unless `tweak` says otherwise.
/// Instance `wa`, with no interval between writes unless `tweak` sets one.
fn instance(sb: &Sandbox, tweak: impl FnOnce(&mut CommonSettings)) -> Instance {
    let mut inst = support::instance_of(
        sb,
        "wa",
        Kind::Waha,
        KindSettings::new(Settings {
            session: "default".into(),
            api_key: SecretRef::Env("ROSTERD_IT_UNSET_WAHA_KEY".into()),
        }),
    );
    inst.common.interval = Some(Duration::ZERO);
    tweak(&mut inst.common);
    inst
}

fn client(inst: &Instance) -> Waha {
    Waha::with_key(inst, Secret::new(KEY))
        .expect("client builds")
        .with_throttle_cooldown(Duration::from_millis(50))
        .expect("client builds")
}

fn targets_of(inst: Instance, c: Waha) -> BTreeMap<String, Target> {
    support::one_target(inst, c)
}

fn targets(sb: &Sandbox) -> BTreeMap<String, Target> {
    let inst = instance(sb, |_| {});
    let c = client(&inst);
    targets_of(inst, c)
}

/// A desired group of instance `wa`, no removal cap.
fn desired(id: &str, members: &[(&str, Role)], unlisted: Unlisted) -> DesiredGroup {
    let mut d = support::desired_of(
        Kind::Waha,
        "wa",
        format!("wa-{}", &id[..id.len().min(18)]),
        id,
        None,
        members.iter().map(|(m, r)| (mid(m), *r)),
    );
    d.unlisted = unlisted;
    d
}

/// The emulator's roster of a group keyed by phone (`@lid` members through the server's lid
/// map, unknown lids as they are), superadmin counted as admin.
fn roster(sb: &Sandbox, id: &str) -> BTreeMap<MemberId, Role> {
    let st = sb.waha.state();
    st.groups[id]
        .members
        .iter()
        .map(|(k, r)| {
            let key = if st.me.lid.as_deref() == Some(k.as_str()) {
                st.me.phone.clone()
            } else {
                st.lids
                    .get(k)
                    .and_then(|l| l.pn.clone())
                    .unwrap_or_else(|| k.clone())
            };
            let role = match r {
                WaRole::Participant => Role::Participant,
                _ => Role::Admin,
            };
            (MemberId(key), role)
        })
        .collect()
}

fn write_bodies(sb: &Sandbox) -> String {
    sb.waha
        .writes()
        .iter()
        .map(|r| format!("{} {}\n", r.path, r.body.clone().unwrap_or_default()))
        .collect()
}

async fn run(groups: &[DesiredGroup], t: &BTreeMap<String, Target>, apply: bool) -> Report {
    reconcile::run(&ctx(), groups, t, &run_opts(apply), None).await
}

// ---- Round trips -------------------------------------------------------------------------------

/// Live members and the server's lid map for the round trip: every kind of drift WhatsApp
/// supports, with members listed under phones, lids the listing resolves, and lids only the
/// lids API resolves.
fn drifted(engine: Engine, v2: bool) -> State {
    use WaRole::*;
    let mut st = world(
        engine,
        vec![(
            GROUP,
            vec![
                (ME_LID.into(), Admin),
                (OWNER.into(), Superadmin),
                (lid(3), Participant), // manifest: admin -> promote, sent as the lid
                (lid(4), Admin),       // manifest: participant -> demote
                (phone(5), Participant), // unlisted -> remove
                (lid(6), Participant), // unlisted, known only through the lids API -> remove
                (phone(7), Admin),     // in sync
            ],
        )],
    );
    st.v2 = v2;
    st.lids = BTreeMap::from([
        (
            lid(3),
            Lid {
                pn: Some(phone(3)),
                listed: true,
            },
        ),
        (
            lid(4),
            Lid {
                pn: Some(phone(4)),
                listed: false,
            },
        ),
        (
            lid(6),
            Lid {
                pn: Some(phone(6)),
                listed: false,
            },
        ),
        // Added by phone, joins under this lid.
        (
            lid(10),
            Lid {
                pn: Some(phone(10)),
                listed: true,
            },
        ),
    ]);
    st
}

fn round_trip_manifest() -> DesiredGroup {
    desired(
        GROUP,
        &[
            ("+49 170 0000001", Role::Admin),         // me
            ("+49 170 0000002", Role::Admin),         // the superadmin
            ("+49 170 0000003", Role::Admin),         // promote
            ("+49-170-000-0004", Role::Participant),  // demote
            ("+49 170 0000007", Role::Admin),         // in sync
            ("+49 (170) 0000008", Role::Participant), // add
            ("+49 170 0000009", Role::Admin),         // add, then promote
            ("+49.170.0000010", Role::Participant),   // add; joins under its lid
        ],
        Unlisted::Remove,
    )
}

#[tokio::test]
async fn waha_round_trip_converges_on_every_engine_and_listing_then_writes_nothing() {
    bounded(60, async {
        for engine in ENGINES {
            for v2 in [true, false] {
                let ctx = format!("{engine:?}, v2 listing: {v2}");
                let sb = start(drifted(engine, v2)).await;
                let want = round_trip_manifest();
                let t = targets(&sb);

                let report = run(std::slice::from_ref(&want), &t, true).await;

                assert_eq!(report.exit_code(true, false), 0, "{ctx}: {report:#?}");
                assert_eq!(report.groups[0].status, GroupStatus::Applied, "{ctx}");
                let plan = report.groups[0].plan.as_ref().unwrap();
                let counts = [OpKind::Add, OpKind::Promote, OpKind::Demote, OpKind::Remove]
                    .map(|k| plan.count(k));
                assert_eq!(counts, [3, 2, 1, 2], "{ctx}: {plan:#?}");
                assert_eq!(roster(&sb, GROUP), want.members, "{ctx}");
                let log = sb.waha.requests();
                let listings = |tail: &str| log.iter().filter(|r| r.path.ends_with(tail)).count();
                if v2 {
                    assert_eq!(listings("/participants"), 0, "{ctx}: v2 only");
                } else {
                    // One probe answers 404; the client remembers and reads the legacy listing.
                    assert_eq!(listings("/participants/v2"), 1, "{ctx}");
                    // Plan, a fresh read before promoting the member added in this run, and
                    // the verifying re-read.
                    assert_eq!(listings("/participants"), 3, "{ctx}");
                }
                assert_eq!(report.calls(), sb.waha.writes().len(), "{ctx}");

                sb.waha.clear_log();
                let again = run(std::slice::from_ref(&want), &t, false).await;
                assert!(again.plan().is_empty(), "{ctx}: {:#?}", again.plan());
                let again = run(std::slice::from_ref(&want), &t, true).await;
                assert_eq!(again.groups[0].status, GroupStatus::InSync, "{ctx}");
                assert!(sb.waha.writes().is_empty(), "{ctx}: {}", write_bodies(&sb));
                sb.shutdown().await;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn waha_an_admin_added_under_a_lid_is_promoted_by_that_lid() {
    bounded(30, async {
        for engine in ENGINES {
            // phone 10 joins under lid 10; WEBJS finds members for a promotion only by the
            // exact listed id, so the promotion must name the lid.
            let sb = start(drifted(engine, true)).await;
            let mut want = round_trip_manifest();
            want.members.insert(MemberId(phone(10)), Role::Admin);
            let report = run(std::slice::from_ref(&want), &targets(&sb), true).await;
            assert_eq!(report.exit_code(true, false), 0, "{engine:?}: {report:#?}");
            assert_eq!(
                sb.waha.group(GROUP).unwrap().members.get(&lid(10)),
                Some(&WaRole::Admin),
                "{engine:?}"
            );
            assert_eq!(roster(&sb, GROUP), want.members, "{engine:?}");
            sb.shutdown().await;
        }
    })
    .await;
}

#[tokio::test]
async fn waha_writes_send_the_listed_id_and_add_before_promote() {
    bounded(30, async {
        let sb = start(drifted(Engine::Webjs, true)).await;
        let want = round_trip_manifest();
        let report = run(std::slice::from_ref(&want), &targets(&sb), true).await;
        assert_eq!(report.exit_code(true, false), 0, "{report:#?}");
        let writes = sb.waha.writes();
        let sent = |tail: &str| -> Vec<String> {
            writes
                .iter()
                .filter(|r| r.path.ends_with(tail))
                .flat_map(|r| {
                    r.body.as_ref().unwrap()["participants"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|p| p["id"].as_str().unwrap().to_string())
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        // WEBJS finds members by the exact listed key: a lid member is sent as its lid.
        assert_eq!(sent("/admin/demote"), vec![lid(4)]);
        assert_eq!(sent("/participants/remove"), vec![phone(5), lid(6)]);
        let mut promoted = sent("/admin/promote");
        promoted.sort();
        assert_eq!(promoted, vec![phone(9), lid(3)]);
        // Adds go by phone; adding never grants admin, so admins are added, then promoted.
        assert_eq!(
            sent("/participants/add"),
            vec![phone(8), phone(9), phone(10)]
        );
        let first_promote = writes.iter().position(|r| r.path.ends_with("/promote"));
        let last_add = writes.iter().rposition(|r| r.path.ends_with("/add"));
        assert!(last_add < first_promote, "{}", write_bodies(&sb));
        // A WEBJS add asks for no private invite the operator did not ask for.
        let add = writes.iter().find(|r| r.path.ends_with("/add")).unwrap();
        assert_eq!(add.body.as_ref().unwrap()["autoSendInviteV4"], false);
        sb.shutdown().await;
    })
    .await;
}

// ---- Ids -----------------------------------------------------------------------------------------

fn write_tree(dir: &std::path::Path, files: &[(&str, &str)]) -> std::path::PathBuf {
    for (name, text) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    dir.join("rosterd.yaml")
}

const WA_ROOT: &str = "manifests: groups/\npeople: people.yaml\nproviders:\n  wa:\n    kind: waha\n    base_url: http://127.0.0.1:1\n    api_key: { env: ROSTERD_IT_UNSET_WAHA_KEY }\n";

#[tokio::test]
async fn waha_phone_numbers_in_manifests_normalise_to_jids_and_cause_no_churn() {
    bounded(30, async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_tree(
            dir.path(),
            &[
                ("rosterd.yaml", WA_ROOT),
                (
                    "people.yaml",
                    "people:\n  ana: { waha: \"+49 170 0000003\" }\n  ben: { waha: \"+49-170-000-0004\" }\n  cy: { wa: \"49 (170) 000.00.05\" }\n",
                ),
                (
                    "groups/g.yaml",
                    "group: g\nprovider: wa\nid: \"120363000000000001@g.us\"\nadmins: [\"+49 170 0000001\", ana]\nparticipants: [ben, cy, \"+491700000006\", \"491700000007@s.whatsapp.net\", \"+49 170 0000002\"]\n",
                ),
            ],
        );
        let config = rosterd::config::load(&cfg).expect("the tree is valid");
        let g = &config.groups[0];
        let ids: Vec<&str> = g.members.keys().map(MemberId::as_str).collect();
        assert_eq!(
            ids,
            (1..=7).map(phone).collect::<Vec<_>>(),
            "every spelling becomes <digits>@c.us"
        );

        // The same people live, under phones and lids: nothing to do.
        use WaRole::*;
        let mut st = world(
            Engine::Gows,
            vec![(
                GROUP,
                vec![
                    (ME_LID.into(), Admin),
                    (OWNER.into(), Superadmin),
                    (lid(3), Admin),
                    (phone(4), Participant),
                    (phone(5), Participant),
                    (lid(6), Participant),
                    (phone(7), Participant),
                ],
            )],
        );
        for n in [3, 6] {
            st.lids.insert(
                lid(n),
                Lid {
                    pn: Some(phone(n)),
                    listed: n == 3,
                },
            );
        }
        let sb = start(st).await;
        let report = run(std::slice::from_ref(g), &targets(&sb), true).await;
        assert_eq!(report.groups[0].status, GroupStatus::InSync, "{report:#?}");
        assert!(sb.waha.writes().is_empty());

        // A number written with punctuation is sent in the JID form.
        sb.waha.with_state(|s| {
            s.groups.get_mut(GROUP).unwrap().members.remove(&phone(5));
        });
        let report = run(std::slice::from_ref(g), &targets(&sb), true).await;
        assert_eq!(report.exit_code(true, false), 0, "{report:#?}");
        let add = &sb.waha.writes()[0];
        assert!(add.path.ends_with("/participants/add"));
        assert_eq!(
            add.body.as_ref().unwrap()["participants"],
            serde_json::json!([{ "id": phone(5) }])
        );
        sb.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn waha_unresolvable_lid_member_is_reported_and_never_removed() {
    bounded(60, async {
        use WaRole::*;
        for (engine, v2, lids_api) in [
            (Engine::Gows, true, true),
            (Engine::Noweb, false, true),
            (Engine::Webjs, true, false),
        ] {
            let case = format!("{engine:?}, v2 {v2}, lids API {lids_api}");
            let mut st = world(
                engine,
                vec![(
                    GROUP,
                    vec![
                        (ME_LID.into(), Admin),
                        (OWNER.into(), Superadmin),
                        (lid(50), Participant),  // no phone anywhere
                        (lid(51), Admin),        // the lids API answers pn: null
                        (phone(5), Participant), // unlisted and known: removed
                    ],
                )],
            );
            st.v2 = v2;
            st.lids_api = lids_api;
            st.lids.insert(
                lid(51),
                Lid {
                    pn: None,
                    listed: true,
                },
            );
            let sb = start(st).await;
            let want = desired(
                GROUP,
                &[(ME_PHONE, Role::Admin), (OWNER, Role::Admin)],
                Unlisted::Remove,
            );
            let t = targets(&sb);

            let live = t["wa"].provider.fetch(&ctx(), &want.id).await.unwrap();
            assert_eq!(
                live.unresolved,
                BTreeSet::from([MemberId(lid(50)), MemberId(lid(51))]),
                "{case}"
            );

            let report = run(std::slice::from_ref(&want), &t, true).await;
            assert_eq!(report.exit_code(true, false), 0, "{case}: {report:#?}");
            let plan = report.groups[0].plan.as_ref().unwrap();
            assert_eq!(plan.count(OpKind::Remove), 1, "{case}: {plan:#?}");
            for l in [lid(50), lid(51)] {
                assert!(
                    plan.notes
                        .iter()
                        .any(|n| n.contains(&l) && n.contains("kept")),
                    "{case}: {l} is reported: {:?}",
                    plan.notes
                );
                assert!(
                    sb.waha.group(GROUP).unwrap().members.contains_key(&l),
                    "{case}"
                );
            }
            assert!(
                !sb.waha
                    .group(GROUP)
                    .unwrap()
                    .members
                    .contains_key(&phone(5))
            );
            let bodies = write_bodies(&sb);
            assert!(!bodies.contains("900000000000050"), "{case}: {bodies}");
            assert!(!bodies.contains("900000000000051"), "{case}: {bodies}");
            sb.shutdown().await;
        }
    })
    .await;
}

#[tokio::test]
async fn waha_a_member_who_left_is_not_counted_as_present() {
    bounded(30, async {
        // The v2 role enum has `left`; such a row is not a member, so a wanted person who left
        // is added back rather than taken as present.
        let sb = start(world(
            Engine::Gows,
            vec![(
                GROUP,
                vec![
                    (ME_LID.into(), WaRole::Admin),
                    (OWNER.into(), WaRole::Superadmin),
                ],
            )],
        ))
        .await;
        let base = sb.base_url(Kind::Waha).unwrap();
        let app = axum::Router::new().fallback({
            let base = base.to_string();
            move |req: axum::extract::Request| {
                let base = base.clone();
                async move { proxy_with_left_row(&base, req).await }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let inst = instance(&sb, |c| c.base_url = Some(format!("http://{addr}")));
        let live = client(&inst)
            .fetch(&ctx(), &GroupId(GROUP.into()))
            .await
            .unwrap();
        assert!(
            !live.members.contains_key(&MemberId(phone(9))),
            "{:?}",
            live.members
        );
        assert_eq!(live.members.len(), 2);
        sb.shutdown().await;
    })
    .await;
}

/// Forward to the emulator, appending a `left` row to v2 listings.
async fn proxy_with_left_row(base: &str, req: axum::extract::Request) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = req.uri().path().to_string();
    let key = req
        .headers()
        .get("x-api-key")
        .cloned()
        .expect("the client sends its key");
    let resp = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let mut body: serde_json::Value = resp.json().await.unwrap();
    if path.ends_with("/participants/v2") {
        body.as_array_mut()
            .unwrap()
            .push(serde_json::json!({"id": lid(9), "pn": phone(9), "role": "left"}));
    }
    (
        axum::http::StatusCode::from_u16(status).unwrap(),
        axum::Json(body),
    )
        .into_response()
}

// ---- Identities that are never touched --------------------------------------------------------

#[tokio::test]
async fn waha_acting_account_is_never_removed_or_demoted() {
    bounded(60, async {
        use WaRole::*;
        for engine in ENGINES {
            // The account is listed under its lid, which only `me.lid` ties to its phone.
            let sb = start(world(
                engine,
                vec![
                    (
                        GROUP,
                        vec![
                            (ME_LID.into(), Admin),
                            (OWNER.into(), Superadmin),
                            (phone(5), Participant),
                        ],
                    ),
                    (
                        "120363000000000002@g.us",
                        vec![
                            (format!("{ME_PHONE}@c.us"), Admin),
                            (OWNER.into(), Superadmin),
                            (phone(5), Participant),
                        ],
                    ),
                ],
            ))
            .await;
            // One manifest leaves the account out, the other wants it a participant.
            let mut omit = desired(GROUP, &[(OWNER, Role::Admin)], Unlisted::Remove);
            omit.name = "omit".into();
            let mut demote = desired(
                "120363000000000002@g.us",
                &[(OWNER, Role::Admin), (ME_PHONE, Role::Participant)],
                Unlisted::Remove,
            );
            demote.name = "demote".into();
            let report = run(&[omit, demote], &targets(&sb), true).await;

            for g in &report.groups {
                let plan = g.plan.as_ref().unwrap();
                assert!(
                    plan.ops
                        .iter()
                        .all(|o| o.member.as_str() != format!("{ME_PHONE}@c.us")),
                    "{engine:?}: {plan:#?}"
                );
                assert!(
                    plan.notes
                        .iter()
                        .any(|n| n.contains(ME_PHONE) && n.contains("rosterd's own identity")),
                    "{engine:?}: {:?}",
                    plan.notes
                );
            }
            let bodies = write_bodies(&sb);
            assert!(!bodies.contains(ME_PHONE), "{engine:?}: {bodies}");
            assert!(!bodies.contains("900000000000001"), "{engine:?}: {bodies}");
            assert_eq!(
                sb.waha.group(GROUP).unwrap().members.get(ME_LID),
                Some(&Admin)
            );
            assert_eq!(
                sb.waha
                    .group("120363000000000002@g.us")
                    .unwrap()
                    .members
                    .get(&format!("{ME_PHONE}@c.us")),
                Some(&Admin)
            );
            assert_eq!(
                report.calls(),
                2,
                "{engine:?}: only the two removals of phone 5"
            );
            sb.shutdown().await;
        }
    })
    .await;
}

#[tokio::test]
async fn waha_a_relinked_session_is_noticed_and_its_new_account_is_not_removed() {
    bounded(30, async {
        use WaRole::*;
        let sb = start(world(
            Engine::Gows,
            vec![(
                GROUP,
                vec![
                    (ME_LID.into(), Admin),
                    (OWNER.into(), Superadmin),
                    (phone(60), Admin),
                ],
            )],
        ))
        .await;
        let inst = instance(&sb, |_| {});
        let c = client(&inst).with_account_ttl(Duration::ZERO);
        let g = GroupId(GROUP.into());
        assert_eq!(c.fetch(&ctx(), &g).await.unwrap().me, Some(mid(ME_PHONE)));
        // The operator links the session to another phone while the daemon runs.
        sb.waha.with_state(|s| {
            s.me = Me {
                phone: phone(60),
                lid: None,
            }
        });
        assert_eq!(
            c.fetch(&ctx(), &g).await.unwrap().me,
            Some(MemberId(phone(60)))
        );
        let t = targets_of(inst, c);
        let want = desired(GROUP, &[(OWNER, Role::Admin)], Unlisted::Remove);
        let report = run(std::slice::from_ref(&want), &t, false).await;
        let plan = report.groups[0].plan.as_ref().unwrap();
        assert!(
            plan.ops.iter().all(|o| o.member.as_str() != phone(60)),
            "{plan:#?}"
        );
        sb.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn waha_superadmin_is_never_touched() {
    bounded(60, async {
        use WaRole::*;
        for engine in ENGINES {
            let sb = start(world(
                engine,
                vec![(
                    GROUP,
                    vec![
                        (ME_LID.into(), Admin),
                        (OWNER.into(), Superadmin),
                        (phone(5), Participant),
                    ],
                )],
            ))
            .await;
            let t = targets(&sb);
            // Unlisted with `unlisted: remove`: kept.
            let mut want = desired(GROUP, &[(ME_PHONE, Role::Admin)], Unlisted::Remove);
            let report = run(std::slice::from_ref(&want), &t, true).await;
            let plan = report.groups[0].plan.as_ref().unwrap();
            assert!(
                plan.notes
                    .iter()
                    .any(|n| n.contains(OWNER) && n.contains("owner")),
                "{engine:?}: {plan:#?}"
            );
            // Listed as a participant, and a manifest `owner` naming someone else: neither a
            // demotion nor a transfer, only notes.
            want.members.insert(mid(OWNER), Role::Participant);
            want.owner = Some(MemberId(phone(5)));
            want.members.insert(MemberId(phone(5)), Role::Participant);
            let report = run(std::slice::from_ref(&want), &t, true).await;
            let plan = report.groups[0].plan.as_ref().unwrap();
            assert!(
                plan.ops.iter().all(|o| o.member.as_str() != OWNER),
                "{engine:?}: {plan:#?}"
            );
            assert!(
                plan.notes
                    .iter()
                    .any(|n| n.contains("cannot transfer ownership")),
                "{engine:?}: {:?}",
                plan.notes
            );
            let bodies = write_bodies(&sb);
            assert!(!bodies.contains("491700000002"), "{engine:?}: {bodies}");
            assert_eq!(
                sb.waha.group(GROUP).unwrap().members.get(OWNER),
                Some(&Superadmin)
            );
            sb.shutdown().await;
        }
    })
    .await;
}

#[tokio::test]
async fn waha_writes_are_refused_without_a_call_when_the_account_is_not_admin() {
    bounded(30, async {
        let sb = start(world(
            Engine::Webjs,
            vec![(
                GROUP,
                vec![
                    (ME_LID.into(), WaRole::Participant),
                    (OWNER.into(), WaRole::Superadmin),
                    (phone(5), WaRole::Participant),
                ],
            )],
        ))
        .await;
        let want = desired(GROUP, &[(OWNER, Role::Admin)], Unlisted::Remove);
        let report = run(std::slice::from_ref(&want), &targets(&sb), true).await;
        assert_eq!(report.exit_code(true, false), 3);
        let failed: Vec<_> = report.groups[0].failed_ops().collect();
        assert!(
            matches!(&failed[0].outcome, Outcome::Failed { code, message } if code == "not-authorized" && message.contains("not an admin")),
            "{failed:?}"
        );
        // WEBJS would answer such a write 200 and do nothing; it is not even sent.
        assert!(sb.waha.writes().is_empty());
        sb.shutdown().await;
    })
    .await;
}

// ---- Per-member results -------------------------------------------------------------------------

#[tokio::test]
async fn waha_per_member_results_are_read_in_every_engine_shape() {
    bounded(60, async {
        for engine in ENGINES {
            let mut st = world(
                engine,
                vec![(
                    GROUP,
                    vec![
                        (ME_LID.into(), WaRole::Admin),
                        (OWNER.into(), WaRole::Superadmin),
                        (phone(3), WaRole::Participant),
                    ],
                )],
            );
            st.not_on_whatsapp.insert(phone(20));
            st.private.insert(phone(21));
            let sb = start(st).await;
            let c = client(&instance(&sb, |_| {}));
            let g = GroupId(GROUP.into());
            c.fetch(&ctx(), &g).await.unwrap();
            let ops = [phone(3), phone(20), phone(21), phone(22)]
                .map(|p| Op::new(OpKind::Add, MemberId(p)).with_role(Role::Participant));
            let out = c
                .apply(
                    &ctx(),
                    &g,
                    &Batch {
                        kind: OpKind::Add,
                        ops: ops.to_vec(),
                    },
                )
                .await
                .unwrap();
            let codes: Vec<String> = out
                .iter()
                .map(|o| match &o.outcome {
                    Outcome::Failed { code, .. } => code.clone(),
                    other => format!("{other:?}"),
                })
                .collect();
            assert_eq!(
                codes,
                ["AlreadyDone", "404", "403", "Done"],
                "{engine:?}: {out:?}"
            );
            assert_eq!(sb.waha.writes().len(), 1, "one call for the batch");
            sb.shutdown().await;
        }
    })
    .await;
}

#[tokio::test]
async fn waha_one_unreadable_id_fails_the_whole_call_and_changes_nothing() {
    bounded(30, async {
        for engine in [Engine::Gows, Engine::Noweb] {
            let sb = start(drifted(engine, true)).await;
            let c = client(&instance(&sb, |_| {}));
            let g = GroupId(GROUP.into());
            c.fetch(&ctx(), &g).await.unwrap();
            let before = sb.waha.group(GROUP).unwrap();
            let err = c
                .apply(
                    &ctx(),
                    &g,
                    &Batch {
                        kind: OpKind::Add,
                        ops: vec![
                            Op::new(OpKind::Add, MemberId(phone(41))),
                            Op::new(OpKind::Add, MemberId("not-a-number@c.us".into())),
                        ],
                    },
                )
                .await
                .unwrap_err();
            assert_eq!(
                (err.class, err.code.as_deref()),
                (ErrorClass::Fatal, Some("bad-request")),
                "{engine:?}: {err:?}"
            );
            assert_eq!(sb.waha.group(GROUP).unwrap(), before, "{engine:?}");
            sb.shutdown().await;
        }
    })
    .await;
}

#[tokio::test]
async fn waha_a_full_group_refuses_adds_per_member_at_1024() {
    bounded(30, async {
        let mut members: Vec<(String, WaRole)> = (0..1022)
            .map(|n| (format!("4917200{n:05}@c.us"), WaRole::Participant))
            .collect();
        members.push((ME_LID.into(), WaRole::Admin));
        members.push((OWNER.into(), WaRole::Superadmin));
        let sb = start(world(Engine::Noweb, vec![(GROUP, members)])).await;
        let c = client(&instance(&sb, |_| {}));
        let g = GroupId(GROUP.into());
        assert_eq!(c.fetch(&ctx(), &g).await.unwrap().members.len(), 1024);
        let out = c
            .apply(
                &ctx(),
                &g,
                &Batch {
                    kind: OpKind::Add,
                    ops: vec![Op::new(OpKind::Add, MemberId(phone(40)))],
                },
            )
            .await
            .unwrap();
        assert!(
            matches!(&out[0].outcome, Outcome::Failed { code, message } if code == "419" && message.contains("1024")),
            "{out:?}"
        );
        assert_eq!(sb.waha.group(GROUP).unwrap().members.len(), 1024);
        sb.shutdown().await;
    })
    .await;
}

// ---- Throttling and pacing ---------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn waha_rate_overlimit_slows_the_run_and_it_still_converges() {
    bounded(60, async {
        for engine in ENGINES {
            let mut st = world(
                engine,
                vec![(
                    GROUP,
                    vec![
                        (ME_LID.into(), WaRole::Admin),
                        (OWNER.into(), WaRole::Superadmin),
                    ],
                )],
            );
            // WhatsApp lets two adds through per 300 ms window.
            st.overlimit = Some(Overlimit {
                adds: 2,
                per: Duration::from_millis(300),
            });
            let sb = start(st).await;
            let inst = instance(&sb, |_| {});
            let c = client(&inst);
            let t = targets_of(inst, c);
            let mut members: Vec<(String, Role)> =
                (30..36).map(|n| (phone(n), Role::Participant)).collect();
            members.push((ME_PHONE.into(), Role::Admin));
            members.push((OWNER.into(), Role::Admin));
            let refs: Vec<(&str, Role)> = members.iter().map(|(m, r)| (m.as_str(), *r)).collect();
            let want = desired(GROUP, &refs, Unlisted::Remove);

            let started = Instant::now();
            let report = run(std::slice::from_ref(&want), &t, true).await;
            let elapsed = started.elapsed();

            assert_eq!(report.exit_code(true, false), 0, "{engine:?}: {report:#?}");
            assert_eq!(roster(&sb, GROUP), want.members, "{engine:?}");
            let throttled: Vec<u16> = sb
                .waha
                .requests()
                .iter()
                .filter(|r| r.fault.as_deref() == Some("rate-overlimit"))
                .map(|r| r.status)
                .collect();
            assert!(
                !throttled.is_empty(),
                "{engine:?}: WhatsApp throttled at least once"
            );
            // GOWS and NOWEB fail the call with a 500; WEBJS answers 200 with per-member 429s.
            let status = if engine == Engine::Webjs { 200 } else { 500 };
            assert!(
                throttled.iter().all(|s| *s == status),
                "{engine:?}: {throttled:?}"
            );
            assert!(
                t["wa"].provider.requests().throttled >= 1,
                "{engine:?}: the client saw the throttle"
            );
            assert_eq!(
                sb.waha.writes().len(),
                6,
                "{engine:?}: every add went through once"
            );
            // Six adds at two per window need three windows: at least one whole window passed.
            assert!(
                elapsed >= Duration::from_millis(300),
                "{engine:?}: {elapsed:?}"
            );
            sb.shutdown().await;
        }
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn waha_writes_of_concurrent_groups_go_one_at_a_time() {
    bounded(30, async {
        use WaRole::*;
        let admins = || vec![(ME_LID.to_string(), Admin), (OWNER.to_string(), Superadmin)];
        let second = "120363000000000002@g.us";
        let sb = start(world(
            Engine::Gows,
            vec![(GROUP, admins()), (second, admins())],
        ))
        .await;
        // Every write takes 250 ms; groups run concurrently and the interval is zero.
        sb.waha
            .inject(Fault::next(4, FaultKind::Slow(Duration::from_millis(250))).writes_only());
        let mut groups = Vec::new();
        for (id, first) in [(GROUP, 70), (second, 80)] {
            let mut g = desired(
                id,
                &[(ME_PHONE, Role::Admin), (OWNER, Role::Admin)],
                Unlisted::Remove,
            );
            g.name = id.to_string();
            for n in first..first + 2 {
                g.members.insert(MemberId(phone(n)), Role::Participant);
            }
            groups.push(g);
        }
        let started = Instant::now();
        let report = run(&groups, &targets(&sb), true).await;
        let elapsed = started.elapsed();
        assert_eq!(report.exit_code(true, false), 0, "{report:#?}");
        assert_eq!(sb.waha.writes().len(), 4);
        // Four slow writes one after another (4 x 250 ms, plus tokio's millisecond timer
        // rounding), not two pairs side by side (500 ms).
        assert!(
            elapsed >= Duration::from_millis(1000) && elapsed < Duration::from_millis(1050),
            "{elapsed:?}"
        );
        sb.shutdown().await;
    })
    .await;
}

#[test]
fn waha_rate_overlimit_in_a_500_is_a_throttle_in_every_engine_shape() {
    let resp = |body: serde_json::Value| rosterd::provider::http::Response {
        status: 500,
        headers: Default::default(),
        body: body.to_string().into(),
        received: std::time::SystemTime::UNIX_EPOCH,
    };
    for body in [
        serde_json::json!({"statusCode": 500, "exception": {"message": "rate-overlimit", "data": 429}}),
        serde_json::json!({"statusCode": 500, "exception": {"message": "failed", "details": "info query returned status 429: rate-overlimit"}}),
        serde_json::json!({"statusCode": 500, "exception": {"message": "IQErrorRateOverlimit: rate-overlimit"}}),
    ] {
        let e = waha::classify_error(&resp(body), "add");
        assert_eq!(e.class, ErrorClass::Throttled, "{e:?}");
        assert_eq!(e.code.as_deref(), Some("rate-overlimit"));
    }
    for (body, code) in [
        (
            serde_json::json!({"statusCode": 500, "exception": {"message": "not-authorized", "data": 401}}),
            "not-authorized",
        ),
        (
            serde_json::json!({"statusCode": 500, "exception": {"message": "failed", "details": "that group does not exist"}}),
            "item-not-found",
        ),
        (
            serde_json::json!({"statusCode": 500, "exception": {"message": "Cannot read properties of undefined (reading 'map')", "name": "TypeError"}}),
            "type-error",
        ),
    ] {
        let e = waha::classify_error(&resp(body), "add");
        assert_eq!(
            (e.class, e.code.as_deref()),
            (ErrorClass::Fatal, Some(code))
        );
    }
    let e = waha::classify_error(
        &resp(
            serde_json::json!({"statusCode": 500, "exception": {"message": "Connection Closed"}}),
        ),
        "add",
    );
    assert_eq!(e.class, ErrorClass::Transient);
}

#[tokio::test]
async fn waha_default_pacing_is_one_add_per_ten_seconds() {
    bounded(30, async {
        let sb = start(world(Engine::Gows, vec![])).await;
        let inst = instance(&sb, |c| {
            c.interval = None;
            c.rate = None;
            c.timeout = None;
        });
        let c = Waha::with_key(&inst, Secret::new(KEY)).unwrap();
        let (http, add_batch) = c.pacing();
        assert_eq!(http.interval, Duration::from_secs(10));
        assert_eq!(http.rate, Some(2.0));
        assert_eq!(http.timeout, Duration::from_secs(60));
        assert_eq!(add_batch, 1);
        let caps = c.capabilities_for(&Default::default());
        assert_eq!(inst.batch_size(OpKind::Add, &caps), 1);
        assert_eq!(inst.batch_size(OpKind::Remove, &caps), 20);
        // 100 adds: 100 calls, 99 intervals of 10 s between their starts.
        assert_eq!(waha::default_add_time(100, None), Duration::from_secs(990));

        // `batch_size` and `interval` override them.
        let inst = instance(&sb, |c| {
            c.batch_size = Some(5);
            c.interval = Some(Duration::from_secs(30));
        });
        let c = Waha::with_key(&inst, Secret::new(KEY)).unwrap();
        let caps = c.capabilities_for(&Default::default());
        assert_eq!(inst.batch_size(OpKind::Add, &caps), 5);
        assert_eq!(c.pacing().0.interval, Duration::from_secs(30));
        sb.shutdown().await;
    })
    .await;
}

/// A 100-add drift under the real default pacing, on tokio's paused clock: 100 add calls of one
/// member, 10 s apart, so 99 intervals after the first write, plus the reads the 2 requests/s
/// cap spaces before it — 16.5 minutes of the provider's time, well under a
/// second of ours. `default_add_time` is the figure the README and BENCHMARKS quote.
#[tokio::test(start_paused = true)]
async fn waha_hundred_adds_under_the_default_pacing() {
    bounded(1500, async {
        let (sb, want) = hundred_adds().await;
        let inst = instance(&sb, |c| {
            c.interval = None;
            c.rate = None;
            c.timeout = None;
        });
        let c = client(&inst);
        let t = targets_of(inst, c);
        let started = Instant::now();
        let report = run(std::slice::from_ref(&want), &t, true).await;
        let elapsed = started.elapsed();
        assert_eq!(report.exit_code(true, false), 0, "{report:#?}");
        assert_eq!(sb.waha.writes().len(), 100);
        assert_eq!(report.calls(), 100);
        eprintln!("waha 100 adds under the default pacing: {elapsed:?}");
        assert_eq!(waha::default_add_time(100, None), Duration::from_secs(990));
        assert_eq!(elapsed, Duration::from_secs(990) + PACED_READS);
        sb.shutdown().await;
    })
    .await;
}

/// What the 2 requests/s cap adds before a run's first write: the session read, then the
/// listing 0.5 s later, then the write 0.5 s after that. The re-read after the last write comes
/// 10 s after the previous request, so it waits for nothing.
const PACED_READS: Duration = Duration::from_secs(1);

async fn hundred_adds() -> (Sandbox, DesiredGroup) {
    let sb = start(world(
        Engine::Gows,
        vec![(
            GROUP,
            vec![
                (ME_LID.into(), WaRole::Admin),
                (OWNER.into(), WaRole::Superadmin),
            ],
        )],
    ))
    .await;
    let mut members: Vec<(String, Role)> = (0..100)
        .map(|n| (format!("4917100{n:05}"), Role::Participant))
        .collect();
    members.push((ME_PHONE.into(), Role::Admin));
    members.push((OWNER.into(), Role::Admin));
    let refs: Vec<(&str, Role)> = members.iter().map(|(m, r)| (m.as_str(), *r)).collect();
    (sb, desired(GROUP, &refs, Unlisted::Remove))
}

// ---- Session gate ---------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn waha_session_not_working_fails_fast_with_a_clear_message_and_writes_nothing() {
    bounded(30, async {
        for status in ["SCAN_QR_CODE", "STOPPED", "FAILED", "STARTING"] {
            let mut st = drifted(Engine::Gows, true);
            st.status = status.into();
            st.groups
                .insert("120363000000000002@g.us".into(), st.groups[GROUP].clone());
            let sb = start(st).await;
            let mut second = round_trip_manifest();
            second.id = GroupId("120363000000000002@g.us".into());
            second.name = "second".into();
            // The default 60 s timeout: a session gate that held calls would show here.
            let inst = instance(&sb, |c| c.timeout = None);
            let c = client(&inst);
            let t = targets_of(inst, c);

            let started = Instant::now();
            let report = run(&[round_trip_manifest(), second], &t, true).await;
            let elapsed = started.elapsed();

            // No wait at all (tokio's timers round to the millisecond): a session gate that
            // held calls, or a retry of the refusal, would show here.
            assert!(elapsed <= Duration::from_millis(2), "{status}: {elapsed:?}");
            assert_eq!(report.exit_code(true, false), 3, "{status}");
            for g in &report.groups {
                let err = g.error.as_deref().unwrap_or_default();
                assert!(
                    err.contains(status) && err.contains("not WORKING"),
                    "{status}: {err}"
                );
            }
            let log = sb.waha.requests();
            assert!(sb.waha.writes().is_empty(), "{status}");
            assert!(
                log.iter().all(|r| r.path == "/api/sessions/default"),
                "{status}: no group endpoint is called: {log:?}"
            );
            let err = t["wa"]
                .provider
                .fetch(&ctx(), &GroupId(GROUP.into()))
                .await
                .unwrap_err();
            let class = if status == "STARTING" {
                ErrorClass::Transient
            } else {
                ErrorClass::Fatal
            };
            assert_eq!(err.class, class, "{status}: {err:?}");
            sb.shutdown().await;
        }
    })
    .await;
}

#[tokio::test]
async fn waha_unknown_session_and_wrong_key_are_fatal() {
    bounded(30, async {
        let sb = start(drifted(Engine::Gows, true)).await;
        let mut inst = instance(&sb, |_| {});
        inst.settings = KindSettings::new(Settings {
            session: "other".into(),
            api_key: SecretRef::Env("ROSTERD_IT_UNSET_WAHA_KEY".into()),
        });
        let err = client(&inst)
            .fetch(&ctx(), &GroupId(GROUP.into()))
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::Fatal);
        assert!(err.message.contains("no session \"other\""), "{err}");

        let wrong = Waha::with_key(&instance(&sb, |_| {}), Secret::new("nope-nope-nope"))
            .unwrap()
            .fetch(&ctx(), &GroupId(GROUP.into()))
            .await
            .unwrap_err();
        assert_eq!(
            (wrong.class, wrong.code.as_deref()),
            (ErrorClass::Fatal, Some("unauthorized"))
        );
        assert!(!wrong.to_string().contains("nope-nope-nope"));
        sb.shutdown().await;
    })
    .await;
}

// ---- Minimum calls -------------------------------------------------------------------------------

/// 120 adds, 60 removals, 15 promotions and 15 demotions.
fn big_drift() -> (State, DesiredGroup) {
    use WaRole::*;
    let p = |base: u32, n: u32| format!("4917{base:02}{n:06}@c.us");
    let mut live: Vec<(String, WaRole)> = vec![(ME_LID.into(), Admin), (OWNER.into(), Superadmin)];
    let mut want: Vec<(String, Role)> =
        vec![(ME_PHONE.into(), Role::Admin), (OWNER.into(), Role::Admin)];
    want.extend((0..120).map(|n| (p(10, n), Role::Participant)));
    live.extend((0..60).map(|n| (p(11, n), Participant)));
    live.extend((0..15).map(|n| (p(12, n), Participant)));
    want.extend((0..15).map(|n| (p(12, n), Role::Admin)));
    live.extend((0..15).map(|n| (p(13, n), Admin)));
    want.extend((0..15).map(|n| (p(13, n), Role::Participant)));
    live.extend((0..10).map(|n| (p(14, n), Participant)));
    want.extend((0..10).map(|n| (p(14, n), Role::Participant)));
    let refs: Vec<(&str, Role)> = want.iter().map(|(m, r)| (m.as_str(), *r)).collect();
    (
        world(Engine::Gows, vec![(GROUP, live)]),
        desired(GROUP, &refs, Unlisted::Remove),
    )
}

#[tokio::test]
async fn waha_large_drift_takes_the_minimum_number_of_write_calls() {
    bounded(60, async {
        // batch_size 20 (the most per call): ⌈120/20⌉ + ⌈60/20⌉ + 1 + 1 = 11 calls.
        // Unset, adds go one per call (the safe default): 120 + 3 + 1 + 1 = 125.
        for (batch_size, calls) in [(Some(20), 11), (Some(50), 11), (None, 125)] {
            let (state, want) = big_drift();
            let sb = start(state).await;
            let inst = instance(&sb, |c| c.batch_size = batch_size);
            let c = client(&inst);
            let t = targets_of(inst, c);

            let report = run(std::slice::from_ref(&want), &t, true).await;

            assert_eq!(report.exit_code(true, false), 0, "{report:#?}");
            let plan = report.groups[0].plan.as_ref().unwrap();
            assert_eq!(
                [OpKind::Add, OpKind::Remove, OpKind::Promote, OpKind::Demote]
                    .map(|k| plan.count(k)),
                [120, 60, 15, 15]
            );
            assert_eq!(sb.waha.writes().len(), calls, "{batch_size:?}");
            assert_eq!(
                report.calls(),
                calls,
                "{batch_size:?}: one request per call"
            );
            assert_eq!(roster(&sb, GROUP), want.members);
            sb.shutdown().await;
        }
    })
    .await;
}

// ---- Faults ---------------------------------------------------------------------------------------

#[tokio::test]
async fn waha_a_failed_read_is_an_error_never_a_short_roster() {
    bounded(30, async {
        let sb = start(drifted(Engine::Noweb, true)).await;
        let want = round_trip_manifest();
        let t = targets(&sb);
        t["wa"].provider.fetch(&ctx(), &want.id).await.unwrap();
        sb.waha.clear_log();
        // The listing answers, then the lookup of lid 4 (whose phone only the lids API knows)
        // is refused: the read fails as a whole, so nothing is planned and nobody is removed.
        sb.waha
            .inject(Fault::next(1, FaultKind::Slow(Duration::ZERO)));
        sb.waha.inject(Fault::next(1, FaultKind::Status(401)));
        let report = run(std::slice::from_ref(&want), &t, true).await;
        assert!(report.groups[0].plan.is_none(), "{report:#?}");
        let error = report.groups[0].error.as_deref().unwrap();
        assert!(error.contains("look up lid"), "{error}");
        let log = sb.waha.requests();
        assert!(log[0].path.ends_with("/participants/v2"), "{log:?}");
        assert_eq!(
            log[1].path,
            format!("/api/default/lids/{}", lid(4)),
            "{log:?}"
        );
        assert!(sb.waha.writes().is_empty());
        // Every request refused: the same.
        sb.waha.inject(Fault::next(100, FaultKind::Status(401)));
        let report = run(std::slice::from_ref(&want), &t, true).await;
        assert!(report.groups[0].plan.is_none(), "{report:#?}");
        assert!(sb.waha.writes().is_empty());
        sb.waha.clear_faults();
        // Transient 500s are retried and the run converges.
        sb.waha.inject(Fault::next(2, FaultKind::Status(500)));
        let report = run(std::slice::from_ref(&want), &t, true).await;
        assert_eq!(report.exit_code(true, false), 0, "{report:#?}");
        assert_eq!(roster(&sb, GROUP), want.members);
        sb.shutdown().await;
    })
    .await;
}

// ---- Secrets ---------------------------------------------------------------------------------------

#[tokio::test]
async fn waha_api_key_never_appears_in_output_errors_plans_logs_or_audit() {
    bounded(60, async {
        let (logs, _guard) = capture_logs();

        let mut st = drifted(Engine::Noweb, true);
        st.private.insert(phone(8));
        st.overlimit = Some(Overlimit {
            adds: 1,
            per: Duration::from_millis(200),
        });
        let sb = start(st).await;
        sb.waha
            .inject(Fault::next(1, FaultKind::Status(500)).writes_only());
        let want = round_trip_manifest();
        let missing = desired(
            "120363999999999999@g.us",
            &[(OWNER, Role::Admin)],
            Unlisted::Keep,
        );
        let inst = instance(&sb, |_| {});
        let c = client(&inst);
        let debug_client = format!("{c:?}");
        let t = targets_of(inst, c);

        let (report, mut seen) = applied_and_shown(&[want, missing], &t).await;
        assert_eq!(report.exit_code(true, false), 3, "{report:#?}");

        seen.extend([
            serde_json::to_string(&sb.waha.requests()).unwrap(),
            format!("{:?}", t["wa"].instance),
            debug_client,
        ]);
        let wrong = Waha::with_key(
            &instance(&sb, |_| {}),
            Secret::new("feedfacefeedface-wrong"),
        )
        .unwrap();
        let err = wrong
            .fetch(&ctx(), &GroupId(GROUP.into()))
            .await
            .unwrap_err();
        seen.push(format!("{err} {err:?} {wrong:?}"));
        drop(_guard);
        seen.push(logs.text());

        assert!(
            seen[5].contains(&phone(8)),
            "the audit log has the per-member outcome"
        );
        assert!(
            seen.last().unwrap().contains("wa"),
            "the logs were captured"
        );
        for s in &seen {
            assert!(!s.contains(KEY), "the API key leaked into: {s}");
            assert!(
                !s.contains("feedfacefeedface"),
                "the API key leaked into: {s}"
            );
        }
        sb.shutdown().await;
    })
    .await;
}

// ---- Validation --------------------------------------------------------------------------------------

#[test]
fn waha_moderators_bans_mutes_and_lids_fail_validation_naming_provider_and_group() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_tree(
        dir.path(),
        &[
            ("rosterd.yaml", WA_ROOT),
            (
                "people.yaml",
                "people:\n  ana: { waha: \"+49 170 0000003\" }\n",
            ),
            (
                "groups/g.yaml",
                "group: mods\nprovider: wa\nid: \"120363000000000001@g.us\"\nmoderators: [ana]\n---\ngroup: banned\nprovider: wa\nid: \"120363000000000002@g.us\"\nparticipants: [ana]\nbans: [\"+49 170 0000004\"]\n---\ngroup: muted\nprovider: wa\nid: \"120363000000000003@g.us\"\nparticipants: [ana]\nmutes:\n  - { member: ana }\n---\ngroup: lids\nprovider: wa\nid: \"120363000000000004@g.us\"\nparticipants: [ana, \"900000000000003@lid\"]\n",
            ),
        ],
    );
    let text = rosterd::config::load(&cfg).unwrap_err().to_string();
    // A hidden lid names nobody rosterd can match safely once WAHA learns the phone behind it.
    assert!(
        text.lines()
            .any(|l| l.contains("900000000000003@lid") && l.contains("phone number")),
        "{text}"
    );
    for (group, what) in [
        ("mods", "has no moderator role"),
        ("banned", "cannot ban members"),
        ("muted", "cannot mute members"),
    ] {
        assert!(
            text.lines().any(
                |l| l.contains(&format!("group {group}: provider wa (waha)")) && l.contains(what)
            ),
            "{group}: {text}"
        );
    }
}

// ---- Demo ----------------------------------------------------------------------------------------------

#[tokio::test]
async fn waha_demo_covers_whatsapp_and_ends_in_sync_in_seconds() {
    bounded(60, async {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
        let mut out = Vec::new();
        let started = Instant::now();
        let code = rosterd::demo::demo(&dir, &mut out, false).await.unwrap();
        let elapsed = started.elapsed();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("sandbox: waha emulator at"), "{out}");
        let (first, rest) = out.split_once("== apply ==").expect("an apply section");
        let (applied, second) = rest.split_once("== plan after apply ==").unwrap();
        assert!(
            first.contains("@c.us"),
            "the first plan has WhatsApp members:\n{first}"
        );
        let wa_line = applied
            .lines()
            .find(|l| l.starts_with("group family-chat:"))
            .unwrap_or_else(|| panic!("{applied}"));
        assert!(wa_line.contains("applied and verified"), "{wa_line}");
        let (_, wa_after) = second
            .split_once("group family-chat (wa waha")
            .unwrap_or_else(|| panic!("{second}"));
        assert!(
            wa_after
                .lines()
                .nth(1)
                .is_some_and(|l| l.trim() == "in sync"),
            "{second}"
        );
        assert!(
            !out.contains("sandbox-waha-key"),
            "the key is never printed"
        );
        assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    })
    .await;
}
