//! deploy/ against a live daemon: every metric the Grafana dashboard queries and every metric
//! the alert rules read is one that a running `rosterd run` exports on /metrics. (The rules'
//! behaviour is tested by `promtool test rules`, and the Kubernetes manifests by
//! `kubectl kustomize` + `kubernetes-validate`, both in `.ci/deploy-checks`.)

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::daemon::start;
use crate::page::demo_daemon;
use crate::support::bounded;

/// The metric names a PromQL expression selects: identifiers outside label matchers, ranges
/// and strings that are neither functions, keywords nor grouping labels. For Grafana's
/// `label_values(metric, label)` only the metric counts.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Operators, and aggregations (`sum by (x) (…)` puts no parenthesis after `sum`).
    const KEYWORDS: [&str; 20] = [
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "group_left",
        "group_right",
        "atan2",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "group",
    ];
    const GROUPING: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let expr = match expr.trim().strip_prefix("label_values(") {
        Some(args) => args.rsplit_once(',').map_or(args, |(m, _)| m).to_string(),
        None => expr.to_string(),
    };
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_to = |i: &mut usize, close: char| {
        while *i < chars.len() && chars[*i] != close {
            if chars[*i] == '"' {
                *i += 1;
                while *i < chars.len() && chars[*i] != '"' {
                    *i += if chars[*i] == '\\' { 2 } else { 1 };
                }
            }
            *i += 1;
        }
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            '{' => skip_to(&mut i, '}'),
            '[' => skip_to(&mut i, ']'),
            '$' => {
                // A Grafana variable, such as $__rate_interval.
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let call = j < chars.len() && chars[j] == '(';
                if call && GROUPING.contains(&word.as_str()) {
                    i = j;
                    skip_to(&mut i, ')'); // a list of labels
                } else if !call && !KEYWORDS.contains(&word.as_str()) {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[test]
fn metric_names_finds_selectors_and_nothing_else() {
    let got = metric_names(
        r#"sum by (provider) (rate(foo_total{a="b}",c=~"$x"}[$__rate_interval])) > ignoring(group) group_left bar * 3 or vector(0) unless on(instance) baz offset 5m"#,
    );
    assert_eq!(
        got,
        BTreeSet::from(["foo_total", "bar", "baz"].map(String::from))
    );
    assert_eq!(
        metric_names(r#"label_values(rosterd_drift_operations{instance=~"$instance"}, group)"#),
        BTreeSet::from(["rosterd_drift_operations".to_string()])
    );
}

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Every PromQL expression of the dashboard: panel targets and template variable queries.
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    ("definition", Value::String(e)) => out.push(e.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

fn rule_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo("deploy/prometheus/rosterd-rules.yaml")).unwrap();
    let rules: Value = serde_saphyr::from_str(&text).unwrap();
    let mut out = Vec::new();
    for g in rules["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            out.push((
                r["alert"].as_str().unwrap().to_string(),
                r["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_of_the_dashboard_and_the_alert_rules_is_in_a_live_metrics() {
    bounded(90, async {
        // A group the provider does not know: its runs fail.
        let gone = "group: gone\nprovider: tim\nid: \"@TGS#gone\"\nadmins: [alice]\n";
        let (_sb, _dir, d) = demo_daemon(&[("gone.yaml", gone.to_string())]).await;
        let want_failing = "rosterd_group_failing_since_timestamp_seconds{group=\"gone\"}";
        let want_success = "rosterd_last_success_timestamp_seconds{group=\"eng-oncall\"}";
        let want_ops = "rosterd_operations_total{";
        let metrics = d
            .get_until("/metrics", "every kind of series", |m| {
                [want_failing, want_success, want_ops]
                    .iter()
                    .all(|w| m.contains(w))
            })
            .await;
        let live: BTreeSet<String> = metrics
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
            .collect();

        let dashboard: Value = serde_json::from_str(
            &std::fs::read_to_string(repo("deploy/grafana/rosterd-dashboard.json")).unwrap(),
        )
        .unwrap();
        let mut exprs = Vec::new();
        dashboard_exprs(&dashboard, &mut exprs);
        assert!(exprs.len() >= 10, "the dashboard's queries: {exprs:?}");
        let mut used = BTreeSet::new();
        for e in &exprs {
            let names = metric_names(e);
            assert!(!names.is_empty(), "no metric in dashboard query {e}");
            for n in names {
                assert!(
                    live.contains(&n),
                    "dashboard query {e} uses {n}, not in /metrics:\n{metrics}"
                );
                used.insert(n);
            }
        }
        for (alert, e) in rule_exprs() {
            for n in metric_names(&e) {
                assert!(
                    live.contains(&n),
                    "alert {alert} reads {n}, not in /metrics:\n{metrics}"
                );
            }
        }
        // Every family rosterd exports has a place on the dashboard.
        let families: BTreeSet<String> = metrics
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect();
        for f in &families {
            assert!(
                used.iter()
                    .any(|u| u == f || u.strip_suffix("_total") == Some(f)),
                "metric family {f} is not on the dashboard"
            );
        }
        d.stop().await;
    })
    .await
}

/// The series the alerts read follow a group: a failure streak starts
/// `rosterd_group_failing_since_timestamp_seconds`, a success ends it, and a group that is no
/// longer managed leaves no series behind (a stale one would fire an alert forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_series_follow_a_groups_failures_and_leave_with_it() {
    use crate::daemon::{until, world, write_root};
    use crate::support::{CC_APP, group, sandbox};
    use rosterd::sandbox::cometchat::Scope;
    bounded(60, async {
        let sb = sandbox(world()).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_root(dir.path(), &sb, "groups/");
        std::fs::create_dir(dir.path().join("groups")).unwrap();
        let manifest = |members: &str| {
            format!(
                "group: late\nprovider: cc\nid: late\nadmins: [alice]\nparticipants: [{members}]\n"
            )
        };
        std::fs::write(dir.path().join("groups/late.yaml"), manifest("bob")).unwrap();
        let d = start(&cfg, Duration::from_secs(3600));
        let metric = |text: &str, series: &str| -> Option<f64> {
            text.lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        };
        let failing = "rosterd_group_failing_since_timestamp_seconds{group=\"late\"}";
        let success = "rosterd_last_success_timestamp_seconds{group=\"late\"}";
        let text = d
            .get_until("/metrics", "a failure", |t| metric(t, failing).is_some())
            .await;
        let since = metric(&text, failing).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((now - since).abs() < 30.0, "a Unix time: {since}");
        assert_eq!(metric(&text, success), None);
        assert_eq!(metric(&text, "rosterd_resync_seconds"), Some(3600.0));
        assert_eq!(
            metric(&text, "rosterd_ready"),
            Some(0.0),
            "no read answered yet"
        );

        // The group appears at the provider and the next run succeeds.
        sb.cometchat.with_state(|s| {
            s.apps.get_mut(CC_APP).unwrap().groups.insert(
                "late".into(),
                group(Some("alice"), &[("alice", Scope::Admin)], &[]),
            );
        });
        std::fs::write(dir.path().join("groups/late.yaml"), manifest("bob, carol")).unwrap();
        until(20, "the run succeeds", || {
            sb.cometchat
                .group(CC_APP, "late")
                .is_some_and(|g| g.members.len() == 3)
        })
        .await;
        let text = d
            .get_until("/metrics", "a success", |t| metric(t, success).is_some())
            .await;
        assert_eq!(
            metric(&text, failing),
            None,
            "a success ends the streak:\n{text}"
        );
        assert_eq!(metric(&text, "rosterd_ready"), Some(1.0));

        // No longer managed: no series of the group is left.
        std::fs::remove_file(dir.path().join("groups/late.yaml")).unwrap();
        d.get_until("/metrics", "no series of the group", |t| {
            !t.contains("group=\"late\"")
        })
        .await;
        d.stop().await;
    })
    .await
}
