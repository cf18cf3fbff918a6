//! Loading and validation: the sample trees load, every mistake is reported with its position,
//! names resolve as SPEC §3 says.

use std::path::{Path, PathBuf};

use super::*;
use crate::model::{Mute, Role};

fn write(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    for (name, text) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    dir.join("rosterd.yaml")
}

const ROOT: &str = "manifests: groups/\npeople: people.yaml\nproviders:\n  cc:\n    kind: cometchat\n    app_id: a\n    region: eu\n    api_key: { env: K }\n  tim:\n    kind: tencent\n    sdk_app_id: 1\n    identifier: admin\n    secret_key: { file: secret.txt }\n    region: singapore\n";

fn diags_text(d: &Diagnostics, base: &Path) -> String {
    d.to_string().replace(&format!("{}/", base.display()), "")
}

#[test]
fn the_demo_tree_and_every_example_load() {
    // Every example folder with a rosterd.yaml is covered, including ones added later.
    let mut paths = vec![PathBuf::from("manifests/rosterd.yaml")];
    for e in std::fs::read_dir("examples").unwrap() {
        let p = e.unwrap().path().join("rosterd.yaml");
        if p.is_file() {
            paths.push(p);
        }
    }
    let mut kinds = std::collections::BTreeSet::new();
    for path in &paths {
        let cfg = load(path).unwrap_or_else(|d| panic!("{}:\n{d}", path.display()));
        assert!(!cfg.groups.is_empty(), "{} declares groups", path.display());
        kinds.extend(cfg.instances.values().map(|i| i.kind));
    }
    assert_eq!(
        kinds.len(),
        crate::provider::Kind::ALL.len(),
        "an example for every provider kind"
    );
}

#[test]
fn every_mistake_of_every_file_is_reported_with_its_position() {
    let d = load(Path::new("tests/fixtures/ten-mistakes/rosterd.yaml")).unwrap_err();
    assert!(d.len() >= 10, "{d}");
    for line in d.to_string().lines() {
        let mut parts = line.splitn(4, ':');
        let (file, l, c) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        assert!(file.ends_with(".yaml"), "{line}");
        assert!(
            l.parse::<u64>().unwrap() >= 1 && c.parse::<u64>().unwrap() >= 1,
            "{line}"
        );
    }
    insta::assert_snapshot!(d.to_string());
}

#[test]
fn people_resolve_by_instance_then_kind_and_teams_nest() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        &[
            ("rosterd.yaml", ROOT),
            (
                "people.yaml",
                "people:\n  alice: { cometchat: Alice, cc: alice-cc }\n  bob: { cometchat: bob }\nteams:\n  inner: [alice]\n  outer: [\"@inner\", bob, raw-id]\n",
            ),
            (
                "groups/g.yaml",
                "group: g\nprovider: cc\nid: G1\nadmins: [alice]\nmoderators: [\"@outer\"]\nparticipants: [bob]\n",
            ),
        ],
    );
    let c = load(&cfg).unwrap_or_else(|d| panic!("{d}"));
    let g = &c.groups[0];
    assert_eq!(g.id.as_str(), "g1", "CometChat ids are lower-cased");
    let roles: Vec<(String, Role)> = g.members.iter().map(|(m, r)| (m.to_string(), *r)).collect();
    assert_eq!(
        roles,
        [
            ("alice-cc".to_string(), Role::Admin),
            ("bob".to_string(), Role::Moderator),
            ("raw-id".to_string(), Role::Moderator)
        ]
    );
    assert!(
        g.bans.is_none() && g.mutes.is_none(),
        "absent keys are not managed"
    );
}

#[test]
fn secrets_and_timed_mutes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        &[
            ("rosterd.yaml", ROOT),
            ("people.yaml", "people: {}\n"),
            (
                "groups/t.yaml",
                "group: t\nprovider: tim\nid: team-x\nparticipants: [a1, b2]\nbans: []\nmutes:\n  - member: a1\n    until: 2030-01-01T00:00:00Z\n  - member: b2\n",
            ),
        ],
    );
    let c = load(&cfg).unwrap_or_else(|d| panic!("{d}"));
    let mutes = c.groups[0].mutes.as_ref().unwrap();
    assert!(matches!(
        mutes[&crate::model::MemberId::new("a1")],
        Mute::Until(_)
    ));
    assert_eq!(mutes[&crate::model::MemberId::new("b2")], Mute::Indefinite);
    assert_eq!(
        c.groups[0].bans.as_ref().map(|b| b.len()),
        Some(0),
        "an empty bans list is authoritative"
    );
    let Some(t) = c.instances["tim"]
        .settings
        .get::<crate::provider::tencent::Settings>()
    else {
        panic!("tencent settings")
    };
    assert_eq!(
        t.secret_key,
        secret::SecretRef::File(dir.path().join("secret.txt")),
        "secret files resolve against rosterd.yaml"
    );
}

#[test]
fn a_missing_manifest_folder_is_an_error_not_an_empty_tree() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        &[("rosterd.yaml", ROOT), ("people.yaml", "people: {}\n")],
    );
    let d = load(&cfg).unwrap_err();
    assert!(d.to_string().contains("neither a folder nor a file"), "{d}");
}

#[test]
fn a_folder_linked_back_to_its_parent_is_scanned_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        &[
            ("rosterd.yaml", ROOT),
            ("people.yaml", "people: {}\n"),
            (
                "groups/t.yaml",
                "group: t\nprovider: tim\nid: team-x\nparticipants: [a1]\n",
            ),
        ],
    );
    // Two links back up: without the folder set, the scan would branch without end.
    std::os::unix::fs::symlink(dir.path().join("groups"), dir.path().join("groups/up")).unwrap();
    std::os::unix::fs::symlink(dir.path(), dir.path().join("groups/root")).unwrap();
    let c = load(&cfg).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(c.groups.len(), 1, "{:?}", c.groups);
    assert_eq!(c.groups[0].name, "t");
}

#[test]
fn a_scan_stops_at_its_entry_budget() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..6 {
        std::fs::create_dir_all(dir.path().join(format!("d{i}"))).unwrap();
        std::fs::write(dir.path().join(format!("d{i}/g.yaml")), "").unwrap();
    }
    let (mut out, mut seen) = (BTreeSet::new(), BTreeSet::new());
    let mut budget = 11;
    assert!(scan(dir.path(), &mut out, &mut seen, &mut budget).is_err());
    let (mut out, mut seen) = (BTreeSet::new(), BTreeSet::new());
    let mut budget = 12;
    assert!(scan(dir.path(), &mut out, &mut seen, &mut budget).is_ok());
    assert_eq!((out.len(), budget), (6, 0));
}

#[test]
fn a_manifest_folder_too_big_to_be_one_is_an_error_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = ROOT.replace("manifests: groups/", "manifests: big/");
    let cfg = write(
        dir.path(),
        &[("rosterd.yaml", &root), ("people.yaml", "people: {}\n")],
    );
    for i in 0..30 {
        std::fs::create_dir_all(dir.path().join(format!("big/{i}/{i}"))).unwrap();
    }
    // 60 entries below big/: a budget of 60 is enough, 59 is not (MAX_SCAN_ENTRIES in use).
    let (_, d) = build_context_scanning(&cfg, 60).unwrap();
    assert!(d.is_empty(), "{d}");
    let (_, d) = build_context_scanning(&cfg, 59).unwrap();
    assert_eq!(
        diags_text(&d, dir.path()),
        "rosterd.yaml:1:12: error: manifests: big/ holds more than 59 files and folders; \
         name the folder that holds the group manifests\n"
    );
}

#[test]
fn only_regular_files_of_bounded_size_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let root = ROOT.replace("people: people.yaml", "people: /dev/zero");
    let cfg = write(
        dir.path(),
        &[
            ("rosterd.yaml", &root),
            (
                "groups/t.yaml",
                "group: t\nprovider: tim\nid: team-x\nparticipants: [a1]\n",
            ),
        ],
    );
    // A FIFO would block the reader for ever; a dangling link is an error, not a missing group.
    let fifo = dir.path().join("groups/pipe.yaml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    std::os::unix::fs::symlink("/nonexistent", dir.path().join("groups/gone.yaml")).unwrap();
    let big = dir.path().join("groups/big.yaml");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(MAX_FILE_BYTES + 1).unwrap();
    let text = diags_text(&load(&cfg).unwrap_err(), dir.path());
    for want in [
        "/dev/zero:1:1: error: cannot read file: not a regular file",
        "groups/pipe.yaml:1:1: error: cannot read file: not a regular file",
        "groups/gone.yaml:1:1: error: cannot read file: No such file",
        "groups/big.yaml:1:1: error: cannot read file: larger than 16777216 bytes",
    ] {
        assert!(text.contains(want), "{want}\n{text}");
    }
}

#[test]
fn an_unreadable_config_is_an_error() {
    let d = load(Path::new("/nonexistent/rosterd.yaml")).unwrap_err();
    assert!(
        d.to_string()
            .starts_with("/nonexistent/rosterd.yaml:1:1: error: cannot read file"),
        "{d}"
    );
}

#[test]
fn unknown_provider_keys_and_kinds_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        &[
            (
                "rosterd.yaml",
                "manifests: groups/\nproviders:\n  a:\n    kind: cometchat\n    app_id: x\n    region: eu\n    api_key: { env: K }\n    regoin: us\n  b:\n    kind: slack\n",
            ),
            ("groups/.keep.yaml", ""),
        ],
    );
    let text = diags_text(&load(&cfg).unwrap_err(), dir.path());
    insta::assert_snapshot!(text);
}

#[test]
fn rates_parse_in_several_units() {
    assert_eq!(parse_rate("10/s"), Some(10.0));
    assert_eq!(parse_rate("600/m"), Some(10.0));
    assert_eq!(parse_rate("3600/h"), Some(1.0));
    assert_eq!(parse_rate("1/10s"), Some(0.1));
    assert_eq!(parse_rate("2"), Some(2.0));
    assert_eq!(parse_rate("fast"), None);
    assert_eq!(parse_rate("0/s"), None);
}

#[test]
fn type_errors_name_their_key_and_a_broken_instance_hides_no_group_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        &[
            (
                "rosterd.yaml",
                "manifests: groups/\npeople: people.yaml\nproviders:\n  cc:\n    kind: cometchat\n    app_id: a\n    region: eu\n    api_key: { env: K }\n    interval: 5\n  b24:\n    kind: bitrix24\n    oauth: { client_id: x, bogus: 1 }\n",
            ),
            (
                "people.yaml",
                "people:\n  alice: { cometchat: alice, slack: x }\n  bob: { cometchat: \"b o b\" }\n",
            ),
            (
                "groups/g.yaml",
                "group: g1\nprovider: cc\nid: g1\nadmins: alice\n---\ngroup: g2\nprovider: cc\nid: g2\nparticipants: [alice, [x]]\n---\ngroup: g3\nprovider: cc\nid: g3\nparticipants: [alice]\nmutes: []\n---\ngroup: g4\nprovider: b24\nid: chat1\nmoderators: [5]\nmutes:\n  - { member: 5, untill: 2030-01-01T00:00:00Z }\n",
            ),
        ],
    );
    let text = diags_text(&load(&cfg).unwrap_err(), dir.path());
    insta::assert_snapshot!(text);
}

#[test]
fn people_ids_are_checked_against_their_kind_even_when_unused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        &[
            ("rosterd.yaml", ROOT),
            (
                "people.yaml",
                "people:\n  alice: { cometchat: alice }\n  eve: { tim: \"bad id with spaces\" }\n",
            ),
            (
                "groups/g.yaml",
                "group: g\nprovider: cc\nid: g\nadmins: [alice]\n",
            ),
        ],
    );
    let d = load(&cfg).unwrap_err();
    assert_eq!(d.len(), 1, "{d}");
    assert!(
        d.0[0].file.ends_with("people.yaml") && d.0[0].line == 3,
        "{d}"
    );
    assert!(d.to_string().contains("person eve: tim: expected"), "{d}");
}

#[test]
fn one_provider_group_is_managed_by_one_manifest_only() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        &[
            ("rosterd.yaml", ROOT),
            ("people.yaml", "people: {}\n"),
            (
                "groups/a.yaml",
                "group: first\nprovider: cc\nid: shared\nparticipants: [x]\n",
            ),
            (
                "groups/b.yaml",
                "# the same CometChat group, id written in capitals\ngroup: second\nprovider: cc\nid: SHARED\nparticipants: [y]\n---\ngroup: third\nprovider: tim\nid: shared\n",
            ),
        ],
    );
    let text = diags_text(&load(&cfg).unwrap_err(), dir.path());
    assert_eq!(
        text,
        "groups/b.yaml:2:8: error: group second: provider cc group shared is already managed by group first at groups/a.yaml:1:8\n",
        "the same id on another instance is another group"
    );
}

#[test]
fn ids_are_kept_as_written_not_as_yaml_numbers_or_booleans() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        &[
            ("rosterd.yaml", ROOT),
            ("people.yaml", "people:\n  bond: { tencent: 007 }\n"),
            (
                "groups/g.yaml",
                "group: g\nprovider: tim\nid: g\nadmins: [bond]\nparticipants: [no, y, 0042, on]\n",
            ),
        ],
    );
    let c = load(&cfg).unwrap_or_else(|d| panic!("{d}"));
    let ids: Vec<&str> = c.groups[0].members.keys().map(|m| m.as_str()).collect();
    assert_eq!(ids, ["0042", "007", "no", "on", "y"]);
}

#[test]
fn bitrix24_needs_exactly_one_credential_and_roots_its_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let group = "group: s\nprovider: b\nid: 42\nparticipants: [17]\n";
    let root = |provider: &str| {
        format!("manifests: groups/\nproviders:\n  b:\n    kind: bitrix24\n{provider}")
    };
    let oauth = "    oauth:\n      endpoint: https://p.bitrix24.com/rest/\n      client_id: c\n      client_secret: { env: S }\n      token_file: tokens.json\n";

    let both = format!("    webhook_url: {{ env: W }}\n{oauth}");
    for (text, what) in [(String::new(), "neither"), (both, "both")] {
        let path = write(
            dir.path(),
            &[("rosterd.yaml", &root(&text)), ("groups/s.yaml", group)],
        );
        let d = load(&path).unwrap_err();
        let text = diags_text(&d, dir.path());
        assert!(
            text.contains("rosterd.yaml:4:5:")
                && text.contains("exactly one of webhook_url and oauth"),
            "{what}: {text}"
        );
    }

    let path = write(
        dir.path(),
        &[("rosterd.yaml", &root(oauth)), ("groups/s.yaml", group)],
    );
    let cfg = load(&path).unwrap();
    let Some(s) = cfg.instances["b"]
        .settings
        .get::<crate::provider::bitrix24::Settings>()
    else {
        panic!("a bitrix24 instance");
    };
    assert_eq!(
        s.oauth.as_ref().unwrap().token_file,
        dir.path().join("tokens.json")
    );
}

#[test]
fn restrictions_keep_each_folder_to_its_own_groups() {
    let dir = tempfile::tempdir().unwrap();
    let root = format!(
        "{ROOT}restrictions:\n  - path: groups/team-a/**\n    providers: [cc]\n    groups: [\"a-*\"]\n  - path: groups/team-b/*.yaml\n    providers: [tim]\n"
    );
    let cfg = write(
        dir.path(),
        &[
            ("rosterd.yaml", &root),
            ("people.yaml", "people: {}\n"),
            (
                "groups/team-a/ok.yaml",
                "group: a1\nprovider: cc\nid: a-one\nparticipants: [x]\n",
            ),
            (
                "groups/team-a/nested/takeover.yaml",
                "group: b1\nprovider: cc\nid: b-one\nparticipants: [x]\n",
            ),
            (
                "groups/team-b/wrong-provider.yaml",
                "group: b2\nprovider: cc\nid: a-two\nparticipants: [x]\n",
            ),
            (
                "groups/team-b/fine.yaml",
                "group: b3\nprovider: tim\nid: \"@TGS#b\"\nparticipants: [x]\n",
            ),
            (
                "groups/elsewhere.yaml",
                "group: c1\nprovider: cc\nid: c-one\nparticipants: [x]\n",
            ),
        ],
    );
    let d = load(&cfg).unwrap_err();
    let text = diags_text(&d, dir.path());
    insta::assert_snapshot!(text);
    assert_eq!(d.len(), 3, "{text}");
    assert!(
        !text.contains("ok.yaml") && !text.contains("fine.yaml"),
        "{text}"
    );

    // The same tree without `restrictions:` is unrestricted.
    std::fs::write(dir.path().join("rosterd.yaml"), ROOT).unwrap();
    let ok = load(&cfg).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(ok.groups.len(), 5);
}

#[test]
fn restriction_rules_with_bad_globs_or_unknown_instances_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let root = format!(
        "{ROOT}restrictions:\n  - path: \"groups/[\"\n  - path: \"**\"\n    providers: [nope]\n    groups: [\"a-{{\"]\n"
    );
    let cfg = write(
        dir.path(),
        &[("rosterd.yaml", &root), ("groups/g.yaml", "")],
    );
    let text = diags_text(&load(&cfg).unwrap_err(), dir.path());
    assert!(
        text.contains("rosterd.yaml:16:11: error: restrictions rule 1: path"),
        "{text}"
    );
    assert!(
        text.contains(
            "rosterd.yaml:18:17: error: restrictions rule 2: unknown provider instance \"nope\""
        ),
        "{text}"
    );
    assert!(
        text.contains("restrictions rule 2: groups: expected a glob"),
        "{text}"
    );
}

#[test]
fn concurrency_is_a_positive_integer_on_the_instance_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let root = |c: &str| {
        format!(
            "manifests: groups/\nproviders:\n  cc:\n    kind: cometchat\n    app_id: a\n    region: eu\n    api_key: {{ env: K }}\n    concurrency: {c}\n"
        )
    };
    let group = (
        "groups/g.yaml",
        "group: g\nprovider: cc\nid: g\nadmins: [x]\n",
    );
    for bad in ["0", "two", "-1"] {
        let cfg = write(dir.path(), &[("rosterd.yaml", &root(bad)), group]);
        let d = load(&cfg).unwrap_err();
        assert_eq!(d.len(), 1, "{d}");
        assert_eq!((d.0[0].line, d.0[0].column), (8, 18), "{d}");
        assert!(
            d.to_string()
                .contains("provider cc: concurrency: expected a positive integer"),
            "{d}"
        );
    }
    let cfg = write(dir.path(), &[("rosterd.yaml", &root("12")), group]);
    let c = load(&cfg).unwrap();
    assert_eq!(c.instances["cc"].common.concurrency, Some(12));
}

/// The diagnostics of a tree whose rosterd.yaml declares `providers` (and one group per
/// instance name in `groups`), with the folder removed from their paths.
fn settings_mistakes(providers: &str, groups: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let root = format!("manifests: groups/\nproviders:\n{providers}");
    let path = write(
        dir.path(),
        &[("rosterd.yaml", &root), ("groups/g.yaml", groups)],
    );
    diags_text(&load(&path).unwrap_err(), dir.path())
}

#[test]
fn a_wrong_cometchat_region_is_reported_at_validate_with_its_position() {
    let text = settings_mistakes(
        "  cc:\n    kind: cometchat\n    app_id: a\n    region: asia\n    api_key: { env: K }\n",
        "group: g\nprovider: cc\nid: g\n",
    );
    assert_eq!(
        text,
        "rosterd.yaml:6:13: error: provider cc (cometchat): region: must be one of us, eu, in; found \"asia\"\n"
    );
    let text = settings_mistakes(
        "  cc:\n    kind: cometchat\n    app_id: my.app\n    region: eu\n    api_key: { env: K }\n",
        "group: g\nprovider: cc\nid: g\n",
    );
    assert_eq!(
        text,
        "rosterd.yaml:5:13: error: provider cc (cometchat): app_id: must be letters, digits and dashes; found \"my.app\"\n"
    );
}

#[test]
fn a_wrong_tencent_identifier_is_reported_at_validate_with_its_position() {
    let text = settings_mistakes(
        "  tim:\n    kind: tencent\n    sdk_app_id: 1\n    identifier: app admin\n    secret_key: { env: S }\n    region: mars\n",
        "group: g\nprovider: tim\nid: g\n",
    );
    assert_eq!(
        text,
        "rosterd.yaml:6:17: error: provider tim (tencent): identifier: must be a Tencent UserID (the app admin: 1-32 characters of letters, digits, _ - @ .), found \"app admin\"\n\
         rosterd.yaml:8:13: error: provider tim (tencent): region: must be one of china, guangzhou, singapore, seoul, korea, tokyo, frankfurt, germany, silicon-valley, usa, jakarta, mumbai, riyadh; found \"mars\"\n"
    );
}

#[test]
fn a_wrong_waha_session_is_reported_at_validate_with_its_position() {
    let text = settings_mistakes(
        "  wa:\n    kind: waha\n    base_url: http://127.0.0.1:3000\n    session: \"sales team\"\n    api_key: { env: W }\n",
        "group: g\nprovider: wa\nid: 1203630001@g.us\n",
    );
    assert_eq!(
        text,
        "rosterd.yaml:6:14: error: provider wa (waha): session: expected a WAHA session name (`default` on WAHA Core; no spaces, /, ?, # or %), found \"sales team\"\n"
    );
}

#[test]
fn a_wrong_bitrix24_oauth_endpoint_is_reported_at_validate_at_the_nested_key() {
    let text = settings_mistakes(
        "  b:\n    kind: bitrix24\n    oauth:\n      client_id: c\n      endpoint: ftp://portal.bitrix24.com/rest/\n      client_secret: { env: S }\n      token_file: tokens.json\n",
        "group: g\nprovider: b\nid: 42\n",
    );
    assert_eq!(
        text,
        "rosterd.yaml:7:17: error: provider b (bitrix24): oauth.endpoint: must be an http:// or https:// URL such as https://portal.bitrix24.com/rest/\n"
    );
}
