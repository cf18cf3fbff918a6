//! The status page for people: `/` lists every managed group (provider, result, last run,
//! pending drift, last error, running now) under the file errors, with filters by provider and
//! state; `/group?name=` shows one group's last plan (the text plan's diff, with people's names)
//! and its recent operations from the audit log.
//!
//! Server-rendered with `maud`: every interpolated value is HTML-escaped by construction (group
//! names, file errors and provider messages are untrusted), and the only unescaped text is the
//! fixed stylesheet below. A strict Content-Security-Policy forbids scripts altogether, so even a
//! slip in escaping could not run code; the page refreshes itself with a `<meta>` tag.
//! It shows what /status shows plus the plan and the audit log, which hold no secret either.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;

use super::{GroupState, Shared};
use crate::config::People;
use crate::plan::{GroupPlan, Plan, render};
use crate::provider::Kind;
use crate::reconcile::GroupStatus;

/// Seconds between the page's own reloads.
const REFRESH_SECS: u32 = 30;
/// Operations shown on a group's page, newest first.
const RECENT_OPERATIONS: usize = 50;
/// Only the end of the audit log is read: recent operations are at its end, and the page must
/// not read a log of many megabytes on every view.
const AUDIT_TAIL_BYTES: u64 = 1 << 20;

const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#1d2330;background:#fafbfc}
h1{font-size:1.4rem;margin:0 0 .8rem}h2{font-size:1.1rem;margin:1.4rem 0 .5rem}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border-bottom:1px solid #e3e6ea;padding:.35rem .6rem;text-align:left;vertical-align:top}
th{background:#f0f2f5;font-weight:600}
.errors{background:#fff1f0;border:1px solid #f5b5b0;padding:.6rem 1rem;margin-bottom:1rem}
.errors li{font-family:ui-monospace,monospace;white-space:pre-wrap}
.state{font-weight:600;padding:.05rem .45rem;border-radius:.6rem;white-space:nowrap}
.in_sync,.applied{background:#e3f6e8;color:#116329}.failed{background:#fde7e5;color:#a1170b}
.blocked,.changes{background:#fff4d6;color:#7a4b00}.pending,.running{background:#e8eefc;color:#1f4aa8}
.err{color:#a1170b;white-space:pre-wrap;max-width:40rem;overflow-wrap:anywhere}
.muted{color:#667085}.num{text-align:right}.nowrap{white-space:nowrap}
td.name{max-width:22rem;overflow-wrap:anywhere}
pre{background:#fff;border:1px solid #e3e6ea;padding:.6rem;overflow:auto}
.del{color:#a1170b}.ins{color:#116329}
form{margin:0 0 1rem}select,button{font:inherit;margin-right:.6rem}
";

/// The states the filter knows: the results of a run, plus groups not run yet, groups running
/// now, and everything that needs a person (failed, blocked, or drift left).
const STATES: [(&str, &str); 8] = [
    ("attention", "needs attention"),
    ("failed", "failed"),
    ("blocked", "blocked"),
    ("applied", "applied"),
    ("in_sync", "in sync"),
    ("changes", "changes"),
    ("pending", "not run yet"),
    ("running", "running now"),
];

#[derive(Debug, Default, Deserialize)]
pub struct IndexQuery {
    pub provider: Option<String>,
    pub state: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct GroupQuery {
    pub name: String,
}

/// One managed group as the page shows it.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub provider: String,
    pub kind: Kind,
    pub id: String,
    pub source: String,
    pub state: GroupState,
}

/// Everything the overview shows, taken from the daemon's state in one go.
#[derive(Debug, Clone)]
pub struct Overview {
    pub rows: Vec<Row>,
    pub file_errors: Vec<String>,
    pub providers: Vec<String>,
    pub ready: Result<(), String>,
}

/// One line of the audit log about a member.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AuditEntry {
    pub ts: String,
    pub op: String,
    pub member: String,
    pub outcome: String,
    pub code: Option<String>,
    pub message: Option<String>,
}

/// A snapshot of the daemon's state; the last plan is copied for the `detail` group only.
/// The file tree is read first and released before the status map is read: no lock is held
/// while taking another.
fn overview(s: &Shared, detail: Option<&str>) -> (Overview, People, Option<std::path::PathBuf>) {
    let ready = s.ready();
    let (groups, file_errors, providers, people, audit) = {
        let tree = s.tree.lock().expect("lock");
        let ctx = tree.context();
        (
            tree.groups()
                .values()
                .map(|g| Row {
                    name: g.name.clone(),
                    provider: g.provider.clone(),
                    kind: g.kind,
                    id: g.id.as_str().to_string(),
                    source: g.source.clone(),
                    state: GroupState::default(),
                })
                .collect::<Vec<_>>(),
            tree.errors().iter().map(|d| d.to_string()).collect(),
            ctx.map(|c| c.instances.keys().cloned().collect())
                .unwrap_or_default(),
            ctx.map(|c| c.people.clone()).unwrap_or_default(),
            ctx.and_then(|c| c.audit_log.clone()),
        )
    };
    let status = s.status.read().expect("lock");
    let rows = groups
        .into_iter()
        .map(|mut row| {
            let Some(e) = status.get(&row.name) else {
                return row;
            };
            row.state = GroupState {
                last_run: e.last_run.clone(),
                result: e.result,
                pending_drift: e.pending_drift,
                last_error: e.last_error.clone(),
                running: e.running,
                failures: e.failures,
                last_plan: e
                    .last_plan
                    .clone()
                    .filter(|_| detail == Some(row.name.as_str())),
            };
            row
        })
        .collect();
    let o = Overview {
        rows,
        file_errors,
        providers,
        ready,
    };
    (o, people, audit)
}

/// `/`: every group, file errors first.
pub async fn index(State(s): State<Arc<Shared>>, Query(q): Query<IndexQuery>) -> Response {
    let (o, _, _) = overview(&s, None);
    html_response(StatusCode::OK, render_index(&o, &q, SystemTime::now()))
}

/// `/group?name=`: one group's last plan and recent operations.
pub async fn group(State(s): State<Arc<Shared>>, Query(q): Query<GroupQuery>) -> Response {
    let (o, people, audit) = overview(&s, Some(&q.name));
    let Some(row) = o.rows.into_iter().find(|r| r.name == q.name) else {
        let body = page(
            "rosterd: no such group",
            html! {
                p { a href="/" { "← all groups" } }
                p { "No managed group is named " code { (q.name) } "." }
            },
        );
        return html_response(StatusCode::NOT_FOUND, body);
    };
    let ops = match audit {
        Some(path) => {
            let name = row.name.clone();
            let read = tokio::task::spawn_blocking(move || recent_operations(&path, &name)).await;
            Some(read.unwrap_or_else(|e| Err(e.to_string())))
        }
        None => None,
    };
    let names = names_of(&people, &row.provider, row.kind);
    html_response(
        StatusCode::OK,
        render_group(&row, &names, ops.as_ref(), SystemTime::now()),
    )
}

fn html_response(status: StatusCode, body: Markup) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.into_string(),
    )
        .into_response()
}

fn page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta http-equiv="refresh" content=(REFRESH_SECS);
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body { (body) }
        }
    }
}

/// The filter's name for a group's state.
pub fn state_of(s: &GroupState) -> &'static str {
    match s.result {
        None if s.running => "running",
        None => "pending",
        Some(GroupStatus::InSync) => "in_sync",
        Some(GroupStatus::Applied) => "applied",
        Some(GroupStatus::Changes) => "changes",
        Some(GroupStatus::Failed) => "failed",
        Some(GroupStatus::Blocked) => "blocked",
    }
}

fn state_label(state: &str) -> &'static str {
    STATES
        .iter()
        .find(|(k, _)| *k == state)
        .map_or("unknown", |(_, l)| l)
}

fn matches(row: &Row, q: &IndexQuery) -> bool {
    let provider_ok = q
        .provider
        .as_deref()
        .is_none_or(|p| p.is_empty() || p == row.provider);
    let state = state_of(&row.state);
    let state_ok = match q.state.as_deref() {
        None | Some("") => true,
        Some("running") => row.state.running,
        Some("attention") => matches!(state, "failed" | "blocked") || row.state.pending_drift > 0,
        Some(s) => s == state,
    };
    provider_ok && state_ok
}

/// "12 s ago", "5 min ago", "3 h ago", "2 days ago".
pub fn ago(then: SystemTime, now: SystemTime) -> String {
    let secs = now.duration_since(then).unwrap_or(Duration::ZERO).as_secs();
    match secs {
        0..60 => format!("{secs} s ago"),
        60..3600 => format!("{} min ago", secs / 60),
        3600..172_800 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86_400),
    }
}

fn last_run(s: &GroupState, now: SystemTime) -> Markup {
    match &s.last_run {
        None => html! { span.muted { "never" } },
        Some(at) => {
            let rel = humantime::parse_rfc3339(at)
                .map(|t| ago(t, now))
                .unwrap_or_default();
            html! { time datetime=(at) title=(at) { (rel) } " " span.muted { (at) } }
        }
    }
}

fn state_badge(s: &GroupState) -> Markup {
    let state = state_of(s);
    html! {
        span class={ "state " (state) } { (state_label(state)) }
        @if s.running && state != "running" { " " span class="state running" { "running now" } }
    }
}

fn group_href(name: &str) -> String {
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("name", name)
        .finish();
    format!("/group?{q}")
}

/// The overview: file errors at the top, the filter form, one row per group.
pub fn render_index(o: &Overview, q: &IndexQuery, now: SystemTime) -> Markup {
    let shown: Vec<&Row> = o.rows.iter().filter(|r| matches(r, q)).collect();
    let failing = o
        .rows
        .iter()
        .filter(|r| state_of(&r.state) == "failed")
        .count();
    let body = html! {
        h1 { "rosterd" }
        p.muted {
            (o.rows.len()) " groups managed, " (failing) " failing; "
            @match &o.ready {
                Ok(()) => { "ready" }
                Err(why) => { "not ready: " (why) }
            }
            " · " a href="/status" { "/status" } " · " a href="/metrics" { "/metrics" }
        }
        @if !o.file_errors.is_empty() {
            section.errors #file-errors {
                strong { (o.file_errors.len()) " file error(s) — the last valid version of each file stays in force" }
                ul { @for e in &o.file_errors { li { (e) } } }
            }
        }
        form method="get" action="/" {
            label { "Provider " select name="provider" {
                option value="" { "all" }
                @for p in &o.providers {
                    option value=(p) selected[q.provider.as_deref() == Some(p.as_str())] { (p) }
                }
            } }
            label { "State " select name="state" {
                option value="" { "all" }
                @for (k, l) in STATES {
                    option value=(k) selected[q.state.as_deref() == Some(k)] { (l) }
                }
            } }
            button type="submit" { "Filter" }
            @if shown.len() != o.rows.len() { a href="/" { "clear" } }
        }
        table #groups {
            thead { tr {
                th { "Group" } th { "Provider" } th { "Result" } th { "Last run" }
                th.num { "Pending drift" } th { "Last error" }
            } }
            tbody {
                @for r in &shown {
                    tr data-group=(r.name) data-state=(state_of(&r.state)) {
                        td.name { a href=(group_href(&r.name)) { (r.name) } }
                        td.nowrap { (r.provider) " " span.muted { (r.kind) } }
                        td.nowrap { (state_badge(&r.state)) }
                        td.nowrap { (last_run(&r.state, now)) }
                        td.num { (r.state.pending_drift) }
                        td.err { @if let Some(e) = &r.state.last_error { (e) } }
                    }
                }
                @if shown.is_empty() {
                    tr { td colspan="6" .muted { "No group matches the filter." } }
                }
            }
        }
    };
    page("rosterd status", body)
}

/// Person names by member id for one provider instance: people.yaml lists ids per instance
/// name or per kind, in the syntax people write; the plan shows them normalized.
pub fn names_of(people: &People, provider: &str, kind: Kind) -> BTreeMap<String, String> {
    people
        .people
        .iter()
        .filter_map(|(person, ids)| {
            let raw = ids.get(provider).or_else(|| ids.get(kind.as_str()))?;
            let id = kind.normalize_member(raw).ok()?;
            Some((id.as_str().to_string(), person.clone()))
        })
        .collect()
}

/// The text plan's lines for one group, each diff line with the person behind its id.
fn plan_lines(plan: &GroupPlan, names: &BTreeMap<String, String>) -> Markup {
    let text = render::text(
        &Plan {
            groups: vec![plan.clone()],
            errors: vec![],
        },
        false,
    );
    html! {
        pre #plan {
            // The plan of one group: its own summary line says it all, the total would repeat it.
            @for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with("total: ")) {
                @let (class, rest) = if let Some(r) = line.strip_prefix("  - ") {
                    ("del", r)
                } else if let Some(r) = line.strip_prefix("  + ") {
                    ("ins", r)
                } else {
                    ("", "")
                };
                @let person = rest.split(' ').next().and_then(|id| names.get(id)).filter(|p| !rest.starts_with(p.as_str()));
                @if class.is_empty() { (line) "\n" }
                @else {
                    span class=(class) { (line) @if let Some(p) = person { "  (" (p) ")" } } "\n"
                }
            }
        }
    }
}

/// A group's page: its state, its last plan and its recent operations.
pub fn render_group(
    row: &Row,
    names: &BTreeMap<String, String>,
    ops: Option<&Result<Vec<AuditEntry>, String>>,
    now: SystemTime,
) -> Markup {
    let s = &row.state;
    let body = html! {
        p { a href="/" { "← all groups" } }
        h1 { "Group " (row.name) }
        table #group {
            tr { th { "Provider" } td { (row.provider) " " span.muted { (row.kind) } } }
            tr { th { "Provider's id" } td { code { (row.id) } } }
            tr { th { "Manifest" } td { code { (row.source) } } }
            tr { th { "Result" } td { (state_badge(s)) } }
            tr { th { "Last run" } td { (last_run(s, now)) } }
            tr { th { "Pending drift" } td { (s.pending_drift) " operation(s)" } }
            tr { th { "Last error" } td.err { @if let Some(e) = &s.last_error { (e) } @else { span.muted { "none" } } } }
        }
        h2 { "Last plan" span.muted { " — from the last run that could read the group" } }
        @match &s.last_plan {
            Some(plan) => { (plan_lines(plan, names)) }
            None => { p.muted { "No plan yet: the group has not been read successfully since the daemon started." } }
        }
        h2 { "Recent operations" }
        @match ops {
            None => { p.muted { "No audit log is configured (" code { "audit_log:" } " in rosterd.yaml)." } }
            Some(Err(e)) => { p.err { "Cannot read the audit log: " (e) } }
            Some(Ok(ops)) if ops.is_empty() => { p.muted { "No operation of this group in the audit log." } }
            Some(Ok(ops)) => {
                table #operations {
                    thead { tr { th { "When" } th { "Operation" } th { "Member" } th { "Outcome" } th { "Detail" } } }
                    tbody {
                        @for o in ops {
                            tr {
                                td { time datetime=(o.ts) { (o.ts) } }
                                td { (o.op) }
                                td { (o.member) @if let Some(p) = names.get(&o.member).filter(|p| **p != o.member) { " (" (p) ")" } }
                                td { span class={ "state " (if o.outcome == "failed" { "failed" } else { "applied" }) } { (o.outcome) } }
                                td.err {
                                    @if let Some(c) = &o.code { code { (c) } " " }
                                    @if let Some(m) = &o.message { (m) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page(&format!("rosterd: {}", row.name), body)
}

/// The group's member lines at the end of the audit log, newest first.
pub fn recent_operations(path: &Path, group: &str) -> Result<Vec<AuditEntry>, String> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        // Nothing written yet: the log is created on the first write call.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e.to_string()),
    };
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    let start = len.saturating_sub(AUDIT_TAIL_BYTES);
    f.seek(SeekFrom::Start(start)).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = text.lines();
    if start > 0 {
        lines.next(); // cut in the middle
    }
    let mut out: Vec<AuditEntry> = lines
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "member" && v["group"] == group)
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect();
    out.reverse();
    out.truncate(RECENT_OPERATIONS);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVIL: &str = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'&";

    fn row(name: &str, provider: &str, result: Option<GroupStatus>, drift: usize) -> Row {
        Row {
            name: name.into(),
            provider: provider.into(),
            kind: Kind::Cometchat,
            id: name.into(),
            source: "groups/x.yaml".into(),
            state: GroupState {
                last_run: result.map(|_| "2026-01-01T00:00:00Z".into()),
                result,
                pending_drift: drift,
                last_error: Some(EVIL.into()),
                ..GroupState::default()
            },
        }
    }

    fn overview(rows: Vec<Row>) -> Overview {
        Overview {
            rows,
            file_errors: vec![format!("groups/x.yaml:1:1: {EVIL}")],
            providers: vec!["cc".into(), "tim".into()],
            ready: Err(EVIL.into()),
        }
    }

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn every_untrusted_text_is_escaped() {
        let o = overview(vec![row(EVIL, "cc", Some(GroupStatus::Failed), 0)]);
        let html =
            render_index(&o, &IndexQuery::default(), at("2026-01-01T00:05:00Z")).into_string();
        assert!(
            !html.contains("<script>alert") && !html.contains("<img"),
            "{html}"
        );
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        // In a link the name is form-encoded, then escaped as an attribute.
        assert!(
            html.contains("href=\"/group?name=%3Cscript%3Ealert%281%29"),
            "{html}"
        );
        assert_eq!(html.matches("<script").count(), 0);
        let names = BTreeMap::from([("bob".to_string(), EVIL.to_string())]);
        let ops = Ok(vec![AuditEntry {
            ts: EVIL.into(),
            op: "add".into(),
            member: "bob".into(),
            outcome: "failed".into(),
            code: Some(EVIL.into()),
            message: Some(EVIL.into()),
        }]);
        let page = render_group(&o.rows[0], &names, Some(&ops), at("2026-01-01T00:05:00Z"));
        let html = page.into_string();
        assert!(
            !html.contains("<script>alert") && !html.contains("<img"),
            "{html}"
        );
        assert!(html.contains("Group &lt;script&gt;"), "{html}");
    }

    #[test]
    fn filters_by_provider_and_state() {
        let o = overview(vec![
            row("a", "cc", Some(GroupStatus::Applied), 0),
            row("b", "tim", Some(GroupStatus::Failed), 0),
            row("c", "cc", Some(GroupStatus::Blocked), 4),
            row("d", "tim", None, 0),
            row("e", "cc", Some(GroupStatus::InSync), 2),
        ]);
        let shown = |provider: Option<&str>, state: Option<&str>| -> Vec<String> {
            let q = IndexQuery {
                provider: provider.map(String::from),
                state: state.map(String::from),
            };
            o.rows
                .iter()
                .filter(|r| matches(r, &q))
                .map(|r| r.name.clone())
                .collect()
        };
        assert_eq!(shown(None, None), ["a", "b", "c", "d", "e"]);
        assert_eq!(shown(Some(""), Some("")), ["a", "b", "c", "d", "e"]);
        assert_eq!(shown(Some("cc"), None), ["a", "c", "e"]);
        assert_eq!(shown(None, Some("failed")), ["b"]);
        assert_eq!(shown(None, Some("pending")), ["d"]);
        assert_eq!(shown(None, Some("attention")), ["b", "c", "e"]);
        assert_eq!(shown(Some("tim"), Some("attention")), ["b"]);
        let html = render_index(
            &o,
            &IndexQuery {
                provider: Some("tim".into()),
                state: Some("failed".into()),
            },
            at("2026-01-01T00:05:00Z"),
        )
        .into_string();
        assert!(html.contains("<option value=\"tim\" selected>"), "{html}");
        assert!(
            html.contains("<option value=\"failed\" selected>"),
            "{html}"
        );
        assert_eq!(html.matches("<tr data-group").count(), 1);
    }

    #[test]
    fn last_run_is_relative_and_absolute() {
        let now = at("2026-01-03T00:00:00Z");
        assert_eq!(ago(at("2026-01-02T23:59:48Z"), now), "12 s ago");
        assert_eq!(ago(at("2026-01-02T23:55:00Z"), now), "5 min ago");
        assert_eq!(ago(at("2026-01-02T21:00:00Z"), now), "3 h ago");
        assert_eq!(ago(at("2025-12-31T00:00:00Z"), now), "3 days ago");
        assert_eq!(
            ago(at("2026-01-04T00:00:00Z"), now),
            "0 s ago",
            "a clock step back"
        );
        let o = overview(vec![row("a", "cc", Some(GroupStatus::Applied), 0)]);
        let html =
            render_index(&o, &IndexQuery::default(), at("2026-01-01T00:05:00Z")).into_string();
        assert!(html.contains("5 min ago"), "{html}");
        assert!(html.contains("2026-01-01T00:00:00Z"), "{html}");
    }

    #[test]
    fn recent_operations_are_the_groups_member_lines_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        assert_eq!(recent_operations(&path, "team"), Ok(vec![]), "no log yet");
        let log = crate::audit::AuditLog::open(&path).unwrap();
        use crate::model::{MemberId, MemberOutcome, OpKind};
        log.call(
            SystemTime::UNIX_EPOCH,
            "team",
            "cc",
            OpKind::Add,
            1,
            1,
            &[MemberOutcome::done(MemberId::new("a"))],
        );
        log.call(
            SystemTime::UNIX_EPOCH,
            "other",
            "cc",
            OpKind::Add,
            1,
            1,
            &[MemberOutcome::done(MemberId::new("x"))],
        );
        log.call(
            SystemTime::UNIX_EPOCH,
            "team",
            "cc",
            OpKind::Remove,
            1,
            1,
            &[MemberOutcome::failed(MemberId::new("b"), "E1", "no <b>")],
        );
        let ops = recent_operations(&path, "team").unwrap();
        let got: Vec<(&str, &str, &str)> = ops
            .iter()
            .map(|o| (o.op.as_str(), o.member.as_str(), o.outcome.as_str()))
            .collect();
        assert_eq!(got, [("remove", "b", "failed"), ("add", "a", "done")]);
        assert_eq!(ops[0].message.as_deref(), Some("no <b>"));

        // A log larger than the tail read: the cut first line is skipped, the rest is read.
        let mut big = "x".repeat(AUDIT_TAIL_BYTES as usize);
        big.push('\n');
        big.push_str(&std::fs::read_to_string(&path).unwrap());
        std::fs::write(&path, big).unwrap();
        assert_eq!(recent_operations(&path, "team").unwrap().len(), 2);
    }

    #[test]
    fn people_are_named_by_their_normalized_ids() {
        let people = People {
            people: BTreeMap::from([
                (
                    "alice".to_string(),
                    BTreeMap::from([("wa".to_string(), "+49 151 2345678".to_string())]),
                ),
                (
                    "bob".to_string(),
                    BTreeMap::from([("waha".to_string(), "+49 151 9999999".to_string())]),
                ),
                (
                    "carol".to_string(),
                    BTreeMap::from([("cometchat".to_string(), "carol".to_string())]),
                ),
            ]),
            teams: BTreeMap::new(),
        };
        let names = names_of(&people, "wa", Kind::Waha);
        assert_eq!(
            names,
            BTreeMap::from([
                ("491512345678@c.us".to_string(), "alice".to_string()),
                ("491519999999@c.us".to_string(), "bob".to_string()),
            ])
        );
    }
}
