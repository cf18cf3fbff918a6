//! The binary end to end: every exit code, output formats, NO_COLOR, and that no secret
//! reaches stdout, stderr or the audit log. Each test runs `rosterd` against an in-process
//! CometChat emulator on 127.0.0.1.

use std::path::Path;

use assert_cmd::Command;
use rosterd::sandbox::Sandbox;
use rosterd::sandbox::cometchat::Scope;

use crate::support::{CC_KEY, bounded, cc_state, group, sandbox};

/// A GitOps tree pointed at the sandbox: one group `team` with the given manifest body.
pub fn tree(dir: &Path, sb: &Sandbox, manifest: &str, extra_root: &str) -> std::path::PathBuf {
    let base = sb.base_url(rosterd::provider::Kind::Cometchat).unwrap();
    let root = format!(
        "manifests: groups/\npeople: people.yaml\naudit_log: audit.jsonl\n{extra_root}providers:\n  cc:\n    kind: cometchat\n    app_id: it\n    region: eu\n    api_key: {{ env: IT_CC_KEY }}\n    base_url: {base}\n    rate: 200/s\n"
    );
    std::fs::create_dir_all(dir.join("groups")).unwrap();
    std::fs::write(dir.join("rosterd.yaml"), root).unwrap();
    std::fs::write(
        dir.join("people.yaml"),
        "people:\n  alice: { cometchat: alice }\nteams:\n  crew: [bob, carol]\n",
    )
    .unwrap();
    std::fs::write(dir.join("groups/team.yaml"), manifest).unwrap();
    dir.join("rosterd.yaml")
}

pub fn rosterd(config: &Path, args: &[&str]) -> assert_cmd::assert::Assert {
    let mut cmd = Command::cargo_bin("rosterd").unwrap();
    cmd.args(args)
        .arg("--config")
        .arg(config)
        .env("IT_CC_KEY", CC_KEY)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG");
    cmd.timeout(std::time::Duration::from_secs(60)).assert()
}

pub fn world() -> rosterd::sandbox::cometchat::State {
    cc_state(
        ["alice", "bob", "carol", "dave", "zed"].map(String::from),
        vec![(
            "team",
            group(
                Some("alice"),
                &[
                    ("alice", Scope::Admin),
                    ("bob", Scope::Admin),
                    ("zed", Scope::Participant),
                ],
                &[],
            ),
        )],
    )
}

pub const MANIFEST: &str = "group: team\nprovider: cc\nid: team\nowner: alice\nadmins: [alice]\nparticipants: [\"@crew\"]\n";

pub fn code(a: &assert_cmd::assert::Assert) -> i32 {
    a.get_output().status.code().unwrap_or(-1)
}

pub fn text(a: &assert_cmd::assert::Assert) -> String {
    let o = a.get_output();
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_validate_exits_0_on_the_demo_tree_and_1_on_mistakes() {
    let ok = Command::cargo_bin("rosterd")
        .unwrap()
        .args(["validate", "--config", "manifests/rosterd.yaml"])
        .assert();
    assert_eq!(code(&ok), 0, "{}", text(&ok));
    let bad = Command::cargo_bin("rosterd")
        .unwrap()
        .args([
            "validate",
            "--config",
            "tests/fixtures/ten-mistakes/rosterd.yaml",
        ])
        .assert();
    assert_eq!(code(&bad), 1);
    let out = text(&bad);
    assert!(
        out.lines().filter(|l| l.contains(": error: ")).count() >= 10,
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_plan_apply_plan_walks_exit_codes_2_0_0() {
    bounded(60, async {
        let sb = sandbox(world()).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = tree(dir.path(), &sb, MANIFEST, "");
        let plan = rosterd(&cfg, &["plan", "--detailed-exitcode"]);
        assert_eq!(code(&plan), 2, "{}", text(&plan));
        assert!(
            text(&plan).contains("+ carol participant"),
            "{}",
            text(&plan)
        );
        assert_eq!(
            code(&rosterd(&cfg, &["plan"])),
            0,
            "without --detailed-exitcode pending changes exit 0"
        );
        assert_eq!(sb.cometchat.writes().len(), 0, "plan writes nothing");
        let apply = rosterd(&cfg, &["apply"]);
        assert_eq!(code(&apply), 0, "{}", text(&apply));
        let again = rosterd(&cfg, &["plan", "--detailed-exitcode", "--format", "json"]);
        assert_eq!(code(&again), 0, "{}", text(&again));
        let doc: serde_json::Value = serde_json::from_slice(&again.get_output().stdout).unwrap();
        assert_eq!(doc["version"], 2);
        assert_eq!(doc["summary"]["calls"], 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_apply_exits_3_when_a_member_fails_and_names_it() {
    bounded(60, async {
        let sb = sandbox(world()).await;
        let dir = tempfile::tempdir().unwrap();
        let manifest = format!("{MANIFEST}moderators: [ghost]\n");
        let cfg = tree(dir.path(), &sb, &manifest, "");
        let apply = rosterd(&cfg, &["apply"]);
        assert_eq!(code(&apply), 3, "{}", text(&apply));
        assert!(
            text(&apply).contains("failed add ghost in team"),
            "{}",
            text(&apply)
        );
        let g = sb.cometchat.group(crate::support::CC_APP, "team").unwrap();
        assert!(g.members.contains_key("carol"), "the rest was applied");
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_apply_exits_4_when_a_safety_limit_blocks_and_writes_nothing() {
    bounded(60, async {
        let sb = sandbox(world()).await;
        let dir = tempfile::tempdir().unwrap();
        let manifest = "group: team\nprovider: cc\nid: team\nadmins: [alice]\nmax_removals: 1\n";
        let cfg = tree(dir.path(), &sb, manifest, "");
        let apply = rosterd(&cfg, &["apply"]);
        assert_eq!(code(&apply), 4, "{}", text(&apply));
        assert!(text(&apply).contains("BLOCKED"), "{}", text(&apply));
        assert_eq!(sb.cometchat.writes().len(), 0);
        let forced = rosterd(&cfg, &["apply", "--allow-mass-removal"]);
        assert_eq!(code(&forced), 0, "{}", text(&forced));
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_a_missing_secret_or_unknown_group_exits_1_before_any_request() {
    bounded(60, async {
        let sb = sandbox(world()).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = tree(dir.path(), &sb, MANIFEST, "");
        let mut cmd = Command::cargo_bin("rosterd").unwrap();
        let a = cmd
            .args(["apply", "--config"])
            .arg(&cfg)
            .env_remove("IT_CC_KEY")
            .assert();
        assert_eq!(code(&a), 1, "{}", text(&a));
        assert!(
            text(&a).contains("IT_CC_KEY"),
            "the error names the variable: {}",
            text(&a)
        );
        let b = rosterd(&cfg, &["plan", "--group", "nope"]);
        assert_eq!(code(&b), 1);
        assert!(sb.cometchat.requests().is_empty(), "no request at all");
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_a_broken_manifest_never_means_remove_everyone() {
    bounded(60, async {
        let sb = sandbox(world()).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = tree(
            dir.path(),
            &sb,
            "group: team\nprovider: cc\nid: team\nadmins: [alice\n",
            "",
        );
        let a = rosterd(&cfg, &["apply", "--allow-mass-removal"]);
        assert_eq!(code(&a), 1, "{}", text(&a));
        assert!(sb.cometchat.requests().is_empty(), "no request at all");
        std::fs::write(dir.path().join("groups/team.yaml"), "").unwrap();
        let empty = rosterd(&cfg, &["apply", "--allow-mass-removal"]);
        assert_eq!(code(&empty), 0, "an emptied file manages nothing");
        assert_eq!(sb.cometchat.writes().len(), 0, "and removes nobody");
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_output_has_no_colour_with_no_color_and_no_secret_anywhere() {
    bounded(60, async {
        let sb = sandbox(world()).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = tree(dir.path(), &sb, MANIFEST, "");
        for args in [
            &["plan", "-vv"][..],
            &["plan", "--format", "markdown"],
            &["plan", "--format", "json"],
            &["apply", "-vv"],
            &["apply", "--log-format", "json", "-vv"],
        ] {
            let a = rosterd(&cfg, args);
            let out = text(&a);
            assert!(
                !out.contains('\u{1b}'),
                "{args:?} printed colour with NO_COLOR"
            );
            assert!(!out.contains(CC_KEY), "{args:?} printed the api key");
        }
        let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
        assert!(audit.lines().count() >= 2, "{audit}");
        assert!(!audit.contains(CC_KEY));
    })
    .await
}

/// The schemas `rosterd schema --out DIR` writes, compiled by a real JSON Schema validator.
fn schemas() -> [jsonschema::Validator; 3] {
    let dir = tempfile::tempdir().unwrap();
    Command::cargo_bin("rosterd")
        .unwrap()
        .args(["schema", "--out"])
        .arg(dir.path())
        .assert()
        .success();
    ["rosterd", "people", "manifest"].map(|k| {
        let text = std::fs::read_to_string(dir.path().join(format!("{k}.schema.json"))).unwrap();
        let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
        jsonschema::draft7::new(&schema).unwrap_or_else(|e| panic!("{k}: {e}"))
    })
}

/// Every YAML document of a file as JSON.
fn docs(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_saphyr::from_multiple::<serde_json::Value>(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn errors(v: &jsonschema::Validator, doc: &serde_json::Value) -> Vec<String> {
    v.iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn cli_schemas_accept_the_demo_tree_and_every_example_and_refuse_known_mistakes() {
    let [config, people, manifest] = schemas();
    let mut trees = vec![std::path::PathBuf::from("manifests")];
    for e in std::fs::read_dir("examples").unwrap() {
        let p = e.unwrap().path();
        if p.join("rosterd.yaml").is_file() {
            trees.push(p);
        }
    }
    assert!(trees.len() >= 4, "{trees:?}");
    let mut checked = 0;
    for tree in &trees {
        let root = &docs(&tree.join("rosterd.yaml"))[0];
        assert_eq!(
            errors(&config, root),
            Vec::<String>::new(),
            "{}",
            tree.display()
        );
        if tree.join("people.yaml").is_file() {
            let p = &docs(&tree.join("people.yaml"))[0];
            assert_eq!(
                errors(&people, p),
                Vec::<String>::new(),
                "{}",
                tree.display()
            );
        }
        let groups = tree.join("groups");
        for e in std::fs::read_dir(&groups).unwrap() {
            let file = e.unwrap().path();
            for d in docs(&file) {
                assert_eq!(
                    errors(&manifest, &d),
                    Vec::<String>::new(),
                    "{}",
                    file.display()
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 8, "only {checked} manifests checked");

    let bad_configs = [
        "manifests: g/\nproviders:\n  x: { kind: slack }\n",
        "manifests: g/\nproviders:\n  cc: { kind: cometchat, app_id: a, region: eu, api_key: inline-key }\n",
        "manifests: g/\nproviders:\n  cc: { kind: cometchat, app_id: a, region: eu, api_key: { env: K }, colour: red }\n",
        "manifests: g/\nproviders:\n  t: { kind: tencent, sdk_app_id: 1, identifier: admin, secret_key: { env: K }, max_batch: { add: many } }\n",
        "manifests: g/\nproviders:\n  b: { kind: bitrix24, oauth: { endpoint: x, client_id: c } }\n",
        "providers: {}\n",
    ];
    for bad in bad_configs {
        let doc: serde_json::Value = serde_saphyr::from_str(bad).unwrap();
        assert!(!errors(&config, &doc).is_empty(), "accepted: {bad}");
    }
    let bad_manifests = [
        "group: g\nprovider: p\nid: x\ncolour: blue\n",
        "group: g\nid: x\n",
        "group: g\nprovider: p\nid: x\nadmins: alice\n",
        "group: g\nprovider: p\nid: x\nmutes: [{ until: 2026-01-01T00:00:00Z }]\n",
    ];
    for bad in bad_manifests {
        let doc: serde_json::Value = serde_saphyr::from_str(bad).unwrap();
        assert!(!errors(&manifest, &doc).is_empty(), "accepted: {bad}");
    }
    let doc: serde_json::Value = serde_saphyr::from_str("people: { a: 1 }\n").unwrap();
    assert!(
        !errors(&people, &doc).is_empty(),
        "people accepted a bare id"
    );
}

#[test]
fn cli_schema_kind_prints_one_schema() {
    let a = Command::cargo_bin("rosterd")
        .unwrap()
        .args(["schema", "--kind", "manifest"])
        .assert()
        .success();
    let doc: serde_json::Value = serde_json::from_slice(&a.get_output().stdout).unwrap();
    assert_eq!(doc["$schema"], "http://json-schema.org/draft-07/schema#");
    assert!(doc["properties"]["participants"].is_object(), "{doc}");
    let none = Command::cargo_bin("rosterd")
        .unwrap()
        .arg("schema")
        .assert();
    assert_eq!(
        code(&none),
        2,
        "schema without --kind or --out is a usage error"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_plans_and_reports_name_people_as_the_manifest_does() {
    bounded(60, async {
        let sb = sandbox(world()).await;
        let dir = tempfile::tempdir().unwrap();
        let manifest = "group: team\nprovider: cc\nid: team\nowner: alice\nadmins: [alice]\nparticipants: [\"@crew\", bob]\n";
        let cfg = tree(dir.path(), &sb, manifest, "");
        std::fs::write(
            dir.path().join("people.yaml"),
            "people:\n  alice: { cometchat: alice }\n  carla: { cometchat: carol }\n  ghosty: { cometchat: ghost }\nteams:\n  crew: [carla, ghosty]\n",
        )
        .unwrap();
        let plan = rosterd(&cfg, &["plan"]);
        let out = text(&plan);
        assert!(out.contains("+ carla (carol) participant"), "{out}");
        assert!(out.contains("+ ghosty (ghost) participant"), "{out}");
        // bob is a raw id in the manifest, zed only live: both keep their ids.
        assert!(out.contains("- bob admin") && out.contains("+ bob participant"), "{out}");
        assert!(out.contains("- zed participant"), "{out}");
        let json = rosterd(&cfg, &["plan", "--format", "json"]);
        let doc: serde_json::Value = serde_json::from_slice(&json.get_output().stdout).unwrap();
        let ops = doc["groups"][0]["operations"].as_array().unwrap();
        let carol = ops.iter().find(|o| o["member"] == "carol").unwrap();
        assert_eq!(carol["name"], "carla");
        let zed = ops.iter().find(|o| o["member"] == "zed").unwrap();
        assert_eq!(zed["name"], serde_json::Value::Null);
        let md = text(&rosterd(&cfg, &["plan", "--format", "markdown"]));
        assert!(md.contains("+ carla (carol) participant"), "{md}");
        let apply = rosterd(&cfg, &["apply"]);
        assert_eq!(code(&apply), 3, "{}", text(&apply));
        assert!(
            text(&apply).contains("failed add ghosty (ghost) in team"),
            "{}",
            text(&apply)
        );
    })
    .await
}

/// Settings the clients used to refuse only when built (at `plan`), now refused by `validate`
/// at the position of the key: CometChat's region, Tencent's identifier, WAHA's session and
/// Bitrix24's OAuth endpoint.
#[test]
fn cli_validate_points_at_every_wrong_provider_setting() {
    let dir = tempfile::tempdir().unwrap();
    let root = "manifests: groups/\nproviders:\n\
        \x20 cc:\n    kind: cometchat\n    app_id: a\n    region: asia\n    api_key: { env: K }\n\
        \x20 tim:\n    kind: tencent\n    sdk_app_id: 1\n    identifier: app admin\n    secret_key: { env: S }\n    region: singapore\n\
        \x20 wa:\n    kind: waha\n    base_url: http://127.0.0.1:3000\n    session: a/b\n    api_key: { env: W }\n\
        \x20 b:\n    kind: bitrix24\n    oauth:\n      client_id: c\n      endpoint: portal.bitrix24.com/rest/\n      client_secret: { env: S }\n      token_file: t.json\n";
    std::fs::create_dir_all(dir.path().join("groups")).unwrap();
    std::fs::write(dir.path().join("rosterd.yaml"), root).unwrap();
    std::fs::write(
        dir.path().join("groups/g.yaml"),
        "group: g\nprovider: cc\nid: g\n",
    )
    .unwrap();
    let a = Command::cargo_bin("rosterd")
        .unwrap()
        .args(["validate", "--config"])
        .arg(dir.path().join("rosterd.yaml"))
        .env("NO_COLOR", "1")
        .assert();
    assert_eq!(code(&a), 1, "{}", text(&a));
    let out = text(&a).replace(&format!("{}/", dir.path().display()), "");
    let positions: Vec<&str> = out
        .lines()
        .filter(|l| l.contains(": error: "))
        .map(|l| l.split(": error: ").next().unwrap())
        .collect();
    assert_eq!(
        positions,
        [
            "rosterd.yaml:6:13",
            "rosterd.yaml:11:17",
            "rosterd.yaml:17:14",
            "rosterd.yaml:23:17"
        ],
        "{out}"
    );
    for key in [
        "cc (cometchat): region:",
        "tim (tencent): identifier:",
        "wa (waha): session:",
        "b (bitrix24): oauth.endpoint:",
    ] {
        assert!(out.contains(key), "{key} in {out}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_files_that_define_no_group_warn_by_name_and_exit_0() {
    bounded(60, async {
        let sb = sandbox(world()).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = tree(dir.path(), &sb, MANIFEST, "");
        let empties = [
            ("empty.yaml", ""),
            ("dashes.yaml", "---\n"),
            ("comments.yaml", "# truncated\n---\n# by a bad merge\n"),
        ];
        for (name, body) in empties {
            std::fs::write(dir.path().join("groups").join(name), body).unwrap();
        }
        for args in [
            &["validate"][..],
            &["plan"][..],
            &["apply", "--allow-mass-removal"][..],
        ] {
            let a = rosterd(&cfg, args);
            let o = a.get_output();
            let stderr = String::from_utf8_lossy(&o.stderr);
            assert_eq!(code(&a), 0, "{args:?}: {}", text(&a));
            for (name, _) in empties {
                assert!(
                    stderr.lines().any(|l| l.contains(name)
                        && l.contains(":1:1: warning: the file defines no group")),
                    "{args:?} does not warn about {name}:\n{stderr}"
                );
            }
            assert!(
                !stderr.contains("team.yaml:1:1: warning"),
                "{args:?}: {stderr}"
            );
        }
    })
    .await
}

#[test]
fn cli_validate_json_lists_every_diagnostic_with_its_position() {
    let a = Command::cargo_bin("rosterd")
        .unwrap()
        .args([
            "validate",
            "--format",
            "json",
            "--config",
            "tests/fixtures/ten-mistakes/rosterd.yaml",
        ])
        .assert();
    assert_eq!(code(&a), 1);
    let doc: serde_json::Value = serde_json::from_slice(&a.get_output().stdout).unwrap();
    assert_eq!(doc["valid"], false);
    let diags = doc["diagnostics"].as_array().unwrap();
    assert!(diags.len() >= 10, "{doc}");
    for d in diags {
        assert!(d["file"].as_str().unwrap().ends_with(".yaml"), "{d}");
        assert!(d["line"].as_u64().unwrap() >= 1 && d["column"].as_u64().unwrap() >= 1);
        assert_eq!(d["severity"], "error");
    }
    // Not a terminal: the plain one-line form, never a frame.
    let plain = Command::cargo_bin("rosterd")
        .unwrap()
        .args([
            "validate",
            "--config",
            "tests/fixtures/ten-mistakes/rosterd.yaml",
        ])
        .assert();
    let err = String::from_utf8_lossy(&plain.get_output().stderr).into_owned();
    assert!(!err.contains('│') && !err.contains('╭'), "{err}");
}
