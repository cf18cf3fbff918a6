//! `plan --out` / `apply --plan`: a reviewed plan is applied only to the groups that have not
//! moved since, against the CometChat emulator over HTTP.

use std::path::PathBuf;

use rosterd::sandbox::cometchat::Scope;

use crate::cli::{MANIFEST, code, rosterd, text, tree, world};
use crate::support::{CC_APP, bounded, group, sandbox};

/// The CLI test world plus a second group `other`, both managed.
fn two_groups() -> rosterd::sandbox::cometchat::State {
    let mut s = world();
    s.apps.get_mut(CC_APP).unwrap().groups.insert(
        "other".into(),
        group(
            Some("alice"),
            &[("alice", Scope::Admin), ("dave", Scope::Participant)],
            &[],
        ),
    );
    s
}

const OTHER: &str =
    "group: other\nprovider: cc\nid: other\nowner: alice\nadmins: [alice]\nparticipants: [bob]\n";

/// Both groups managed, and `plan --out plan.json` written: the reviewed plan.
async fn reviewed() -> (
    rosterd::sandbox::Sandbox,
    tempfile::TempDir,
    PathBuf,
    PathBuf,
) {
    let sb = sandbox(two_groups()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = tree(dir.path(), &sb, MANIFEST, "");
    std::fs::write(dir.path().join("groups/other.yaml"), OTHER).unwrap();
    let file = dir.path().join("plan.json");
    let plan = rosterd(&cfg, &["plan", "--out", file.to_str().unwrap()]);
    assert_eq!(code(&plan), 0, "{}", text(&plan));
    (sb, dir, cfg, file)
}

fn writes_to(sb: &rosterd::sandbox::Sandbox, guid: &str) -> usize {
    sb.cometchat
        .writes()
        .iter()
        .filter(|w| w.path.contains(&format!("/groups/{guid}/")))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_plan_refuses_only_the_group_whose_live_roster_moved() {
    bounded(60, async {
        let (sb, _dir, cfg, file) = reviewed().await;
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(doc["version"], 2);
        assert!(doc["tree"].as_str().unwrap().starts_with("sha256:"));
        let sums: Vec<&str> = doc["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["checksum"]["group"].as_str().unwrap())
            .collect();
        assert_eq!(sums.len(), 2);
        let md = rosterd(&cfg, &["plan", "--format", "markdown"]);
        let short = &sums[0]["sha256:".len().."sha256:".len() + 12];
        assert!(
            text(&md).contains(short),
            "markdown shows the checksum: {}",
            text(&md)
        );

        // Someone changes `other` by hand between review and apply.
        sb.cometchat.with_state(|s| {
            let g = s
                .apps
                .get_mut(CC_APP)
                .unwrap()
                .groups
                .get_mut("other")
                .unwrap();
            g.members.insert("erin".into(), Scope::Participant);
        });
        sb.cometchat.clear_log();
        let apply = rosterd(&cfg, &["apply", "--plan", file.to_str().unwrap()]);
        assert_eq!(code(&apply), 3, "{}", text(&apply));
        let out = text(&apply);
        assert!(
            out.contains("group other changed since the reviewed plan")
                && out.contains("its live roster changed"),
            "{out}"
        );
        assert!(
            out.contains("planned operations now differ for erin"),
            "{out}"
        );
        assert_eq!(
            writes_to(&sb, "other"),
            0,
            "nothing written to the moved group"
        );
        assert!(writes_to(&sb, "team") > 0, "the unchanged group is applied");
        let team = sb.cometchat.group(CC_APP, "team").unwrap();
        assert!(team.members.contains_key("carol") && !team.members.contains_key("zed"));
        let other = sb.cometchat.group(CC_APP, "other").unwrap();
        assert!(other.members.contains_key("erin") && other.members.contains_key("dave"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_plan_refuses_a_group_whose_files_changed_and_rejects_foreign_or_broken_plans() {
    bounded(60, async {
        let (sb, dir, cfg, file) = reviewed().await;
        let f = file.to_str().unwrap();

        // A manifest edited after the review: that group is refused, the other applied.
        std::fs::write(
            dir.path().join("groups/other.yaml"),
            format!("{OTHER}moderators: [carol]\n"),
        )
        .unwrap();
        let apply = rosterd(&cfg, &["apply", "--plan", f, "--format", "json"]);
        assert_eq!(code(&apply), 3, "{}", text(&apply));
        let doc: serde_json::Value = serde_json::from_slice(&apply.get_output().stdout).unwrap();
        let results = doc["results"].as_array().unwrap();
        let by = |n: &str| results.iter().find(|r| r["group"] == n).unwrap().clone();
        assert_eq!(by("team")["status"], "applied");
        assert_eq!(by("other")["status"], "failed");
        assert!(
            by("other")["error"]
                .as_str()
                .unwrap()
                .contains("its files (manifest or people.yaml) changed"),
            "{doc}"
        );
        assert_eq!(writes_to(&sb, "other"), 0);

        // Malformed, of another version, or of another tree: exit 1, no request at all.
        sb.cometchat.clear_log();
        let mut doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        for (name, body) in [
            ("broken.json", "{\"version\": 2, \"groups\": [".to_string()),
            ("v1.json", {
                doc["version"] = 1.into();
                doc.to_string()
            }),
            ("foreign.json", {
                doc["version"] = 2.into();
                doc["tree"] = "sha256:0000".into();
                doc.to_string()
            }),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, body).unwrap();
            let a = rosterd(&cfg, &["apply", "--plan", p.to_str().unwrap()]);
            assert_eq!(code(&a), 1, "{name}: {}", text(&a));
            assert!(text(&a).contains("nothing was written"), "{}", text(&a));
        }
        assert!(sb.cometchat.requests().is_empty(), "no request at all");
    })
    .await
}
