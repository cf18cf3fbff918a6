//! `rosterd explain NAME`: where a person, `@team` or raw id is — every group that lists them,
//! their role there, which list and chain of teams brought them in, their id on every provider
//! instance — and, with `--without`, the blast radius of taking them out of people.yaml or a
//! team: the removals and demotions that would be planned, per group, against `max_removals`.
//! Files only by default; `--live` adds where they are a member now.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::SystemTime;

use crate::config::raw::{IdValue, RawGroup};
use crate::config::yaml::{self, Spanned};
use crate::config::{self, Config, Context};
use crate::model::{DesiredGroup, LiveGroup, MemberId, OpKind, Role};
use crate::plan::{self, PlanOptions};

/// Who is explained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Person(String),
    Team(String),
    /// A raw provider id, matched in each group after its kind's normalisation.
    Raw(String),
}

impl Target {
    /// A person of people.yaml wins over a raw id of the same spelling, as in manifests.
    pub fn parse(ctx: &Context, name: &str) -> Result<Target, String> {
        let name = name.trim();
        if let Some(t) = name.strip_prefix('@') {
            return if ctx.people.teams.contains_key(t) {
                Ok(Target::Team(t.to_string()))
            } else {
                Err(format!("unknown team @{t} (people.yaml)"))
            };
        }
        if ctx.people.people.contains_key(name) {
            return Ok(Target::Person(name.to_string()));
        }
        Ok(Target::Raw(name.to_string()))
    }

    fn label(&self) -> String {
        match self {
            Target::Person(p) => p.clone(),
            Target::Team(t) => format!("@{t}"),
            Target::Raw(r) => r.clone(),
        }
    }
}

/// One entry of a manifest, resolved: the list it is in, the member, and how it got there.
#[derive(Debug, Clone)]
struct Entry {
    key: &'static str,
    id: MemberId,
    person: Option<String>,
    /// Teams, outermost first.
    chain: Vec<String>,
    matches: bool,
}

impl Entry {
    fn via(&self) -> String {
        let mut parts: Vec<String> = self.chain.iter().map(|t| format!("@{t}")).collect();
        parts.push(self.person.clone().unwrap_or_else(|| self.id.to_string()));
        format!("{}: {}", self.key, parts.join(" → "))
    }
}

/// Every resolved entry of every valid group, by group name.
fn entries(cfg: &Config, ctx: &Context, target: &Target) -> BTreeMap<String, Vec<Entry>> {
    let valid: BTreeMap<&str, &DesiredGroup> =
        cfg.groups.iter().map(|g| (g.name.as_str(), g)).collect();
    let mut out: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    for file in &ctx.manifest_files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for doc in yaml::from_str_multi::<RawGroup>(&text)
            .into_iter()
            .flatten()
        {
            let name = doc.group.value.trim();
            let Some(g) = valid.get(name) else { continue };
            let raw_id = match target {
                Target::Raw(r) => g.kind.normalize_member(r).ok(),
                _ => None,
            };
            let mut list: Vec<Entry> = Vec::new();
            let mut walk = |key: &'static str, e: &Spanned<IdValue>| {
                config::trace_entry(ctx, &g.provider, g.kind, &e.value.text(), &mut |m, p, c| {
                    let matches = match target {
                        Target::Person(t) => p == Some(t.as_str()),
                        Target::Team(t) => c.contains(&t.as_str()),
                        Target::Raw(_) => raw_id.as_ref() == Some(&m),
                    };
                    list.push(Entry {
                        key,
                        id: m,
                        person: p.map(String::from),
                        chain: c.iter().map(|t| t.to_string()).collect(),
                        matches,
                    });
                });
            };
            if let Some(o) = &doc.owner {
                walk("owner", o);
            }
            for (key, l) in [
                ("admins", &doc.admins),
                ("moderators", &doc.moderators),
                ("participants", &doc.participants),
                ("bans", &doc.bans),
            ] {
                for e in l.iter().flat_map(|l| &l.value) {
                    walk(key, e);
                }
            }
            for m in doc.mutes.iter().flat_map(|l| &l.value) {
                walk("mutes", &m.member);
            }
            out.insert(name.to_string(), list);
        }
    }
    out
}

/// What `explain` prints, built from the files (and the live groups, if given).
pub fn explain(
    cfg: &Config,
    ctx: &Context,
    target: &Target,
    live: Option<&BTreeMap<String, Result<LiveGroup, String>>>,
) -> String {
    let all = entries(cfg, ctx, target);
    let mut s = String::new();
    let _ = writeln!(s, "{}", target.label());
    match target {
        Target::Person(p) => {
            let ids: Vec<String> = cfg
                .instances
                .values()
                .map(|i| {
                    let mut id = None;
                    config::trace_entry(ctx, &i.name, i.kind, p, &mut |m, _, _| id = Some(m));
                    format!(
                        "{} {}",
                        i.name,
                        id.map_or("(no id)".to_string(), |m| m.to_string())
                    )
                })
                .collect();
            let _ = writeln!(s, "  ids: {}", ids.join(" · "));
        }
        Target::Team(t) => {
            let _ = writeln!(s, "  members: {}", ctx.people.teams[t].join(", "));
        }
        Target::Raw(_) => {}
    }
    let mut listed = 0;
    for g in &cfg.groups {
        let Some(es) = all.get(&g.name) else { continue };
        let mut by_member: BTreeMap<&MemberId, Vec<&Entry>> = BTreeMap::new();
        for e in es.iter().filter(|e| e.matches) {
            by_member.entry(&e.id).or_default().push(e);
        }
        if by_member.is_empty() {
            continue;
        }
        listed += 1;
        let _ = writeln!(
            s,
            "group {} ({} {}, id {})",
            g.name, g.provider, g.kind, g.id
        );
        for (m, es) in by_member {
            let name = es.iter().find_map(|e| e.person.as_deref());
            let _ = writeln!(s, "  {}: {}", plan::display(name, m), role_of(g, m, &es));
            let mut seen = BTreeSet::new();
            for e in es {
                if seen.insert(e.via()) {
                    let _ = writeln!(s, "    {}", e.via());
                }
            }
            if let Some(l) = live.and_then(|l| l.get(&g.name)) {
                let _ = writeln!(s, "    live: {}", live_role(l, m));
            }
        }
    }
    if listed == 0 {
        let _ = writeln!(s, "  listed in no group");
    }
    s
}

/// The member's effective role in the desired state, and what else the manifest says of them.
fn role_of(g: &DesiredGroup, m: &MemberId, es: &[&Entry]) -> String {
    let mut parts = Vec::new();
    match g.members.get(m) {
        Some(r) => parts.push(r.to_string()),
        None if g.owner.as_ref() == Some(m) => {
            let caps = g.kind.capabilities();
            parts.push(
                if caps.supports_role(Role::Admin) {
                    "admin"
                } else {
                    "member"
                }
                .into(),
            );
        }
        None => {}
    }
    if g.owner.as_ref() == Some(m) {
        parts.push("owner".into());
    }
    if g.bans.as_ref().is_some_and(|b| b.contains(m)) {
        parts.push("banned".into());
    }
    if g.mutes.as_ref().is_some_and(|mu| mu.contains_key(m)) {
        parts.push("muted".into());
    }
    if parts.is_empty() {
        parts.push(es.first().map_or("listed", |e| e.key).into());
    }
    parts.join(", ")
}

fn live_role(l: &Result<LiveGroup, String>, m: &MemberId) -> String {
    match l {
        Err(e) => format!("cannot read the group: {e}"),
        Ok(l) => {
            let mut parts = Vec::new();
            match l.members.get(m) {
                Some(r) => parts.push(format!("member, {r}")),
                None => parts.push("not a member".to_string()),
            }
            if l.owner.as_ref() == Some(m) {
                parts.push("owner".into());
            }
            if l.bans.as_ref().is_some_and(|b| b.contains(m)) {
                parts.push("banned".into());
            }
            if l.mutes.contains_key(m) {
                parts.push("muted".into());
            }
            parts.join(", ")
        }
    }
}

/// The desired state of a group as if the target were gone from people.yaml or its team: the
/// role lists and mutes without the target's entries. The owner and bans stay as written.
fn without(g: &DesiredGroup, es: &[Entry]) -> DesiredGroup {
    let mut d = g.clone();
    d.members.clear();
    for e in es.iter().filter(|e| !e.matches) {
        let role = match e.key {
            "admins" => Role::Admin,
            "moderators" => Role::Moderator,
            "participants" => Role::Participant,
            _ => continue,
        };
        let r = d.members.entry(e.id.clone()).or_insert(role);
        *r = (*r).max(role);
    }
    if let Some(mutes) = d.mutes.as_mut() {
        let keep: BTreeSet<&MemberId> = es
            .iter()
            .filter(|e| e.key == "mutes" && !e.matches)
            .map(|e| &e.id)
            .collect();
        mutes.retain(|m, _| keep.contains(m));
    }
    d
}

/// The live state a group would have if it matched its manifest: the offline stand-in.
fn as_live(g: &DesiredGroup) -> LiveGroup {
    let mut members = g.members.clone();
    if let Some(o) = &g.owner {
        let caps = g.kind.capabilities();
        let r = if caps.supports_role(Role::Admin) {
            Role::Admin
        } else {
            members.get(o).copied().unwrap_or(Role::Participant)
        };
        members.insert(o.clone(), r);
    }
    LiveGroup {
        members,
        owner: g.owner.clone(),
        bans: g.bans.clone(),
        mutes: g.mutes.clone().unwrap_or_default(),
        ..LiveGroup::default()
    }
}

/// `--without`: per group, what taking the target out would plan, and the safety verdict.
pub fn blast_radius(
    cfg: &Config,
    ctx: &Context,
    target: &Target,
    live: Option<&BTreeMap<String, Result<LiveGroup, String>>>,
    now: SystemTime,
) -> String {
    let all = entries(cfg, ctx, target);
    let mut s = format!("without {}:\n", target.label());
    let (mut removals, mut demotions, mut groups, mut blocked) = (0, 0, 0, 0);
    for g in &cfg.groups {
        let Some(es) = all.get(&g.name) else { continue };
        if !es.iter().any(|e| e.matches) {
            continue;
        }
        let after = without(g, es);
        let instance = &cfg.instances[&g.provider];
        let caps = *g.kind.capabilities();
        let size = |k: OpKind| instance.batch_size(k, &caps);
        let opts = PlanOptions {
            caps: &caps,
            batch_size: &size,
            now,
            allow_mass_removal: false,
        };
        let (state, source) = match live.and_then(|l| l.get(&g.name)) {
            Some(Ok(l)) => (l.clone(), "live"),
            Some(Err(e)) => {
                let _ = writeln!(s, "group {}: cannot read the group: {e}", g.name);
                continue;
            }
            None => (as_live(g), "files"),
        };
        let before = plan::plan_group(g, &state, &opts);
        let then = plan::plan_group(&after, &state, &opts);
        let new: Vec<_> = then
            .ops
            .iter()
            .filter(|o| !before.ops.contains(o))
            .filter(|o| matches!(o.kind, OpKind::Remove | OpKind::Ban | OpKind::Demote))
            .collect();
        groups += 1;
        let _ = writeln!(
            s,
            "group {} ({} {}, id {}), from the {source}:",
            g.name, g.provider, g.kind, g.id
        );
        let who = |m: &MemberId| plan::display(g.names.get(m).map(String::as_str), m);
        // Why a member the target brought in is not removed.
        let touched: BTreeSet<&MemberId> = new.iter().map(|o| &o.member).collect();
        let matched: BTreeSet<&MemberId> = es.iter().filter(|e| e.matches).map(|e| &e.id).collect();
        for m in matched.into_iter().filter(|m| !touched.contains(m)) {
            let why = if g.owner.as_ref() == Some(m) {
                "the owner (the `owner` key stays; owners are never removed)".to_string()
            } else if let Some(r) = after.members.get(m) {
                let other = es.iter().find(|e| !e.matches && e.id == *m).map(Entry::via);
                format!("still {r} through {}", other.unwrap_or_default())
            } else if g.unlisted == crate::model::Unlisted::Keep {
                "kept as an unlisted member (unlisted: keep), no longer managed".to_string()
            } else if g.protected.contains(m) {
                "protected".to_string()
            } else {
                "not in a role list".to_string()
            };
            let _ = writeln!(s, "  {} stays: {why}", who(m));
        }
        for o in &new {
            let what = match (o.kind, o.from, o.role) {
                (OpKind::Demote, Some(f), Some(t)) => {
                    format!("demote {} from {f} to {t}", who(&o.member))
                }
                (k, Some(f), _) => format!("{k} {}, now {f}", who(&o.member)),
                (k, None, _) => format!("{k} {}", who(&o.member)),
            };
            let _ = writeln!(s, "  {what}");
            if o.kind == OpKind::Demote {
                demotions += 1;
            } else {
                removals += 1;
            }
        }
        for n in then.notes.iter().filter(|n| !before.notes.contains(n)) {
            let _ = writeln!(s, "  note: {n}");
        }
        let allowed = g.max_removals.allowed(state.members.len());
        match &then.blocked {
            Some(b) if before.blocked.is_none() => {
                blocked += 1;
                let _ = writeln!(s, "  BLOCKED by max_removals: {b}");
            }
            _ => {
                let _ = writeln!(
                    s,
                    "  max_removals {} allows {allowed} of {} members: {} planned",
                    g.max_removals,
                    state.members.len(),
                    then.removals()
                );
            }
        }
    }
    let _ = writeln!(
        s,
        "total: {removals} removals, {demotions} demotions in {groups} groups; {blocked} would be blocked by max_removals"
    );
    s
}

/// The live state of every group that lists the target, for `--live`.
pub async fn read_live(
    ctx_run: &crate::ctx::Ctx,
    cfg: &Config,
    ctx: &Context,
    target: &Target,
) -> Result<BTreeMap<String, Result<LiveGroup, String>>, String> {
    let all = entries(cfg, ctx, target);
    let groups: Vec<DesiredGroup> = cfg
        .groups
        .iter()
        .filter(|g| {
            all.get(&g.name)
                .is_some_and(|es| es.iter().any(|e| e.matches))
        })
        .cloned()
        .collect();
    let targets = crate::cli::build_targets(cfg, &groups)?;
    let mut out = BTreeMap::new();
    for g in &groups {
        let t = &targets[&g.provider];
        let live = t
            .provider
            .fetch(ctx_run, &g.id)
            .await
            .map_err(|e| e.to_string());
        out.insert(g.name.clone(), live);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn demo() -> (Config, Context) {
        let p = Path::new("manifests/rosterd.yaml");
        (config::load(p).unwrap(), config::load_context(p).unwrap())
    }

    fn run(name: &str) -> String {
        let (cfg, ctx) = demo();
        let t = Target::parse(&ctx, name).unwrap();
        explain(&cfg, &ctx, &t, None)
    }

    #[test]
    fn a_person_is_shown_in_every_group_with_role_list_chain_and_ids() {
        let out = run("alice");
        insta::assert_snapshot!(out);
        assert!(
            out.contains("  ids: b24 17 · cc alice · tim alice_tim · wa 491701000001@c.us"),
            "{out}"
        );
        assert!(
            out.contains("    participants: @sre → @sre-leads → alice"),
            "{out}"
        );
        assert_eq!(out.matches("group ").count(), 7, "{out}");
    }

    #[test]
    fn a_team_shows_what_it_brings_in_and_a_raw_id_is_matched_per_kind() {
        let team = run("@sre-leads");
        insta::assert_snapshot!(team);
        assert!(!team.contains("family-chat"), "no team there: {team}");
        let raw = run("+49 170 1000006");
        assert!(raw.contains("listed in no group"), "{raw}");
        let id = run("+49 170 1000001");
        assert!(
            id.contains("group family-chat") && id.contains("alice (491701000001@c.us): admin"),
            "{id}"
        );
        let (_, ctx) = demo();
        assert!(Target::parse(&ctx, "@nope").is_err());
    }

    #[test]
    fn without_shows_removals_demotions_and_the_limits_they_hit() {
        let (cfg, ctx) = demo();
        let t = Target::parse(&ctx, "alice").unwrap();
        let out = blast_radius(&cfg, &ctx, &t, None, SystemTime::UNIX_EPOCH);
        insta::assert_snapshot!(out);
        assert!(
            out.contains("total: 3 removals, 0 demotions in 7 groups; 0 would be blocked"),
            "{out}"
        );
    }

    #[test]
    fn without_a_team_names_the_groups_whose_max_removals_it_would_hit() {
        let dir = tempfile::tempdir().unwrap();
        let root = "manifests: groups/\npeople: people.yaml\nproviders:\n  cc:\n    kind: cometchat\n    app_id: a\n    region: eu\n    api_key: { env: K }\n";
        for (name, text) in [
            ("rosterd.yaml", root),
            (
                "people.yaml",
                "people:\n  ann: { cometchat: ann-1 }\nteams:\n  ops: [ann, bea, \"@leads\"]\n  leads: [cyd]\n",
            ),
            (
                "groups/a.yaml",
                "group: a\nprovider: cc\nid: a\nadmins: [\"@leads\"]\nparticipants: [\"@ops\", dan]\nmax_removals: 1\n",
            ),
            (
                "groups/b.yaml",
                "group: b\nprovider: cc\nid: b\nmoderators: [\"@ops\"]\nparticipants: [bea]\n",
            ),
        ] {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let path = dir.path().join("rosterd.yaml");
        let (cfg, ctx) = (
            config::load(&path).unwrap(),
            config::load_context(&path).unwrap(),
        );
        let t = Target::parse(&ctx, "@ops").unwrap();
        let out = blast_radius(&cfg, &ctx, &t, None, SystemTime::UNIX_EPOCH);
        insta::assert_snapshot!(out);
        assert!(out.contains("group a (cc cometchat, id a), from the files:\n  cyd stays: still admin through admins: @leads → cyd\n  remove ann (ann-1), now participant\n  remove bea, now participant\n  BLOCKED by max_removals"), "{out}");
        assert!(
            out.contains("demote bea from moderator to participant"),
            "{out}"
        );
    }
}
