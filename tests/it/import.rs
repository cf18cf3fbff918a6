//! `rosterd import` against the emulators of all four providers over HTTP: import → plan shows
//! no change; a managed group or an existing file is refused.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use rosterd::provider::Kind;
use rosterd::sandbox::{Ports, Sandbox, SandboxState};
use tokio_util::sync::CancellationToken;

use crate::support::bounded;

/// The demo world (manifests/sandbox-state.yaml) on ephemeral ports.
async fn demo_sandbox() -> (Sandbox, SandboxState) {
    let state = SandboxState::load(Path::new("manifests/sandbox-state.yaml")).unwrap();
    let sb = Sandbox::start(state.clone(), Ports::EPHEMERAL, CancellationToken::new())
        .await
        .unwrap();
    (sb, state)
}

/// The demo tree's instances and people pointed at the sandbox, with no manifest yet.
fn empty_tree(dir: &Path, sb: &Sandbox) -> PathBuf {
    let url = |k| sb.base_url(k).unwrap();
    let root = format!(
        "manifests: groups/\npeople: people.yaml\nproviders:\n  cc:\n    kind: cometchat\n    app_id: rosterd-demo\n    region: eu\n    api_key: {{ env: IT_CC }}\n    base_url: {}\n    rate: 500/s\n    protected: [bot-admin]\n  tim:\n    kind: tencent\n    sdk_app_id: 1400000001\n    identifier: administrator\n    secret_key: {{ env: IT_TIM }}\n    base_url: {}\n    rate: 500/s\n  b24:\n    kind: bitrix24\n    webhook_url: {{ env: IT_B24 }}\n    rate: 500/s\n  wa:\n    kind: waha\n    base_url: {}\n    session: default\n    api_key: {{ env: IT_WA }}\n    interval: 0s\n    rate: 500/s\n",
        url(Kind::Cometchat),
        url(Kind::Tencent),
        url(Kind::Waha)
    );
    std::fs::create_dir_all(dir.join("groups")).unwrap();
    std::fs::write(dir.join("rosterd.yaml"), root).unwrap();
    std::fs::copy("manifests/people.yaml", dir.join("people.yaml")).unwrap();
    dir.join("rosterd.yaml")
}

fn rosterd(sb: &Sandbox, state: &SandboxState, config: &Path, args: &[&str]) -> (i32, String) {
    let cc = state.cometchat.apps["rosterd-demo"].api_key.clone();
    let tim = state
        .tencent
        .apps
        .values()
        .next()
        .unwrap()
        .secret_key
        .clone();
    let (code, user) = state.bitrix24.webhooks.iter().next().unwrap();
    let b24 = format!(
        "{}/rest/{user}/{code}/",
        sb.base_url(Kind::Bitrix24).unwrap()
    );
    let out = Command::cargo_bin("rosterd")
        .unwrap()
        .args(args)
        .arg("--config")
        .arg(config)
        .env("IT_CC", cc)
        .env("IT_TIM", tim)
        .env("IT_B24", b24)
        .env("IT_WA", &state.waha.api_key)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .timeout(std::time::Duration::from_secs(60))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Import one group, check the manifest names people, and that a plan then shows no change
/// and that importing it again is refused.
async fn round_trip(instance: &str, id: &str, file: &str, named: &[&str]) -> String {
    let (sb, state) = demo_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = empty_tree(dir.path(), &sb);
    let stub = dir.path().join("stub.yaml");
    let (code, out) = rosterd(
        &sb,
        &state,
        &cfg,
        &[
            "import",
            "--provider",
            instance,
            "--id",
            id,
            "--people-stub",
            stub.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    let manifest = std::fs::read_to_string(dir.path().join("groups").join(file))
        .unwrap_or_else(|e| panic!("{file}: {e}\n{out}"));
    for n in named {
        assert!(
            manifest.contains(&format!("- \"{n}\"")),
            "{n} by name:\n{manifest}"
        );
    }
    let stub_text = std::fs::read_to_string(&stub).unwrap();
    let (code, plan) = rosterd(&sb, &state, &cfg, &["plan", "--detailed-exitcode"]);
    assert_eq!(
        code, 0,
        "import -> plan shows no change:\n{plan}\n{manifest}"
    );
    assert!(plan.contains("in sync"), "{plan}");

    let (code, again) = rosterd(
        &sb,
        &state,
        &cfg,
        &["import", "--provider", instance, "--id", id, "--force"],
    );
    assert_eq!(code, 1, "{again}");
    assert!(again.contains("is already managed by group"), "{again}");
    format!("{manifest}\n{stub_text}")
}

#[tokio::test(flavor = "multi_thread")]
async fn import_round_trips_a_cometchat_group_with_bans() {
    bounded(60, async {
        let text = round_trip(
            "cc",
            "support-desk",
            "support-desk.yaml",
            &["dave", "erin", "alice"],
        )
        .await;
        assert!(text.contains("owner: \"dave\""), "{text}");
        assert!(text.contains("bans:\n  - \"mallory\""), "{text}");
        assert!(
            text.contains("\"peggy\": { \"cc\": \"peggy\" }"),
            "unnamed ids in the stub: {text}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn import_round_trips_a_tencent_group_with_mutes_bans_and_owner() {
    bounded(60, async {
        let text = round_trip(
            "tim",
            "@TGS#demo-lobby",
            "tgs-demo-lobby.yaml",
            &["alice", "carol", "mallory"],
        )
        .await;
        assert!(text.contains("owner: \"bob\""), "{text}");
        assert!(text.contains("bans:\n  - \"frank\""), "{text}");
        assert!(text.contains("  - member: \"erin\""), "a live mute: {text}");
        assert!(
            !text.contains("member: \"carol\""),
            "an expired mute is not imported: {text}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn import_round_trips_a_bitrix24_chat() {
    bounded(60, async {
        let text = round_trip("b24", "chat42", "b24-42.yaml", &["alice", "carol"]).await;
        assert!(text.contains("id: \"42\""), "{text}");
        assert!(text.contains("owner: \"1\""), "{text}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn import_round_trips_a_whatsapp_group_keeping_hidden_ids_out() {
    bounded(60, async {
        let text = round_trip(
            "wa",
            "120363000000000042@g.us",
            "120363000000000042-g-us.yaml",
            &["alice", "bob", "carol"],
        )
        .await;
        assert!(
            text.contains("100000000000077@lid"),
            "the unresolved id is reported: {text}"
        );
        assert!(
            text.contains("\"491701000006@c.us\""),
            "an unnamed phone as its id: {text}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn import_never_overwrites_without_force_and_writes_nothing_on_refusal() {
    bounded(60, async {
        let (sb, state) = demo_sandbox().await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = empty_tree(dir.path(), &sb);
        let out = dir.path().join("elsewhere");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("eng-oncall.yaml"), "# mine\n").unwrap();
        let args = [
            "import",
            "--provider",
            "cc",
            "--id",
            "eng-oncall",
            "--id",
            "eng-announce",
            "--out",
            out.to_str().unwrap(),
        ];
        let (code, text) = rosterd(&sb, &state, &cfg, &args);
        assert_eq!(code, 1, "{text}");
        assert!(
            text.contains("eng-oncall.yaml exists; not overwritten (use --force)"),
            "{text}"
        );
        assert_eq!(
            std::fs::read_to_string(out.join("eng-oncall.yaml")).unwrap(),
            "# mine\n"
        );
        assert!(
            !out.join("eng-announce.yaml").exists(),
            "nothing written at all"
        );
        assert!(
            sb.cometchat.requests().is_empty(),
            "refused before any request"
        );

        let mut forced = args.to_vec();
        forced.push("--force");
        let (code, text) = rosterd(&sb, &state, &cfg, &forced);
        assert_eq!(code, 0, "{text}");
        let m = std::fs::read_to_string(out.join("eng-oncall.yaml")).unwrap();
        assert!(m.contains("group: \"eng-oncall\""), "{m}");
        assert!(out.join("eng-announce.yaml").exists());
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_live_adds_actual_membership_and_plans_the_blast_radius_from_it() {
    bounded(60, async {
        let (sb, state) = demo_sandbox().await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = empty_tree(dir.path(), &sb);
        for e in std::fs::read_dir("manifests/groups").unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, dir.path().join("groups").join(p.file_name().unwrap())).unwrap();
        }
        let (code, offline) = rosterd(&sb, &state, &cfg, &["explain", "alice"]);
        assert_eq!(code, 0, "{offline}");
        assert!(!offline.contains("live:"), "{offline}");
        assert!(sb.cometchat.requests().is_empty(), "offline by default");

        let (code, out) = rosterd(&sb, &state, &cfg, &["explain", "alice", "--live", "--without"]);
        assert_eq!(code, 0, "{out}");
        assert!(
            out.contains("group family-chat (wa waha, id 120363000000000042@g.us)\n  alice (491701000001@c.us): admin\n    admins: alice\n    live: member, participant"),
            "{out}"
        );
        assert!(out.contains("  alice: admin, owner\n    owner: alice\n    admins: @sre-leads → alice\n    participants: @sre → @sre-leads → alice\n    live: member, admin, owner"), "{out}");
        // support-desk's live alice is a moderator: without her, the plan removes her from there.
        assert!(out.contains("group support-desk (cc cometchat, id support-desk), from the live:\n  remove alice, now moderator"), "{out}");
        assert_eq!(sb.cometchat.writes().len(), 0, "explain writes nothing");
    })
    .await
}
