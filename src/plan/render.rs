//! The three renderings of a plan: `text` (a roster diff per group, rendered with `similar`),
//! `json` (a stable, versioned document) and `markdown` (a pull-request comment).
//!
//! JSON document, version 2 (README "JSON plan document"):
//!
//! ```text
//! { "version": 2, "tree"?: str,
//!   "groups": [ { "group": str, "provider": str, "kind": str, "id": str,
//!                 "checksum": {"group": str, "desired": str, "live": str} | null,
//!                 "blocked": str|null, "notes": [str],
//!                 "operations": [ {"kind": op, "member": str, "name": str|null, "role"?: str, "from"?: str, "mute"?: str|null} ],
//!                 "calls": [ {"op": op, "members": [str]} ],
//!                 "summary": {"add","role_changes","remove","ban","unban","mute","unmute","transfer_owner","calls"} } ],
//!   "errors": [ {"group": str, "provider": str, "message": str} ],
//!   "summary": { same counters over all groups, "groups": n, "groups_with_changes": n, "blocked": n, "errors": n } }
//! ```
//! `op` is one of unban, add, promote, mute, unmute, demote, remove, ban, transfer_owner.

use std::fmt::Write as _;

use anstyle::{AnsiColor, Style};
use serde_json::{Value, json};
use similar::{ChangeTag, TextDiff};

use crate::model::OpKind;

use super::{GroupPlan, Plan};

/// 2: operations carry the member's manifest `name`, groups their `checksum`, documents
/// written by `plan --out` the `tree` they belong to.
pub const JSON_VERSION: u32 = 2;

/// Counts shown in summaries.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub add: usize,
    pub role_changes: usize,
    pub remove: usize,
    pub ban: usize,
    pub unban: usize,
    pub mute: usize,
    pub unmute: usize,
    pub transfer_owner: usize,
    pub calls: usize,
}

impl Counts {
    pub fn of(g: &GroupPlan) -> Self {
        Counts {
            add: g.count(OpKind::Add),
            role_changes: g.count(OpKind::Promote) + g.count(OpKind::Demote),
            remove: g.count(OpKind::Remove),
            ban: g.count(OpKind::Ban),
            unban: g.count(OpKind::Unban),
            mute: g.count(OpKind::Mute),
            unmute: g.count(OpKind::Unmute),
            transfer_owner: g.count(OpKind::TransferOwner),
            calls: g.calls(),
        }
    }

    fn add_up(mut self, o: Counts) -> Self {
        self.add += o.add;
        self.role_changes += o.role_changes;
        self.remove += o.remove;
        self.ban += o.ban;
        self.unban += o.unban;
        self.mute += o.mute;
        self.unmute += o.unmute;
        self.transfer_owner += o.transfer_owner;
        self.calls += o.calls;
        self
    }

    fn line(&self) -> String {
        let mut s = format!(
            "{} to add, {} role changes, {} to remove, {} to ban, {} to unban, {} mutes ({} unmutes)",
            self.add, self.role_changes, self.remove, self.ban, self.unban, self.mute, self.unmute
        );
        if self.transfer_owner > 0 {
            s.push_str(", owner transfer");
        }
        let _ = write!(s, ", {} API calls", self.calls);
        s
    }

    fn json(&self) -> Value {
        json!({
            "add": self.add, "role_changes": self.role_changes, "remove": self.remove,
            "ban": self.ban, "unban": self.unban, "mute": self.mute, "unmute": self.unmute,
            "transfer_owner": self.transfer_owner, "calls": self.calls,
        })
    }
}

fn total(plan: &Plan) -> Counts {
    plan.groups
        .iter()
        .map(Counts::of)
        .fold(Counts::default(), Counts::add_up)
}

fn paint(color: bool, style: Style, text: &str) -> String {
    if color {
        format!("{style}{text}{style:#}")
    } else {
        text.to_string()
    }
}

/// Human-readable plan: per group the roster diff, notes, the safety verdict and a summary.
pub fn text(plan: &Plan, color: bool) -> String {
    let bold = Style::new().bold();
    let red = Style::new().fg_color(Some(AnsiColor::Red.into()));
    let green = Style::new().fg_color(Some(AnsiColor::Green.into()));
    let yellow = Style::new().fg_color(Some(AnsiColor::Yellow.into()));
    let mut s = String::new();
    for g in &plan.groups {
        let _ = writeln!(
            s,
            "{}",
            paint(
                color,
                bold,
                &format!("group {} ({} {}, id {})", g.group, g.provider, g.kind, g.id)
            )
        );
        if g.is_empty() {
            let _ = writeln!(s, "  in sync");
        } else {
            for line in diff_lines(g) {
                let (style, text) = match line.0 {
                    ChangeTag::Delete => (red, format!("  - {}", line.1)),
                    ChangeTag::Insert => (green, format!("  + {}", line.1)),
                    ChangeTag::Equal => (Style::new(), format!("    {}", line.1)),
                };
                let _ = writeln!(s, "{}", paint(color, style, &text));
            }
            for op in g.ops.iter().filter(|o| o.kind == OpKind::TransferOwner) {
                let _ = writeln!(s, "  ~ owner -> {}", g.who(&op.member));
            }
        }
        for n in &g.notes {
            let _ = writeln!(s, "  note: {n}");
        }
        if let Some(b) = &g.blocked {
            let _ = writeln!(s, "{}", paint(color, yellow, &format!("  BLOCKED: {b}")));
        }
        if !g.is_empty() {
            let _ = writeln!(s, "  {}", Counts::of(g).line());
        }
        s.push('\n');
    }
    for e in &plan.errors {
        let _ = writeln!(
            s,
            "{}",
            paint(
                color,
                red,
                &format!("group {} ({}): error: {}", e.group, e.provider, e.message)
            )
        );
    }
    let changed = plan.groups.iter().filter(|g| !g.is_empty()).count();
    let _ = writeln!(
        s,
        "{}",
        paint(
            color,
            bold,
            &format!(
                "total: {} groups, {} with changes, {} blocked, {} errors; {}",
                plan.groups.len() + plan.errors.len(),
                changed,
                plan.groups.iter().filter(|g| g.blocked.is_some()).count(),
                plan.errors.len(),
                total(plan).line()
            )
        )
    );
    s
}

/// The roster diff of a group, member by member, so a member's old and new state sit
/// together. `before`/`after` hold the lines of the members the plan touches only; each
/// member is shown as the manifest names them.
fn diff_lines(g: &GroupPlan) -> Vec<(ChangeTag, String)> {
    let member = |l: &String| l.split(' ').next().unwrap_or("").to_string();
    let mut by_member: std::collections::BTreeMap<String, (Vec<&str>, Vec<&str>)> =
        Default::default();
    for l in &g.before {
        by_member.entry(member(l)).or_default().0.push(l);
    }
    for l in &g.after {
        by_member.entry(member(l)).or_default().1.push(l);
    }
    let mut out = Vec::new();
    for (before, after) in by_member.values() {
        let diff = TextDiff::from_slices(before, after);
        for op in diff.ops() {
            for change in diff.iter_changes(op) {
                if change.tag() != ChangeTag::Equal {
                    let line = change.value();
                    let shown = match line.split_once(' ') {
                        Some((id, rest)) => {
                            format!("{} {rest}", g.who(&crate::model::MemberId::new(id)))
                        }
                        None => line.to_string(),
                    };
                    out.push((change.tag(), shown));
                }
            }
        }
    }
    out
}

/// The versioned JSON document (schema in the module docs).
pub fn json(plan: &Plan) -> Value {
    let groups: Vec<Value> = plan
        .groups
        .iter()
        .map(|g| {
            json!({
                "group": g.group,
                "provider": g.provider,
                "kind": g.kind,
                "id": g.id,
                "checksum": g.checksum,
                "blocked": g.blocked,
                "notes": g.notes,
                "operations": g.ops.iter().map(|op| {
                    let mut v = json!(op);
                    v["name"] = json!(g.name_of(&op.member));
                    v
                }).collect::<Vec<_>>(),
                "calls": g.batches.iter().map(|b| json!({
                    "op": b.kind,
                    "members": b.members().collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "summary": Counts::of(g).json(),
            })
        })
        .collect();
    let mut summary = total(plan).json();
    summary["groups"] = json!(plan.groups.len() + plan.errors.len());
    summary["groups_with_changes"] = json!(plan.groups.iter().filter(|g| !g.is_empty()).count());
    summary["blocked"] = json!(plan.groups.iter().filter(|g| g.blocked.is_some()).count());
    summary["errors"] = json!(plan.errors.len());
    json!({
        "version": JSON_VERSION,
        "groups": groups,
        "errors": plan.errors,
        "summary": summary,
    })
}

/// A pull-request comment: a table of groups, then a diff block per changed group.
pub fn markdown(plan: &Plan) -> String {
    let mut s = String::from("### rosterd plan\n\n");
    let t = total(plan);
    if plan.is_empty() && plan.errors.is_empty() {
        s.push_str("All groups are in sync. :white_check_mark:\n");
        return s;
    }
    s.push_str("| group | provider | add | role changes | remove | ban | unban | mute | unmute | API calls | status | checksum |\n");
    s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n");
    for g in &plan.groups {
        let c = Counts::of(g);
        let status = if g.blocked.is_some() {
            "**blocked**"
        } else if g.is_empty() {
            "in sync"
        } else {
            "changes"
        };
        let sum = g
            .checksum
            .as_ref()
            .map_or(String::new(), |c| format!("`{}`", c.short()));
        let _ = writeln!(
            s,
            "| `{}` | {} ({}) | {} | {} | {} | {} | {} | {} | {} | {} | {} | {sum} |",
            g.group,
            g.provider,
            g.kind,
            c.add,
            c.role_changes,
            c.remove,
            c.ban,
            c.unban,
            c.mute,
            c.unmute,
            c.calls,
            status
        );
    }
    for e in &plan.errors {
        let _ = writeln!(
            s,
            "| `{}` | {} | | | | | | | | | **error** | |",
            e.group, e.provider
        );
    }
    let _ = writeln!(s, "\n**Total:** {}\n", t.line());
    for g in plan
        .groups
        .iter()
        .filter(|g| !g.is_empty() || !g.notes.is_empty())
    {
        let _ = writeln!(
            s,
            "<details><summary><code>{}</code>: {}</summary>\n",
            g.group,
            Counts::of(g).line()
        );
        if let Some(b) = &g.blocked {
            let _ = writeln!(s, "> [!WARNING]\n> Blocked: {b}\n");
        }
        if !g.is_empty() {
            s.push_str("```diff\n");
            for (tag, line) in diff_lines(g) {
                let sign = match tag {
                    ChangeTag::Delete => '-',
                    ChangeTag::Insert => '+',
                    ChangeTag::Equal => ' ',
                };
                let _ = writeln!(s, "{sign} {line}");
            }
            for op in g.ops.iter().filter(|o| o.kind == OpKind::TransferOwner) {
                let _ = writeln!(s, "! owner -> {}", g.who(&op.member));
            }
            s.push_str("```\n");
        }
        for n in &g.notes {
            let _ = writeln!(s, "- note: {n}");
        }
        s.push_str("\n</details>\n\n");
    }
    for e in &plan.errors {
        let _ = writeln!(s, "- :x: `{}` ({}): {}", e.group, e.provider, e.message);
    }
    s
}
