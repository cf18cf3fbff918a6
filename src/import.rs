//! `rosterd import`: bootstrap manifests from live groups. Each group is read through the same
//! client `plan` uses and written as a manifest that plans no change: roles, bans and mutes
//! where the provider has them, the owner, members named by their people.yaml person where one
//! matches and by raw id otherwise. Never overwrites a file without `--force`, never imports a
//! group a manifest already manages.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::config;
use crate::model::{GroupId, LiveGroup, MemberId, Mute, Role};
use crate::provider::Instance;

/// What `rosterd import` was asked to do.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub config: PathBuf,
    /// The provider instance the groups belong to.
    pub provider: String,
    /// Provider group ids.
    pub ids: Vec<String>,
    /// Where the manifests go; default: the first folder of `manifests:`.
    pub out: Option<PathBuf>,
    pub force: bool,
    /// Also write a people.yaml stub naming the ids no person matched.
    pub people_stub: Option<PathBuf>,
}

/// One group as a manifest, and what could not go into it.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    pub text: String,
    /// Live ids no person of people.yaml matched (written as raw ids).
    pub unnamed: BTreeSet<MemberId>,
}

/// Render one live group as a manifest. `names` maps ids to their people.yaml person for this
/// instance; `people` are all person names (a raw id spelled like a person cannot be written).
pub fn manifest(
    name: &str,
    instance: &Instance,
    id: &GroupId,
    live: &LiveGroup,
    names: &BTreeMap<MemberId, String>,
    people: &BTreeSet<&str>,
    now: SystemTime,
) -> Imported {
    let kind = instance.kind;
    let mut unnamed = BTreeSet::new();
    // A member as an entry: their person, or their raw id when it reads back as that id and no
    // person has that name (a person wins over a raw id of the same spelling). `None`: no entry
    // can name them.
    let mut entry = |m: &MemberId| -> Option<String> {
        if let Some(n) = names.get(m) {
            return Some(q(n));
        }
        let reads_back = kind.normalize_member(m.as_str()).ok().as_ref() == Some(m);
        if !reads_back || people.contains(m.as_str()) || live.unresolved.contains(m) {
            return None;
        }
        unnamed.insert(m.clone());
        Some(q(m.as_str()))
    };
    let mut s = format!(
        "# Imported by `rosterd import` from {} ({kind}) group {id}.\ngroup: {}\nprovider: {}\nid: {}\n",
        instance.name,
        q(name),
        q(&instance.name),
        q(id.as_str())
    );
    // The owner is an implicit admin of the manifest; written only when that is what they are.
    let caps = kind.capabilities();
    if let Some(o) = &live.owner {
        let role = live.members.get(o);
        let fits =
            role == Some(&Role::Admin) || (role.is_some() && !caps.supports_role(Role::Admin));
        match fits.then(|| entry(o)).flatten() {
            Some(e) => {
                let _ = writeln!(s, "owner: {e}");
            }
            None => {
                let _ = writeln!(
                    s,
                    "# owner {o} is not written: not an admin member of the group, or no entry names them"
                );
            }
        }
    }
    // Members no entry can name: hidden ids the planner keeps anyway, and others, which only
    // `unlisted: keep` keeps.
    let mut hidden = Vec::new();
    let mut unwritable = Vec::new();
    for (role, key) in [
        (Role::Admin, "admins"),
        (Role::Moderator, "moderators"),
        (Role::Participant, "participants"),
    ] {
        let mut list = Vec::new();
        for (m, _) in live.members.iter().filter(|(_, r)| **r == role) {
            match entry(m) {
                Some(e) => list.push(e),
                None if live.unresolved.contains(m) => hidden.push(m.to_string()),
                None => unwritable.push(m.to_string()),
            }
        }
        block(&mut s, key, &list);
    }
    // Bans and mutes are authoritative once written: all of them, or the key is left out.
    if let Some(bans) = &live.bans {
        let list: Vec<Option<String>> = bans.iter().map(&mut entry).collect();
        if list.iter().all(Option::is_some) {
            block(
                &mut s,
                "bans",
                &list.into_iter().flatten().collect::<Vec<_>>(),
            );
        } else {
            s.push_str("# bans: not managed (a banned id cannot be named in a manifest)\n");
        }
    }
    let mutes: Vec<(Option<String>, Mute)> = live
        .mutes
        .iter()
        .filter(|(m, mu)| mu.active_at(now) && live.members.contains_key(*m))
        .map(|(m, mu)| (entry(m), *mu))
        .collect();
    if mutes.iter().any(|(e, _)| e.is_none()) {
        s.push_str("# mutes: not managed (a muted id cannot be named in a manifest)\n");
    } else if !mutes.is_empty() {
        s.push_str("mutes:\n");
        for (e, mu) in mutes {
            let _ = writeln!(s, "  - member: {}", e.unwrap_or_default());
            if let Mute::Until(t) = mu {
                let _ = writeln!(s, "    until: {}", humantime::format_rfc3339_seconds(t));
            }
        }
    }
    if !hidden.is_empty() {
        let _ = writeln!(
            s,
            "# Not listed ({}): ids the provider could not resolve; rosterd keeps them and never removes them as unlisted: {}",
            hidden.len(),
            hidden.join(", ")
        );
    }
    if !unwritable.is_empty() {
        let _ = writeln!(
            s,
            "# Not listed ({}), so unlisted members are kept: ids spelled like a person of people.yaml or not in a manifest's id syntax: {}\nunlisted: keep",
            unwritable.len(),
            unwritable.join(", ")
        );
    }
    Imported { text: s, unnamed }
}

/// A YAML block list; nothing for an empty one.
fn block(s: &mut String, key: &str, items: &[String]) {
    if items.is_empty() {
        return;
    }
    let _ = writeln!(s, "{key}:");
    for i in items {
        let _ = writeln!(s, "  - {i}");
    }
}

/// A double-quoted YAML scalar: JSON's escapes are YAML's, and quoting keeps ids such as `007`,
/// `no` or `@TGS#x` the text they are.
fn q(s: &str) -> String {
    serde_json::to_string(s).expect("a string is JSON")
}

/// A name usable as a group name and a file name: lower case, `-` for anything else.
pub fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_matches('-').to_string();
    if out.is_empty() {
        "group".to_string()
    } else {
        out
    }
}

/// The people.yaml stub: one placeholder person per unnamed id.
pub fn people_stub(instance: &str, unnamed: &BTreeSet<MemberId>, taken: &BTreeSet<&str>) -> String {
    let mut s = String::from(
        "# Written by `rosterd import`: ids no person of people.yaml matched. Rename each person,\n# merge them into people.yaml, then name them in the manifests instead of their ids.\npeople:\n",
    );
    let mut used: BTreeSet<String> = taken.iter().map(|t| t.to_string()).collect();
    for m in unnamed {
        let base = slug(m.as_str().split('@').next().unwrap_or(m.as_str()));
        let mut name = base.clone();
        let mut n = 2;
        while used.contains(&name) {
            name = format!("{base}-{n}");
            n += 1;
        }
        used.insert(name.clone());
        let _ = writeln!(
            s,
            "  {}: {{ {}: {} }}",
            q(&name),
            q(instance),
            q(m.as_str())
        );
    }
    s
}

/// Run `rosterd import`: what was imported goes to `out`, errors to `err`. Returns the exit code.
pub async fn run(
    run: &crate::ctx::Ctx,
    opts: &ImportOptions,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    use crate::cli::exit;
    let cfg = match config::load(&opts.config) {
        Ok(c) => c,
        Err(d) => {
            let _ = write!(err, "{d}");
            let _ = writeln!(err, "{} error(s); nothing was written", d.len());
            return exit::ERROR;
        }
    };
    let ctx = match config::load_context(&opts.config) {
        Ok(c) => c,
        Err(d) => {
            let _ = write!(err, "{d}");
            return exit::ERROR;
        }
    };
    let fail = |err: &mut dyn Write, msg: String| {
        let _ = writeln!(err, "error: {msg}\nnothing was written");
        exit::ERROR
    };
    let Some(instance) = cfg.instances.get(&opts.provider) else {
        let known: Vec<&str> = cfg.instances.keys().map(String::as_str).collect();
        return fail(
            err,
            format!(
                "unknown provider instance {:?} (rosterd.yaml defines: {})",
                opts.provider,
                known.join(", ")
            ),
        );
    };
    let dir = match opts
        .out
        .clone()
        .or_else(|| first_folder(&cfg.path, &cfg.root))
    {
        Some(d) => d,
        None => {
            return fail(
                err,
                "manifests: names no folder; give --out DIR".to_string(),
            );
        }
    };

    // Every refusal comes before the first request.
    let mut plans: Vec<(String, GroupId, PathBuf)> = Vec::new();
    let mut problems = Vec::new();
    let mut names: BTreeSet<String> = cfg.groups.iter().map(|g| g.name.clone()).collect();
    for raw in &opts.ids {
        let id = match instance.kind.normalize_group(raw) {
            Ok(id) => id,
            Err(e) => {
                problems.push(format!("--id {raw:?}: expected {e}"));
                continue;
            }
        };
        if plans.iter().any(|(_, i, _)| *i == id) {
            continue;
        }
        if let Some(g) = cfg
            .groups
            .iter()
            .find(|g| g.provider == instance.name && g.id == id)
        {
            problems.push(format!(
                "{} group {id} is already managed by group {} at {}; not imported",
                instance.name, g.name, g.source
            ));
            continue;
        }
        let mut name = slug(id.as_str());
        // A bare number (a Bitrix24 chat) says little as a group name: the instance says where.
        if names.contains(&name) || name.bytes().all(|b| b.is_ascii_digit()) {
            name = format!("{}-{name}", slug(&instance.name));
        }
        if !names.insert(name.clone()) {
            problems.push(format!("group name {name} for {id} is taken; not imported"));
            continue;
        }
        let path = dir.join(format!("{name}.yaml"));
        if path.exists() && !opts.force {
            problems.push(format!(
                "{} exists; not overwritten (use --force)",
                path.display()
            ));
            continue;
        }
        if let Some(r) = &ctx.restrictions
            && let Err(why) = r.check(&ctx.root, &path, &instance.name, &id)
        {
            problems.push(format!("{id}: {why}"));
            continue;
        }
        plans.push((name, id, path));
    }
    if let Some(stub) = opts
        .people_stub
        .as_ref()
        .filter(|p| p.exists() && !opts.force)
    {
        problems.push(format!(
            "{} exists; not overwritten (use --force)",
            stub.display()
        ));
    }
    if !problems.is_empty() {
        return fail(err, problems.join("\nerror: "));
    }
    let provider = match crate::provider::build(instance) {
        Ok(p) => p,
        Err(e) => return fail(err, format!("provider {}: {e}", instance.name)),
    };

    let by_id = ctx.names.get(&instance.name).cloned().unwrap_or_default();
    let people: BTreeSet<&str> = ctx.people.people.keys().map(String::as_str).collect();
    let mut unnamed = BTreeSet::new();
    let mut code = exit::OK;
    let mut written = Vec::new();
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return fail(err, format!("cannot create {}: {e}", dir.display()));
    }
    for (name, id, path) in &plans {
        let live = match provider.fetch(run, id).await {
            Ok(l) => l,
            Err(e) => {
                let _ = writeln!(
                    err,
                    "error: cannot read {} group {id}: {e}; not imported",
                    instance.name
                );
                code = exit::FAILED;
                continue;
            }
        };
        // Mutes that have ended by now are not imported.
        let m = manifest(name, instance, id, &live, &by_id, &people, run.now());
        if let Err(e) = crate::cli::write_atomically(path, &m.text) {
            let _ = writeln!(err, "error: cannot write {}: {e}", path.display());
            code = exit::FAILED;
            continue;
        }
        let _ = writeln!(
            out,
            "imported {} group {id} as group {name}: {} ({} members, {} not named by people.yaml)",
            instance.name,
            path.display(),
            live.members.len(),
            m.unnamed.len()
        );
        unnamed.extend(m.unnamed);
        written.push(path.clone());
    }
    if let Some(stub) = &opts.people_stub {
        let text = people_stub(&instance.name, &unnamed, &people);
        if let Err(e) = crate::cli::write_atomically(stub, &text) {
            let _ = writeln!(err, "error: cannot write {}: {e}", stub.display());
            return exit::FAILED;
        }
        let _ = writeln!(
            out,
            "wrote {} ({} ids to name)",
            stub.display(),
            unnamed.len()
        );
    }
    // The written files are part of the tree when they went into a manifest folder: the tree
    // must still validate.
    if let Err(d) = config::load(&opts.config) {
        let _ = write!(err, "{d}");
        let _ = writeln!(
            err,
            "the tree no longer validates after the import; fix or remove the files above"
        );
        return exit::ERROR;
    }
    if !written.is_empty() {
        let _ = writeln!(
            out,
            "next: rosterd plan --config {} shows no change for them",
            opts.config.display()
        );
    }
    code
}

/// The first folder `manifests:` names, where imported manifests go by default.
fn first_folder(config_path: &Path, root: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(config_path).ok()?;
    let raw: config::raw::RawRoot = config::yaml::from_str(&text).ok()?;
    let entries = match raw.manifests.value {
        config::raw::OneOrMany::One(s) => vec![s],
        config::raw::OneOrMany::Many(v) => v,
    };
    entries.iter().map(|e| root.join(e)).find(|p| p.is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> MemberId {
        MemberId::new(s)
    }

    #[test]
    fn a_manifest_names_people_quotes_ids_and_skips_what_it_cannot_write() {
        let cfg = config::load(Path::new("manifests/rosterd.yaml")).unwrap();
        let inst = &cfg.instances["cc"];
        let live = LiveGroup {
            members: [
                (m("alice"), Role::Admin),
                (m("bob"), Role::Moderator),
                (m("zed"), Role::Participant),
                (m("007"), Role::Participant),
                (m("carol"), Role::Participant),
            ]
            .into(),
            owner: Some(m("alice")),
            bans: Some([m("mallory")].into()),
            ..LiveGroup::default()
        };
        let names = BTreeMap::from([(m("alice"), "alice".into()), (m("bob"), "robert".into())]);
        // `carol` is not carol's id here but spelled like the person: written as is, it would
        // resolve to that person.
        let people = BTreeSet::from(["alice", "robert", "carol"]);
        let got = manifest(
            "g",
            inst,
            &GroupId("g".into()),
            &live,
            &names,
            &people,
            SystemTime::UNIX_EPOCH,
        );
        insta::assert_snapshot!(got.text);
        assert_eq!(
            got.unnamed,
            BTreeSet::from([m("007"), m("zed"), m("mallory")])
        );
    }

    #[test]
    fn slugs_are_group_and_file_names() {
        assert_eq!(slug("@TGS#demo-lobby"), "tgs-demo-lobby");
        assert_eq!(slug("120363000000000042@g.us"), "120363000000000042-g-us");
        assert_eq!(slug("###"), "group");
    }

    #[test]
    fn the_people_stub_gives_every_unnamed_id_a_free_name() {
        let stub = people_stub(
            "wa",
            &BTreeSet::from([m("491701000009@c.us"), m("zed")]),
            &BTreeSet::from(["zed"]),
        );
        assert!(
            stub.contains("\"491701000009\": { \"wa\": \"491701000009@c.us\" }"),
            "{stub}"
        );
        assert!(stub.contains("\"zed-2\": { \"wa\": \"zed\" }"), "{stub}");
        let parsed: config::raw::RawPeople = config::yaml::from_str(&stub).unwrap();
        assert_eq!(parsed.people.len(), 2);
    }
}
